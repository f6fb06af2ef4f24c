"""The values an LLM batch produces: one `Completion` per request and the batch's `Usage`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

Messages = list[dict[str, Any]]


@dataclass
class Completion:
    """The outcome of one request: `text` on success, `error` ("<type>: <message>") otherwise.

    A cached completion carries the tokens and cost of the call that first produced it (not spent again).
    """

    text: str | None = None
    error: str | None = None
    cached: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    transient: bool = False  # the error was the endpoint's (timeout, lost connection, 408, 429, 5xx)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Usage:
    """What a batch cost. Counts are over distinct requests; tokens and cost only over calls paid now."""

    calls: int = 0
    cache_hits: int = 0
    failures: int = 0
    skipped: int = 0  # not sent because the budget would have been exceeded
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    budget_exhausted: bool = False

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        summed = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in dataclasses.fields(self)
            if f.name != "budget_exhausted"
        }
        return Usage(**summed, budget_exhausted=self.budget_exhausted or other.budget_exhausted)

    def record(self, completion: Completion) -> None:
        """Count one call that was made (successful or not) and what it cost."""
        self.calls += 1
        self.failures += 0 if completion.ok else 1
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens
        self.cost_usd += completion.cost_usd

    def as_metadata(self) -> dict[str, int | float | bool]:
        """Plain numbers, ready for Dagster metadata."""
        meta = dataclasses.asdict(self)
        meta["cost_usd"] = round(self.cost_usd, 6)
        meta["seconds"] = round(self.seconds, 3)
        return meta
