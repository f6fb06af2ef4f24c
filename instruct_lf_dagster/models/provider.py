"""The litellm custom provider `llamacpp`: `llamacpp/<model name or /abs/path.gguf>` runs in this process.

After `register(home, threads)`, `litellm.completion(model="llamacpp/<name>", messages=...)` and `acompletion`
answer through `chat`: a registered model fetched into `home`, or any local GGUF file
(`llamacpp//abs/path/model.gguf`).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from instruct_lf_dagster.models.llama import LOCK, PromptTooLongError, chat
from instruct_lf_dagster.models.registry import PROVIDER, ModelError


def _respond(
    model: str, messages: list[dict], params: dict, model_response: Any, home: Path, threads: int
) -> Any:
    """Fill litellm's `model_response` with a chat completion; errors become litellm's exceptions."""
    import litellm

    try:
        out = chat(
            model,
            messages,
            home=home,
            threads=threads,
            temperature=params.get("temperature") or 0.0,
            max_tokens=params.get("max_tokens") or params.get("max_completion_tokens"),
            seed=params.get("seed") or 0,
            stop=params.get("stop"),
            response_format=params.get("response_format"),
        )
    except PromptTooLongError as error:
        raise litellm.ContextWindowExceededError(str(error), model=model, llm_provider=PROVIDER) from error
    except ModelError as error:
        raise litellm.NotFoundError(str(error), model=model, llm_provider=PROVIDER) from error
    except ValueError as error:  # a request llama.cpp refuses: not worth retrying
        raise litellm.BadRequestError(str(error), model=model, llm_provider=PROVIDER) from error
    choice, usage = out["choices"][0], out["usage"]
    model_response.choices[0].message.content = choice["message"].get("content") or ""
    model_response.choices[0].finish_reason = choice.get("finish_reason") or "stop"
    model_response.model = f"{PROVIDER}/{model}"
    model_response.created = int(time.time())
    model_response.usage = litellm.Usage(
        prompt_tokens=usage["prompt_tokens"],
        completion_tokens=usage["completion_tokens"],
        total_tokens=usage["prompt_tokens"] + usage["completion_tokens"],
        prompt_tokens_details={"cached_tokens": usage["cached_tokens"]},
    )
    return model_response


def _provider(home: Path, threads: int) -> Any:
    from litellm import CustomLLM

    class LlamaCppProvider(CustomLLM):
        """litellm provider `llamacpp`: runs embedded GGUF models in this process."""

        def __init__(self) -> None:
            super().__init__()
            self.home, self.threads = home, threads

        def completion(
            self,
            model,
            messages,
            api_base,
            custom_prompt_dict,
            model_response,
            print_verbose,
            encoding,
            api_key,
            logging_obj,
            optional_params,
            *args,
            **kwargs,
        ):
            return _respond(model, messages, optional_params, model_response, self.home, self.threads)

        async def acompletion(self, *args, **kwargs):
            return await asyncio.to_thread(self.completion, *args, **kwargs)

    return LlamaCppProvider()


def register(home: Path, threads: int) -> None:
    """Make `llamacpp/<model or path>` usable in litellm.completion and acompletion (idempotent).

    Registered names resolve in the data directory `home`; `threads`: llama.cpp threads of a model's first
    load (see `load`). Registering again updates both for later calls.
    """
    import litellm

    with LOCK:
        for item in litellm.custom_provider_map:
            if item["provider"] == PROVIDER:
                item["custom_handler"].home, item["custom_handler"].threads = home, threads
                return
        litellm.custom_provider_map.append({"provider": PROVIDER, "custom_handler": _provider(home, threads)})
