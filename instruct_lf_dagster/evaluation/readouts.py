"""What a downstream model reads from fitted factors: the ablation of the factor layer's output.

The factors keep less than the compatibility matrix they come from (INSPIRED, next-action). These readouts of one
fitted model say where: the matrix itself; the factor scores (`Factors.scores`, what the platform stores); both
ends of each factor as separate non-negative features (a document low on a factor is not "near" one that lacks
it); and the members' evidence (each factor as the signed mean of its own members' standardised columns, which
ignores the weights a factor puts on other factors' properties). Evaluations score them on held-out training
data only, never on a test split.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from instruct_lf_dagster.core.factors import Factors

READOUTS = ("compatibility", "scores", "both_ends", "members")


def readouts(factors: Factors, compatibility: np.ndarray) -> dict[str, np.ndarray]:
    """Every readout (`READOUTS`) of `compatibility` rows (n, P) through `factors`."""
    x = np.asarray(compatibility, dtype=np.float64)
    scores = factors.scores(x)
    strengths = factors.oriented(scores)
    z = (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
    weights = factors.model.w_
    members = []
    for k in factors.nonempty():
        columns = [factors.properties.index(p) for p, _ in factors.members(k)]
        signs = np.sign(weights[k, columns]) * factors.oriented(np.ones((1, factors.n_factors)))[0, k]
        members.append((z[:, columns] * signs).mean(axis=1))
    return {
        "compatibility": x,
        "scores": scores,
        "both_ends": np.hstack([np.maximum(strengths, 0), np.maximum(-strengths, 0)]),
        "members": np.stack(members, axis=1) if members else np.zeros((len(x), 1)),
    }
