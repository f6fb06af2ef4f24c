"""How fast an embedded model reads prompts and generates tokens on this machine."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from instruct_lf_dagster.models.llama import LOCK, load


@dataclass(frozen=True)
class Rates:
    """Measured speed of a model on this machine, in tokens per second."""

    read: float  # prompt tokens evaluated
    decode: float  # tokens generated


_FILLER = (
    "The assistant asked which films the user had enjoyed lately. The user said they liked slow science "
    "fiction with a quiet soundtrack, disliked horror, and wanted something to watch with a friend on Friday. "
)


def measure_rates(
    name: str, home: Path, threads: int, *, prompt_tokens: int = 256, new_tokens: int = 48, repeats: int = 2
) -> Rates:
    """Time reading a `prompt_tokens` prompt from an empty cache and then generating `new_tokens` greedily.

    `name`, `home`, `threads` as in `load`. Takes the best of `repeats` runs (other processes only ever slow a
    run down). Leaves the cache empty.
    """
    llm = load(name, home, threads)
    tokens = llm.tokenize((_FILLER * (prompt_tokens // 20 + 1)).encode())[:prompt_tokens]
    best = Rates(read=0.0, decode=0.0)
    with LOCK:
        llm.reset()
        llm.eval(tokens[:8])  # warm-up: page the memory-mapped weights in
        for _ in range(repeats):
            llm.reset()
            # generate() is the loop chat completions run: read the prompt, then sample and evaluate each token
            tokens_out = llm.generate(tokens, temp=0.0)
            start = time.perf_counter()
            next(tokens_out)
            read_done = time.perf_counter()
            for _ in range(new_tokens):
                next(tokens_out)
            tokens_out.close()
            read = len(tokens) / (read_done - start)
            decode = new_tokens / (time.perf_counter() - read_done)
            best = Rates(read=max(best.read, read), decode=max(best.decode, decode))
        llm.reset()
    return best
