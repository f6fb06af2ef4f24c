"""Provider-agnostic LLM calls (litellm) with a persistent response cache, retries, a budget and accounting.

`LLMClient.complete` takes a batch of chat requests and never raises for a single bad request: each request
ends as a `Completion` with either text or an error, and the batch's spending is summed in a `Usage`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import duckdb

from instruct_lf_dagster.core.paths import offline_defaults

log = logging.getLogger(__name__)

LOCAL_PREFIX = "llamacpp/"
# HTTP statuses worth asking again: request timeout, lock conflict, rate limit, and every server error.
_TRANSIENT_STATUS = {408, 409, 429}
_MAX_BACKOFF_S = 60.0

Messages = list[dict[str, Any]]

_TABLE = """
CREATE TABLE IF NOT EXISTS llm_responses (
    key VARCHAR PRIMARY KEY,
    model VARCHAR,
    request VARCHAR,
    text VARCHAR,
    prompt_tokens BIGINT,
    completion_tokens BIGINT,
    cost_usd DOUBLE,
    created_at TIMESTAMP
)
"""


@dataclass
class Completion:
    """The outcome of one request: `text` on success, `error` ("<type>: <message>") otherwise.

    A cached completion carries the tokens and cost of the call that first produced it (not spent again).
    """

    text: str | None = None
    error: str | None = None
    cached: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Usage:
    """What a batch cost. Counts are over distinct requests; tokens and cost only over calls paid now."""

    calls: int = 0
    cache_hits: int = 0
    failures: int = 0
    skipped: int = 0  # not sent because the budget would have been exceeded
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    budget_exhausted: bool = False

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        summed = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in dataclasses.fields(self)
            if f.name != "budget_exhausted"
        }
        return Usage(**summed, budget_exhausted=self.budget_exhausted or other.budget_exhausted)

    def as_metadata(self) -> dict[str, int | float | bool]:
        """Plain numbers, ready for Dagster metadata."""
        meta = dataclasses.asdict(self)
        meta["cost_usd"] = round(self.cost_usd, 6)
        meta["seconds"] = round(self.seconds, 3)
        return meta


def cache_key(
    model: str,
    messages: Messages,
    *,
    temperature: float,
    max_tokens: int,
    seed: int | None,
    response_format: dict | None = None,
) -> str:
    """sha256 of the canonical JSON of everything that changes a response."""
    request = _request_record(model, messages, temperature, max_tokens, seed, response_format)
    return hashlib.sha256(request.encode("utf-8")).hexdigest()


def _request_record(
    model: str,
    messages: Messages,
    temperature: float,
    max_tokens: int,
    seed: int | None,
    response_format: dict | None,
) -> str:
    # float()/int() so that 0 and 0.0 give the same key.
    record = {
        "model": model,
        "messages": messages,
        "temperature": float(temperature),
        "max_tokens": int(max_tokens),
        "seed": None if seed is None else int(seed),
        "response_format": response_format,
    }
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


class Cache(Protocol):
    """Where successful responses persist: `ResponseCache` (a DuckDB file) or an object store."""

    path: str

    def get_many(self, keys: Sequence[str]) -> dict[str, Completion]: ...

    def put(self, key: str, completion: Completion, *, model: str = "", request: str = "") -> None: ...


class ResponseCache:
    """Successful LLM responses in a DuckDB table, keyed by `cache_key`.

    A file cache opens a short-lived connection per operation, because DuckDB lets only one process hold a
    database file for writing and Dagster may run steps in several processes; a locked file is retried.
    """

    def __init__(self, path: str | Path, *, lock_timeout: float = 120.0):
        self.path = str(path)
        self.lock_timeout = lock_timeout
        self._guard = threading.Lock()
        # An in-memory database lives only as long as its connection, so that one is kept.
        self._memory = duckdb.connect(":memory:") if self.path == ":memory:" else None
        if self._memory is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute(_TABLE)

    @classmethod
    def memory(cls) -> ResponseCache:
        """A cache that lives as long as this object (for tests)."""
        return cls(":memory:")

    def __repr__(self) -> str:
        return f"ResponseCache({self.path!r})"

    @contextmanager
    def _connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._guard:
            if self._memory is not None:
                yield self._memory
                return
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    con = duckdb.connect(self.path)
                    break
                except duckdb.IOException as error:
                    if "lock" not in str(error).lower() or time.monotonic() > deadline:
                        raise
                    time.sleep(random.uniform(0.05, 0.5))
            try:
                yield con
            finally:
                con.close()

    def get_many(self, keys: Sequence[str]) -> dict[str, Completion]:
        """The cached completions among `keys` (marked cached)."""
        if not keys:
            return {}
        with self._connect() as con:
            rows = con.execute(
                "SELECT key, text, prompt_tokens, completion_tokens, cost_usd FROM llm_responses"
                " WHERE key = ANY(?)",
                [list(keys)],
            ).fetchall()
        return {
            key: Completion(text=text, cached=True, prompt_tokens=pt, completion_tokens=ct, cost_usd=cost)
            for key, text, pt, ct, cost in rows
        }

    def put(self, key: str, completion: Completion, *, model: str = "", request: str = "") -> None:
        """Store a successful completion; errors are never stored, so they are asked again next time."""
        if completion.error is not None or completion.text is None:
            raise ValueError("only successful completions are cached")
        with self._connect() as con:
            con.execute(
                "INSERT OR REPLACE INTO llm_responses VALUES (?, ?, ?, ?, ?, ?, ?, now())",
                [
                    key,
                    model,
                    request,
                    completion.text,
                    completion.prompt_tokens,
                    completion.completion_tokens,
                    completion.cost_usd,
                ],
            )

    def __len__(self) -> int:
        with self._connect() as con:
            return con.execute("SELECT count(*) FROM llm_responses").fetchone()[0]


def _litellm():
    # Imported on first use: litellm takes seconds to import and most Dagster processes never call an LLM.
    offline_defaults()
    import litellm

    litellm.suppress_debug_info = True
    return litellm


def _is_transient(error: Exception) -> bool:
    import litellm

    if isinstance(
        error,
        litellm.RateLimitError
        | litellm.InternalServerError
        | litellm.ServiceUnavailableError
        | litellm.BadGatewayError
        | litellm.APIConnectionError
        | litellm.Timeout,
    ):
        return True
    status = getattr(error, "status_code", None)
    return isinstance(status, int) and (status in _TRANSIENT_STATUS or status >= 500)


def _retry_after(error: Exception) -> float | None:
    """The server's Retry-After (seconds), when it sent one."""
    headers = getattr(getattr(error, "response", None), "headers", None)
    try:
        return float(headers.get("retry-after")) if headers is not None else None
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class _Estimate:
    """Tokens and dollars a call may take (an upper bound) or that calls in flight may take together."""

    tokens: int
    usd: float

    def __add__(self, other: _Estimate) -> _Estimate:
        return _Estimate(self.tokens + other.tokens, self.usd + other.usd)

    def __sub__(self, other: _Estimate) -> _Estimate:
        return _Estimate(self.tokens - other.tokens, self.usd - other.usd)


