"""Assets: the shared `documents`, and each discovery's assets and checks, a module per asset."""

from __future__ import annotations

import dagster as dg

from instruct_lf_dagster.assets import (
    compatibility,
    document_factors,
    factor_report,
    factors,
    html_report,
    judged_quality,
    linker,
    prevalence,
    proposals,
    vocabulary,
)
from instruct_lf_dagster.assets.documents import documents
from instruct_lf_dagster.core.discovery import DiscoverySpec

__all__ = ["discovery_assets", "documents"]

# In the order the stages run (see core.discovery.STAGES).
_MODULES = (
    proposals,
    vocabulary,
    linker,
    compatibility,
    factors,
    factor_report,
    judged_quality,
    document_factors,
    prevalence,
    html_report,
)


def discovery_assets(d: DiscoverySpec) -> list[dg.AssetsDefinition | dg.AssetChecksDefinition]:
    """Every `<name>/...` asset and asset check of one discovery."""
    return [built for module in _MODULES for built in module.build(d)]
