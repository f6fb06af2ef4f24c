"""`LinearCorex`, the sklearn-style estimator: standardise, pick an optimiser, fit, transform, save and load."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from instruct_lf_dagster.core.config import FactorConfig
from instruct_lf_dagster.core.corex.adam import train_adam
from instruct_lf_dagster.core.corex.objective import _Data, _objective
from instruct_lf_dagster.core.corex.quasi_newton import train_lbfgs
from instruct_lf_dagster.core.corex.statistics import CorexStatistics

ANNEAL = tuple(0.6**k for k in range(1, 7)) + (0.0,)
OPTIMIZERS = ("auto", "lbfgs", "adam")


@contextmanager
def _threads(count: int | None):
    """Run torch on `count` threads, or on every core this process may use."""
    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(count or cores or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class LinearCorex:
    """Linear CorEx with an L1 penalty (the Instruct-LF variant), sklearn style.

    `fit(x)` standardises each column with its training mean and std (kept for `transform`), then minimises the
    objective plus L1 through the annealing stages eps = 0.6^1..0.6^6, 0 with `optimizer`:

    - `auto` (default): `lbfgs` when l1 = 0, else `adam` (see the package docstring for why).
    - `lbfgs`: the noise-free objective, deterministic, by L-BFGS preconditioned with the data's covariance
      (OWL-QN, unpreconditioned, with L1).
      Annealing stages take `ANNEAL_QN_STEPS` steps each; the final stage stops when a step lowers the total by
      less than `tol` (relative), or after `max_iter` steps.
    - `adam`: the research scripts' optimiser, Adam at `lr` on the noisy forward pass (full batch, one optimiser
      throughout). A stage stops when the noise-free total changes by less than `tol` (relative) over a 50-step
      window. The scripts test 50-step means of the sampled objective instead; its sampling noise alone moves
      them by ~1e-4 (relative), so their stages never met tol = 1e-5 and always ran max_iter steps. The budget
      is theirs, max_iter per stage, but spent where it pays: annealing stages stop after
      `ANNEAL_STEPS * max_iter` steps and the final stage (eps = 0) may use what they left.

    Deterministic for a seed on a given device and thread count.

    `anchors` steers the fit (Anchored CorEx, Gallagher et al. 2017): group g, a sequence of column indices,
    anchors factor row g, which starts at the group's common direction and whose correlation with those columns
    the objective rewards with weight `anchor_strength` (one value, or one per group; `objective._anchored`).

    Input must be finite (NaN or inf raise ValueError). Constant columns are allowed: they standardise to 0, take
    no part in the objective, have MI 0 with every factor and cluster -1.
    """

    def __init__(
        self,
        n_factors: int = 368,
        l1: float = 0.9,
        *,
        seed: int = 0,
        device: str = "cpu",
        max_iter: int = FactorConfig().max_iter,
        tol: float = 1e-5,
        lr: float = 1e-3,
        anneal: bool = True,
        threads: int | None = None,
        optimizer: str = "auto",
        anchors: Sequence[Sequence[int]] = (),
        anchor_strength: float | Sequence[float] = 1.0,
    ):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        self.n_factors, self.l1, self.seed, self.device = n_factors, l1, seed, device
        self.max_iter, self.tol, self.lr, self.anneal, self.threads = max_iter, tol, lr, anneal, threads
        self.optimizer = optimizer
        self.anchors = [[int(j) for j in group] for group in anchors]
        strengths = (
            anchor_strength if isinstance(anchor_strength, Sequence) else [anchor_strength] * len(anchors)
        )
        self.anchor_strength = [float(a) for a in strengths]
        if len(self.anchors) > n_factors or len(self.anchor_strength) != len(self.anchors):
            raise ValueError(
                f"{len(self.anchors)} anchor groups with {len(self.anchor_strength)} strengths for "
                f"{n_factors} factors: at most one group per factor, one strength per group"
            )
        if any(a < 0 for a in self.anchor_strength):
            raise ValueError(f"anchor strengths must be >= 0, got {self.anchor_strength}")

    # -- data ---------------------------------------------------------------------------------------------------
    def standardise(self, x: np.ndarray) -> np.ndarray:
        """x (n, P) standardised with the training mean and std (constant columns become 0), float32."""
        x = _check(x)
        if x.shape[1] != self.mean_.shape[0]:
            raise ValueError(f"expected {self.mean_.shape[0]} columns, got {x.shape[1]}")
        scale = np.where(self.std_ > 0, self.std_, 1.0)
        # torch: one threaded pass instead of numpy's three single-threaded ones
        return (
            ((torch.from_numpy(x) - torch.from_numpy(self.mean_)) / torch.from_numpy(scale)).float().numpy()
        )

    def _init_weights(self, warm_start, p: int, gen: torch.Generator) -> tuple[torch.Tensor, bool]:
        shape = (self.n_factors, p)
        w = warm_start.w_ if isinstance(warm_start, LinearCorex) else warm_start
        if w is not None and np.shape(w) == shape:
            return torch.tensor(np.asarray(w, dtype=np.float32), device=self.device), True
        if w is not None:
            warnings.warn(
                f"warm start of shape {np.shape(w)} does not fit {shape}: random init "
                "(align columns by property with Factors.warm_start)",
                stacklevel=4,
            )
        w = torch.randn(shape, generator=gen, device=self.device) / math.sqrt(p)
        # An anchored factor starts at its group's common direction, where the anchor reward holds it.
        for row, group in enumerate(self.anchors):
            if group:
                w[row] = 0.1 * w[row]
                w[row, group] += 1 / math.sqrt(len(group))
        return w, False

    # -- fitting ------------------------------------------------------------------------------------------------
    def fit(self, x: np.ndarray, warm_start: LinearCorex | np.ndarray | None = None) -> LinearCorex:
        """Fit on x (n, P).

        A warm start (a fitted model or an (m, P) array) starts from its weights and skips annealing, as the
        reference package does. One of another shape (P changed) falls back to a random init with a warning:
        columns cannot be matched without names; `Factors.warm_start(properties)` aligns them by property.
        """
        x = _check(x)
        if x.shape[0] < 2:
            raise ValueError("need at least 2 rows")
        self.mean_ = x.mean(0)
        self.std_ = x.std(0)
        self.std_[np.ptp(x, axis=0) == 0] = 0.0  # exactly constant, whatever the rounding of std
        with _threads(self.threads), torch.no_grad():
            xs = torch.from_numpy(self.standardise(x)).to(self.device)
            xs[:, torch.from_numpy(self.std_ == 0).to(self.device)] = 0  # exactly, whatever the rounding
            return self._fit(_Data(xs), warm_start)

    def fit_statistics(
        self, stats: CorexStatistics, warm_start: LinearCorex | np.ndarray | None = None
    ) -> LinearCorex:
        """Fit from `CorexStatistics` of the rows instead of the rows: `fit`'s result, to float32 rounding.

        The quasi-Newton path sees the data only through the covariance of the standardised data (the columns'
        correlation) and `transform` only through the columns' mean and std, all of which the statistics give;
        past that point the fit is `fit`'s own. Adam's noisy passes need the rows: `optimizer='adam'`, or
        `auto` with l1 > 0, raise ValueError.
        """
        if self._chosen_optimizer() != "lbfgs":
            raise ValueError(
                "fitting from statistics needs the quasi-Newton optimizer: optimizer='lbfgs', or 'auto' with "
                f"l1 = 0 (got optimizer={self.optimizer!r}, l1={self.l1}); Adam's noisy passes need the rows"
            )
        if stats.n < 2:
            raise ValueError("need at least 2 rows")
        self.mean_, self.std_ = stats.mean, stats.std
        with _threads(self.threads), torch.no_grad():
            cov = torch.from_numpy(stats.correlation()).to(self.device)
            return self._fit(_Data.of_covariance(cov, stats.n), warm_start)

    def _anchor(self, p: int) -> torch.Tensor | None:
        """The (m, P) anchor strengths of `anchors`, or None without any."""
        if not any(self.anchors):
            return None
        if max(max(group, default=0) for group in self.anchors) >= p:
            raise ValueError(f"an anchor column is out of range for {p} columns: {self.anchors}")
        anchor = torch.zeros((self.n_factors, p), device=self.device)
        for row, (group, strength) in enumerate(zip(self.anchors, self.anchor_strength, strict=True)):
            anchor[row, group] = strength
        return anchor

    def _chosen_optimizer(self) -> str:
        return ("adam" if self.l1 > 0 else "lbfgs") if self.optimizer == "auto" else self.optimizer

    def _fit(self, data: _Data, warm_start: LinearCorex | np.ndarray | None) -> LinearCorex:
        """The fit proper, on standardised data (within `_threads` and `no_grad`); sets every result."""
        gen = torch.Generator(device=self.device).manual_seed(self.seed)
        anchor = self._anchor(data.x_sq.shape[0])
        w, warm = self._init_weights(warm_start, data.x_sq.shape[0], gen)
        schedule = ANNEAL if self.anneal and not warm else (0.0,)
        self.optimizer_ = self._chosen_optimizer()
        kw = {"l1": self.l1, "max_iter": self.max_iter, "tol": self.tol, "anchor": anchor}
        if self.optimizer_ == "adam":
            self.history_ = train_adam(data, w, schedule, gen, lr=self.lr, **kw)
        else:
            self.history_ = train_lbfgs(data, w, schedule, **kw)
        zx, zz, _ = data.moments(w)
        self.objective_ = float(_objective(zx, zz, data.x_sq))
        r = (zx / torch.diagonal(zz).sqrt()[:, None]).clamp(-1 + 1e-7, 1 - 1e-7)
        self.mis_ = (-0.5 * torch.log1p(-r * r)).cpu().numpy()
        self.w_ = w.cpu().numpy()
        self.n_iter_ = sum(stage["steps"] for stage in self.history_)
        return self

    # -- results ------------------------------------------------------------------------------------------------
    def transform(self, x: np.ndarray) -> np.ndarray:
        """Factor scores (n, m): x standardised with the training mean and std, times W^T."""
        return self.standardise(x) @ self.w_.T

    def fit_transform(self, x: np.ndarray, warm_start: LinearCorex | np.ndarray | None = None) -> np.ndarray:
        """`fit(x, warm_start)`, then the factor scores of x."""
        return self.fit(x, warm_start).transform(x)

    @property
    def mis(self) -> np.ndarray:
        """MI(Z_j; X_i) = -0.5 log(1 - R_ji^2) (m, P) on the training data, factor noise integrated out."""
        return self.mis_

    def clusters(self) -> np.ndarray:
        """Factor of each property (P,): argmax of MI; -1 for constant columns."""
        labels = self.mis_.argmax(0)
        labels[self.std_ == 0] = -1
        return labels

    # -- storage ------------------------------------------------------------------------------------------------
    _SETTINGS = (
        "n_factors",
        "l1",
        "seed",
        "device",
        "max_iter",
        "tol",
        "lr",
        "anneal",
        "threads",
        "optimizer",
        "anchors",
        "anchor_strength",
    )
    _RESULTS = ("objective_", "n_iter_", "history_", "optimizer_")

    def save(self, path: str | Path) -> None:
        """Write the fitted model to a safetensors file (settings and results in its metadata)."""
        meta = {name: getattr(self, name) for name in self._SETTINGS + self._RESULTS}
        tensors = {"w": self.w_, "mean": self.mean_, "std": self.std_, "mis": self.mis_}
        save_file(tensors, str(path), metadata={"linear_corex": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | Path) -> LinearCorex:
        """Read a model written by `save`."""
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads(f.metadata()["linear_corex"])
        model = cls(**{name: meta[name] for name in cls._SETTINGS if name in meta})  # older files: defaults
        for name in cls._RESULTS:
            setattr(model, name, meta.get(name))  # None for what older files lack
        tensors = load_file(str(path))
        model.w_, model.mean_, model.std_, model.mis_ = (tensors[k] for k in ("w", "mean", "std", "mis"))
        return model


def _check(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"input has {int((~np.isfinite(x)).sum())} NaN or infinite values")
    return x


def fit_hierarchy(x: np.ndarray, layers: Sequence[int], **kw) -> list[LinearCorex]:
    """Stack CorEx layers: layer k (layers[k] factors) is fitted on the factor scores of layer k - 1."""
    models = []
    for n_factors in layers:
        models.append(LinearCorex(n_factors, **kw).fit(x))
        x = models[-1].transform(x)
    return models
