"""Where assets live: DuckDB and files locally, Parquet and files on S3 in production.

Tables are pandas DataFrames; partitioned ones carry a `batch` column, and writing a batch replaces exactly its
rows, so re-materialising is idempotent. Artefacts (vocabulary, linker, Linear CorEx) are saved by their own
`save` methods into a folder with a small manifest: no pickle anywhere.
"""

import io
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import dagster as dg
import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import ClientError
from dagster_aws.s3 import S3Resource
from pydantic import Field

from instruct_lf_dagster.core.llm import Cache, Completion
from instruct_lf_dagster.core.paths import data_dir

BATCH = "batch"
log = logging.getLogger(__name__)


def _artefact_kinds() -> dict[str, tuple[type, str]]:
    """Artefact kind -> (class with save/load, file or folder name inside the artefact folder)."""
    from instruct_lf_dagster.core.factors import Factors
    from instruct_lf_dagster.core.linker import Linker
    from instruct_lf_dagster.core.vocabulary import Vocabulary

    return {
        "vocabulary": (Vocabulary, "vocabulary.json"),
        "linker": (Linker, "linker"),
        "factors": (Factors, "factors"),
    }


def dump_artefact(obj: object, folder: Path) -> None:
    """Save `obj` into `folder` (replacing it) with a manifest naming its kind."""
    matches = [(kind, name) for kind, (cls, name) in _artefact_kinds().items() if isinstance(obj, cls)]
    if not matches:
        raise TypeError(f"cannot store {type(obj).__name__}: not a DataFrame or a known artefact")
    kind, name = matches[0]
    staging = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    obj.save(staging / name)
    (staging / "manifest.json").write_text(json.dumps({"kind": kind, "saved_at": time.time()}))
    # Swap in one step so a crash mid-save never leaves a half-written artefact behind.
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)


def restore_artefact(folder: Path) -> object:
    """Load an artefact saved by `dump_artefact`."""
    kind = json.loads((folder / "manifest.json").read_text())["kind"]
    cls, name = _artefact_kinds()[kind]
    return cls.load(folder / name)


def _arrow(df: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)


