"""An LLM endpoint that is slow, silent, down or refusing, and a damaged response cache: calls are bounded, retried
only when worth it, stoppable, and a batch that got no answer fails at proposals naming the endpoint."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from instruct_lf_dagster.core.duckdb_lock import is_locked
from instruct_lf_dagster.core.llm import LLMClient, LLMConfig, ResponseCache, client
from instruct_lf_dagster.core.llm.transport import load_litellm
from instruct_lf_dagster.partitions import batches
from instruct_lf_dagster.resources.llm import CACHE_FILE, LLMResource


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
    ("error", "retried"),
    [
        (lambda m: m.AuthenticationError("bad key", "openai", "m"), False),
        (lambda m: m.BadRequestError("malformed", model="m", llm_provider="openai"), False),
        (lambda m: m.NotFoundError("no such model", model="m", llm_provider="openai"), False),
        (lambda m: Status(409), False),
        (lambda m: Status(408), True),
        (lambda m: m.RateLimitError("slow down", llm_provider="openai", model="m"), True),
        (lambda m: m.ServiceUnavailableError("busy", llm_provider="openai", model="m"), True),
        (lambda m: Status(502), True),
        (lambda m: m.Timeout("timed out", model="m", llm_provider="openai"), True),
        (lambda m: m.APIConnectionError("connection refused", llm_provider="openai", model="m"), True),
    ],
)
def test_only_errors_worth_it_are_retried(monkeypatch, litellm, error, retried):
    real, attempts = litellm.completion, []
    monkeypatch.setattr(litellm, "completion", lambda **kw: attempts.append(kw) or real(**kw))
    config = LLMConfig(model="openai/m", retries=2)
    llm = LLMClient(config, cache=ResponseCache.memory(), retry_backoff=0.001, mock_response=error(litellm))
    completions, usage = llm.complete([ask("x")])
    assert len(attempts) == (3 if retried else 1) and usage.failures == 1
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


# A process stopped while its calls hang must exit at once: the calls' threads are not waited for.
_STOPPED = """
import signal, sys, threading
from instruct_lf_dagster.core.llm import LLMClient, LLMConfig
from instruct_lf_dagster.core.llm.transport import load_litellm

def interrupt(signo, frame):
    raise KeyboardInterrupt  # as Dagster's handler (and Python's, for SIGINT) do
signal.signal(signal.SIGTERM, interrupt)
api_base = sys.argv[1] if len(sys.argv) > 1 else None
if api_base is None:  # calls that hang, and whose timeout never fires
    def hang(**kw):
        print("calling", flush=True)
        threading.Event().wait(300)
    load_litellm().completion = hang
config = LLMConfig(model="openai/m", api_base=api_base, max_concurrency=2, timeout=300, retries=3)
try:
    LLMClient(config, api_key="sk-test", cache=None).complete([[{"role": "user", "content": str(i)}] for i in range(4)])
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(3)
"""


def _stop_while_calling(*args: str, calling) -> None:
    """Run `_STOPPED` with `args`, send it SIGTERM once `calling(process)` returns, and see it exit at once."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-c", _STOPPED, *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        calling(process)
        time.sleep(0.5)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
        assert time.monotonic() - started < 10, err
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 3 and "interrupted" in out, err


def test_a_stopped_process_exits_while_its_calls_hang():
    _stop_while_calling(calling=lambda process: process.stdout.readline())


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


# Real sockets on 127.0.0.1: a server that accepts and never answers, and a port where nothing listens.


class SilentServer:
    """Accepts connections on 127.0.0.1 and never answers; stops by itself after `lifetime` seconds."""

    def __init__(self, lifetime: float = 120.0):
        self._socket = socket.create_server(("127.0.0.1", 0), backlog=64)
        self._socket.settimeout(0.2)
        self._stop = threading.Event()
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, args=(lifetime,), daemon=True)
        self._thread.start()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}/v1"

    def _serve(self, lifetime: float) -> None:
        held = []
        end = time.monotonic() + lifetime
        while not self._stop.is_set() and time.monotonic() < end:
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            held.append(connection)  # read nothing, answer nothing
            self.accepted += 1
        for connection in held:
            connection.close()
        self._socket.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture
def silent_server():
    server = SilentServer()
    yield server
    server.close()


@pytest.fixture
def refusing_port():
    """A port bound on 127.0.0.1 where nothing listens: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def warm(refusing_port):
    """litellm's first HTTP call imports its OpenAI path (seconds on a busy machine): done before timing."""
    config = LLMConfig(model="openai/warm", api_base=f"http://127.0.0.1:{refusing_port}/v1", retries=0)
    completions, _ = LLMClient(config, api_key="sk-test", cache=None).complete([ask("warm")])
    assert not completions[0].ok


