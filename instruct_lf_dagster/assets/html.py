"""The discovery's report as one self-contained HTML page: the goal, themes, and a card per factor.

The page is `templates/report.html.j2`; this module only arranges the tables into what it shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import jinja2
import pandas as pd

SPARK_WIDTH, SPARK_HEIGHT = 140, 28


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("instruct_lf_dagster.assets", "templates"),
        autoescape=True,  # documents are untrusted text: a <script> in one must stay text
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _points(values: Sequence[float], width: int, height: int) -> str:
    """SVG polyline points of `values`, scaled so that the largest touches the top (all zero: a flat line)."""
    top = max(max(values), 1e-9)
    step = width / max(1, len(values) - 1)
    return " ".join(
        f"{i * step:.1f},{height - 2 - (v / top) * (height - 4):.1f}" for i, v in enumerate(values)
    )


def sparkline(values: Sequence[float], width: int = SPARK_WIDTH, height: int = SPARK_HEIGHT) -> str:
    """An inline SVG line of `values` (e.g. a factor's share of each batch, in arrival order)."""
    if not len(values):
        return ""
    macro = _environment().get_template("sparkline.svg.j2").module.sparkline
    return str(macro(_points(values, width, height), width, height))


def _card(rows: pd.DataFrame, shares: Sequence[float], judged: dict | None = None) -> dict:
    """What one factor's card shows; `rows` are its properties by rank, `judged` its `judged_quality` row."""
    first, top = rows.iloc[0], rows.head(8)
    trend = None
    if len(shares):
        points = _points(shares, SPARK_WIDTH, SPARK_HEIGHT)
        trend = {"points": points, "width": SPARK_WIDTH, "height": SPARK_HEIGHT, "newest": shares[-1]}
    return {
        "factor": int(first["factor"]),
        "name": first["name"],
        "size": len(rows),
        "named_by_llm": bool(first["named_by_llm"]),
        "curated": first.get("curated")
        or "",  # what the discovery's curation did to it (reports before: none)
        "description": first["description"] or "",
        # The first 8 by MI, split into the factor's two ends (a factor is a direction; `Factors.poles`).
        "high": [p for p, pole in zip(top["property"], top["pole"], strict=True) if pole == "high"],
        "low": [p for p, pole in zip(top["property"], top["pole"], strict=True) if pole == "low"],
        "examples": list(first["examples"])[:3],
        "trend": trend,
        "judged": _judged(judged),
    }


def _judged(row: dict | None) -> dict | None:
    """The judge's verdicts as the card words them (None: not judged)."""
    if row is None:
        return None
    said = {True: ("found", "yes"), False: ("missed", "no")}
    intrusion, relevant = row.get("intrusion"), row.get("relevant")
    return {
        "intrusion": said[bool(intrusion)][0] if pd.notna(intrusion) else "not asked",
        "intruder": row.get("intruder") if pd.notna(row.get("intruder")) else "",
        "relevant": said[bool(relevant)][1] if pd.notna(relevant) else "no answer",
    }


def render(
    discovery: str,
    goal: str,
    report: pd.DataFrame,
    prevalence: pd.DataFrame,
    judged: pd.DataFrame | None = None,
) -> str:
    """The page: `report` is the factor report table, `prevalence` the factor_prevalence table, `judged` the
    judged_quality table (None: no judge's column)."""
    verdicts = {} if judged is None else {int(r["factor"]): r for r in judged.to_dict("records")}
    shares = {
        factor: rows.sort_values("position")["share_strong"].tolist()
        for factor, rows in prevalence.groupby("factor")
    }
    # Themes by size, factors inside by size: the largest first.
    sizes = report.groupby("factor").size()
    themes = report.drop_duplicates("factor").assign(size=lambda f: f["factor"].map(sizes))
    shown = [
        {
            "id": int(theme),
            "title": members["theme_name"].iloc[0] or "Other factors",
            "cards": [
                _card(report[report["factor"] == f].sort_values("rank"), shares.get(f, []), verdicts.get(f))
                for f in members.sort_values("size", ascending=False, kind="stable")["factor"]
            ],
        }
        for theme, members in sorted(themes.groupby("theme"), key=lambda g: -g[1]["size"].sum())
    ]
    page = _environment().get_template("report.html.j2")
    return page.render(
        discovery=discovery,
        goal=goal,
        themes=shown,
        n_factors=report["factor"].nunique(),
        n_properties=report["property"].nunique(),
    )
