"""Screening: what is kept out of the vocabulary, and texts compared word by word with the goal.

Simple, documented rules rather than an LLM, so that a screening is cheap, deterministic and explainable: each
excluded property is listed with the reason (`junk_reason`). Naming uses the same word comparison to refuse a
name or description that only restates the goal.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from instruct_lf_dagster.core.proposals import Goal

# Words with no topic of their own, left out when a text is compared word by word with the goal.
_FUNCTION_WORDS = frozenset(
    re.findall(
        r"\w+",
        "a an and are as at be by do does for from how in into is it its make makes of on or that the their them "
        "they this to was were what when which who why with",
    )
)
# What no property of a document is, whatever the goal: the document talking to the model. Simple rules, each
# with the reason shown where the property is listed as excluded.
_JUNK = (
    (
        "an instruction to the model",
        re.compile(
            r"\b(?:ignore|disregard|forget|override)\b.*\b(?:instructions?|prompts?|rules|above|previous)\b"
            r"|^(?:output|print|generate|write|return|list|repeat|respond|reply|say)\b.*"
            r"\b(?:propert(?:y|ies)|words|items|json|tokens|times|everything)\b"
            r"|\b(?:you are now|as an ai|jailbreak)\b",
            re.IGNORECASE,
        ),
    ),
    (
        "a mention of the prompt",
        re.compile(
            r"\b(?:system|developer|hidden)\s+(?:prompt|message|instructions?)\b|\bprompt injection\b", re.I
        ),
    ),
    (
        "code or SQL",
        re.compile(
            r"\b(?:drop|create|alter|truncate)\s+(?:table|database|schema|index|view)\b"
            r"|\bselect\s+(?:\*|distinct\b|[\w.]+(?:\s*,\s*[\w.]+)*\s+from\b)"
            r"|\b(?:insert\s+into|delete\s+from|union\s+select|rm\s+-rf|sudo)\b|\bupdate\s+\w+\s+set\b"
            # braces, semicolons and backticks, not "<" or "=": "Runtime < 90 minutes" is a property
            r"|--|[{};`]|\(\s*\)|</?\s*script\b",
            re.IGNORECASE,
        ),
    ),
)


def content_words(text: str) -> set[str]:
    """The words of `text` that carry meaning, lower-cased and crudely stemmed ("qualities" -> "quality",
    "critics" -> "critic", "churning" -> "churn", "recommended" -> "recommend"), for comparing texts word by
    word."""
    words = set()
    for word in re.findall(r"[a-z0-9]+", text.lower().replace("'s", "")):
        if word in _FUNCTION_WORDS:
            continue
        if len(word) > 5 and word.endswith("ing"):
            word = word[:-3]
        elif len(word) > 4 and word.endswith("ed"):
            word = word[:-2]
        elif len(word) > 4 and word.endswith("ies"):
            word = word[:-3] + "y"
        elif len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        words.add(word)
    return words


def restates(text: str, goal: Goal) -> bool:
    """Whether `text` (a property, a name) says nothing beyond the goal: every content word of it is a word of
    the goal or of the document kind ("Movie quality" for "What qualities of a movie ...?")."""
    words = content_words(text)
    return bool(words) and words <= content_words(f"{goal.text} {goal.document_kind}")


def junk_reason(prop: str, goal: Goal | None = None, exclude: Sequence[str] = ()) -> str | None:
    """Why a (normalised) property is not a property of documents, or None: it matches one of the discovery's
    `exclude` patterns (regular expressions, searched ignoring case), is an instruction, mentions the prompt,
    is code or SQL, or only restates the `goal` or the document kind."""
    for pattern in exclude:
        if re.search(pattern, prop, re.IGNORECASE):
            return f"matches the exclusion {pattern!r}"
    for reason, rule in _JUNK:
        if rule.search(prop):
            return reason
    if goal is not None and restates(prop, goal):
        return "restates the goal or the document kind"
    return None
