"""Batched decoding (`models.slots`): a request's text never depends on the requests decoded beside it.

Integration tests run the real embedded models (skipped when llama-cpp-python or a model is missing).
"""

from __future__ import annotations

import argparse
import json

import pytest

from instruct_lf_dagster import models
from instruct_lf_dagster.bench import llm as bench_llm
from instruct_lf_dagster.bench.llm import MAX_TOKENS, RESPONSE_FORMAT, messages_for, more_documents
from instruct_lf_dagster.models.slots import Request, Slots, _reusable, _Slot, chat_request
from tests.test_local_models import EMBEDDED, THREADS, home  # noqa: F401 (home: a fixture)


def test_only_whole_chunks_of_a_shared_prefix_are_reused():
    slot = _Slot()
    slot.cached, slot.whole = list(range(200)), 128
    assert _reusable(slot, list(range(300))) == 128  # the cells past `whole` came from a decode, not a chunk
    assert _reusable(slot, [*range(100), -1]) == models.CHUNK  # the first 64 match whole, the next 36 do not
    assert _reusable(slot, list(range(65))) == models.CHUNK
    assert (
        _reusable(slot, list(range(64))) == 0
    )  # the last prompt token is always read: its logits are needed
    assert _reusable(_Slot(), list(range(300))) == 0


def test_the_bench_documents_are_distinct():
    documents = more_documents(40)
    assert len(set(documents)) == 40


@pytest.mark.parametrize("parallel, workers", [("0", 0), ("4,x", 0), ("2", -1)])
def test_the_bench_refuses_bad_layouts_before_running(parallel, workers):
    with pytest.raises(SystemExit, match="--parallel takes slot counts of 1 or more"):
        bench_llm._sizes(argparse.Namespace(parallel=parallel, workers=workers))
    assert bench_llm._sizes(argparse.Namespace(parallel="2,16", workers=2)) == [2, 16]


def _requests(llm, documents: list[str]) -> list:
    return [
        chat_request(llm, messages_for(d), max_tokens=MAX_TOKENS, response_format=RESPONSE_FORMAT)
        for d in documents
    ]


@pytest.mark.integration
@pytest.mark.parametrize("name", EMBEDDED)
def test_a_request_gives_the_same_text_whatever_its_companions(home, name):  # noqa: F811
    llm = models.load(name, home, THREADS)
    documents = more_documents(6)
    requests = _requests(llm, documents)
    fresh = Slots(llm, 4, THREADS)
    try:
        alone = fresh.run(requests[:1])[0]  # a new context: nothing cached, three idle slots padded
    finally:
        fresh.close()
    engine = Slots(llm, 4, THREADS)
    try:
        in_order = engine.run(requests)  # a full batch, then the last two among finishing requests
        texts = [r.text for r in in_order]
        backwards = [r.text for r in engine.run(requests[::-1])][::-1]  # other slots, other companions
        short, long = _requests(llm, ["Review: ok.", "Review: " + "long and winding, " * 40])
        mixed = [r.text for r in engine.run([short, requests[0], long, requests[1]])]
    finally:
        engine.close()
    assert alone.cached_tokens == 0 and alone.text == texts[0]
    assert backwards == texts
    assert [mixed[1], mixed[3]] == texts[:2]
    assert any(r.cached_tokens >= models.CHUNK for r in in_order[1:])  # the shared prefix was reused
    assert all(r.finish_reason in ("stop", "length") for r in in_order)
    for result in in_order:
        if result.finish_reason == "stop":
            assert isinstance(json.loads(result.text)["properties"], list)


@pytest.mark.integration
@pytest.mark.parametrize("name", EMBEDDED)
def test_chat_requests_are_the_prompts_of_a_chat_completion(home, name):  # noqa: F811
    llm = models.load(name, home, THREADS)
    messages = messages_for(more_documents(3)[2])
    request = chat_request(llm, messages, max_tokens=MAX_TOKENS, response_format=RESPONSE_FORMAT)
    models.chat(name, messages, home=home, threads=THREADS, max_tokens=1, response_format=RESPONSE_FORMAT)
    assert llm.input_ids[: len(request.tokens)].tolist() == request.tokens
    assert request.grammar is not None and "root" in request.grammar[1]
    assert llm._model.token_get_text(llm.token_eos()) in request.stop


@pytest.mark.integration
@pytest.mark.parametrize("name", EMBEDDED)
def test_a_prompt_too_long_is_refused_before_anything_is_decoded(home, name):  # noqa: F811
    llm = models.load(name, home, THREADS)
    ok, *_ = _requests(llm, ["Review: short and sweet."])
    too_long = chat_request(llm, [{"role": "user", "content": "word " * (models.N_CTX + 10)}], max_tokens=8)
    engine = Slots(llm, 2, THREADS)
    try:
        with pytest.raises(models.PromptTooLongError, match="request 1: .* does not fit the context of 4096"):
            engine.run([ok, too_long])
        with pytest.raises(ValueError, match="request 0: an empty prompt"):
            engine.run([Request([], 8), ok])
        assert engine.run([ok])[0].tokens  # the engine still answers
    finally:
        engine.close()
