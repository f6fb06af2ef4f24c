"""Linear CorEx: parity with the reference package, determinism, standardisation, storage, warm start, bad input."""

import contextlib
import io
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from instruct_lf_dagster.bench.corex import planted, reference_weights
from instruct_lf_dagster.core.corex import (
    CorexStatistics,
    LinearCorex,
    _Data,
    _objective,
    fit_hierarchy,
    objective,
)

N, P, M = 300, 60, 4
FAST = {"threads": 1}  # one thread: robust on a busy machine, and fast enough at this size


@pytest.fixture(scope="module")
def data():
    return planted(N, P, M, seed=1)


@pytest.fixture(scope="module")
def model(data):
    return LinearCorex(M, 0.0, seed=0, **FAST).fit(data[0])


@pytest.fixture(scope="module")
def reference(data):
    with contextlib.redirect_stdout(io.StringIO()):
        import linearcorex.linearcorex as ref
    return ref.Corex(n_hidden=M, seed=0).fit(data[0])


def standardised(x):
    return (x - x.mean(0)) / x.std(0)


def test_objective_scores_the_reference_as_its_tc(data, reference):
    x_std = standardised(data[0].astype(np.float64))
    value = objective(x_std, reference_weights(reference.ws, x_std))
    assert value == pytest.approx(-reference.tc, rel=1e-4)


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_parity_with_reference_package(data, reference, optimizer):
    x, groups = data
    model = LinearCorex(M, 0.0, seed=0, optimizer=optimizer, **FAST).fit(x)
    assert adjusted_rand_score(groups, model.clusters()) >= 0.9
    assert adjusted_rand_score(groups, reference.mis.argmax(0)) >= 0.9
    x_std = standardised(x.astype(np.float64))
    ours, ref = objective(x_std, model.w_), objective(x_std, reference_weights(reference.ws, x_std))
    assert ours <= ref + 0.01 * abs(ref)  # lower is better: no more than 1% worse
    assert model.objective_ == pytest.approx(ours, rel=1e-4)
    # what the optimiser tracked (for lbfgs: covariance products carried from step to step) is the true value
    assert model.history_[-1]["objective"] == pytest.approx(ours, rel=1e-4)


def test_quasi_newton_step_costs_one_covariance_product(data, monkeypatch):
    products = []
    times_cov = _Data.times_cov
    monkeypatch.setattr(_Data, "times_cov", lambda self, v: products.append(1) or times_cov(self, v))
    model = LinearCorex(M, 0.0, seed=0, optimizer="lbfgs", **FAST).fit(data[0])
    # one per step, one per annealing level (the gradient at its start), the start point and fit's final moments
    assert len(products) <= model.n_iter_ + len(model.history_) + 2


def test_same_seed_same_result_other_seed_other_weights(data):
    x = data[0]
    first = LinearCorex(M, 0.5, seed=3, threads=1, max_iter=60).fit(x)
    again = LinearCorex(M, 0.5, seed=3, threads=1, max_iter=60).fit(x)
    other = LinearCorex(M, 0.5, seed=4, threads=1, max_iter=60).fit(x)
    np.testing.assert_array_equal(first.w_, again.w_)
    np.testing.assert_array_equal(first.clusters(), again.clusters())
    assert first.n_iter_ == again.n_iter_
    assert not np.allclose(first.w_, other.w_)


def test_shapes_and_ranges(data, model):
    x = data[0]
    assert model.w_.shape == (M, P) and model.mis.shape == (M, P)
    assert (model.mis >= 0).all()
    labels = model.clusters()
    assert labels.shape == (P,) and labels.min() >= 0 and labels.max() < M
    np.testing.assert_array_equal(labels, model.mis.argmax(0))
    assert model.transform(x).shape == (N, M)
    assert model.n_iter_ == sum(stage["steps"] for stage in model.history_)
    assert [stage["eps"] for stage in model.history_][-1] == 0.0 and len(model.history_) == 7


