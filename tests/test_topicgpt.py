"""The TopicGPT-style peer: generation in turn with the running list, merging of near-duplicates, budgeted LLM
assignment with quotes and an embedding fallback, and its reading as `Topics` (fake LLM and encoder; one
integration test on the embedded SmolLM2-135M and MiniLM)."""

from __future__ import annotations

import importlib.util
import json
import re
import zlib

import numpy as np
import pytest

from instruct_lf_dagster.core.llm import Completion, Usage
from instruct_lf_dagster.core.proposals import Goal
from instruct_lf_dagster.core.topics import Cost, Topics
from instruct_lf_dagster.evaluation.topicgpt import TopicGPT, parse_topic

GOAL = Goal(text="Why do customers churn?", document_kind="support ticket")
BILLING = ("Billing problems", "Customers charged wrongly who want a refund.")
CRASH = ("App crashes", "The app crashes or closes unexpectedly.")
DOCS = [
    "I was charged twice and want a refund now.",
    "The app crashes every time I open the camera screen.",
    "Refund please, you charged my card for nothing.",
    "After the update the app closes and crashes on start.",
    "Charged again this month although I cancelled, refund me.",
    "It crashes when uploading photos, the app just closes.",
    "My refund never arrived and I was charged a fee.",
    "Constant crashes since yesterday, the app closes itself.",
    "Why was my card charged? I need a refund.",
    "The app crashes on the login page.",
]
_STOP = {"the", "a", "i", "and", "my", "it", "was", "or", "to", "for", "when", "after", "of", "on", "me"}


def embed(texts):
    """A bag of words hashed into 256 dimensions, normalised: shared words make texts similar."""
    rows = np.zeros((len(texts), 256))
    for row, text in zip(rows, texts, strict=True):
        for word in re.findall(r"[a-z]+", text.lower()):
            if word not in _STOP:
                row[zlib.crc32(word.encode()) % 256] += 1.0
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def default_topic(document: str) -> tuple[str, str]:
    return BILLING if "charged" in document.lower() or "refund" in document.lower() else CRASH


class FakeLLM:
    """Answers by the request's kind and its document; `generate`, `merge` and `assign` override the answers
    (document -> text). Records every request and the size of every batch."""

    def __init__(self, generate=None, merge=None, assign=None):
        self.generate, self.merge, self.assign = generate, merge, assign
        self.requests: list[list[dict]] = []
        self.formats: list[dict] = []  # the response format of each request
        self.batches: list[int] = []

    def kind(self, messages) -> str:
        return messages[0]["content"].split()[1]  # "You build ...", "You merge ...", "You assign ..."

    def answer(self, messages) -> str | None:
        kind, user = self.kind(messages), messages[-1]["content"]
        if kind == "build":
            document = user.split("Support ticket:\n", 1)[1]
            if self.generate:
                return self.generate(document)
            label, description = default_topic(document)
            return json.dumps({"topic": label, "description": description})
        if kind == "merge":
            if self.merge:
                return self.merge(user)
            return json.dumps({"topic": "Payment trouble", "description": "Money taken wrongly."})
        if self.assign:
            return self.assign(user)
        return json.dumps({"topic": default_topic(user)[0], "quote": " ".join(user.split()[:4])})

    def complete(self, requests, *, response_format=None, progress=None):
        assert response_format is not None
        self.formats += [response_format] * len(requests)
        self.requests += requests
        self.batches.append(len(requests))
        answers = [self.answer(messages) for messages in requests]
        completions = [
            Completion(text=a, prompt_tokens=10, completion_tokens=3)
            if a is not None
            else Completion(error="RateLimitError: slow down", prompt_tokens=10)
            for a in answers
        ]
        return completions, Usage()

    def of(self, kind: str) -> list[list[dict]]:
        return [r for r in self.requests if self.kind(r) == kind]


def peer(llm, **options) -> TopicGPT:
    return TopicGPT(llm, GOAL, embed=embed, **options)


def test_generation_adds_then_reuses_topics_and_shows_the_running_list():
    llm = FakeLLM()
    model = peer(llm, sample=6, assign=0).fit(DOCS)
    generation = llm.of("build")
    assert len(generation) == 6 and llm.batches[:6] == [1] * 6  # one call per sampled document, in turn
    assert model.topics_ in ([BILLING, CRASH], [CRASH, BILLING])
    assert "(none yet)" in generation[0][1]["content"]
    first = model.topics_[0]
    assert all(f"[1] {first[0]}: {first[1]}" in r[1]["content"] for r in generation[1:])
    assert all(GOAL.text in r[0]["content"] and "support ticket" in r[0]["content"] for r in generation)


