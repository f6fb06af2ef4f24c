"""Linear CorEx in PyTorch: m linear factors that explain the correlations between property columns.

Linear CorEx (Ver Steeg & Galstyan, arXiv 1706.03353) models factors z = W x + eps_z (eps_z standard normal) on
standardised columns x and minimises an upper bound on TC(X | Z) (Instruct-LF adds an L1 penalty):

    0.5 * sum_i log mean (x_i - E[x_i|z])^2 + 0.5 * sum_j log mean z_j^2  (+ l1 * sum |W|)

with R = <z x> / sqrt(<z^2>), r_i = sum_j R_ji^2 / (1 - R_ji^2), E[x|z] = z (R / (1 - R^2) / sqrt(<z^2>)) / (1 + r).
Every term is a function of three second moments, <z x> (m, P), <z z> (m, m) and <x^2> (P), so `_objective` works
on those and never forms the n x P conditional mean; `_compress` shrinks the n data rows to rank(x) rows that give
the same moments. `_moments` gives them for a sampled factor noise (the noisy forward pass of `adam`) or with the
noise integrated out (the noise-free objective used to score, stop and compare: it is exactly -TC of the reference
package `linearcorex`); `_Data` holds the data in whichever form makes that cheaper. The annealing noise
x <- sqrt(1 - e^2) x + e * N enters through its exact expected moments, as in the reference package, instead of an
n x P sample per step (which cost more than the step itself).

Two optimisers minimise the same objective. `adam` is the research scripts' path: Adam on the noisy forward pass
(a sampled eps_z per step). `lbfgs` minimises the noise-free objective, a smooth deterministic function, with a
limited-memory quasi-Newton method that treats the L1 term orthant-wise (OWL-QN, Andrew & Gao 2007): on the
planted benchmark it reaches the reference package's objective in about 65 steps, where Adam at lr 1e-3 needs
about 1,000. With an L1 penalty it finds the penalised optimum, exact zeros included, and at the paper's l1 = 0.9
that optimum is often W = 0 on a small corpus (too little total correlation to pay for any weight): W = 0 is a
stationary point for every l1 > 0. The scripts' Adam never gets there, and the paper's results rest on that. So
`auto` (the default) uses `lbfgs` without L1 and `adam` with it.

`lbfgs` sees the data only through n and the covariance of the standardised columns, so it can also fit from
`CorexStatistics` accumulated batch by batch (`LinearCorex.fit_statistics`), never holding all the rows.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections import deque
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

ANNEAL = tuple(0.6**k for k in range(1, 7)) + (0.0,)
WINDOW = 50  # steps between convergence checks (the reference scripts' 50-step moving window)
# Annealing stages (eps > 0) only point the way: with Adam a stage may take this share of max_iter; the
# quasi-Newton method takes a fixed number of steps per stage, its curvature memory carrying on to the next.
ANNEAL_STEPS = 0.1
ANNEAL_QN_STEPS = 3
MEMORY = 10  # curvature pairs the quasi-Newton method keeps
QN_WINDOW = 5  # quasi-Newton steps over which the stop rule averages the decrease
OPTIMIZERS = ("auto", "lbfgs", "adam")
_TINY = 1e-8


def _objective(zx: torch.Tensor, zz: torch.Tensor, x_sq: torch.Tensor) -> torch.Tensor:
    """The CorEx objective (no L1) from the moments <z x> (m, P), <z z> (m, m) and <x^2> (P).

    With b = R / (1 - R^2), r = sum_j R b and Q = b' corr(z) b per column, E[x|z] = z b / sqrt(<z^2>) / (1 + r)
    leaves the residual mean square (<x^2> (1 + r)^2 - 2 r (1 + r) + Q) / (1 + r)^2: the value of
    mean((x - E[x|z])^2) on the same sample, without forming the n x P conditional mean.
    Columns with <x^2> = 0 (constant in training) explain nothing and are left out.
    """
    z2 = torch.diagonal(zz)
    scale = z2.sqrt()
    r = zx / scale[:, None]
    b = r / (1 - r * r).clamp_min(_TINY)
    ri = (r * b).sum(0)
    q = ((zz / (scale[:, None] * scale)) @ b * b).sum(0)
    resid = (1 + ri) * (x_sq * (1 + ri) - 2 * ri) + q  # times (1 + r)^2
    fit = torch.where(x_sq > 0, resid.clamp_min(_TINY).log() - 2 * torch.log1p(ri), 0.0)
    return 0.5 * fit.sum() + 0.5 * z2.log().sum()


def _objective_and_grad(zx: torch.Tensor, zz: torch.Tensor, x_sq: torch.Tensor):
    """`_objective` and its gradients with respect to zx and zz, by hand: half the cost of autograd's graph."""
    z2 = torch.diagonal(zz)
    scale = z2.sqrt()
    r = zx / scale[:, None]
    unclamped = 1 - r * r
    d = unclamped.clamp_min(_TINY)
    b = r / d
    ri = (r * b).sum(0)
    corr = zz / (scale[:, None] * scale)
    u = corr @ b
    resid = (1 + ri) * (x_sq * (1 + ri) - 2 * ri) + (u * b).sum(0)
    used = x_sq > 0
    fit = torch.where(used, resid.clamp_min(_TINY).log() - 2 * torch.log1p(ri), 0.0)
    value = 0.5 * fit.sum() + 0.5 * z2.log().sum()

    g_q = torch.where(used & (resid > _TINY), 0.5 / resid, 0.0)  # d value / d resid, = d value / d q
    g_ri = g_q * (2 * x_sq * (1 + ri) - 2 - 4 * ri) - torch.where(used, 1 / (1 + ri), 0.0)
    g_b = g_ri * r + 2 * g_q * u
    g_r = g_ri * b + g_b * torch.where(unclamped > _TINY, (1 + r * r) / (d * d), 1 / d)
    g_corr = (b * g_q) @ b.T
    g_corr_corr = g_corr * corr
    g_scale = -((g_r * r).sum(1) + g_corr_corr.sum(0) + g_corr_corr.sum(1)) / scale
    g_zz = g_corr / (scale[:, None] * scale) + torch.diag(g_scale / (2 * scale) + 0.5 / z2)
    return value, g_r / scale[:, None], g_zz