class Storage(dg.ConfigurableResource):
    """Tables and artefacts of the platform; `LocalStorage` or `S3Storage`, chosen per environment."""

    def write_table(self, name: str, df: pd.DataFrame, batches: Sequence[str] | None) -> None:
        raise NotImplementedError

    def read_table(self, name: str, batches: Sequence[str] | None = None) -> pd.DataFrame:
        raise NotImplementedError

    def has_table(self, name: str) -> bool:
        """Whether an unpartitioned table `name` was ever written."""
        raise NotImplementedError

    def save_artefact(self, name: str, obj: object) -> None:
        raise NotImplementedError

    def response_cache(self) -> Cache | None:
        """Where LLM answers persist beside this storage; None: the LLM resource's DuckDB file."""
        return None

    def load_artefact(self, name: str) -> object | None:
        """The stored artefact, or None when it was never materialised."""
        raise NotImplementedError

    def save_page(self, name: str, html: str) -> str:
        """Store a self-contained HTML page; returns where it is (a file path or an s3:// URI)."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def portable(self) -> "Portable":
        """This storage as its settings, which pickle (the run's context does not): a Ray worker opens it."""
        return Portable.of(self)


@dataclass(frozen=True)
class Portable:
    """A resource as its class and settings; `open()` builds it again, in any process."""

    kind: type
    settings: dict

    @classmethod
    def of(cls, resource: dg.ConfigurableResource) -> "Portable":
        values = {name: getattr(resource, name) for name in type(resource).model_fields}
        return cls(
            type(resource),
            {k: cls.of(v) if isinstance(v, dg.ConfigurableResource) else v for k, v in values.items()},
        )

    def open(self):
        return self.kind(**{k: v.open() if isinstance(v, Portable) else v for k, v in self.settings.items()})


def _present_batches(df: pd.DataFrame, batches: Sequence[str] | None, name: str) -> list[str] | None:
    """The run's batches that `df` has rows for: only these are replaced, so a batch that failed keeps its
    earlier rows."""
    if batches is None:
        return None
    if BATCH not in df.columns:
        raise ValueError(f"partitioned table {name!r} needs a {BATCH!r} column")
    present = set(df[BATCH].unique())
    if present - set(batches):
        raise ValueError(
            f"table {name!r} has rows for batches outside this run: {sorted(present - set(batches))}"
        )
    return sorted(present)


class LocalStorage(Storage):
    """Files under the data directory: one Parquet file per batch of a partitioned table (reading a batch never
    reads the others), a DuckDB file holding the unpartitioned tables and a view over each partitioned one (so
    `duckdb instruct_lf.duckdb` shows every table), and a folder for artefacts."""

    database: str = Field(default="", description="DuckDB file; default <data dir>/instruct_lf.duckdb")
    artefacts: str = Field(default="", description="artefact folder; default <data dir>/artefacts")

    def _database(self) -> str:
        return self.database or str(data_dir() / "instruct_lf.duckdb")

    def _artefacts(self) -> Path:
        return Path(self.artefacts) if self.artefacts else data_dir() / "artefacts"

    def _batch_files(self, name: str) -> Path:
        database = Path(self._database())
        return database.with_name(f"{database.stem}_tables") / name

    def _batch_file(self, name: str, batch: str) -> Path:
        return self._batch_files(name) / f"{quote(batch, safe='')}.parquet"

    def _connect(self, timeout: float = 120.0) -> duckdb.DuckDBPyConnection:
        # DuckDB allows one writing process; another step holding the file is waited for, briefly.
        deadline = time.monotonic() + timeout
        Path(self._database()).parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                return duckdb.connect(self._database())
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    @staticmethod
    def _kind(con: duckdb.DuckDBPyConnection, name: str) -> str | None:
        """'BASE TABLE', 'VIEW' or None."""
        query = "SELECT table_type FROM information_schema.tables WHERE table_name = ?"
        found = con.execute(query, [name]).fetchall()
        return found[0][0] if found else None

    def write_table(self, name: str, df: pd.DataFrame, batches: Sequence[str] | None) -> None:
        batches = _present_batches(df, batches, name)
        if batches is None:
            with self._connect() as con:
                con.register("incoming", _arrow(df))
                con.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM incoming')
            return
        for batch in batches:
            self._write_file(self._batch_file(name, batch), df[df[BATCH] == batch])
        with self._connect() as con:
            if self._kind(con, name) == "BASE TABLE":
                self._move_to_files(con, name)
            if self._kind(con, name) is None and any(self._batch_files(name).glob("*.parquet")):
                files = (self._batch_files(name) / "*.parquet").as_posix().replace("'", "''")
                con.execute(
                    f"CREATE VIEW \"{name}\" AS SELECT * FROM read_parquet('{files}', union_by_name = true)"
                )

    @staticmethod
    def _write_file(path: Path, df: pd.DataFrame) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(path.name + ".tmp")
        pq.write_table(_arrow(df), staging)
        staging.replace(path)  # a reader sees the old batch or the new one, never half of one

    def _move_to_files(self, con: duckdb.DuckDBPyConnection, name: str) -> None:
        """A partitioned table stored whole in DuckDB (by earlier versions) becomes a file per batch."""
        for (batch,) in con.execute(f'SELECT DISTINCT {BATCH} FROM "{name}"').fetchall():
            if not self._batch_file(name, batch).exists():
                rows = con.sql(f'SELECT * FROM "{name}" WHERE {BATCH} = ?', params=[batch])
                self._write_file(self._batch_file(name, batch), rows.to_arrow_table().to_pandas())
        con.execute(f'DROP TABLE "{name}"')

    def read_table(self, name: str, batches: Sequence[str] | None = None) -> pd.DataFrame:
        if not self._batch_files(name).is_dir():
            with self._connect() as con:
                kind = self._kind(con, name)
                if batches is None:  # unpartitioned; one never written: DuckDB names it
                    return con.sql(f'SELECT * FROM "{name}"').to_arrow_table().to_pandas()
                if kind == "BASE TABLE":
                    self._move_to_files(con, name)
        if batches is None:
            paths = sorted(self._batch_files(name).glob("*.parquet"))
        else:  # a batch never written has no rows
            paths = [p for p in (self._batch_file(name, b) for b in batches) if p.exists()]
        frames = [pq.read_table(p).to_pandas() for p in paths]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def has_table(self, name: str) -> bool:
        with self._connect() as con:
            return self._kind(con, name) is not None

    def save_artefact(self, name: str, obj: object) -> None:
        dump_artefact(obj, self._artefacts() / name)

    def load_artefact(self, name: str) -> object | None:
        folder = self._artefacts() / name
        return restore_artefact(folder) if (folder / "manifest.json").exists() else None

    def save_page(self, name: str, html: str) -> str:
        path = self._artefacts() / f"{name}.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(path.name + ".tmp")
        staging.write_text(html, encoding="utf-8")
        staging.replace(path)
        return str(path.resolve())

    def describe(self) -> str:
        return f"duckdb:{self._database()}"


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

    def _key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p)

    def _list(self, prefix: str) -> list[str]:
        client = self.s3.get_client()
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return keys

    def _put_parquet(self, key: str, df: pd.DataFrame) -> None:
        buffer = io.BytesIO()
        pq.write_table(_arrow(df), buffer)
        self.s3.get_client().put_object(Bucket=self.bucket, Key=key, Body=buffer.getvalue())

    def _get_parquet(self, key: str) -> pd.DataFrame:
        body = self.s3.get_client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return pq.read_table(io.BytesIO(body)).to_pandas()

    def write_table(self, name: str, df: pd.DataFrame, batches: Sequence[str] | None) -> None:
        batches = _present_batches(df, batches, name)
        if batches is None:
            self._put_parquet(self._key("tables", f"{name}.parquet"), df)
            return
        for batch in batches:
            self._put_parquet(self._key("tables", name, f"{batch}.parquet"), df[df[BATCH] == batch])

    def read_table(self, name: str, batches: Sequence[str] | None = None) -> pd.DataFrame:
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

    def has_table(self, name: str) -> bool:
        return self._key("tables", f"{name}.parquet") in self._list(self._key("tables", f"{name}.parquet"))

    def save_artefact(self, name: str, obj: object) -> None:
        client = self.s3.get_client()
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / name
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

    def load_artefact(self, name: str) -> object | None:
        prefix = self._key("artefacts", name) + "/"
        keys = self._list(prefix)
        if prefix + "manifest.json" not in keys:
            return None
        client = self.s3.get_client()
        folder = data_dir() / "s3_cache" / self.bucket / self._key("artefacts", name)
        shutil.rmtree(folder, ignore_errors=True)
        for key in keys:
            target = folder / key[len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(self.bucket, key, str(target))
        return restore_artefact(folder)

    def save_page(self, name: str, html: str) -> str:
        key = self._key("pages", f"{name}.html")
        self.s3.get_client().put_object(
            Bucket=self.bucket, Key=key, Body=html.encode("utf-8"), ContentType="text/html; charset=utf-8"
        )
        return f"s3://{self.bucket}/{key}"

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def response_cache(self) -> S3ResponseCache:
        # Run pods are thrown away after each run: a cache on their disk would pay for every answer again.
        return S3ResponseCache(self.s3.get_client(), self.bucket, self._key("llm_cache"))


class StorageIOManager(dg.ConfigurableIOManager):
    """Stores DataFrames as tables and everything else as artefacts, in the environment's `Storage`."""

    storage: Storage

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        name = context.asset_key.to_python_identifier()
        if isinstance(obj, pd.DataFrame):
            batches = context.asset_partition_keys if context.has_asset_partitions else None
            self.storage.write_table(name, obj, batches)
            context.add_output_metadata({"rows": len(obj), "stored_in": self.storage.describe()})
        else:
            self.storage.save_artefact(name, obj)
            context.add_output_metadata({"stored_in": self.storage.describe()})

    def load_input(self, context: dg.InputContext) -> object:
        name = context.asset_key.to_python_identifier()
        if context.dagster_type.typing_type is pd.DataFrame:
            batches = context.asset_partition_keys if context.has_asset_partitions else None
            return self.storage.read_table(name, batches)
        obj = self.storage.load_artefact(name)
        if obj is None:
            raise dg.Failure(f"{name} has not been materialised yet: run the discovery job first")
        return obj
