"""The readouts of fitted factors that the ablation compares (`evaluation.readouts`)."""

from __future__ import annotations

import numpy as np

from instruct_lf_dagster.core.corex import LinearCorex
from instruct_lf_dagster.core.factors import Factors
from instruct_lf_dagster.evaluation.readouts import READOUTS, readouts


def planted(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two latent causes, three properties each; the third of each group is the cause's low end (sign -1)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 2))
    signs = np.array([1, 1, -1])
    x = np.hstack([z[:, [k]] * signs + 0.3 * rng.standard_normal((n, 3)) for k in range(2)])
    return x, z


def test_readouts_keep_the_matrix_split_the_ends_and_follow_the_members():
    x, z = planted()
    factors = Factors(LinearCorex(2, 0.0, seed=0, max_iter=300).fit(x), [f"p{j}" for j in range(6)])
    out = readouts(factors, x)
    assert tuple(out) == READOUTS
    np.testing.assert_array_equal(out["compatibility"], x)
    np.testing.assert_allclose(out["scores"], factors.scores(x))
    m = factors.n_factors
    ends = out["both_ends"]
    assert ends.shape == (len(x), 2 * m) and (ends >= 0).all()
    np.testing.assert_allclose(ends[:, :m] - ends[:, m:], factors.strengths(x), atol=1e-12)
    # Each factor's members' evidence is its strength read from its own columns: it recovers the cause.
    assert out["members"].shape == (len(x), len(factors.nonempty()))
    for column, k in enumerate(factors.nonempty()):
        cause = np.argmax(np.abs([np.corrcoef(factors.strengths(x)[:, k], z[:, c])[0, 1] for c in (0, 1)]))
        assert np.corrcoef(out["members"][:, column], factors.strengths(x)[:, k])[0, 1] > 0.95
        assert abs(np.corrcoef(out["members"][:, column], z[:, cause])[0, 1]) > 0.9
