"""LLM calls that fail, hang or outlive their batch, and a damaged response cache: calls are bounded, retried only
when worth it, and a batch stops sending to an endpoint found down (litellm faked in process)."""

from __future__ import annotations

import logging
import os
import threading
import time

import duckdb
import pytest

from instruct_lf_dagster.core.duckdb_lock import is_locked
from instruct_lf_dagster.core.llm import LLMClient, LLMConfig, ResponseCache, client
from instruct_lf_dagster.core.llm.transport import load_litellm
from instruct_lf_dagster.resources.llm import CACHE_FILE


@pytest.fixture
def litellm():
    return load_litellm()


@pytest.fixture
def real_completion(litellm):
    """litellm.completion itself, whatever a test puts in its place."""
    return litellm.completion


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


class Status(Exception):
    """An error carrying only an HTTP status, as some providers' are."""

    def __init__(self, status: int):
        super().__init__(f"status {status}")
        self.status_code = status


@pytest.mark.parametrize(
    (
        "error",
        "calls",
    ),  # with retries=2: 1 = not retried; a timeout costs a whole call, so it is retried once
    [
        (lambda m: m.AuthenticationError("bad key", "openai", "m"), 1),
        (lambda m: m.BadRequestError("malformed", model="m", llm_provider="openai"), 1),
        (lambda m: m.NotFoundError("no such model", model="m", llm_provider="openai"), 1),
        (lambda m: Status(409), 1),
        (lambda m: Status(408), 2),  # litellm reads a 408 as its Timeout
        (lambda m: m.RateLimitError("slow down", llm_provider="openai", model="m"), 3),
        (lambda m: m.ServiceUnavailableError("busy", llm_provider="openai", model="m"), 3),
        (lambda m: Status(502), 3),
        (lambda m: m.Timeout("timed out", model="m", llm_provider="openai"), 2),
        (lambda m: m.APIConnectionError("connection refused", llm_provider="openai", model="m"), 3),
    ],
)
def test_only_errors_worth_it_are_retried(monkeypatch, litellm, error, calls):
    retried = calls > 1
    real, attempts = litellm.completion, []
    monkeypatch.setattr(litellm, "completion", lambda **kw: attempts.append(kw) or real(**kw))
    config = LLMConfig(model="openai/m", retries=2)
    llm = LLMClient(config, cache=ResponseCache.memory(), retry_backoff=0.001, mock_response=error(litellm))
    completions, usage = llm.complete([ask("x")])
    assert len(attempts) == calls and usage.failures == 1
    assert completions[0].transient == retried and llm.last_error == completions[0].error
    assert all(kw["num_retries"] == 0 and kw["max_retries"] == 0 for kw in attempts)  # litellm's are off


def test_a_call_may_take_a_time_sized_to_its_answer(monkeypatch, litellm):
    seen = []
    monkeypatch.setattr(
        litellm, "completion", lambda **kw: seen.append(kw["timeout"]) or litellm.ModelResponse()
    )
    config = LLMConfig(
        model="openai/m", timeout=10, timeout_per_token=0.5, max_tokens=100, batch_deadline=None
    )
    assert config.call_timeout == 60
    LLMClient(config, cache=None).complete([ask("x")])
    # A batch's deadline nearer than that shortens the call (to whole seconds).
    LLMClient(config.model_copy(update={"batch_deadline": 7.5}), cache=None).complete([ask("y")])
    assert seen == [60, 8]


def slow_fake(litellm, real, answered: list[str], slow: str = "slow", stop: threading.Event | None = None):
    """A litellm.completion that answers at once (through `real`), except `slow`: within its timeout (then
    Timeout), or never (until `stop`) when `stop` is given, like a server trickling bytes."""

    def completion(**kw):
        text = kw["messages"][-1]["content"]
        if text == slow:
            if stop is not None:
                stop.wait(60)
                raise litellm.APIConnectionError("connection lost", llm_provider="openai", model="m")
            time.sleep(kw["timeout"])
            raise litellm.Timeout(f"no answer in {kw['timeout']} s", model="m", llm_provider="openai")
        answered.append(text)
        return real(**kw, mock_response=f"about {text}")

    return completion


def test_past_the_deadline_the_rest_fails_fast_and_answers_stay_cached(monkeypatch, litellm, real_completion):
    answered: list[str] = []
    monkeypatch.setattr(litellm, "completion", slow_fake(litellm, real_completion, answered))
    config = LLMConfig(model="openai/m", max_concurrency=1, batch_deadline=1.0, timeout=60)
    llm = LLMClient(config, cache=ResponseCache.memory(), retry_backoff=0.001)
    texts = ["a", "b", "slow", "c", "d"]
    started = time.monotonic()
    completions, usage = llm.complete([ask(t) for t in texts])
    assert time.monotonic() - started < 5
    assert [c.ok for c in completions] == [True, True, False, False, False] and answered == ["a", "b"]
    assert completions[2].error.startswith("Timeout:") and llm.last_error == completions[2].error
    assert all(
        c.error.startswith("DeadlineExceeded:") and "batch_deadline=1 s" in c.error for c in completions[3:]
    )
    assert usage.calls == 3 and usage.failures == 3 and len(llm.cache) == 2  # errors are not cached

    monkeypatch.setattr(litellm, "completion", slow_fake(litellm, real_completion, answered, slow="none"))
    completions, usage = llm.complete([ask(t) for t in texts])
    assert all(c.ok for c in completions) and usage.cache_hits == 2 and usage.calls == 3


