"""The Storage resource's interface, its naming rule for assets, and what every backend shares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa

from instruct_lf_dagster.core.llm import Cache

BATCH = "batch"

# An asset key, or a table name as stored (what callers passed before keys; kept so that they keep working).
TableRef = dg.AssetKey | str


class Storage(dg.ConfigurableResource):
    """Tables and artefacts of the platform; `LocalStorage` or `S3Storage`, chosen per environment.

    Tables are pandas DataFrames; partitioned ones carry a `batch` column, and writing a batch replaces exactly
    its rows, so re-materialising is idempotent. Backends implement the `_`-prefixed methods, which get names
    already resolved by `table_name`.
    """

    @staticmethod
    def table_name(key: dg.AssetKey) -> str:
        """The one name an asset's table or artefact is stored under: its key's path joined by '__'."""
        return key.to_python_identifier()

    def _name(self, table: TableRef) -> str:
        return self.table_name(table) if isinstance(table, dg.AssetKey) else table

    def write_table(self, table: TableRef, df: pd.DataFrame, batches: Sequence[str] | None) -> None:
        """Store `df`: whole when `batches` is None, else replacing the rows of the batches it has."""
        name = self._name(table)
        self._write_table(name, df, present_batches(df, batches, name))

    def read_table(self, table: TableRef, batches: Sequence[str] | None = None) -> pd.DataFrame:
        """An unpartitioned table (`batches` None), or the rows of `batches` (none for a batch never written)."""
        return self._read_table(self._name(table), batches)

    def has_table(self, table: TableRef) -> bool:
        """Whether an unpartitioned table was ever written."""
        return self._has_table(self._name(table))

    def save_artefact(self, table: TableRef, obj: object) -> None:
        """Store a vocabulary, linker or factors object by its own `save` (no pickle)."""
        self._save_artefact(self._name(table), obj)

    def load_artefact(self, table: TableRef) -> object | None:
        """The stored artefact, or None when it was never materialised."""
        return self._load_artefact(self._name(table))

    def save_page(self, name: str, html: str) -> str:
        """Store a self-contained HTML page; returns where it is (a file path or an s3:// URI)."""
        raise NotImplementedError

    def refresh_views(self) -> None:
        """Make again whatever shows the tables by path (LocalStorage's DuckDB views), with today's paths."""

    def scratch_dir(self) -> Path:
        """A local folder for disposable caches (e.g. embeddings): losing it costs time, never results."""
        raise NotImplementedError

    def response_cache(self) -> Cache | None:
        """Where LLM answers persist beside this storage; None: the LLM resource's DuckDB file."""
        return None

    def describe(self) -> str:
        raise NotImplementedError

    def portable(self) -> Portable:
        """This storage as its settings, which pickle (the run's context does not): a Ray worker opens it."""
        return Portable.of(self)

    def _write_table(self, name: str, df: pd.DataFrame, batches: list[str] | None) -> None:
        raise NotImplementedError

    def _read_table(self, name: str, batches: Sequence[str] | None) -> pd.DataFrame:
        raise NotImplementedError

    def _has_table(self, name: str) -> bool:
        raise NotImplementedError

    def _save_artefact(self, name: str, obj: object) -> None:
        raise NotImplementedError

    def _load_artefact(self, name: str) -> object | None:
        raise NotImplementedError


@dataclass(frozen=True)
class Portable:
    """A resource as its class and settings; `open()` builds it again, in any process."""

    kind: type
    settings: dict

    @classmethod
    def of(cls, resource: dg.ConfigurableResource) -> Portable:
        values = {name: getattr(resource, name) for name in type(resource).model_fields}
        return cls(
            type(resource),
            {k: cls.of(v) if isinstance(v, dg.ConfigurableResource) else v for k, v in values.items()},
        )

    def open(self) -> dg.ConfigurableResource:
        return self.kind(**{k: v.open() if isinstance(v, Portable) else v for k, v in self.settings.items()})


def present_batches(df: pd.DataFrame, batches: Sequence[str] | None, name: str) -> list[str] | None:
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


def arrow(df: pd.DataFrame) -> pa.Table:
    """`df` as an Arrow table without its index (a filtered batch's index means nothing once stored)."""
    return pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
