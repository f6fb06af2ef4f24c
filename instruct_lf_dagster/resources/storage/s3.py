"""S3Storage: Parquet tables, artefact folders, pages and the LLM response cache under s3://bucket/prefix/."""

import io
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from botocore.exceptions import ClientError
from dagster_aws.s3 import S3Resource
from pydantic import Field

from instruct_lf_dagster.core.llm import Completion
from instruct_lf_dagster.resources.storage.artefacts import dump_artefact, restore_artefact
from instruct_lf_dagster.resources.storage.base import BATCH, Storage, arrow
from instruct_lf_dagster.resources.storage.errors import named_write_errors

log = logging.getLogger(__name__)


class S3ResponseCache:
    """Successful LLM responses as one JSON object each under s3://bucket/prefix/, keyed by `cache_key`: runs in
    several pods add answers at once without a lock, and none is lost."""

    def __init__(self, client, bucket: str, prefix: str) -> None:
        self.client, self.bucket, self.prefix = client, bucket, prefix.strip("/")
        self.path = f"s3://{bucket}/{self.prefix}"

    def _object(self, key: str) -> str:
        return f"{self.prefix}/{key}.json"

    def _get(self, key: str) -> Completion | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._object(key))["Body"].read()
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        try:
            record = json.loads(body)
            return Completion(
                text=str(record["text"]),
                cached=True,
                prompt_tokens=int(record["prompt_tokens"]),
                completion_tokens=int(record["completion_tokens"]),
                cost_usd=float(record["cost_usd"]),
            )
        except (ValueError, TypeError, KeyError) as error:
            # A damaged entry costs one call again (the answer overwrites it), never the run.
            log.warning("LLM cache %s/%s is unreadable (%s): asked again", self.path, key, error)
            return None

    def get_many(self, keys: Sequence[str]) -> dict[str, Completion]:
        """The cached completions among `keys` (marked cached), fetched 16 at a time."""
        with ThreadPoolExecutor(max_workers=16) as pool:
            found = dict(zip(keys, pool.map(self._get, keys), strict=True))
        return {key: completion for key, completion in found.items() if completion is not None}

    def put(self, key: str, completion: Completion, *, model: str = "", request: str = "") -> None:
        """Store a successful completion; errors are never stored, so they are asked again next time."""
        if completion.error is not None or completion.text is None:
            raise ValueError("only successful completions are cached")
        record = {
            "model": model,
            "request": request,
            "text": completion.text,
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "cost_usd": completion.cost_usd,
            "created": time.time(),
        }
        body = json.dumps(record, ensure_ascii=False).encode("utf-8")
        self.client.put_object(Bucket=self.bucket, Key=self._object(key), Body=body)


class S3Storage(Storage):
    """Parquet tables (one object per batch) and artefact folders under s3://bucket/prefix/."""

    s3: S3Resource
    bucket: str
    prefix: str = "instruct-lf"
    local_cache: str = Field(
        description="local folder for artefacts downloaded from the bucket, and this storage's scratch_dir()"
    )

    def _key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p)

    def _list(self, prefix: str) -> list[str]:
        client = self.s3.get_client()
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return keys

    def _put_parquet(self, what: str, key: str, df: pd.DataFrame) -> None:
        buffer = io.BytesIO()
        pq.write_table(arrow(df), buffer)
        with named_write_errors(what, f"s3://{self.bucket}/{key}"):
            self.s3.get_client().put_object(Bucket=self.bucket, Key=key, Body=buffer.getvalue())

    def _get_parquet(self, key: str) -> pd.DataFrame:
        body = self.s3.get_client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return pq.read_table(io.BytesIO(body)).to_pandas()

    def _write_table(self, name: str, df: pd.DataFrame, batches: list[str] | None) -> None:
        if batches is None:
            self._put_parquet(f"table {name!r}", self._key("tables", f"{name}.parquet"), df)
            return
        for batch in batches:
            key = self._key("tables", name, f"{batch}.parquet")
            self._put_parquet(f"table {name!r} (batch {batch!r})", key, df[df[BATCH] == batch])

    def _read_table(self, name: str, batches: Sequence[str] | None) -> pd.DataFrame:
        if batches is None:
            return self._get_parquet(self._key("tables", f"{name}.parquet"))
        frames = []
        for batch in batches:  # a batch never written has no rows, as in DuckDB
            try:
                frames.append(self._get_parquet(self._key("tables", name, f"{batch}.parquet")))
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") != "NoSuchKey":
                    raise
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def _has_table(self, name: str) -> bool:
        return self._key("tables", f"{name}.parquet") in self._list(self._key("tables", f"{name}.parquet"))

    def _save_artefact(self, name: str, obj: object) -> None:
        client = self.s3.get_client()
        what, where = f"artefact {name!r}", f"s3://{self.bucket}/{self._key('artefacts', name)}"
        with tempfile.TemporaryDirectory() as tmp, named_write_errors(what, where):
            folder = Path(tmp) / name
            with named_write_errors(f"{what} (its local copy before the upload)", folder):
                dump_artefact(obj, folder)
            stale = set(self._list(self._key("artefacts", name) + "/"))
            files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json")
            # The manifest goes last: a reader never sees a manifest without its files.
            for path in [*files, folder / "manifest.json"]:
                key = self._key("artefacts", name, path.relative_to(folder).as_posix())
                client.upload_file(str(path), self.bucket, key)
                stale.discard(key)
            for key in stale:
                client.delete_object(Bucket=self.bucket, Key=key)

    def _load_artefact(self, name: str) -> object | None:
        prefix = self._key("artefacts", name) + "/"
        keys = self._list(prefix)
        if prefix + "manifest.json" not in keys:
            return None
        client = self.s3.get_client()
        # Under the bucket's name too: storages of several buckets can share one cache folder.
        folder = Path(self.local_cache).expanduser() / self.bucket / self._key("artefacts", name)
        shutil.rmtree(folder, ignore_errors=True)
        with named_write_errors(f"artefact {name!r} (its local copy)", folder):
            for key in keys:
                target = folder / key[len(prefix) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(self.bucket, key, str(target))
        return restore_artefact(folder)

    def save_page(self, name: str, html: str) -> str:
        key = self._key("pages", f"{name}.html")
        with named_write_errors(f"page {name!r}", f"s3://{self.bucket}/{key}"):
            self.s3.get_client().put_object(
                Bucket=self.bucket, Key=key, Body=html.encode("utf-8"), ContentType="text/html; charset=utf-8"
            )
        return f"s3://{self.bucket}/{key}"

    def scratch_dir(self) -> Path:
        folder = Path(self.local_cache).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def response_cache(self) -> S3ResponseCache:
        # Run pods are thrown away after each run: a cache on their disk would pay for every answer again.
        return S3ResponseCache(self.s3.get_client(), self.bucket, self._key("llm_cache"))
