"""The definitions load in every environment; the sensor and the schedule evaluate."""

from __future__ import annotations

import dagster as dg
import pytest

from instruct_lf_dagster.automation import RANGE_END, RANGE_START, discovery_schedule, inbox_sensor
from instruct_lf_dagster.definitions import build_definitions
from instruct_lf_dagster.partitions import batches
from instruct_lf_dagster.resources.inbox import LocalInbox


@pytest.mark.parametrize("env", ["local", "prod"])
def test_definitions_load(env):
    defs = build_definitions(env)
    defs.resolve_all_job_defs()
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {
        "documents",
        "proposals",
        "vocabulary",
        "linker",
        "compatibility",
        "latent_factors",
        "factor_report",
        "document_factors",
    }
    assert {"discovery", "batch"} <= {job.name for job in defs.resolve_all_job_defs()}


def test_unknown_environment_is_refused():
    with pytest.raises(ValueError, match="INSTRUCT_LF_ENV must be one of"):
        build_definitions("staging")


def test_sensor_registers_new_files(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "day 1.jsonl").write_text('{"text": "x"}')
    (inbox / "day2.csv").write_text("text\ny\n")
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"inbox": LocalInbox(path=str(inbox))})
        result = inbox_sensor(context)
        assert result.dynamic_partitions_requests[0].partition_keys == ["day2.csv", "day_1.jsonl"]
        # Nothing discovered yet: one discovery run over every batch.
        (request,) = result.run_requests
        assert request.job_name == "discovery"
        assert (request.tags[RANGE_START], request.tags[RANGE_END]) == ("day2.csv", "day_1.jsonl")

        instance.add_dynamic_partitions(batches.name, ["day2.csv", "day_1.jsonl"])
        assert isinstance(inbox_sensor(context), dg.SkipReason)

        instance.report_runless_asset_event(dg.AssetMaterialization("latent_factors"))
        (inbox / "day3.parquet").write_bytes(b"later")
        result = inbox_sensor(context)
        assert [r.partition_key for r in result.run_requests] == ["day3.parquet"]
        assert result.run_requests[0].job_name is None  # the sensor's own job: batch


def test_schedule_covers_every_batch():
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance)
        assert isinstance(discovery_schedule(context), dg.SkipReason)
        instance.add_dynamic_partitions(batches.name, ["b", "a", "c"])
        request = discovery_schedule(context)
        assert (request.tags[RANGE_START], request.tags[RANGE_END]) == ("b", "c")


def test_headless_run_config_is_valid_and_quiets_the_console():
    from instruct_lf_dagster.automation import discovery_job
    from instruct_lf_dagster.run import console_config

    with dg.instance_for_test():  # a live instance for the definitions' state storage
        job = build_definitions("local").resolve_job_def(discovery_job.name)
    goal = {"ops": {"proposals": {"config": {"goal": "what decides the next movie?"}}}}
    config = console_config(goal)
    assert config["loggers"]["console"]["config"]["log_level"] == "INFO" and config["ops"] == goal["ops"]
    assert (
        dg.validate_run_config(job, config)["ops"]["proposals"]["config"]["goal"]
        == goal["ops"]["proposals"]["config"]["goal"]
    )
