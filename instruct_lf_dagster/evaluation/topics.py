"""The compared methods' common shape: a `Peer` fits texts and gives `core.topics.Topics`; Instruct-LF's factors
are read as `Topics` too (`factor_topics`), so the judged-quality and labelled metrics treat every method alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from instruct_lf_dagster.core.topics import Cost, Topics

if TYPE_CHECKING:
    from instruct_lf_dagster.core.factors import Factors


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
