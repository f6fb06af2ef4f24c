import json
from dataclasses import dataclass

import pytest

from instruct_lf_dagster.core.proposals import (
    Example,
    Goal,
    build_messages,
    normalise_property,
    parse_properties,
    propose,
)


@pytest.mark.parametrize(
    "output, expected",
    [
        (
            '{"properties": ["Comedy genre", "Features Will Ferrell"]}',
            ["Comedy genre", "Features Will Ferrell"],
        ),
        ('```json\n{"properties": ["Dark humor", "Slow pacing"]}\n```', ["Dark humor", "Slow pacing"]),
        ('Sure! ["Heist plot", "Ensemble cast"] hope this helps', ["Heist plot", "Ensemble cast"]),
        ("Here are the properties:\n1. Romantic genre\n2. Happy ending\n3. Set in Paris", None),
        ("- Romantic genre\n* Happy ending\n• Set in Paris", None),
        ("1. Romantic genre 2. Happy ending 3. Set in Paris", None),
        ("Romantic genre, Happy ending; Set in Paris", None),
    ],
)
def test_parse_formats(output, expected):
    expected = expected or ["Romantic genre", "Happy ending", "Set in Paris"]
    assert parse_properties(output) == expected


def test_parse_truncated_json_keeps_closed_strings():
    assert parse_properties('{"properties": ["Space opera", "Strong female lead", "Bitter') == [
        "Space opera",
        "Strong female lead",
    ]


@pytest.mark.parametrize("junk", ["", "   \n  ", None, "{}", "[]", "!!! ??? ...", "{{{{", "```\n```"])
def test_parse_junk_gives_empty_list(junk):
    assert parse_properties(junk) == []


def test_parse_prose_is_dropped():
    prose = (
        "The user seems to be looking for something that would make them feel good after a long week at work "
        "and they mentioned that they liked movies with their family."
    )
    assert parse_properties(prose) == []


def test_parse_repetition_and_duplicates_fold():
    assert parse_properties(" ".join(["comedy"] * 50)) == []
    assert parse_properties("\n".join(["1. Comedy"] * 50)) == ["Comedy"]
    assert parse_properties('{"properties": ["Comedy", "comedy", "COMEDY."]}') == ["Comedy"]


def test_parse_huge_output_is_bounded_and_fast():
    items = [f"Property number {i}" for i in range(2000)]
    huge = "\n".join(f"{i}. {p}" for i, p in enumerate(items, 1))
    assert len(huge) > 10_000
    assert parse_properties(huge) == items[:20]
    assert parse_properties(huge, max_items=500) == items[:500]


def test_parse_broken_bytes_decoded_safely():
    raw = b'{"properties": ["Caf\xe9 setting", "Film noir"]}'
    props = parse_properties(raw)
    assert props[1] == "Film noir"
    assert props[0].startswith("Caf") and props[0].endswith("setting")


def test_parse_non_string_json_items():
    assert parse_properties('{"properties": ["Drama", 1984, {"x": 1}]}')[0] == "Drama"


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("  comedy   genre. ", "Comedy genre"),
        ('"Dark humor"', "Dark humor"),
        ("Property: Slow burn", "Slow burn"),
        ("The user likes horror movies", "Horror movies"),
        ("preference for 1980s era", "1980s era"),
        ("3) Features Tom Hanks!", "Features Tom Hanks"),
        ("ｆｕｌｌ width", "Full width"),
    ],
)
def test_normalise(raw, clean):
    assert normalise_property(raw) == clean


@pytest.mark.parametrize("raw", ["", "...", "12345", "x" * 200, " ".join(["word"] * 20)])
def test_normalise_rejects(raw):
    assert normalise_property(raw) is None


def test_messages_share_a_prefix_and_clip_by_policy():
    goal = Goal(
        "What decides the next movie?",
        document_kind="dialogue",
        examples=(Example("User: silly comedies please", ("Comedy genre", "Silly humor")),),
        max_document_chars=20,
        truncation="tail",
    )
    a = build_messages(goal, "A" * 50 + "most recent turn")
    b = build_messages(goal, "another dialogue")
    assert a[:-1] == b[:-1]
    assert json.loads(a[2]["content"]) == {"properties": ["Comedy genre", "Silly humor"]}
    assert a[-1]["content"] == ("A" * 50 + "most recent turn")[-20:]
    head = Goal("g", max_document_chars=5, truncation="head")
    assert build_messages(head, "abcdefgh")[-1]["content"] == "abcde"


@dataclass
class _Completion:
    text: str | None
    error: str | None = None


class _FakeClient:
    """Answers from a table; a document mapped to an exception string fails."""

    def __init__(self, answers):
        self.answers = answers
        self.seen = []

    def complete(self, requests, *, response_format=None, progress=None):
        self.seen.append(response_format)
        out = []
        for messages in requests:
            answer = self.answers[messages[-1]["content"]]
            out.append(_Completion(None, answer[1:]) if answer.startswith("!") else _Completion(answer))
        return out, {"calls": len(requests)}


def test_propose_aligns_results_and_failures():
    client = _FakeClient({"d1": '{"properties": ["Comedy"]}', "d2": "!timeout", "d3": ""})
    result = propose(client, Goal("g"), ["d1", "d2", "d3"])
    assert result.properties == [["Comedy"], None, []]
    assert result.errors == [None, "timeout", None]
    assert result.failed == 1
    assert client.seen[0]["json_schema"]["schema"]["required"] == ["properties"]


def test_the_budget_picks_the_same_documents_every_time_and_grows_without_dropping():
    from instruct_lf_dagster.core.proposals import ProposalBudget

    ids = [f"doc{i}" for i in range(500)]
    half = ProposalBudget(fraction=0.5).pick("churn", ids)
    assert half == ProposalBudget(fraction=0.5).pick("churn", ids)  # deterministic
    assert 200 < sum(half) < 300
    assert half != ProposalBudget(fraction=0.5).pick("features", ids)  # each discovery draws its own
    # The pick of a document depends on its id only: not on the batch it sits in or its neighbours.
    assert ProposalBudget(fraction=0.5).pick("churn", ids[::-1]) == half[::-1]
    smaller, larger = (
        set(i for i, p in zip(ids, b.pick("churn", ids), strict=True) if p)
        for b in (
            ProposalBudget(max_documents=40, fraction=0.5),
            ProposalBudget(max_documents=80, fraction=0.8),
        )
    )
    assert len(smaller) == 40 and len(larger) == 80 and smaller <= larger
    assert (
        sum(ProposalBudget().pick("churn", ids)) == 500
        and sum(ProposalBudget(max_documents=0).pick("churn", ids)) == 0
    )
    with pytest.raises(ValueError, match="fraction"):
        ProposalBudget(fraction=1.5)
