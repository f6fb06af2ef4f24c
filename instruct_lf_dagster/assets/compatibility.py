"""The compatibility matrix: documents x properties under the linker, computed and stored batch by batch."""

import dagster as dg
import numpy as np

from instruct_lf_dagster.assets.matrix import to_row as matrix_row
from instruct_lf_dagster.core.compatibility import EmbeddingCache
from instruct_lf_dagster.core.compatibility import compatibility as compatibility_matrix
from instruct_lf_dagster.core.discovery import DiscoverySpec
from instruct_lf_dagster.core.linker import Linker
from instruct_lf_dagster.core.vocabulary import Vocabulary
from instruct_lf_dagster.partitions import DOCUMENTS, asset_key, per_batch, refuse_narrowed_backfill
from instruct_lf_dagster.resources.compute import ComputeResource
from instruct_lf_dagster.resources.storage import Storage


def build(d: DiscoverySpec) -> list:
    """`<name>/compatibility` with its finiteness check."""
    versions = d.versions()
    common = per_batch(d)

    @dg.asset(
        key=asset_key(d, "compatibility"),
        ins={
            "linker": dg.AssetIn(asset_key(d, "linker")),
            "vocabulary": dg.AssetIn(asset_key(d, "vocabulary")),
        },
        # Documents are read batch by batch from storage. A batch is scored after it is proposed: the per-batch
        # edge from proposals also lets a backfill of some batches that selects proposals and compatibility
        # target both (Dagster goes from proposals to other selected per-batch assets only along per-batch
        # edges, and the path through vocabulary and linker is discovery-wide).
        deps=[DOCUMENTS, asset_key(d, "proposals")],
        check_specs=[
            dg.AssetCheckSpec("compatibility_is_finite", asset=asset_key(d, "compatibility"), blocking=True)
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
        cache_path = storage.scratch_dir() / f"embedding_cache_{d.name}.npz"
        cache = EmbeddingCache.load(cache_path) if cache_path.exists() else EmbeddingCache()
        table = asset_key(d, "compatibility")
        encode = compute.document_encoder(linker)  # None: here; else an actor pool on the Ray cluster
        if encode is None:
            linker = linker.to(compute.torch_device())  # stored linkers load on the CPU
        documents, non_finite, low, high, total = 0, 0, np.inf, -np.inf, 0.0
        for batch in context.partition_keys:
            rows = storage.read_table(DOCUMENTS, [batch])
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

    return [compatibility]
