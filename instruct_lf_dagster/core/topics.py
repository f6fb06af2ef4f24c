"""What every topic method gives a reader: topics, each a name and its most typical members; and `Cost`, what a
method paid its LLM. Instruct-LF's factors and every peer's topics are read through `Topics`, so a judge or a
metric treats them alike (`core.judging`, `evaluation`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Cost:
    """LLM requests a method made and their tokens; a cached answer counts as what its first call cost."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @classmethod
    def of(cls, completions: Iterable) -> Cost:
        """The cost of `core.llm.Completion`s (successful or not)."""
        done = list(completions)
        return cls(
            calls=len(done),
            prompt_tokens=sum(c.prompt_tokens for c in done),
            completion_tokens=sum(c.completion_tokens for c in done),
        )

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.calls + other.calls,
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "llm_calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


@dataclass(frozen=True)
class Topics:
    """A method's topics as a reader sees them: `names[t]` and `members[t]` (words, properties or quotes, most
    typical first), and `assignment[i]`, the topic of fitted document i (-1: none, e.g. BERTopic's outliers)."""

    names: tuple[str, ...]
    members: tuple[tuple[str, ...], ...]
    assignment: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))

    def __post_init__(self):
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "members", tuple(tuple(m) for m in self.members))
        object.__setattr__(self, "assignment", np.asarray(self.assignment, dtype=int))
        if len(self.names) != len(self.members):
            raise ValueError(f"{len(self.names)} names for {len(self.members)} member lists")

    def __len__(self) -> int:
        return len(self.names)

    def sizes(self) -> np.ndarray:
        """Documents assigned to each topic."""
        counts = np.bincount(self.assignment[self.assignment >= 0], minlength=len(self))
        return counts[: len(self)]

    def indicators(self) -> np.ndarray:
        """One-hot rows (fitted documents x topics) of `assignment`; a document without a topic is all zero.

        With no topic at all, one zero column: the width the peers' `transform` gives then, so that fitted and
        new documents always live in the same space.
        """
        out = np.zeros((len(self.assignment), max(len(self), 1)), dtype=np.float32)
        kept = np.flatnonzero(self.assignment >= 0)
        out[kept, self.assignment[kept]] = 1.0
        return out

    def largest(self, n: int = 20) -> list[int]:
        """The `n` topics with the most documents (ties: the lower index), among those with a member."""
        sizes = self.sizes()
        shown = [t for t in range(len(self)) if self.members[t]]
        return sorted(shown, key=lambda t: (-int(sizes[t]), t))[:n]
