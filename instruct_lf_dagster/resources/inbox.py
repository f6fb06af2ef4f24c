"""The inbox: where document files arrive. Each file is one batch (one partition of `batches`).

A file's batch key is fixed when the file is first registered and recorded beside the files (`.batches/<key>`
holds the file's name), so a key never moves to another file. New keys come from `batch_key`; a key registered by
an earlier version (`legacy_key`) is recorded, the first time it is registered or read again, for the file the old
rule gave it (the first name, in sorted order, of those sharing it), and stays with that file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import threading
import unicodedata
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
from botocore.exceptions import ClientError
from dagster_aws.s3 import S3Resource
from pydantic import Field

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
RECORDS = ".batches"  # beside the files: one record per registered key
DIGITS = (8, 16, 64)  # hash digits of a key; more only when the shorter key is already another file's
STEM_CHARS = 48
log = logging.getLogger(__name__)


def _bytes(name: str) -> bytes:
    # surrogateescape: a local name that is not UTF-8 still has bytes, hence a hash and a record.
    return name.encode("utf-8", "surrogateescape")


def batch_key(file_name: str, digits: int = DIGITS[0]) -> str:
    """A partition key from a file name: a readable ASCII stem, a hash of the whole name, the suffix.

    'with space.jsonl' -> 'with_space-<8 hex>.jsonl'; '映画レビュー.jsonl' -> 'batch-<8 hex>.jsonl'. Distinct
    names differ in the hash; the key is at most 48 + 1 + 64 + 8 characters and a valid Dagster partition key.
    """
    suffix = next((s for s in SUFFIXES if file_name.lower().endswith(s)), "")
    stem = file_name[: len(file_name) - len(suffix)]
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", ascii_stem).strip("_-")[:STEM_CHARS].strip("_-") or "batch"
    return f"{readable}-{hashlib.sha256(_bytes(file_name)).hexdigest()[:digits]}{suffix}"


def legacy_key(file_name: str) -> str:
    """The key earlier versions derived from a name (distinct names could share it); only read back now."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(file_name).name).strip("._-")
    return stem[:120] or "batch"


class BatchFileError(ValueError):
    """A batch whose file cannot be told apart; the message names the files."""


def _derived(names: list[str]) -> dict[str, list[str]]:
    """Key -> the files that a key without a record may stand for: by the old rule first (it made such keys),
    then by the new one."""
    found: dict[str, list[str]] = {}
    for rule in (lambda n: [legacy_key(n)], lambda n: [batch_key(n, d) for d in DIGITS]):
        for name in names:
            for key in rule(name):
                if name not in found.setdefault(key, []):
                    found[key].append(name)
    return found


def _recordable(key: str) -> bool:
    """Whether a key can name its record: what both rules make (a key added by hand may not)."""
    return re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}", key) is not None


class Inbox(dg.ConfigurableResource):
    """Document files waiting to be discovered, and the record of their batch keys; `LocalInbox` or `S3Inbox`."""

    def names(self) -> list[str]:
        """Every document file's name, sorted."""
        return sorted(n for n in self._names() if n.lower().endswith(SUFFIXES))

    def register(self, registered: Collection[str], logger: logging.Logger | None = None) -> dict[str, str]:
        """Batch key -> file name for every document file, recording the key of each file seen the first time.

        `registered`: the partition keys already registered. One of them without a record (made by an earlier
        version) is recorded for the file it stands for now; any other file gets `batch_key`, with a longer hash
        when that key is another file's. A record that cannot be written is logged at ERROR; the key is still
        given, since the name alone gives it back.
        """
        logger = logger or log
        names = self.names()
        records = self._records()
        held = {name: key for key, name in records.items()}
        derived = _derived([n for n in names if n not in held])
        for key in registered:
            found = [n for n in derived.get(key, []) if n not in held]
            if key not in records and found and _recordable(key):
                held[self._record_or_log(key, found[0], logger)] = key
        taken = set(records) | set(registered)
        for name in names:
            if name in held:
                continue
            for key in (k for k in (batch_key(name, d) for d in DIGITS) if k not in taken):
                # The name the key is recorded for: another process may have taken it for another file just now.
                owner = self._record_or_log(key, name, logger)
                held[owner] = key
                taken.add(key)
                if owner == name:
                    break
            else:
                logger.error(f"{name} cannot be registered: its batch keys are other files'; rename it")
        return {key: name for name, key in held.items() if name in names}

    def read(self, key: str) -> tuple[str, bytes]:
        """The file name and bytes of a batch; FileNotFoundError when its file has gone.

        A key without a record is found by the rules that make keys, and recorded for the file it was read from.
        """
        name = self._record(key) if _recordable(key) else None
        if name is None:
            others = set(self._records().values())
            found = [n for n in _derived(self.names()).get(key, []) if n not in others]
            if len(found) > 1:
                raise BatchFileError(f"batch {key!r}: files {found} all map to it; rename all but one")
            if not found:
                raise FileNotFoundError(f"batch {key!r}: no file for it in {self.where()}")
            name = found[0]
            if _recordable(key):
                with contextlib.suppress(OSError):  # registering logs a record it cannot write
                    name = name if self._add_record(key, name) else (self._record(key) or name)
        try:
            return name, self._read(name)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"batch {key!r}: its file {name} is gone from {self.where()}") from error

    def _record_or_log(self, key: str, name: str, logger: logging.Logger) -> str:
        """Record `key` for `name` unless it is recorded already; the name it is recorded for."""
        try:
            return name if self._add_record(key, name) else (self._record(key) or name)
        except OSError as error:
            logger.error(f"{name}: batch key {key!r} could not be recorded in {self.where()}: {error}")
            return name

    def where(self) -> str:
        raise NotImplementedError

    def _names(self) -> list[str]:
        raise NotImplementedError

    def _read(self, name: str) -> bytes:
        raise NotImplementedError

    def _records(self) -> dict[str, str]:
        """Every recorded key -> file name."""
        raise NotImplementedError

    def _record(self, key: str) -> str | None:
        raise NotImplementedError

    def _add_record(self, key: str, name: str) -> bool:
        """Record `key` for `name` unless the key has a record already (False then); OSError when it cannot."""
        raise NotImplementedError


