"""The definitions load in every environment from the declared discoveries; bad YAML is refused naming the file
and the field; the inbox sensor and the refit schedules evaluate against a real instance."""

from __future__ import annotations

import logging.handlers
import sys
import uuid

import dagster as dg
import pytest

from instruct_lf_dagster.automation import DISCOVERY_TAG, RANGE_END, RANGE_START
from instruct_lf_dagster.components import Discovery
from instruct_lf_dagster.core.discovery import STAGES
from instruct_lf_dagster.definitions import build_definitions, declared
from instruct_lf_dagster.partitions import batches
from instruct_lf_dagster.resources.inbox import LocalInbox, batch_key
from tests.conftest import run_warning_free


@pytest.mark.parametrize("env", ["local", "prod"])
def test_definitions_load_the_declared_discoveries(env):
    defs = build_definitions(env)
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {"documents", *(f"movie_critics/{stage}" for stage in STAGES)}
    jobs = {job.name for job in defs.resolve_all_job_defs()}
    assert {"read_documents", "all_discoveries", "movie_critics_discovery", "movie_critics_batch"} <= jobs
    assert defs.resolve_schedule_def("movie_critics_refit").cron_schedule == "0 3 * * 1"


def test_loading_the_code_location_warns_of_nothing(tmp_path):
    """Each Dagster process (code server, run, step) imports the definitions: a warning there is printed in
    every one of them."""
    out = run_warning_free(
        "from instruct_lf_dagster.definitions import build_definitions\n"
        "print(len(build_definitions().resolve_all_job_defs()), 'jobs')\n",
        tmp_path,
    )
    assert "jobs" in out


def test_the_demo_is_the_only_goal_and_it_lives_in_yaml():
    from instruct_lf_dagster import demo
    from instruct_lf_dagster.evaluation.probe import BUILTINS

    (declared_demo,) = declared()[0]
    assert declared_demo.name == "movie_critics" and declared_demo.goal.startswith(
        "What qualities of a movie"
    )
    assert declared_demo.examples and declared_demo.document_kind == "movie review snippet"
    assert demo.goal() == declared_demo.spec().goal  # read from the YAML, without Dagster
    assert BUILTINS["rotten-tomatoes"]().goal == declared_demo.goal  # the probe measures the demo's factors


def test_unknown_environment_is_refused():
    with pytest.raises(ValueError, match="INSTRUCT_LF_ENV must be one of"):
        build_definitions("staging")


def load_yaml(tmp_path, monkeypatch, text: str) -> str:
    """Declare one discovery from `text` in a package of its own; the error message of loading it."""
    package = f"defs_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / package / "mine"
    folder.mkdir(parents=True)
    (tmp_path / package / "__init__.py").write_text("")
    (folder / "defs.yaml").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        declared(package)
    except Exception as error:  # Dagster wraps the cause in a tree of what loaded
        messages, cause = [], error
        while cause is not None:
            messages.append(str(cause))
            cause = cause.__cause__
        return "\n".join(messages)
    finally:
        sys.modules.pop(package, None)
    raise AssertionError("the YAML loaded")


GOOD = """type: instruct_lf_dagster.components.Discovery
attributes:
  name: support
  goal: Why do customers churn?
"""


@pytest.mark.parametrize(
    ("yaml", "field", "reason"),
    [
        (GOOD.replace("  goal: Why do customers churn?\n", ""), "attributes.goal", "Field required"),
        (GOOD + "  golas: typo\n", "attributes.golas", "Extra inputs are not permitted"),
        (GOOD + "  refit_cron: every monday\n", "attributes.refit_cron", "not a cron expression"),
        (GOOD + "  factors: {n_factors: many}\n", "attributes.factors", "valid integer"),
        (GOOD + "  truncation: middle\n", "attributes.truncation", "'head' or 'tail'"),
        (GOOD.replace("name: support", "name: Support Team"), "attributes.name", "lower-case letters"),
        (GOOD + "  goal: '  '\n", "attributes.goal", "goal is empty"),
        (
            GOOD + "  proposal_budget: {fraction: 1.5}\n",
            "attributes.proposal_budget",
            "fraction must be at most 1",
        ),
        (GOOD + "  linker: {batch_size: 0}\n", "attributes.linker", "batch_size must be at least 2, not 0"),
        (GOOD + "  linker: {epochs: -3}\n", "attributes.linker", "epochs must be at least 0, not -3"),
        (GOOD + "  factors: {n_factors: -2}\n", "attributes.factors", "n_factors must be at least 0, not -2"),
        (
            GOOD + "  vocabulary: {merge_threshold: 7.5}\n",
            "attributes.vocabulary",
            "merge_threshold must be at most 1",
        ),
        (GOOD + "  max_document_chars: 0\n", "attributes.max_document_chars", "greater than 0"),
    ],
)
def test_bad_yaml_is_refused_naming_the_file_and_the_field(tmp_path, monkeypatch, yaml, field, reason):
    message = load_yaml(tmp_path, monkeypatch, yaml)
    assert "mine/defs.yaml" in message and field in message and reason in message


