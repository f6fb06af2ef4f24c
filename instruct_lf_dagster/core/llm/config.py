"""`LLMConfig`: every setting of an LLM client, declared once (the Dagster resource inherits these fields)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Models served in-process by llama.cpp through a litellm provider of that name (registered by the caller).
LOCAL_PREFIX = "llamacpp/"
DEFAULT_MODEL = f"{LOCAL_PREFIX}qwen2.5-coder-1.5b-instruct"

# What `describe` reports: the settings that shape answers, and the limits on spending.
_DESCRIBED = ("model", "api_base", "temperature", "max_tokens", "seed", "budget_usd", "budget_tokens")


class LLMConfig(BaseModel):
    """Which model answers, how, and at what budget. Frozen: a client's settings do not change under it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(
        default=DEFAULT_MODEL,
        description="litellm model string, e.g. 'openai/gpt-4o-mini' or 'llamacpp/<name or /path.gguf>'",
    )
    api_base: str | None = Field(default=None, description="base URL of an OpenAI-compatible server")
    temperature: float = Field(default=0.0, ge=0, description="sampling temperature (0 = greedy)")
    max_tokens: int = Field(default=256, ge=1, description="most tokens per answer")
    timeout: float = Field(
        default=20.0,
        gt=0,
        description="seconds one HTTP call may take besides generating (connecting, queueing, reading the "
        "prompt); the call's limit adds timeout_per_token for each of max_tokens",
    )
    timeout_per_token: float = Field(
        default=0.05,
        ge=0,
        description="seconds a call may take per requested token (max_tokens): a few times the endpoint's "
        "generation time per token",
    )
    batch_deadline: float | None = Field(
        default=3600.0,
        gt=0,
        description="seconds a batch of calls may take in all; calls not answered by then fail (answers so "
        "far stay cached, a re-run asks only the rest); empty: no limit",
    )
    retries: int = Field(
        default=3, ge=0, description="extra attempts on 408, 429, 5xx, timeouts and lost connections"
    )
    max_concurrency: int = Field(
        default=4, ge=1, description="calls in flight at once (1 for embedded models)"
    )
    budget_usd: float | None = Field(
        default=None, gt=0, description="stop before spending more dollars than this"
    )
    budget_tokens: int | None = Field(
        default=None, gt=0, description="stop before using more tokens than this"
    )
    seed: int | None = Field(
        default=0, description="sampling seed sent to providers that accept one (empty: none)"
    )

    @field_validator("api_base")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        # An endpoint read from an unset environment variable arrives as "".
        return value or None

    @property
    def call_timeout(self) -> float:
        """Seconds one HTTP call may take: sized to the answer it asks for."""
        return self.timeout + self.timeout_per_token * self.max_tokens

    @property
    def embedded(self) -> bool:
        """Whether the model runs in this process (llama.cpp), one request at a time."""
        return self.model.startswith(LOCAL_PREFIX)

    def describe(self) -> dict[str, Any]:
        """The settings worth recording beside results (never a key), unset ones left out."""
        return self.model_dump(include=set(_DESCRIBED), exclude_none=True)
