"""Judged topic quality: intrusion and relevance with fake judges that read the prompt, their parsing and
seeding, embedding coherence and distinctiveness, and one run with the real embedded judge (integration)."""

from __future__ import annotations

import json
import math
import re
import string

import numpy as np
import pytest

from instruct_lf_dagster.core.judging import Judged, intrusion, parse_intruder, parse_relevant, relevance
from instruct_lf_dagster.core.llm.types import Completion, Usage
from instruct_lf_dagster.core.proposals import Goal
from instruct_lf_dagster.core.topics import Cost, Topics
from instruct_lf_dagster.evaluation.quality_protocol import distinctiveness, embedding_coherence, judge_all

GOAL = Goal("Recommend movies a user will enjoy from what they said.", document_kind="dialogue")


class FakeJudge:
    """Answers every request with `answer(system, user)`; keeps the requests it was sent and counts calls."""

    def __init__(self, answer):
        self.answer = answer
        self.requests: list[list[dict]] = []
        self.calls = 0

    def complete(self, requests, *, response_format=None, progress=None):
        self.calls += 1
        self.requests += list(requests)
        texts = [self.answer(r[0]["content"], r[-1]["content"]) for r in requests]
        return [Completion(text=t, prompt_tokens=10, completion_tokens=3) for t in texts], Usage()


def options(user: str) -> list[str]:
    return re.findall(r"^\d+\. (.*)$", user, re.MULTILINE)


def oracle(system: str, user: str) -> str:
    """Finds the intruder by the planted rule: a topic's members share their first letter."""
    shown = options(user)
    firsts = [o[0] for o in shown]
    odd = next(i for i, f in enumerate(firsts) if firsts.count(f) == 1)
    return json.dumps({"intruder": odd + 1})


def planted(k: int = 12, size: int = 6) -> Topics:
    """`k` topics, topic t's members all starting with the t-th letter; larger topics first."""
    letters = string.ascii_lowercase[:k]
    members = [[f"{c}{c}word{j}" for j in range(size)] for c in letters]
    assignment = np.repeat(np.arange(k), np.arange(k, 0, -1) + 1)
    return Topics([f"{c} things" for c in letters], members, assignment)


def test_an_oracle_judge_finds_every_intruder():
    judge = FakeJudge(oracle)
    judged = intrusion(planted(), judge, GOAL)
    assert isinstance(judged, Judged)
    assert (judged.score, judged.asked, judged.unusable) == (1.0, 12, 0)
    assert judge.calls == 1  # every topic in one batch
    assert judged.cost == Cost(calls=12, prompt_tokens=120, completion_tokens=36)
    for row in judged.details:
        shown = row["options"]
        assert len(shown) == 6 and row["passed"] and row["chosen"] == row["intruder"]
        intruder = shown[row["intruder"] - 1]
        assert intruder[0] != row["name"][0]  # from another topic
        # one of that topic's 3 most typical members
        assert int(intruder[-1]) < 3


def test_position_bias_does_not_help_and_positions_vary():
    judged = intrusion(planted(20), FakeJudge(lambda s, u: '{"intruder": 1}'), GOAL, n=20)
    assert judged.asked == 20 and judged.unusable == 0
    assert judged.score < 0.4  # chance is 1/6
    positions = [row["intruder"] for row in judged.details]
    assert len(set(positions)) >= 3


def test_junk_answers_are_unusable_and_wrong():
    judged = intrusion(planted(), FakeJudge(lambda s, u: "I cannot tell."), GOAL)
    assert (judged.score, judged.asked, judged.unusable) == (0.0, 12, 12)

    class Failing(FakeJudge):
        def complete(self, requests, *, response_format=None, progress=None):
            return [Completion(error="Timeout: late") for _ in requests], Usage()

    failed = relevance(planted(), Failing(None), GOAL)
    assert (failed.score, failed.asked, failed.unusable) == (0.0, 12, 12)
    assert failed.details[0]["answer"] == "Timeout: late"


def test_topics_too_small_or_without_an_intruder_are_not_asked():
    topics = Topics(["a", "b", "c"], [["x1", "x2", "x3", "x4", "x5"], ["y1", "y2"], ["X1", "x2", "X3"]])
    judge = FakeJudge(oracle)
    judged = intrusion(topics, judge, GOAL)
    # Topics 1 and 2 have fewer than 5 members. Topic 0's intruder: topic 2's top members are all its own
    # (case-insensitive), so it comes from topic 1.
    row = judged.details[0]
    assert judged.asked == 1 and row["options"][row["intruder"] - 1] in {"y1", "y2"}
    empty = intrusion(Topics(["a"], [["x1", "x2", "x3", "x4", "x5"]]), judge, GOAL)
    assert empty.asked == 0 and math.isnan(empty.score) and judge.calls == 1  # nothing asked, no call


def test_parse_intruder_tolerates_numbers_and_option_text():
    shown = ["cat", "dog", "tax", "horse"]
    assert parse_intruder('{"intruder": 3}', shown) == 2
    assert parse_intruder('Sure: {"intruder": "3"}', shown) == 2
    assert parse_intruder("3", shown) == 2
    assert parse_intruder("3. tax", shown) == 2
    assert parse_intruder("Tax", shown) == 2
    assert parse_intruder('{"intruder": "tax"}', shown) == 2
    assert parse_intruder("The odd one out is tax.", shown) == 2
    for junk in [None, "", "{}", '{"intruder": 9}', '{"intruder": true}', "none of them", "cat or dog"]:
        assert parse_intruder(junk, shown) is None