def test_a_call_that_outlives_the_deadline_is_abandoned(monkeypatch, litellm, real_completion):
    stop = threading.Event()
    monkeypatch.setattr(litellm, "completion", slow_fake(litellm, real_completion, [], stop=stop))
    monkeypatch.setattr(client, "_GRACE_S", 0.5)
    llm = LLMClient(LLMConfig(model="openai/m", max_concurrency=2, batch_deadline=1.0), cache=None)
    started = time.monotonic()
    try:
        completions, usage = llm.complete([ask("slow"), ask("fast")])
    finally:
        stop.set()
    assert time.monotonic() - started < 5
    assert completions[0].error.startswith("DeadlineExceeded:") and completions[1].text == "about fast"
    assert usage.failures == 1


def test_an_endpoint_that_fails_every_first_call_is_not_asked_the_rest(monkeypatch, litellm):
    attempts = []

    def down(**kw):
        attempts.append(kw)
        raise litellm.APIConnectionError("Connection refused", llm_provider="openai", model="m")

    monkeypatch.setattr(litellm, "completion", down)
    llm = LLMClient(LLMConfig(model="openai/m", api_base="http://10.0.0.1:9/v1", retries=0), cache=None)
    completions, usage = llm.complete([ask(str(i)) for i in range(12)])
    assert len(attempts) == client.GIVE_UP_AFTER and usage.calls == client.GIVE_UP_AFTER
    assert usage.failures == 12 and not any(c.ok for c in completions)
    skipped = [c.error for c in completions if c.error.startswith("EndpointUnavailable:")]
    assert len(skipped) == 12 - client.GIVE_UP_AFTER
    assert "http://10.0.0.1:9/v1" in skipped[0] and "Connection refused" in skipped[0]

    # Once an answer came, later failures are the documents' own: every request is still asked.
    attempts.clear()
    flaky = iter([True] + [False] * 20)

    def sometimes(**kw):
        attempts.append(kw)
        if next(flaky):
            return litellm.ModelResponse()
        raise litellm.APIConnectionError("Connection reset", llm_provider="openai", model="m")

    monkeypatch.setattr(litellm, "completion", sometimes)
    llm = LLMClient(LLMConfig(model="openai/m", retries=0, max_concurrency=1), cache=None)
    completions, _ = llm.complete([ask(str(i)) for i in range(8)])
    assert len(attempts) == 8 and sum(c.ok for c in completions) == 1


# A damaged response cache is set aside, not fatal.


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_cache_file_is_set_aside_and_a_fresh_one_started(tmp_path, caplog, damage):
    path = tmp_path / CACHE_FILE
    if damage == "garbage":
        path.write_bytes(os.urandom(4096))
    else:
        ResponseCache(path)
        with duckdb.connect(str(path)) as con:
            con.execute(
                "INSERT INTO llm_responses SELECT 'k' || i, 'm', '{}', repeat('an answer ', 40), 1, 1, 0.0, now()"
                " FROM range(2000) t(i)"
            )
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    damaged = path.read_bytes()

    with caplog.at_level(logging.WARNING, logger="instruct_lf_dagster.core.llm.cache"):
        llm = LLMClient(LLMConfig(model="openai/m"), cache=ResponseCache(path), mock_response="fresh")
    completions, usage = llm.complete([ask("x"), ask("y")])
    assert [c.text for c in completions] == ["fresh", "fresh"] and usage.calls == 2
    assert len(ResponseCache(path)) == 2  # answered again, then cached in the fresh file

    (aside,) = tmp_path.glob(f"{CACHE_FILE}.damaged-*")
    assert aside.read_bytes() == damaged  # kept as it was, for whoever wants to look
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert str(path) in warning and str(aside) in warning


def test_a_locked_file_is_not_taken_for_a_damaged_one():
    locked = duckdb.IOException(
        'Could not set lock on file "/x/c.duckdb": Conflicting lock is held in python'
    )
    corrupt = duckdb.Error(
        "Corrupt database file: computed checksum 1 does not match stored checksum 2 in block"
    )
    assert is_locked(locked) and not is_locked(corrupt)
    from instruct_lf_dagster.core.llm.cache import _damaged

    assert _damaged(corrupt) and not _damaged(locked)


def test_progress_is_heard_again_while_calls_take_long(monkeypatch, litellm, real_completion):
    monkeypatch.setattr(litellm, "completion", slow_fake(litellm, real_completion, []))
    monkeypatch.setattr(client, "_TICK_S", 0.05)
    monkeypatch.setattr(client, "_HEARTBEAT_S", 0.2)
    heard: list[tuple[int, int]] = []
    llm = LLMClient(LLMConfig(model="openai/m", batch_deadline=1.0, retries=0), cache=None)
    llm.complete([ask("fast"), ask("slow")], progress=lambda done, total: heard.append((done, total)))
    assert heard[0] == (1, 2) and heard.count((1, 2)) >= 3 and heard[-1] == (2, 2)