def _moments(x: torch.Tensor, n: int, w: torch.Tensor, x_sq: torch.Tensor, eps: float = 0.0, noise=None):
    """<z x>, <z z>, <x^2> of z = x' W^T + eps_z with x' = sqrt(1 - eps^2) x + eps * N, N integrated out.

    x holds n data rows, or is their compressed form (r, P) from `_compress`. With `noise` = (sample (r, m),
    extra (m, m) or 0) eps_z is that sample (the noisy forward pass); without it eps_z is integrated out as well,
    giving the noise-free moments. Integrating N is exact for the moments: <N> = 0, <N'N> / n = I.
    """
    m = w.shape[0]
    keep, e2 = math.sqrt(1 - eps * eps), eps * eps
    z = keep * (x @ w.T)
    if noise is None:
        zz = z.T @ z / n + torch.eye(m, dtype=x.dtype, device=x.device)
    else:
        z = z + noise[0]
        zz = (z.T @ z + noise[1]) / n
    if eps > 0:
        zz = zz + e2 * (w @ w.T)
    return keep * (z.T @ x) / n + e2 * w, zz, keep * keep * x_sq + e2


def _covariance_if_full(x: torch.Tensor) -> torch.Tensor | None:
    """x'x / n if rank(x) >= P / 2 (then the covariance makes a pass cheaper than rows would), else None.

    Judged on the covariance itself: a Cholesky of P / 2 non-constant columns' block must succeed with every pivot
    (the variance a column keeps given the earlier ones) above 1e-5 of the column's variance. A wrong "no"
    (nearly collinear columns) only costs a `_compress` that finds full rank.
    """
    if x.shape[0] <= math.ceil(x.shape[1] / 2):
        return None
    cov = x.T @ x / x.shape[0]
    return cov if _full_rank(cov) else None


