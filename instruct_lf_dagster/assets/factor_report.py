"""The factor report: each factor named by the discovery's LLM, with its theme, properties and top documents."""

import heapq

import dagster as dg
import numpy as np
import pandas as pd

import instruct_lf_dagster.assets.display as display
from instruct_lf_dagster.assets.matrix import read
from instruct_lf_dagster.core.curation import curate, mark_seeded
from instruct_lf_dagster.core.discovery import DiscoverySpec
from instruct_lf_dagster.core.factors import Factors, ends
from instruct_lf_dagster.core.naming import FactorName, name_factors
from instruct_lf_dagster.partitions import DOCUMENTS, asset_key, batches
from instruct_lf_dagster.resources.llm import LLMResource
from instruct_lf_dagster.resources.storage import Storage

EXAMPLE_CHARS = 300  # of each top-scoring document kept in the report


def top_documents(
    storage: Storage,
    d: DiscoverySpec,
    keys: list[str],
    factors: Factors,
    groups: dict[int, list[int]],
    top: int = 3,
) -> dict[int, list[str]]:
    """Shown factor id -> the texts of the `top` documents of `keys` that score highest on it (`groups`: shown
    id -> member ids, scored as `Factors.grouped`), read batch by batch."""
    table, best = asset_key(d, "compatibility"), {g: [] for g in groups}
    for key in keys:
        part = read(storage, table, key, len(factors.properties))
        if part is None:
            continue
        ids, x = part
        texts = storage.read_table(DOCUMENTS, [key]).set_index("document_id")["text"]
        strengths = factors.grouped(factors.strengths(x), groups)
        for column, g in enumerate(groups):
            for i in np.argsort(-strengths[:, column], kind="stable")[:top]:
                heapq.heappush(best[g], (float(strengths[i, column]), key, ids[i], texts.get(ids[i], "")))
                if len(best[g]) > top:
                    heapq.heappop(best[g])
    return {g: [text for *_, text in sorted(entries, reverse=True)] for g, entries in best.items()}


def earlier_names(storage: Storage, d: DiscoverySpec) -> dict[int, tuple[list[str], FactorName]]:
    """Factor id -> (members, name) in the stored factor report, if there is one. Pinned names are left out:
    once unpinned, a factor is named by the LLM again."""
    table = asset_key(d, "factor_report")
    if not storage.has_table(table):
        return {}
    report = storage.read_table(table)
    if "name" not in report.columns:
        return {}
    if "curated" in report.columns:
        report = report[~report["curated"].fillna("").str.contains("named")]
    return {
        int(k): (
            rows["property"].tolist(),
            FactorName(
                int(k), rows["name"].iloc[0], rows["description"].iloc[0], not rows["named_by_llm"].iloc[0]
            ),
        )
        for k, rows in report.groupby("factor", sort=True)
    }


