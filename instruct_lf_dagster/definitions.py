"""The Dagster definitions: the declared discoveries, the shared documents, and the resources of an environment.

The environment (INSTRUCT_LF_ENV and the production settings) is read here, and only here.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
from dagster.components.core.component_tree import ComponentTree
from dagster_aws.s3 import S3Resource

from instruct_lf_dagster.assets import discovery_definitions, documents
from instruct_lf_dagster.automation import all_discoveries_job, documents_job, inbox_sensor
from instruct_lf_dagster.components import Discovery
from instruct_lf_dagster.resources.compute import ComputeResource
from instruct_lf_dagster.resources.inbox import LocalInbox, S3Inbox
from instruct_lf_dagster.resources.llm import LLMResource
from instruct_lf_dagster.resources.storage import LocalStorage, S3Storage, StorageIOManager

DEFS_MODULE = "instruct_lf_dagster.defs"


def ray_address() -> str:
    """Where the per-batch work runs: INSTRUCT_LF_RAY_ADDRESS ('' or unset: in process; 'local': a Ray cluster
    started on this machine; else a Ray cluster's address)."""
    return os.environ.get("INSTRUCT_LF_RAY_ADDRESS", "").strip()


def local_resources() -> dict:
    """Embedded defaults: DuckDB and files under the data directory, the local llama.cpp model, CPU."""
    storage = LocalStorage()
    return {
        "io_manager": StorageIOManager(storage=storage),
        "storage": storage,
        "inbox": LocalInbox(),
        # About 2.5 minutes of the embedded model per batch on 2 cores; the linker scores every document.
        "llm": LLMResource(max_documents_per_batch=64),
        "compute": ComputeResource(device="cpu", ray_address=ray_address()),
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
            max_documents_per_batch=int(os.environ.get("INSTRUCT_LF_MAX_PROPOSALS_PER_BATCH", "500")),
        ),
        "compute": ComputeResource(device="auto", ray_address=ray_address()),
    }


RESOURCES = {"local": local_resources, "prod": prod_resources}


def declared(defs_module: str = DEFS_MODULE) -> tuple[list[Discovery], dg.Definitions]:
    """The discoveries declared in the YAML files under `defs_module`, and what they define.

    A file that does not declare a valid discovery raises, naming the file and the field.
    """
    module = importlib.import_module(defs_module)
    tree = ComponentTree.from_module(module, project_root=Path(module.__file__).resolve().parents[2])
    with warnings.catch_warnings():
        # Components load through APIs Dagster marks beta or preview: a warning per asset, not for users.
        warnings.simplefilter("ignore", dg.BetaWarning)
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return tree.get_all_components(of_type=Discovery), tree.build_defs()


def build_definitions(
    env: str | None = None, discoveries: Sequence[Discovery] | None = None, defs_module: str = DEFS_MODULE
) -> dg.Definitions:
    """Definitions for an environment ('local', default, or 'prod') and the declared discoveries.

    `discoveries`: use these instead of the YAML files (tests, notebooks).
    """
    env = env or os.environ.get("INSTRUCT_LF_ENV", "local")
    if env not in RESOURCES:
        raise ValueError(f"INSTRUCT_LF_ENV must be one of {sorted(RESOURCES)}, not {env!r}")
    if discoveries is None:
        discoveries, defs = declared(defs_module)
    else:
        defs = dg.Definitions.merge(*(discovery_definitions(d) for d in discoveries))
    names = [d.name for d in discoveries]
    if len(set(names)) != len(names):
        raise ValueError(
            f"two discoveries have the same name: {sorted(n for n in names if names.count(n) > 1)}"
        )
    # The sensor targets the very job objects of the definitions (Dagster refuses look-alikes of the same name).
    jobs = [documents_job, *defs.jobs]
    return dg.Definitions.merge(
        defs,
        dg.Definitions(
            assets=[documents],
            jobs=[documents_job, all_discoveries_job],
            sensors=[inbox_sensor(discoveries, jobs)],
            resources=RESOURCES[env](),
        ),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
