"""The linker: the dual encoder fine-tuned on (document, proposed property) pairs."""

import dagster as dg
import pandas as pd

from instruct_lf_dagster.core.discovery import DiscoverySpec
from instruct_lf_dagster.core.linker import Linker
from instruct_lf_dagster.core.vocabulary import Vocabulary
from instruct_lf_dagster.partitions import DOCUMENTS, asset_key
from instruct_lf_dagster.resources.compute import ComputeResource


def build(d: DiscoverySpec) -> list:
    """`<name>/linker`."""
    versions = d.versions()
    common = {"group_name": d.name}

    @dg.asset(
        key=asset_key(d, "linker"),
        ins={
            "documents": dg.AssetIn(DOCUMENTS),
            "proposals": dg.AssetIn(asset_key(d, "proposals")),
            "vocabulary": dg.AssetIn(asset_key(d, "vocabulary")),
        },
        kinds={"pytorch"},
        code_version=versions["linker"],
        **common,
    )
    def linker(
        context: dg.AssetExecutionContext,
        documents: pd.DataFrame,
        proposals: pd.DataFrame,
        vocabulary: Vocabulary,
        compute: ComputeResource,
    ) -> Linker:
        """The dual encoder, fine-tuned so a document sits close to the properties proposed for it."""
        joined = documents.merge(proposals, on=["batch", "document_id"], how="inner")
        try:
            model, report = d.instruct_lf(compute.config()).fit_linker(
                joined["text"].tolist(),
                joined["properties"].map(list).tolist(),
                vocabulary,
                progress=lambda epoch, train, val: context.log.info(
                    f"{d.name}/linker: epoch {epoch} train loss {train:.4f} validation loss "
                    f"{val if val is None else round(val, 4)}"
                ),
            )
        except ValueError as error:
            raise dg.Failure(str(error)) from error
        context.add_output_metadata(
            {
                "pairs": report.pairs,
                "epochs_run": report.epochs_run,
                "best_val_loss": report.best_val_loss,  # None: too few pairs to hold any out
                "val_losses": str([round(v, 4) for v in report.val_losses]),
                "seconds": round(report.seconds, 1),
            }
        )
        return model

    return [linker]
