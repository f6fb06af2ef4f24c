"""Endpoints that never answer or refuse connections, on real sockets on 127.0.0.1: a batch is given up by its
deadline, a discovery fails at proposals naming the endpoint, and a stopped process exits while its calls hang."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from instruct_lf_dagster.core.llm import LLMClient, LLMConfig, client
from instruct_lf_dagster.partitions import batches
from instruct_lf_dagster.resources.llm import CACHE_FILE, LLMResource


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


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