def _full_rank(cov: torch.Tensor) -> bool:
    """rank >= P / 2 for a P x P covariance, by `_covariance_if_full`'s Cholesky test."""
    k = math.ceil(cov.shape[0] / 2)
    columns = torch.nonzero(torch.diagonal(cov) > 0).flatten()[:k]
    if len(columns) < k:
        return False
    block = cov[columns][:, columns].double()
    factor, info = torch.linalg.cholesky_ex(block)
    return not (info or bool((torch.diagonal(factor).square() <= 1e-5 * torch.diagonal(block)).any()))


def _compress(x: torch.Tensor, max_side: int = 8192) -> torch.Tensor:
    """B (r, P) with B'B = x'x, r = rank(x) (singular values above 1e-5 of the largest), or x when r = n.

    Every moment is linear in x'x or in x'eps_z, and eps_z' x = G' B with G = U'eps_z (r, m) again standard normal,
    while <z z> gains eps_z' (I - UU') eps_z, an (n - r)-dof Wishart: so the noisy forward pass on B, with that
    extra term, has exactly the distribution it has on x, at r / n of the cost. Compatibility matrices have rank
    at most the encoder's dimension (384 for MiniLM), often far below n.
    """
    n, p = x.shape
    if min(n, p) > max_side:  # the Gram matrix would not be small
        return x
    x64 = x.double()
    gram = x64 @ x64.T if n <= p else x64.T @ x64
    values, vectors = torch.linalg.eigh(gram)  # float64: the small singular values must be resolved
    rank = int((values > values[-1] * 1e-10).sum())
    if rank == n:
        return x
    vectors = vectors[:, -rank:]
    b = vectors.T @ x64 if n <= p else vectors.T * values[-rank:].sqrt()[:, None]
    return b.to(x.dtype)


