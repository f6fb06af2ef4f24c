"""Headless runs: register every inbox file as a batch and materialise the whole graph in one Dagster run."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pandas as pd

from instruct_lf_dagster.automation import all_batches_tags, discovery_job
from instruct_lf_dagster.definitions import build_definitions
from instruct_lf_dagster.partitions import batches


def instance() -> dg.DagsterInstance:
    """The persistent instance in DAGSTER_HOME (default ./.dagster_home), so runs show up in the UI later."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path.cwd() / ".dagster_home"))).resolve()
    home.mkdir(parents=True, exist_ok=True)
    settings = home / "dagster.yaml"
    if not settings.exists():
        packaged = Path(__file__).resolve().parents[1] / "dagster.yaml"
        settings.write_text(packaged.read_text() if packaged.exists() else "telemetry:\n  enabled: false\n")
    return dg.DagsterInstance.get()


def register_batches(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[str]:
    """Add every inbox file not yet known as a batch; all batch keys in registration (partition) order."""
    with dg.build_resources({"inbox": defs.resources["inbox"]}) as resources:
        files = resources.inbox.files()
    known = set(instance.get_dynamic_partitions(batches.name))
    new = sorted(set(files) - known)
    if new:
        instance.add_dynamic_partitions(batches.name, new)
    return list(instance.get_dynamic_partitions(batches.name))


def run_discovery(run_config: dict | None = None, env: str | None = None) -> dg.ExecuteInProcessResult:
    """Materialise documents -> proposals -> vocabulary -> linker -> compatibility -> factors for every batch."""
    defs = build_definitions(env)
    inst = instance()
    keys = register_batches(defs, inst)
    if not keys:
        raise SystemExit(
            "the inbox is empty: put JSONL, CSV or Parquet files with a 'text' column there first"
        )
    job = defs.get_job_def(discovery_job.name)
    return job.execute_in_process(
        instance=inst,
        tags=all_batches_tags(keys),
        run_config=console_config(run_config),
        raise_on_error=False,
    )


def console_config(run_config: dict | None = None) -> dict:
    """`run_config` with the console at INFO: progress shows, Dagster's DEBUG events stay in the stored log (UI)."""
    return {"loggers": {"console": {"config": {"log_level": "INFO"}}}, **(run_config or {})}


def factor_table(env: str | None = None) -> pd.DataFrame:
    """The stored factor report (factor, rank, property, mi)."""
    defs = build_definitions(env)
    with dg.build_resources({"storage": defs.resources["storage"]}) as resources:
        return resources.storage.read_table("factor_report")


def format_factors(report: pd.DataFrame, top_factors: int = 10, top_properties: int = 5) -> str:
    """Factors as text: the largest first, each with its most informative properties."""
    sizes = report.groupby("factor").size().sort_values(ascending=False, kind="stable")
    lines = []
    for factor in sizes.index[:top_factors]:
        members = report[report["factor"] == factor].sort_values("rank")["property"].head(top_properties)
        lines.append(f"factor {factor:>3} ({sizes[factor]} properties): " + "; ".join(members))
    return "\n".join(lines)