def test_a_good_yaml_loads(tmp_path, monkeypatch):
    package = f"defs_{uuid.uuid4().hex[:8]}"
    (tmp_path / package / "mine").mkdir(parents=True)
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "mine" / "defs.yaml").write_text(GOOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    (support,), _ = declared(package)
    assert support.goal == "Why do customers churn?" and support.refit_cron == "0 3 * * 1"
    defs = build_definitions("local", defs_module=package)
    assert dg.AssetKey(["support", "latent_factors"]) in defs.resolve_asset_graph().get_all_asset_keys()


def discovery(name: str) -> Discovery:
    return Discovery.resolve_from_dict({"name": name, "goal": f"What matters for {name}?"})


def test_the_sensor_reads_each_file_once_then_asks_every_discovery(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "day 1.jsonl").write_text('{"text": "x"}')
    (inbox / "day2.csv").write_text("text\ny\n")
    day1, day2, day3 = (batch_key(n) for n in ("day 1.jsonl", "day2.csv", "day3.parquet"))
    defs = build_definitions("local", discoveries=[discovery("churn"), discovery("features")])
    sensor = defs.resolve_sensor_def("inbox_sensor")
    resources = {"inbox": LocalInbox(path=str(inbox))}
    with dg.instance_for_test() as instance:

        def evaluate(cursor=None):
            context = dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor)
            return sensor(context)

        # New files: registered as batches (in the order of their names) and read once, by the documents job.
        result = evaluate()
        assert result.dynamic_partitions_requests[0].partition_keys == [day1, day2]
        assert [(r.job_name, r.partition_key) for r in result.run_requests] == [
            ("read_documents", day1),
            ("read_documents", day2),
        ]
        instance.add_dynamic_partitions(batches.name, [day1, day2])
        for key in (day1, day2):
            instance.report_runless_asset_event(dg.AssetMaterialization("documents", partition=key))

        # Read: one run per discovery, each its own job over every batch (no factors yet).
        result = evaluate(result.cursor)
        assert sorted(r.job_name for r in result.run_requests) == ["churn_discovery", "features_discovery"]
        for request in result.run_requests:
            assert (request.tags[RANGE_START], request.tags[RANGE_END]) == (day1, day2)
            job = defs.resolve_job_def(request.job_name)
            assert job.tags[DISCOVERY_TAG] == request.job_name.removesuffix("_discovery")
        cursor = result.cursor
        assert isinstance(evaluate(cursor), dg.SkipReason)

        # A later file: churn has factors, so it scores the batch; features still discovers.
        instance.report_runless_asset_event(dg.AssetMaterialization(dg.AssetKey(["churn", "latent_factors"])))
        (inbox / "day3.parquet").write_bytes(b"later")
        result = evaluate(cursor)
        assert [(r.job_name, r.partition_key) for r in result.run_requests] == [("read_documents", day3)]
        instance.add_dynamic_partitions(batches.name, [day3])
        instance.report_runless_asset_event(dg.AssetMaterialization("documents", partition=day3))
        result = evaluate(result.cursor)
        requests = {r.job_name: r for r in result.run_requests}
        assert set(requests) == {"churn_batch", "features_discovery"}
        assert requests["churn_batch"].partition_key == day3
        assert requests["features_discovery"].tags[RANGE_END] == day3


