"""Several chat requests decoded together: one llama.cpp context with a slot (a sequence and its own KV stream)
per request, every decode call of the same shape. Measured by `instruct-lf bench llm --parallel N`; the provider
keeps the single stream (docs/benchmarks.md, "Past one stream", says why).

Why batch: decoding one sequence reads every weight for each token it makes; decoding N sequences in one call
reads them once for N tokens.

Why an answer cannot depend on its companions (the project's invariant: same request, same text):
- A prompt is read alone, in the same fixed chunks as `llama.chat` reads it (cut at multiples of `CHUNK`, only
  whole chunks reused from a slot's cache, copied whole from another slot's), so its KV cells and first-token
  logits are those of the single stream.
- Every decode call has exactly `slots` tokens, one per slot, in slot order; an idle slot decodes a pad token
  that is removed again. The matrix kernels llama.cpp picks depend on the batch's shape, never on its content,
  and each token's row of a matrix product is computed from that token's row alone, so a fixed shape gives a
  token the same arithmetic whatever its companions are.
- Each slot has its own KV stream (`kv_unified = false`, `n_seq_max = slots`): attention reads only the slot's
  own cells, at the same positions as a single stream.
A 1-token decode call may take other kernels than an N-token one, so the text can differ from the single
stream's (`same_as_single_stream` in the bench), never between companions (`companion_invariant`, tested).
"""

from __future__ import annotations

import ctypes
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from instruct_lf_dagster.models.llama import CHUNK, N_CTX, PromptTooLongError


@dataclass
class Request:
    """One completion: prompt tokens, at most `max_tokens` new ones, an optional GBNF grammar (text, root)."""

    tokens: list[int]
    max_tokens: int
    grammar: tuple[str, str] | None = None
    stop: list[str] = field(default_factory=list)


@dataclass
class Result:
    """What a request gave: the new tokens, their text, why it ended and the prompt tokens taken from cache."""

    tokens: list[int]
    text: str
    finish_reason: str
    cached_tokens: int


@dataclass
class Steps:
    """The decode calls of new tokens: how many, the tokens that were answers' (not pads), and their seconds."""

    calls: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def add(self, tokens: int, seconds: float) -> None:
        self.calls, self.tokens, self.seconds = self.calls + 1, self.tokens + tokens, self.seconds + seconds


class _Slot:
    """One sequence of the context: the tokens its KV stream holds, and the request it is serving."""

    def __init__(self) -> None:
        self.cached: list[int] = []  # tokens whose KV cells are in this slot's stream, in order
        self.whole = 0  # leading cached tokens that came from complete prompt chunks (reusable)
        self.request: Request | None = None
        self.index = -1
        self.out: list[int] = []
        self.rules: Any = None
        self.reused = 0


def _reusable(slot: _Slot, tokens: list[int]) -> int:
    """Leading tokens of `tokens` whose KV cells `slot` holds in whole chunks (never the last: its logits are
    needed)."""
    common = 0
    for a, b in zip(slot.cached[: slot.whole], tokens[:-1], strict=False):
        if a != b:
            break
        common += 1
    return common - common % CHUNK


