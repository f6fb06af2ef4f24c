"""The vocabulary: every proposed property, normalised, with exact and near duplicates folded together."""

import dagster as dg
import pandas as pd

from instruct_lf_dagster.core.discovery import DiscoverySpec
from instruct_lf_dagster.core.vocabulary import Vocabulary
from instruct_lf_dagster.partitions import asset_key
from instruct_lf_dagster.resources.compute import ComputeResource


def build(d: DiscoverySpec) -> list:
    """`<name>/vocabulary`."""
    versions = d.versions()
    common = {"group_name": d.name}

    @dg.asset(
        key=asset_key(d, "vocabulary"),
        ins={"proposals": dg.AssetIn(asset_key(d, "proposals"))},
        kinds={"python"},
        code_version=versions["vocabulary"],
        **common,
    )
    def vocabulary(
        context: dg.AssetExecutionContext, proposals: pd.DataFrame, compute: ComputeResource
    ) -> Vocabulary:
        """Every proposed property, normalised and screened; exact and near duplicates (by MiniLM cosine) folded
        together. Properties kept out (instructions, code, the goal restated, the discovery's `exclude`
        patterns) are counted and listed with the reason in the metadata."""
        try:
            vocab = d.instruct_lf(compute.config()).fit_vocabulary(
                proposals["properties"].map(list).tolist(), d.goal
            )
        except ValueError as error:
            raise dg.Failure(f"{error}: check the goal and the model") from error
        top = sorted(vocab.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:15]
        context.add_output_metadata(
            {
                "properties": len(vocab),
                "raw_strings": len(vocab.canonical),
                "near_duplicate_merges": vocab.merges,
                "excluded": len(vocab.excluded),
                "excluded_properties": dg.MetadataValue.md(
                    pd.DataFrame(list(vocab.excluded.items()), columns=["property", "reason"]).to_markdown(
                        index=False
                    )
                    if vocab.excluded
                    else "none"
                ),
                "most_proposed": dg.MetadataValue.md(
                    pd.DataFrame(top, columns=["property", "count"]).to_markdown(index=False)
                ),
            }
        )
        return vocab

    return [vocabulary]
