"""The Dagster definitions: the declared discoveries, the shared documents, and the resources of an environment.

Resources per deployment live here, built from the one `Settings` object (`instruct_lf_dagster.settings`).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
from dagster.components.core.component_tree import ComponentTree
from dagster_aws.s3 import S3Resource

from instruct_lf_dagster.assets import documents
from instruct_lf_dagster.automation import all_discoveries_job, documents_job, inbox_sensor
from instruct_lf_dagster.components import Discovery
from instruct_lf_dagster.components.discovery import discovery_definitions
from instruct_lf_dagster.core.discovery import DiscoverySpec
from instruct_lf_dagster.resources.compute import ComputeResource
from instruct_lf_dagster.resources.inbox import LocalInbox, S3Inbox
from instruct_lf_dagster.resources.llm import CACHE_FILE, LLMResource
from instruct_lf_dagster.resources.storage import LocalStorage, S3Storage, StorageIOManager
from instruct_lf_dagster.settings import Settings

DEFS_MODULE = "instruct_lf_dagster.defs"
# About 2.5 minutes of the embedded model per batch on 2 cores; the linker scores every document.
LOCAL_PROPOSALS_PER_BATCH = 64
PROD_PROPOSALS_PER_BATCH = 500
PROD_MODEL = "openai/gpt-4o-mini"
# A model a discovery serves locally (ollama, a llama.cpp server) decodes on a CPU at 5-15 tokens/s, a few times
# slower than a hosted API, for which LLMConfig's defaults are sized; the embedded model ignores timeouts.
LOCAL_TIMEOUT, LOCAL_TIMEOUT_PER_TOKEN = 30.0, 0.25


def local_llm(settings: Settings, model: str | None = None) -> LLMResource:
    """The local LLM resource: the embedded model (or `model`, or INSTRUCT_LF_LLM_MODEL at
    INSTRUCT_LF_LLM_API_BASE), answers cached in the data directory. The evaluations ask for proposals through it
    too, so they share the platform's response cache."""
    model = model or settings.llm_model
    return LLMResource(
        **({"model": model, "api_base": settings.llm_api_base} if model else {}),
        max_documents_per_batch=settings.max_proposals_per_batch or LOCAL_PROPOSALS_PER_BATCH,
        timeout=LOCAL_TIMEOUT,
        timeout_per_token=LOCAL_TIMEOUT_PER_TOKEN,
        cache_path=str(settings.home / CACHE_FILE),
        models_home=str(settings.home),
        llm_threads=settings.llm_threads,
    )


def local_resources(settings: Settings) -> dict:
    """Embedded defaults: DuckDB and files under the data directory, the local llama.cpp model, CPU."""
    storage = LocalStorage(home=str(settings.home))
    return {
        "io_manager": StorageIOManager(storage=storage),
        "storage": storage,
        "inbox": LocalInbox(path=str(settings.home / "inbox")),
        "llm": local_llm(settings),
        "compute": ComputeResource(device="cpu", ray_address=settings.ray_address),
    }


def prod_resources(settings: Settings) -> dict:
    """Production: S3 (any S3-compatible endpoint), a remote LLM through litellm, CUDA when present."""
    s3 = S3Resource(endpoint_url=settings.s3_endpoint)
    bucket = settings.bucket or dg.EnvVar("INSTRUCT_LF_BUCKET")  # unset: Dagster names it when a run starts
    storage = S3Storage(
        s3=s3,
        bucket=bucket,
        prefix=settings.prefix or "instruct-lf",
        local_cache=str(settings.home / "s3_cache"),
    )
    return {
        "io_manager": StorageIOManager(storage=storage),
        "storage": storage,
        "inbox": S3Inbox(s3=s3, bucket=bucket, prefix=settings.inbox_prefix or "inbox/"),
        "llm": LLMResource(
            model=settings.llm_model or PROD_MODEL,
            api_base=settings.llm_api_base,
            api_key=dg.EnvVar("INSTRUCT_LF_LLM_API_KEY"),
            max_documents_per_batch=settings.max_proposals_per_batch or PROD_PROPOSALS_PER_BATCH,
        ),
        "compute": ComputeResource(device="auto", ray_address=settings.ray_address),
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


def declared_each(defs_module: str = DEFS_MODULE) -> tuple[list[Discovery], dict[str, str]]:
    """The discoveries that load, each apart, and the YAML files that do not (file -> the reason, in brief).

    For the command line: one broken discovery must not stop the others. (A code location loads them all at
    once, and Dagster shows a broken one as the location's error.)
    """
    module = importlib.import_module(defs_module)
    folder = Path(module.__file__).parent
    found, broken = [], {}
    for path in sorted(folder.glob("*/defs.yaml")):
        tree = ComponentTree.from_module(module, project_root=folder.parents[1])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", dg.BetaWarning)
                warnings.simplefilter("ignore", dg.PreviewWarning)
                found.append(tree.load_component(path.parent, Discovery))
        except Exception as error:
            broken[str(path)] = brief(error)
    return found, broken


def brief(error: BaseException, lines: int = 6) -> str:
    """The innermost cause of a load error, in a few lines (Dagster wraps it in a tree of what loaded)."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = [line for line in str(error).splitlines() if line.strip() and "errors.pydantic.dev" not in line]
    return "\n".join(text[:lines]) + ("\n..." if len(text) > lines else "")


def build_definitions(
    env: str | None = None,
    discoveries: Sequence[DiscoverySpec | Discovery] | None = None,
    defs_module: str = DEFS_MODULE,
    settings: Settings | None = None,
) -> dg.Definitions:
    """Definitions for an environment ('local' or 'prod'; default: the settings') and the declared discoveries.

    `discoveries`: use these instead of the YAML files (tests, notebooks); `settings`: instead of the
    environment's.
    """
    settings = settings or Settings.from_env()
    if env is not None and env != settings.env:
        settings = Settings(**{**vars(settings), "env": env})
    if discoveries is None:
        components, defs = declared(defs_module)
        specs = [c.spec() for c in components]
    else:
        specs = [d.spec() if isinstance(d, Discovery) else d for d in discoveries]
        defs = dg.Definitions.merge(*(discovery_definitions(s) for s in specs))
    names = [s.name for s in specs]
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
            sensors=[inbox_sensor(specs, jobs)],
            resources=RESOURCES[settings.env](settings),
        ),
    )


@dg.definitions
def defs() -> dg.Definitions:
    from instruct_lf_dagster.settings import offline

    offline()  # before litellm and the encoder's libraries load
    return build_definitions()
