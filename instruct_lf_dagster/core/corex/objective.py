"""The noise-free and noisy CorEx objective, its gradient, and the data it is computed from.

Every term of the objective is a function of three second moments, <z x> (m, P), <z z> (m, m) and <x^2> (P), so
`_objective` works on those and never forms the n x P conditional mean; `_compress` shrinks the n data rows to
rank(x) rows that give the same moments. `_moments` gives them for a sampled factor noise (the noisy forward pass
of Adam) or with the noise integrated out (the noise-free objective used to score, stop and compare: it is
exactly -TC of the reference package `linearcorex`); `_Data` holds the data in whichever form makes that cheaper.
The annealing noise x <- sqrt(1 - e^2) x + e * N enters through its exact expected moments, as in the reference
package, instead of an n x P sample per step (which cost more than the step itself).
"""

from __future__ import annotations

import math

import numpy as np
import torch

_TINY = 1e-8


def _objective(
    zx: torch.Tensor, zz: torch.Tensor, x_sq: torch.Tensor, anchor: torch.Tensor | None = None
) -> torch.Tensor:
    """The CorEx objective (no L1) from the moments <z x> (m, P), <z z> (m, m) and <x^2> (P); anchored by
    `anchor` (m, P) if given (`_objective_and_grad`).

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
    value = 0.5 * fit.sum() + 0.5 * z2.log().sum()
    return value if anchor is None else value + _anchored(zx, zz, anchor)[0]


def _objective_and_grad(
    zx: torch.Tensor, zz: torch.Tensor, x_sq: torch.Tensor, anchor: torch.Tensor | None = None
):
    """`_objective` and its gradients with respect to zx and zz, by hand: half the cost of autograd's graph.

    With `anchor` (m, P), the objective also rewards the anchored pairs (`_anchored`): Anchored CorEx
    (Gallagher et al., TACL 2017) carried over to Linear CorEx. There an anchor word's mutual information with its
    topic counts `anchor strength` times; here the anchored pair's squared correlation, the mutual information
    -0.5 log(1 - R^2) to second order, is rewarded with weight `anchor`, so the fit itself bends factor j towards
    its anchored properties.
    """
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
    if anchor is None:
        return value, g_r / scale[:, None], g_zz
    reward, g_zx_anchor, g_zz_anchor = _anchored(zx, zz, anchor)
    return value + reward, g_r / scale[:, None] + g_zx_anchor, g_zz + g_zz_anchor


def _anchored(zx: torch.Tensor, zz: torch.Tensor, anchor: torch.Tensor):
    """The anchor reward -0.5 sum anchor_ji (R0^2 - R0^4 / 2) and its gradients with respect to zx and zz, R0
    the correlation of x_i with factor j's signal (its noise eps_z left out: <z_j^2> - 1 is the signal's variance).

    Why this form: the mutual information itself is unbounded as |R| -> 1, and rewarding it, or R with the noise
    in (which nears 1 only as |w_j| grows without bound), makes the factor collapse onto one anchored column with
    runaway weights. R0 does not change with the scale of w_j, a sum of R0^2 over a group is largest at the
    group's common direction (its first principal component, which also serves a group with two opposite ends),
    and the R0^4 term takes the pull away as a pair nears a copy. On a planted corpus (tests/test_corex_anchors.py)
    plain R0^2 at weight 1 still spoiled 2 of 6 fits of seeds from unrelated factors; this form spoiled none.
    """
    signal = (torch.diagonal(zz) - 1).clamp_min(_TINY)
    r0 = zx / signal.sqrt()[:, None]
    r2 = r0 * r0
    value = -0.5 * (anchor * (r2 - 0.5 * r2 * r2)).sum()
    g_r2 = -0.5 * anchor * (1 - r2)  # d value / d r0^2
    g_zx = 2 * g_r2 * r0 / signal.sqrt()[:, None]
    return value, g_zx, torch.diag(-(g_r2 * r2).sum(1) / signal)


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

    def value_and_preimage(
        self, w: torch.Tensor, w_cov: torch.Tensor, eps: float = 0.0, anchor: torch.Tensor | None = None
    ):
        """The noise-free objective of w at annealing level eps (anchored by `anchor`, `_objective_and_grad`),
        given w and w C (C the covariance); and B (m, P) such that the gradient is B C_eps,
        C_eps = (1 - eps^2) C + eps^2 I the covariance of the annealed data.

        zx = w C_eps and zz = zx w' + I, so the gradient is (g_zx + (g_zz + g_zz') w) C_eps: the product with the
        covariance is left to the caller, who often does not need it.
        """
        value, g_zx, g_zz = _objective_and_grad(*self.moments(w, eps, w_cov=w_cov), anchor)
        return value, g_zx + (g_zz + g_zz.T) @ w

    def value_and_grad(
        self, w: torch.Tensor, eps: float = 0.0, anchor: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The noise-free objective of w at annealing level eps (anchored by `anchor`), and its gradient."""
        value, pre = self.value_and_preimage(w, self.times_cov(w), eps, anchor)
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
