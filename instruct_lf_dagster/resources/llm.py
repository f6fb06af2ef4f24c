"""The LLM resource: which model answers, where, at what budget, and where its responses are cached."""

import dagster as dg
from pydantic import Field

from instruct_lf_dagster.core.llm import Cache, LLMClient, ResponseCache
from instruct_lf_dagster.core.paths import data_dir

DEFAULT_MODEL = "llamacpp/qwen2.5-coder-1.5b-instruct"
CACHE_FILE = "llm_cache.duckdb"


class LLMResource(dg.ConfigurableResource):
    """Settings of an `LLMClient`; give `api_key` as `EnvVar("...")` so the key never sits in config."""

    model: str = Field(
        default=DEFAULT_MODEL,
        description="litellm model string, e.g. 'openai/gpt-4o-mini' or 'llamacpp/<name or /path.gguf>'",
    )
    api_base: str | None = Field(default=None, description="base URL of an OpenAI-compatible server")
    api_key: str | None = Field(default=None, repr=False, description="provider key; use EnvVar('...')")
    temperature: float = Field(default=0.0, description="sampling temperature (0 = greedy)")
    max_tokens: int = Field(default=256, description="most tokens per answer")
    timeout: float = Field(default=120.0, description="seconds before one HTTP call gives up")
    retries: int = Field(default=3, description="extra attempts on 429, 5xx, timeouts and lost connections")
    max_concurrency: int = Field(default=4, description="calls in flight at once (1 for embedded models)")
    max_documents_per_batch: int | None = Field(
        default=None,
        description="documents of a batch the LLM is asked about, for discoveries that set no proposal budget; "
        "empty: every document (the linker scores the rest all the same)",
    )
    budget_usd: float | None = Field(default=None, description="stop before spending more dollars than this")
    budget_tokens: int | None = Field(default=None, description="stop before using more tokens than this")
    cache_path: str | None = Field(
        default=None, description=f"DuckDB response cache; default <INSTRUCT_LF_HOME>/{CACHE_FILE}"
    )
    seed: int = Field(default=0, description="sampling seed sent to providers that accept one")

    def get_client(
        self, model: str | None = None, api_key: str | None = None, cache: Cache | None = None
    ) -> LLMClient:
        """A client with these settings and the persistent response cache (`cache`, else the DuckDB file); a
        discovery may name its own model (and key), keeping the environment's budget, retries and cache."""
        # Another model is another provider: the environment's endpoint and key are never sent to it.
        own = model is not None and model != self.model
        return LLMClient(
            model or self.model,
            api_base=None if own else self.api_base or None,
            api_key=api_key if own else api_key or self._resolved_api_key(),
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            timeout=self.timeout,
            retries=self.retries,
            max_concurrency=self.max_concurrency,
            budget_usd=self.budget_usd,
            budget_tokens=self.budget_tokens,
            cache=cache or ResponseCache(self.cache_path or data_dir() / CACHE_FILE),
            seed=self.seed,
        )

    def _resolved_api_key(self) -> str | None:
        # Dagster resolves EnvVar when it initialises the resource for a run; a resource used directly
        # (scripts, benchmarks) still holds the EnvVar itself, whose str() is the variable's name.
        if isinstance(self.api_key, dg.EnvVar):
            return self.api_key.get_value() or None
        return self.api_key or None
