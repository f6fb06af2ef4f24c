"""Anchored Linear CorEx: a seed group steers its factor during the fit, not only after it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instruct_lf_dagster.core.config import FactorConfig, MethodConfig, SeedFactor
from instruct_lf_dagster.core.corex import CorexStatistics, LinearCorex
from instruct_lf_dagster.core.corex.objective import _objective, _objective_and_grad
from instruct_lf_dagster.core.factors import Factors
from instruct_lf_dagster.core.pipeline import InstructLF

STRENGTH = SeedFactor(name="x", properties=["y"]).strength  # the default a discovery gets
WEAK = [24, 25, 26]  # a weak factor of its own: each column shares 11% of its variance with the others


def planted(seed: int = 0) -> np.ndarray:
    """Four strong factors of six columns each, then three columns with a weak common cause (400 rows)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((400, 4))
    strong = [0.8 * z[:, f] + 0.6 * rng.standard_normal(400) for f in range(4) for _ in range(6)]
    weak = rng.standard_normal(400)
    return np.stack(strong + [0.35 * weak + rng.standard_normal(400) for _ in WEAK], axis=1)


def test_the_anchored_objective_has_the_gradient_autograd_finds():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 7, generator=gen, dtype=torch.float64)
    w = 0.5 * torch.randn(3, 7, generator=gen, dtype=torch.float64)
    anchor = torch.zeros(3, 7, dtype=torch.float64)
    anchor[0, [1, 2]], anchor[2, 5] = 2.0, 0.5
    z = x @ w.T
    zx = (z.T @ x / 50).requires_grad_(True)
    zz = (z.T @ z / 50 + torch.eye(3, dtype=torch.float64)).requires_grad_(True)
    value = _objective(zx, zz, (x * x).mean(0), anchor)
    value.backward()
    by_hand, g_zx, g_zz = _objective_and_grad(zx.detach(), zz.detach(), (x * x).mean(0), anchor)
    assert float(by_hand) == pytest.approx(float(value), abs=1e-12)
    torch.testing.assert_close(g_zx, zx.grad, atol=1e-12, rtol=0)
    torch.testing.assert_close(g_zz, zz.grad, atol=1e-12, rtol=0)
    assert float(value) < float(_objective(zx, zz, (x * x).mean(0)))  # a reward: the anchored value is lower


@pytest.mark.parametrize("seed", range(1, 7))
def test_an_anchored_row_holds_its_weak_group_at_no_cost_to_the_fit(seed):
    x = planted()
    plain = LinearCorex(5, l1=0, seed=seed).fit(x)
    anchored = LinearCorex(5, l1=0, seed=seed, anchors=[WEAK], anchor_strength=STRENGTH).fit(x)
    assert (anchored.clusters()[WEAK] == 0).all()  # row 0, the anchored one, holds the whole group
    assert (anchored.mis[0, WEAK] > 0.05).all()  # each seed shares information with it, not one of them alone
    assert np.abs(anchored.w_).max() < 10  # no runaway weights
    assert anchored.objective_ == pytest.approx(plain.objective_, abs=0.05)  # the rest of the fit is kept


def test_the_reward_not_only_the_start_keeps_a_group_with_a_stray_together():
    x, group = planted(), [*WEAK, 0]  # column 0 belongs to a strong factor of its own
    held = {
        strength: [
            int(
                (
                    LinearCorex(5, l1=0, seed=seed, anchors=[group], anchor_strength=strength)
                    .fit(x)
                    .clusters()[WEAK]
                    == 0
                ).sum()
            )
            for seed in range(1, 7)
        ]
        for strength in (0.0, STRENGTH)
    }
    assert held[STRENGTH] == [3] * 6  # the weak group in its row in every fit
    assert min(held[0.0]) < 3  # starting there alone: some fits let it go


def test_seeds_from_unrelated_factors_do_not_spoil_the_fit():
    x = planted()
    for seed in range(1, 7):
        plain = LinearCorex(5, l1=0, seed=seed).fit(x)
        mixed = LinearCorex(5, l1=0, seed=seed, anchors=[[0, 6, 24]], anchor_strength=STRENGTH).fit(x)
        assert np.abs(mixed.w_).max() < 10
        assert mixed.objective_ == pytest.approx(plain.objective_, abs=0.1)


def test_anchoring_works_from_statistics_and_with_adam_and_is_saved(tmp_path):
    x = planted()
    rows = LinearCorex(5, l1=0, seed=1, anchors=[WEAK]).fit(x)
    stats = CorexStatistics.of([x[:150], x[150:]])
    from_stats = LinearCorex(5, l1=0, seed=1, anchors=[WEAK]).fit_statistics(stats)
    np.testing.assert_allclose(from_stats.w_, rows.w_, atol=1e-3)
    adam = LinearCorex(5, l1=0.05, seed=1, anchors=[WEAK], max_iter=300).fit(x)
    assert adam.optimizer_ == "adam" and (adam.clusters()[WEAK] == 0).all()
    rows.save(tmp_path / "corex.safetensors")
    again = LinearCorex.load(tmp_path / "corex.safetensors")
    assert again.anchors == [WEAK] and again.anchor_strength == [STRENGTH]


def test_bad_anchors_are_refused():
    with pytest.raises(ValueError, match="at most one group per factor"):
        LinearCorex(1, anchors=[[0], [1]])
    with pytest.raises(ValueError, match="one strength per group"):
        LinearCorex(3, anchors=[[0], [1]], anchor_strength=[1.0])
    with pytest.raises(ValueError, match=">= 0"):
        LinearCorex(3, anchors=[[0]], anchor_strength=-1.0)
    with pytest.raises(ValueError, match="out of range"):
        LinearCorex(3, anchors=[[9]]).fit(np.random.default_rng(0).standard_normal((20, 4)))


def test_a_seed_factor_anchors_row_g_of_the_method_s_fit():
    x = planted()
    names = [f"P{j}" for j in range(x.shape[1])]
    seeds = [SeedFactor(name="Weak", properties=[f"p{j}" for j in WEAK] + ["not in the vocabulary"])]
    method = InstructLF(MethodConfig(seed_factors=seeds, factors=FactorConfig(n_factors=5)))
    factors = method.fit_factors(x, names)
    assert factors.model.anchors == [WEAK] and factors.model.anchor_strength == [STRENGTH]
    assert factors.anchored() == [factors.ids[0]]
    assert set(factors.membership()[factors.ids[0]]) >= {names[j] for j in WEAK}
    # A refit warm-starts from an anchored fit with the same seeds, and starts cold when they change.
    again = method.fit_factors(x, names, previous=factors)
    assert again.anchored() == [again.ids[0]]
    reseeded = Factors(factors.model, factors.properties, factors.ids, anchors=[("P0",)])
    assert method._corex(len(x), names, reseeded)[1] is None
    assert method._corex(len(x), names, factors)[1] is not None
