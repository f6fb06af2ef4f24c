"""The HTML report: built from a factor report and prevalence table, and read back in a real headless browser."""

from __future__ import annotations

import re
import shutil
import subprocess

import pandas as pd
import pytest

from instruct_lf_dagster.assets.html import render, sparkline


def tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    report = pd.DataFrame(
        [
            (
                4,
                1,
                "Ghosts",
                "Haunted <stories>",
                "Fear & dread.",
                True,
                0,
                "Thrills",
                ["A ghost film."],
                "high",
            ),
            (
                4,
                2,
                "Jump scares",
                "Haunted <stories>",
                "Fear & dread.",
                True,
                0,
                "Thrills",
                ["A ghost film."],
                "low",
            ),
            (
                9,
                1,
                "Car chase",
                "Action set pieces",
                "Speed.",
                True,
                0,
                "Thrills",
                ["Chase after chase."],
                "high",
            ),
            (2, 1, "Kiss", "Kiss", "", False, 1, "Romance", [], "high"),
        ],
        columns=[
            "factor",
            "rank",
            "property",
            "name",
            "description",
            "named_by_llm",
            "theme",
            "theme_name",
            "examples",
            "pole",
        ],
    )
    prevalence = pd.DataFrame(
        [(p, f"b{p}", f, 0.1 * (p + 1) * (f % 3 + 1)) for p in range(3) for f in (4, 9, 2)],
        columns=["position", "batch", "factor", "share_strong"],
    )
    return report, prevalence


def test_the_page_has_every_factor_inside_its_theme_and_escapes_text():
    report, prevalence = tables()
    page = render("films", "What makes a film <good>?", report, prevalence)
    assert page.count('<article class="card"') == 3 and page.count('<section class="theme"') == 2
    assert "Haunted &lt;stories&gt;" in page and "<stories>" not in page and "&lt;good&gt;" in page
    assert page.index("Thrills") < page.index("Romance")  # the larger theme first
    assert "the LLM gave no name" in page  # the fallback name is flagged
    # A factor with two ends shows both; one with a single end shows its properties alone.
    card = page[page.index('data-factor="4"') : page.index('data-factor="9"')]
    assert re.search(r"high:</span>\s*Ghosts</p>", card) and re.search(r"low:</span>\s*Jump scares</p>", card)
    assert "low:" not in page[page.index('data-factor="9"') :]
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing fetched
    assert sparkline([]) == "" and sparkline([0.0, 0.0]).count("polyline") == 1


@pytest.mark.integration  # starts a real browser
def test_every_card_shows_in_a_real_headless_browser(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no headless browser: apt install chromium")
    report, prevalence = tables()
    page = tmp_path / "report.html"
    page.write_text(render("films", "What makes a film good?", report, prevalence), encoding="utf-8")
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    cards = re.findall(r'<article class="card" data-factor="(\d+)"', dom)
    assert sorted(map(int, cards)) == [2, 4, 9]
    assert dom.count("<svg") == 3 and "Haunted &lt;stories&gt;" in dom


def test_a_card_shows_what_the_judge_said_of_its_factor():
    report, prevalence = tables()
    judged = pd.DataFrame(
        [
            {"factor": 4, "intrusion": True, "intruder": "Car <chase>", "relevant": True},
            {"factor": 9, "intrusion": pd.NA, "intruder": None, "relevant": False},
        ]
    ).astype({"intrusion": "boolean", "relevant": "boolean"})
    page = render("films", "What makes a film good?", report, prevalence, judged)
    cards = {f: page[page.index(f'data-factor="{f}"') :].split("</article>")[0] for f in (4, 9, 2)}
    assert "judge: intruder found (&ldquo;Car &lt;chase&gt;&rdquo;)" in cards[4]
    assert "relevant to the goal: yes" in cards[4]
    assert "judge: intruder not asked" in cards[9] and "relevant to the goal: no" in cards[9]
    assert "judge:" not in cards[2]  # not judged (e.g. a report from before the judge): no line
    assert "judge:" not in render("films", "What makes a film good?", report, prevalence)
