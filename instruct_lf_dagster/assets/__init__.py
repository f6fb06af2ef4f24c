"""Assets, grouped by domain: per-batch (documents, proposals, compatibility, scores) and discovery."""

import dagster as dg

from instruct_lf_dagster.assets import discovery, documents, proposals, scoring

all_assets = dg.load_assets_from_modules([documents, proposals, discovery, scoring])
all_checks = dg.load_asset_checks_from_modules([documents, proposals, discovery, scoring])