class Slots:
    """`slots` sequences decoded together over the weights of an already loaded `llama_cpp.Llama`."""

    def __init__(self, llm: Any, slots: int, threads: int) -> None:
        import llama_cpp

        self.llm = llm
        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_ctx = N_CTX * slots  # split streams: each slot gets N_CTX
        params.n_seq_max = slots
        params.kv_unified = False
        params.n_batch = params.n_ubatch = max(CHUNK, slots)
        params.n_threads = params.n_threads_batch = threads
        self.ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not make a context of {slots} slots")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.batch = llama_cpp.llama_batch_init(max(CHUNK, slots), 0, 1)
        self.slots = [_Slot() for _ in range(slots)]
        self.pad = llm.token_eos()
        self.steps = Steps()

    def close(self) -> None:
        import llama_cpp

        if self.ctx:
            llama_cpp.llama_batch_free(self.batch)
            llama_cpp.llama_free(self.ctx)
            self.ctx = None

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode call of (token, position, slot, wants logits) entries."""
        import llama_cpp

        b = self.batch
        for i, (token, pos, seq, logits) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
            b.seq_id[i][0] = seq
        b.n_tokens = len(entries)
        code = llama_cpp.llama_decode(self.ctx, b)
        if code != 0:
            raise RuntimeError(f"llama_decode failed ({code})")

    def _logits(self, i: int) -> np.ndarray:
        import llama_cpp

        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))

    def _start(self, s: int, request: Request) -> int:
        """Put `request` in slot `s`: read its prompt alone in fixed chunks; return its first token."""
        import llama_cpp

        slot, tokens = self.slots[s], request.tokens
        # The longest prefix of whole chunks any slot holds (the shared system prompt, mostly): a slot's own, or
        # another's, copied in whole (llama.cpp copies between KV streams only whole): identical cells either way.
        source, keep = max(
            ((i, _reusable(other, tokens)) for i, other in enumerate(self.slots)),
            key=lambda pair: (pair[1], pair[0] == s),
        )
        if keep > _reusable(slot, tokens):
            llama_cpp.llama_memory_seq_cp(self.memory, source, s, -1, -1)
        llama_cpp.llama_memory_seq_rm(self.memory, s, keep, -1)
        slot.cached, slot.whole, slot.reused = tokens[:keep], keep, keep
        position = keep
        while position < len(tokens):
            end = min(len(tokens), position - position % CHUNK + CHUNK)
            piece = tokens[position:end]
            last = end == len(tokens)
            self._decode([(t, position + k, s, last and k == len(piece) - 1) for k, t in enumerate(piece)])
            if position == slot.whole and len(piece) == CHUNK:
                slot.whole = end
            slot.cached += piece
            position = end
        slot.request, slot.out, slot.rules = request, [], None
        if request.grammar is not None:
            text, root = request.grammar
            slot.rules = llama_cpp.llama_sampler_init_grammar(self.vocab, text.encode(), root.encode())
        # The prompt's last token is the only one of its batch with logits.
        return self._sample(slot, self._logits(-1))

    def _sample(self, slot: _Slot, logits: np.ndarray) -> int:
        """Greedy choice, under the slot's grammar if any: the greedy token if the grammar allows it (as
        `llama._llama_class` does), else the best token the grammar allows."""
        import llama_cpp

        token = int(np.argmax(logits))
        if slot.rules is not None:
            one = (llama_cpp.llama_token_data * 1)()
            one[0].id, one[0].logit, one[0].p = token, float(logits[token]), 0.0
            candidate = llama_cpp.llama_token_data_array(data=one, size=1, selected=-1, sorted=False)
            llama_cpp.llama_sampler_apply(slot.rules, ctypes.byref(candidate))
            if not math.isfinite(one[0].logit):
                every = (llama_cpp.llama_token_data * self.n_vocab)()
                view = np.ctypeslib.as_array(every)
                view["id"] = np.arange(self.n_vocab)
                view["logit"] = logits
                view["p"] = 0.0
                array = llama_cpp.llama_token_data_array(
                    data=every, size=self.n_vocab, selected=-1, sorted=False
                )
                llama_cpp.llama_sampler_apply(slot.rules, ctypes.byref(array))
                token = int(view["id"][int(np.argmax(view["logit"]))])
            llama_cpp.llama_sampler_accept(slot.rules, token)
        return token

    def _text(self, slot: _Slot) -> str:
        return self.llm.detokenize(slot.out, prev_tokens=slot.request.tokens).decode("utf-8", errors="ignore")

    def _accept(self, slot: _Slot, token: int) -> str | None:
        """Record a sampled token; the finish reason if the request ends with it."""
        import llama_cpp

        if llama_cpp.llama_vocab_is_eog(self.vocab, token):
            return "stop"
        slot.out.append(token)
        if len(slot.out) >= slot.request.max_tokens or len(slot.cached) + 1 >= N_CTX:
            return "length"
        if slot.request.stop and any(stop in self._text(slot) for stop in slot.request.stop):
            return "stop"
        return None

    def _finish(self, slot: _Slot, reason: str) -> Result:
        import llama_cpp

        text = self._text(slot)
        for stop in slot.request.stop:
            if stop in text:
                text, reason = text[: text.index(stop)], "stop"
        if slot.rules is not None:
            llama_cpp.llama_sampler_free(slot.rules)
        result = Result(list(slot.out), text, reason, slot.reused)
        slot.request, slot.rules = None, None
        return result

    def _next(self, s: int, token: int, pending: dict[int, int], results: list[Result | None]) -> None:
        """Slot `s` sampled `token`: finish its request, or decode the token next."""
        slot = self.slots[s]
        reason = self._accept(slot, token)
        if reason:
            results[slot.index] = self._finish(slot, reason)
        else:
            pending[s] = token

    def run(self, requests: list[Request]) -> list[Result]:
        """Every request's result, in order; each takes the first free slot as earlier ones finish.

        Raises PromptTooLongError (ValueError for an empty prompt) before decoding anything if a prompt does not
        fit a slot's context.
        """
        import llama_cpp

        for index, request in enumerate(requests):
            if not request.tokens:
                raise ValueError(
                    f"request {index}: an empty prompt (a chat request has at least its template)"
                )
            if len(request.tokens) + 1 > N_CTX:
                raise PromptTooLongError(
                    f"request {index}: the prompt ({len(request.tokens)} tokens) does not fit the context of "
                    f"{N_CTX}"
                )
        results: list[Result | None] = [None] * len(requests)
        queue = list(enumerate(requests))
        pending: dict[int, int] = {}  # slot -> its sampled token, to be decoded next
        try:
            while queue or pending:
                for s, slot in enumerate(self.slots):
                    while slot.request is None and queue:
                        slot.index, request = queue.pop(0)
                        self._next(s, self._start(s, request), pending, results)
                if not pending:
                    continue
                # Fixed shape: a token for every slot, in slot order; an idle slot's pad goes after its cache.
                started = time.perf_counter()
                self._decode(
                    [
                        (pending.get(s, self.pad), len(slot.cached), s, True)
                        for s, slot in enumerate(self.slots)
                    ]
                )
                self.steps.add(len(pending), time.perf_counter() - started)
                for s, slot in enumerate(self.slots):
                    if s in pending:
                        slot.cached.append(pending.pop(s))
                        self._next(s, self._sample(slot, self._logits(s)), pending, results)
                    else:
                        llama_cpp.llama_memory_seq_rm(self.memory, s, len(slot.cached), -1)
        except BaseException:
            for s, slot in enumerate(self.slots):  # forget every slot's cache: its cells may be half-written
                llama_cpp.llama_memory_seq_rm(self.memory, s, -1, -1)
                if slot.rules is not None:
                    llama_cpp.llama_sampler_free(slot.rules)
                self.slots[s] = _Slot()
            raise
        return results  # type: ignore[return-value]


def chat_request(
    llm: Any,
    messages: list[dict],
    *,
    max_tokens: int,
    response_format: Any = None,
    stop: list[str] | None = None,
) -> Request:
    """The request llama-cpp-python's `create_chat_completion` makes of `messages` for `llm` (a model whose GGUF
    carries its chat template): the same prompt tokens, grammar and stop strings."""
    from llama_cpp import llama_chat_format

    from instruct_lf_dagster.models.llama import llama_response_format

    template = llm.metadata.get("tokenizer.chat_template")
    if template is None or llm.chat_format != "chat_template.default":
        raise ValueError(
            f"batched decoding needs the chat template of the GGUF file, not {llm.chat_format!r}"
        )
    eos, bos = llm.token_eos(), llm.token_bos()
    formatter = llama_chat_format.Jinja2ChatFormatter(
        template=template,
        eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
        bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
        stop_token_ids=[eos],
    )
    formatted = formatter(messages=messages)
    tokens = llm.tokenize(formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special, special=True)
    stops = list(stop or [])
    if formatted.stop is not None:
        stops += [formatted.stop] if isinstance(formatted.stop, str) else list(formatted.stop)
    response = llama_response_format(response_format)
    # llama-cpp-python's own conversion (a schema's grammar, or any JSON), so the grammar is the same.
    rules = llama_chat_format._grammar_for_response_format(response) if response is not None else None
    grammar = (rules._grammar, rules._root) if rules is not None else None
    return Request(tokens, max_tokens, grammar, stops)
