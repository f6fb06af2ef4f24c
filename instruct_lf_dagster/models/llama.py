"""Running an embedded model in this process through llama-cpp-python: load once, chat, count.

Consecutive calls that share a prompt prefix (system prompt, worked examples) read only the new tokens: one
loaded model per file reuses the KV cache of the longest common prefix, in whole chunks.

Same request, same answer, whatever ran before it: prompts are evaluated in chunks of `CHUNK` tokens cut at
fixed positions (0, 64, 128, ...), and only complete chunks are reused from the cache. llama.cpp's CPU kernels
give a token results that depend on which tokens share its decode call (measured: Qwen2.5's Q4_K_M logits moved
by up to 0.5 between "whole prompt" and "cached prefix, then the rest" on an AVX-512 Xeon; on an AVX2 EPYC the
first of three identical calls gave other text, for both embedded models). With fixed cut points every
evaluation of a prompt makes the same calls on the same tokens, so the arithmetic is identical on any CPU,
whichever kernels that CPU picks.
"""

from __future__ import annotations

import atexit
import math
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from instruct_lf_dagster.models.registry import ModelError, resolve

N_CTX = 4096
DEFAULT_MAX_TOKENS = 512
# Prompt tokens per decode call, cut at multiples of CHUNK. 64 reads as fast as llama.cpp's 512 on 2 cores
# (117 vs 73 tokens/s for Qwen2.5-1.5B) and re-reads at most 63 cached tokens per call.
CHUNK = 64

# llama.cpp contexts are not thread-safe, and two calls at once would only fight over the same cores.
LOCK = threading.RLock()
_LOADED: dict[Path, Any] = {}


class PromptTooLongError(ModelError):
    """A prompt longer than the model's context."""


@dataclass(frozen=True)
class Counters:
    """What the embedded models did in this process: calls, tokens (cached: not read again) and seconds."""

    calls: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    @property
    def read_tokens(self) -> int:
        """Prompt tokens actually evaluated."""
        return self.prompt_tokens - self.cached_tokens

    def __add__(self, other: Counters) -> Counters:
        return Counters(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __sub__(self, other: Counters) -> Counters:
        return Counters(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))


_COUNTERS = Counters()


def counters() -> Counters:
    """Running totals over every chat() in this process; subtract two readings to measure a stretch."""
    return _COUNTERS


def load(name: str, home: Path, threads: int) -> Any:
    """The llama_cpp.Llama of a model (see `resolve`), loaded once per file and process; N_CTX of context.

    `threads` decode and read prompts; it counts at the file's first load only. On cores other processes keep
    busy, 1 thread is steadier than all of them.
    """
    path = resolve(name, home).resolve()  # one Llama per file, whichever link or data directory named it
    with LOCK:
        if path not in _LOADED:
            try:
                from llama_cpp import Llama
            except ImportError as error:
                raise ModelError("llama-cpp-python is not installed: run scripts/install_llama.sh") from error
            llm = _llama_class(Llama)(
                model_path=str(path), n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads, verbose=False
            )
            atexit.register(llm.close)  # before interpreter teardown, where its __del__ would fail noisily
            _LOADED[path] = llm
        return _LOADED[path]


def _chunked_class(llama: type) -> type:
    """llama_cpp.Llama that evaluates prompts in chunks cut at fixed positions and reuses only whole chunks.

    `reused_tokens`: prompt tokens the last `generate` took from the cache.
    """

    class ChunkedLlama(llama):
        _whole = 0  # leading tokens whose KV cache came from complete chunks (decoded tokens never count)
        reused_tokens = 0

        def generate(self, tokens, *args, **kwargs):
            tokens = list(tokens)
            if kwargs.get("reset", True):
                # At least the last prompt token is evaluated: its logits choose the first new token.
                common = self.longest_token_prefix(self.input_ids[: self.n_tokens].tolist(), tokens[:-1])
                keep = min(common, self._whole)
                self.n_tokens = self.reused_tokens = keep - keep % CHUNK
            return super().generate(tokens, *args, **kwargs)

        def eval(self, tokens) -> None:
            tokens = list(tokens)
            self._whole = min(self._whole, self.n_tokens)
            while tokens:
                start = self.n_tokens
                piece, tokens = tokens[: CHUNK - start % CHUNK], tokens[CHUNK - start % CHUNK :]
                super().eval(piece)
                if start == self._whole and len(piece) == CHUNK:
                    self._whole = start + CHUNK

    return ChunkedLlama