class _Data:
    """Standardised data reduced to what the objective needs: n, <x^2>, and either rows or the covariance.

    The noise-free moments cost two m x r x P products on r rows, or one m x P x P product on the P x P
    covariance. So data of rank r < P / 2 is compressed to r rows (`_compress`), and other data keeps its rows
    (for the noisy passes of `adam`) and gets its covariance.
    """

    def __init__(self, x: torch.Tensor):
        self.n, self.cov = x.shape[0], _covariance_if_full(x)
        self.rows = x if self.cov is not None else _compress(x)
        self.x_sq = (self.rows * self.rows).sum(0) / self.n

    @classmethod
    def of_covariance(cls, cov: torch.Tensor, n: int, max_side: int = 8192) -> _Data:
        """The same from the covariance x'x / n (float64) of n standardised rows, kept as `__init__` keeps it.

        Float32, as `fit` computes: the covariance if rank >= P / 2, else r = rank rows B with B'B = x'x, the
        root of n C that `_compress` takes on the P side. Holds no data rows: the noise-free objective
        (`lbfgs`) is served, the noisy passes of `adam` are not.
        """
        data = cls.__new__(cls)
        data.n, low = n, cov.float()
        if (n > math.ceil(cov.shape[0] / 2) and _full_rank(low)) or cov.shape[0] > max_side:
            data.cov, data.rows = low, None
        else:
            # From the float32 covariance: statistics summed over other batch splits differ only past float32's
            # precision, so every split gives the same root, and the same fit.
            values, vectors = torch.linalg.eigh(low.double() * n)
            rank = max(int((values > values[-1] * 1e-10).sum()), 1)  # all-constant data: one zero row
            data.cov, data.rows = (
                None,
                (vectors[:, -rank:].T * values[-rank:].clamp_min(0).sqrt()[:, None]).float(),
            )
        data.x_sq = torch.diagonal(low).clone()  # 1, or 0 for a constant column
        return data

    def times_cov(self, v: torch.Tensor) -> torch.Tensor:
        """v (k, P) times the covariance x'x / n: the one costly operation of a fit."""
        if self.cov is not None:
            return v @ self.cov
        return (v @ self.rows.T) @ self.rows / self.n

    def moments(self, w: torch.Tensor, eps: float = 0.0, noise=None, *, w_cov: torch.Tensor | None = None):
        """`_moments` of weights w (m, P) on this data; without noise, w_cov = w C saves the product if known."""
        if noise is not None:
            return _moments(self.rows, self.n, w, self.x_sq, eps, noise)
        zx = _annealed(w, self.times_cov(w) if w_cov is None else w_cov, eps)
        zz = zx @ w.T + torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
        return zx, zz, (1 - eps * eps) * self.x_sq + eps * eps if eps else self.x_sq

    def value_and_preimage(self, w: torch.Tensor, w_cov: torch.Tensor, eps: float = 0.0):
        """The noise-free objective of w at annealing level eps, given w and w C (C the covariance); and B (m, P)
        such that the gradient is B C_eps, C_eps = (1 - eps^2) C + eps^2 I the covariance of the annealed data.

        zx = w C_eps and zz = zx w' + I, so the gradient is (g_zx + (g_zz + g_zz') w) C_eps: the product with the
        covariance is left to the caller, who often does not need it.
        """
        value, g_zx, g_zz = _objective_and_grad(*self.moments(w, eps, w_cov=w_cov))
        return value, g_zx + (g_zz + g_zz.T) @ w

    def value_and_grad(self, w: torch.Tensor, eps: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """The noise-free objective of w at annealing level eps, and its gradient with respect to w."""
        value, pre = self.value_and_preimage(w, self.times_cov(w), eps)
        return value, _annealed(pre, self.times_cov(pre), eps)


def _annealed(v: torch.Tensor, v_cov: torch.Tensor, eps: float) -> torch.Tensor:
    """v C_eps from v and v C: the annealed data's covariance is C_eps = (1 - eps^2) C + eps^2 I."""
    return (1 - eps * eps) * v_cov + eps * eps * v if eps else v_cov


def objective(x_std: np.ndarray, w: np.ndarray) -> float:
    """Noise-free objective (no L1; lower is better) of weights `w` (m, P) on standardised data `x_std` (n, P).

    Any weight matrix can be scored: for the reference package `linearcorex`, whose `ws` are scaled by the factor's
    std, pass `ws / sqrt(1 - mean((x_std @ ws.T)^2, 0))[:, None]`; the value is then its -TC.
    """
    data = _Data(torch.as_tensor(np.asarray(x_std, dtype=np.float64)))
    with torch.no_grad():
        return float(_objective(*data.moments(torch.as_tensor(np.asarray(w, dtype=np.float64)))))


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum())


@dataclass
class _Point:
    """A point of the search: w, w C (C the covariance), objective + L1, B (gradient B C_eps) and, once made, B C."""

    w: torch.Tensor
    w_cov: torch.Tensor
    total: float
    pre: torch.Tensor
    pre_cov: torch.Tensor | None = None
    grad: torch.Tensor | None = None


