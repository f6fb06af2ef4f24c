"""Where answers persist: the cache key of a request, the `Cache` protocol, and the DuckDB `ResponseCache`."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import duckdb

from instruct_lf_dagster.core.duckdb_lock import connect_duckdb
from instruct_lf_dagster.core.llm.types import Completion, Messages

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


def cache_key(
    model: str,
    messages: Messages,
    *,
    temperature: float,
    max_tokens: int,
    seed: int | None,
    response_format: dict | None = None,
) -> str:
    """sha256 of the canonical JSON of everything that changes a response."""
    request = request_record(
        model,
        messages,
        temperature=temperature,
        max_tokens=max_tokens,
        seed=seed,
        response_format=response_format,
    )
    return hashlib.sha256(request.encode("utf-8")).hexdigest()


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
    up to `lock_timeout` seconds.
    """

    def __init__(self, path: str | Path, *, lock_timeout: float = 120.0):
        self.path = str(path)
        self.lock_timeout = lock_timeout
        self._guard = threading.Lock()
        # An in-memory database lives only as long as its connection, so that one is kept.
        self._memory = duckdb.connect(":memory:") if self.path == ":memory:" else None
        if self._memory is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute(_TABLE)

    @classmethod
    def memory(cls) -> ResponseCache:
        """A cache that lives as long as this object (tests, and a resource given no cache file)."""
        return cls(":memory:")

    def __repr__(self) -> str:
        return f"ResponseCache({self.path!r})"

    @contextmanager
    def _connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        # One operation at a time per object: the kept in-memory connection is not shared between threads.
        with self._guard:
            if self._memory is not None:
                yield self._memory
                return
            with connect_duckdb(self.path, timeout=self.lock_timeout) as con:
                yield con

    def get_many(self, keys: Sequence[str]) -> dict[str, Completion]:
        """The cached completions among `keys` (marked cached)."""
        if not keys:
            return {}
        with self._connect() as con:
            rows = con.execute(
                "SELECT key, text, prompt_tokens, completion_tokens, cost_usd FROM llm_responses"
                " WHERE key = ANY(?)",
                [list(keys)],
            ).fetchall()
        return {
            key: Completion(text=text, cached=True, prompt_tokens=pt, completion_tokens=ct, cost_usd=cost)
            for key, text, pt, ct, cost in rows
        }

    def put(self, key: str, completion: Completion, *, model: str = "", request: str = "") -> None:
        """Store a successful completion; errors are never stored, so they are asked again next time."""
        if completion.error is not None or completion.text is None:
            raise ValueError("only successful completions are cached")
        with self._connect() as con:
            con.execute(
                "INSERT OR REPLACE INTO llm_responses VALUES (?, ?, ?, ?, ?, ?, ?, now())",
                [
                    key,
                    model,
                    request,
                    completion.text,
                    completion.prompt_tokens,
                    completion.completion_tokens,
                    completion.cost_usd,
                ],
            )

    def __len__(self) -> int:
        with self._connect() as con:
            return con.execute("SELECT count(*) FROM llm_responses").fetchone()[0]
