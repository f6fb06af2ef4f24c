"""The HTML report people open: one self-contained page per discovery."""

import dagster as dg
import pandas as pd

import instruct_lf_dagster.assets.html as html
from instruct_lf_dagster.core.discovery import DiscoverySpec
from instruct_lf_dagster.partitions import asset_key
from instruct_lf_dagster.resources.storage import Storage


def build(d: DiscoverySpec) -> list:
    """`<name>/factor_prevalence` with its drift check, and `<name>/html_report`."""
    versions = d.versions()

    @dg.asset(
        key=asset_key(d, "html_report"),
        ins={
            "factor_report": dg.AssetIn(asset_key(d, "factor_report")),
            "factor_prevalence": dg.AssetIn(asset_key(d, "factor_prevalence")),
            "judged_quality": dg.AssetIn(asset_key(d, "judged_quality")),
        },
        kinds={"html"},
        group_name=d.name,
        code_version=versions["html_report"],
    )
    def html_report(
        factor_report: pd.DataFrame,
        factor_prevalence: pd.DataFrame,
        judged_quality: pd.DataFrame,
        storage: Storage,
    ) -> dg.MaterializeResult:
        """One self-contained HTML page: the goal, the themes, and a card per factor (name, sentence, top
        properties, the documents behind it, its prevalence over the batches, what the judge said of it)."""
        page = html.render(d.name, d.goal.text, factor_report, factor_prevalence, judged_quality)
        location = storage.save_page(f"{d.name}_report", page)
        link = dg.MetadataValue.path(location) if "://" not in location else dg.MetadataValue.url(location)
        return dg.MaterializeResult(
            metadata={"report": link, "factors": int(factor_report["factor"].nunique())}
        )

    return [html_report]
