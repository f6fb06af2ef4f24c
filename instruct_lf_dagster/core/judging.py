"""What a reader judges of topics, asked of an LLM judge: word intrusion (Chang et al. 2009, "Reading Tea Leaves":
a reader spots a member planted from another topic only when the topic is coherent) and goal relevance (does the
topic help answer the goal). The judge reads any method's `Topics` alike and never learns which method made them.
Used by the factor report (`assets.judged_quality`) and the evaluations (`evaluation.quality_protocol`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from instruct_lf_dagster.core.proposals import Client, Goal
from instruct_lf_dagster.core.topics import Cost, Topics

# The prompts are part of each request, hence of its cache key: editing them asks the judge again.
INTRUSION_SYSTEM = (
    "You judge groups of short descriptions found in {kind} texts. The goal: {goal} "
    "All options but one belong together; one was taken from another group. "
    'Answer in JSON only: {{"intruder": N}}, N the number of the option that does not belong.'
)
RELEVANCE_SYSTEM = (
    "You judge topics found in a collection of {kind} texts. The goal: {goal} "
    "A topic is shown by its name and its most typical members. "
    'Answer in JSON only: {{"relevant": true}} if the topic helps answer the goal, else {{"relevant": false}}.'
)


def _schema(name: str, key: str, kind: str) -> dict:
    """A response format asking for one JSON key: short answers, and grammar-constrained where supported."""
    schema = {"type": "object", "properties": {key: {"type": kind}}, "required": [key]}
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


INTRUSION_FORMAT = _schema("intrusion", "intruder", "integer")
RELEVANCE_FORMAT = _schema("relevance", "relevant", "boolean")
INTRUDER_POOL = 3  # an intruder is one of another topic's 3 most typical members, as in Chang et al.
ANSWERS = {"yes": True, "true": True, "no": False, "false": False, "not": False}


@dataclass(frozen=True)
class Judged:
    """A judged test over a method's topics: `score` (nan when nothing was asked), questions `asked`, answers
    that were `unusable` (or failed calls; counted as wrong), the judge's `cost`, and one `details` row per
    asked topic (its index, name, the judge's raw answer and whether it `passed`)."""

    score: float
    asked: int
    unusable: int
    cost: Cost = field(default_factory=Cost)
    details: tuple[dict, ...] = ()


def intrusion_messages(goal: Goal, options: Sequence[str]) -> list[dict]:
    """The request asking which of the numbered `options` does not belong."""
    shown = "\n".join(f"{i}. {option}" for i, option in enumerate(options, 1))
    system = INTRUSION_SYSTEM.format(kind=goal.document_kind, goal=goal.text.strip())
    return [{"role": "system", "content": system}, {"role": "user", "content": f"Options:\n{shown}"}]


def relevance_messages(goal: Goal, name: str, members: Sequence[str]) -> list[dict]:
    """The request asking whether one topic (`name`, its top `members`) helps answer the goal."""
    system = RELEVANCE_SYSTEM.format(kind=goal.document_kind, goal=goal.text.strip())
    user = f"Topic: {name}\nMembers, most typical first: {'; '.join(members)}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def parse_intruder(text: str | None, options: Sequence[str]) -> int | None:
    """The 0-based option an answer names ({"intruder": N}, a bare number, or the option's text), or None."""
    if not text:
        return None
    answer = _json(text)
    value = answer.get("intruder") if isinstance(answer, dict) else answer if answer is not None else text
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value) - 1 if value == int(value) and 1 <= value <= len(options) else None
    if not isinstance(value, str):
        return None
    said = value.strip().strip("\"'.").casefold()
    folded = [o.casefold() for o in options]
    if said in folded:
        return folded.index(said)
    leading = re.match(r"(?:option\s*)?#?(\d+)\b", said)
    # Small models wrap their answer in a sentence: one option's text, or one number in range, is still clear.
    named = [i for i, o in enumerate(folded) if re.search(rf"\b{re.escape(o)}\b", said)]
    numbers = {int(d) for d in re.findall(r"\b\d+\b", said) if 1 <= int(d) <= len(options)}
    if leading and 1 <= int(leading.group(1)) <= len(options):
        return int(leading.group(1)) - 1
    if len(named) == 1:
        return named[0]
    return numbers.pop() - 1 if len(numbers) == 1 else None


