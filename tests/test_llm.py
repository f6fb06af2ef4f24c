"""LLMClient: cache, deduplication, budget, failures and retries (litellm mock_response and a real HTTP server)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import duckdb
import pydantic
import pytest

from instruct_lf_dagster.core.duckdb_lock import connect_duckdb
from instruct_lf_dagster.core.llm import Completion, LLMClient, LLMConfig, ResponseCache, Usage, cache_key
from instruct_lf_dagster.core.llm.transport import load_litellm

PRICED_MODEL = "gpt-4o-mini"  # in litellm's bundled price table, so mock responses have a cost


@pytest.fixture
def litellm():
    """litellm, imported the way the package does it (offline price table)."""
    return load_litellm()


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def calls(monkeypatch, litellm):
    """Every request that reaches litellm.completion, in order (the real function still answers)."""
    seen: list[dict] = []
    real = litellm.completion

    def counting(**kwargs):
        seen.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(litellm, "completion", counting)
    return seen


def split(settings: dict) -> tuple[LLMConfig, dict]:
    """The LLMConfig among keyword settings (model defaults to PRICED_MODEL), and the client's other arguments."""
    config = {name: settings.pop(name) for name in list(settings) if name in LLMConfig.model_fields}
    return LLMConfig(**{"model": PRICED_MODEL, **config}), settings


def mock_client(**settings) -> LLMClient:
    settings.setdefault("cache", ResponseCache.memory())
    settings.setdefault("mock_response", "a property")
    config, rest = split(settings)
    return LLMClient(config, **rest)


def test_second_run_is_served_from_the_cache(calls):
    client = mock_client()
    requests = [ask("one"), ask("two"), ask("three")]
    first, usage = client.complete(requests)
    assert [c.text for c in first] == ["a property"] * 3
    assert not any(c.cached for c in first)
    assert usage.calls == 3 and len(calls) == 3 and usage.cost_usd > 0

    second, usage = client.complete(requests)
    assert len(calls) == 3  # nothing new reached litellm
    assert all(c.cached for c in second)
    assert [c.text for c in second] == [c.text for c in first]
    assert usage.calls == 0 and usage.cache_hits == 3 and usage.cost_usd == 0


def test_cache_file_survives_the_process(tmp_path, calls):
    path = tmp_path / "cache" / "llm.duckdb"
    client = mock_client(cache=ResponseCache(path))
    client.complete([ask("one"), ask("two")])

    # A second process (as a Dagster step subprocess would) reads what the first one wrote.
    key = client.key(ask("two"))
    script = (
        "import sys; from instruct_lf_dagster.core.llm import ResponseCache;"
        f"c = ResponseCache({str(path)!r}); hit = c.get_many([{key!r}])[{key!r}];"
        "print(len(c), hit.text, hit.cached)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2", "a", "property", "True"]

    again, usage = mock_client(cache=ResponseCache(path)).complete([ask("two")])
    assert again[0].cached and usage.calls == 0 and len(calls) == 2


def test_identical_requests_are_asked_once(calls):
    client = mock_client()
    completions, usage = client.complete([ask("a"), ask("b"), ask("a"), ask("a")])
    assert len(calls) == 2 and usage.calls == 2
    assert len(completions) == 4 and all(c.text == "a property" for c in completions)
    assert completions[0] is not completions[2]  # copies, not shared objects


