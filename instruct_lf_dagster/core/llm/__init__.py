"""Provider-agnostic LLM calls (litellm) with a persistent response cache, retries, a budget and accounting.

`LLMClient(LLMConfig(...)).complete` takes a batch of chat requests and never raises for a single bad request:
each request ends as a `Completion` with either text or an error, and the batch's spending is summed in a
`Usage`. Modules: `config` (the settings), `types`, `cache`, `transport` (one litellm call), `budget`,
`client` (concurrency, cache lookups, accounting).
"""

from instruct_lf_dagster.core.llm.cache import Cache, ResponseCache, cache_key
from instruct_lf_dagster.core.llm.client import LLMClient
from instruct_lf_dagster.core.llm.config import DEFAULT_MODEL, LOCAL_PREFIX, LLMConfig
from instruct_lf_dagster.core.llm.types import Completion, Messages, Usage

__all__ = [
    "DEFAULT_MODEL",
    "LOCAL_PREFIX",
    "Cache",
    "Completion",
    "LLMClient",
    "LLMConfig",
    "Messages",
    "ResponseCache",
    "Usage",
    "cache_key",
]