def test_junk_or_failed_generation_answers_add_nothing():
    answers = iter(["no json here", None, '{"topic": "???"}', '{"topic": "Billing problems: charges"}'])
    model = peer(FakeLLM(generate=lambda d: next(answers)), sample=4, assign=0).fit(DOCS)
    assert model.topics_ == [("Billing problems", "charges")]


def test_near_duplicate_topics_are_merged_by_the_llm():
    labels = iter(["Billing problems", "Problems billing", "App crashes"])
    llm = FakeLLM(generate=lambda d: json.dumps({"topic": next(labels), "description": ""}))
    model = peer(llm, sample=3, assign=0).fit(DOCS)
    assert (
        llm.of("merge") and "[1] Billing problems\n[2] Problems billing" in llm.of("merge")[0][1]["content"]
    )
    assert model.topics_ == [("Payment trouble", "Money taken wrongly."), ("App crashes", "")]
    assert model.merged_ == 1 and "(1 merged)" in model.describe()


def test_an_unusable_merge_answer_keeps_the_groups_first_topic():
    labels = iter(["Billing problems", "Problems billing", "App crashes"])
    llm = FakeLLM(
        generate=lambda d: json.dumps({"topic": next(labels), "description": ""}), merge=lambda u: "?"
    )
    model = peer(llm, sample=3, assign=0).fit(DOCS)
    assert [label for label, _ in model.topics_] == ["Billing problems", "App crashes"]


def test_assignment_respects_the_budget_in_one_batch():
    llm = FakeLLM()
    model = peer(llm, sample=4, assign=3).fit(DOCS)
    assert len(llm.of("assign")) == 3 and llm.batches[-1] == 3
    assert model.by_llm_.sum() == 3
    truth = [[BILLING, CRASH].index(default_topic(d)) for d in DOCS]
    order = [label for label, _ in model.topics_]
    expected = [order.index([BILLING, CRASH][t][0]) for t in truth]
    np.testing.assert_array_equal(model.assignment_, expected)  # the embedding fallback agrees here
    assert "3 of 10 documents assigned by the LLM" in model.describe()


def test_junk_and_unknown_labels_fall_back_to_embedding_and_invented_quotes_are_dropped():
    def assign(document):
        if "camera" in document:
            return "I cannot tell"
        if "twice" in document:
            return json.dumps({"topic": "Weather forecast", "quote": "charged twice"})
        if "nothing" in document:
            return json.dumps({"topic": "  billing   PROBLEMS ", "quote": "words it never said"})
        if "fee" in document:
            return json.dumps({"topic": "problems billing", "quote": '"Refund  NEVER arrived"'})
        return json.dumps({"topic": default_topic(document)[0], "quote": document.split(",")[0]})

    model = peer(FakeLLM(assign=assign), sample=10, assign=10).fit(DOCS)
    billing = [label for label, _ in model.topics_].index("Billing problems")
    by_llm = dict(zip(DOCS, model.by_llm_, strict=True))
    quotes = dict(zip(DOCS, model.quotes_, strict=True))
    assert not by_llm[DOCS[1]] and not by_llm[DOCS[0]]  # junk, and a label that is not listed
    assert model.assignment_[0] == billing  # by the document's embedding
    assert by_llm[DOCS[2]] and quotes[DOCS[2]] is None  # exact label, invented quote
    assert by_llm[DOCS[6]] and model.assignment_[6] == billing  # a paraphrased label, by embedding
    assert quotes[DOCS[6]] == "Refund NEVER arrived"


def test_topics_members_are_quotes_of_llm_assigned_documents():
    quote = "one two three four five six seven eight nine ten eleven twelve thirteen"
    llm = FakeLLM(assign=lambda d: json.dumps({"topic": default_topic(d)[0], "quote": d.split(",")[0]}))
    model = peer(llm, sample=10, assign=10).fit([*DOCS, f"{quote}, refund"])
    topics = model.topics()
    assert isinstance(topics, Topics) and set(topics.names) == {"Billing problems", "App crashes"}
    billing = topics.names.index("Billing problems")
    assert topics.members[billing][0] == "I was charged twice and want a refund now."  # document order
    np.testing.assert_array_equal(topics.assignment, model.assignment_)
    assert all(len(m.split()) <= 12 for members in topics.members for m in members)
    assert sum(map(len, topics.members)) == sum(q is not None for q in model.quotes_)
    # A grammar-constrained model writes only its schema's keys: assignments must be asked for a quote.
    kinds = [llm.kind(r) for r in llm.requests]
    for kind, response_format in zip(kinds, llm.formats, strict=True):
        required = response_format["json_schema"]["schema"]["required"]
        assert required == (["topic", "quote"] if kind == "assign" else ["topic", "description"]), kind


