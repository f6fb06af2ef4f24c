"""What every compared method gives a reader: topics (a name and top members) and documents scored on them.

Instruct-LF's factors, LDA's and BERTopic's topics and the TopicGPT-style peer's topics are all read through
`Topics`, so the judged-quality and labelled metrics treat every method alike; `Cost` is what a method paid
its LLM, shown next to its score.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from instruct_lf_dagster.core.factors import Factors


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


class Peer(Protocol):
    """A topic method compared with Instruct-LF: fitted on texts without labels, then scores any texts."""

    cost: Cost

    def fit(self, texts: Sequence[str]) -> Peer: ...

    def transform(self, texts: Sequence[str]) -> np.ndarray: ...

    def topics(self) -> Topics: ...


def hard_assignment(scores: np.ndarray) -> np.ndarray:
    """Each document's strongest topic: argmax of its row (ties: the lower index)."""
    return np.argmax(np.asarray(scores), axis=1)


def factor_topics(
    factors: Factors, strengths: np.ndarray, names: dict[int, str] | None = None, top: int = 10
) -> Topics:
    """Instruct-LF's non-empty factors as `Topics`: members are properties by mutual information, a document's
    topic the factor it scores highest on (`strengths`: `Factors.strengths` of the fitted documents, high =
    "has this factor's properties"); `names` by factor row, else the top property."""
    rows = factors.nonempty()
    members = [tuple(p for p, _ in factors.members(k)[:top]) for k in rows]
    chosen = np.asarray(strengths)[:, rows] if rows else np.zeros((len(strengths), 0))
    assignment = hard_assignment(chosen) if rows else np.full(len(strengths), -1)
    return Topics(
        [(names or {}).get(k) or m[0] for k, m in zip(rows, members, strict=True)], members, assignment
    )
