"""The factor report: each factor named by the discovery's LLM, with its theme, properties and top documents."""

import heapq

import dagster as dg
import numpy as np
import pandas as pd

import instruct_lf_dagster.assets.display as display
from instruct_lf_dagster.assets.matrix import read
from instruct_lf_dagster.core.discovery import DiscoverySpec
from instruct_lf_dagster.core.factors import Factors, ends
from instruct_lf_dagster.core.naming import FactorName, name_factors
from instruct_lf_dagster.partitions import DOCUMENTS, asset_key, batches
from instruct_lf_dagster.resources.llm import LLMResource
from instruct_lf_dagster.resources.storage import Storage

EXAMPLE_CHARS = 300  # of each top-scoring document kept in the report


def top_documents(
    storage: Storage, d: DiscoverySpec, keys: list[str], factors: Factors, ranked: list[int], top: int = 3
) -> dict[int, list[str]]:
    """factor -> the texts of the `top` documents of `keys` that score highest on it, read batch by batch."""
    table, best = asset_key(d, "compatibility"), {k: [] for k in ranked}
    for key in keys:
        part = read(storage, table, key, len(factors.properties))
        if part is None:
            continue
        ids, x = part
        texts = storage.read_table(DOCUMENTS, [key]).set_index("document_id")["text"]
        strengths = factors.strengths(x)
        for k in ranked:
            for i in np.argsort(-strengths[:, k], kind="stable")[:top]:
                heapq.heappush(best[k], (float(strengths[i, k]), key, ids[i], texts.get(ids[i], "")))
                if len(best[k]) > top:
                    heapq.heappop(best[k])
    return {k: [text for *_, text in sorted(entries, reverse=True)] for k, entries in best.items()}


def earlier_names(storage: Storage, d: DiscoverySpec) -> dict[int, tuple[list[str], FactorName]]:
    """Factor id -> (members, name) in the stored factor report, if there is one."""
    table = asset_key(d, "factor_report")
    if not storage.has_table(table):
        return {}
    report = storage.read_table(table)
    if "name" not in report.columns:
        return {}
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
    """`<name>/factor_report`."""
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
        keys = context.instance.get_dynamic_partitions(batches.name)
        examples = top_documents(storage, d, keys, latent_factors, ranked)
        examples = {ids[k]: texts for k, texts in examples.items()}
        members = {ids[k]: [p for p, _ in latent_factors.members(k)] for k in ranked}
        poles = {ids[k]: [[p for p, _ in end] for end in latent_factors.poles(k)] for k in ranked}
        client = llm.client_for(d.name, d.llm, storage.response_cache())

        def progress(what: str):
            def report(done: int, total: int) -> None:
                if done == total or done % 5 == 0:
                    context.log.info(f"{d.name}/factor_report: named {done} of {total} {what}")

            return report

        earlier = earlier_names(storage, d)
        names, usage = name_factors(
            client,
            d.goal,
            {k: high for k, (high, _) in poles.items()},
            examples,
            previous=earlier,
            progress=progress("factors"),
            low={k: low for k, (_, low) in poles.items()},
        )
        kept = sum(n.factor in earlier and earlier[n.factor][1].name == n.name for n in names)
        named = {n.factor: n for n in names}
        theme_of = {int(p): themes.ids[t] for p, t in zip(themes.properties, themes.assignment, strict=True)}
        groups = {
            themes.ids[t]: [named[int(p)].name for p, _ in themes.members(t)] for t in themes.nonempty()
        }
        theme_names, theme_usage = name_factors(
            client, d.goal, groups, {}, themes=True, progress=progress("themes")
        )
        theme_named = {n.factor: n.name for n in theme_names}
        report = latent_factors.to_frame()
        report["name"] = report["factor"].map(lambda k: named[k].name).astype("string")
        report["description"] = report["factor"].map(lambda k: named[k].description).astype("string")
        report["named_by_llm"] = report["factor"].map(lambda k: not named[k].fallback)
        report["theme"] = report["factor"].map(lambda k: theme_of.get(k, -1)).astype("int64")
        report["theme_name"] = report["theme"].map(lambda t: theme_named.get(t, "")).astype("string")
        # The documents behind the name, for the HTML report: the same few on each of the factor's rows.
        report["examples"] = report["factor"].map(lambda k: [t[:EXAMPLE_CHARS] for t in examples.get(k, [])])
        top = ranked[:20]
        column = {p: j for j, p in enumerate(latent_factors.properties)}
        columns = list(dict.fromkeys(column[p] for k in top for p, _ in latent_factors.members(k)[:3]))
        table = pd.DataFrame(
            [
                (
                    i,
                    named[i].name,
                    theme_named.get(theme_of.get(i, -1), ""),
                    len(members[i]),
                    ends(*(end[:4] for end in poles[i])),
                )
                for i in (ids[k] for k in ranked)
            ],
            columns=["factor", "name", "theme", "size", "properties: high / low"],
        )
        context.add_output_metadata(
            {
                "goal": d.goal.text,
                "factors": len(ranked),
                "themes": len(theme_names),
                "names_kept": kept,
                "named_by_llm": sum(not n.fallback for n in names),
                "fallback_names": ", ".join(str(n.factor) for n in names if n.fallback) or "none",
                **{f"naming_{key}": value for key, value in (usage + theme_usage).as_metadata().items()},
                "top_factors": dg.MetadataValue.md(table.head(10).to_markdown(index=False)),
                "heatmap": display.heatmap(
                    latent_factors.model.mis,
                    top,
                    columns,
                    list(latent_factors.properties),
                    [f"{ids[k]}: {named[ids[k]].name}" for k in top],
                ),
            }
        )
        return report

    return [factor_report]