@pytest.mark.integration
def test_a_silent_endpoint_is_given_up_at_the_batch_deadline(silent_server, warm):
    config = LLMConfig(model="openai/never", api_base=silent_server.api_base, batch_deadline=3.0)
    llm = LLMClient(config, api_key="sk-test", cache=None)
    started = time.monotonic()
    completions, usage = llm.complete([ask(str(i)) for i in range(6)])
    elapsed = time.monotonic() - started
    assert elapsed < 3.0 + 30
    errors = [c.error for c in completions]
    assert sum(e.startswith("Timeout:") for e in errors) == 4 and usage.calls == 4  # one round of 4, no retry
    assert sum(e.startswith("DeadlineExceeded:") for e in errors) == 2
    assert silent_server.accepted == 4


@pytest.mark.integration
def test_a_silent_endpoint_times_out_each_call_then_is_given_up(silent_server, warm):
    # 1 s + 0.004 s for each of 250 tokens: each call may take 2 s; one retry each, then the endpoint is down.
    config = LLMConfig(
        model="openai/never",
        api_base=silent_server.api_base,
        timeout=1.0,
        timeout_per_token=0.004,
        max_tokens=250,
        retries=1,
        batch_deadline=None,
    )
    llm = LLMClient(config, api_key="sk-test", cache=None, retry_backoff=0.1)
    started = time.monotonic()
    completions, usage = llm.complete([ask(str(i)) for i in range(10)])
    assert time.monotonic() - started < 2 * 2.0 + 30
    assert usage.calls == client.GIVE_UP_AFTER and silent_server.accepted == 2 * client.GIVE_UP_AFTER
    unsent = [c.error for c in completions if c.error.startswith("EndpointUnavailable:")]
    assert len(unsent) == 10 - client.GIVE_UP_AFTER and silent_server.api_base in unsent[0]


@pytest.mark.integration
def test_a_stopped_process_exits_while_its_calls_wait_on_a_silent_endpoint(silent_server):
    def calling(process) -> None:
        for _ in range(600):  # litellm's import takes seconds
            if silent_server.accepted >= 2 or process.poll() is not None:
                return
            time.sleep(0.1)

    _stop_while_calling(silent_server.api_base, calling=calling)
    assert silent_server.accepted == 2


def _proposals_failure(tmp_path: Path, llm: LLMResource) -> tuple[str, float]:
    """Materialise documents, proposals and vocabulary of the test discovery: the proposals step's failure
    message, and how long the run took."""
    from tests.test_pipeline import discovery, local_resources, run, write_batches

    keys = write_batches(tmp_path / "inbox", count=1)
    resources = {**local_resources(tmp_path), "llm": llm}
    selection = [
        dg.AssetKey("documents"),
        *(dg.AssetKey(["reviews", s]) for s in ("proposals", "vocabulary")),
    ]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(batches.name, keys)
        started = time.monotonic()
        result = run(
            resources, instance, keys, discoveries=[discovery()], selection=selection, raise_on_error=False
        )
        elapsed = time.monotonic() - started
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key.startswith("reviews__proposals")  # there, not later at vocabulary
    print(f"run failed at proposals in {elapsed:.1f} s")
    return failure.step_failure_data.user_failure_data.description, elapsed


@pytest.mark.integration
def test_a_discovery_at_a_silent_endpoint_fails_at_proposals_within_the_deadline(
    tmp_path, silent_server, warm
):
    deadline = 6.0
    llm = LLMResource(
        model="openai/never-answers",
        api_base=silent_server.api_base,
        api_key="sk-test",
        batch_deadline=deadline,
        cache_path=str(tmp_path / CACHE_FILE),
    )
    message, elapsed = _proposals_failure(tmp_path, llm)
    assert elapsed < deadline + 30  # bounds a hang; it does not time anything
    assert "every LLM call failed" in message and "openai/never-answers" in message
    assert silent_server.api_base in message and "Timeout:" in message


@pytest.mark.integration
def test_a_discovery_at_a_refused_port_fails_at_proposals_naming_it(tmp_path, refusing_port):
    api_base = f"http://127.0.0.1:{refusing_port}/v1"
    llm = LLMResource(
        model="openai/nobody-home",
        api_base=api_base,
        api_key="sk-test",
        retries=1,
        cache_path=str(tmp_path / CACHE_FILE),
    )
    message, elapsed = _proposals_failure(tmp_path, llm)
    assert elapsed < 60
    # litellm reports a refused connection as a server error ("Connection error."): retried, then named.
    assert "every LLM call failed" in message and api_base in message and "Connection error" in message
