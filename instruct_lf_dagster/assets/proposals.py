"""Proposals: the discovery's LLM describes each document with goal-related properties (step 1a)."""

import dagster as dg
import pandas as pd
from pydantic import Field

from instruct_lf_dagster.core.discovery import DiscoverySpec
from instruct_lf_dagster.core.proposals import propose
from instruct_lf_dagster.partitions import DOCUMENTS, asset_key, batches, refuse_narrowed_backfill, single_run
from instruct_lf_dagster.resources.llm import LLMResource
from instruct_lf_dagster.resources.storage import Storage


class FailureRateConfig(dg.Config):
    max_failure_rate: float = Field(default=0.1, description="largest acceptable share of failed LLM calls")


def build(d: DiscoverySpec) -> list:
    """The proposals asset of a discovery and its failure-rate check."""
    versions = d.versions()

    @dg.asset(
        key=asset_key(d, "proposals"),
        ins={"documents": dg.AssetIn(DOCUMENTS)},
        partitions_def=batches,
        backfill_policy=single_run,
        group_name=d.name,
        pool="llm",
        kinds={"llm"},
        code_version=versions["proposals"],
        description=f"Properties the LLM proposes for each document towards the goal: {d.goal.text}",
    )
    def proposals(
        context: dg.AssetExecutionContext, documents: pd.DataFrame, llm: LLMResource, storage: Storage
    ) -> pd.DataFrame:
        """Goal-related properties for the documents the proposal budget picks (cached: a re-run costs no calls).

        A document whose call failed gets an `error` and no properties; the next materialisation asks again.
        Documents left out by the budget get no row here; the linker scores them like the rest.
        """
        refuse_narrowed_backfill(context)
        total = len(documents)
        budget = d.proposal_budget(llm.max_documents_per_batch)
        # The budget applies per batch: a run over several batches picks in each.
        picked = documents.groupby("batch", sort=False)["document_id"].transform(
            lambda ids: budget.pick(d.name, ids.tolist())
        )
        documents = documents[picked.astype(bool).to_numpy()].reset_index(drop=True)
        step = max(1, len(documents) // 10)
        reported = [0]

        def progress(done: int, total: int) -> None:
            # The client repeats a count while calls take long: said too, so a slow endpoint is seen waiting.
            if done % step == 0 or done == total or done == reported[0]:
                waiting = " (waiting for the LLM)" if done == reported[0] else ""
                context.log.info(f"{d.name}/proposals: {done}/{total} documents{waiting}")
            reported[0] = done

        client = llm.client_for(d.name, d.llm, storage.response_cache())
        result = propose(client, d.goal, documents["text"].tolist(), progress=progress)
        metadata = result.usage.as_metadata()
        if result.usage.budget_exhausted:
            # Everything answered so far is in the response cache: a re-run with a larger budget pays only the rest.
            raise dg.Failure(
                f"LLM budget exhausted after {metadata['calls']} calls; completed answers are cached. "
                "Raise the budget (llm resource: budget_usd / budget_tokens) and re-run.",
                metadata=metadata,
            )
        if len(documents) and result.failed == len(documents):
            # Nothing to build a vocabulary from: fail here, where the endpoint can be named.
            last = client.last_error or next(e for e in reversed(result.errors) if e)
            raise dg.Failure(
                f"{d.name}/proposals: every LLM call failed ({len(documents)} documents): model {client.model} "
                f"at {client.endpoint}; last error: {last}",
                metadata={**metadata, "model": client.model, "endpoint": client.endpoint, "last_error": last},
            )
        out = pd.DataFrame(
            {
                "batch": documents["batch"].to_numpy(),
                "document_id": documents["document_id"].to_numpy(),
                "properties": [p or [] for p in result.properties],
                "error": result.errors,
                "raw": result.raw,
            }
        )
        per_doc = out["properties"].map(len)
        preview = pd.DataFrame(
            {"text": documents["text"].str.slice(0, 80), "properties": out["properties"].map("; ".join)}
        )
        context.add_output_metadata(
            {
                **metadata,
                "documents": total,
                "proposed": len(documents),
                "proposed_share": len(documents) / total if total else 0.0,
                "budget": budget.describe(),
                "failed": result.failed,
                "no_properties": int(((per_doc == 0) & out["error"].isna()).sum()),
                "properties_per_document": float(per_doc.mean()) if total else 0.0,
                "distinct_properties": len({p for props in out["properties"] for p in props}),
                "preview": dg.MetadataValue.md(preview.head(8).to_markdown(index=False)),
            }
        )
        return out

    @dg.asset_check(
        asset=proposals,
        name="llm_failure_rate",
        description="Share of documents whose LLM call failed stays below a threshold.",
    )
    def llm_failure_rate(config: FailureRateConfig, proposals: pd.DataFrame) -> dg.AssetCheckResult:
        rate = float(proposals["error"].notna().mean()) if len(proposals) else 0.0
        return dg.AssetCheckResult(
            passed=rate <= config.max_failure_rate,
            metadata={"failure_rate": rate, "threshold": config.max_failure_rate},
        )

    return [proposals, llm_failure_rate]
