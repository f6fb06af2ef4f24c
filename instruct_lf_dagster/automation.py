"""Jobs, the inbox sensor and the discovery schedule."""

import os

import dagster as dg

from instruct_lf_dagster.partitions import batches
from instruct_lf_dagster.resources.inbox import Inbox

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"

# The whole graph: refit vocabulary, linker and factors on every batch, then refresh every batch.
discovery_job = dg.define_asset_job(
    "discovery", selection=dg.AssetSelection.all(), partitions_def=batches, description=__doc__
)
# One new batch, scored with the current linker and factors.
batch_job = dg.define_asset_job(
    "batch",
    selection=dg.AssetSelection.groups("batches"),
    partitions_def=batches,
    description="Proposals, compatibility and factor scores for new batches with the current linker and factors.",
)


def all_batches_tags(keys: list[str]) -> dict[str, str]:
    """Run tags that make one run cover `keys`, given in partition (registration) order."""
    return {RANGE_START: keys[0], RANGE_END: keys[-1]}


@dg.sensor(job=batch_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def inbox_sensor(context: dg.SensorEvaluationContext, inbox: Inbox) -> dg.SensorResult | dg.SkipReason:
    """Registers each new inbox file as a batch and scores it; the very first batches run full discovery."""
    known = list(context.instance.get_dynamic_partitions(batches.name))
    new = sorted(set(inbox.files()) - set(known))
    if not new:
        return dg.SkipReason("no new file in the inbox")
    add = batches.build_add_request(new)
    discovered = context.instance.get_latest_materialization_event(dg.AssetKey("latent_factors")) is not None
    if discovered:
        requests = [dg.RunRequest(run_key=f"batch:{key}", partition_key=key) for key in new]
    else:
        keys = known + new  # the order the partitions will have once added
        requests = [
            dg.RunRequest(
                run_key=f"discovery:{','.join(keys)}",
                job_name=discovery_job.name,
                tags=all_batches_tags(keys),
            )
        ]
    return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=[add])


@dg.schedule(
    job=discovery_job,
    cron_schedule=os.environ.get("INSTRUCT_LF_DISCOVERY_CRON", "0 3 * * 1"),
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def discovery_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    """Recurring discovery (weekly by default; INSTRUCT_LF_DISCOVERY_CRON changes it) over every batch."""
    keys = context.instance.get_dynamic_partitions(batches.name)
    if not keys:
        return dg.SkipReason("no batch registered yet")
    return dg.RunRequest(run_key=None, tags=all_batches_tags(keys))
