"""The discovery's report as one self-contained HTML page: the goal, themes, and a card per factor."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

import pandas as pd

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #1d2330; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } .goal { color: #4a5468; margin-top: 0; }
h2 { font-size: 1.15rem; border-bottom: 2px solid #d9dee8; padding-bottom: .2rem; margin-top: 2rem; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 1rem; }
.card { border: 1px solid #d9dee8; border-radius: 8px; padding: .8rem 1rem; background: #fbfcfe; }
.card h3 { font-size: 1.02rem; margin: 0 0 .3rem; } .id { color: #8a93a6; font-weight: normal; }
.description { margin: 0 0 .5rem; } .props { font-size: .9rem; color: #2b4c7e; margin: 0 0 .5rem; }
blockquote { margin: .3rem 0; padding: .2rem .6rem; border-left: 3px solid #c3cde0; font-size: .85rem;
  color: #4a5468; } .flag { color: #a35a00; font-size: .8rem; }
.trend { display: flex; align-items: center; gap: .5rem; font-size: .8rem; color: #4a5468; }
"""


def sparkline(values: Sequence[float], width: int = 140, height: int = 28) -> str:
    """An inline SVG line of `values` (e.g. a factor's share of each batch, in arrival order)."""
    if not len(values):
        return ""
    top = max(max(values), 1e-9)
    step = width / max(1, len(values) - 1)
    points = " ".join(
        f"{i * step:.1f},{height - 2 - (v / top) * (height - 4):.1f}" for i, v in enumerate(values)
    )
    return (
        f'<svg class="sparkline" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">'
        f'<polyline fill="none" stroke="#2b6cb0" stroke-width="1.6" points="{points}"/></svg>'
    )


def _card(rows: pd.DataFrame, shares: Sequence[float]) -> str:
    first = rows.iloc[0]
    flag = "" if first["named_by_llm"] else '<span class="flag">(top property: the LLM gave no name)</span>'
    props = "; ".join(escape(p) for p in rows["property"].head(8))
    quotes = "".join(f"<blockquote>{escape(text)}</blockquote>" for text in list(first["examples"])[:3])
    trend = (
        f'<div class="trend">{sparkline(shares)} strong in {shares[-1]:.0%} of the newest batch</div>'
        if len(shares)
        else ""
    )
    return (
        f'<article class="card" data-factor="{int(first["factor"])}"><h3>{escape(first["name"])} '
        f'<span class="id">#{int(first["factor"])} &middot; {len(rows)} properties</span> {flag}</h3>'
        f'<p class="description">{escape(first["description"] or "")}</p><p class="props">{props}</p>'
        f"{quotes}{trend}</article>"
    )


def render(discovery: str, goal: str, report: pd.DataFrame, prevalence: pd.DataFrame) -> str:
    """The page: `report` is the factor report table, `prevalence` the factor_prevalence table."""
    shares = {
        factor: rows.sort_values("position")["share_strong"].tolist()
        for factor, rows in prevalence.groupby("factor")
    }
    sections = []
    # Themes by size, factors inside by size: the largest first.
    sizes = report.groupby("factor").size()
    themes = report.drop_duplicates("factor").assign(size=lambda f: f["factor"].map(sizes))
    for theme, members in sorted(themes.groupby("theme"), key=lambda g: -g[1]["size"].sum()):
        cards = "".join(
            _card(report[report["factor"] == f].sort_values("rank"), shares.get(f, []))
            for f in members.sort_values("size", ascending=False, kind="stable")["factor"]
        )
        title = members["theme_name"].iloc[0] or "Other factors"
        sections.append(
            f'<section class="theme" data-theme="{int(theme)}"><h2>{escape(title)}</h2>'
            f'<div class="cards">{cards}</div></section>'
        )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(discovery)}: latent factors'
        f"</title><style>{STYLE}</style></head><body><h1>{escape(discovery)}: latent factors</h1>"
        f'<p class="goal">Goal: {escape(goal)}</p>'
        f"<p>{report['factor'].nunique()} factors in {len(sections)} themes, from "
        f"{report['property'].nunique()} properties.</p>{''.join(sections)}</body></html>"
    )
