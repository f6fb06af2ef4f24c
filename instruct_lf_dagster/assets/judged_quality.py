"""Judged quality beside each factor: would a reader spot an intruder among its properties, and does it help
answer the goal? Asked of the discovery's LLM (`core.judging`), cached like every other call."""

import dagster as dg
import pandas as pd

from instruct_lf_dagster.core.discovery import DiscoverySpec
from instruct_lf_dagster.core.judging import Judged, intrusion, relevance
from instruct_lf_dagster.core.topics import Topics
from instruct_lf_dagster.partitions import asset_key
from instruct_lf_dagster.resources.llm import LLMResource
from instruct_lf_dagster.resources.storage import Storage

TOP = 5  # properties shown to the judge per factor, as in the evaluations (`evaluation.quality_protocol`)
COLUMNS = {
    "factor": "int64",
    "name": "string",
    "intrusion": "boolean",  # the judge found the planted property (NA: not asked, fewer than TOP properties)
    "intrusion_options": "object",
    "intruder": "string",
    "relevant": "boolean",  # the judge said the factor helps answer the goal (NA: no usable answer)
    "intrusion_answer": "string",
    "relevance_answer": "string",
}


def factor_topics(report: pd.DataFrame) -> tuple[list[int], Topics]:
    """The factor report's shown factors (ids, in report order) as `Topics`: name and properties by MI."""
    ids, names, members = [], [], []
    for factor, rows in report.groupby("factor", sort=False):
        ids.append(int(factor))
        names.append(str(rows["name"].iloc[0]))
        members.append(tuple(rows.sort_values("mi", ascending=False, kind="stable")["property"]))
    return ids, Topics(names, members)


def judgements(ids: list[int], topics: Topics, intruded: Judged, relevant: Judged) -> pd.DataFrame:
    """One row per shown factor (`ids`, `topics` from `factor_topics`) with what the judge said of it
    (`COLUMNS`)."""
    by_intrusion = {d["topic"]: d for d in intruded.details}
    by_relevance = {d["topic"]: d for d in relevant.details}
    rows = []
    for t, factor in enumerate(ids):
        i, r = by_intrusion.get(t), by_relevance.get(t)
        rows.append(
            {
                "factor": factor,
                "name": topics.names[t],
                "intrusion": None if i is None or i["unusable"] else i["passed"],
                "intrusion_options": list(i["options"]) if i else [],
                "intruder": i["options"][i["intruder"] - 1] if i else None,
                "relevant": None if r is None or r["unusable"] else r["passed"],
                "intrusion_answer": i["answer"] if i else None,
                "relevance_answer": r["answer"] if r else None,
            }
        )
    return pd.DataFrame(rows, columns=list(COLUMNS)).astype(COLUMNS)


def build(d: DiscoverySpec) -> list:
    """`<name>/judged_quality`."""

    @dg.asset(
        key=asset_key(d, "judged_quality"),
        ins={"factor_report": dg.AssetIn(asset_key(d, "factor_report"))},
        kinds={"duckdb"},
        group_name=d.name,
        code_version=d.versions()["judged_quality"],
    )
    def judged_quality(
        context: dg.AssetExecutionContext, factor_report: pd.DataFrame, llm: LLMResource, storage: Storage
    ) -> pd.DataFrame:
        """Each shown factor judged as a reader would by the discovery's LLM: word intrusion (its top properties
        and one planted from another factor: is the planted one found?) and goal relevance (does it help answer
        the goal?). One question of each per factor, seeded by the discovery's seed; the accuracy over the
        factors is the metadata's intrusion_accuracy. A small local model answers near chance: read these as a
        strong judge's only when the discovery's LLM is one."""
        ids, topics = factor_topics(factor_report)
        client = llm.client_for(d.name, d.llm, storage.response_cache())
        n, seed = len(ids), d.method.seed
        intruded = intrusion(topics, client, d.goal, n=n, top=TOP, seed=seed)
        relevant = relevance(topics, client, d.goal, n=n, top=TOP)
        table = judgements(ids, topics, intruded, relevant)
        context.log.info(
            f"{d.name}/judged_quality: intruder found for {int(table['intrusion'].sum())} of "
            f"{int(table['intrusion'].notna().sum())} factors, {int(table['relevant'].sum())} of {n} relevant"
        )
        shown = table.assign(
            intrusion=table["intrusion"].map({True: "found", False: "missed"}).fillna("not asked"),
            relevant=table["relevant"].map({True: "yes", False: "no"}).fillna("no answer"),
        )[["factor", "name", "intrusion", "intruder", "relevant"]]
        context.add_output_metadata(
            {
                "intrusion_accuracy": intruded.score,
                "intrusion_asked": intruded.asked,
                "relevance": relevant.score,
                "unusable_answers": intruded.unusable + relevant.unusable,
                "judge_calls": intruded.cost.calls + relevant.cost.calls,
                "judge": d.llm.model or llm.model,
                "factors": dg.MetadataValue.md(shown.to_markdown(index=False)),
            }
        )
        return table

    return [judged_quality]
