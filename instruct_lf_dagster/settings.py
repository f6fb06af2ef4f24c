"""The environment, read in one place: `Settings.from_env()` is built where the definitions and the CLI start and
handed to the resources; no other module of the package reads `os.environ`.

| variable | meaning | default |
| --- | --- | --- |
| INSTRUCT_LF_ENV | `local` or `prod`: which resources | local |
| INSTRUCT_LF_HOME | the data directory (tables, artefacts, models, caches, inbox) | ./data |
| DAGSTER_HOME | the Dagster instance of headless runs | ./.dagster_home |
| INSTRUCT_LF_RAY_ADDRESS | '' in process; `local`; a Ray cluster's address | '' |
| INSTRUCT_LF_LLM_THREADS | CPU threads of the embedded llama.cpp model | every core |
| INSTRUCT_LF_LLM_MODEL, INSTRUCT_LF_LLM_API_BASE | production LLM (litellm model string, endpoint) | |
| INSTRUCT_LF_MAX_PROPOSALS_PER_BATCH | production proposal budget per batch | |
| INSTRUCT_LF_BUCKET, INSTRUCT_LF_PREFIX, INSTRUCT_LF_INBOX_PREFIX, INSTRUCT_LF_S3_ENDPOINT | production S3 | |

Secrets (INSTRUCT_LF_LLM_API_KEY, a discovery's `api_key_env`) are never read here: Dagster resolves them
(`dg.EnvVar`) when a run starts, so they never sit in config.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENVIRONMENTS = ("local", "prod")


@dataclass(frozen=True)
class Settings:
    """Everything the platform takes from the environment; empty strings count as unset."""

    env: str = "local"
    home: Path = Path("data")
    dagster_home: Path = Path(".dagster_home")
    ray_address: str = ""
    llm_threads: int = 0  # 0: every core
    llm_model: str | None = None
    llm_api_base: str | None = None
    max_proposals_per_batch: int | None = None
    bucket: str | None = None
    prefix: str | None = None
    inbox_prefix: str | None = None
    s3_endpoint: str | None = None

    def __post_init__(self) -> None:
        if self.env not in ENVIRONMENTS:
            raise ValueError(f"INSTRUCT_LF_ENV must be one of {list(ENVIRONMENTS)}, not {self.env!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> Settings:
        """The settings of this process (`environ`: another mapping, for tests); relative homes resolve
        against `cwd` (default: the working directory)."""
        env = os.environ if environ is None else environ
        cwd = cwd or Path.cwd()

        def text(name: str) -> str | None:
            return (env.get(name) or "").strip() or None

        def number(name: str) -> int | None:
            value = text(name)
            if value is None:
                return None
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"{name}={value!r} is not a whole number") from None

        def path(name: str, default: str) -> Path:
            return (cwd / Path(text(name) or default).expanduser()).resolve()

        return cls(
            env=text("INSTRUCT_LF_ENV") or cls.env,
            home=path("INSTRUCT_LF_HOME", str(cls.home)),
            dagster_home=path("DAGSTER_HOME", str(cls.dagster_home)),
            ray_address=text("INSTRUCT_LF_RAY_ADDRESS") or cls.ray_address,
            llm_threads=number("INSTRUCT_LF_LLM_THREADS") or cls.llm_threads,
            llm_model=text("INSTRUCT_LF_LLM_MODEL"),
            llm_api_base=text("INSTRUCT_LF_LLM_API_BASE"),
            max_proposals_per_batch=number("INSTRUCT_LF_MAX_PROPOSALS_PER_BATCH"),
            bucket=text("INSTRUCT_LF_BUCKET"),
            prefix=text("INSTRUCT_LF_PREFIX"),
            inbox_prefix=text("INSTRUCT_LF_INBOX_PREFIX"),
            s3_endpoint=text("INSTRUCT_LF_S3_ENDPOINT"),
        )


def offline() -> None:
    """Keep litellm and the Hugging Face libraries off the network; call before they are first imported.

    The one write to the environment besides `quiet_openmp`: litellm fetches its price table at import unless
    LITELLM_LOCAL_MODEL_COST_MAP is set, and huggingface_hub / transformers read HF_HUB_OFFLINE and
    TRANSFORMERS_OFFLINE; none of them takes these as arguments. A value the user set is kept.
    """
    for name, value in {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }.items():
        os.environ.setdefault(name, value)


def quiet_openmp() -> None:
    """Let OpenMP workers sleep between tasks in a process that runs llama.cpp; call before torch loads.

    llama.cpp's workers otherwise spin between tokens: on a shared machine that made decoding 5-6x slower. libgomp
    (shared by torch and llama_cpp) reads OMP_WAIT_POLICY once, when it loads, and has no other switch. It slows
    torch's many small operations (Linear CorEx 1.8x), so only processes that decode call this.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