class LLMClient:
    """Batch chat completions through litellm, with cache, retries, concurrency, budget and accounting.

    `retries` counts extra attempts for transient failures (429, 5xx, timeouts, lost connections) with
    exponential backoff from `retry_backoff` seconds (or the server's Retry-After); litellm's and the OpenAI
    SDK's own retries are switched off so that one request makes at most `retries + 1` HTTP calls.
    The budget spans the client's lifetime; cached responses are always served, even past the budget.
    Extra keyword arguments go to `litellm.completion` unchanged (e.g. `mock_response` in tests); they
    are not part of the cache key.
    """

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        temperature: float = 0.0,
        max_tokens: int = 256,
        timeout: float = 120.0,
        retries: int = 3,
        max_concurrency: int = 4,
        budget_usd: float | None = None,
        budget_tokens: int | None = None,
        cache: Cache | None = None,
        seed: int | None = 0,
        retry_backoff: float = 1.0,
        **litellm_kwargs: Any,
    ):
        self.model = model
        self.api_base = api_base
        self._api_key = api_key
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.retries = max(0, retries)
        self.is_local = model.startswith(LOCAL_PREFIX)
        # One embedded model instance serves one request at a time.
        self.max_concurrency = 1 if self.is_local else max(1, max_concurrency)
        self.budget_usd = budget_usd
        self.budget_tokens = budget_tokens
        self.cache = cache
        self.seed = seed
        self.retry_backoff = retry_backoff
        self.litellm_kwargs = litellm_kwargs
        self.spent = Usage()  # everything this client has paid for, across `complete` calls
        self._largest_call_usd = 0.0

    def __repr__(self) -> str:
        key = ", api_key='***'" if self._api_key else ""
        return f"LLMClient(model={self.model!r}, api_base={self.api_base!r}{key})"

    def describe(self) -> dict[str, Any]:
        """The settings that shape responses (never the api key), for metadata and logs; unset ones left out."""
        settings = {
            "model": self.model,
            "api_base": self.api_base,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "budget_usd": self.budget_usd,
            "budget_tokens": self.budget_tokens,
            "cache": self.cache.path if self.cache is not None else None,
        }
        return {name: value for name, value in settings.items() if value is not None}

    def key(self, messages: Messages, response_format: dict | None = None) -> str:
        """The cache key of one request under this client's settings."""
        return cache_key(
            self.model,
            messages,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            seed=self.seed,
            response_format=response_format,
        )

    def complete(
        self,
        requests: Sequence[Messages],
        *,
        response_format: dict | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[list[Completion], Usage]:
        """Answer every request (a list of chat messages); results are in request order.

        Identical requests are asked once, cached ones cost nothing, each success is cached as soon as it
        arrives, and a failing or unaffordable request becomes a Completion with `error` set.
        """
        started = time.monotonic()
        usage = Usage()
        total = len(requests)
        keys = [self.key(messages, response_format) for messages in requests]
        positions: dict[str, list[int]] = {}
        for index, key in enumerate(keys):
            positions.setdefault(key, []).append(index)
        unique = {key: requests[indices[0]] for key, indices in positions.items()}

        results: dict[str, Completion] = self.cache.get_many(list(unique)) if self.cache is not None else {}
        usage.cache_hits = len(results)
        done = sum(len(positions[key]) for key in results)
        if progress is not None and done:
            progress(done, total)

        def finished(key: str, completion: Completion) -> None:
            nonlocal done
            results[key] = completion
            done += len(positions[key])
            if progress is not None:
                progress(done, total)

        pending = {key: messages for key, messages in unique.items() if key not in results}
        stop_reason, unaffordable = self._dispatch(pending, response_format, usage, finished)
        if stop_reason is not None:
            usage.budget_exhausted = self.spent.budget_exhausted = True
            usage.skipped = len(unaffordable)
            self.spent.skipped += usage.skipped
            log.warning("LLM %s; %d requests not sent", stop_reason, usage.skipped)
            for key in unaffordable:
                finished(key, Completion(error=f"budget exhausted: {stop_reason}"))

        usage.seconds = time.monotonic() - started
        self.spent.seconds += usage.seconds
        self.spent.cache_hits += usage.cache_hits
        return [dataclasses.replace(results[key]) for key in keys], usage

    def _dispatch(
        self,
        pending: dict[str, Messages],
        response_format: dict | None,
        usage: Usage,
        finished: Callable[[str, Completion], None],
    ) -> tuple[str | None, list[str]]:
        """Call the provider for every pending request while the budget allows; cache each success.

        Returns why it stopped early (None if it did not) and the keys it did not send.
        """
        if pending and self.is_local:
            from instruct_lf_dagster.core import local_models

            local_models.register()
        queue = iter(pending)
        in_flight: dict[Future[Completion], tuple[str, _Estimate]] = {}
        # Calls in flight are not paid yet; their estimates count against the budget until they are.
        reserved = _Estimate(0, 0.0)
        stop_reason: str | None = None
        unaffordable: list[str] = []
        with ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="llm") as pool:
            while True:
                while stop_reason is None and len(in_flight) < self.max_concurrency:
                    key = next(queue, None)
                    if key is None:
                        break
                    estimate = self._estimate(pending[key])
                    stop_reason = self._over_budget(reserved, estimate)
                    if stop_reason is not None:
                        unaffordable = [key, *queue]
                        break
                    reserved = reserved + estimate
                    in_flight[pool.submit(self._call, pending[key], response_format)] = (key, estimate)
                if not in_flight:
                    return stop_reason, unaffordable
                ready, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in ready:
                    key, estimate = in_flight.pop(future)
                    reserved = reserved - estimate
                    completion = future.result()
                    self._account(usage, completion)
                    if completion.ok and self.cache is not None:
                        request = _request_record(
                            self.model,
                            pending[key],
                            self.temperature,
                            self.max_tokens,
                            self.seed,
                            response_format,
                        )
                        self.cache.put(key, completion, model=self.model, request=request)
                    finished(key, completion)

    def _account(self, usage: Usage, completion: Completion) -> None:
        for total in (usage, self.spent):
            total.calls += 1
            total.failures += 0 if completion.ok else 1
            total.prompt_tokens += completion.prompt_tokens
            total.completion_tokens += completion.completion_tokens
            total.cost_usd += completion.cost_usd
        self._largest_call_usd = max(self._largest_call_usd, completion.cost_usd)

    def _over_budget(self, reserved: _Estimate, estimate: _Estimate) -> str | None:
        """Why the next call must not be made, or None when the budget allows it."""
        if self.budget_tokens is not None:
            committed = self.spent.tokens + reserved.tokens
            if committed + estimate.tokens > self.budget_tokens:
                return (
                    f"{committed} of budget_tokens={self.budget_tokens} tokens used or in flight,"
                    f" next call may take {estimate.tokens}"
                )
        if self.budget_usd is not None:
            committed_usd = self.spent.cost_usd + reserved.usd
            if committed_usd + estimate.usd > self.budget_usd:
                return (
                    f"${committed_usd:.6f} of budget_usd=${self.budget_usd:.6f} spent or in flight,"
                    f" next call may cost ${estimate.usd:.6f}"
                )
        return None

    def _estimate(self, messages: Messages) -> _Estimate:
        """An upper bound of the next call's tokens and cost (0 tokens and $0 when there is no budget)."""
        if self.budget_tokens is None and self.budget_usd is None:
            return _Estimate(0, 0.0)
        prompt = self._count_tokens(messages=messages)
        tokens = prompt + self.max_tokens
        if self.budget_usd is None:
            return _Estimate(tokens, 0.0)
        try:
            prompt_usd, completion_usd = _litellm().cost_per_token(
                model=self.model, prompt_tokens=prompt, completion_tokens=self.max_tokens
            )
            usd = prompt_usd + completion_usd
        except Exception:  # a model missing from litellm's price table
            usd = 0.0
        # An unpriced model may still report costs: assume the dearest call seen so far.
        return _Estimate(tokens, usd or self._largest_call_usd)

    def _count_tokens(self, *, messages: Messages | None = None, text: str | None = None) -> int:
        try:
            return int(_litellm().token_counter(model=self.model, messages=messages, text=text))
        except Exception:  # a tokenizer litellm cannot load: about four characters a token
            size = len(json.dumps(messages)) if messages is not None else len(text or "")
            return size // 4 + 1

    def _call(self, messages: Messages, response_format: dict | None) -> Completion:
        """One request with retries; never raises."""
        litellm = _litellm()
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "timeout": self.timeout,
            # Retries are ours alone: litellm's would add its own and the OpenAI SDK's attempts on top.
            "num_retries": 0,
            "max_retries": 0,
            "drop_params": True,
        }
        if self.seed is not None:
            kwargs["seed"] = self.seed
        if response_format is not None:
            kwargs["response_format"] = response_format
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self._api_key:
            kwargs["api_key"] = self._api_key
        kwargs.update(self.litellm_kwargs)

        attempt = 0
        while True:
            try:
                response = litellm.completion(**kwargs)
                return self._read(response, messages)
            except Exception as error:
                if attempt < self.retries and _is_transient(error):
                    delay = _retry_after(error)
                    if delay is None:
                        delay = self.retry_backoff * 2**attempt * random.uniform(0.5, 1.0)
                    attempt += 1
                    log.info(
                        "LLM call failed (%s), retry %d/%d in %.1fs",
                        type(error).__name__,
                        attempt,
                        self.retries,
                        delay,
                    )
                    time.sleep(min(delay, _MAX_BACKOFF_S))
                    continue
                message = self._describe_error(error, attempt)
                log.warning("LLM call failed: %s", message)
                return Completion(error=message)

    def _describe_error(self, error: Exception, retries: int) -> str:
        name = type(error).__name__
        message = " ".join(str(error).split())
        # litellm repeats the type ("litellm.Timeout: Timeout: ..."); say it once.
        for prefix in (f"litellm.{name}: ", f"{name}: "):
            message = message.removeprefix(prefix)
        if self._api_key:
            message = message.replace(self._api_key, "***")
        message = message[:500]
        suffix = f" (after {retries} retries)" if retries else ""
        return f"{name}: {message}{suffix}"

    def _read(self, response: Any, messages: Messages) -> Completion:
        """Text, tokens and cost of a response; tolerant of missing content or usage."""
        choices = getattr(response, "choices", None) or []
        if not choices:
            return Completion(error="EmptyResponse: the response has no choices")
        message = getattr(choices[0], "message", None)
        content = getattr(message, "content", None)
        text = content if isinstance(content, str) else ("" if content is None else str(content))
        usage = getattr(response, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        completion_tokens = getattr(usage, "completion_tokens", None)
        # Without usage the budget still needs numbers: count the tokens ourselves.
        if not isinstance(prompt_tokens, int):
            prompt_tokens = self._count_tokens(messages=messages)
        if not isinstance(completion_tokens, int):
            completion_tokens = self._count_tokens(text=text) if text else 0
        return Completion(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=self._cost(response),
        )

    @staticmethod
    def _cost(response: Any) -> float:
        hidden = getattr(response, "_hidden_params", None) or {}
        cost = hidden.get("response_cost") if isinstance(hidden, dict) else None
        if isinstance(cost, int | float):
            return float(cost)
        try:
            return float(_litellm().completion_cost(completion_response=response) or 0.0)
        except Exception:  # unpriced model (local or self-hosted): free as far as we know
            return 0.0
