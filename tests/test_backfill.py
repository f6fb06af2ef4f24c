"""Asset backfills as the UI launches them (GraphQL, batch names), run by a real `dagster-daemon` on a real instance:
each one materialises every asset partition it selected, or fails naming what it would have skipped."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import litellm
import pytest
from conftest import KeywordLLM
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget
from dagster_graphql.test.utils import execute_dagster_graphql
from test_pipeline import discovery, local_resources, run, write_batches

from instruct_lf_dagster.core.discovery import STAGES
from instruct_lf_dagster.definitions import build_definitions
from instruct_lf_dagster.partitions import BACKFILL_TAG, batches

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("dagster-daemon") is None, reason="dagster-daemon is not installed"),
]

ROOT = "INSTRUCT_LF_TEST_BACKFILL_ROOT"  # the test's folder, where the code location finds inbox and tables
TIMEOUT = 600.0  # seconds for the whole test, daemon start to the last backfill (a hang, not a timing)

INSTANCE = """telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: 1
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
"""
# `dagster-daemon run` itself, its loops every second: the 30 s of a backfill iteration is a constant, no setting.
DAEMON = (
    "import dagster._daemon.controller as c; c.DEFAULT_DAEMON_INTERVAL_SECONDS = 1\n"
    "from dagster._daemon.cli import main; main()"
)
LAUNCH = """mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message }
  }
}"""
STATUS = """query($id: String!) {
  partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } }
}"""


@dg.definitions
def location() -> dg.Definitions:
    """The code location of the daemon and its runs: the project's definitions of the small discovery, the fake
    LLM registered in this process, tables and files under the test's folder."""
    litellm.custom_provider_map = [{"provider": "keywords", "custom_handler": KeywordLLM().handler}]
    litellm.utils.custom_llm_setup()
    defs = build_definitions("local", discoveries=[discovery()])
    # No inbox sensor: it would hand the batches to the discovery in runs of its own. Steps run in the run's
    # process: a process per step would import torch again, seconds each on 2 cores.
    return dg.Definitions(
        assets=defs.assets,
        asset_checks=defs.asset_checks,
        jobs=defs.jobs,
        schedules=defs.schedules,
        resources=local_resources(Path(os.environ[ROOT])),
        executor=dg.in_process_executor,
    )


@contextmanager
def daemon(workspace: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """The daemon in a process group of its own (its code server and runs too), stopped with the group."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", DAEMON, "run", "-w", str(workspace)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def backfill(context: WorkspaceProcessContext, assets: list[str], partitions: list[str]) -> str:
    """Launch an asset backfill of `assets` on `partitions`, as the UI's partition dialog does; its id."""
    params = {"assetSelection": [{"path": a.split("/")} for a in assets], "partitionNames": partitions}
    result = execute_dagster_graphql(context.create_request_context(), LAUNCH, {"params": params})
    launched = result.data["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return launched["backfillId"]


def finished(
    context: WorkspaceProcessContext, backfill_id: str, deadline: float, proc: subprocess.Popen, log: Path
) -> str:
    """The final status of a backfill, read over GraphQL; fails the test at the deadline or if the daemon died."""
    while time.monotonic() < deadline and proc.poll() is None:
        data = execute_dagster_graphql(context.create_request_context(), STATUS, {"id": backfill_id}).data
        status = data["partitionBackfillOrError"]["status"]
        if status not in ("REQUESTED", "CANCELING", "FAILING"):
            return status
        time.sleep(1)
    pytest.fail(
        f"backfill {backfill_id} unfinished, daemon exit code {proc.poll()}:\n{log.read_text()[-3000:]}"
    )


def materialised(instance: dg.DagsterInstance, backfill_id: str) -> set[tuple[str, str | None]]:
    """(asset, partition) of every materialisation by the runs of a backfill."""
    done = set()
    for r in instance.get_runs(dg.RunsFilter(tags={BACKFILL_TAG: backfill_id})):
        records = instance.get_records_for_run(r.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        for record in records.records:
            event = record.event_log_entry.dagster_event
            done.add((event.asset_key.to_user_string(), event.partition))
    return done


def failures(instance: dg.DagsterInstance, backfill_id: str) -> str:
    """The messages of the failed steps of a backfill's runs."""
    return "\n".join(
        record.event_log_entry.dagster_event.event_specific_data.error.message
        for r in instance.get_runs(dg.RunsFilter(tags={BACKFILL_TAG: backfill_id}))
        for record in instance.get_records_for_run(r.run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records
    )


def test_backfills_materialise_what_was_selected_or_fail_saying_why(tmp_path, keyword_llm, monkeypatch):
    deadline = time.monotonic() + TIMEOUT
    keys = write_batches(tmp_path / "inbox", count=2)
    home, workspace, log = tmp_path / "dagster_home", tmp_path / "workspace.yaml", tmp_path / "daemon.log"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE)
    tests = Path(__file__).parent
    workspace.write_text(
        f"load_from:\n  - python_file:\n      relative_path: {Path(__file__)}\n      attribute: location\n"
        f"      working_directory: {tests}\n      location_name: backfill\n"
    )
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv(ROOT, str(tmp_path))
    group = [f"reviews/{s}" for s in STAGES]
    per_batch = {"documents", "reviews/proposals", "reviews/compatibility", "reviews/document_factors"}
    with (
        dg.DagsterInstance.from_config(str(home)) as instance,
        daemon(workspace, dict(os.environ), log) as proc,
    ):
        instance.add_dynamic_partitions(batches.name, keys)
        # Every asset on every batch, in this process, while the daemon starts: what the backfills redo.
        assert run(local_resources(tmp_path), instance, keys).success
        with WorkspaceProcessContext(instance, WorkspaceFileTarget([str(workspace)])) as context:
            for selection in (
                ["reviews/proposals"],  # re-propose
                ["reviews/compatibility", "reviews/document_factors"],  # re-score
                ["reviews/proposals", "reviews/compatibility", "reviews/document_factors"],  # the batch job's
                group,  # everything of the discovery
            ):
                backfill_id = backfill(context, selection, keys[:1])
                status = finished(context, backfill_id, deadline, proc, log)
                expected = {(a, keys[0] if a in per_batch else None) for a in selection}
                done = materialised(instance, backfill_id)
                assert (status, done) == ("COMPLETED_SUCCESS", expected), selection

            # Not reachable from proposals through selected batch assets: Dagster would skip document_factors.
            backfill_id = backfill(context, ["reviews/proposals", "reviews/document_factors"], keys[:1])
            assert finished(context, backfill_id, deadline, proc, log) == "COMPLETED_FAILED"
            assert not materialised(instance, backfill_id)
            reason = failures(instance, backfill_id)
            assert "selected reviews/document_factors, which Dagster would skip" in reason
