"""Results over seeds: mean and standard deviation per (metric, method), as a table and as JSON."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Scores = dict[str, dict[str, float]]  # metric -> method -> value, for one seed


def numbers(text: str, option: str, kind: type = float, minimum: float = 0) -> list:
    """A comma-separated option (`--l1 0.9,0`): one value, or several to choose between (the first is the default).

    Anything else, or a value under `minimum`, stops the program with a message naming the option."""
    try:
        values = [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < minimum:
        raise SystemExit(f"{option}: expected values >= {minimum} separated by commas, got {text!r}")
    return values


def aggregate(runs: Sequence[Scores]) -> tuple[Scores, Scores]:
    """(mean, std) over runs of metric -> method -> value; a method missing from a run is left out of it."""
    means: Scores = {}
    stds: Scores = {}
    for metric in dict.fromkeys(m for run in runs for m in run):
        for method in dict.fromkeys(k for run in runs for k in run.get(metric, {})):
            values = [run[metric][method] for run in runs if method in run.get(metric, {})]
            means.setdefault(metric, {})[method] = float(np.mean(values))
            stds.setdefault(metric, {})[method] = float(np.std(values))
    return means, stds


def format_table(means: Scores, stds: Scores, *, notes: dict[str, str] | None = None) -> str:
    """Methods as rows, metrics as columns, "mean ± std" cells; `notes` add a last column (e.g. skip reasons)."""
    metrics = list(means)
    methods = list(dict.fromkeys(k for metric in metrics for k in means[metric]))
    methods += [k for k in (notes or {}) if k not in methods]
    header = ["method", *metrics] + (["note"] if notes else [])
    rows = [header]
    for method in methods:
        cells = [
            f"{means[m][method]:.4f} ± {stds[m][method]:.4f}" if method in means[m] else "-" for m in metrics
        ]
        rows.append([method, *cells] + ([(notes or {}).get(method, "")] if notes else []))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
