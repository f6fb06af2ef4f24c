"""Readable factors: the discovery's LLM names each factor from its top properties and the documents that
score highest on it; a failed or unusable answer falls back to the factor's top property, flagged."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from instruct_lf_dagster.core.proposals import Client, Goal, normalise_property

NAME_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "description": {"type": "string"}},
    "required": ["name", "description"],
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "factor", "schema": NAME_SCHEMA}}
MAX_DESCRIPTION = 300
KEEP_NAME = (
    0.5  # a refit's factor keeps its name while its members overlap its earlier ones this much (Jaccard)
)


@dataclass(frozen=True)
class FactorName:
    """A factor's name (2 to 6 words) and one sentence on what it captures; `fallback`: the LLM gave none."""

    factor: int
    name: str
    description: str
    fallback: bool = False


def naming_messages(
    goal: Goal, properties: Sequence[str], documents: Sequence[str], themes: bool = False
) -> list[dict]:
    """The request naming one factor: the goal, its top properties (highest mutual information first) and the
    documents that score highest on it; with `themes`, one theme: the names of its factors."""
    unit, parts = ("theme", "factors") if themes else ("factor", "properties")
    system = (
        f"You name the latent {unit}s found in a collection of {goal.document_kind} texts. The goal: "
        f"{goal.text.strip()} A {unit} is a group of {parts} that tend to occur together. Answer in JSON with "
        f'two keys: "name", a name of 2 to 6 words for the {unit}, and "description", one sentence on what the '
        f"{unit} captures and why it matters for the goal."
    )
    user = f"{parts.capitalize()}, most typical first: {'; '.join(properties)}"
    if documents:
        shown = "\n".join(f"- {goal.clip(d)[:400]}" for d in documents)
        user += f"\n\n{goal.document_kind.capitalize()}s that score highest:\n{shown}"
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
    name = normalise_property(answer["name"])
    if name is None or not 2 <= len(name.split()) <= 6:
        return None
    description = answer.get("description")
    # One sentence was asked for: small models go on, so the first is kept.
    description = " ".join(description.split()) if isinstance(description, str) else ""
    description = re.split(r"(?<=[.!?])\s", description, maxsplit=1)[0][:MAX_DESCRIPTION]
    return name, description


def name_factors(
    client: Client,
    goal: Goal,
    members: dict[int, Sequence[str]],
    documents: dict[int, Sequence[str]],
    top_properties: int = 10,
    previous: Mapping[int, tuple[Sequence[str], FactorName]] | None = None,
    themes: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[FactorName], object]:
    """Name every factor of `members` (factor id -> its properties, most informative first), shown with
    `documents[factor]`; one LLM call each (cached calls are free). Returns the names and the LLM usage.

    `previous`: factor id -> (members, name) of the earlier fit; a factor that kept its id (`core.identity`)
    keeps its name without a call while its members overlap the earlier ones by `KEEP_NAME` or more.
    `themes`: name themes instead, each from the names of its factors (`members`). `progress(done, total)` is
    called as answers arrive.
    """
    kept = {}
    for k, props in members.items():
        old, name = (previous or {}).get(k, ((), None))
        if name is not None and name.name and _jaccard(props, old) >= KEEP_NAME:
            kept[k] = FactorName(k, name.name, name.description, name.fallback)
    factors = sorted(set(members) - set(kept))
    requests = [
        naming_messages(goal, members[k][:top_properties], documents.get(k, ()), themes) for k in factors
    ]
    completions, usage = client.complete(requests, response_format=RESPONSE_FORMAT, progress=progress)
    names = list(kept.values())
    for k, completion in zip(factors, completions, strict=True):
        parsed = parse_name(completion.text) if completion.error is None else None
        if parsed is None:
            names.append(FactorName(k, members[k][0], "", fallback=True))
        else:
            names.append(FactorName(k, *parsed))
    return sorted(names, key=lambda n: n.factor), usage


def _jaccard(a: Sequence[str], b: Sequence[str]) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 0.0
