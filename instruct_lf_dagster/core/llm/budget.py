"""The spending limits of a client (`budget_tokens`, `budget_usd`), checked before each call is sent."""

from __future__ import annotations

from dataclasses import dataclass

from instruct_lf_dagster.core.llm.config import LLMConfig
from instruct_lf_dagster.core.llm.transport import count_tokens, list_price
from instruct_lf_dagster.core.llm.types import Completion, Messages, Usage


@dataclass(frozen=True)
class Estimate:
    """Tokens and dollars a call may take (an upper bound) or that calls in flight may take together."""

    tokens: int
    usd: float

    def __add__(self, other: Estimate) -> Estimate:
        return Estimate(self.tokens + other.tokens, self.usd + other.usd)

    def __sub__(self, other: Estimate) -> Estimate:
        return Estimate(self.tokens - other.tokens, self.usd - other.usd)


NOTHING = Estimate(0, 0.0)


class Budget:
    """Decides whether the next call may be sent, given what was spent and what calls in flight may take.

    A call is refused when its upper-bound estimate could take the total past a limit, so a limit is never
    exceeded (as far as providers report costs truthfully).
    """

    def __init__(self, config: LLMConfig):
        self.config = config
        self._largest_call_usd = 0.0

    @property
    def limited(self) -> bool:
        return self.config.budget_tokens is not None or self.config.budget_usd is not None

    def observe(self, completion: Completion) -> None:
        """Learn from a call that was paid: its cost bounds the next call of a model without a price."""
        self._largest_call_usd = max(self._largest_call_usd, completion.cost_usd)

    def estimate(self, messages: Messages) -> Estimate:
        """An upper bound of the next call's tokens and cost (nothing when there is no limit to check)."""
        if not self.limited:
            return NOTHING
        model, max_tokens = self.config.model, self.config.max_tokens
        prompt_tokens = count_tokens(model, messages=messages)
        tokens = prompt_tokens + max_tokens
        if self.config.budget_usd is None:
            return Estimate(tokens, 0.0)
        usd = list_price(model, prompt_tokens, max_tokens)
        # An unpriced model may still report costs: assume the dearest call seen so far.
        return Estimate(tokens, usd or self._largest_call_usd)

    def refusal(self, spent: Usage, reserved: Estimate, estimate: Estimate) -> str | None:
        """Why the next call must not be made, or None when the budget allows it."""
        budget_tokens, budget_usd = self.config.budget_tokens, self.config.budget_usd
        if budget_tokens is not None:
            committed = spent.tokens + reserved.tokens
            if committed + estimate.tokens > budget_tokens:
                return (
                    f"{committed} of budget_tokens={budget_tokens} tokens used or in flight,"
                    f" next call may take {estimate.tokens}"
                )
        if budget_usd is not None:
            committed_usd = spent.cost_usd + reserved.usd
            if committed_usd + estimate.usd > budget_usd:
                return (
                    f"${committed_usd:.6f} of budget_usd=${budget_usd:.6f} spent or in flight,"
                    f" next call may cost ${estimate.usd:.6f}"
                )
        return None
