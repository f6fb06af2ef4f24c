"""A TopicGPT-style peer (Pham et al. 2024): topics generated, refined and assigned by an LLM alone.

Generation: the LLM reads sampled documents one at a time with the running topic list and reuses a topic or
adds one ("label: description"). Refinement: topics whose label+description embeddings are near duplicates are
merged by the LLM. Assignment: the LLM puts each document under one listed topic and quotes it as evidence;
documents past the call budget, and unusable answers, go to the topic nearest their embedding. The prompts ask
for goal-relevant topics, as Instruct-LF's proposals do.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence

import numpy as np

from instruct_lf_dagster.core.proposals import Client, Goal, normalise_property
from instruct_lf_dagster.core.topics import Cost, Topics

TOPIC_SCHEMA = {
    "type": "object",
    "properties": {"topic": {"type": "string"}, "description": {"type": "string"}},
    "required": ["topic", "description"],
}
TOPIC_FORMAT = {"type": "json_schema", "json_schema": {"name": "topic", "schema": TOPIC_SCHEMA}}
# An assignment answers with a quote, not a description: a grammar-constrained model can only write the keys its
# schema names.
ASSIGN_SCHEMA = {
    "type": "object",
    "properties": {"topic": {"type": "string"}, "quote": {"type": "string"}},
    "required": ["topic", "quote"],
}
ASSIGN_FORMAT = {"type": "json_schema", "json_schema": {"name": "assignment", "schema": ASSIGN_SCHEMA}}
LABEL_MATCH = 0.7  # an unlisted label this cosine-close to a listed one is a paraphrase of it, not junk
QUOTE_WORDS = 12  # a member quote is cut to this many words
TOP_MEMBERS = 10  # quotes a topic is read by, as LDA's and BERTopic's words
MAX_DESCRIPTION = 300

log = logging.getLogger(__name__)

Embed = Callable[[Sequence[str]], np.ndarray]


def _key(label: str) -> str:
    return " ".join(label.casefold().split())


def _answer(text: str | None) -> dict | None:
    """The first JSON object in an answer (fenced or with prose around it), else the quoted "topic" of a
    truncated one; None when there is neither."""
    if not text:
        return None
    start = text.find("{")
    if start >= 0:
        try:
            value, _ = json.JSONDecoder().raw_decode(text[start:])
            if isinstance(value, dict):
                return value
        except json.JSONDecodeError:
            pass
    match = re.search(r'"topic"\s*:\s*"((?:[^"\\\n]|\\.)*)"', text)
    return {"topic": match.group(1)} if match else None


def parse_topic(text: str | None) -> tuple[str, str] | None:
    """(label, description) from a generation or merge answer, or None when it holds no usable label."""
    answer = _answer(text)
    if answer is None or not isinstance(answer.get("topic"), str):
        return None
    label, description = answer["topic"], answer.get("description")
    description = " ".join(description.split()) if isinstance(description, str) else ""
    if not description and ":" in label:  # "Label: description" in one string
        label, description = (part.strip() for part in label.split(":", 1))
    label = normalise_property(label)
    if label is None:
        return None
    return label, re.split(r"(?<=[.!?])\s", description, maxsplit=1)[0][:MAX_DESCRIPTION]


def _text(topic: tuple[str, str]) -> str:
    """A topic as the LLM and the encoder read it: "label: description" (the label alone without one)."""
    return f"{topic[0]}: {topic[1]}" if topic[1] else topic[0]


def _listing(topics: Sequence[tuple[str, str]]) -> str:
    return "\n".join(f"[{i + 1}] {_text(topic)}" for i, topic in enumerate(topics))


def _normal_text(text: str) -> str:
    return " ".join(text.casefold().split())


class TopicGPT:
    """TopicGPT as a peer: `sample` seeded documents generate topics (one call each, in turn), near-duplicates
    (cosine >= `merge_similarity` of "label: description" embeddings, MiniLM) are merged, and the first
    `assign` documents of a seeded order get an LLM assignment; topics with fewer than `min_documents` fit
    documents are dropped and the fit documents assigned once more.

    `merge_similarity` 0.85 is conservative: on MiniLM, rewordings of one topic ("Billing errors: ..." /
    "Errors in billing: ...") score about 0.94, looser paraphrases ("App crashes" / "App stability") 0.75-0.82
    and related but distinct topics ("Billing problems" / "Refund delays") about 0.5, so only rewordings merge.
    `embed`: the encoder (texts -> normalised rows), by default `representations.raw_embeddings` with the
    goal's truncation; tests pass a cheap one.
    """

    def __init__(
        self,
        client: Client,
        goal: Goal,
        *,
        sample: int = 20,
        assign: int = 100,
        seed: int = 0,
        merge_similarity: float = 0.85,
        min_documents: int = 1,
        embed: Embed | None = None,
    ):
        self.client, self.goal = client, goal
        self.sample, self.assign, self.seed = sample, assign, seed
        self.merge_similarity, self.min_documents = merge_similarity, min_documents
        self._encode = embed
        self._memo: dict[str, np.ndarray] = {}
        self.cost = Cost()

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        """Rows for `texts`, each text encoded once per peer (fit's documents are reused by reassignment)."""
        new = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if new:
            if self._encode is None:
                from instruct_lf_dagster.evaluation.representations import raw_embeddings

                truncation = self.goal.truncation
                self._encode = lambda texts: raw_embeddings(texts, truncation=truncation)
            self._memo.update(zip(new, np.asarray(self._encode(new), dtype=np.float64), strict=True))
        return np.stack([self._memo[t] for t in texts]) if texts else np.zeros((0, 1))

    def _ask(
        self, requests: list[list[dict]], stage: str = "", response_format: dict = TOPIC_FORMAT
    ) -> list[str | None]:
        if not requests:
            return []

        def progress(done: int, total: int) -> None:
            if total > 1 and (done % 10 == 0 or done == total):  # minutes of calls on a CPU: say how far
                log.info("topicgpt: %s %d/%d", stage, done, total)

        completions, _ = self.client.complete(requests, response_format=response_format, progress=progress)
        self.cost += Cost.of(completions)
        return [c.text if c.error is None else None for c in completions]

    def _order(self, n: int) -> np.ndarray:
        # One seeded order serves sampling and the assignment budget: the sampled documents are assigned first.
        return np.random.default_rng(self.seed).permutation(n)

    # Step 1: generation
    def _generation_messages(self, topics: list[tuple[str, str]], document: str) -> list[dict]:
        kind = self.goal.document_kind
        system = (
            f"You build the list of topics of a collection of {kind} texts. The goal: {self.goal.text.strip()} "
            f"Topics are general and about what matters for the goal. Read the {kind} and the current topics. "
            f"If a listed topic fits the {kind}, answer with its label, copied exactly. Otherwise add one new "
            'topic. Answer in JSON with two keys: "topic", a label of 1 to 5 words, and "description", one '
            "sentence on what the topic covers."
        )
        listed = _listing(topics) or "(none yet)"
        user = f"Current topics:\n{listed}\n\n{kind.capitalize()}:\n{self.goal.clip(document)}"
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def _generate(self, documents: Sequence[str]) -> list[tuple[str, str]]:
        topics: list[tuple[str, str]] = []
        for i, document in enumerate(
            documents
        ):  # in turn: each prompt shows the topics the earlier answers left
            parsed = parse_topic(self._ask([self._generation_messages(topics, document)])[0])
            if parsed is not None and _key(parsed[0]) not in {_key(label) for label, _ in topics}:
                topics.append(parsed)
            log.info(
                "topicgpt: generated from %d/%d documents: %d topics", i + 1, len(documents), len(topics)
            )
        return topics

    # Step 2: refinement
    def _merge(self, topics: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Near-duplicates grouped greedily in list order (each group: a topic and the later ungrouped ones
        at `merge_similarity` or more from it); each group of 2+ becomes one topic, written by the LLM."""
        if len(topics) < 2:
            return topics
        vectors = self._embed([_text(t) for t in topics])
        similar = vectors @ vectors.T >= self.merge_similarity
        groups, grouped = [], set()
        for i in range(len(topics)):
            if i not in grouped:
                groups.append([j for j in range(i, len(topics)) if j not in grouped and similar[i, j]] or [i])
                grouped.update(groups[-1])
        merging = [g for g in groups if len(g) > 1]
        system = (
            f"You merge near-duplicate topics of a collection of {self.goal.document_kind} texts. The goal: "
            f"{self.goal.text.strip()} Write one topic covering all the listed ones. Answer in JSON with two "
            'keys: "topic", a label of 1 to 5 words, and "description", one sentence on what it covers.'
        )
        requests = [
            [
                {"role": "system", "content": system},
                {"role": "user", "content": _listing([topics[j] for j in g])},
            ]
            for g in merging
        ]
        merged = dict(zip(map(tuple, merging), map(parse_topic, self._ask(requests, "merged")), strict=True))
        self.merged_ = len(topics) - len(groups)
        # An unusable merge answer keeps the group's first topic.
        return [merged.get(tuple(g)) or topics[g[0]] for g in groups]

    # Step 3: assignment
    def _assignment_messages(self, document: str) -> list[dict]:
        kind = self.goal.document_kind
        system = (
            f"You assign {kind} texts to topics. The goal: {self.goal.text.strip()} Topics:\n"
            f"{_listing(self.topics_)}\n"
            f'Answer in JSON with two keys: "topic", the label of the one listed topic that fits the {kind} '
            f'best, copied exactly, and "quote", a short passage copied word for word from the {kind} that '
            "shows it."
        )
        return [{"role": "system", "content": system}, {"role": "user", "content": self.goal.clip(document)}]

    def _match(self, answer: dict | None, labels: np.ndarray) -> int | None:
        """The listed topic an answer names: the same label after folding case and whitespace, else the label
        nearest by embedding when it is at least `LABEL_MATCH` close; None when it names none (junk)."""
        label = answer.get("topic") if answer else None
        label = normalise_property(label) if isinstance(label, str) else None
        if label is None:
            return None
        keys = [_key(name) for name, _ in self.topics_]
        if _key(label) in keys:
            return keys.index(_key(label))
        similarity = labels @ self._embed([label])[0]
        best = int(np.argmax(similarity))
        return best if similarity[best] >= LABEL_MATCH else None

    def _assign(self, texts: Sequence[str]) -> tuple[np.ndarray, list[str | None], np.ndarray]:
        """(topic per text, supporting quote per text or None, whether the LLM assigned it). The first `assign`
        texts of the seeded order are asked in one batch; the rest, and answers naming no listed topic, go to
        the topic whose "label: description" embedding is most cosine-similar to the text's."""
        n = len(texts)
        topic, quotes, by_llm = np.full(n, -1), [None] * n, np.zeros(n, dtype=bool)
        if not self.topics_:
            return topic, quotes, by_llm
        asked = self._order(n)[: self.assign].tolist()
        answers = (
            self._ask([self._assignment_messages(texts[i]) for i in asked], "assigned", ASSIGN_FORMAT)
            if asked
            else []
        )
        labels = self._embed([label for label, _ in self.topics_])
        for i, text in zip(asked, answers, strict=True):
            answer = _answer(text)
            match = self._match(answer, labels)
            if match is None:
                continue
            topic[i], by_llm[i] = match, True
            quote = answer.get("quote")
            quote = quote.strip(" \t\n\"'“”‘’") if isinstance(quote, str) else ""
            # A quote the document does not hold is the LLM's invention, not evidence.
            if _normal_text(quote) and _normal_text(quote) in _normal_text(texts[i]):
                quotes[i] = " ".join(quote.split())
        rest = [i for i in range(n) if not by_llm[i]]
        if rest:
            centres = self._embed([_text(t) for t in self.topics_])
            topic[rest] = np.argmax(self._embed([texts[i] for i in rest]) @ centres.T, axis=1)
        return topic, quotes, by_llm

    def fit(self, texts: Sequence[str]) -> TopicGPT:
        texts = list(texts)
        self.cost, self.merged_, self.dropped_ = Cost(), 0, 0
        self.sampled_ = min(self.sample, len(texts))
        sampled = [texts[i] for i in self._order(len(texts))[: self.sampled_]]
        self.topics_ = self._merge(self._generate(sampled))
        assignment, quotes, by_llm = self._assign(texts)
        sizes = np.bincount(assignment[assignment >= 0], minlength=len(self.topics_))
        kept = [t for t in range(len(self.topics_)) if sizes[t] >= self.min_documents]
        if self.topics_ and not kept:  # keep the largest rather than no topic at all
            kept = [int(np.argmax(sizes))]
        if len(kept) < len(self.topics_):
            self.dropped_ = len(self.topics_) - len(kept)
            self.topics_ = [self.topics_[t] for t in kept]
            assignment, quotes, by_llm = self._assign(texts)
        self.assignment_, self.quotes_, self.by_llm_ = assignment, quotes, by_llm
        return self

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """One-hot rows (n, topics) of each text's topic; with no topics, a zero column (as BERTopic's)."""
        topic, _, _ = self._assign(list(texts))
        out = np.zeros((len(texts), max(len(self.topics_), 1)), dtype=np.float32)
        if self.topics_:
            out[np.arange(len(texts)), topic] = 1.0
        return out

    def topics(self, top: int = TOP_MEMBERS) -> Topics:
        """Labels as names; members: the supporting quotes of each topic's LLM-assigned fit documents."""
        members: list[list[str]] = [[] for _ in self.topics_]
        for t, quote in zip(self.assignment_, self.quotes_, strict=True):
            if quote is not None and len(members[t]) < top:
                cut = " ".join(quote.split()[:QUOTE_WORDS])
                if cut.casefold() not in {m.casefold() for m in members[t]}:
                    members[t].append(cut)
        return Topics([label for label, _ in self.topics_], members, self.assignment_)

    def describe(self) -> str:
        dropped = f", {self.dropped_} dropped" if self.dropped_ else ""
        return (
            f"{len(self.topics_)} topics from {self.sampled_} sampled documents ({self.merged_} merged{dropped}); "
            f"{int(self.by_llm_.sum())} of {len(self.assignment_)} documents assigned by the LLM, the rest by "
            "embedding similarity"
        )
