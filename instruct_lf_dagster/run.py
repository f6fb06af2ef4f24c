"""Headless runs: register every inbox file as a batch and materialise one discovery, or all, in Dagster runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pandas as pd

from instruct_lf_dagster import liveness
from instruct_lf_dagster.automation import all_batches_tags, all_discoveries_job, documents_job
from instruct_lf_dagster.core.factors import ends
from instruct_lf_dagster.definitions import build_definitions, declared_each
from instruct_lf_dagster.partitions import DOCUMENTS, batches
from instruct_lf_dagster.settings import Settings


def instance(settings: Settings) -> dg.DagsterInstance:
    """The persistent instance in DAGSTER_HOME (default ./.dagster_home), so runs show up in the UI later."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    settings = home / "dagster.yaml"
    if not settings.exists():
        packaged = Path(__file__).resolve().parents[1] / "dagster.yaml"
        settings.write_text(packaged.read_text() if packaged.exists() else "telemetry:\n  enabled: false\n")
    return dg.DagsterInstance.from_config(str(home))


def register_batches(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[str]:
    """Add every inbox file not yet known as a batch; all batch keys in registration (partition) order."""
    known = list(instance.get_dynamic_partitions(batches.name))
    with dg.build_resources({"inbox": defs.resources["inbox"]}) as resources:
        files = resources.inbox.register(known)
    new = sorted(set(files) - set(known), key=files.__getitem__)
    if new:
        instance.add_dynamic_partitions(batches.name, new)
    return list(instance.get_dynamic_partitions(batches.name))


@dataclass
class Outcome:
    """What `run_discovery` did: its Dagster runs, and what it could not do."""

    names: list[str] = field(default_factory=list)  # the discoveries run
    results: list[dg.ExecuteInProcessResult] = field(default_factory=list)
    broken: dict[str, str] = field(default_factory=dict)  # discovery YAML file -> why it does not load
    released: list[str] = field(default_factory=list)  # runs whose process had died, failed and freed

    @property
    def unread(self) -> list[str]:
        """The batches whose file could not be read (their own runs failed)."""
        return unread(self.results)

    @property
    def failed_steps(self) -> list[str]:
        """The discovery steps that failed (in the last run: the discoveries' own)."""
        last = [r for r in self.results if r.job_def.name != documents_job.name][-1:]
        return [e.step_key for r in last for e in r.all_events if e.is_step_failure]

    @property
    def ok(self) -> bool:
        return not (self.broken or self.unread or self.failed_steps)


def run_discovery(
    settings: Settings,
    discovery: str | None = None,
    inst: dg.DagsterInstance | None = None,
    say: Callable[[str], None] = print,
) -> Outcome:
    """Materialise documents -> proposals -> ... -> factors on every batch for one discovery, or all of them.

    All discoveries: one run, each batch file read once. One discovery: the batches not read yet are read first
    (one run each), so that the other discoveries' inputs stay as they were; a file that cannot be read fails
    its own run and the discovery goes on with the others. A discovery whose YAML does not load is left out,
    named, and the others run. One run at a time per data directory; runs whose process died are failed and
    their pool slots freed first (`liveness`).
    """
    components, broken = declared_each()
    for path, reason in broken.items():
        say(f"discovery {path} does not load, left out: {reason}")
    specs = [c.spec() for c in components]
    names = [s.name for s in specs]
    if discovery is not None and discovery not in names:
        raise SystemExit(f"no discovery named {discovery!r}; declared: {', '.join(names) or 'none'}")
    chosen = [s for s in specs if discovery is None or s.name == discovery]
    outcome = Outcome(names=[s.name for s in chosen], broken=broken)
    if not chosen:
        return outcome
    defs = build_definitions(settings=settings, discoveries=chosen)
    inst = inst or instance(settings)
    with liveness.home_lock(settings.home, say):
        outcome.released = liveness.release_dead_runs(inst, say)
        keys = register_batches(defs, inst)
        if not keys:
            raise SystemExit(
                "the inbox is empty: put JSONL, CSV or Parquet files with a 'text' column there first"
            )

        def execute(job_name: str, **options) -> dg.ExecuteInProcessResult:
            liveness.wait_for_pools(inst, say)
            job = defs.resolve_job_def(job_name)
            tags = {**options.pop("tags", {}), **liveness.process_tags()}
            return job.execute_in_process(
                instance=inst, run_config=console_config(), raise_on_error=False, tags=tags, **options
            )

        if discovery is None:
            outcome.results.append(execute(all_discoveries_job.name, tags=all_batches_tags(keys)))
            return outcome
        read = inst.get_materialized_partitions(DOCUMENTS)
        outcome.results += [execute(documents_job.name, partition_key=key) for key in keys if key not in read]
        if inst.get_materialized_partitions(DOCUMENTS):
            outcome.results.append(execute(f"{discovery}_discovery", tags=all_batches_tags(keys)))
    return outcome


def unread(results: Sequence[dg.ExecuteInProcessResult]) -> list[str]:
    """The batches whose file a `run_discovery` could not read: a batch's own run that failed, or a batch a run
    over several batches went on without (listed in the `documents` metadata)."""
    keys = [
        r.dagster_run.tags.get("dagster/partition", "?")
        for r in results
        if not r.success and r.job_def.name == documents_job.name
    ]
    for result in results:
        for event in result.get_asset_materialization_events():
            if event.asset_key != DOCUMENTS:
                continue
            failed = event.materialization.metadata.get("failed_batches")
            if isinstance(getattr(failed, "value", None), dict):
                keys += [key for key in failed.value if key not in keys]
    return keys


def console_config(run_config: dict | None = None) -> dict:
    """`run_config` with the console at INFO: progress shows, Dagster's DEBUG events stay in the stored log (UI)."""
    return {"loggers": {"console": {"config": {"log_level": "INFO"}}}, **(run_config or {})}


def factor_table(settings: Settings, discovery: str) -> pd.DataFrame:
    """The stored factor report of a discovery (factor, rank, property, mi)."""
    defs = build_definitions(settings=settings)
    with dg.build_resources({"storage": defs.resources["storage"]}) as resources:
        return resources.storage.read_table(dg.AssetKey([discovery, "factor_report"]))


def latest_metadata(inst: dg.DagsterInstance, discovery: str, stage: str) -> dict[str, object]:
    """The metadata of the latest materialisation of `<discovery>/<stage>` (plain values), if any."""
    event = inst.get_latest_materialization_event(dg.AssetKey([discovery, stage]))
    if event is None or event.asset_materialization is None:
        return {}
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}


