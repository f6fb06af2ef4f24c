"""Results over seeds: mean and standard deviation per (metric, method), as a table and as JSON."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np
from tabulate import tabulate

from instruct_lf_dagster.core.topics import Cost

T = TypeVar("T")

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


def format_table(means: Scores, stds: Scores | None = None, *, notes: dict[str, str] | None = None) -> str:
    """Methods as rows, metrics as columns, "mean ± std" cells (the mean alone without `stds`); `notes` add a
    last column (e.g. skip reasons)."""
    metrics = list(means)
    methods = list(dict.fromkeys(k for metric in metrics for k in means[metric]))
    methods += [k for k in (notes or {}) if k not in methods]
    header = ["method", *metrics] + (["note"] if notes else [])
    rows = []
    for method in methods:
        cells = [
            (f"{means[m][method]:.4f}" + (f" ± {stds[m][method]:.4f}" if stds else ""))
            if method in means[m]
            else "-"
            for m in metrics
        ]
        rows.append([method, *cells] + ([(notes or {}).get(method, "")] if notes else []))
    # Cells are text already: a method named like a number must not be re-formatted or right-aligned.
    return tabulate(rows, headers=header, disable_numparse=True)


def cost_table(methods: Sequence[str], costs: Mapping[str, Cost], seconds: Mapping[str, float]) -> str:
    """What each method paid: LLM calls, prompt and completion tokens, and seconds; methods without an LLM
    show 0 calls."""
    rows = []
    for method in methods:
        cost = costs.get(method, Cost())
        rows.append(
            [method, cost.calls, cost.prompt_tokens, cost.completion_tokens, round(seconds.get(method, 0), 1)]
        )
    return tabulate(rows, headers=["method", "llm_calls", "prompt_tokens", "completion_tokens", "seconds"])


def method_settings(command: str, options: dict[str, str], build: Callable[[], T]) -> T:
    """`build()` (the method's settings from command-line options), or exit naming the option out of range.

    `options` maps a setting's field name to its option, e.g. {"max_seq_length": "--max-seq-length"}.
    """
    try:
        return build()
    except ValueError as error:
        text = str(error)
        named = [option for field, option in options.items() if f"{field} must" in text]
        reason = next((line.strip() for line in text.splitlines() if " must " in line), text)
        reason = reason.removeprefix("Value error, ").split(" [type=")[0]
        raise SystemExit(f"instruct-lf eval {command}: {', '.join(named) or 'a setting'}: {reason}") from None
