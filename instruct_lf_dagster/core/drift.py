"""Factor prevalence over the stream: how common each factor is in each batch, and which moved in the newest."""

from __future__ import annotations

import numpy as np

STRONG = 1.0  # an oriented factor score this many standard deviations above the mean counts as strong
MIN_HISTORY = 3  # batches before the newest needed to judge it
Z_LIMIT = 3.0
MIN_SPREAD = 0.01  # a factor whose share never moved still needs a move this large (in share) to be flagged


def prevalence(strengths: np.ndarray, strong: float = STRONG) -> tuple[np.ndarray, np.ndarray]:
    """Per factor (columns of `strengths`, one row per document of a batch, high = has the factor): the share of
    documents where it is strong, and its mean score."""
    strengths = np.atleast_2d(strengths)
    if not len(strengths):
        return np.zeros(strengths.shape[1]), np.zeros(strengths.shape[1])
    return (strengths >= strong).mean(axis=0), strengths.mean(axis=0)


def drifted(
    shares: np.ndarray, min_history: int = MIN_HISTORY, z_limit: float = Z_LIMIT
) -> tuple[list[int], np.ndarray]:
    """Columns (factors) whose share in the last row (the newest batch) lies more than `z_limit` standard
    deviations from their shares in the rows before it, and every column's z; nothing with too short a history.

    `shares`: (batches in arrival order, factors).
    """
    shares = np.asarray(shares, dtype=np.float64)
    if shares.ndim != 2 or len(shares) - 1 < min_history:
        return [], np.zeros(shares.shape[-1] if shares.ndim == 2 else 0)
    history, newest = shares[:-1], shares[-1]
    spread = np.maximum(history.std(axis=0, ddof=1), MIN_SPREAD)
    z = (newest - history.mean(axis=0)) / spread
    return [int(j) for j in np.flatnonzero(np.abs(z) > z_limit)], z
