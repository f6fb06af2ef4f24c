"""Embedded LLM speed: per-document latency of property proposals against the model's measured rates.

Each document is one chat request: a fixed system prompt and one worked example (the shared prefix, kept in
llama.cpp's KV cache after the first document) followed by the document, with JSON-schema constrained output,
sent through the real `LLMClient` (litellm -> provider `llamacpp`) with a fresh DuckDB response cache.

The limit of a document is what the model's raw speed allows for the tokens it actually processed:
    limit = (prompt tokens not in the KV cache) / read_rate + (completion tokens) / decode_rate
The first document pays for reading the prefix; later ones read only their own tokens (token counts from
`models.counters()`). read_rate and decode_rate (tokens/s) are measured in the same process just before
and just after the documents, then averaged; each measurement is the best of two runs of a 256-token prompt
read from an empty cache followed by 48 greedy tokens. seconds_per_doc is the wall time of
`LLMClient.complete` per document (cache lookups, litellm, chat template, grammar sampling included), and
ratio_to_limit = seconds_per_doc / limit_seconds_per_doc. Then the same documents are asked again through a
new client on the same cache file: rerun_calls counts the calls that reached the model (should be 0).

`--parallel N[,M]` and `--workers W` then compare layouts past one stream on twice as many documents as the
largest layout holds (the reviews again, as other viewers' words): the single stream, N requests decoded
together in one context (`models.slots`), and W worker processes of threads/W threads each. For each: documents
per second, the speedup over the single stream, whether every request gave the same text whatever its companions
(`companion_invariant`: in order, reversed, alone in a new context, among other requests of other lengths), and
the share of answers equal to the single stream's (`same_as_single_stream`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tabulate import tabulate

from instruct_lf_dagster import models
from instruct_lf_dagster.core.llm import LLMClient, LLMConfig, ResponseCache
from instruct_lf_dagster.settings import quiet_openmp

SYSTEM = (
    "You analyse movie reviews for a movie recommender. Goal: find what decides which movie this viewer "
    "should be recommended next. For the review you are given, list 3 to 5 short properties of the movies "
    "or of the viewer's taste that matter for that goal: genre, mood, pacing, setting, era, audience, "
    "themes, standout performances, or things the viewer dislikes. Each property is a short noun phrase of "
    "2 to 5 words, general enough to apply to other movies. Never name movie titles or actors. "
    "Answer with JSON only."
)
EXAMPLE_REVIEW = (
    "Review: I loved how slowly it builds. The space station feels lonely and the soundtrack is mostly "
    "silence. Not for anyone who wants action, but the ending made me cry."
)
EXAMPLE_ANSWER = json.dumps(
    {
        "properties": [
            "Slow-burn pacing",
            "Isolated space setting",
            "Minimalist soundtrack",
            "Emotional ending",
        ]
    }
)
SCHEMA = {
    "type": "object",
    "properties": {
        "properties": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 5}
    },
    "required": ["properties"],
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "properties", "schema": SCHEMA}}
MAX_TOKENS = 96

DOCUMENTS = [
    "Review: Loud, fast and silly. The car chases are great and I laughed the whole time with my brother.",
    "Review: A gentle romance in Paris with witty dialogue. Perfect for a rainy Sunday with my partner.",
    "Review: I could not sleep after this haunted house story. The jump scares are cheap but they work.",
    "Review: My kids watched it three times. Talking animals, bright colours and songs we still sing.",
    "Review: A courtroom drama that is all dialogue. Slow, but the final testimony is stunning.",
    "Review: Gritty war film, hard to watch. The battle scenes feel real and the story never glorifies it.",
    "Review: A heist comedy with a clever twist. Stylish, quick, and it never takes itself seriously.",
    "Review: Beautiful documentary about whales. Calm narration, amazing underwater footage, a bit long.",
    "Review: A superhero sequel that is too long and too loud. I missed the humour of the first one.",
    "Review: Black-and-white detective story from the forties. Smoky bars, sharp lines, a cynical hero.",
    "Review: An indie coming-of-age film about a summer job. Awkward, honest and very funny in places.",
    "Review: A mind-bending time travel plot. I needed a second viewing, and I loved every minute.",
]


def messages_for(document: str) -> list[dict]:
    """The chat request of one document: shared prefix (system prompt, worked example), then the document."""
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": EXAMPLE_REVIEW},
        {"role": "assistant", "content": EXAMPLE_ANSWER},
        {"role": "user", "content": document},
    ]


def _warm_up(model: str, home: Path, threads: int) -> None:
    """Pay the one-time costs (litellm import and first call, model load) before anything is timed."""
    models.register(home, threads)
    import litellm

    litellm.completion(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=models.DEFAULT_MODEL, help="embedded model name or .gguf path")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="llama.cpp threads (default: INSTRUCT_LF_LLM_THREADS, or every core)",
    )
    parser.add_argument("--docs", type=int, default=8, help=f"documents to run (at most {len(DOCUMENTS)})")
    parser.add_argument(
        "--parallel",
        help="also decode N requests together (slots of one context, every decode call of N tokens); several "
        "comma-separated: one row each",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="also W worker processes of threads/W threads each (0: not measured)",
    )


def main(args: argparse.Namespace) -> dict:
    quiet_openmp()  # before llama.cpp loads: this process decodes
    sizes = _sizes(args)
    documents = DOCUMENTS[: max(1, min(args.docs, len(DOCUMENTS)))]
    model = f"{models.PROVIDER}/{args.model}"
    # args.home, args.settings: the CLI's data directory and settings.
    home, threads = args.home, args.threads or args.settings.llm_threads or os.cpu_count() or 1
    _warm_up(model, home, threads)
    # Also empties the KV cache: the first document reads all of its prompt.
    before = models.measure_rates(args.model, home, threads)

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "responses.duckdb"
        config = LLMConfig(model=model, temperature=0.0, max_tokens=MAX_TOKENS, seed=0)
        client = LLMClient(config, cache=ResponseCache(cache))
        runs = []
        for index, document in enumerate(documents):
            counted = models.counters()
            start = time.perf_counter()
            [completion], _ = client.complete([messages_for(document)], response_format=RESPONSE_FORMAT)
            runs.append((time.perf_counter() - start, models.counters() - counted, completion.text))
            if not completion.ok:
                raise RuntimeError(f"document {index}: {completion.error}")
        _, rerun = LLMClient(config, cache=ResponseCache(cache)).complete(
            [messages_for(document) for document in documents], response_format=RESPONSE_FORMAT
        )
    after = models.measure_rates(args.model, home, threads)
    # Rates measured on both sides of the run, so that a change of machine load biases neither way.
    read, decode = (before.read + after.read) / 2, (before.decode + after.decode) / 2

    print(f"model {args.model}: read {read:.1f} tokens/s, decode {decode:.1f} tokens/s (measured)")
    # Other processes on the same cores slow some documents and not others: say how busy the machine was.
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    # seconds: LLMClient.complete; in model: inside the provider (chat template, llama.cpp, grammar).
    header = f"{'doc':>3} {'prompt':>6} {'cached':>6} {'read':>5} {'out':>4} {'seconds':>7} {'in model':>8}"
    print(f"{header} {'limit':>6} {'ratio':>5}")
    seconds = limits = 0.0
    for index, (took, done, text) in enumerate(runs):
        limit = done.read_tokens / read + done.completion_tokens / decode
        seconds, limits = seconds + took, limits + limit
        print(
            f"{index:>3} {done.prompt_tokens:>6} {done.cached_tokens:>6} {done.read_tokens:>5} "
            f"{done.completion_tokens:>4} {took:>7.2f} {done.seconds:>8.2f} {limit:>6.2f} {took / limit:>5.2f}  {text}"
        )
    print(f"rerun: {rerun.calls} model calls, {rerun.cache_hits} cache hits, {rerun.seconds:.3f}s")

    result = {
        "model": args.model,
        "docs": len(documents),
        "seconds_per_doc": round(seconds / len(documents), 3),
        "limit_seconds_per_doc": round(limits / len(documents), 3),
        "ratio_to_limit": round(seconds / limits, 3),
        "rerun_calls": rerun.calls,
    }
    if args.parallel or args.workers:
        result |= compare_layouts(args, home, threads, sizes)
    print(json.dumps(result))
    return result


def more_documents(n: int) -> list[str]:
    """`n` distinct documents: the reviews, then the same reviews as other viewers' words."""
    texts = list(DOCUMENTS)
    viewer = 2
    while len(texts) < n:
        texts += [f"Viewer {viewer} wrote: {text.removeprefix('Review: ')}" for text in DOCUMENTS]
        viewer += 1
    return texts[:n]