class LocalInbox(Inbox):
    """A local folder of document files (locally: <data dir>/inbox)."""

    path: str = Field(description="the folder")

    def folder(self) -> Path:
        folder = Path(self.path)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def where(self) -> str:
        return str(self.folder())

    def _names(self) -> list[str]:
        return [p.name for p in self.folder().iterdir() if p.is_file()]

    def _read(self, name: str) -> bytes:
        return (self.folder() / name).read_bytes()

    def _records(self) -> dict[str, str]:
        folder = self.folder() / RECORDS
        paths = sorted(folder.iterdir()) if folder.is_dir() else []
        return {p.name: os.fsdecode(p.read_bytes()) for p in paths if not p.name.startswith(".")}

    def _record(self, key: str) -> str | None:
        path = self.folder() / RECORDS / key
        return os.fsdecode(path.read_bytes()) if path.is_file() else None

    def _add_record(self, key: str, name: str) -> bool:
        folder = self.folder() / RECORDS
        folder.mkdir(exist_ok=True)
        staging = folder / f".{key}.{os.getpid()}.{threading.get_ident()}"
        staging.write_bytes(os.fsencode(name))
        try:  # a link appears whole or not at all, and never replaces another process's record
            os.link(staging, folder / key)
            return True
        except FileExistsError:
            return False
        finally:
            staging.unlink(missing_ok=True)


_S3_RECORDS: dict[tuple[str | None, str, str], str] = {}  # records never change: read each one once


class S3Inbox(Inbox):
    """Document files under s3://bucket/prefix/ (not in its sub-folders)."""

    s3: S3Resource
    bucket: str
    prefix: str = "inbox/"

    def where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _list(self, prefix: str) -> list[str]:
        pages = self.s3.get_client().get_paginator("list_objects_v2")
        keys = []
        for page in pages.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            keys += [item["Key"][len(prefix) :] for item in page.get("Contents", [])]
        return [k for k in keys if k]

    def _names(self) -> list[str]:
        return self._list(self.prefix)

    def _read(self, name: str) -> bytes:
        try:
            return self.s3.get_client().get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"].read()
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(name) from error
            raise

    def _object(self, key: str) -> str:
        return f"{self.prefix}{RECORDS}/{key}"

    def _record(self, key: str) -> str | None:
        cached = (self.s3.endpoint_url, self.bucket, self._object(key))
        if cached not in _S3_RECORDS:
            try:
                body = self.s3.get_client().get_object(Bucket=self.bucket, Key=self._object(key))["Body"]
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            _S3_RECORDS[cached] = body.read().decode("utf-8")
        return _S3_RECORDS[cached]

    def _records(self) -> dict[str, str]:
        keys = self._list(f"{self.prefix}{RECORDS}/")
        with ThreadPoolExecutor(max_workers=16) as pool:
            names = list(pool.map(self._record, keys))
        return {key: name for key, name in zip(keys, names, strict=True) if name is not None}

    def _add_record(self, key: str, name: str) -> bool:
        try:
            self.s3.get_client().put_object(
                Bucket=self.bucket, Key=self._object(key), Body=name.encode("utf-8"), IfNoneMatch="*"
            )
            return True
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            denied = errno.EACCES if code == "AccessDenied" else errno.EIO
            raise OSError(denied, f"{code}: {error}", f"s3://{self.bucket}/{self._object(key)}") from error