def _llama_class(llama: type) -> type:
    """`_chunked_class(llama)` with greedy grammar sampling that checks the greedy choice first.

    llama.cpp's grammar sampler tests every vocabulary token (152k for Qwen) at every step, about 30 ms, a
    fifth of a decode step. Like llama.cpp's own `common_sampler`, test only the greedy token and mask the
    whole vocabulary only when the grammar rejects it: the same tokens, chosen faster.
    """
    import ctypes

    import llama_cpp
    import numpy as np
    from llama_cpp._internals import LlamaSampler

    class GreedyGrammarLlama(_chunked_class(llama)):
        def _init_sampler(self, *args, **kwargs):
            plain_greedy = (
                kwargs.get("temp") == 0.0
                and kwargs.get("repeat_penalty", 1.0) == 1.0
                and not (kwargs.get("frequency_penalty") or kwargs.get("presence_penalty"))
                and not (args or kwargs.get("logits_processor"))
            )
            grammar = kwargs.get("grammar")
            if grammar is None or not plain_greedy:
                return super()._init_sampler(*args, **kwargs)
            rules = llama_cpp.llama_sampler_init_grammar(
                self._model.vocab, grammar._grammar.encode(), grammar._root.encode()
            )
            one = (llama_cpp.llama_token_data * 1)()
            candidate = llama_cpp.llama_token_data_array(data=one, size=1, selected=-1, sorted=False)

            def choose(cur_p) -> None:
                tokens = cur_p.contents
                logits = np.ctypeslib.as_array(tokens.data, shape=(tokens.size,))["logit"]
                one[0] = tokens.data[int(np.argmax(logits))]
                llama_cpp.llama_sampler_apply(rules, ctypes.byref(candidate))
                if math.isfinite(one[0].logit):  # the grammar allows the greedy token: keep only it
                    tokens.data[0] = one[0]
                    tokens.size = 1
                    token = one[0].id
                else:
                    llama_cpp.llama_sampler_apply(rules, cur_p)
                    token = tokens.data[int(np.argmax(logits))].id  # what the greedy sampler will pick
                llama_cpp.llama_sampler_accept(rules, token)

            sampler = LlamaSampler()
            sampler.add_custom(choose)
            sampler.add_greedy()
            sampler._exit_stack.callback(llama_cpp.llama_sampler_free, rules)
            return sampler

    return GreedyGrammarLlama


def llama_response_format(response_format: Any) -> dict | None:
    """OpenAI's response_format in llama-cpp-python's terms (a JSON schema becomes a grammar there)."""
    if response_format is None:
        return None
    if hasattr(response_format, "model_json_schema"):  # a pydantic model class
        return {"type": "json_object", "schema": response_format.model_json_schema()}
    kind = response_format.get("type")
    if kind == "json_schema":
        return {"type": "json_object", "schema": response_format["json_schema"]["schema"]}
    if kind == "json_object":
        return dict(response_format)
    if kind == "text":
        return None
    raise ValueError(f"unsupported response_format: {response_format!r}")


def chat(
    name: str,
    messages: list[dict],
    *,
    home: Path,
    threads: int,
    temperature: float = 0.0,
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    seed: int = 0,
    stop: str | list[str] | None = None,
    response_format: Any = None,
) -> dict:
    """One chat completion (llama-cpp-python's OpenAI-style dict) with `usage.cached_tokens` added.

    `home` and `threads` as in `load`. cached_tokens: prompt tokens reused from the KV cache (whole chunks of
    the prefix shared with the previous call), hence not read again.
    """
    global _COUNTERS
    llm = load(name, home, threads)
    with LOCK:
        started = time.perf_counter()
        try:
            out = llm.create_chat_completion(
                messages=messages,
                temperature=temperature,
                max_tokens=max_tokens or DEFAULT_MAX_TOKENS,
                seed=seed,
                stop=stop or [],
                response_format=llama_response_format(response_format),
            )
        except ValueError as error:
            if "context window" in str(error):
                raise PromptTooLongError(
                    f"{name}: the prompt does not fit the context of {N_CTX} tokens ({error}); shorten it"
                ) from error
            raise
        usage = out["usage"]
        usage["cached_tokens"] = llm.reused_tokens
        _COUNTERS += Counters(
            calls=1,
            prompt_tokens=usage["prompt_tokens"],
            cached_tokens=usage["cached_tokens"],
            completion_tokens=usage["completion_tokens"],
            seconds=time.perf_counter() - started,
        )
    return out