def test_transform_uses_training_standardisation(data, model):
    x = data[0]
    few = x[:5] + 1.0  # a different mean: standardising these rows by themselves would erase the shift
    expected = ((few - x.mean(0)) / x.std(0)) @ model.w_.T
    np.testing.assert_allclose(model.transform(few), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.transform(x[:5]), model.transform(x)[:5], rtol=1e-6)
    with pytest.raises(ValueError, match="columns"):
        model.transform(x[:, :-1])


def test_save_load_round_trip(tmp_path, data, model):
    path = tmp_path / "corex.safetensors"
    model.save(path)
    loaded = LinearCorex.load(path)
    np.testing.assert_array_equal(loaded.transform(data[0]), model.transform(data[0]))
    np.testing.assert_array_equal(loaded.clusters(), model.clusters())
    assert (loaded.n_factors, loaded.l1, loaded.seed, loaded.max_iter) == (M, 0.0, 0, 1000)
    assert loaded.objective_ == model.objective_ and loaded.history_ == model.history_
    assert loaded.optimizer_ == model.optimizer_ == "lbfgs"
    assert not (tmp_path / "corex.pkl").exists() and path.read_bytes()[:8]  # one safetensors file


def test_warm_start_converges_in_fewer_iterations(data, model):
    x = data[0] + 0.05 * np.random.default_rng(7).standard_normal(data[0].shape).astype(np.float32)
    cold = LinearCorex(M, 0.0, seed=5, **FAST).fit(x)
    warm = LinearCorex(M, 0.0, seed=5, **FAST).fit(x, warm_start=model)
    assert warm.n_iter_ < cold.n_iter_
    assert len(warm.history_) == 1  # a warm start skips annealing
    assert warm.objective_ <= cold.objective_ + 0.01 * abs(cold.objective_)
    from_array = LinearCorex(M, 0.0, seed=5, **FAST).fit(x, warm_start=model.w_)
    np.testing.assert_array_equal(from_array.w_, warm.w_)


def test_warm_start_of_another_shape_falls_back_to_random_init(data, model):
    x = data[0][:, :-3]
    with pytest.warns(UserWarning, match="random init"):
        refit = LinearCorex(M, 0.0, seed=0, threads=1, max_iter=60).fit(x, warm_start=model)
    assert refit.w_.shape == (M, P - 3) and len(refit.history_) == 7


def test_constant_columns_are_handled(data):
    x = data[0].copy()
    x[:, 7] = 3.0
    fitted = LinearCorex(M, 0.0, seed=0, threads=1, max_iter=60).fit(x)
    assert fitted.clusters()[7] == -1
    assert (fitted.mis[:, 7] == 0).all() and np.isfinite(fitted.objective_)
    scores = fitted.transform(x)
    assert np.isfinite(scores).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division by zero on transform either
        fitted.transform(x[:3])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf_are_refused(data, model, bad):
    x = data[0].copy()
    x[4, 2] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        LinearCorex(M, seed=0, threads=1).fit(x)
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.transform(x)


def test_l1_shrinks_weights(data):
    dense, sparse = (LinearCorex(M, l1, seed=0, threads=1, max_iter=100).fit(data[0]) for l1 in (0.0, 0.9))
    assert np.abs(sparse.w_).sum() < 0.5 * np.abs(dense.w_).sum()


def test_hierarchy_stacks_layers(data):
    layers = fit_hierarchy(data[0], [M, 2], l1=0.0, seed=0, threads=1, max_iter=60)
    assert [layer.w_.shape for layer in layers] == [(M, P), (2, M)]
    top = layers[1].transform(layers[0].transform(data[0]))
    assert top.shape == (N, 2)


