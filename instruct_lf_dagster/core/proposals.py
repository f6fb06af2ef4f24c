"""Step 1a: property proposal. Build the prompt from a goal, ask an LLM, parse whatever comes back."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from instruct_lf_dagster.core.config import MethodConfig, Settings, Truncation, setting

MAX_WORDS = 8
MAX_CHARS = 80
MAX_ITEMS = 20  # per document: more is a runaway generation, not a description

PROPERTIES_SCHEMA = {
    "type": "object",
    "properties": {
        "properties": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "maxItems": 8,
        }
    },
    "required": ["properties"],
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "properties", "schema": PROPERTIES_SCHEMA}}


@dataclass(frozen=True)
class Example:
    """A worked example for the prompt: a document and the properties a good answer lists for it."""

    document: str
    properties: tuple[str, ...]


@dataclass(frozen=True)
class Goal:
    """What the user wants factors for, and how to show documents to the LLM.

    `truncation` says which end of a long document to keep: dialogues keep their most recent turns ("tail").
    """

    text: str
    document_kind: str = "document"
    examples: tuple[Example, ...] = ()
    max_document_chars: int = 1500
    truncation: Truncation = MethodConfig().truncation

    def system_prompt(self) -> str:
        return (
            f"You analyze a {self.document_kind}. The goal: {self.text.strip()} "
            f"Find the properties of this {self.document_kind} that matter for the goal. "
            'Answer in JSON with one key, "properties": a list of 3 to 8 short property keywords '
            "(2-6 words each), such as a genre, a mood, a theme, a topic or an attribute. "
            "Properties are general descriptions, never names copied from the text."
        )

    def clip(self, document: str) -> str:
        """The part of `document` the LLM reads (the head or the tail, by the truncation policy)."""
        if len(document) <= self.max_document_chars:
            return document
        if self.truncation == "tail":
            return document[-self.max_document_chars :]
        return document[: self.max_document_chars]


class ProposalBudget(Settings):
    """Which documents of a batch the LLM is asked about: the others get compatibility rows and factor scores
    all the same.

    A document is picked when a hash of (`key`, its id) falls under `fraction`, and among those only the
    `max_documents` with the smallest hashes are kept. The pick depends on nothing else, so re-runs, backfills
    and the response cache agree, and a larger budget adds documents without dropping any.
    """

    max_documents: int | None = setting(
        None, "per batch; empty: no limit (in a discovery: the environment's)", minimum=0
    )
    fraction: float = setting(1.0, "share of documents proposed for", exclusiveMinimum=0, maximum=1)

    def describe(self) -> str:
        parts = [f"a fraction {self.fraction:g}"] * (self.fraction < 1)
        parts += [f"at most {self.max_documents} per batch"] * (self.max_documents is not None)
        return ", ".join(parts) or "every document"

    def pick(self, key: str, document_ids: Sequence[str]) -> list[bool]:
        """For each document id, whether it is proposed for (`key`: e.g. the discovery's name)."""
        draws = [_uniform(f"{key}\0{i}") for i in document_ids]
        picked = [u < self.fraction for u in draws]
        if self.max_documents is not None and sum(picked) > self.max_documents:
            order = sorted((u, j) for j, u in enumerate(draws) if picked[j])
            keep = {j for _, j in order[: self.max_documents]}
            picked = [j in keep for j in range(len(draws))]
        return picked


def _uniform(text: str) -> float:
    """A number in [0, 1) fixed by `text` (the first 8 bytes of its SHA-256)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def build_messages(goal: Goal, document: str) -> list[dict]:
    """Chat messages asking for properties of one document.

    The system prompt and worked examples come first and are the same for every document, so a local model
    keeps them in its KV cache and reads only the document on each call.
    """
    messages = [{"role": "system", "content": goal.system_prompt()}]
    for example in goal.examples:
        messages.append({"role": "user", "content": goal.clip(example.document)})
        messages.append(
            {"role": "assistant", "content": json.dumps({"properties": list(example.properties)})}
        )
    messages.append({"role": "user", "content": goal.clip(document)})
    return messages


# Leading labels and filler that carry no meaning of their own ("Property: ...", "The user likes ...").
_BOILERPLATE = re.compile(
    r"^(?:(?:property|properties|keyword|keywords|factor|feature|attribute|answer)\s*\d*\s*[:\-–]\s*"
    r"|(?:the\s+)?(?:user|customer|person)\s+(?:is\s+)?"
    r"(?:likes?|wants?|prefers?|enjoys?|interested\s+in|looking\s+for)\s+"
    r"|(?:a\s+)?(?:preference|interest)\s+(?:for|in)\s+)",
    re.IGNORECASE,
)
_MARKER = re.compile(r"^\s*(?:[-*•·]+|\(?\d{1,3}[.)\]:]|\(?[a-zA-Z][.)]\s)\s*")
_EDGE_PUNCT = " \t\"'`“”‘’«»()[]{}<>.,;:!?*_#-–—|/\\"


def normalise_property(text: str) -> str | None:
    """A clean property string, or None when nothing usable is left.

    Folds Unicode and whitespace, drops list markers, quotes, trailing punctuation and leading boilerplate,
    and rejects strings that are too long to be a property or have no letters.
    """
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C" or ch in " \t")
    text = " ".join(text.split())
    for _ in range(3):  # markers, labels and quotes can nest: '1. "Property: x"'
        before = text
        text = _MARKER.sub("", text).strip(_EDGE_PUNCT)
        text = _BOILERPLATE.sub("", text).strip(_EDGE_PUNCT)
        if text == before:
            break
    if not text or len(text) > MAX_CHARS or len(text.split()) > MAX_WORDS:
        return None
    if not any(ch.isalpha() for ch in text):
        return None
    return text[0].upper() + text[1:]


_FENCE = re.compile(r"```(?:json)?\s*(.*?)(?:```|$)", re.DOTALL | re.IGNORECASE)
_QUOTED = re.compile(r'"((?:[^"\\\n]|\\.)*)"')
_INLINE_ITEM = re.compile(r"\s\d{1,3}[.)]\s+")


def _json_items(value: object) -> list[str] | None:
    if isinstance(value, dict):
        for key in ("properties", "property", "keywords", "factors", "items"):
            if key in value:
                return _json_items(value[key])
        lists = [v for v in value.values() if isinstance(v, list)]
        return _json_items(lists[0]) if lists else None
    if isinstance(value, list):
        return [item if isinstance(item, str) else json.dumps(item) for item in value]
    if isinstance(value, str):
        return [value]
    return None


def _from_json(text: str) -> list[str] | None:
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for candidate in candidates:
        start = min((i for i in (candidate.find("{"), candidate.find("[")) if i >= 0), default=-1)
        if start < 0:
            continue
        try:
            value, _ = json.JSONDecoder().raw_decode(candidate[start:])
        except json.JSONDecodeError:
            # Truncated JSON (max_tokens hit): keep the strings that were closed, after the key if any.
            body = candidate[start:]
            key = re.search(r'"properties"\s*:\s*\[', body)
            strings = _QUOTED.findall(body[key.end() :] if key else body)
            if strings:
                return [json.loads(f'"{s}"') if "\\" in s else s for s in strings]
            continue
        items = _json_items(value)
        if items is not None:
            return items
    return None


def parse_properties(output: str | bytes | None, max_items: int = MAX_ITEMS) -> list[str]:
    """Properties from an LLM answer: JSON, fenced JSON, numbered or bulleted lists, or prose. Never raises.

    Items are normalised and exact duplicates (ignoring case) dropped, keeping the first spelling; at most
    `max_items` are kept.
    """
    if output is None:
        return []
    if isinstance(output, bytes):
        output = output.decode("utf-8", errors="replace")
    output = output.replace("\r\n", "\n").replace("\ufffd", " ")
    items = _from_json(output)
    if items is None:
        lines = [line.strip() for line in output.split("\n") if line.strip()]
        marked = [line for line in lines if _MARKER.match(line)]
        if marked:
            # A list: whatever precedes or surrounds the items ("Here are the properties:") is dropped.
            items = [part for line in marked for part in _INLINE_ITEM.split(line)]
        elif len(lines) == 1:
            # One line: a comma list ("Dark humor, Strong female lead") or prose, which fails the length limit.
            items = re.split(r"[;,]|\s\d{1,3}[.)]\s", lines[0])
        else:
            items = [line for line in lines if not line.endswith(":")]
    seen: set[str] = set()
    properties = []
    for item in items:
        prop = normalise_property(item)
        if prop is not None and prop.casefold() not in seen:
            seen.add(prop.casefold())
            properties.append(prop)
            if len(properties) == max_items:
                break
    return properties


class Client(Protocol):
    """What proposal needs of an LLM client (see `core.llm.LLMClient`)."""

    def complete(self, requests, *, response_format=None, progress=None): ...


@dataclass
class Proposals:
    """The outcome of proposing for a batch of documents, aligned with the input order."""

    properties: list[list[str] | None]  # None where the call failed
    errors: list[str | None]
    raw: list[str | None]
    usage: object = None
    # each request's answer, cached ones included: what the proposals cost, whether paid now or earlier
    completions: list = field(default_factory=list, repr=False)
    failed: int = field(init=False)

    def __post_init__(self) -> None:
        self.failed = sum(e is not None for e in self.errors)


def propose(
    client: Client,
    goal: Goal,
    documents: Sequence[str],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> Proposals:
    """Ask the LLM for goal-related properties of every document (one call each; cached calls are free)."""
    requests = [build_messages(goal, document) for document in documents]
    completions, usage = client.complete(requests, response_format=RESPONSE_FORMAT, progress=progress)
    properties = [None if c.error is not None else parse_properties(c.text) for c in completions]
    return Proposals(
        properties=properties,
        errors=[c.error for c in completions],
        raw=[c.text for c in completions],
        usage=usage,
        completions=list(completions),
    )