def _timed(run: Callable[..., list], *args) -> tuple[list, float]:
    start = time.perf_counter()
    out = run(*args)
    return out, time.perf_counter() - start


def _single_stream(model: str, home: Path, threads: int, documents: list[str]) -> list[str]:
    out = []
    for document in documents:
        answer = models.chat(
            model,
            messages_for(document),
            home=home,
            threads=threads,
            max_tokens=MAX_TOKENS,
            response_format=RESPONSE_FORMAT,
        )
        out.append(answer["choices"][0]["message"]["content"])
    return out


def _slots_invariant(llm, n: int, threads: int, requests: list, texts: list[str]) -> bool:
    """Whether every request gave `texts` (its answer in the timed run) among other companions: in reverse
    order (other slots, cached prefixes), the first two alone in a new context (uncached, a half-empty batch), and
    the first two among requests of other lengths."""
    from instruct_lf_dagster.models.slots import Slots, chat_request

    def ask(document: str):
        return chat_request(
            llm, messages_for(document), max_tokens=MAX_TOKENS, response_format=RESPONSE_FORMAT
        )

    engine = Slots(llm, n, threads)
    try:
        reversed_texts = [r.text for r in engine.run(requests[::-1])][::-1]
        fresh = Slots(llm, n, threads)
        try:
            alone = [r.text for r in fresh.run(requests[:2])]
        finally:
            fresh.close()
        others = [ask("Review: ok."), requests[0], ask("Review: " + "long and winding, " * 30), requests[1]]
        mixed = [r.text for r in engine.run(others)]
    finally:
        engine.close()
    return reversed_texts == texts and alone == texts[:2] and [mixed[1], mixed[3]] == texts[:2]