# (300, 60): full rank, the covariance path; (40, 200): rank 39 < 100, the rows path
@pytest.mark.parametrize("shape", [(300, 60), (40, 200)])
@pytest.mark.parametrize("eps", [0.0, 0.36])
def test_gradient_by_hand_equals_autograd(shape, eps):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    x[:, 3] = 0  # a constant column
    x = x - x.mean(0)
    data = _Data(x)
    assert (data.cov is None) == (shape[0] < shape[1] / 2)
    w = torch.randn((5, shape[1]), generator=gen, dtype=torch.float64) * 0.3
    value, grad = data.value_and_grad(w, eps)
    w.requires_grad_(True)
    expected = _objective(*data.moments(w, eps))
    expected.backward()
    assert float(value) == pytest.approx(expected.item(), rel=1e-12)
    torch.testing.assert_close(grad, w.grad, rtol=1e-9, atol=1e-12)


def test_low_rank_data_is_compressed_to_the_same_objective(data):
    x = data[0][:, :20].astype(np.float64)
    wide = standardised(np.hstack([x, x @ np.random.default_rng(0).standard_normal((20, 40))]))  # rank 20
    compressed = _Data(torch.from_numpy(wide))
    assert compressed.cov is None and compressed.rows.shape[0] == 20  # 20 rows stand for 300
    w = torch.from_numpy(np.random.default_rng(1).standard_normal((M, 60)) * 0.1)
    rows = torch.from_numpy(wide)
    zx = w @ (rows.T @ rows) / rows.shape[0]
    zz = zx @ w.T + torch.eye(M, dtype=torch.float64)
    expected = float(_objective(zx, zz, (rows * rows).mean(0)))
    assert objective(wide, w.numpy()) == pytest.approx(expected, rel=1e-9)


def test_l1_gives_exact_zeros_and_a_lower_penalised_objective(data):
    x = data[0]
    fitted = {opt: LinearCorex(M, 0.05, seed=0, optimizer=opt, **FAST).fit(x) for opt in ("lbfgs", "adam")}
    assert (fitted["lbfgs"].w_ == 0).mean() > 0.2 and (fitted["adam"].w_ == 0).mean() == 0
    # both minimise the same noise-free objective plus L1: the quasi-Newton fit gets at least as low
    totals = {opt: model.history_[-1]["objective"] for opt, model in fitted.items()}
    assert totals["lbfgs"] <= totals["adam"] + 1e-3 * abs(totals["adam"])


def test_auto_optimizer_is_lbfgs_without_l1_and_adam_with_it(data):
    x = data[0]
    for l1, expected in ((0.0, "lbfgs"), (0.5, "adam")):
        auto = LinearCorex(M, l1, seed=0, max_iter=60, **FAST).fit(x)
        chosen = LinearCorex(M, l1, seed=0, max_iter=60, optimizer=expected, **FAST).fit(x)
        np.testing.assert_array_equal(auto.w_, chosen.w_)
        assert auto.optimizer_ == chosen.optimizer_ == expected
    with pytest.raises(ValueError, match="optimizer"):
        LinearCorex(M, optimizer="sgd")


def test_exact_optimum_under_the_papers_l1_can_be_all_zeros():
    """Why `auto` keeps Adam with L1: on a small weak problem the penalised optimum is W = 0."""
    x, _ = planted(24, 6, 2, seed=0)
    exact = LinearCorex(2, 0.9, seed=0, optimizer="lbfgs", **FAST).fit(x)
    scripts = LinearCorex(2, 0.9, seed=0, **FAST).fit(x)
    assert (exact.w_ == 0).all() and exact.history_[-1]["objective"] == pytest.approx(0.0, abs=1e-6)
    assert (scripts.w_ != 0).all()


@pytest.mark.parametrize(
    "x",
    [
        np.ones((10, 5)),  # every column constant
        np.random.default_rng(0).standard_normal((2, 6)),  # two rows
        np.random.default_rng(0).standard_normal((30, 3)),  # more factors than columns
        np.repeat(np.random.default_rng(0).standard_normal((30, 1)), 4, axis=1),  # identical columns
        np.random.default_rng(0).standard_normal((30, 8)) * 1e30,  # huge values
    ],
    ids=["constant", "two-rows", "m>P", "duplicates", "huge"],
)
def test_quasi_newton_path_survives_degenerate_data(x):
    model = LinearCorex(M, 0.0, seed=0, optimizer="lbfgs", max_iter=100, **FAST).fit(x)
    assert np.isfinite(model.w_).all() and np.isfinite(model.mis).all() and np.isfinite(model.objective_)
    assert model.clusters().shape == (x.shape[1],)