class _QuasiNewton:
    """L-BFGS for f(w) + l1 |w|_1, f the noise-free objective, through one annealing level after another.

    f depends on w through w C_eps (`_Data.value_and_preimage`), so each point carries its product w C. Without L1
    the initial inverse Hessian is gamma C_eps^-1 rather than gamma I: the gradient is B C_eps with B known, so
    that preconditioner costs nothing, and every direction is then a combination of vectors whose products with C
    are known. A step costs one product with C (the new gradient), however many points its line search tries; on
    the planted benchmark the preconditioner also saves a fifth of the steps.

    With L1 it is OWL-QN (Andrew & Gao, ICML 2007): at w_i = 0 it takes the one-sided derivative that descends and
    keeps each step in the orthant it starts from, so a weight that would cross zero stops at zero, which is how
    the L1 term yields exact zeros. Its projections and pseudo-gradient do not keep the products known, so that
    path uses gamma I and pays a product per point. Curvature pairs persist across annealing levels, which differ
    only slightly.
    """

    def __init__(self, data: _Data, w: torch.Tensor, l1: float, memory: int = MEMORY):
        self.data, self.w, self.l1 = data, w, l1
        self.w_cov = data.times_cov(w)
        # curvature pairs: the step s, s C, the change of B and its C product
        self.pairs: deque[tuple[torch.Tensor, ...]] = deque(maxlen=memory)

    def _point(self, w: torch.Tensor, w_cov: torch.Tensor, eps: float) -> _Point:
        value, pre = self.data.value_and_preimage(w, w_cov, eps)
        total = float(value) + self.l1 * float(w.abs().sum()) if self.l1 else float(value)
        return _Point(w, w_cov, total, pre)

    def _complete(self, point: _Point, eps: float) -> _Point:
        """Give the point its gradient: the one product with C a step needs."""
        if point.grad is None:
            point.pre_cov = self.data.times_cov(point.pre)
            point.grad = _annealed(point.pre, point.pre_cov, eps)
        return point

    def _pseudo_gradient(self, w: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        if not self.l1:
            return grad
        right, left = grad + self.l1, grad - self.l1
        at_zero = torch.where(right < 0, right, torch.where(left > 0, left, torch.zeros_like(grad)))
        return torch.where(w != 0, grad + self.l1 * torch.sign(w), at_zero)

    def _direction(self, pg: torch.Tensor, point: _Point, eps: float):
        """-H pg with H the L-BFGS inverse-Hessian estimate (two-loop recursion); and its C product if known."""
        pairs = []
        for s, s_cov, dpre, dpre_cov in self.pairs:
            y = _annealed(dpre, dpre_cov, eps)  # the gradient's change, at this level
            sy, y_h0 = _dot(s, y), _dot(y, y if self.l1 else dpre)  # y H0 y' / gamma (y C_eps^-1 = dpre)
            if y_h0 > 0 and sy > _TINY * y_h0:  # positive curvature at this level too
                pairs.append((s, s_cov, dpre, dpre_cov, y, 1.0 / sy, sy / y_h0))
        q, alphas = -pg, []
        q_pre, q_pre_cov = -point.pre, -point.pre_cov  # q = q_pre C_eps (used without L1, where pg = grad)
        for s, _, dpre, dpre_cov, y, rho, _ in reversed(pairs):
            alphas.append(rho * _dot(s, q))
            q = q - alphas[-1] * y
            if not self.l1:
                q_pre, q_pre_cov = q_pre - alphas[-1] * dpre, q_pre_cov - alphas[-1] * dpre_cov
        d, d_cov = (q, None) if self.l1 else (q_pre, q_pre_cov)  # H0 q
        if pairs:  # H0 = gamma I or gamma C_eps^-1, scaled by the latest pair
            gamma = pairs[-1][-1]
            d, d_cov = gamma * d, None if d_cov is None else gamma * d_cov
        for (s, s_cov, _, _, y, rho, _), alpha in zip(pairs, reversed(alphas), strict=True):
            beta = alpha - rho * _dot(y, d)
            d = d + beta * s
            d_cov = None if d_cov is None else d_cov + beta * s_cov
        return d, d_cov

    def _line_search(self, point: _Point, d: torch.Tensor, d_cov, pg: torch.Tensor, eps: float):
        """A step along d meeting the weak Wolfe conditions (bisect or double), projected on w's orthant.

        Doubling matters: near the random start the objective is flat and curved the wrong way, and a search that
        only shrinks steps would crawl there. Returns the new point, or None if nothing decreases.
        """
        orthant = torch.where(point.w != 0, torch.sign(point.w), -torch.sign(pg))
        slope = _dot(pg, d)
        d_eps = None if d_cov is None else _annealed(d, d_cov, eps)
        low, high, best = 0.0, math.inf, None
        # a unit step; the first one of unit length in H0's metric, |d|_H0^-1 = sqrt(-slope)
        t = 1.0 if self.pairs else min(1.0, 1.0 / max(math.sqrt(-slope), _TINY))
        for _ in range(40):
            w = point.w + t * d
            if self.l1:
                w = torch.where(torch.sign(w) == orthant, w, 0.0)
            new = self._point(w, self.data.times_cov(w) if d_cov is None else point.w_cov + t * d_cov, eps)
            if not new.total <= point.total + 1e-4 * _dot(pg, w - point.w):  # NaN fails too
                high = t
            else:
                best = new
                if d_eps is not None:  # grad . d = B C_eps . d = B . d C_eps
                    new_slope = _dot(new.pre, d_eps)
                else:
                    new_slope = _dot(self._pseudo_gradient(w, self._complete(new, eps).grad), d)
                if new_slope >= 0.9 * slope:
                    break
                low = t
            t = 2 * low if high == math.inf else (low + high) / 2
            if high - low < 1e-10 * t:
                break
        return None if best is None else self._complete(best, eps)

    def minimise(self, eps: float, max_steps: int, tol: float) -> tuple[int, float]:
        """Minimise the objective at level eps plus l1 |w|_1 from the current w (updated in place).

        Stops after `max_steps`, or when the last `QN_WINDOW` steps lowered the total by at most `tol` each on
        average, relative to it (or 1): a single short step, common on a plateau, does not stop it.
        Returns the steps taken and the total reached.
        """
        point = self._complete(self._point(self.w, self.w_cov, eps), eps)
        recent = deque([point.total], maxlen=QN_WINDOW + 1)
        steps = 0
        while steps < max_steps:
            pg = self._pseudo_gradient(point.w, point.grad)
            d, d_cov = self._direction(pg, point, eps)
            if self.l1:
                d = torch.where(d * pg < 0, d, 0.0)  # only where the pseudo-gradient says descend
            if _dot(pg, d) >= 0:  # stale curvature: start again from the first direction
                if not self.pairs:
                    break  # pg = 0: a minimum
                self.pairs.clear()
                continue
            new = self._line_search(point, d, d_cov, pg, eps)
            if new is None:  # no decrease left at this precision
                break
            steps += 1
            s, y = new.w - point.w, new.grad - point.grad
            # keep pairs of positive curvature only: a memory full of bad ones stalls OWL-QN
            if _dot(s, y) > _TINY * _dot(y, y):
                self.pairs.append(
                    (s, new.w_cov - point.w_cov, new.pre - point.pre, new.pre_cov - point.pre_cov)
                )
            point = new
            recent.append(point.total)
            gain = recent[0] - point.total
            if len(recent) > QN_WINDOW and gain <= QN_WINDOW * tol * max(abs(point.total), 1.0):
                break
        self.w.copy_(point.w)
        self.w_cov = point.w_cov
        return steps, point.total


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

    - `auto` (default): `lbfgs` when l1 = 0, else `adam` (see the module docstring for why).
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
        max_iter: int = 1000,
        tol: float = 1e-5,
        lr: float = 1e-3,
        anneal: bool = True,
        threads: int | None = None,
        optimizer: str = "auto",
    ):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        self.n_factors, self.l1, self.seed, self.device = n_factors, l1, seed, device
        self.max_iter, self.tol, self.lr, self.anneal, self.threads = max_iter, tol, lr, anneal, threads
        self.optimizer = optimizer

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
        return torch.randn(shape, generator=gen, device=self.device) / math.sqrt(p), False

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

    def _chosen_optimizer(self) -> str:
        return ("adam" if self.l1 > 0 else "lbfgs") if self.optimizer == "auto" else self.optimizer

    def _fit(self, data: _Data, warm_start: LinearCorex | np.ndarray | None) -> LinearCorex:
        """The fit proper, on standardised data (within `_threads` and `no_grad`); sets every result."""
        gen = torch.Generator(device=self.device).manual_seed(self.seed)
        w, warm = self._init_weights(warm_start, data.x_sq.shape[0], gen)
        schedule = ANNEAL if self.anneal and not warm else (0.0,)
        self.optimizer_ = self._chosen_optimizer()
        if self.optimizer_ == "adam":
            self.history_ = self._train_adam(data, w, schedule, gen)
        else:
            self.history_ = self._train_lbfgs(data, w, schedule)
        zx, zz, _ = data.moments(w)
        self.objective_ = float(_objective(zx, zz, data.x_sq))
        r = (zx / torch.diagonal(zz).sqrt()[:, None]).clamp(-1 + 1e-7, 1 - 1e-7)
        self.mis_ = (-0.5 * torch.log1p(-r * r)).cpu().numpy()
        self.w_ = w.cpu().numpy()
        self.n_iter_ = sum(stage["steps"] for stage in self.history_)
        return self

    def _train_lbfgs(self, data: _Data, w: torch.Tensor, schedule) -> list[dict]:
        """`_QuasiNewton` through the stages; per stage: eps, steps and the noise-free objective + L1 it reached."""
        solver = _QuasiNewton(data, w, self.l1)
        history = []
        for eps in schedule:
            limit = ANNEAL_QN_STEPS if eps > 0 else self.max_iter
            steps, total = solver.minimise(eps, limit, self.tol)
            history.append({"eps": eps, "steps": steps, "objective": total})
        return history

    def _train_adam(self, data: _Data, w: torch.Tensor, schedule, gen: torch.Generator) -> list[dict]:
        """Adam through the stages; per stage: eps, steps and the noise-free objective + L1 it reached."""
        (r, n), m = (data.rows.shape[0], data.n), w.shape[0]
        w.requires_grad_(True)
        adam = torch.optim.Adam([w], lr=self.lr)  # one optimiser through all stages, as in the scripts

        def total(eps: float) -> float:  # what a stage minimises, without the sampling noise
            return float(_objective(*data.moments(w, eps)) + self.l1 * w.abs().sum())

        def noise() -> tuple[torch.Tensor, torch.Tensor | float]:  # eps_z, seen through `_compress`
            sample = torch.randn((r, m), generator=gen, device=w.device)
            if r == n:
                return sample, 0.0
            rest = torch.randn((n - r, m), generator=gen, device=w.device)
            return sample, rest.T @ rest

        history, budget = [], self.max_iter * len(schedule)  # the scripts' budget: max_iter per stage
        for eps in schedule:
            last, steps = total(eps), 0
            spent = sum(stage["steps"] for stage in history)
            limit = max(WINDOW, int(ANNEAL_STEPS * self.max_iter)) if eps > 0 else budget - spent
            while steps < limit:
                eps_z = noise()
                with torch.enable_grad():
                    loss = _objective(*data.moments(w, eps, eps_z)) + self.l1 * w.abs().sum()
                    adam.zero_grad(set_to_none=True)
                    loss.backward()
                adam.step()
                steps += 1
                if steps % WINDOW == 0:
                    before, last = last, total(eps)
                    if abs(last - before) <= self.tol * abs(before):
                        break
            history.append({"eps": eps, "steps": steps, "objective": last})
        w.requires_grad_(False)
        return history

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


