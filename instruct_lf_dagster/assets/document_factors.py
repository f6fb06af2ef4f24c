"""Each document's factor scores with the current factors, its strongest factor and the evidence."""

import dagster as dg
import numpy as np
import pandas as pd

import instruct_lf_dagster.assets.display as display
from instruct_lf_dagster.assets.matrix import read
from instruct_lf_dagster.core.curation import in_order, shown_groups
from instruct_lf_dagster.core.discovery import DiscoverySpec
from instruct_lf_dagster.core.drift import STRONG
from instruct_lf_dagster.core.factors import Factors
from instruct_lf_dagster.partitions import asset_key, per_batch, refuse_narrowed_backfill
from instruct_lf_dagster.resources.storage import Storage

COLUMNS = ["batch", "document_id", "scores", "top_factor", "top_factor_name", "top_factor_pole", "evidence"]


def coverage(scores: np.ndarray) -> float:
    """Share of documents with at least one strong factor score."""
    return float((np.abs(scores) >= STRONG).any(axis=1).mean()) if len(scores) else 0.0


def build(d: DiscoverySpec) -> list:
    """`<name>/document_factors` with its coverage check."""
    versions = d.versions()
    common = per_batch(d)

    @dg.asset(
        key=asset_key(d, "document_factors"),
        ins={
            "latent_factors": dg.AssetIn(asset_key(d, "latent_factors")),
            "factor_report": dg.AssetIn(asset_key(d, "factor_report")),  # the factors' names
        },
        deps=[asset_key(d, "compatibility")],
        kinds={"duckdb"},
        code_version=versions["document_factors"],
        **common,
    )
    def document_factors(
        context: dg.AssetExecutionContext,
        latent_factors: Factors,
        factor_report: pd.DataFrame,
        storage: Storage,
    ) -> pd.DataFrame:
        """Each document's score on every factor, the factor it sits furthest along, at which end of it
        (`top_factor_pole`: high or low), and the properties that put it there.

        `scores` are the model's, one per fitted factor; the top factor and its evidence are among the factors
        the report shows (the discovery's curation: dropped ones never, a merge group as one factor)."""
        refuse_narrowed_backfill(context)
        table = asset_key(d, "compatibility")
        names = dict(zip(factor_report["factor"], factor_report["name"], strict=True))
        groups = shown_groups(
            factor_report, latent_factors
        )  # the factors as the report shows them (curation)
        frames, all_scores = [], []
        for batch in context.partition_keys:  # one batch's matrix in memory at a time
            part = read(storage, table, batch, len(latent_factors.properties))
            if part is None:
                continue
            ids, x = part
            rows = latent_factors.document_table(x, names, groups)
            all_scores.append(np.stack(rows["scores"].to_numpy()))
            frames.append(rows.assign(batch=batch, document_id=ids)[COLUMNS])
        if not frames:
            raise dg.Failure(
                f"no compatibility rows for batches {context.partition_keys}: materialise them first"
            )
        out = pd.concat(frames, ignore_index=True)
        scores = np.concatenate(all_scores)
        top = list(in_order(groups, [latent_factors.ids[k] for k in latent_factors.ranked()]))[:15]
        shares = {
            batch: np.array([(group["top_factor"] == k).mean() for k in top])
            for batch, group in out.groupby("batch", sort=True)
        }
        context.add_output_metadata(
            {
                "documents": len(out),
                "coverage": coverage(scores),
                "prevalence": display.prevalence(shares, [f"{k}: {names.get(k, '')}" for k in top]),
                "preview": dg.MetadataValue.md(
                    out[["document_id", "top_factor", "top_factor_name", "top_factor_pole", "evidence"]]
                    .head(8)
                    .to_markdown(index=False)
                ),
            }
        )
        return out

    @dg.asset_check(
        asset=document_factors,
        name="factor_coverage",
        description="Share of documents with at least one strong factor.",
    )
    def factor_coverage(document_factors: pd.DataFrame) -> dg.AssetCheckResult:
        share = coverage(np.stack(document_factors["scores"].to_numpy())) if len(document_factors) else 0.0
        return dg.AssetCheckResult(
            passed=share >= 0.5,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"coverage": share, "strong_score": STRONG},
        )

    return [document_factors, factor_coverage]
