"""The inbox: where document files arrive. Each file is one batch (one partition)."""

import logging
import re
from pathlib import Path

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import Field

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
log = logging.getLogger(__name__)


def batch_key(file_name: str) -> str:
    """A partition key from a file name: safe characters only, bounded length, stable."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(file_name).name).strip("._-")
    return stem[:120] or "batch"


class Inbox(dg.ConfigurableResource):
    """Document files waiting to be discovered; `LocalInbox` or `S3Inbox`."""

    def files(self) -> dict[str, str]:
        """Partition key -> file name, for every readable document file."""
        raise NotImplementedError

    def read(self, key: str) -> tuple[str, bytes]:
        """The file name and bytes of a batch; FileNotFoundError when its file has gone."""
        raise NotImplementedError


def _index(names: list[str]) -> dict[str, str]:
    index: dict[str, str] = {}
    for name in sorted(names):
        if not name.lower().endswith(SUFFIXES):
            continue
        key = batch_key(name)
        if key in index:  # the first name keeps the key: a batch never changes file
            log.warning("%s is not read: %s already has batch key %r; rename it", name, index[key], key)
        else:
            index[key] = name
    return index


class LocalInbox(Inbox):
    """A local folder of document files (locally: <data dir>/inbox)."""

    path: str = Field(description="the folder")

    def folder(self) -> Path:
        folder = Path(self.path)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def files(self) -> dict[str, str]:
        return _index([p.name for p in self.folder().iterdir() if p.is_file()])

    def read(self, key: str) -> tuple[str, bytes]:
        name = self.files().get(key)
        if name is None:
            raise FileNotFoundError(f"batch {key!r}: no file for it in {self.folder()}")
        return name, (self.folder() / name).read_bytes()


class S3Inbox(Inbox):
    """Document files under s3://bucket/prefix/."""

    s3: S3Resource
    bucket: str
    prefix: str = "inbox/"

    def files(self) -> dict[str, str]:
        client = self.s3.get_client()
        names = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            names += [item["Key"][len(self.prefix) :] for item in page.get("Contents", [])]
        return _index([n for n in names if n and "/" not in n])

    def read(self, key: str) -> tuple[str, bytes]:
        name = self.files().get(key)
        if name is None:
            raise FileNotFoundError(f"batch {key!r}: no file for it under s3://{self.bucket}/{self.prefix}")
        body = self.s3.get_client().get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"].read()
        return name, body
