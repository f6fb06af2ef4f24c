"""Data-property matrix: time the project's path against the encoder limit and a per-document loop.

(a) the project: `compatibility()` with a fresh embedding cache; (b) the limit: one `encode` call for
all documents and one for all properties, in large batches, and one matrix product; (c) the research
scripts' loop: properties encoded once, then each document encoded alone and compared with them (timed
on a seeded sample of documents and extrapolated linearly). Runs are interleaved and repeated, and the
fastest of each counts, so a busy shared CPU skews them alike. All three use the untrained
all-MiniLM-L6-v2 linker (max 256 tokens). Documents are INSPIRED dialogues and properties the recorded
Qwen2.5-Coder-1.5B proposals when ../shared/data/inspired is present, topped up with deterministic
synthetic texts of realistic lengths; the table says how many of each.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import time
from pathlib import Path

import numpy as np

from instruct_lf_dagster.bench import report

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "inspired"

_WORDS = (
    "movie film watch seen like love really great funny scary action comedy drama horror actor actress "
    "director story plot ending character sequel trailer theater netflix weekend favorite recommend "
    "maybe think know something kind older newer classic romantic thriller animated family kids adventure "
    "superhero series season music soundtrack book remake twist mystery crime war space fantasy"
)
_ADJECTIVES = (
    "Dark Light-hearted Gritty Whimsical Slow-burn Fast-paced Quirky Epic Intimate Nostalgic Bleak Uplifting "
    "Surreal Realistic Satirical Suspenseful Heartwarming Violent Cerebral Campy"
)
_NOUNS = (
    "comedy,thriller,drama,romance,heist story,coming-of-age tale,space opera,war epic,courtroom drama,"
    "road movie,family film,musical,western,noir mystery,biopic,horror sequel,animation"
)
_TAILS = (
    "",
    " with strong female lead",
    " set in the 1980s",
    " from the 1990s",
    " with twist ending",
    " for kids",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `instruct-lf bench compatibility`."""
    parser.add_argument("--docs", type=int, default=2000, help="number of documents (default 2000)")
    parser.add_argument("--props", type=int, default=3000, help="number of properties (default 3000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64, help="documents per batch, project path")
    parser.add_argument("--limit-batch-size", type=int, default=128, help="texts per batch, the limit")
    parser.add_argument("--loop-sample", type=int, default=100, help="documents timed in the loop")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each; the fastest counts")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="INSPIRED data directory")


def _dialogues(data: Path) -> tuple[list[str], list[str]]:
    texts: set[str] = set()
    for name, column in (("inspired_train.csv", "full_situation"), ("inspired_test.csv", "test_inputs")):
        with (data / name).open(newline="", encoding="utf-8") as file:
            texts.update(row[column] for row in csv.DictReader(file))
    # Earlier states of the same conversations (cut before a system turn) are realistic documents too.
    prefixes = {text[: turn.end()] for text in texts for turn in re.finditer(r"\nSystem: ", text)}
    return sorted(texts), sorted(p for p in prefixes - texts if "\nUser: " in p)


def _recorded_properties(data: Path) -> list[str]:
    path = data / "proposals_qwen25coder15b.jsonl"
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as file:
        rows = [json.loads(line) for line in file if line.strip()]
    return sorted({p for row in rows for p in row.get("properties") or [] if p.strip()})


def _synthetic_dialogue(rng: random.Random) -> str:
    # Lengths follow INSPIRED contexts roughly: median ~700 characters, a long tail past 256 tokens.
    target = int(rng.lognormvariate(6.5, 0.6))
    words = _WORDS.split()
    turns, size, speaker = [], 0, "System"
    while size < target:
        turn = f"{speaker}: " + " ".join(rng.choice(words) for _ in range(rng.randint(4, 20)))
        turns.append(turn)
        size += len(turn)
        speaker = "User" if speaker == "System" else "System"
    return "\n" + "\n".join(turns) + "\nSystem: "


def _synthetic_property(rng: random.Random) -> str:
    return f"{rng.choice(_ADJECTIVES.split())} {rng.choice(_NOUNS.split(','))}{rng.choice(_TAILS)}"


def _top_up(texts: list[str], n: int, make, rng: random.Random) -> tuple[list[str], int]:
    chosen = rng.sample(texts, min(n, len(texts)))
    seen = set(chosen)
    while len(chosen) < n:
        text = make(rng)
        if text not in seen:
            seen.add(text)
            chosen.append(text)
    return chosen, len(chosen) - min(n, len(texts))


def build_texts(docs: int, props: int, seed: int, data: Path) -> tuple[list[str], list[str], dict[str, str]]:
    """Documents and properties for the benchmark, and a description of where they came from."""
    rng = random.Random(seed)
    dialogues, prefixes, recorded = [], [], []
    if (data / "inspired_train.csv").exists():
        dialogues, prefixes = _dialogues(data)
        recorded = _recorded_properties(data)
    base = dialogues + rng.sample(prefixes, min(len(prefixes), max(0, docs - len(dialogues))))
    documents, synthetic_docs = _top_up(base, docs, _synthetic_dialogue, rng)
    properties, synthetic_props = _top_up(recorded, props, _synthetic_property, rng)
    n_dialogues = min(docs, len(base))
    sources = {
        "documents": f"{n_dialogues} INSPIRED dialogue states + {synthetic_docs} synthetic",
        "properties": f"{len(properties) - synthetic_props} recorded proposals + {synthetic_props} synthetic",
    }
    return documents, properties, sources


def main(args: argparse.Namespace) -> dict:
    """Run the benchmark, print a table and, last, the JSON summary."""
    import torch
    from sentence_transformers.util import cos_sim

    from instruct_lf_dagster.core.compatibility import EmbeddingCache, compatibility
    from instruct_lf_dagster.core.linker import Linker

    documents, properties, sources = build_texts(args.docs, args.props, args.seed, args.data)
    linker = Linker()
    model = linker.model
    lengths = [len(ids) for ids in model.tokenizer(documents, truncation=True)["input_ids"]]
    truncated = float(np.mean(np.array(lengths) >= model.max_seq_length))
    sample = random.Random(args.seed).sample(documents, min(args.loop_sample, len(documents)))
    model.encode(documents[:16], batch_size=16)  # warm-up: first-call allocations and kernel selection

    def project() -> np.ndarray:
        return compatibility(
            linker, documents, properties, batch_size=args.batch_size, cache=EmbeddingCache()
        )

    def limit() -> np.ndarray:
        options = {
            "batch_size": args.limit_batch_size,
            "normalize_embeddings": True,
            "show_progress_bar": False,
        }
        return model.encode(documents, **options) @ model.encode(properties, **options).T

    def loop_properties() -> torch.Tensor:
        return model.encode(properties, convert_to_tensor=True, show_progress_bar=False)

    def loop_documents() -> list[torch.Tensor]:
        with torch.inference_mode():
            return [
                cos_sim(model.encode(d, convert_to_tensor=True), property_tensor).flatten() for d in sample
            ]

    # The CPU may be shared: interleave the runs (a b, then b a) and keep each one's fastest.
    times: dict[str, list[float]] = {"project": [], "limit": [], "properties": [], "documents": []}
    for repeat in range(args.repeats):
        for name in ("project", "limit") if repeat % 2 == 0 else ("limit", "project"):
            started = time.perf_counter()
            outputs = {"project": project, "limit": limit}[name]()
            times[name].append(time.perf_counter() - started)
            if name == "project":
                matrix = outputs
            else:
                limit_matrix = outputs
        started = time.perf_counter()
        property_tensor = loop_properties()
        times["properties"].append(time.perf_counter() - started)
        started = time.perf_counter()
        rows = loop_documents()
        times["documents"].append(time.perf_counter() - started)

    seconds, limit_seconds = min(times["project"]), min(times["limit"])
    per_document = min(times["documents"]) / len(sample)
    loop_seconds = min(times["properties"]) + per_document * len(documents)
    result = {
        "seconds": round(seconds, 3),
        "encode_limit_seconds": round(limit_seconds, 3),
        "loop_seconds": round(loop_seconds, 3),
        "ratio_to_limit": round(seconds / limit_seconds, 4),
        "speedup_vs_loop": round(loop_seconds / seconds, 2),
    }
    index = {text: i for i, text in enumerate(documents)}
    loop_error = max(
        float(np.abs(r.numpy() - matrix[index[d]]).max()) for d, r in zip(sample, rows, strict=True)
    )

    def runs(name: str) -> str:
        return ", ".join(f"{t:.1f}" for t in times[name])

    table = [
        ("documents", f"{len(documents)} ({sources['documents']})"),
        ("properties", f"{len(properties)} ({sources['properties']})"),
        (
            "document tokens",
            f"median {int(np.median(lengths))}, {truncated:.0%} cut at {model.max_seq_length}",
        ),
        ("torch threads", str(torch.get_num_threads())),
        (f"(a) project path, batch {args.batch_size}", f"{seconds:.2f} s (runs: {runs('project')})"),
        (
            f"(b) limit: 2 encode calls, batch {args.limit_batch_size}",
            f"{limit_seconds:.2f} s (runs: {runs('limit')})",
        ),
        (
            f"(c) per-document loop, {len(sample)} documents timed, extrapolated to {len(documents)}",
            f"{loop_seconds:.2f} s ({min(times['properties']):.2f} s properties"
            f" + {per_document * 1e3:.1f} ms/doc)",
        ),
        ("ratio to limit (target <= 1.15)", f"{result['ratio_to_limit']:.3f}"),
        ("speedup vs loop (target >= 10)", f"{result['speedup_vs_loop']:.2f}x"),
        ("max |project - limit|", f"{float(np.abs(matrix - limit_matrix).max()):.2e}"),
        ("max |project - loop| (sample)", f"{loop_error:.2e}"),
    ]
    return report(table, result)
