"""Proposals: the LLM describes each document with goal-related properties (step 1a)."""

from typing import Literal

import dagster as dg
import pandas as pd
from pydantic import Field

from instruct_lf_dagster.core.proposals import Example, Goal, propose
from instruct_lf_dagster.partitions import batches, single_run
from instruct_lf_dagster.resources.llm import LLMResource

DEMO_GOAL = "What qualities of a movie make critics recommend it or warn against it?"
DEMO_EXAMPLE = (
    "A gorgeous, slow-moving meditation on grief that never finds its pulse, despite a fearless lead "
    "performance.",
    ["Slow pacing", "Grief and loss theme", "Strong lead performance", "Visually beautiful", "Lacks energy"],
)


class ExampleConfig(dg.Config):
    document: str
    properties: list[str]


def _example(value: ExampleConfig | dict) -> ExampleConfig:
    # Dagster keeps a field's default as given (plain data, so the launchpad can show it).
    return value if isinstance(value, ExampleConfig) else ExampleConfig(**value)


class GoalConfig(dg.Config):
    """The goal the factors must serve, and how documents are shown to the LLM."""

    goal: str = Field(default=DEMO_GOAL, description="what the factors are for, in plain words")
    document_kind: str = Field(default="movie review snippet", description="what one document is")
    examples: list[ExampleConfig] = Field(
        default=[{"document": DEMO_EXAMPLE[0], "properties": DEMO_EXAMPLE[1]}],
        description="worked examples: small models need one to propose properties rather than names",
    )
    truncation: Literal["head", "tail"] = Field(
        default="head", description="which end of a long document to keep ('tail' for dialogues)"
    )
    max_document_chars: int = Field(default=1500, description="characters of each document the LLM reads")

    def to_goal(self) -> Goal:
        return Goal(
            text=self.goal,
            document_kind=self.document_kind,
            examples=tuple(Example(e.document, tuple(e.properties)) for e in map(_example, self.examples)),
            max_document_chars=self.max_document_chars,
            truncation=self.truncation,
        )


@dg.asset(
    partitions_def=batches,
    backfill_policy=single_run,
    group_name="batches",
    pool="llm",
    kinds={"llm"},
)
def proposals(
    context: dg.AssetExecutionContext, config: GoalConfig, documents: pd.DataFrame, llm: LLMResource
) -> pd.DataFrame:
    """Goal-related properties the LLM proposes for each document (cached: a re-run costs no new calls).

    A document whose call failed gets an `error` and no properties; the next materialisation asks again.
    """
    total = len(documents)
    step = max(1, total // 10)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            context.log.info(f"proposals: {done}/{total} documents")

    result = propose(llm.get_client(), config.to_goal(), documents["text"].tolist(), progress=progress)
    metadata = result.usage.as_metadata()
    if result.usage.budget_exhausted:
        # Everything answered so far is in the response cache: a re-run with a larger budget pays only the rest.
        raise dg.Failure(
            f"LLM budget exhausted after {metadata['calls']} calls; completed answers are cached. "
            "Raise the budget (llm resource: budget_usd / budget_tokens) and re-run.",
            metadata=metadata,
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
    context.add_output_metadata(
        {
            **metadata,
            "documents": total,
            "failed": result.failed,
            "no_properties": int(((per_doc == 0) & out["error"].isna()).sum()),
            "properties_per_document": float(per_doc.mean()) if total else 0.0,
            "distinct_properties": len({p for props in out["properties"] for p in props}),
            "preview": dg.MetadataValue.md(
                pd.DataFrame(
                    {
                        "text": documents["text"].str.slice(0, 80),
                        "properties": out["properties"].map("; ".join),
                    }
                )
                .head(8)
                .to_markdown(index=False)
            ),
        }
    )
    return out


class FailureRateConfig(dg.Config):
    max_failure_rate: float = Field(default=0.1, description="largest acceptable share of failed LLM calls")


@dg.asset_check(
    asset=proposals, description="Share of documents whose LLM call failed stays below a threshold."
)
def llm_failure_rate(config: FailureRateConfig, proposals: pd.DataFrame) -> dg.AssetCheckResult:
    rate = float(proposals["error"].notna().mean()) if len(proposals) else 0.0
    return dg.AssetCheckResult(
        passed=rate <= config.max_failure_rate,
        metadata={"failure_rate": rate, "threshold": config.max_failure_rate},
    )