class CorexStatistics:
    """What `LinearCorex.fit_statistics` needs from rows (n, P), accumulated batch by batch in float64.

    Row count, column sums, the P x P cross-products and column minima and maxima: all add up over batches, so
    `update` holds one batch at a time and `merge` joins the statistics of separate workers. They give the
    column mean and std exactly as `fit` computes them (population std, 0 for exactly constant columns, found
    as `fit` finds them: maximum = minimum) and the covariance of the standardised data.

    Sums are taken about a shift, the first batch's column means: the centred cross-products are then
    `products - sums sums' / n` with `sums` small, where raw sums would lose about log10(mean^2 / var) digits
    to cancellation. Batch order changes only the shift, so results agree to float64 rounding.
    """

    _ARRAYS = ("shift", "sums", "products", "minimum", "maximum")

    def __init__(self, p: int):
        self.n = 0
        self.shift, self.sums = np.zeros(p), np.zeros(p)
        self.products = np.zeros((p, p))
        self.minimum, self.maximum = np.full(p, np.inf), np.full(p, -np.inf)

    @classmethod
    def of(cls, batches: Iterable[np.ndarray]) -> CorexStatistics:
        """Statistics of the rows of every batch (at least one, which sets P)."""
        batches = iter(batches)
        first = next(batches, None)
        if first is None:
            raise ValueError("no batch: the number of columns is unknown")
        stats = cls(np.shape(first)[-1]).update(first)
        for rows in batches:
            stats.update(rows)
        return stats

    @property
    def p(self) -> int:
        return len(self.sums)

    def update(self, rows: np.ndarray) -> CorexStatistics:
        """Add the rows (k, P) of one batch; returns self. Checked before anything changes.

        Holds, besides the statistics, a float64 copy of the batch and its P x P product while it runs.
        """
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.p:
            raise ValueError(f"expected rows of {self.p} columns, got shape {rows.shape}")
        if not np.isfinite(rows).all():
            raise ValueError(f"input has {int((~np.isfinite(rows)).sum())} NaN or infinite values")
        if not len(rows):
            return self
        if not self.n:
            self.shift = rows.mean(0, dtype=np.float64)
        centred = np.subtract(rows, self.shift, dtype=np.float64)
        self.n += len(rows)
        self.sums += centred.sum(0)
        self.products += centred.T @ centred  # numpy computes a.T @ a as one symmetric product (syrk)
        np.minimum(self.minimum, rows.min(0), out=self.minimum)
        np.maximum(self.maximum, rows.max(0), out=self.maximum)
        return self

    def merge(self, other: CorexStatistics) -> CorexStatistics:
        """Statistics of both row sets, as a new object: `other`'s sums moved to this shift, then added."""
        if other.p != self.p:
            raise ValueError(f"cannot merge statistics of {other.p} columns into {self.p}")
        if not self.n or not other.n:
            return (other if not self.n else self).copy()
        out, d = self.copy(), other.shift - self.shift  # x - shift = (x - other.shift) + d
        cross = np.outer(other.sums, d)
        out.products += other.products + cross + cross.T + other.n * np.outer(d, d)
        out.sums += other.sums + other.n * d
        out.n += other.n
        np.minimum(out.minimum, other.minimum, out=out.minimum)
        np.maximum(out.maximum, other.maximum, out=out.maximum)
        return out

    def copy(self) -> CorexStatistics:
        out = CorexStatistics(0)
        out.n = self.n
        for name in self._ARRAYS:
            setattr(out, name, getattr(self, name).copy())
        return out

    # -- what CorEx needs ---------------------------------------------------------------------------------------
    @property
    def mean(self) -> np.ndarray:
        """Column means (P,)."""
        return self.shift + self.sums / self.n

    @property
    def std(self) -> np.ndarray:
        """Column standard deviations (P,) as `fit` takes them: population std, 0 for exactly constant columns."""
        offset = self.sums / self.n
        std = np.sqrt(np.maximum(np.diagonal(self.products) / self.n - offset * offset, 0.0))
        std[self.maximum == self.minimum] = 0.0
        return std

    def covariance(self) -> np.ndarray:
        """Population covariance of the columns (P, P)."""
        offset = self.sums / self.n
        return self.products / self.n - np.outer(offset, offset)

    def correlation(self) -> np.ndarray:
        """Covariance x'x / n of the standardised rows (P, P): the columns' correlation, constant columns 0."""
        std = self.std
        inverse = np.divide(1.0, std, out=np.zeros_like(std), where=std > 0)
        cov = self.covariance()
        cov *= inverse[:, None]
        cov *= inverse
        return cov

    # -- storage ------------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write to a safetensors file: the float64 arrays, and n in the metadata."""
        tensors = {name: getattr(self, name) for name in self._ARRAYS}
        save_file(tensors, str(path), metadata={"corex_statistics": json.dumps({"n": self.n})})

    @classmethod
    def load(cls, path: str | Path) -> CorexStatistics:
        """Read statistics written by `save`."""
        with safe_open(str(path), framework="numpy") as f:
            n = json.loads(f.metadata()["corex_statistics"])["n"]
        tensors = load_file(str(path))
        stats = cls(len(tensors["sums"]))
        stats.n = int(n)
        for name in cls._ARRAYS:
            setattr(stats, name, tensors[name])
        return stats


def fit_hierarchy(x: np.ndarray, layers: Sequence[int], **kw) -> list[LinearCorex]:
    """Stack CorEx layers: layer k (layers[k] factors) is fitted on the factor scores of layer k - 1."""
    models = []
    for n_factors in layers:
        models.append(LinearCorex(n_factors, **kw).fit(x))
        x = models[-1].transform(x)
    return models