def test_the_sensor_registers_colliding_names_apart_and_keeps_an_old_key(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in ("with space.jsonl", "with_space.jsonl", "映画レビュー.jsonl", "電影評論.jsonl"):
        (inbox / name).write_text('{"text": "x"}')
    with dg.instance_for_test() as instance:
        sensor = build_definitions("local", discoveries=[discovery("churn")]).resolve_sensor_def(
            "inbox_sensor"
        )
        instance.add_dynamic_partitions(
            batches.name, ["with_space.jsonl"]
        )  # registered by an earlier version
        context = dg.build_sensor_context(instance=instance, resources={"inbox": LocalInbox(path=str(inbox))})
        result = sensor(context)
    new = result.dynamic_partitions_requests[0].partition_keys
    assert new == [batch_key(n) for n in ("with_space.jsonl", "映画レビュー.jsonl", "電影評論.jsonl")]
    assert [r.partition_key for r in result.run_requests] == new


def test_the_sensor_logs_a_file_it_cannot_record_at_error(tmp_path, monkeypatch):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "day 1.jsonl").write_text('{"text": "x"}')

    def refuse(self, key, name):
        raise OSError(28, "No space left on device", str(inbox / ".batches" / key))

    monkeypatch.setattr(LocalInbox, "_add_record", refuse)
    logged = logging.handlers.BufferingHandler(capacity=100)
    with dg.instance_for_test() as instance:
        sensor = build_definitions("local", discoveries=[discovery("churn")]).resolve_sensor_def(
            "inbox_sensor"
        )
        context = dg.build_sensor_context(instance=instance, resources={"inbox": LocalInbox(path=str(inbox))})
        context.log.addHandler(logged)  # the sensor's log, which the UI shows with its tick
        result = sensor(context)
    assert result.dynamic_partitions_requests[0].partition_keys == [batch_key("day 1.jsonl")]
    (record,) = logged.buffer
    message = record.getMessage()
    assert record.levelno == logging.ERROR and "day 1.jsonl" in message and "No space left" in message


def test_each_discovery_refits_every_batch_on_its_own_schedule():
    weekly = discovery("churn")
    nightly = Discovery.resolve_from_dict(
        {"name": "features", "goal": "Which features?", "refit_cron": "30 2 * * *"}
    )
    defs = build_definitions("local", discoveries=[weekly, nightly])
    assert defs.resolve_schedule_def("features_refit").cron_schedule == "30 2 * * *"
    schedule = defs.resolve_schedule_def("churn_refit")
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance)
        assert isinstance(schedule(context), dg.SkipReason)
        instance.add_dynamic_partitions(batches.name, ["b", "a", "c"])
        request = schedule(context)
        assert (request.tags[RANGE_START], request.tags[RANGE_END]) == ("b", "c")
    assert schedule.job_name == "churn_discovery"


def test_two_discoveries_of_one_name_are_refused():
    with pytest.raises(ValueError, match="same name"):
        build_definitions("local", discoveries=[discovery("churn"), discovery("churn")])


def test_headless_run_config_is_valid_and_quiets_the_console():
    from instruct_lf_dagster.run import console_config

    with dg.instance_for_test():  # a live instance for the definitions' state storage
        job = build_definitions("local").resolve_job_def("all_discoveries")
    config = console_config()
    assert config["loggers"]["console"]["config"]["log_level"] == "INFO"
    assert dg.validate_run_config(job, config)["loggers"]["console"]["config"]["log_level"] == "INFO"


def test_the_sensor_leaves_alone_batches_a_discovery_scored_elsewhere(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "day1.jsonl").write_text('{"text": "x"}')
    with dg.instance_for_test() as instance:  # a live instance for the definitions' state storage
        sensor = build_definitions("local", discoveries=[discovery("churn")]).resolve_sensor_def(
            "inbox_sensor"
        )
        # `instruct-lf run` read and scored the batch before the sensor ever ran.
        instance.add_dynamic_partitions(batches.name, ["day1.jsonl"])
        for key in ("documents", ["churn", "document_factors"]):
            instance.report_runless_asset_event(dg.AssetMaterialization(key, partition="day1.jsonl"))
        instance.report_runless_asset_event(dg.AssetMaterialization(dg.AssetKey(["churn", "latent_factors"])))
        context = dg.build_sensor_context(instance=instance, resources={"inbox": LocalInbox(path=str(inbox))})
        assert isinstance(sensor(context), dg.SkipReason)


def test_one_broken_discovery_leaves_the_others_loading(tmp_path, monkeypatch):
    from instruct_lf_dagster import discoveries
    from instruct_lf_dagster.definitions import declared_each

    package = f"defs_{uuid.uuid4().hex[:8]}"
    for name, text in [("good", GOOD), ("bad", GOOD.replace("support", "bad") + "  linker: {epochs: -3}\n")]:
        (tmp_path / package / name).mkdir(parents=True)
        (tmp_path / package / name / "defs.yaml").write_text(text)
    (tmp_path / package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        found, broken = declared_each(package)
        assert [d.name for d in found] == ["support"]
        ((path, reason),) = broken.items()
        assert path.endswith("bad/defs.yaml") and "epochs must be at least 0, not -3" in reason
        assert len(reason.splitlines()) <= 7  # a few lines, not Dagster's tree of what loaded
        listing = discoveries.describe(package)
        assert "support" in listing and "bad/defs.yaml does not load" in listing
    finally:
        sys.modules.pop(package, None)
