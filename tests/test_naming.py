"""Factor names: the request, junk-robust parsing, and the fallback to the top property when the LLM fails."""

from __future__ import annotations

import json

import pytest

from instruct_lf_dagster.core.llm import Completion
from instruct_lf_dagster.core.naming import name_factors, naming_messages, parse_name
from instruct_lf_dagster.core.proposals import Goal

GOAL = Goal(text="Why do customers churn?", document_kind="support ticket")


class ScriptedClient:
    """Answers each request with the next scripted text (None: a failed call); records the requests."""

    def __init__(self, answers):
        self.answers, self.requests = list(answers), []

    def complete(self, requests, *, response_format=None, progress=None):
        self.requests += requests
        completions = [
            Completion(text=a) if a is not None else Completion(error="RateLimitError: slow down")
            for a in self.answers[: len(requests)]
        ]
        return completions, None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"name": "Billing problems", "description": "Charges  that\\nwent wrong."}',
            ("Billing problems", "Charges that went wrong."),
        ),
        (
            'Sure! ```json\n{"name": "slow support replies", "description": "Waiting."}\n```',
            ("Slow support replies", "Waiting."),
        ),
        (
            '{"name": "Long winded", "description": "The first sentence. Then e.g. more and more."}',
            ("Long winded", "The first sentence."),
        ),
        ('{"name": "Billing", "description": "one word is not a name"}', None),
        ('{"name": "A name that goes on far too long to read", "description": ""}', None),
        ('{"name": 42}', None),
        ("not json at all", None),
        ("", None),
        (None, None),
    ],
)
def test_names_are_parsed_from_junk_or_refused(text, expected):
    assert parse_name(text) == expected


def test_the_request_shows_the_goal_the_properties_and_the_top_documents():
    messages = naming_messages(
        GOAL, ["Double charges", "Refund delays"], ["I was charged twice.", "Still no refund."]
    )
    assert "Why do customers churn?" in messages[0]["content"] and "2 to 6 words" in messages[0]["content"]
    assert "Double charges; Refund delays" in messages[1]["content"]
    assert "- I was charged twice." in messages[1]["content"]


def test_a_failed_or_unusable_answer_falls_back_to_the_top_property_flagged():
    answers = [json.dumps({"name": "Billing trouble", "description": "Money going wrong."}), None, "junk"]
    client = ScriptedClient(answers)
    members = {
        3: ["Double charges", "Refund delays"],
        0: ["Slow replies"],
        7: ["App crashes", "Login errors"],
    }
    names, _ = name_factors(client, GOAL, members, {3: ["I was charged twice."]})
    by_factor = {n.factor: n for n in names}
    assert [n.factor for n in names] == [0, 3, 7] and len(client.requests) == 3
    assert (by_factor[0].name, by_factor[0].fallback) == ("Billing trouble", False)
    assert (by_factor[3].name, by_factor[3].description, by_factor[3].fallback) == (
        "Double charges",
        "",
        True,
    )
    assert (by_factor[7].name, by_factor[7].fallback) == ("App crashes", True)


def test_a_factor_that_kept_its_id_keeps_its_name_until_its_members_change_much():
    from instruct_lf_dagster.core.naming import FactorName

    earlier = {
        5: (["Double charges", "Refund delays", "Wrong invoice"], FactorName(5, "Billing trouble", "Money.")),
        2: (["Slow replies", "No answer"], FactorName(2, "Slow support", "Waiting.")),
    }
    client = ScriptedClient(
        [
            json.dumps({"name": "Unanswered support tickets", "description": "Silence."}),
            json.dumps({"name": "App stability issues", "description": "Crashes."}),
        ]
    )
    members = {
        5: ["Double charges", "Refund delays", "Wrong invoice", "Hidden fees"],  # 3 of 4 shared: kept
        2: ["No answer", "Ticket closed unread", "Bot loops"],  # the same id, members moved (1 of 4): renamed
        9: ["App crashes", "Login errors"],  # new
    }
    names, _ = name_factors(client, GOAL, members, {}, previous=earlier)
    assert [(n.factor, n.name) for n in names] == [
        (2, "Unanswered support tickets"),
        (5, "Billing trouble"),
        (9, "App stability issues"),
    ]
    assert len(client.requests) == 2  # the kept name cost no call
