"""Factor identity across refits: which factor of a new fit is which factor of the previous one.

Factors are matched one to one by an optimal assignment on their overlap: the mutual information of the
properties they share, over that of all their properties (a weighted Dice coefficient, 0 to 1). A matched factor
keeps the previous factor's public id; the others are new. Where properties moved between factors, splits (one
previous factor's properties now in two or more) and merges (two or more previous factors now in one) are listed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

MIN_OVERLAP = 0.2  # a pair overlapping less than this is not the same factor, whatever the assignment says
PIECE = 0.25  # share of a factor's properties that counts as a piece of it (splits and merges)
MOSTLY = 0.5  # ... when that piece is at least this share of the other factor

Membership = Mapping[int, Mapping[str, float]]  # factor id -> {property: mutual information}


def assign(gain: np.ndarray) -> list[tuple[int, int]]:
    """The (row, column) pairs, sorted, of a one-to-one assignment with the largest total `gain` (any 2-D shape).

    Rows and columns left over are unassigned.
    """
    rows, cols = linear_sum_assignment(np.asarray(gain, dtype=np.float64), maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]


def overlap(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Weighted Dice: the MI of the properties two factors share over the MI of all their properties."""
    total = sum(a.values()) + sum(b.values())
    shared = sum(a[p] + b[p] for p in a.keys() & b.keys())
    return shared / total if total > 0 else 0.0


@dataclass(frozen=True)
class Match:
    """How a new fit's factors relate to the previous fit's (both by id)."""

    pairs: dict[int, int]  # new factor -> the previous factor it is
    overlaps: dict[int, float]  # new factor -> its overlap with that previous factor
    new: list[int]
    vanished: list[int]
    splits: dict[int, list[int]] = field(
        default_factory=dict
    )  # previous factor -> the new factors it went to
    merges: dict[int, list[int]] = field(default_factory=dict)  # new factor -> the previous factors it joins
    kept_share: float = 1.0  # of the properties in both fits, the share whose factor kept its identity

    def summary(self) -> dict[str, object]:
        """Plain values for metadata."""
        return {
            "matched": len(self.pairs),
            "new": ", ".join(map(str, self.new)) or "none",
            "vanished": ", ".join(map(str, self.vanished)) or "none",
            "splits": "; ".join(f"{a} -> {b}" for a, b in self.splits.items()) or "none",
            "merges": "; ".join(f"{a} <- {b}" for a, b in self.merges.items()) or "none",
            "kept_share": round(self.kept_share, 4),
        }


def _in_pieces(groups: Membership, others: Membership) -> dict[int, list[int]]:
    """Each factor of `groups` whose properties are now in two or more of `others`, each mostly made of them
    (previous -> current: splits; current -> previous: merges)."""
    found = {}
    for a in sorted(groups):
        pieces = [
            b
            for b in sorted(others)
            if (n := len(groups[a].keys() & others[b].keys())) >= PIECE * len(groups[a])
            and n >= MOSTLY * len(others[b])
        ]
        if len(pieces) > 1:
            found[a] = pieces
    return found


def match(previous: Membership, current: Membership, min_overlap: float = MIN_OVERLAP) -> Match:
    """Match the factors of `current` to those of `previous` (both: id -> {member property: MI})."""
    old, now = sorted(previous), sorted(current)
    gain = np.array([[overlap(current[b], previous[a]) for a in old] for b in now]).reshape(
        len(now), len(old)
    )
    pairs, overlaps = {}, {}
    for i, j in assign(gain):
        if gain[i, j] >= min_overlap:
            pairs[now[i]], overlaps[now[i]] = old[j], float(gain[i, j])
    before = {p: a for a in old for p in previous[a]}
    after = {p: b for b in now for p in current[b]}
    common = before.keys() & after.keys()
    kept = sum(pairs.get(after[p]) == before[p] for p in common)
    return Match(
        pairs=pairs,
        overlaps=overlaps,
        new=[b for b in now if b not in pairs],
        vanished=[a for a in old if a not in pairs.values()],
        splits=_in_pieces(previous, current),
        merges=_in_pieces(current, previous),
        kept_share=kept / len(common) if common else 1.0,
    )
