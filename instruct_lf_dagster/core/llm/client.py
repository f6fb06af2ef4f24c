"""`LLMClient`: answers a batch of chat requests concurrently, from the cache where it can, within a budget and
a deadline, and sums what the batch cost. It never raises for a single bad request."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any

from instruct_lf_dagster.core.llm.budget import NOTHING, Budget, Estimate
from instruct_lf_dagster.core.llm.cache import Cache, cache_key, request_record
from instruct_lf_dagster.core.llm.config import LLMConfig
from instruct_lf_dagster.core.llm.transport import Transport, deadline_error, endpoint
from instruct_lf_dagster.core.llm.types import Completion, Messages, Usage

log = logging.getLogger(__name__)

# Calls of a batch that failed at the endpoint (after their retries) before any was answered: the endpoint is
# down, and the rest of the batch is not sent.
GIVE_UP_AFTER = 4
_TICK_S = 1.0  # how often the wait for answers looks at the clock (the deadline, progress)
_HEARTBEAT_S = 30.0  # progress is reported again after this long without an answer
# Past the deadline, calls still in flight (a server trickling bytes outlives its timeout) are abandoned after this.
_GRACE_S = 5.0
# Errors of the batch's own limits, not the endpoint's: they say nothing about why calls fail.
_NOT_THE_ENDPOINTS = ("DeadlineExceeded:", "Cancelled:")


class LLMClient:
    """Batch chat completions through litellm under `config`, with cache, retries, concurrency and a budget.

    `cache`: where successes persist (None: nowhere). `prepare`: called before requests go to the provider,
    and only then (a batch answered from the cache never calls it), e.g. to register an in-process litellm
    provider; it must be idempotent. The budget spans the client's lifetime; cached responses are always
    served, even past the budget. A batch ends by `config.batch_deadline`, and once its first
    `GIVE_UP_AFTER` calls failed at the endpoint, the rest is not sent. `retry_backoff`: seconds before the
    first retry (see `Transport`). Extra keyword arguments go to `litellm.completion` unchanged (e.g.
    `mock_response` in tests); they are not part of the cache key, so settings of `LLMConfig` are refused
    there.
    """

    def __init__(
        self,
        config: LLMConfig,
        *,
        api_key: str | None = None,
        cache: Cache | None = None,
        prepare: Callable[[], None] | None = None,
        retry_backoff: float = 1.0,
        **litellm_kwargs: Any,
    ):
        if not isinstance(config, LLMConfig):
            raise TypeError(f"LLMClient takes an LLMConfig, not {type(config).__name__}")
        shadowed = sorted(set(litellm_kwargs) & set(LLMConfig.model_fields))
        if shadowed:
            raise TypeError(f"{', '.join(shadowed)}: set in LLMConfig, where the cache key sees them")
        self.config = config
        self.cache = cache
        self._api_key = api_key
        self._prepare = prepare
        # One embedded model instance serves one request at a time.
        self.max_concurrency = 1 if config.embedded else config.max_concurrency
        self._transport = Transport(
            config, api_key=api_key, retry_backoff=retry_backoff, extra=litellm_kwargs
        )
        self._budget = Budget(config)
        self.spent = Usage()  # everything this client has paid for, across `complete` calls
        self.last_error: str | None = None  # the latest error of a call to the endpoint

    @property
    def model(self) -> str:
        return self.config.model

    @property
    def endpoint(self) -> str:
        """Where the calls go: `api_base`, or the provider's default endpoint."""
        return endpoint(self.config)

    @property
    def litellm_kwargs(self) -> dict[str, Any]:
        """The extra arguments of every `litellm.completion` call (changes apply to later calls)."""
        return self._transport.extra

    def __repr__(self) -> str:
        key = ", api_key='***'" if self._api_key else ""
        return f"LLMClient(model={self.config.model!r}, api_base={self.config.api_base!r}{key})"

    def describe(self) -> dict[str, Any]:
        """The settings that shape responses (never the api key), for metadata and logs; unset ones left out."""
        settings = self.config.describe()
        if self.cache is not None:
            settings["cache"] = self.cache.path
        return settings

    def _request(self, messages: Messages, response_format: dict | None) -> dict[str, Any]:
        config = self.config
        return dict(
            model=config.model,
            messages=messages,
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            seed=config.seed,
            response_format=response_format,
        )

    def key(self, messages: Messages, response_format: dict | None = None) -> str:
        """The cache key of one request under this client's settings."""
        return cache_key(**self._request(messages, response_format))

    def complete(
        self,
        requests: Sequence[Messages],
        *,
        response_format: dict | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[list[Completion], Usage]:
        """Answer every request (a list of chat messages); results are in request order.

        Identical requests are asked once, cached ones cost nothing, each success is cached as soon as it
        arrives, and a failing, unaffordable or late request becomes a Completion with `error` set.
        `progress(done, total)` hears every answer, and the same count again while calls take long.
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

        def waiting(calls: int) -> None:
            seconds = time.monotonic() - started
            log.info(
                "LLM: %d/%d answered, %d calls to %s in flight, %.0f s",
                done,
                total,
                calls,
                self.endpoint,
                seconds,
            )
            if progress is not None:
                progress(done, total)

        pending = {key: messages for key, messages in unique.items() if key not in results}
        stop_reason, unaffordable = self._dispatch(pending, response_format, usage, finished, waiting)
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
        waiting: Callable[[int], None],
    ) -> tuple[str | None, list[str]]:
        """Call the provider for every pending request while the budget, the deadline and the endpoint allow;
        cache each success.

        Returns why the budget stopped it early (None if it did not) and the keys it did not send for that.
        """
        if pending and self._prepare is not None:
            self._prepare()
        config = self.config
        deadline = None if config.batch_deadline is None else time.monotonic() + config.batch_deadline
        cancel = threading.Event()  # tells the calls still running to give up
        queue = iter(pending)
        in_flight: dict[Future[Completion], tuple[str, Estimate]] = {}
        # Calls in flight are not paid yet; their estimates count against the budget until they are.
        reserved = NOTHING
        stop_reason: str | None = None
        unaffordable: list[str] = []
        answered, endpoint_failures = False, 0
        news = time.monotonic()

        def fail(key: str, error: str) -> None:
            # Not sent, or abandoned: a failure asked again next time, never a call paid for.
            usage.failures += 1
            self.spent.failures += 1
            finished(key, Completion(error=error, transient=True))

        try:
            while True:
                while stop_reason is None and len(in_flight) < self.max_concurrency:
                    # Until an answer comes, no more calls than it takes to find the endpoint down.
                    if not answered and in_flight and len(in_flight) + endpoint_failures >= GIVE_UP_AFTER:
                        break
                    key = next(queue, None)
                    if key is None:
                        break
                    if deadline is not None and time.monotonic() >= deadline:
                        fail(key, deadline_error(config))
                        continue
                    if not answered and endpoint_failures >= GIVE_UP_AFTER:
                        fail(key, self._unavailable(endpoint_failures))
                        continue
                    estimate = self._budget.estimate(pending[key])
                    stop_reason = self._budget.refusal(self.spent, reserved, estimate)
                    if stop_reason is not None:
                        unaffordable = [key, *queue]
                        break
                    reserved = reserved + estimate
                    future = _start(
                        self._transport.send, pending[key], response_format, deadline=deadline, cancel=cancel
                    )
                    in_flight[future] = (key, estimate)
                if not in_flight:
                    return stop_reason, unaffordable
                ready, _ = wait(in_flight, timeout=_TICK_S, return_when=FIRST_COMPLETED)
                now = time.monotonic()
                if not ready:
                    if deadline is not None and now > deadline + _GRACE_S:
                        log.warning("LLM: %d calls outlived the batch deadline, abandoned", len(in_flight))
                        cancel.set()
                        for key, estimate in in_flight.values():
                            reserved = reserved - estimate
                            fail(key, deadline_error(config))
                        in_flight.clear()
                    elif now - news >= _HEARTBEAT_S:
                        waiting(len(in_flight))
                        news = now
                    continue
                news = now
                for future in ready:
                    key, estimate = in_flight.pop(future)
                    reserved = reserved - estimate
                    completion = future.result()
                    usage.record(completion)
                    self.spent.record(completion)
                    self._budget.observe(completion)
                    answered = answered or completion.ok
                    endpoint_failures += completion.transient
                    if completion.error is not None and not completion.error.startswith(_NOT_THE_ENDPOINTS):
                        self.last_error = completion.error
                    if completion.ok and self.cache is not None:
                        request = request_record(**self._request(pending[key], response_format))
                        self.cache.put(key, completion, model=self.config.model, request=request)
                    finished(key, completion)
        finally:
            # Returned, or interrupted (SIGTERM, Ctrl-C): calls still running stop at their next step, and their
            # daemon threads never hold up the interpreter's exit.
            cancel.set()

    def _unavailable(self, failures: int) -> str:
        return (
            f"EndpointUnavailable: the first {failures} calls to {self.endpoint} failed, the last with "
            f"{self.last_error}; the rest of the batch was not sent"
        )


def _start(call: Callable[..., Completion], *args: Any, **kwargs: Any) -> Future[Completion]:
    """`call(*args, **kwargs)` on a daemon thread.

    A ThreadPoolExecutor's workers are joined when the interpreter exits, so a run stopped by SIGTERM waited
    for every call stuck in the network; a daemon thread is not waited for.
    """
    future: Future[Completion] = Future()
    future.set_running_or_notify_cancel()

    def run() -> None:
        try:
            future.set_result(call(*args, **kwargs))
        except BaseException as error:  # handed to the waiting thread, which raises it
            future.set_exception(error)

    threading.Thread(target=run, name="llm-call", daemon=True).start()
    return future
