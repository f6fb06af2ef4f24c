"""The Dagster definitions. Resources are chosen per environment here, and only here (INSTRUCT_LF_ENV)."""

from __future__ import annotations

import os

import dagster as dg
from dagster_aws.s3 import S3Resource

from instruct_lf_dagster.assets import all_assets, all_checks
from instruct_lf_dagster.automation import batch_job, discovery_job, discovery_schedule, inbox_sensor
from instruct_lf_dagster.resources.compute import ComputeResource
from instruct_lf_dagster.resources.inbox import LocalInbox, S3Inbox
from instruct_lf_dagster.resources.llm import LLMResource
from instruct_lf_dagster.resources.storage import LocalStorage, S3Storage, StorageIOManager


def local_resources() -> dict:
    """Embedded defaults: DuckDB and files under the data directory, the local llama.cpp model, CPU."""
    storage = LocalStorage()
    return {
        "io_manager": StorageIOManager(storage=storage),
        "storage": storage,
        "inbox": LocalInbox(),
        "llm": LLMResource(),
        "compute": ComputeResource(device="cpu"),
    }


def prod_resources() -> dict:
    """Production: S3 (any S3-compatible endpoint), a remote LLM through litellm, CUDA when present."""
    s3 = S3Resource(endpoint_url=os.environ.get("INSTRUCT_LF_S3_ENDPOINT") or None)
    bucket = dg.EnvVar("INSTRUCT_LF_BUCKET")
    storage = S3Storage(s3=s3, bucket=bucket, prefix=os.environ.get("INSTRUCT_LF_PREFIX", "instruct-lf"))
    return {
        "io_manager": StorageIOManager(storage=storage),
        "storage": storage,
        "inbox": S3Inbox(s3=s3, bucket=bucket, prefix=os.environ.get("INSTRUCT_LF_INBOX_PREFIX", "inbox/")),
        "llm": LLMResource(
            model=os.environ.get("INSTRUCT_LF_LLM_MODEL", "openai/gpt-4o-mini"),
            api_base=os.environ.get("INSTRUCT_LF_LLM_API_BASE") or None,
            api_key=dg.EnvVar("INSTRUCT_LF_LLM_API_KEY"),
        ),
        "compute": ComputeResource(device="auto"),
    }


RESOURCES = {"local": local_resources, "prod": prod_resources}


def build_definitions(env: str | None = None) -> dg.Definitions:
    """Definitions for an environment: 'local' (default) or 'prod'."""
    env = env or os.environ.get("INSTRUCT_LF_ENV", "local")
    if env not in RESOURCES:
        raise ValueError(f"INSTRUCT_LF_ENV must be one of {sorted(RESOURCES)}, not {env!r}")
    return dg.Definitions(
        assets=all_assets,
        asset_checks=all_checks,
        jobs=[discovery_job, batch_job],
        sensors=[inbox_sensor],
        schedules=[discovery_schedule],
        resources=RESOURCES[env](),
    )


defs = build_definitions()
