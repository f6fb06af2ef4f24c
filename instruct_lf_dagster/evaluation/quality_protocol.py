"""Judged topic quality: the paper's human study (task relevance, informativeness) made repeatable.

Every method's topics are judged alike (`core.judging`: word intrusion and goal relevance). LLM judges track
human judgements of topics better than automatic coherence scores do (Stammbach et al. 2023); embedding
coherence and distinctiveness are kept beside them as cheap, judge-free references.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from instruct_lf_dagster.core.judging import intrusion, relevance
from instruct_lf_dagster.core.proposals import Client, Goal
from instruct_lf_dagster.core.topics import Topics


def embedding_coherence(topics: Topics, *, n: int = 20, top: int = 5) -> float:
    """Mean over the `n` largest topics of the mean pairwise cosine of their `top` members under the untrained
    MiniLM encoder (topics with fewer than 2 members are skipped; nan when none is left)."""
    from instruct_lf_dagster.evaluation.representations import raw_embeddings

    shown = [topics.members[t][:top] for t in topics.largest(n) if len(topics.members[t]) >= 2]
    if not shown:
        return float("nan")
    vectors = raw_embeddings([m for members in shown for m in members])  # one encoder pass for all topics
    blocks = np.split(vectors, np.cumsum([len(members) for members in shown])[:-1])
    return float(np.mean([(b @ b.T)[np.triu_indices(len(b), k=1)].mean() for b in blocks]))


def distinctiveness(topics: Topics, *, n: int = 20, top: int = 5) -> float:
    """Share of the (topic, member) slots among the `n` largest topics' `top` members (case-insensitive, each
    once per topic) whose member belongs to no other of those topics; nan when there is no member."""
    shown = [{m.casefold() for m in topics.members[t][:top]} for t in topics.largest(n)]
    counts = Counter(m for members in shown for m in members)
    slots = [counts[m] for members in shown for m in members]
    return sum(c == 1 for c in slots) / len(slots) if slots else float("nan")


def judge_all(
    by_method: dict[str, Topics], client: Client, goal: Goal, *, n: int = 20, top: int = 5, seed: int = 0
) -> dict[str, dict[str, float | int]]:
    """Every judged and judge-free score per method (two `complete` calls per method; the judge never sees the
    method's name): intrusion, relevance, coherence, distinctiveness, topics_judged (relevance questions),
    judge_calls (requests, cached ones included) and judge_unusable."""
    scores: dict[str, dict[str, float | int]] = {}
    for method, topics in by_method.items():
        intruded = intrusion(topics, client, goal, n=n, top=top, seed=seed)
        relevant = relevance(topics, client, goal, n=n, top=top)
        scores[method] = {
            "intrusion": intruded.score,
            "relevance": relevant.score,
            "coherence": embedding_coherence(topics, n=n, top=top),
            "distinctiveness": distinctiveness(topics, n=n, top=top),
            "topics_judged": relevant.asked,
            "judge_calls": intruded.cost.calls + relevant.cost.calls,
            "judge_unusable": intruded.unusable + relevant.unusable,
        }
    return scores
