"""Factor names: the request, junk-robust parsing, and the fallback to the top property when the LLM fails."""

from __future__ import annotations

import json

import pytest

from instruct_lf_dagster.core.llm import Completion
from instruct_lf_dagster.core.naming import FactorName, name_factors, naming_messages, parse_name
from instruct_lf_dagster.core.proposals import Goal

GOAL = Goal(text="Why do customers churn?", document_kind="support ticket")


class ScriptedClient:
    """Answers each request with the next unused scripted text (None: a failed call); records the requests."""

    def __init__(self, answers):
        self.answers, self.requests = list(answers), []

    def complete(self, requests, *, response_format=None, progress=None):
        self.requests += requests
        answers, self.answers = self.answers[: len(requests)], self.answers[len(requests) :]
        completions = [
            Completion(text=a) if a is not None else Completion(error="RateLimitError: slow down")
            for a in answers
        ]
        return completions, None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"name": "Billing problems", "description": "Charges  that\\nwent wrong."}',
            ("Billing problems", "Charges that went wrong."),
        ),
        ('{"name": "Theme: Emotional depth", "description": "Moving."}', ("Emotional depth", "Moving.")),
        ('{"name": "Factor 3: Refunds", "description": "Money back."}', ("Refunds", "Money back.")),
        (
            'Sure! ```json\n{"name": "slow support replies", "description": "Waiting."}\n```',
            ("Slow support replies", "Waiting."),
        ),
        (
            '{"name": "Long winded", "description": "The first sentence. Then e.g. more and more."}',
            ("Long winded", "The first sentence."),
        ),
        ('{"name": "Humor", "description": "One word is a name."}', ("Humor", "One word is a name.")),
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
    assert "Why do customers churn?" in messages[0]["content"] and "1 to 6 words" in messages[0]["content"]
    assert "Double charges; Refund delays" in messages[1]["content"]
    assert "- I was charged twice." in messages[1]["content"]
    assert "- " + "x" * 200 + "\n" in naming_messages(GOAL, ["A b"], ["x" * 900, "y"])[1]["content"]  # cheap


def test_a_factor_with_two_ends_is_shown_both_and_asked_for_a_name_of_the_direction():
    (system, user) = naming_messages(GOAL, ["Witty humor", "Gag humor"], [], low=["Lack of humor"])
    assert "direction" in system["content"] and '"X vs Y"' in system["content"]
    assert (
        "High end, most typical first: Witty humor; Gag humor\nLow end, most typical first: Lack of humor"
        in (user["content"])
    )
    client = ScriptedClient(
        [json.dumps({"name": "Witty vs humourless", "description": "Jokes land or not."})]
    )
    names, _ = name_factors(client, GOAL, {4: ["Witty humor", "Gag humor"]}, {}, low={4: ["Lack of humor"]})
    assert names == [FactorName(4, "Witty vs humourless", "Jokes land or not.")]
    assert "Low end, most typical first: Lack of humor" in client.requests[0][1]["content"]


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


def answer(name, description="Tickets about money."):
    return json.dumps({"name": name, "description": description})


@pytest.mark.parametrize(
    ("description", "reason"),
    [
        ("Customers churn because of why they churn.", "restates the goal"),
        ("This factor captures billing trouble.", "speaks of the factor"),
        ("A latent factor found in support tickets.", "speaks of the factor"),
        ("The most typical first: Double charges; Refund delays", "copies the list"),
    ],
)
def test_a_description_that_says_little_is_asked_again_with_the_reason_and_the_retry_is_used(
    description, reason
):
    client = ScriptedClient([answer("Billing trouble", description), answer("Billing", "Money taken twice.")])
    names, _ = name_factors(client, GOAL, {3: ["Double charges", "Refund delays"]}, {})
    assert names == [FactorName(3, "Billing", "Money taken twice.")]  # a one-word name is kept
    first, again = client.requests
    assert again[0] == first[0] and again[1]["content"].startswith(first[1]["content"])
    assert "An earlier answer was refused: " in again[1]["content"] and reason in again[1]["content"]


def test_a_retry_that_says_little_again_keeps_the_name_without_its_sentence():
    client = ScriptedClient([answer("Billing trouble", "This factor captures it.")] * 2)
    names, _ = name_factors(client, GOAL, {3: ["Double charges"]}, {})
    assert names == [FactorName(3, "Billing trouble", "")] and len(client.requests) == 2


def test_a_name_whose_two_ends_are_one_word_is_asked_again():
    client = ScriptedClient([answer("Billing vs. billing"), answer("Charged vs refunded")])
    names, _ = name_factors(client, GOAL, {3: ["Double charges"]}, {}, low={3: ["Quick refunds"]})
    assert names == [FactorName(3, "Charged vs refunded", "Tickets about money.")]
    assert "gives both ends the same word" in client.requests[1][1]["content"]


def test_a_name_that_restates_the_goal_twice_falls_back_to_the_top_property():
    client = ScriptedClient([answer("Customer churn"), answer("Churning customers")])
    names, _ = name_factors(client, GOAL, {3: ["Double charges"]}, {})
    assert names == [FactorName(3, "Double charges", "", fallback=True)]


def test_retries_are_cached_like_any_request(tmp_path, keyword_llm):
    from instruct_lf_dagster.core.llm import LLMClient, LLMConfig
    from instruct_lf_dagster.core.llm.cache import ResponseCache

    def run():
        client = LLMClient(LLMConfig(model="keywords/fake"), cache=ResponseCache(tmp_path / "cache.db"))
        return name_factors(client, GOAL, {1: ["Support tickets"]}, {})[0]

    # The fake answers "Documents where support tickets stands out.": it restates the document kind, twice.
    first = run()
    assert first == [FactorName(1, "All about Support tickets", "")] and keyword_llm.calls == 2
    assert run() == first and keyword_llm.calls == 2  # the second run asks nothing


def test_no_two_factors_share_a_name_and_a_theme_differs_from_its_factors():
    # Asked in id order (2, 5, 7); ranked 7, 2, 5.
    client = ScriptedClient([answer("Billing trouble"), answer("Slow support"), answer("Billing trouble")])
    members = {
        7: ["Double charges"],
        2: ["Refund delays", "Wrong invoice"],
        5: ["No answer"],
    }  # strongest first
    names, _ = name_factors(client, GOAL, members, {})
    assert [(n.factor, n.name) for n in names] == [
        (2, "Billing trouble (Refund delays)"),  # the later by rank gets its top property
        (5, "Slow support"),
        (7, "Billing trouble"),
    ]
    themes = ScriptedClient([answer("Billing trouble"), answer("Money matters")])
    named, _ = name_factors(themes, GOAL, {0: ["Billing trouble", "Slow support"]}, {}, themes=True)
    assert named == [FactorName(0, "Money matters", "Tickets about money.")]
    assert "already a factor's name" in themes.requests[1][1]["content"]
