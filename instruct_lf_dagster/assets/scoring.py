"""A discovery's per-batch scoring with its current linker and factors: compatibility rows and factor scores."""

from typing import TYPE_CHECKING

import dagster as dg
import numpy as np
import pandas as pd

from instruct_lf_dagster.assets import display
from instruct_lf_dagster.assets.matrix import stack_compatibility
from instruct_lf_dagster.core.compatibility import EmbeddingCache
from instruct_lf_dagster.core.compatibility import compatibility as compatibility_matrix
from instruct_lf_dagster.core.factors import Factors
from instruct_lf_dagster.core.linker import Linker
from instruct_lf_dagster.core.paths import data_dir
from instruct_lf_dagster.core.vocabulary import Vocabulary
from instruct_lf_dagster.partitions import DOCUMENTS, batches, refuse_narrowed_backfill, single_run
from instruct_lf_dagster.resources.compute import ComputeResource

if TYPE_CHECKING:
    from instruct_lf_dagster.components.discovery import Discovery

STRONG = 1.0  # a factor score this many standard deviations from the mean counts as strong


def coverage(scores: np.ndarray) -> float:
    """Share of documents with at least one strong factor score."""
    return float((np.abs(scores) >= STRONG).any(axis=1).mean()) if len(scores) else 0.0


def build(d: "Discovery") -> list:
    """The per-batch scoring assets of `d` and their checks."""
    versions = d.versions()
    common = {
        "partitions_def": batches,
        "backfill_policy": single_run,
        "group_name": d.name,
        "pool": "duckdb",
    }

    @dg.asset(
        key=d.key("compatibility"),
        ins={
            "documents": dg.AssetIn(DOCUMENTS),
            "linker": dg.AssetIn(d.key("linker")),
            "vocabulary": dg.AssetIn(d.key("vocabulary")),
        },
        # A batch is scored after it is proposed. The edge also lets a backfill of some batches that selects
        # proposals and compatibility target both: Dagster goes from proposals to other selected per-batch
        # assets only along per-batch edges, and the path through vocabulary and linker is discovery-wide.
        deps=[d.key("proposals")],
        kinds={"duckdb"},
        code_version=versions["compatibility"],
        **common,
    )
    def compatibility(
        context: dg.AssetExecutionContext,
        documents: pd.DataFrame,
        linker: Linker,
        vocabulary: Vocabulary,
        compute: ComputeResource,
    ) -> pd.DataFrame:
        """Row i, column j: cosine of document i and property j under the linker (the input of Linear CorEx)."""
        refuse_narrowed_backfill(context)
        # Property embeddings outlive a run: a new batch under the same linker encodes only its documents.
        cache_path = data_dir() / f"embedding_cache_{d.name}.npz"
        cache = EmbeddingCache.load(cache_path) if cache_path.exists() else EmbeddingCache()
        matrix = compatibility_matrix(
            linker,
            documents["text"].tolist(),
            vocabulary.properties,
            batch_size=compute.encode_batch_size,
            cache=cache,
        )
        cache.prune([linker.fingerprint])  # embeddings of a retrained linker are never asked for again
        cache.save(cache_path)
        context.add_output_metadata(
            {
                "documents": matrix.shape[0],
                "properties": matrix.shape[1],
                "mean": float(matrix.mean()) if matrix.size else 0.0,
                "min": float(matrix.min()) if matrix.size else 0.0,
                "max": float(matrix.max()) if matrix.size else 0.0,
            }
        )
        return pd.DataFrame(
            {
                "batch": documents["batch"].to_numpy(),
                "document_id": documents["document_id"].to_numpy(),
                "compatibility": list(matrix),
            }
        )

    @dg.asset_check(
        asset=compatibility,
        name="compatibility_is_finite",
        blocking=True,
        description="No NaN or infinite value in the matrix.",
    )
    def compatibility_is_finite(compatibility: pd.DataFrame) -> dg.AssetCheckResult:
        bad = int(sum((~np.isfinite(np.asarray(row))).sum() for row in compatibility["compatibility"]))
        return dg.AssetCheckResult(passed=bad == 0, metadata={"non_finite_values": bad})

    @dg.asset(
        key=d.key("document_factors"),
        ins={
            "compatibility": dg.AssetIn(d.key("compatibility")),
            "latent_factors": dg.AssetIn(d.key("latent_factors")),
        },
        kinds={"duckdb"},
        code_version=versions["document_factors"],
        **common,
    )
    def document_factors(
        context: dg.AssetExecutionContext, compatibility: pd.DataFrame, latent_factors: Factors
    ) -> pd.DataFrame:
        """Each document's score on every factor, its strongest factor, and the properties that explain it."""
        refuse_narrowed_backfill(context)
        x = stack_compatibility(compatibility, len(latent_factors.properties))
        scores = latent_factors.scores(x)
        evidence = [entries[0] if entries else None for entries in latent_factors.evidence(x, top_factors=1)]
        out = pd.DataFrame(
            {
                "batch": compatibility["batch"].to_numpy(),
                "document_id": compatibility["document_id"].to_numpy(),
                "scores": list(scores.astype(np.float32)),
                "top_factor": [e["factor"] if e else -1 for e in evidence],
                "evidence": ["; ".join(p for p, _ in e["properties"]) if e else "" for e in evidence],
            }
        )
        top = latent_factors.ranked()[:15]
        shares = {
            batch: np.array([(group["top_factor"] == k).mean() for k in top])
            for batch, group in out.groupby("batch", sort=True)
        }
        context.add_output_metadata(
            {
                "documents": len(out),
                "coverage": coverage(scores),
                "prevalence": display.prevalence(shares, [f"factor {k}" for k in top]),
                "preview": dg.MetadataValue.md(
                    out[["document_id", "top_factor", "evidence"]].head(8).to_markdown(index=False)
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

    return [compatibility, compatibility_is_finite, document_factors, factor_coverage]
