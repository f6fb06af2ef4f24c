"""INSPIRED data: the shared train/test split and recorded property proposals for its dialogues.

Titles are compared once a year suffix " (YYYY)" is stripped; recorded proposals index the sorted unique
training dialogues and carry each one's sha1, so a file made for another split is refused.
"""

from __future__ import annotations

import ast
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from instruct_lf_dagster.core.records import read_path

PROPOSALS_FILE = "proposals_qwen25coder15b.jsonl"
_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")


def title_key(title: str) -> str:
    """A title as compared: surrounding space and a trailing " (YYYY)" removed."""
    return _YEAR.sub("", str(title)).strip()


@dataclass(frozen=True)
class Inspired:
    """Training dialogues with the titles mentioned next, and test dialogues with one title each."""

    train_dialogues: list[str]
    train_titles: list[list[str]]
    test_dialogues: list[str]
    test_titles: list[str]

    @classmethod
    def load(cls, folder: str | Path) -> Inspired:
        """Read `inspired_train.csv` and `inspired_test.csv` from `folder`."""
        folder = Path(folder)
        train = read_path(folder / "inspired_train.csv", required=("full_situation", "movies"))
        test = read_path(folder / "inspired_test.csv", required=("test_inputs", "test_outputs"))
        return cls(
            train_dialogues=train["full_situation"].tolist(),
            train_titles=[[title_key(t) for t in ast.literal_eval(m)] for m in train["movies"]],
            test_dialogues=test["test_inputs"].tolist(),
            test_titles=[title_key(t) for t in test["test_outputs"]],
        )

    def contexts(self) -> list[str]:
        """The unique training dialogues, sorted (what recorded proposals index into)."""
        return sorted(set(self.train_dialogues))


def load_proposals(path: str | Path, data: Inspired) -> dict[str, list[str]]:
    """Proposals per training dialogue text, from a recorded file (`context_index`, `context_sha1`,
    `properties`; see the data README) or a table with `text` and `properties` columns (JSONL, CSV, Parquet;
    e.g. the project's proposals joined with its documents). Unparsed entries (null) are skipped."""
    path = Path(path)
    frame = read_path(path)
    # A CSV cell holds a list as Python writes it, e.g. "['Comedy genre']".
    if path.suffix.lower() == ".csv" and "properties" in frame:
        frame["properties"] = [_literal(path, cell) for cell in frame["properties"]]
    if {"text", "properties"} <= set(frame.columns):
        pairs = zip(frame["text"], frame["properties"], strict=True)
    elif {"context_index", "properties"} <= set(frame.columns):
        contexts = data.contexts()
        pairs = []
        for index, digest, props in zip(
            frame["context_index"],
            frame.get("context_sha1", [None] * len(frame)),
            frame["properties"],
            strict=True,
        ):
            text = contexts[int(index)]
            if digest is not None and hashlib.sha1(text.encode()).hexdigest() != digest:
                raise ValueError(
                    f"{path}: context {index} does not match its sha1: a different INSPIRED split?"
                )
            pairs.append((text, props))
    else:
        raise ValueError(f"{path}: expected columns text+properties or context_index+properties")
    # Unparsed outputs are null (None, or NaN in a column pandas made numeric); Parquet gives arrays.
    proposals = {
        text: list(props)
        for text, props in pairs
        if isinstance(props, list | tuple | np.ndarray) and len(props)
    }
    if not proposals:
        raise ValueError(f"{path}: no dialogue has a parsed list of properties")
    return proposals


def _literal(path: Path, cell: str) -> object:
    """A CSV cell's Python literal; an error naming the file when it is none."""
    try:
        return ast.literal_eval(cell)
    except (ValueError, SyntaxError) as error:
        raise ValueError(f"{path}: not a readable list of properties: {cell!r} ({error})") from error
