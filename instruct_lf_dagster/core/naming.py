"""Readable factors: the discovery's LLM names each factor (a direction: its high end and its low end) from its
top properties and the documents that score highest on it; an answer that says little is asked again once, with
the reason; a failed or unusable answer falls back to the factor's top property, flagged."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from instruct_lf_dagster.core.proposals import Client, Goal, normalise_property
from instruct_lf_dagster.core.screening import content_words, restates

NAME_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "description": {"type": "string"}},
    "required": ["name", "description"],
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "factor", "schema": NAME_SCHEMA}}
MAX_DESCRIPTION = 300
NAME_WORDS = (1, 6)  # a name's length in words, fewest and most
EVIDENCE_CHARS = 200  # of each top-scoring document shown to the LLM: enough to see the factor, cheap to read
RESTATED = 2 / 3  # share of the goal's content words a description may not repeat
# A description about the factor rather than its documents ("this factor captures", "a latent factor").
_META = re.compile(
    r"\b(?:this|the|a|latent)\s+(?:factor|theme)s?\b|\bcaptur(?:e|es|ed|ing)\b|\blatent\b", re.I
)
_ECHO = re.compile(r"\bmost typical\b", re.I)  # the prompt's own words, copied instead of a sentence
_SIDES = re.compile(r"\s+(?:vs\.?|versus)\s+", re.I)  # "Humor vs. Seriousness": a name with two ends
KEEP_NAME = (
    0.5  # a refit's factor keeps its name while its members overlap its earlier ones this much (Jaccard)
)


@dataclass(frozen=True)
class FactorName:
    """A factor's name (1 to 6 words) and one sentence on what it captures; `fallback`: the LLM gave none."""

    factor: int
    name: str
    description: str
    fallback: bool = False


def naming_messages(
    goal: Goal,
    properties: Sequence[str],
    documents: Sequence[str],
    themes: bool = False,
    low: Sequence[str] = (),
    refused: str | None = None,
) -> list[dict]:
    """The request naming one factor: the goal, its top properties (highest mutual information first; with
    `low`, those of its high end, and `low` those of its opposite end) and the documents that score highest on
    it; with `themes`, one theme: the names of its factors. `refused`: why an earlier answer was refused, asked
    again with the reason."""
    if themes:
        unit = "theme"
        what = "A theme is a group of factors that tend to occur together; its name differs from theirs."
        parts = "Factors"
    else:
        unit = "factor"
        what = (
            "A factor is a direction: documents with the properties of its high end score high, those with the "
            'properties of its low end score low; where it has two ends, a name "X vs Y" is welcome.'
        )
        parts = "High end" if low else "Properties"
    system = (
        f"You name the latent {unit}s found in a collection of {goal.document_kind} texts. The goal: "
        f"{goal.text.strip()} {what} Answer in JSON with two keys: "
        f'"name", {NAME_WORDS[0]} to {NAME_WORDS[1]} words, and "description", one short sentence on what sets '
        "its documents apart, without repeating the goal."
    )
    user = f"{parts}, most typical first: {'; '.join(properties)}"
    if low:
        user += f"\nLow end, most typical first: {'; '.join(low)}"
    if documents:
        shown = "\n".join(f"- {goal.clip(d)[:EVIDENCE_CHARS]}" for d in documents)
        user += f"\n\n{goal.document_kind.capitalize()}s that score highest:\n{shown}"
    if refused:
        user += f"\n\nAn earlier answer was refused: {refused}. Answer again."
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def parse_name(text: str | None) -> tuple[str, str] | None:
    """(name, description) from an answer, or None when it holds no usable name."""
    if not text:
        return None
    match = re.search(r"\{.*\}", text, re.DOTALL)
    try:
        answer = json.loads(match.group(0)) if match else None
    except json.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("name"), str):
        return None
    # Small models label their answer as the prompt does ("Theme: Emotional depth"): the label is not the name.
    name = normalise_property(re.sub(r"^\s*(theme|factor|name)\s*\d*\s*:\s*", "", answer["name"], flags=re.I))
    if name is None or not NAME_WORDS[0] <= len(name.split()) <= NAME_WORDS[1]:
        return None
    description = answer.get("description")
    # One sentence was asked for: small models go on, so the first is kept.
    description = " ".join(description.split()) if isinstance(description, str) else ""
    description = re.split(r"(?<=[.!?])\s", description, maxsplit=1)[0][:MAX_DESCRIPTION]
    return name, description