def changes(inst: dg.DagsterInstance, discovery: str) -> str:
    """What the latest refit changed, as matched against the fit before it (one line), or '' after a first fit."""
    meta = latest_metadata(inst, discovery, "latent_factors")
    if "identity_kept_share" not in meta:
        return ""
    kept = latest_metadata(inst, discovery, "factor_report").get("names_kept", "?")
    return (
        f"Since the last fit: {meta['identity_matched']} factors matched (ids kept; {kept} names kept, the others "
        "renamed as their members moved), "
        f"{meta['identity_kept_share']:.0%} of properties kept their factor; new: {meta['identity_new']}; "
        f"vanished: {meta['identity_vanished']}; split: {meta['identity_splits']}; merged: {meta['identity_merges']}"
    )


def judged(inst: dg.DagsterInstance, discovery: str) -> str:
    """What the judge said of the latest report's factors (one line), or '' before any judging."""
    meta = latest_metadata(inst, discovery, "judged_quality")
    if "intrusion_asked" not in meta:
        return ""
    found, relevant = meta["intrusion_accuracy"], meta["relevance"]
    return (
        f"Judged by {meta['judge']}: the planted property found in "
        f"{'n/a' if found != found else f'{found:.0%}'} of {meta['intrusion_asked']} factors asked, "
        f"{'n/a' if relevant != relevant else f'{relevant:.0%}'} judged relevant to the goal "
        "(per factor: the judged_quality table and the HTML report)"
    )


def format_factors(report: pd.DataFrame, top_factors: int = 10, top_properties: int = 5) -> str:
    """Factors as text, grouped by theme (largest first): each with its name, one sentence and its most
    informative properties as its two ends ("witty humor, gag humor / lack of humor"). The `top_factors` largest
    factors are shown."""
    sizes = report.groupby("factor").size().sort_values(ascending=False, kind="stable")
    shown = set(sizes.index[:top_factors])
    first = report.sort_values("rank").drop_duplicates("factor").set_index("factor")
    if "theme" not in first:
        first = first.assign(theme=-1, theme_name="")
    lines = []
    themes = first.loc[list(shown)].groupby("theme", sort=False)
    for _, members in sorted(themes, key=lambda g: -sizes[g[1].index].sum()):
        lines.append(f"theme: {members['theme_name'].iloc[0] or 'other factors'}")
        for factor in sorted(members.index, key=lambda f: -sizes[f]):
            row = first.loc[factor]
            curated = row.get("curated") or ""  # reports stored before curation have none
            flag = f" [curated: {curated}]" if curated else ""
            if not row.get("named_by_llm", True) and "named" not in curated:
                flag += " (top property: the LLM gave no name)"
            lines.append(f"  factor {factor:>3}  {row.get('name', '')}{flag}  ({sizes[factor]} properties)")
            if row.get("description"):
                lines.append(f"        {row['description']}")
            props = report[report["factor"] == factor].sort_values("rank").head(top_properties)
            pole = props["pole"] if "pole" in props else ["high"] * len(props)  # reports stored before poles
            high, low = (
                [p for p, e in zip(props["property"], pole, strict=True) if e == end]
                for end in ("high", "low")
            )
            lines.append("        " + ends(high, low))
    if len(sizes) > top_factors:
        lines.append(f"... and {len(sizes) - top_factors} smaller factors (all of them in the HTML report)")
    return "\n".join(lines)