def test_parse_relevant_reads_json_and_yes_no():
    for text, said in [
        ('{"relevant": true}', True),
        ('{"relevant": false}', False),
        ('{"relevant": "yes"}', True),
        ("Yes.", True),
        ("no, it does not", False),
        ("true", True),
        ("Not relevant", False),
        ("maybe", None),
        ("", None),
        ('{"other": 1}', None),
    ]:
        assert parse_relevant(text) is said, text


def test_relevance_is_the_share_judged_relevant():
    topics = Topics(
        ["movie genres", "weather", "movie moods", "cooking"],
        [["comedy", "horror"], ["rain"], ["dark", "funny"], ["pasta"]],
    )
    judge = FakeJudge(lambda s, u: "yes" if "movie" in u.splitlines()[0] else '{"relevant": false}')
    judged = relevance(topics, judge, GOAL, n=3)
    assert (judged.score, judged.asked, judged.unusable, judge.calls) == (2 / 3, 3, 0, 1)
    assert [row["passed"] for row in judged.details] == [True, False, True]
    assert "Members, most typical first: comedy; horror" in judge.requests[0][1]["content"]


def test_seeded_questions():
    def prompts(seed):
        judge = FakeJudge(oracle)
        intrusion(planted(), judge, GOAL, seed=seed)
        return judge.requests

    assert prompts(0) == prompts(0)
    assert prompts(0) != prompts(1)
    differ = sum(a != b for a, b in zip(prompts(0), prompts(1), strict=True))
    assert differ >= 6  # most topics get another intruder or order


def test_prompts_hold_the_goal_never_the_method():
    judge = FakeJudge(lambda s, u: '{"intruder": 2}' if "intruder" in s else '{"relevant": true}')
    scores = judge_all({"SecretMethodX": planted(), "OtherMethodY": planted(5)}, judge, GOAL, n=20)
    assert judge.calls == 4  # intrusion and relevance, per method
    assert set(scores) == {"SecretMethodX", "OtherMethodY"}
    row = scores["SecretMethodX"]
    assert {"intrusion", "relevance", "coherence", "distinctiveness", "topics_judged", "judge_calls"} <= set(
        row
    )
    assert row["topics_judged"] == 12 and row["judge_calls"] == 24 and row["relevance"] == 1.0
    assert scores["OtherMethodY"]["judge_calls"] == 10
    for request in judge.requests:
        text = json.dumps(request)
        assert GOAL.text in text and "dialogue" in text
        assert "Secret" not in text and "Other" not in text and "Method" not in text


def test_distinctiveness_on_a_hand_made_example():
    topics = Topics(
        ["a", "b", "c"],
        [["cat", "Dog", "cow"], ["dog", "fish", "cat"], ["owl", "OWL", "bee"]],
    )
    # Slots: {cat, dog, cow}, {dog, fish, cat}, {owl, bee} -> 8; only cow, fish, owl, bee are in one topic.
    assert distinctiveness(topics) == 4 / 8
    assert distinctiveness(topics, top=2) == 3 / 5  # {cat, dog}, {dog, fish}, {owl}: dog is shared
    assert distinctiveness(Topics(["a"], [["x", "y"]])) == 1.0
    assert math.isnan(distinctiveness(Topics([], [])))


def test_embedding_coherence_prefers_a_coherent_topic():
    coherent = Topics(["animals"], [["cat", "dog", "horse", "cow", "sheep"]])
    mixed = Topics(["mix"], [["tax return", "violin", "oxygen", "parliament", "sheep"]])
    assert embedding_coherence(coherent) > embedding_coherence(mixed) + 0.1
    both = Topics(["animals", "mix", "one"], [coherent.members[0], mixed.members[0], ["alone"]])
    expected = (embedding_coherence(coherent) + embedding_coherence(mixed)) / 2
    assert embedding_coherence(both) == pytest.approx(expected, abs=1e-5)  # a 1-member topic is skipped


@pytest.mark.integration
def test_the_embedded_judge_scores_two_methods(data_home):
    from tests.test_local_models import SMALL, _not_ready

    reason = _not_ready(SMALL)
    if reason is not None:
        pytest.skip(reason)
    from instruct_lf_dagster.resources.llm import LLMResource

    client = LLMResource(model=f"llamacpp/{SMALL}", models_home=str(data_home), llm_threads=2, max_tokens=16)
    client = client.get_client()
    genres = Topics(
        ["movie genres", "movie moods", "weather"],
        [
            ["horror", "comedy", "thriller", "drama", "romance"],
            ["dark", "funny", "tense", "sad", "uplifting"],
            ["rain", "snow", "wind", "fog", "sunshine"],
        ],
        [0, 0, 0, 1, 1, 2],
    )
    mixed = Topics(["mix a", "mix b"], [["horror", "rain", "sad", "tax", "violin"], ["snow", "comedy"]])
    scores = judge_all({"a": genres, "b": mixed}, client, GOAL, n=5)
    assert scores["a"]["topics_judged"] == 3 and scores["b"]["topics_judged"] == 2
    assert scores["a"]["judge_calls"] == 3 + 3 and scores["b"]["judge_calls"] == 1 + 2
    for row in scores.values():
        for metric in ["intrusion", "relevance"]:
            assert 0 <= row[metric] <= 1
    judged = relevance(genres, client, GOAL)  # answered from the cache now
    assert judged.asked == 3 and judged.cost.calls == 3 and len(judged.details) == 3
