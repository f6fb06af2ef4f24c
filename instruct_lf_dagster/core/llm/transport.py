"""One request to a model through litellm: a timeout sized to the answer, retries with backoff on transient
errors within the batch's deadline, and a Completion that carries either the answer (text, tokens, cost) or a
one-line error, never an exception."""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from types import ModuleType
from typing import Any

from instruct_lf_dagster.core.llm.config import LLMConfig
from instruct_lf_dagster.core.llm.types import Completion, Messages

log = logging.getLogger(__name__)

# Client errors worth asking again: request timeout and rate limit. Every other 4xx (auth, bad request, unknown
# model) fails the same way each time; every 5xx is worth another try.
_TRANSIENT_STATUS = {408, 429}
_MAX_BACKOFF_S = 60.0
_MAX_ERROR_CHARS = 500


def load_litellm() -> ModuleType:
    """litellm, imported on first use: it takes seconds to import and most Dagster processes never call an LLM.

    Whether it fetches its price table on import is the program's choice (LITELLM_LOCAL_MODEL_COST_MAP), made
    before this first call.
    """
    import litellm

    litellm.suppress_debug_info = True
    return litellm


def count_tokens(model: str, *, messages: Messages | None = None, text: str | None = None) -> int:
    """Tokens of a prompt or an answer under the model's tokenizer, or an estimate when it is unknown."""
    try:
        return int(load_litellm().token_counter(model=model, messages=messages, text=text))
    except Exception:  # a tokenizer litellm cannot load: about four characters a token
        size = len(json.dumps(messages)) if messages is not None else len(text or "")
        return size // 4 + 1


def list_price(model: str, prompt_tokens: int, completion_tokens: int) -> float:
    """Dollars a call of that size costs by litellm's price table; 0 for a model it does not price."""
    try:
        prompt_usd, completion_usd = load_litellm().cost_per_token(
            model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
        )
    except Exception:  # a model missing from litellm's price table
        return 0.0
    return prompt_usd + completion_usd


def _timed_out(error: BaseException) -> bool:
    import openai  # litellm.Timeout derives from openai.APITimeoutError

    return isinstance(error, openai.APITimeoutError | TimeoutError)


def is_transient(error: BaseException) -> bool:
    """Whether a failed call is worth another try: timeouts, lost connections, 408, 429 and 5xx."""
    status = getattr(error, "status_code", None)
    if isinstance(status, int) and 400 <= status < 500:
        return status in _TRANSIENT_STATUS
    import openai  # litellm's Timeout and APIConnectionError derive from these

    litellm = load_litellm()
    if isinstance(
        error,
        openai.APIConnectionError
        | litellm.RateLimitError
        | litellm.InternalServerError
        | litellm.ServiceUnavailableError
        | litellm.BadGatewayError
        | TimeoutError
        | ConnectionError,
    ):
        return True
    return isinstance(status, int) and status >= 500


def endpoint(config: LLMConfig) -> str:
    """Where the calls go, for messages: `api_base`, or the provider's default endpoint."""
    if config.api_base:
        return config.api_base
    if config.embedded:
        return "llama.cpp in this process"
    try:
        _, provider, _, base = load_litellm().get_llm_provider(config.model)
    except Exception:  # a provider litellm does not know (custom ones are registered at run time)
        provider, base = config.model.partition("/")[0], None
    return base or f"the {provider} provider's default endpoint"


def deadline_error(config: LLMConfig) -> str:
    """The error of a request the batch's deadline left unanswered."""
    return (
        f"DeadlineExceeded: the batch's deadline (batch_deadline={config.batch_deadline:g} s) passed before an "
        "answer; answered requests are cached, a re-run asks only the rest"
    )


def _retry_after(error: Exception) -> float | None:
    """The server's Retry-After (seconds), when it sent one."""
    headers = getattr(getattr(error, "response", None), "headers", None)
    try:
        return float(headers.get("retry-after")) if headers is not None else None
    except (TypeError, ValueError):
        return None


