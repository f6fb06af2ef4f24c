"""Adam on the noisy forward pass: the research scripts' optimiser, the one that fits with the paper's L1."""

from __future__ import annotations

import torch

from instruct_lf_dagster.core.corex.objective import _Data, _objective

WINDOW = 50  # steps between convergence checks (the reference scripts' 50-step moving window)
# Annealing stages (eps > 0) only point the way: a stage may take this share of max_iter.
ANNEAL_STEPS = 0.1


def train_adam(
    data: _Data,
    w: torch.Tensor,
    schedule,
    gen: torch.Generator,
    *,
    l1: float,
    lr: float,
    max_iter: int,
    tol: float,
    anchor: torch.Tensor | None = None,
) -> list[dict]:
    """Adam through the stages; per stage: eps, steps and the noise-free objective + L1 it reached (anchored by
    `anchor`, `objective._objective_and_grad`)."""
    (r, n), m = (data.rows.shape[0], data.n), w.shape[0]
    w.requires_grad_(True)
    adam = torch.optim.Adam([w], lr=lr)  # one optimiser through all stages, as in the scripts

    def total(eps: float) -> float:  # what a stage minimises, without the sampling noise
        return float(_objective(*data.moments(w, eps), anchor) + l1 * w.abs().sum())

    def noise() -> tuple[torch.Tensor, torch.Tensor | float]:  # eps_z, seen through `_compress`
        sample = torch.randn((r, m), generator=gen, device=w.device)
        if r == n:
            return sample, 0.0
        rest = torch.randn((n - r, m), generator=gen, device=w.device)
        return sample, rest.T @ rest

    history, budget = [], max_iter * len(schedule)  # the scripts' budget: max_iter per stage
    for eps in schedule:
        last, steps = total(eps), 0
        spent = sum(stage["steps"] for stage in history)
        limit = max(WINDOW, int(ANNEAL_STEPS * max_iter)) if eps > 0 else budget - spent
        while steps < limit:
            eps_z = noise()
            with torch.enable_grad():
                loss = _objective(*data.moments(w, eps, eps_z), anchor) + l1 * w.abs().sum()
                adam.zero_grad(set_to_none=True)
                loss.backward()
            adam.step()
            steps += 1
            if steps % WINDOW == 0:
                before, last = last, total(eps)
                if abs(last - before) <= tol * abs(before):
                    break
        history.append({"eps": eps, "steps": steps, "objective": last})
    w.requires_grad_(False)
    return history