def test_cache_key_follows_everything_that_changes_the_answer():
    base = dict(temperature=0.0, max_tokens=256, seed=0, response_format=None)
    key = cache_key("m", ask("x"), **base)
    assert key == cache_key("m", ask("x"), **{**base, "temperature": 0})  # 0 and 0.0 are the same setting
    schema = {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object"}}}
    variants = [
        cache_key("other-model", ask("x"), **base),
        cache_key("m", ask("y"), **base),
        cache_key("m", ask("x"), **{**base, "temperature": 0.7}),
        cache_key("m", ask("x"), **{**base, "max_tokens": 64}),
        cache_key("m", ask("x"), **{**base, "seed": 1}),
        cache_key("m", ask("x"), **{**base, "response_format": schema}),
    ]
    assert len({key, *variants}) == 1 + len(variants)


def test_response_format_is_sent_and_keyed(calls):
    client = mock_client()
    schema = {"type": "json_object"}
    client.complete([ask("x")])
    _, usage = client.complete([ask("x")], response_format=schema)
    assert usage.calls == 1 and usage.cache_hits == 0
    assert calls[-1]["response_format"] == schema


def test_token_budget_stops_before_exceeding(calls):
    client = mock_client(max_tokens=20, budget_tokens=100, max_concurrency=1)
    requests = [ask(f"document {i}") for i in range(6)]
    completions, usage = client.complete(requests)

    done = [c for c in completions if c.ok]
    refused = [c for c in completions if not c.ok]
    assert 1 <= len(done) < len(requests) and len(done) == len(calls)
    assert usage.tokens <= 100 and usage.budget_exhausted and usage.skipped == len(refused)
    assert all(c.error.startswith("budget exhausted:") and "budget_tokens=100" in c.error for c in refused)

    # What was paid for is kept: a client with more budget asks only for the rest.
    more, usage = mock_client(cache=client.cache, max_tokens=20).complete(requests)
    assert all(c.ok for c in more)
    assert usage.cache_hits == len(done) and usage.calls == len(refused)


def test_usd_budget_stops_before_exceeding(calls):
    # The mock answers 20 tokens, so with max_tokens=20 the client's estimate is close to the real price.
    one_call = mock_client(max_tokens=20).complete([ask("probe")])[1].cost_usd
    budget = 3 * one_call
    client = mock_client(budget_usd=budget, max_tokens=20, max_concurrency=2)
    completions, usage = client.complete([ask(f"document {i}") for i in range(8)])

    assert 0 < usage.cost_usd <= budget
    assert usage.budget_exhausted and usage.skipped > 0
    refused = [c for c in completions if not c.ok]
    assert refused and all("budget_usd" in c.error for c in refused)
    # The budget spans the client's life: a later batch is refused at once, cached answers still served.
    later, usage = client.complete([ask("document 0"), ask("new one")])
    assert later[0].cached and later[0].text == "a property"
    assert later[1].error.startswith("budget exhausted") and usage.calls == 0


def test_failures_are_recorded_not_raised_and_not_cached(monkeypatch, litellm, calls):
    real = litellm.completion

    def picky(**kwargs):
        if kwargs["messages"][0]["content"] == "bad":
            raise litellm.BadRequestError("this request is malformed", model="m", llm_provider="openai")
        return real(**kwargs)

    monkeypatch.setattr(litellm, "completion", picky)
    client = mock_client(retries=3, retry_backoff=0.001)
    completions, usage = client.complete([ask("good"), ask("bad"), ask("fine")])
    assert [c.ok for c in completions] == [True, False, True]
    assert completions[1].error.startswith("BadRequestError:") and "malformed" in completions[1].error
    assert usage.failures == 1 and usage.calls == 3
    assert len(calls) == 2  # the two good ones; a bad request is not retried

    _, usage = client.complete([ask("good"), ask("bad"), ask("fine")])
    assert usage.cache_hits == 2 and usage.calls == 1 and usage.failures == 1  # the failure is asked again
    assert len(client.cache) == 2


def test_transient_errors_are_retried(monkeypatch, litellm):
    real = litellm.completion
    attempts = []

    def flaky(**kwargs):
        attempts.append(kwargs)
        if len(attempts) < 3:
            raise litellm.RateLimitError("slow down", llm_provider="openai", model="m")
        return real(**kwargs)

    monkeypatch.setattr(litellm, "completion", flaky)
    completions, usage = mock_client(retries=3, retry_backoff=0.001).complete([ask("x")])
    assert completions[0].text == "a property" and len(attempts) == 3 and usage.failures == 0

    attempts.clear()
    completions, _ = mock_client(retries=1, retry_backoff=0.001).complete([ask("x")])
    assert len(attempts) == 2
    assert completions[0].error.startswith("RateLimitError:") and "after 1 retries" in completions[0].error


def test_odd_responses_never_raise(monkeypatch, litellm):
    def response(choices, usage=None):
        return types.SimpleNamespace(choices=choices, usage=usage, _hidden_params={})

    def choice(content):
        return types.SimpleNamespace(message=types.SimpleNamespace(content=content))

    answers = {
        "none": response([choice(None)]),
        "empty": response([choice("")]),
        "no choices": response([]),
        "no message": response([types.SimpleNamespace()]),
        "counted": response([choice("three words here")], types.SimpleNamespace(prompt_tokens=7)),
    }
    monkeypatch.setattr(litellm, "completion", lambda **kw: answers[kw["messages"][0]["content"]])
    client = LLMClient(LLMConfig(model="openai/anything", budget_tokens=10_000), cache=ResponseCache.memory())
    completions, usage = client.complete([ask(text) for text in answers])
    by_name = dict(zip(answers, completions, strict=True))
    assert by_name["none"].text == "" and by_name["empty"].text == "" and by_name["no message"].text == ""
    assert by_name["no choices"].error.startswith("EmptyResponse")
    assert by_name["counted"].prompt_tokens == 7 and by_name["counted"].completion_tokens > 0
    assert by_name["none"].prompt_tokens > 0  # missing usage is counted locally for the budget
    assert usage.cost_usd == 0 and usage.failures == 1


def test_usage_adds_up_and_is_plain_metadata():
    a = Usage(
        calls=2, cache_hits=1, failures=1, prompt_tokens=10, completion_tokens=5, cost_usd=0.5, seconds=1
    )
    b = Usage(calls=1, skipped=3, prompt_tokens=1, completion_tokens=2, cost_usd=0.25, budget_exhausted=True)
    total = a + b
    assert (total.calls, total.cache_hits, total.failures, total.skipped) == (3, 1, 1, 3)
    assert (total.prompt_tokens, total.completion_tokens, total.tokens) == (11, 7, 18)
    assert total.cost_usd == 0.75 and total.seconds == 1 and total.budget_exhausted
    meta = total.as_metadata()
    assert meta["cost_usd"] == 0.75 and meta["budget_exhausted"] is True
    assert all(isinstance(value, int | float) for value in meta.values())


def test_progress_reports_every_position():
    seen = []
    client = mock_client()
    client.complete([ask("a"), ask("b")])
    client.complete(
        [ask("a"), ask("b"), ask("c"), ask("c")], progress=lambda done, total: seen.append((done, total))
    )
    assert seen[0] == (2, 4) and seen[-1] == (4, 4)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_api_key_stays_out_of_repr_and_errors(monkeypatch, litellm):
    secret = "sk-very-secret-123"

    def refuse(**kwargs):
        raise litellm.AuthenticationError(f"Incorrect API key provided: {kwargs['api_key']}", "openai", "m")

    monkeypatch.setattr(litellm, "completion", refuse)
    client = LLMClient(LLMConfig(model="openai/m"), api_key=secret, cache=ResponseCache.memory())
    completions, _ = client.complete([ask("x")])
    assert completions[0].error.startswith("AuthenticationError:") and "***" in completions[0].error
    assert secret not in completions[0].error
    assert secret not in repr(client) and secret not in json.dumps(client.describe())


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": -0.1},
        {"max_tokens": 0},
        {"timeout": 0},
        {"timeout_per_token": -0.1},
        {"batch_deadline": 0},
        {"retries": -1},
        {"max_concurrency": 0},
        {"budget_usd": 0},
        {"budget_tokens": 0},
        {"temprature": 0.5},  # a misspelt setting is refused, not ignored
    ],
)
def test_config_refuses_settings_out_of_range_or_unknown(bad):
    with pytest.raises(pydantic.ValidationError):
        LLMConfig(**bad)


