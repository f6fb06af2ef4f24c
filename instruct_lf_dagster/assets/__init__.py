"""Assets: the shared `documents`, and the assets, jobs and refit schedule that each discovery builds."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

from instruct_lf_dagster.assets import discovery, proposals, reporting, scoring
from instruct_lf_dagster.assets.documents import documents
from instruct_lf_dagster.automation import discovery_jobs, refit_schedule

if TYPE_CHECKING:
    from instruct_lf_dagster.components.discovery import Discovery

__all__ = ["discovery_definitions", "documents"]


def discovery_definitions(d: Discovery) -> dg.Definitions:
    """Everything one discovery adds: `<name>/...` assets and checks, its two jobs and its refit schedule."""
    built = [*proposals.build(d), *discovery.build(d), *scoring.build(d), *reporting.build(d)]
    refit, score = discovery_jobs(d)
    return dg.Definitions(
        assets=[a for a in built if not isinstance(a, dg.AssetChecksDefinition)],
        asset_checks=[c for c in built if isinstance(c, dg.AssetChecksDefinition)],
        jobs=[refit, score],
        schedules=[refit_schedule(d, refit)],
    )
