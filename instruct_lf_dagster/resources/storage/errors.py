"""A full disk or a refused permission while storing, named as such: what was being written, and where."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
from botocore.exceptions import ClientError

NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}
# Errors that carry no errno (DuckDB's, some of Arrow's) say it in words.
NO_SPACE_WORDS = ("no space left", "disk is full", "disk quota exceeded")
DENIED_WORDS = ("permission denied", "read-only file system", "accessdenied", "access denied")


class StorageWriteError(OSError):
    """A write the disk or its permissions refused; `errno` is ENOSPC or EACCES, the message names the table,
    artefact or page and the path."""

    def __str__(self) -> str:
        return str(self.strerror)


def _kind(error: BaseException) -> int | None:
    code = getattr(error, "errno", None)
    if isinstance(error, ClientError):
        code = errno.EACCES if error.response.get("Error", {}).get("Code") == "AccessDenied" else None
    text = str(error).lower()
    if code in NO_SPACE or any(words in text for words in NO_SPACE_WORDS):
        return errno.ENOSPC
    if code in DENIED or any(words in text for words in DENIED_WORDS):
        return errno.EACCES
    return None


@contextmanager
def named_write_errors(what: str, where: Path | str) -> Iterator[None]:
    """Inside: a full disk or a refused permission while writing `what` (e.g. "table 'documents'") at `where`
    becomes a StorageWriteError saying so; any other error passes unchanged."""
    try:
        yield
    except StorageWriteError:
        raise
    except (OSError, duckdb.Error, ClientError) as error:
        kind = _kind(error)
        if kind is None:
            raise
        path = getattr(error, "filename", None) or where
        reason = (
            f"no space left on the device holding {path}"
            if kind == errno.ENOSPC
            else f"permission denied writing {path}"
        )
        raise StorageWriteError(kind, f"cannot write {what}: {reason} ({error})") from error
