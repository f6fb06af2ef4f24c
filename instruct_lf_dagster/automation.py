"""Jobs, refit schedules and the inbox sensor.

A new inbox file becomes a batch: the sensor reads it once (`read_documents` job), then requests one run per
discovery for it, the discovery's `<name>_batch` job once it has factors, its `<name>_discovery` job before.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

import dagster as dg

from instruct_lf_dagster.core.discovery import DiscoverySpec
from instruct_lf_dagster.partitions import DOCUMENTS, asset_key, batches
from instruct_lf_dagster.resources.inbox import Inbox

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition


RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
DISCOVERY_TAG = "instruct_lf/discovery"

# Each new batch file read once, for every discovery.
documents_job = dg.define_asset_job(
    "read_documents",
    selection=dg.AssetSelection.assets(DOCUMENTS),
    description="Read new batch files into documents (shared by every discovery).",
)
# `instruct-lf run`: documents and every discovery's assets, every batch, one run.
all_discoveries_job = dg.define_asset_job(
    "all_discoveries",
    selection=dg.AssetSelection.all(),
    description="Documents and every discovery, refitted on every batch, in one run.",
)


def all_batches_tags(keys: Sequence[str]) -> dict[str, str]:
    """Run tags that make one run cover `keys`, given in partition (registration) order."""
    return {RANGE_START: keys[0], RANGE_END: keys[-1]}


def discovery_jobs(d: DiscoverySpec) -> tuple[UnresolvedAssetJobDefinition, UnresolvedAssetJobDefinition]:
    """`<name>_discovery` (refit everything on every batch) and `<name>_batch` (score new batches)."""
    refit = dg.define_asset_job(
        f"{d.name}_discovery",
        selection=dg.AssetSelection.groups(d.name),
        tags={DISCOVERY_TAG: d.name},
        description=f"{d.name}: vocabulary, linker and factors refitted on every batch, then every batch rescored.",
    )
    score = dg.define_asset_job(
        f"{d.name}_batch",
        selection=dg.AssetSelection.assets(
            *(
                asset_key(d, s)
                for s in (
                    "proposals",
                    "compatibility",
                    "document_factors",
                    "factor_prevalence",
                    "judged_quality",  # answers cached: asked again only of a stored report that lacks them
                    "html_report",
                )
            )
        ),
        tags={DISCOVERY_TAG: d.name},
        description=f"{d.name}: proposals, compatibility and factor scores of new batches with the current factors; "
        "then the prevalence over every batch (drift check) and the HTML report.",
    )
    return refit, score


def refit_schedule(d: DiscoverySpec, job: UnresolvedAssetJobDefinition) -> dg.ScheduleDefinition:
    """Recurring discovery over every batch, on the discovery's `refit_cron`."""

    @dg.schedule(
        name=f"{d.name}_refit",
        job=job,
        cron_schedule=d.refit_cron,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Refit {d.name} on every batch ({d.refit_cron}).",
    )
    def refit(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        keys = context.instance.get_dynamic_partitions(batches.name)
        if not keys:
            return dg.SkipReason("no batch registered yet")
        return dg.RunRequest(run_key=None, tags=all_batches_tags(keys))

    return refit


def inbox_sensor(discoveries: Sequence[DiscoverySpec], jobs: Sequence) -> dg.SensorDefinition:
    """Registers each new inbox file as a batch (`Inbox.register`) and reads it; then hands every read batch to
    every discovery.

    `jobs`: the job objects of the definitions (the discoveries' and `documents`), as the sensor's targets.
    The cursor remembers, per discovery, the batches already handed to it.
    """

    @dg.sensor(
        name="inbox_sensor",
        jobs=list(jobs),
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def sensor(context: dg.SensorEvaluationContext, inbox: Inbox) -> dg.SensorResult | dg.SkipReason:
        known = list(context.instance.get_dynamic_partitions(batches.name))
        files = inbox.register(known, context.log)  # a file that cannot be registered is logged at ERROR
        new = sorted(set(files) - set(known), key=files.__getitem__)  # in the order of their names
        requests = [
            dg.RunRequest(job_name=documents_job.name, partition_key=k, run_key=f"documents:{k}") for k in new
        ]
        read = context.instance.get_materialized_partitions(DOCUMENTS)
        handed = json.loads(context.cursor) if context.cursor else {}
        for d in discoveries:
            # Handed over before, or scored already (a run started elsewhere, e.g. `instruct-lf run`).
            done = set(handed.get(d.name, [])) | context.instance.get_materialized_partitions(
                asset_key(d, "document_factors")
            )
            ready = [k for k in known if k in read and k not in done]  # registration order
            if not ready:
                continue
            if context.instance.get_latest_materialization_event(asset_key(d, "latent_factors")) is not None:
                requests += [
                    dg.RunRequest(job_name=f"{d.name}_batch", partition_key=k, run_key=f"{d.name}:batch:{k}")
                    for k in ready
                ]
            else:  # no factors yet: discover them on every batch read so far, in one run
                keys = [k for k in known if k in read]
                requests.append(
                    dg.RunRequest(
                        job_name=f"{d.name}_discovery",
                        run_key=f"{d.name}:discovery:{len(keys)}:{keys[-1]}",
                        tags=all_batches_tags(keys),
                    )
                )
            handed[d.name] = sorted(done | set(ready))
        if not requests:
            return dg.SkipReason("no new file in the inbox and no new batch for any discovery")
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[batches.build_add_request(new)] if new else [],
            cursor=json.dumps(handed, sort_keys=True),
        )

    return sensor