def refusal(name: str, description: str, goal: Goal, taken: Sequence[str] = ()) -> tuple[str, str] | None:
    """Why a parsed answer says little, as (what is at fault: "name" or "description", the reason), or None.

    The name is refused when it only restates the goal or the document kind (`core.screening.restates`) or is
    one of `taken` (a theme's factors' names), or when its two ends are one ("Aesthetics vs. Aesthetics"). The
    description is refused when it speaks of the factor rather than the documents ("this factor", "latent",
    "captures"), copies the prompt's list ("The most typical first: ..."), restates the goal (holds `RESTATED` of
    the goal's content words) or names the document kind in full (a kind of two words or more: every document is
    one).
    """
    if restates(name, goal):
        return "name", f'the name "{name}" only restates the goal'
    if name.casefold() in {t.casefold() for t in taken}:
        return "name", f'the name "{name}" is already a factor\'s name'
    sides = [side.strip(" .").casefold() for side in _SIDES.split(name)]
    if len(sides) == 2 and sides[0] == sides[1]:
        return "name", f'the name "{name}" gives both ends the same word'
    if _META.search(description):
        return "description", "the description speaks of the factor instead of the documents"
    if _ECHO.search(description):
        return "description", "the description copies the list instead of saying what the documents share"
    words, goal_words, kind = (
        content_words(description),
        content_words(goal.text),
        content_words(goal.document_kind),
    )
    if goal_words and len(words & goal_words) >= RESTATED * len(goal_words):
        return "description", "the description restates the goal"
    if len(kind) >= 2 and kind <= words:
        return "description", f"the description restates that these are {goal.document_kind}s"
    return None


def name_factors(
    client: Client,
    goal: Goal,
    members: dict[int, Sequence[str]],
    documents: dict[int, Sequence[str]],
    top_properties: int = 10,
    previous: Mapping[int, tuple[Sequence[str], FactorName]] | None = None,
    themes: bool = False,
    progress: Callable[[int, int], None] | None = None,
    low: Mapping[int, Sequence[str]] | None = None,
) -> tuple[list[FactorName], object]:
    """Name every factor of `members` (factor id -> its properties, most informative first; with `low`, those of
    its high end, and `low[factor]` those of its low end), shown with `documents[factor]`; one LLM call each
    (cached calls are free). Returns the names, by factor id, and the LLM usage.

    An answer `refusal` finds saying little is asked once again with the reason; if the second answer fails
    too, a refused description is dropped and a refused name falls back. A fallback is the top property (a
    theme: "Theme: " and its top factor's name), flagged. No two names are the same: going through `members` in
    its order (strongest first), a name already given gets the factor's top property appended in parentheses.

    `previous`: factor id -> (members, name) of the earlier fit; a factor that kept its id (`core.identity`)
    keeps its name without a call while its members overlap the earlier ones by `KEEP_NAME` or more.
    `themes`: name themes instead, each from the names of its factors (`members`), which its name must differ
    from. `progress(done, total)` is called as answers arrive.
    """
    low = low or {}
    kept = {}
    for k, props in members.items():
        old, name = (previous or {}).get(k, ((), None))
        if name is not None and name.name and _jaccard([*props, *low.get(k, ())], old) >= KEEP_NAME:
            kept[k] = FactorName(k, name.name, name.description, name.fallback)
    factors = sorted(set(members) - set(kept))

    def ask(ks: list[int], why: Mapping[int, str]) -> tuple[dict[int, tuple[str, str] | None], object]:
        requests = [
            naming_messages(
                goal,
                members[k][:top_properties],
                documents.get(k, ()),
                themes,
                low.get(k, ())[:top_properties],
                why.get(k),
            )
            for k in ks
        ]
        completions, usage = client.complete(requests, response_format=RESPONSE_FORMAT, progress=progress)
        return {
            k: parse_name(c.text) if c.error is None else None for k, c in zip(ks, completions, strict=True)
        }, usage

    def judged(k: int, answer: tuple[str, str]) -> tuple[str, str] | None:
        return refusal(*answer, goal, members[k] if themes else ())

    answers, usage = ask(factors, {})
    faults = {k: fault for k, a in answers.items() if a is not None and (fault := judged(k, a)) is not None}
    if faults:
        retried, again = ask(sorted(faults), {k: reason for k, (_, reason) in faults.items()})
        usage = again if usage is None else usage if again is None else usage + again
        for k, answer in retried.items():
            fault = judged(k, answer) if answer is not None else ("name", "")
            if fault is None:
                answers[k] = answer
            elif fault[0] == "description" or faults[k][0] == "description":
                # The name itself was never at fault: keep the better-judged answer's name, without its sentence.
                first = answers[k] if faults[k][0] == "description" else answer
                answers[k] = (first[0], "")
            else:
                answers[k] = None
    names = dict(kept)
    for k in factors:
        if answers[k] is None:
            fallback = f"Theme: {members[k][0]}" if themes else members[k][0]
            names[k] = FactorName(k, fallback, "", fallback=True)
        else:
            names[k] = FactorName(k, *answers[k])
    return sorted(_distinct(names, members), key=lambda n: n.factor), usage


def _distinct(names: dict[int, FactorName], members: Mapping[int, Sequence[str]]) -> list[FactorName]:
    """`names` with no name given twice: in `members`' order, a repeated name gets the factor's top property
    appended ("Humor (Gag humor)"), or its id when that is taken too."""
    seen: set[str] = set()
    out = []
    for k in members:
        name = names[k]
        text = name.name
        if text.casefold() in seen:
            text = f"{name.name} ({members[k][0]})"
            if text.casefold() in seen:
                text = f"{name.name} #{k}"
        seen.add(text.casefold())
        out.append(replace(name, name=text))
    return out


def _jaccard(a: Sequence[str], b: Sequence[str]) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 0.0