# -- statistics accumulated batch by batch ------------------------------------------------------------------


@pytest.fixture(scope="module")
def stream():
    """600 x 40 planted rows, offset from 0 (sums of squares then cancel), and the same rows in 3 batches."""
    x = planted(600, 40, M, seed=2)[0] + np.float32(5.0)
    return x, np.array_split(x, 3)


def same_statistics(a: CorexStatistics, b: CorexStatistics, rtol: float) -> None:
    assert a.n == b.n
    np.testing.assert_allclose(a.mean, b.mean, rtol=rtol)
    np.testing.assert_allclose(a.std, b.std, rtol=rtol)
    np.testing.assert_allclose(a.covariance(), b.covariance(), rtol=rtol, atol=rtol * a.std.max() ** 2)
    np.testing.assert_allclose(a.correlation(), b.correlation(), rtol=rtol, atol=rtol)


def test_streamed_statistics_equal_those_of_the_stacked_matrix(stream):
    x, batches = stream
    stats = CorexStatistics.of(batches)
    x64 = x.astype(np.float64)
    assert stats.n == 600 and stats.p == 40
    np.testing.assert_allclose(stats.mean, x64.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.std, x64.std(0), rtol=1e-10)
    np.testing.assert_allclose(stats.covariance(), np.cov(x64.T, bias=True), rtol=1e-10, atol=1e-12)
    x_std = standardised(x64)
    np.testing.assert_allclose(stats.correlation(), x_std.T @ x_std / 600, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(stats.products, stats.products.T)  # one symmetric product


def test_a_batch_adds_exactly_its_contribution(stream):
    _, batches = stream
    before = CorexStatistics.of(batches[:2])
    after = before.copy().update(batches[2])
    rows = batches[2].astype(np.float64) - before.shift  # the shift stays the first batch's
    assert after.n - before.n == len(batches[2])
    np.testing.assert_allclose(after.sums - before.sums, rows.sum(0), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(after.products - before.products, rows.T @ rows, rtol=1e-10, atol=1e-10)
    assert before.copy().update(batches[2][:0]).n == before.n  # an empty batch adds nothing


def test_merge_equals_sequential_and_batch_order_does_not_matter(stream):
    x, batches = stream
    sequential = CorexStatistics.of(batches)
    merged = CorexStatistics.of(batches[:1]).merge(CorexStatistics.of(batches[1:]))
    same_statistics(merged, sequential, 1e-10)
    same_statistics(CorexStatistics(40).merge(sequential), sequential, 0)  # an empty side adds nothing
    reordered = CorexStatistics.of(np.array_split(x[np.random.default_rng(0).permutation(600)], 7)[::-1])
    same_statistics(reordered, sequential, 1e-10)
    again = CorexStatistics.of(batches)  # same batches in the same order: the very same numbers
    for name in CorexStatistics._ARRAYS:
        np.testing.assert_array_equal(getattr(again, name), getattr(sequential, name))


def test_statistics_refuse_bad_batches_and_stay_unchanged(stream):
    _, batches = stream
    stats = CorexStatistics.of(batches[:1])
    bad = batches[1].copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        stats.update(bad)
    with pytest.raises(ValueError, match="40 columns"):
        stats.update(batches[1][:, :-1])
    with pytest.raises(ValueError, match="merge"):
        stats.merge(CorexStatistics(39))
    with pytest.raises(ValueError, match="no batch"):
        CorexStatistics.of([])
    same_statistics(stats, CorexStatistics.of(batches[:1]), 0)


def test_statistics_save_load_round_trip(tmp_path, stream):
    stats = CorexStatistics.of(stream[1])
    stats.save(tmp_path / "stats.safetensors")
    loaded = CorexStatistics.load(tmp_path / "stats.safetensors")
    assert loaded.n == stats.n
    for name in CorexStatistics._ARRAYS:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(stats, name))


# the planted rows: full rank, the covariance path; widened to 140 columns of rank 40 < 140 / 2: the rows path
@pytest.mark.parametrize("wide", [False, True], ids=["covariance", "low-rank"])
def test_fit_from_statistics_gives_the_fit_of_the_stacked_matrix(tmp_path, stream, wide):
    x = stream[0]
    if wide:
        x = np.hstack([x, x @ np.random.default_rng(0).standard_normal((40, 100)).astype(np.float32) / 10])
    stats = CorexStatistics.of(np.array_split(x, 3))
    direct = LinearCorex(M, 0.0, seed=0, **FAST).fit(x)
    streamed = LinearCorex(M, 0.0, seed=0, **FAST).fit_statistics(stats)
    assert streamed.optimizer_ == "lbfgs"
    np.testing.assert_array_equal(streamed.clusters(), direct.clusters())
    # fit's own float32 covariance differs by rounding from the exact one: W moves ~1e-5, as it does when
    # fit only sees the same rows in another order
    np.testing.assert_allclose(streamed.w_, direct.w_, atol=1e-4)
    np.testing.assert_allclose(streamed.transform(x[:50]), direct.transform(x[:50]), atol=1e-3)
    np.testing.assert_allclose(streamed.mean_, direct.mean_, rtol=1e-12)
    np.testing.assert_allclose(streamed.std_, direct.std_, rtol=1e-10)
    assert streamed.objective_ == pytest.approx(direct.objective_, rel=1e-5)
    streamed.save(tmp_path / "corex.safetensors")
    loaded = LinearCorex.load(tmp_path / "corex.safetensors")
    np.testing.assert_array_equal(loaded.transform(x[:50]), streamed.transform(x[:50]))
    stats.save(tmp_path / "stats.safetensors")
    again = LinearCorex(M, 0.0, seed=0, **FAST).fit_statistics(
        CorexStatistics.load(tmp_path / "stats.safetensors")
    )
    np.testing.assert_array_equal(again.w_, streamed.w_)  # deterministic, and storage loses nothing


def test_fit_from_statistics_with_constant_columns_and_a_warm_start(stream):
    x = stream[0].copy()
    x[:, 7] = 3.0
    stats = CorexStatistics.of(np.array_split(x, 3))
    streamed = LinearCorex(M, 0.0, seed=0, **FAST).fit_statistics(stats)
    assert stats.std[7] == 0 and streamed.clusters()[7] == -1 and (streamed.mis[:, 7] == 0).all()
    direct = LinearCorex(M, 0.0, seed=0, **FAST).fit(x)
    np.testing.assert_array_equal(streamed.clusters(), direct.clusters())
    warm = LinearCorex(M, 0.0, seed=0, **FAST).fit_statistics(stats, warm_start=streamed)
    assert len(warm.history_) == 1 and warm.objective_ <= streamed.objective_ + 1e-4 * abs(
        streamed.objective_
    )


def test_fit_from_statistics_needs_the_quasi_newton_path(stream):
    stats = CorexStatistics.of(stream[1])
    for refused in (LinearCorex(M, 0.0, optimizer="adam"), LinearCorex(M, 0.5)):  # Adam; auto with L1: Adam
        with pytest.raises(ValueError, match="statistics needs the quasi-Newton optimizer"):
            refused.fit_statistics(stats)
    lasso = LinearCorex(M, 0.05, seed=0, optimizer="lbfgs", max_iter=60, **FAST).fit_statistics(stats)
    assert (lasso.w_ == 0).any()  # OWL-QN needs no rows either
    with pytest.raises(ValueError, match="2 rows"):
        LinearCorex(M, 0.0).fit_statistics(CorexStatistics.of([stream[0][:1]]))