class Transport:
    """Sends one request at a time (thread-safe: it keeps no per-call state) under fixed settings.

    Each HTTP call may take `config.call_timeout` seconds (less when the batch's deadline is nearer).
    `config.retries` counts extra attempts for transient failures (see `is_transient`) with exponential backoff
    from `retry_backoff` seconds (or the server's Retry-After); litellm's and the OpenAI SDK's own retries are
    switched off so that one request makes at most `retries + 1` HTTP calls. `extra` goes to
    `litellm.completion` unchanged (e.g. `mock_response` in tests) and may be changed in place.
    """

    def __init__(
        self,
        config: LLMConfig,
        *,
        api_key: str | None = None,
        retry_backoff: float = 1.0,
        extra: dict[str, Any] | None = None,
    ):
        self.config = config
        self._api_key = api_key
        self.retry_backoff = retry_backoff
        self.extra: dict[str, Any] = {} if extra is None else extra

    def send(
        self,
        messages: Messages,
        response_format: dict | None = None,
        *,
        deadline: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Completion:
        """One request with retries, given up at `deadline` (a `time.monotonic()` value) or once `cancel` is
        set; never raises."""
        litellm = load_litellm()
        kwargs = self._arguments(messages, response_format)
        attempt = 0
        while True:
            if cancel is not None and cancel.is_set():
                return Completion(error="Cancelled: the batch stopped before this request was answered")
            timeout = self._attempt_timeout(deadline)
            if timeout is None:
                return Completion(error=deadline_error(self.config), transient=True)
            kwargs["timeout"] = timeout
            try:
                return self._read(litellm.completion(**kwargs), messages)
            except Exception as error:
                transient = is_transient(error)
                delay = self._backoff(error, attempt)
                # A server that let a whole call time out is asked once more, not `retries` times: each try
                # costs the full call timeout. No retry that the deadline would cut short either: the error
                # says more than "deadline passed".
                limit = min(1, self.config.retries) if _timed_out(error) else self.config.retries
                if transient and attempt < limit and not _past(deadline, delay):
                    attempt += 1
                    log.info(
                        "LLM call failed (%s), retry %d/%d in %.1fs",
                        type(error).__name__,
                        attempt,
                        self.config.retries,
                        delay,
                    )
                    if cancel is None:
                        time.sleep(delay)
                    else:
                        cancel.wait(delay)  # an interrupted batch does not wait out the backoff
                    continue
                message = self.error_text(error, attempt)
                log.warning("LLM call failed: %s", message)
                return Completion(error=message, transient=transient)

    def _backoff(self, error: Exception, attempt: int) -> float:
        delay = _retry_after(error)
        if delay is None:
            delay = self.retry_backoff * 2**attempt * random.uniform(0.5, 1.0)
        return min(delay, _MAX_BACKOFF_S)

    def _attempt_timeout(self, deadline: float | None) -> float | None:
        """Seconds the next HTTP call may take; None when the deadline has passed."""
        if deadline is None:
            return self.config.call_timeout
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        # Whole seconds: litellm keeps an HTTP client per distinct timeout.
        return min(self.config.call_timeout, float(math.ceil(left)))

    def _arguments(self, messages: Messages, response_format: dict | None) -> dict[str, Any]:
        config = self.config
        kwargs: dict[str, Any] = {
            "model": config.model,
            "messages": messages,
            "temperature": config.temperature,
            "max_tokens": config.max_tokens,
            # Retries are ours alone: litellm's would add its own and the OpenAI SDK's attempts on top.
            "num_retries": 0,
            "max_retries": 0,
            "drop_params": True,
        }
        if config.seed is not None:
            kwargs["seed"] = config.seed
        if response_format is not None:
            kwargs["response_format"] = response_format
        if config.api_base:
            kwargs["api_base"] = config.api_base
        if self._api_key:
            kwargs["api_key"] = self._api_key
        kwargs.update(self.extra)
        return kwargs

    def error_text(self, error: Exception, retries: int) -> str:
        """The error as one line, `<type>: <message>`, with the api key masked and the retries made said."""
        name = type(error).__name__
        message = " ".join(str(error).split())
        # litellm repeats the type ("litellm.Timeout: Timeout: ..."); say it once.
        for prefix in (f"litellm.{name}: ", f"{name}: "):
            message = message.removeprefix(prefix)
        if self._api_key:
            message = message.replace(self._api_key, "***")
        message = message[:_MAX_ERROR_CHARS]
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
            prompt_tokens = count_tokens(self.config.model, messages=messages)
        if not isinstance(completion_tokens, int):
            completion_tokens = count_tokens(self.config.model, text=text) if text else 0
        return Completion(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=_cost(response),
        )


def _past(deadline: float | None, delay: float) -> bool:
    return deadline is not None and time.monotonic() + delay >= deadline


def _cost(response: Any) -> float:
    hidden = getattr(response, "_hidden_params", None) or {}
    cost = hidden.get("response_cost") if isinstance(hidden, dict) else None
    if isinstance(cost, int | float):
        return float(cost)
    try:
        return float(load_litellm().completion_cost(completion_response=response) or 0.0)
    except Exception:  # unpriced model (local or self-hosted): free as far as we know
        return 0.0
