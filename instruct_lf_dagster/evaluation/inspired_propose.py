"""Propose properties for the INSPIRED training dialogues the recorded proposals file leaves out.

The project's own proposal step (`core.proposals.propose`) with the environment's LLM (the embedded default
unless INSTRUCT_LF_ENV says otherwise), through the persistent response cache: an interrupted run resumes where
it stopped and no call is paid twice. Writes one JSON object a line, in the recorded file's format
(`context_index`, `context_sha1`, `properties`, `raw`, token counts), readable by `instruct-lf eval inspired
--proposals`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path

from instruct_lf_dagster.core.proposals import Example, Goal, propose
from instruct_lf_dagster.core.records import read_path
from instruct_lf_dagster.evaluation.inspired_data import PROPOSALS_FILE, Inspired

log = logging.getLogger(__name__)

OUTPUT = Path(__file__).parent / "data" / "inspired_unsampled_qwen25coder15b.jsonl"
CHUNK = 20  # dialogues written out at a time: progress in the log, little lost to a crash

# The recorded file's instruction and worked example, in the project's prompt shape.
GOAL = Goal(
    text="Find the factors that decide which movie the assistant should discuss or recommend in its next "
    "response. Pay attention to the current topic and the user's expressed interests; properties describe "
    "movies, never name a movie title.",
    document_kind="dialogue between a user and a movie recommender assistant",
    examples=(
        Example(
            document="User: I want something to watch with my kids over the holidays.\nSystem: Do you like "
            "comedies?\nUser: Yes, silly ones, like the Will Ferrell movies.\nSystem:",
            properties=(
                "Comedy genre",
                "Features Will Ferrell",
                "Silly humor",
                "Family friendly",
                "Holiday movie",
                "Light-hearted tone",
            ),
        ),
    ),
    truncation="tail",
)


def missing(data: Inspired, recorded: Path) -> list[int]:
    """Indices (into the sorted unique training contexts) of the dialogues `recorded` has no entry for."""
    done = set(read_path(recorded, required=("context_index",))["context_index"].astype(int))
    return [i for i in range(len(data.contexts())) if i not in done]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", default="../shared/data/inspired", help="folder with inspired_train/test.csv"
    )
    parser.add_argument(
        "--recorded",
        help=f"the recorded proposals (default: DATA/{PROPOSALS_FILE}); their dialogues are skipped",
    )
    parser.add_argument("--out", default=str(OUTPUT), help=f"JSONL to write (default {OUTPUT})")
    parser.add_argument("--limit", type=int, help="only the first N missing dialogues (a trial run)")


def main(args: argparse.Namespace) -> dict:
    from instruct_lf_dagster.definitions import local_llm

    data = Inspired.load(args.data)
    contexts = data.contexts()
    todo = missing(data, Path(args.recorded or Path(args.data) / PROPOSALS_FILE))[: args.limit]
    client = local_llm(args.settings).get_client()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started, calls, unparsed = time.perf_counter(), 0, 0
    partial = out.with_suffix(".partial")
    with partial.open("w") as sink:
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start : start + CHUNK]
            result = propose(client, GOAL, [contexts[i] for i in chunk])
            calls += result.usage.calls
            for index, props, raw, error in zip(
                chunk, result.properties, result.raw, result.errors, strict=True
            ):
                unparsed += not props
                record = {
                    "context_index": index,
                    "context_sha1": hashlib.sha1(contexts[index].encode()).hexdigest(),
                    "properties": props or None,
                    "raw": raw,
                    "error": error,
                }
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            sink.flush()
            log.info(
                "proposed %d/%d dialogues (%d LLM calls, %.0f s)",
                start + len(chunk),
                len(todo),
                calls,
                time.perf_counter() - started,
            )
    partial.replace(out)  # whole or not at all: a crash leaves the cache filled and the old file in place
    seconds = time.perf_counter() - started
    result = {
        "dialogues": len(todo),
        "llm_calls": calls,
        "unparsed": unparsed,
        "seconds": round(seconds, 1),
        "seconds_per_call": round(seconds / calls, 2) if calls else None,
        "model": client.model,
        "out": str(out),
    }
    print(json.dumps(result))
    return result