def test_transform_is_one_hot_and_budgeted():
    llm = FakeLLM()
    model = peer(llm, sample=4, assign=2).fit(DOCS)
    before = len(llm.of("assign"))
    scores = model.transform(DOCS[::-1] + ["refund charged"])
    assert scores.shape == (11, 2) and scores.dtype == np.float32
    np.testing.assert_array_equal(scores.sum(axis=1), np.ones(11))
    assert set(np.unique(scores)) == {0.0, 1.0}
    assert len(llm.of("assign")) - before == 2


def test_fitted_and_new_documents_share_one_space_even_without_topics():
    assert Topics([], [], np.full(3, -1)).indicators().shape == (3, 1)
    found = Topics(["a", "b"], [["x"], ["y"]], np.array([1, -1, 0]))
    np.testing.assert_array_equal(found.indicators(), [[0, 1], [0, 0], [1, 0]])


def test_rare_topics_are_dropped_and_the_documents_assigned_again():
    labels = iter(["Billing problems", "App crashes", "Login trouble"])
    llm = FakeLLM(generate=lambda d: json.dumps({"topic": next(labels), "description": ""}))
    model = peer(llm, sample=3, assign=4, min_documents=2).fit(DOCS)
    assert [label for label, _ in model.topics_] == ["Billing problems", "App crashes"]
    assert model.dropped_ == 1 and len(llm.of("assign")) == 8  # assigned twice
    assert "1 dropped" in model.describe()


def test_cost_counts_every_call_and_its_tokens():
    llm = FakeLLM(generate=lambda d: None if "camera" in d else json.dumps({"topic": default_topic(d)[0]}))
    model = peer(llm, sample=10, assign=5).fit(DOCS)
    calls = len(llm.requests)
    assert model.cost == Cost(calls, 10 * calls, 3 * (calls - 1))  # the failed call paid no answer
    model.transform(DOCS[:2])
    assert model.cost.calls == calls + 2


def test_the_same_seed_gives_the_same_result_and_another_seed_another_sample():
    def run(seed):
        llm = FakeLLM()
        model = peer(llm, sample=3, assign=3, seed=seed).fit(DOCS)
        return model, [r[1]["content"].split("Support ticket:\n")[1] for r in llm.of("build")], llm.requests

    first, sample, requests = run(0)
    again, sample_again, requests_again = run(0)
    assert sample == sample_again and requests == requests_again
    assert first.topics().names == again.topics().names and first.topics().members == again.topics().members
    np.testing.assert_array_equal(first.assignment_, again.assignment_)
    assert first.describe() == again.describe()
    assert set(run(1)[1]) != set(sample)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"topic": "billing problems", "description": "Charges. And more."}',
            ("Billing problems", "Charges."),
        ),
        (
            'Sure!\n```json\n{"topic": "App crashes", "description": "Crashes."}\n```',
            ("App crashes", "Crashes."),
        ),
        ('{"topic": "App crashes: the app closes"}', ("App crashes", "the app closes")),
        ('{"topic": "Login trouble", "descr', ("Login trouble", "")),  # truncated
        ('{"label": "x"}', None),
        ("", None),
        (None, None),
    ],
)
def test_parse_topic(text, expected):
    assert parse_topic(text) == expected


def _embedded_ready(home) -> bool:
    return (
        importlib.util.find_spec("llama_cpp") is not None
        and (home / "models" / "smollm2-135m.gguf").is_file()
    )


@pytest.mark.integration
def test_topicgpt_runs_on_the_embedded_model(data_home):
    """SmolLM2-135M through the LLM resource and the real MiniLM: structure only, the model is tiny."""
    if not _embedded_ready(data_home):
        pytest.skip("llama-cpp-python or smollm2-135m.gguf is missing")
    from instruct_lf_dagster.resources.llm import LLMResource

    client = LLMResource(
        model="llamacpp/smollm2-135m", models_home=str(data_home), llm_threads=2, max_tokens=64
    ).get_client()
    model = TopicGPT(client, GOAL, sample=3, assign=3).fit(DOCS[:6])
    topics = model.topics()
    assert isinstance(topics, Topics) and len(topics) >= 1 and len(topics.assignment) == 6
    scores = model.transform(DOCS[6:])
    assert scores.shape == (4, len(topics))
    np.testing.assert_array_equal(scores.sum(axis=1), np.ones(4))
    assert model.cost.calls > 0 and model.cost.prompt_tokens > 0
