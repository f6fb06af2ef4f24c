"""Factor identity across refits: the optimal assignment, and matches, splits and merges on small fits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from instruct_lf_dagster.core.identity import assign, match, overlap


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (4, 6), (6, 4), (5, 5), (2, 7)])
def test_the_assignment_is_optimal(shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(20):
        gain = rng.random(shape)
        pairs = assign(gain)
        assert len(pairs) == min(shape)
        assert len({r for r, _ in pairs}) == len({c for _, c in pairs}) == min(shape)
        rows, cols = shape
        if rows <= cols:
            best = max(
                sum(gain[i, p[i]] for i in range(rows)) for p in itertools.permutations(range(cols), rows)
            )
        else:
            best = max(
                sum(gain[p[j], j] for j in range(cols)) for p in itertools.permutations(range(rows), cols)
            )
        assert sum(gain[r, c] for r, c in pairs) == pytest.approx(best)


def test_an_empty_side_assigns_nothing():
    assert assign(np.zeros((0, 3))) == [] == assign(np.zeros((2, 0)))


def _factors(groups: dict[int, str]) -> dict[int, dict[str, float]]:
    return {k: {p: 1.0 for p in members} for k, members in groups.items()}


def test_factors_are_matched_by_overlap_whatever_their_order():
    previous = _factors({0: "abcd", 1: "efgh", 2: "ijkl"})
    current = _factors({7: "ijkm", 8: "abcd", 9: "xyz"})  # 9 is new, 1 vanished
    found = match(previous, current)
    assert found.pairs == {7: 2, 8: 0}
    assert (found.new, found.vanished) == ([9], [1])
    # of a..l and m, x, y, z, the properties in both fits are a-d and i-k: all kept their factor
    assert found.kept_share == 1.0
    assert overlap(previous[2], current[7]) == pytest.approx(6 / 8)


def test_splits_and_merges_are_listed():
    previous = _factors({0: "abcdef", 1: "ghi", 2: "jkl"})
    current = _factors({5: "abc", 6: "def", 7: "ghijkl"})
    found = match(previous, current)
    assert found.splits == {0: [5, 6]}
    assert found.merges == {7: [1, 2]}
    assert 0 < found.kept_share < 1
    assert found.summary()["splits"] == "0 -> [5, 6]"


def test_mutual_information_weighs_the_overlap():
    previous = {0: {"a": 5.0, "b": 0.1}, 1: {"c": 0.1, "d": 5.0}}
    current = {3: {"a": 5.0, "c": 0.1}, 4: {"b": 0.1, "d": 5.0}}
    assert match(previous, current).pairs == {3: 0, 4: 1}
