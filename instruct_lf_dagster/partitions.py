"""Partitions: each document file in the inbox is one batch; `documents` is shared by every discovery."""

import dagster as dg

from instruct_lf_dagster.core.discovery import DiscoverySpec

batches = dg.DynamicPartitionsDefinition(name="batches")

# A backfill of many batches runs as one run: the per-batch assets handle every batch of the run at once.
single_run = dg.BackfillPolicy.single_run()

DOCUMENTS = dg.AssetKey("documents")

BACKFILL_TAG = "dagster/backfill"


def refuse_narrowed_backfill(context: dg.AssetExecutionContext) -> None:
    """Fail a backfill run whose backfill will not materialise every asset the user selected.

    Given batch names, Dagster's asset backfill (AssetBackfillData.from_asset_partitions) targets the selected
    per-batch assets at the top of the selection and those that a chain of selected per-batch assets leads to
    from them; one reached only through an unselected or discovery-wide asset is dropped, and the backfill ends
    green without it. Dagster has no hook to refuse such a backfill at launch; it requests the top per-batch
    assets first, and their run fails here before they write anything.
    """
    backfill_id = context.run.tags.get(BACKFILL_TAG)
    backfill = context.instance.get_backfill(backfill_id) if backfill_id else None
    if backfill is None or not backfill.is_asset_backfill or not backfill.asset_selection:
        return
    targeted = backfill.get_asset_backfill_data(context.repository_def.asset_graph).target_subset.asset_keys
    dropped = sorted(k.to_user_string() for k in set(backfill.asset_selection) - targeted)
    if dropped:
        raise dg.Failure(
            f"backfill {backfill_id} selected {', '.join(dropped)}, which Dagster would skip: it reaches a "
            "selected per-batch asset only through other selected per-batch assets. Backfill them separately, "
            "or also select the per-batch assets in between (e.g. compatibility before document_factors).",
            metadata={"skipped": ", ".join(dropped)},
        )


def asset_key(d: DiscoverySpec, stage: str) -> dg.AssetKey:
    """The asset key of one of a discovery's stages: `<name>/<stage>`."""
    return dg.AssetKey(d.key(stage))


def per_batch(d: DiscoverySpec) -> dict:
    """What each per-batch asset of a discovery declares: the batches, one run per backfill, the discovery's group
    and the single-writer `duckdb` pool."""
    return {"partitions_def": batches, "backfill_policy": single_run, "group_name": d.name, "pool": "duckdb"}
