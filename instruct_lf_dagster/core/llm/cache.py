"""Where answers persist: the cache key of a request, the `Cache` protocol, and the DuckDB `ResponseCache`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import duckdb

from instruct_lf_dagster.core.duckdb_lock import connect_duckdb, is_locked
from instruct_lf_dagster.core.llm.types import Completion, Messages

log = logging.getLogger(__name__)
T = TypeVar("T")
# What DuckDB says of a file that is not a readable database (a lock is another matter: it is waited for).
_DAMAGE = ("not a valid duckdb database", "could not read enough bytes", "corrupt", "checksum")

_TABLE = """
CREATE TABLE IF NOT EXISTS llm_responses (
    key VARCHAR PRIMARY KEY,
    model VARCHAR,
    request VARCHAR,
    text VARCHAR,
    prompt_tokens BIGINT,
    completion_tokens BIGINT,
    cost_usd DOUBLE,
    created_at TIMESTAMP
)
"""


def cache_key(model: str, messages: Messages, **settings: object) -> str:
    """sha256 of the canonical JSON of everything that changes a response (`request_record`'s arguments)."""
    return hashlib.sha256(request_record(model, messages, **settings).encode("utf-8")).hexdigest()


def request_record(
    model: str,
    messages: Messages,
    *,
    temperature: float,
    max_tokens: int,
    seed: int | None,
    response_format: dict | None = None,
) -> str:
    """The canonical JSON of a request: what `cache_key` hashes, stored beside the answer for reading."""
    # float()/int() so that 0 and 0.0 give the same key.
    record = {
        "model": model,
        "messages": messages,
        "temperature": float(temperature),
        "max_tokens": int(max_tokens),
        "seed": None if seed is None else int(seed),
        "response_format": response_format,
    }
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


class Cache(Protocol):
    """Where successful responses persist: `ResponseCache` (a DuckDB file) or an object store."""

    path: str

    def get_many(self, keys: Sequence[str]) -> dict[str, Completion]: ...

    def put(self, key: str, completion: Completion, *, model: str = "", request: str = "") -> None: ...


class ResponseCache:
    """Successful LLM responses in a DuckDB table, keyed by `cache_key`.

    A file cache opens a short-lived connection per operation, because DuckDB lets only one process hold a
    database file for writing and Dagster may run steps in several processes; a locked file is waited for
    up to `lock_timeout` seconds. A damaged file is set aside as `<name>.damaged-<time>` (a WARNING names
    both) and a fresh cache started: its answers are asked again.
    """

    def __init__(self, path: str | Path, *, lock_timeout: float = 120.0):
        self.path = str(path)
        self.lock_timeout = lock_timeout
        self._guard = threading.Lock()
        # An in-memory database lives only as long as its connection, so that one is kept.
        self._memory = duckdb.connect(":memory:") if self.path == ":memory:" else None
        if self._memory is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._run(lambda con: con.execute(_TABLE))

    @classmethod
    def memory(cls) -> ResponseCache:
        """A cache that lives as long as this object (tests, and a resource given no cache file)."""
        return cls(":memory:")

    def __repr__(self) -> str:
        return f"ResponseCache({self.path!r})"

    def _run(self, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """`work` on a connection; on a damaged file, once more on a fresh one."""
        # One operation at a time per object: the kept in-memory connection is not shared between threads.
        with self._guard:
            if self._memory is not None:
                return work(self._memory)
            seen = _identity(self.path)
            try:
                with connect_duckdb(self.path, timeout=self.lock_timeout) as con:
                    return work(con)
            except duckdb.Error as error:
                if not _damaged(error):
                    raise
                self._set_aside(error, seen)
            with connect_duckdb(self.path, timeout=self.lock_timeout) as con:
                con.execute(_TABLE)
                return work(con)

    def _set_aside(self, error: duckdb.Error, seen: tuple[int, int] | None) -> None:
        # Another process may have set it aside already and started a fresh file: that one is kept.
        if seen is None or _identity(self.path) != seen:
            return
        aside = f"{self.path}.damaged-{time.strftime('%Y%m%dT%H%M%S')}"
        while os.path.exists(aside):
            aside += "+"
        os.replace(self.path, aside)
        # DuckDB's write-ahead log goes with its file: replayed into a fresh one, it would fail again.
        if os.path.exists(f"{self.path}.wal"):
            os.replace(f"{self.path}.wal", f"{aside}.wal")
        message = " ".join(str(error).split())[:300]
        log.warning(
            "LLM response cache %s is damaged (%s): set aside as %s; a fresh cache starts, its answers are "
            "asked again",
            self.path,
            message,
            aside,
        )

    def get_many(self, keys: Sequence[str]) -> dict[str, Completion]:
        """The cached completions among `keys` (marked cached)."""
        if not keys:
            return {}
        rows = self._run(
            lambda con: con.execute(
                "SELECT key, text, prompt_tokens, completion_tokens, cost_usd FROM llm_responses"
                " WHERE key = ANY(?)",
                [list(keys)],
            ).fetchall()
        )
        return {
            key: Completion(text=text, cached=True, prompt_tokens=pt, completion_tokens=ct, cost_usd=cost)
            for key, text, pt, ct, cost in rows
        }

    def put(self, key: str, completion: Completion, *, model: str = "", request: str = "") -> None:
        """Store a successful completion; errors are never stored, so they are asked again next time."""
        if completion.error is not None or completion.text is None:
            raise ValueError("only successful completions are cached")
        row = [
            key,
            model,
            request,
            completion.text,
            completion.prompt_tokens,
            completion.completion_tokens,
            completion.cost_usd,
        ]
        self._run(
            lambda con: con.execute(
                "INSERT OR REPLACE INTO llm_responses VALUES (?, ?, ?, ?, ?, ?, ?, now())", row
            )
        )

    def __len__(self) -> int:
        return self._run(lambda con: con.execute("SELECT count(*) FROM llm_responses").fetchone()[0])


def _damaged(error: duckdb.Error) -> bool:
    """Whether DuckDB failed because the file is not a readable database (not because it is locked)."""
    if is_locked(error):
        return False
    text = str(error).lower()
    return isinstance(error, duckdb.SerializationException) or any(sign in text for sign in _DAMAGE)


def _identity(path: str) -> tuple[int, int] | None:
    """Which file `path` is now (device, inode); None when there is none."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino
