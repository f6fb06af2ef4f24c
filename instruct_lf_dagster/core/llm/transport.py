"""One request to a model through litellm: retries with backoff on transient errors, and a Completion that
carries either the answer (text, tokens, cost) or a one-line error, never an exception."""

from __future__ import annotations

import json
import logging
import random
import time
from types import ModuleType
from typing import Any

from instruct_lf_dagster.core.llm.config import LLMConfig
from instruct_lf_dagster.core.llm.types import Completion, Messages

log = logging.getLogger(__name__)

# HTTP statuses worth asking again: request timeout, lock conflict, rate limit, and every server error.
_TRANSIENT_STATUS = {408, 409, 429}
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


def _is_transient(error: Exception) -> bool:
    litellm = load_litellm()
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


class Transport:
    """Sends one request at a time (thread-safe: it keeps no per-call state) under fixed settings.

    `config.retries` counts extra attempts for transient failures (429, 5xx, timeouts, lost connections) with
    exponential backoff from `retry_backoff` seconds (or the server's Retry-After); litellm's and the OpenAI
    SDK's own retries are switched off so that one request makes at most `retries + 1` HTTP calls. `extra`
    goes to `litellm.completion` unchanged (e.g. `mock_response` in tests) and may be changed in place.
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

    def send(self, messages: Messages, response_format: dict | None = None) -> Completion:
        """One request with retries; never raises."""
        litellm = load_litellm()
        kwargs = self._arguments(messages, response_format)
        attempt = 0
        while True:
            try:
                return self._read(litellm.completion(**kwargs), messages)
            except Exception as error:
                if attempt < self.config.retries and _is_transient(error):
                    delay = _retry_after(error)
                    if delay is None:
                        delay = self.retry_backoff * 2**attempt * random.uniform(0.5, 1.0)
                    attempt += 1
                    log.info(
                        "LLM call failed (%s), retry %d/%d in %.1fs",
                        type(error).__name__,
                        attempt,
                        self.config.retries,
                        delay,
                    )
                    time.sleep(min(delay, _MAX_BACKOFF_S))
                    continue
                message = self.error_text(error, attempt)
                log.warning("LLM call failed: %s", message)
                return Completion(error=message)

    def _arguments(self, messages: Messages, response_format: dict | None) -> dict[str, Any]:
        config = self.config
        kwargs: dict[str, Any] = {
            "model": config.model,
            "messages": messages,
            "temperature": config.temperature,
            "max_tokens": config.max_tokens,
            "timeout": config.timeout,
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


def _cost(response: Any) -> float:
    hidden = getattr(response, "_hidden_params", None) or {}
    cost = hidden.get("response_cost") if isinstance(hidden, dict) else None
    if isinstance(cost, int | float):
        return float(cost)
    try:
        return float(load_litellm().completion_cost(completion_response=response) or 0.0)
    except Exception:  # unpriced model (local or self-hosted): free as far as we know
        return 0.0
