"""Judged quality beside each factor: the factor report read as topics, and one verdict row per shown factor."""

from __future__ import annotations

import json

import pandas as pd

from instruct_lf_dagster.assets.judged_quality import COLUMNS, TOP, factor_topics, judgements
from instruct_lf_dagster.core.judging import intrusion, relevance
from instruct_lf_dagster.core.proposals import Goal
from tests.test_quality import FakeJudge

GOAL = Goal("What makes critics recommend a film?", document_kind="movie review")
HORROR = ["Ghosts", "Jump scares", "Haunted house", "Dread", "Gore", "Creepy music"]
ROMANCE = ["Kiss", "Love story", "Wedding", "Chemistry", "Heartbreak"]


def report() -> pd.DataFrame:
    """A factor report: two factors of six and five properties (listed out of MI order), one of two."""
    rows = [(7, p, 1.0 - 0.1 * i) for i, p in enumerate(HORROR)] + [
        (3, p, 0.9 - 0.1 * i) for i, p in enumerate(ROMANCE)
    ]
    rows += [(5, "Runtime", 0.4), (5, "Length", 0.3)]
    frame = pd.DataFrame(rows, columns=["factor", "property", "mi"]).sample(frac=1.0, random_state=0)
    names = {7: "Horror", 3: "Romance", 5: "Running time"}
    return frame.assign(name=frame["factor"].map(names)).sort_values(
        "factor", key=lambda f: f.map({7: 0, 3: 1, 5: 2})
    )


def spotter(system: str, user: str) -> str:
    """A judge that knows the genres: the option from the other genre is the intruder; horror is relevant."""
    if "intruder" in system:
        options = [line.split(". ", 1)[1] for line in user.splitlines()[1:]]
        majority = HORROR if sum(o in HORROR for o in options) > len(options) / 2 else ROMANCE
        return json.dumps({"intruder": next(i for i, o in enumerate(options, 1) if o not in majority)})
    return json.dumps({"relevant": "Horror" in user})


def test_each_shown_factor_gets_one_verdict_row_in_report_order():
    ids, topics = factor_topics(report())
    assert ids == [7, 3, 5]
    assert topics.members[0] == tuple(HORROR)  # by mutual information, whatever the table's order
    judge = FakeJudge(spotter)
    intruded = intrusion(topics, judge, GOAL, n=len(ids), top=TOP, seed=0)
    relevant = relevance(topics, judge, GOAL, n=len(ids), top=TOP)
    table = judgements(ids, topics, intruded, relevant)
    assert list(table.columns) == list(COLUMNS) and table["factor"].tolist() == [7, 3, 5]
    assert table["intrusion"].tolist()[:2] == [True, True]  # the planted property was found
    assert pd.isna(table["intrusion"].iloc[2])  # two properties: too few to hide one among
    horror, romance = table.iloc[0], table.iloc[1]
    assert horror["intruder"] not in HORROR and romance["intruder"] not in ROMANCE
    assert set(horror["intrusion_options"]) - {horror["intruder"]} <= set(HORROR[:TOP])
    assert table["relevant"].tolist() == [True, False, False]
    assert intruded.asked == 2 and relevant.asked == 3


def test_an_unusable_answer_is_no_verdict_not_a_wrong_one():
    ids, topics = factor_topics(report())
    judge = FakeJudge(lambda system, user: "I cannot tell.")
    table = judgements(
        ids,
        topics,
        intrusion(topics, judge, GOAL, n=len(ids), top=TOP),
        relevance(topics, judge, GOAL, n=len(ids), top=TOP),
    )
    assert table["intrusion"].isna().all() and table["relevant"].isna().all()
    assert (table["relevance_answer"] == "I cannot tell.").all()


def test_a_report_without_factors_gives_an_empty_table_and_asks_nothing():
    ids, topics = factor_topics(report().iloc[0:0])
    judge = FakeJudge(spotter)
    table = judgements(ids, topics, intrusion(topics, judge, GOAL, n=0), relevance(topics, judge, GOAL, n=0))
    assert ids == [] and len(table) == 0 and list(table.columns) == list(COLUMNS) and judge.calls == 0
