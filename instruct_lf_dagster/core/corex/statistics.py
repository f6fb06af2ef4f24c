"""Streaming statistics of rows for `LinearCorex.fit_statistics`: fit without holding all the rows."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file


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
