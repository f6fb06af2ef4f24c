"""One reader for document files: JSON Lines, a JSON array, CSV or Parquet, from a file's name and bytes.

Dagster-free, so the inbox asset and the evaluations read every format the same way, and every error names
the file it is about.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")
SUFFIXES = JSON_SUFFIXES + CSV_SUFFIXES + PARQUET_SUFFIXES

BadLine = Callable[[int, str], None]  # (line number, what is wrong with it: "not JSON (...)", ...)


class RecordsError(ValueError):
    """A file that cannot be read as records; the message names the file and the problem."""


def read_records(
    name: str, data: bytes, *, required: Sequence[str] = (), on_bad_line: BadLine | None = None
) -> pd.DataFrame:
    """The rows of document file `name` (its bytes: `data`), in the format its suffix names.

    - .jsonl, .ndjson, .json: one JSON object a line, or a JSON array of objects (text starting with "[");
    - .csv: every cell as text, as written ("01" and "NA" stay what they are; an empty cell is "");
    - .parquet, .pq: the stored columns, types and index.
    Text is decoded as UTF-8 with undecodable bytes replaced by U+FFFD, so one bad byte costs a character,
    not the file.

    Raises RecordsError, naming the file, for an unknown suffix, an empty or unreadable file, a column of
    `required` that is missing, or a JSON line that is not a JSON object ("line N is not JSON"). With
    `on_bad_line`, such a line is passed to it (line number, reason) and skipped instead.
    """
    lowered = name.lower()
    if not lowered.endswith(SUFFIXES):
        raise RecordsError(
            f"{name}: unknown file kind {Path(name).suffix!r} (expected {', '.join(SUFFIXES)})"
        )
    if not data.strip():
        raise RecordsError(f"{name}: the file is empty")
    if lowered.endswith(PARQUET_SUFFIXES):
        try:
            frame = pd.read_parquet(io.BytesIO(data))
        except Exception as exc:  # pyarrow raises several kinds for a damaged file
            raise RecordsError(f"{name}: not a readable Parquet file ({exc})") from exc
    elif lowered.endswith(CSV_SUFFIXES):
        text = data.decode("utf-8", errors="replace")
        try:
            frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        except Exception as exc:
            raise RecordsError(f"{name}: not a readable CSV file ({exc})") from exc
    else:
        frame = _json(name, data.decode("utf-8", errors="replace"), on_bad_line)
    missing = [column for column in required if column not in frame.columns]
    if missing:
        found = ", ".join(map(str, frame.columns)) or "none"
        plural = "s" if len(missing) > 1 else ""
        raise RecordsError(f"{name}: no {', '.join(map(repr, missing))} column{plural} (found: {found})")
    return frame


def read_path(path: str | Path, *, required: Sequence[str] = ()) -> pd.DataFrame:
    """`read_records` of a local file; FileNotFoundError, naming it, when there is none."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    return read_records(str(path), data, required=required)


def _json(name: str, text: str, on_bad_line: BadLine | None) -> pd.DataFrame:
    """Records of a JSON array, or of JSON Lines (blank lines ignored)."""
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecordsError(f"{name}: not a readable JSON array ({exc})") from exc
        odd = next((i for i, item in enumerate(items, start=1) if not isinstance(item, dict)), None)
        if odd is not None:
            raise RecordsError(f"{name}: not a readable JSON array (item {odd} is not a JSON object)")
        return pd.DataFrame(items)
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            reason = f"not JSON ({exc.msg})"
        else:
            if isinstance(record, dict):
                records.append(record)
                continue
            reason = "not a JSON object"
        if on_bad_line is None:
            raise RecordsError(f"{name}: line {number} is {reason}")
        on_bad_line(number, reason)
    return pd.DataFrame(records)
