"""The LLM resource: an `LLMConfig` in Dagster's config, plus the key, the response cache and the embedded models."""

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from instruct_lf_dagster.core.discovery import DiscoveryLLM
from instruct_lf_dagster.core.llm import Cache, LLMClient, LLMConfig, ResponseCache

CACHE_FILE = "llm_cache.duckdb"  # the usual name of `cache_path` in a data directory


# The settings of LLMConfig are inherited, not repeated: Dagster's config schema (and UI) takes them from the
# pydantic fields, with their defaults, descriptions and range checks.
class LLMResource(dg.ConfigurableResource, LLMConfig):
    """Settings of an `LLMClient` (see `LLMConfig`); give `api_key` as `EnvVar("...")` so the key never sits in
    config. Whoever builds the resource says where its files are: `cache_path` and `models_home`."""

    api_key: str | None = Field(default=None, repr=False, description="provider key; use EnvVar('...')")
    max_documents_per_batch: int | None = Field(
        default=None,
        description="documents of a batch the LLM is asked about, for discoveries that set no proposal budget; "
        "empty: every document (the linker scores the rest all the same)",
    )
    cache_path: str | None = Field(
        default=None,
        description="DuckDB file of the response cache; empty: a cache in memory, one per client, lost with "
        "the process (every run pays for its answers again)",
    )
    models_home: str | None = Field(
        default=None,
        description="data directory the embedded models are fetched into (under models/); needed for "
        "llamacpp/ models",
    )
    llm_threads: int = Field(default=0, ge=0, description="CPU threads of an embedded model (0: every core)")

    def llm_config(self) -> LLMConfig:
        """The client settings alone, without the resource's own fields."""
        return LLMConfig.model_validate({name: getattr(self, name) for name in LLMConfig.model_fields})

    def get_client(
        self, model: str | None = None, api_key: str | None = None, cache: Cache | None = None
    ) -> LLMClient:
        """A client with these settings and the response cache (`cache`, else `cache_path`, else in memory); a
        discovery may name its own model (and key), keeping the environment's budget, retries and cache."""
        config = self.llm_config()
        # Another model is another provider: the environment's endpoint and key are never sent to it.
        own = model is not None and model != self.model
        if own:
            config = LLMConfig.model_validate({**config.model_dump(), "model": model, "api_base": None})
        return LLMClient(
            config,
            api_key=api_key if own else api_key or self._resolved_api_key(),
            cache=cache if cache is not None else self._cache(),
            # Registered only when a request is actually sent: loading llama.cpp for cached answers is waste.
            prepare=self._register_embedded if config.embedded else None,
        )

    def client_for(self, name: str, llm: DiscoveryLLM, cache: Cache | None = None) -> LLMClient:
        """The client of discovery `name`: its own model and key (`llm`) when it names them, else the
        environment's; `cache`: where the answers are kept (the storage's, in production beside the data)."""
        api_key = None
        if llm.api_key_env:
            api_key = dg.EnvVar(llm.api_key_env).get_value()  # resolved by Dagster, like the resource's key
            if not api_key:
                raise dg.Failure(f"{name}: llm.api_key_env names {llm.api_key_env}, which is not set")
        return self.get_client(model=llm.model, api_key=api_key, cache=cache)

    def _cache(self) -> Cache:
        return ResponseCache(self.cache_path) if self.cache_path else ResponseCache.memory()

    def _register_embedded(self) -> None:
        """Make litellm's `llamacpp/` provider serve the embedded models from `models_home`."""
        if not self.models_home:
            raise ValueError("llm resource: models_home is not set, and llamacpp/ models are read from there")
        # Imported here: llama.cpp's package is heavy and only processes that decode need it.
        from instruct_lf_dagster import models

        models.register(Path(self.models_home), self.llm_threads or os.cpu_count() or 1)

    def _resolved_api_key(self) -> str | None:
        # Dagster resolves EnvVar when it initialises the resource for a run; a resource used directly
        # (scripts, benchmarks) still holds the EnvVar itself, whose str() is the variable's name.
        if isinstance(self.api_key, dg.EnvVar):
            return self.api_key.get_value() or None
        return self.api_key or None
