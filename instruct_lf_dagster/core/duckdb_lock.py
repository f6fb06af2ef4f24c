"""Opening a DuckDB file that another process may hold: DuckDB lets one process at a time write a database
file, and Dagster runs steps in several processes, so a locked file is waited for instead of failing a step."""

from __future__ import annotations

import random
import time
from pathlib import Path

import duckdb

# How DuckDB says that another process holds the file ("Could not set lock on file ...: Conflicting lock is
# held in ..."); a bare "lock" would also match "block", which corruption errors name.
_LOCKED = ("could not set lock", "conflicting lock")


def is_locked(error: BaseException) -> bool:
    """Whether a DuckDB error says that another process holds the database file."""
    text = str(error).lower()
    return any(sign in text for sign in _LOCKED)


def connect_duckdb(path: str | Path, *, timeout: float, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A connection to the database file `path`, retried while another process holds its lock.

    Gives up after `timeout` seconds, raising DuckDB's error; any other error is raised at once. The caller
    closes the connection (`with connect_duckdb(...) as con:` does).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as error:
            if not is_locked(error) or time.monotonic() > deadline:
                raise
            # Random pauses, so that processes waiting for the same file do not retry in step.
            time.sleep(random.uniform(0.05, 0.5))