def parse_relevant(text: str | None) -> bool | None:
    """Whether an answer says relevant ({"relevant": true}, yes/no, true/false), or None when it says neither."""
    if not text:
        return None
    answer = _json(text)
    value = answer.get("relevant") if isinstance(answer, dict) else answer if answer is not None else text
    if isinstance(value, bool):
        return value
    word = re.match(r"\W*(\w+)", value.casefold()) if isinstance(value, str) else None
    return ANSWERS.get(word.group(1)) if word else None


def intrusion(
    topics: Topics, client: Client, goal: Goal, *, n: int = 20, top: int = 5, seed: int = 0
) -> Judged:
    """Word intrusion on the `n` largest topics with `top` members or more: their `top` first members and an
    intruder, shuffled and numbered; score = intruders found / asked. One `complete` call for all topics."""
    largest = topics.largest(n)
    asked = []  # (topic, options, index of the intruder)
    for t in largest:
        members = topics.members[t]
        if len(members) < top:
            continue
        own = {m.casefold() for m in members}
        candidates = (
            [m for m in topics.members[u][:INTRUDER_POOL] if m.casefold() not in own] for u in largest
        )
        pools = [pool for u, pool in zip(largest, candidates, strict=True) if pool and u != t]
        if not pools:
            continue
        # Seeded by (seed, topic): a topic's question does not change when another topic is added or dropped.
        rng = np.random.default_rng([seed, t])
        pool = pools[rng.integers(len(pools))]
        options = [*members[:top], pool[rng.integers(len(pool))]]
        # Shuffled, so a judge's preference for a position cannot favour any method.
        order = rng.permutation(len(options))
        asked.append((t, [options[i] for i in order], int(np.flatnonzero(order == top)[0])))
    requests = [intrusion_messages(goal, options) for _, options, _ in asked]
    completions = _complete(client, requests, INTRUSION_FORMAT)
    details = []
    for (t, options, truth), completion in zip(asked, completions, strict=True):
        chosen = parse_intruder(completion.text, options) if completion.error is None else None
        number = None if chosen is None else chosen + 1
        extra = {"options": tuple(options), "intruder": truth + 1, "chosen": number}
        details.append(_detail(topics, t, completion, chosen is not None, chosen == truth, **extra))
    return _judged(details, completions)


def relevance(topics: Topics, client: Client, goal: Goal, *, n: int = 20, top: int = 5) -> Judged:
    """Task relevance of the `n` largest topics, each shown by its name and `top` members; score = share judged
    relevant. One `complete` call for all topics."""
    largest = topics.largest(n)
    requests = [relevance_messages(goal, topics.names[t], topics.members[t][:top]) for t in largest]
    completions = _complete(client, requests, RELEVANCE_FORMAT)
    details = []
    for t, completion in zip(largest, completions, strict=True):
        said = parse_relevant(completion.text) if completion.error is None else None
        details.append(_detail(topics, t, completion, said is not None, said is True))
    return _judged(details, completions)


def _complete(client: Client, requests: list[list[dict]], response_format: dict) -> list:
    if not requests:  # nothing to ask: an embedded judge is not even loaded
        return []
    completions, _ = client.complete(requests, response_format=response_format)
    return list(completions)


def _detail(topics: Topics, t: int, completion, usable: bool, passed: bool, **extra) -> dict:
    answer = completion.text if completion.error is None else completion.error
    return {
        "topic": t,
        "name": topics.names[t],
        **extra,
        "answer": answer,
        "passed": passed,
        "unusable": not usable,
    }


def _judged(details: list[dict], completions: list) -> Judged:
    asked = len(details)
    passed = sum(d["passed"] for d in details)
    return Judged(
        score=passed / asked if asked else float("nan"),
        asked=asked,
        unusable=sum(d["unusable"] for d in details),
        cost=Cost.of(completions),
        details=tuple(details),
    )


def _json(text: str) -> object:
    """The JSON value of an answer, or of the first {...} in it; None when there is none."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        match = re.search(r"\{.*\}", text, re.DOTALL)
        try:
            return json.loads(match.group(0)) if match else None
        except json.JSONDecodeError:
            return None