def build(d: DiscoverySpec) -> list:
    """`<name>/factor_report` with its curation check."""
    versions = d.versions()
    common = {"group_name": d.name}

    @dg.asset(
        key=asset_key(d, "factor_report"),
        ins={
            "latent_factors": dg.AssetIn(asset_key(d, "latent_factors")),
            "themes": dg.AssetIn(asset_key(d, "themes")),
        },
        deps=[
            DOCUMENTS,
            asset_key(d, "compatibility"),
        ],  # the documents that score highest, read batch by batch
        kinds={"duckdb"},
        code_version=versions["factor_report"],
        **common,
    )
    def factor_report(
        context: dg.AssetExecutionContext,
        latent_factors: Factors,
        themes: Factors,
        llm: LLMResource,
        storage: Storage,
    ) -> pd.DataFrame:
        """Each factor's name, one sentence on it, its theme, its properties by mutual information with the end
        of the factor each sits at (`pole`: high or low) and the documents that score highest on it: what
        discovery found.

        The discovery's LLM names each factor (a direction) from its top properties at each end and the 3
        documents that score highest on it, and each theme from its factors' names (cached like proposals); a failed or unusable answer falls
        back to the top property (or factor), flagged.
        """
        ranked, ids = latent_factors.ranked(), latent_factors.ids
        # What is shown: the curation's groups, strongest first (a merge group where its first id stands).
        groups = d.curation.groups([ids[k] for k in ranked])
        frame = curate(latent_factors.to_frame(), d.curation, [ids[k] for k in ranked])
        keys = context.instance.get_dynamic_partitions(batches.name)
        examples = top_documents(storage, d, keys, latent_factors, groups)
        rows = {g: part for g, part in frame.groupby("factor", sort=False)}
        members = {g: rows[g]["property"].tolist() for g in groups}
        poles = {
            g: [rows[g].loc[rows[g]["pole"] == end, "property"].tolist() for end in ("high", "low")]
            for g in groups
        }
        shown_of = {i: g for g, part in groups.items() for i in part}
        # A seed factor's name goes to the factor its properties were put into, unless the curation names it.
        seeded: dict[int, str] = {}
        # Not strict: seed factors edited since the fit (latent_factors, then unsynced) are matched in order.
        for seed, i in zip(d.method.seed_factors, latent_factors.anchored(), strict=False):
            if i in shown_of:
                seeded.setdefault(shown_of[i], seed.name)
        frame = mark_seeded(frame, seeded)
        pinned = {**seeded, **{g: d.curation.names[g] for g in groups if g in d.curation.names}}
        client = llm.client_for(d.name, d.llm, storage.response_cache())

        def progress(what: str):
            def report(done: int, total: int) -> None:
                if done == total or done % 5 == 0:
                    context.log.info(f"{d.name}/factor_report: named {done} of {total} {what}")

            return report

        earlier = earlier_names(storage, d)
        asked = [g for g in groups if g not in pinned]
        names, usage = name_factors(
            client,
            d.goal,
            {g: poles[g][0] for g in asked},
            examples,
            previous=earlier,
            progress=progress("factors"),
            low={g: poles[g][1] for g in asked},
        )
        kept = sum(n.factor in earlier and earlier[n.factor][1].name == n.name for n in names)
        named = {n.factor: n for n in names} | {g: FactorName(g, name, "") for g, name in pinned.items()}
        theme_of = {int(p): themes.ids[t] for p, t in zip(themes.properties, themes.assignment, strict=True)}
        theme_groups = {  # each theme's shown factors, by the names shown (merged members: the group's)
            themes.ids[t]: list(
                dict.fromkeys(named[int(p)].name for p, _ in themes.members(t) if int(p) in named)
            )
            for t in themes.nonempty()
        }
        # A theme of one factor is that factor: it takes the factor's name, and no call is made for it.
        theme_names, theme_usage = name_factors(
            client,
            d.goal,
            {t: factors for t, factors in theme_groups.items() if len(factors) > 1},
            {},
            themes=True,
            progress=progress("themes"),
        )
        theme_named = {t: factors[0] for t, factors in theme_groups.items() if len(factors) == 1}
        theme_named |= {n.factor: n.name for n in theme_names}
        report = frame.drop(columns="curated")
        report["name"] = report["factor"].map(lambda k: named[k].name).astype("string")
        report["description"] = report["factor"].map(lambda k: named[k].description).astype("string")
        # Pinned names were not asked of the LLM (their `curated` says "named").
        report["named_by_llm"] = report["factor"].map(lambda k: k not in pinned and not named[k].fallback)
        report["theme"] = report["factor"].map(lambda k: theme_of.get(k, -1)).astype("int64")
        report["theme_name"] = report["theme"].map(lambda t: theme_named.get(t, "")).astype("string")
        # The documents behind the name, for the HTML report: the same few on each of the factor's rows.
        report["examples"] = report["factor"].map(lambda k: [t[:EXAMPLE_CHARS] for t in examples.get(k, [])])
        report["curated"] = frame["curated"]
        row = {i: k for k, i in enumerate(ids)}
        top = [row[i] for g in list(groups)[:20] for i in groups[g]]
        column = {p: j for j, p in enumerate(latent_factors.properties)}
        columns = list(dict.fromkeys(column[p] for k in top for p, _ in latent_factors.members(k)[:3]))
        table = pd.DataFrame(
            [
                (
                    g,
                    named[g].name,
                    theme_named.get(theme_of.get(g, -1), ""),
                    len(members[g]),
                    ends(*(end[:4] for end in poles[g])),
                    frame.loc[frame["factor"] == g, "curated"].iloc[0],
                )
                for g in groups
            ],
            columns=["factor", "name", "theme", "size", "properties: high / low", "curated"],
        )
        context.add_output_metadata(
            {
                "goal": d.goal.text,
                "factors": len(groups),
                "themes": len(theme_named),
                "names_kept": kept,
                "named_by_llm": sum(not n.fallback for n in names),
                "fallback_names": ", ".join(str(n.factor) for n in names if n.fallback) or "none",
                "seed_factors": ", ".join(f"{g}: {name}" for g, name in seeded.items()) or "none",
                "curation": f"{sum(g in d.curation.names for g in groups)} names pinned, "
                f"{len({ids[k] for k in ranked} & set(d.curation.drop))} factors dropped, "
                f"{sum(len(m) > 1 for m in groups.values())} groups merged",
                **{f"naming_{key}": value for key, value in (usage + theme_usage).as_metadata().items()},
                "top_factors": dg.MetadataValue.md(table.head(10).to_markdown(index=False)),
                "heatmap": display.heatmap(
                    latent_factors.model.mis,
                    top,
                    columns,
                    list(latent_factors.properties),
                    [f"{ids[k]}: {named[shown_of[ids[k]]].name}" for k in top],
                ),
            }
        )
        return report

    @dg.asset_check(
        asset=factor_report,
        name="curation_ids_exist",
        additional_ins={"latent_factors": dg.AssetIn(asset_key(d, "latent_factors"))},
        description="Every factor id the discovery's curation names (names, drop, merge) is a factor of the "
        "current fit; a missing one is ignored, and warned of here.",
    )
    def curation_ids_exist(latent_factors: Factors) -> dg.AssetCheckResult:
        fitted = [latent_factors.ids[k] for k in latent_factors.nonempty()]
        missing = d.curation.missing(fitted)
        return dg.AssetCheckResult(
            passed=not missing,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "curated_ids": len(d.curation.ids()),
                "missing": ", ".join(map(str, missing)) or "none",
            },
        )

    return [factor_report, curation_ids_exist]