def test_config_is_frozen_and_described_without_operational_settings():
    config = LLMConfig(model="openai/m", api_base="", budget_usd=1.0, timeout=5, retries=0)
    with pytest.raises(pydantic.ValidationError):
        config.temperature = 1.0
    assert config.api_base is None  # an unset endpoint variable arrives as ""
    assert not config.embedded and LLMConfig().embedded
    described = {"model": "openai/m", "temperature": 0.0, "max_tokens": 256, "seed": 0, "budget_usd": 1.0}
    assert config.describe() == described
    client = LLMClient(config, cache=ResponseCache.memory())
    assert client.describe() == {**described, "cache": ":memory:"} and client.model == "openai/m"


def test_client_takes_its_settings_from_the_config_only():
    with pytest.raises(TypeError, match="LLMConfig"):
        LLMClient("openai/m")
    # Sent to litellm, a setting would change answers without changing the cache key.
    with pytest.raises(TypeError, match="max_tokens, temperature"):
        LLMClient(LLMConfig(), temperature=0.5, max_tokens=3)


def test_prepare_runs_only_when_a_request_is_sent():
    prepared = []
    client = mock_client(prepare=lambda: prepared.append(True))
    client.cache.put(client.key(ask("seen")), Completion(text="from cache"))
    completions, _ = client.complete([ask("seen")])
    assert completions[0].text == "from cache" and not prepared  # nothing to generate, nothing loaded
    completions, _ = client.complete([ask("new"), ask("other")])
    assert [c.text for c in completions] == ["a property"] * 2 and prepared == [True]