_WORKER: dict = {}


def _worker_start(model: str, home: Path, threads: int, barrier) -> None:
    quiet_openmp()
    _WORKER.update(model=model, home=home, threads=threads)
    _single_stream(model, home, threads, ["Review: fine."])  # load the (memory-mapped, shared) weights
    barrier.wait()  # every worker ready before any timed document


def _worker_answer(document: str) -> str:
    return _single_stream(_WORKER["model"], _WORKER["home"], _WORKER["threads"], [document])[0]


def _sizes(args: argparse.Namespace) -> list[int]:
    """The slot counts of `--parallel`, checked before anything runs."""
    try:
        sizes = [int(n) for n in str(args.parallel or "").split(",") if n.strip()]
    except ValueError:
        sizes = [0]
    if any(n < 1 for n in sizes) or args.workers < 0:
        raise SystemExit(
            f"--parallel takes slot counts of 1 or more (got {args.parallel!r}); --workers 0 or more"
        )
    return sizes


def compare_layouts(args: argparse.Namespace, home: Path, threads: int, sizes: list[int]) -> dict:
    """The table of layouts past one stream and their JSON fields (see the module's docstring)."""
    from instruct_lf_dagster.models.slots import Slots, Steps, chat_request

    documents = more_documents(2 * max([*sizes, args.workers, 6]))
    llm = models.load(args.model, home, threads)
    single, single_seconds = _timed(_single_stream, args.model, home, threads, documents)
    rows = [("single stream", threads, single_seconds, True, single)]
    for n in sizes:
        requests = [
            chat_request(llm, messages_for(d), max_tokens=MAX_TOKENS, response_format=RESPONSE_FORMAT)
            for d in documents
        ]
        engine = Slots(llm, n, threads)
        try:
            engine.run(requests[:1])  # warm-up: the context's first decode calls
            engine.steps = Steps()
            results, seconds = _timed(engine.run, requests)
        finally:
            engine.close()
        steps = engine.steps
        print(
            f"{n} slots: {steps.calls} decode calls of {n} tokens, {1000 * steps.seconds / steps.calls:.0f} ms "
            f"each: {n * steps.calls / steps.seconds:.1f} tokens/s, {steps.tokens / steps.seconds:.1f} of them "
            "answers' (the rest pad idle slots)"
        )
        texts = [r.text for r in results]
        rows.append(
            (f"{n} slots", threads, seconds, _slots_invariant(llm, n, threads, requests, texts), texts)
        )
    if args.workers:
        each = max(1, threads // args.workers)
        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(args.workers)
        with context.Pool(args.workers, _worker_start, (args.model, home, each, barrier)) as pool:
            pool.map(str, range(args.workers))  # returns once every worker is past the barrier
            # A worker decodes each request alone, as the single stream does: companions cannot reach it.
            texts, seconds = _timed(pool.map, _worker_answer, documents, 1)
        rows.append((f"{args.workers} workers", f"{each} each", seconds, True, texts))

    def same(texts: list[str]) -> float:
        return sum(a == b for a, b in zip(texts, single, strict=True)) / len(single)

    table = [
        (layout, threads_, len(documents) / seconds, single_seconds / seconds, invariant, same(texts))
        for layout, threads_, seconds, invariant, texts in rows
    ]
    print(f"\nlayouts over {len(documents)} documents:")
    headers = ["layout", "threads", "docs/s", "speedup", "companion invariant", "same as single stream"]
    print(tabulate(table, headers=headers, floatfmt=".3f"))
    best = max(table[1:], key=lambda row: (row[4], row[2]))
    return {
        "layout": best[0],
        "docs_per_second": round(best[2], 3),
        "single_stream_docs_per_second": round(table[0][2], 3),
        "speedup": round(best[3], 3),
        "companion_invariant": best[4],
        "same_as_single_stream": round(best[5], 3),
        "layouts": {
            row[0]: {"docs_per_second": round(row[2], 3), "speedup": round(row[3], 3)} for row in table[1:]
        },
    }
