"""A discovery's per-batch scoring with its current linker and factors: compatibility rows and factor scores."""

from typing import TYPE_CHECKING

import dagster as dg
import numpy as np
import pandas as pd

from instruct_lf_dagster.assets import display
from instruct_lf_dagster.assets.matrix import read
from instruct_lf_dagster.assets.matrix import to_row as matrix_row
from instruct_lf_dagster.core.compatibility import EmbeddingCache
from instruct_lf_dagster.core.compatibility import compatibility as compatibility_matrix
from instruct_lf_dagster.core.drift import STRONG
from instruct_lf_dagster.core.factors import Factors
from instruct_lf_dagster.core.linker import Linker
from instruct_lf_dagster.core.paths import data_dir
from instruct_lf_dagster.core.vocabulary import Vocabulary
from instruct_lf_dagster.partitions import DOCUMENTS, batches, refuse_narrowed_backfill, single_run
from instruct_lf_dagster.resources.compute import ComputeResource
from instruct_lf_dagster.resources.storage import Storage

if TYPE_CHECKING:
    from instruct_lf_dagster.components.discovery import Discovery


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
        ins={"linker": dg.AssetIn(d.key("linker")), "vocabulary": dg.AssetIn(d.key("vocabulary"))},
        # Documents are read batch by batch from storage. A batch is scored after it is proposed: the per-batch
        # edge from proposals also lets a backfill of some batches that selects proposals and compatibility
        # target both (Dagster goes from proposals to other selected per-batch assets only along per-batch
        # edges, and the path through vocabulary and linker is discovery-wide).
        deps=[DOCUMENTS, d.key("proposals")],
        check_specs=[
            dg.AssetCheckSpec("compatibility_is_finite", asset=d.key("compatibility"), blocking=True)
        ],
        kinds={"duckdb"},
        code_version=versions["compatibility"],
        **common,
    )
    def compatibility(
        context: dg.AssetExecutionContext,
        linker: Linker,
        vocabulary: Vocabulary,
        compute: ComputeResource,
        storage: Storage,
    ) -> dg.MaterializeResult:
        """Row i, column j: cosine of document i and property j under the linker (the input of Linear CorEx).

        Computed and stored one batch at a time, as one float32 matrix per batch.
        """
        refuse_narrowed_backfill(context)
        # Property embeddings outlive a run: a new batch under the same linker encodes only its documents.
        cache_path = data_dir() / f"embedding_cache_{d.name}.npz"
        cache = EmbeddingCache.load(cache_path) if cache_path.exists() else EmbeddingCache()
        table = d.key("compatibility").to_python_identifier()
        encode = compute.document_encoder(linker)  # None: here; else an actor pool on the Ray cluster
        if encode is None:
            linker = linker.to(compute.torch_device())  # stored linkers load on the CPU
        documents, non_finite, low, high, total = 0, 0, np.inf, -np.inf, 0.0
        for batch in context.partition_keys:
            rows = storage.read_table(DOCUMENTS.to_python_identifier(), [batch])
            if rows.empty:
                context.log.warning(
                    f"{d.name}/compatibility: batch {batch} has no documents (unreadable file?)"
                )
                continue
            matrix = compatibility_matrix(
                linker,
                rows["text"].tolist(),
                vocabulary.properties,
                batch_size=compute.encode_batch_size,
                cache=cache,
                encode_documents=encode,
                cache_documents=False,  # the file would grow with the stream; a batch is scored once
            )
            storage.write_table(table, matrix_row(batch, rows["document_id"].tolist(), matrix), [batch])
            where = f"on the Ray cluster at {compute.ray_address}" if encode else "in process"
            context.log.info(f"{d.name}/compatibility: batch {batch}: {len(matrix)} documents scored {where}")
            finite = np.isfinite(matrix)
            documents, non_finite = documents + len(matrix), non_finite + int((~finite).sum())
            if finite.any():
                low, high = min(low, float(matrix[finite].min())), max(high, float(matrix[finite].max()))
                total += float(matrix[finite].sum())
        cache.prune([linker.fingerprint])  # embeddings of a retrained linker are never asked for again
        cache.save(cache_path)
        cells = documents * len(vocabulary)
        return dg.MaterializeResult(
            metadata={
                "documents": documents,
                "properties": len(vocabulary),
                "mean": total / cells if cells else 0.0,
                "min": low if cells else 0.0,
                "max": high if cells else 0.0,
                "stored_in": storage.describe(),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="compatibility_is_finite",
                    passed=non_finite == 0,
                    metadata={"non_finite_values": non_finite},
                )
            ],
        )

    @dg.asset(
        key=d.key("document_factors"),
        ins={
            "latent_factors": dg.AssetIn(d.key("latent_factors")),
            "factor_report": dg.AssetIn(d.key("factor_report")),  # the factors' names
        },
        deps=[d.key("compatibility")],
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
        """Each document's score on every factor, its strongest factor, and the properties that explain it."""
        refuse_narrowed_backfill(context)
        table = d.key("compatibility").to_python_identifier()
        names = dict(zip(factor_report["factor"], factor_report["name"], strict=True))
        frames, all_scores = [], []
        for batch in context.partition_keys:  # one batch's matrix in memory at a time
            part = read(storage, table, batch, len(latent_factors.properties))
            if part is None:
                continue
            ids, x = part
            scores = latent_factors.scores(x).astype(np.float32)
            evidence = [
                entries[0] if entries else None for entries in latent_factors.evidence(x, top_factors=1)
            ]
            all_scores.append(scores)
            frames.append(
                pd.DataFrame(
                    {
                        "batch": batch,
                        "document_id": ids,
                        "scores": list(scores),
                        "top_factor": [e["factor"] if e else -1 for e in evidence],
                        "top_factor_name": [names.get(e["factor"], "") if e else "" for e in evidence],
                        "evidence": ["; ".join(p for p, _ in e["properties"]) if e else "" for e in evidence],
                    }
                )
            )
        if not frames:
            raise dg.Failure(
                f"no compatibility rows for batches {context.partition_keys}: materialise them first"
            )
        out = pd.concat(frames, ignore_index=True)
        scores = np.concatenate(all_scores)
        top = [latent_factors.ids[k] for k in latent_factors.ranked()[:15]]
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
                    out[["document_id", "top_factor", "top_factor_name", "evidence"]]
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

    return [compatibility, document_factors, factor_coverage]