def test_a_locked_cache_file_is_waited_for(tmp_path):
    path = tmp_path / "cache.duckdb"
    ResponseCache(path).put("k", Completion(text="kept"))
    # Another process (a Dagster step) holds the file for a moment.
    hold = (
        "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]);"
        "print('held', flush=True); time.sleep(1.5)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for read_only in (False, True):
            with pytest.raises(duckdb.IOException, match="(?i)lock"):
                connect_duckdb(path, timeout=0, read_only=read_only)
        assert ResponseCache(path, lock_timeout=30).get_many(["k"])["k"].text == "kept"
    finally:
        holder.wait(timeout=30)
        holder.stdout.close()
    with connect_duckdb(path, timeout=0, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM llm_responses").fetchone() == (1,)


def test_local_models_register_lazily_and_run_one_at_a_time(monkeypatch, litellm, tmp_path):
    from instruct_lf_dagster import models

    registered = []
    monkeypatch.setattr(models, "register", lambda home, threads: registered.append((home, threads)))
    real = litellm.completion
    monkeypatch.setattr(litellm, "completion", lambda **kw: real(**{**kw, "model": PRICED_MODEL}))

    cache = ResponseCache.memory()
    config = LLMConfig(model="llamacpp/smollm2-135m", max_concurrency=8)
    # What the LLM resource hands over for llamacpp/ models: models.register with the data directory.
    client = LLMClient(config, cache=cache, prepare=lambda: models.register(tmp_path, 2), mock_response="ok")
    assert client.max_concurrency == 1
    cache.put(client.key(ask("seen")), Completion(text="from cache"))
    completions, _ = client.complete([ask("seen")])
    assert completions[0].text == "from cache" and not registered  # nothing to generate, nothing loaded
    completions, _ = client.complete([ask("new")])
    assert completions[0].text == "ok" and registered == [(tmp_path, 2)]


# A real OpenAI-compatible server on 127.0.0.1: litellm's HTTP path, error mapping and timeouts.


class FakeServer:
    """POST /v1/chat/completions answered from a script of statuses ("ok", 429, 500, "sleep"...)."""

    def __init__(self, script: list = (), default="ok", sleep: float = 0.0):
        self.script = list(script)
        self.default = default
        self.sleep = sleep
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append(body)
                    # header names are case-free
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                    action = server.script.pop(0) if server.script else server.default
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up
                    self.answer(action, body)

            def answer(self, action, body):
                if action == "sleep":
                    time.sleep(server.sleep)
                    action = "ok"
                if action == "ok":
                    text = "echo: " + body["messages"][-1]["content"]
                    status, payload = (
                        200,
                        {
                            "id": "chatcmpl-1",
                            "object": "chat.completion",
                            "created": 0,
                            "model": body["model"],
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": text},
                                    "finish_reason": "stop",
                                }
                            ],
                            "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
                        },
                    )
                else:
                    status, payload = (
                        action,
                        {"error": {"message": f"scripted failure {action}", "type": "x"}},
                    )
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def client(self, **settings) -> LLMClient:
        settings.setdefault("cache", ResponseCache.memory())
        settings.setdefault("retry_backoff", 0.01)
        config, rest = split({"model": "openai/test-model", "api_base": self.api_base, **settings})
        return LLMClient(config, api_key="sk-test", **rest)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers: list[FakeServer] = []

    def start(*args, **kwargs) -> FakeServer:
        servers.append(FakeServer(*args, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.mark.integration
def test_server_rate_limit_then_error_then_success(serve):
    server = serve(script=[429, 500, "ok"])
    completions, usage = server.client(retries=3, temperature=0.0, seed=7).complete([ask("hello")])
    assert completions[0].text == "echo: hello"
    assert (completions[0].prompt_tokens, completions[0].completion_tokens) == (11, 3)
    assert len(server.requests) == 3 and usage.calls == 1 and usage.failures == 0
    sent = server.requests[-1]
    assert sent["model"] == "test-model" and sent["seed"] == 7 and sent["temperature"] == 0.0
    assert server.headers[-1]["authorization"] == "Bearer sk-test"


@pytest.mark.integration
def test_server_failing_then_recovering(serve):
    server = serve(default=500)
    client = server.client(retries=1)
    completions, usage = client.complete([ask("hello"), ask("world")])
    assert not any(c.ok for c in completions) and usage.failures == 2
    assert all(
        c.error.startswith("InternalServerError:") and "scripted failure 500" in c.error for c in completions
    )
    # retries + 1 HTTP requests per prompt: neither litellm nor the OpenAI SDK retry on top of ours.
    assert len(server.requests) == 4
    assert len(client.cache) == 0

    server.default = "ok"
    completions, usage = client.complete([ask("hello"), ask("world")])
    assert [c.text for c in completions] == ["echo: hello", "echo: world"]
    assert len(server.requests) == 6 and usage.calls == 2 and usage.cache_hits == 0

    _, usage = client.complete([ask("hello"), ask("world")])
    assert len(server.requests) == 6 and usage.cache_hits == 2


@pytest.mark.integration
def test_server_client_errors_are_not_retried(serve):
    server = serve(default=400)
    completions, _ = server.client(retries=3).complete([ask("hello")])
    assert completions[0].error.startswith("BadRequestError:")
    assert len(server.requests) == 1


@pytest.mark.integration
def test_server_timeout_is_a_recorded_failure(serve):
    server = serve(default="sleep", sleep=3.0)
    completions, usage = server.client(timeout=0.3, timeout_per_token=0, retries=0).complete([ask("slow")])
    assert "timeout" in completions[0].error.lower() or "timed out" in completions[0].error.lower()
    assert completions[0].error.startswith("Timeout:")
    assert usage.failures == 1 and len(server.requests) == 1
