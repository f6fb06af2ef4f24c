"""LocalStorage: everything under one data directory, with DuckDB as the window onto the tables.

The views over the Parquet files hold the home's absolute path (DuckDB resolves a relative one against the
reading process's working directory, not the database file's), so they are made again whenever the storage
opens the database in a home other than the one they were made in: a copied or moved home reads its own files.
"""

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import dagster as dg
import duckdb
import pandas as pd
import pyarrow.parquet as pq
from pydantic import Field

from instruct_lf_dagster.core.duckdb_lock import connect_duckdb
from instruct_lf_dagster.resources.storage.artefacts import dump_artefact, restore_artefact
from instruct_lf_dagster.resources.storage.base import BATCH, Storage, arrow
from instruct_lf_dagster.resources.storage.errors import named_write_errors

DATABASE = "instruct_lf.duckdb"
TABLES = "instruct_lf_tables"  # a folder per partitioned table, a Parquet file per batch
VIEWS_MADE_IN = ".views_made_in"  # in TABLES: the home the views were last made in


class LocalStorage(Storage):
    """Files under `home`: one Parquet file per batch of a partitioned table (reading a batch never reads the
    others) in `instruct_lf_tables/`, a DuckDB file `instruct_lf.duckdb` holding the unpartitioned tables and a
    view over each partitioned one (so `duckdb instruct_lf.duckdb` shows every table), and `artefacts/` for
    artefacts and pages."""

    home: str = Field(
        description="the data directory: the DuckDB file, tables, artefacts and pages go under it"
    )

    def _home(self) -> Path:
        return Path(self.home).expanduser().resolve()

    def _database(self) -> Path:
        return self._home() / DATABASE

    def _artefacts(self) -> Path:
        return self._home() / "artefacts"

    def _batch_files(self, name: str) -> Path:
        return self._home() / TABLES / name

    def _batch_file(self, name: str, batch: str) -> Path:
        return self._batch_files(name) / f"{quote(batch, safe='')}.parquet"

    def _connect(self, timeout: float = 120.0) -> duckdb.DuckDBPyConnection:
        self._home().mkdir(parents=True, exist_ok=True)
        con = connect_duckdb(self._database(), timeout=timeout)
        if self._views_stale():
            try:
                self._make_views(con)
            except BaseException:
                con.close()
                raise
        return con

    def _views_stale(self) -> bool:
        marker = self._home() / TABLES / VIEWS_MADE_IN
        return (self._home() / TABLES).is_dir() and (
            not marker.is_file() or marker.read_text(encoding="utf-8") != str(self._home())
        )

    def _view_sql(self, name: str) -> str:
        files = (self._batch_files(name) / "*.parquet").as_posix().replace("'", "''")
        return f"CREATE OR REPLACE VIEW \"{name}\" AS SELECT * FROM read_parquet('{files}', union_by_name = true)"

    def _make_views(self, con: duckdb.DuckDBPyConnection) -> None:
        """A view over every partitioned table, with this home's path; then the marker saying so."""
        tables = self._home() / TABLES
        with named_write_errors(f"the views of {self._database()}", self._database()):
            for folder in sorted(p for p in tables.iterdir() if p.is_dir()):
                kind = self._kind(con, folder.name)
                if kind == "BASE TABLE":  # stored whole by an earlier version: moved to files when next used
                    continue
                if any(folder.glob("*.parquet")):
                    con.execute(self._view_sql(folder.name))
                elif kind == "VIEW":  # no file left to read: the view could only fail
                    con.execute(f'DROP VIEW "{folder.name}"')
            (tables / VIEWS_MADE_IN).write_text(str(self._home()), encoding="utf-8")

    def refresh_views(self) -> None:
        if (self._home() / TABLES).is_dir():
            with connect_duckdb(self._database(), timeout=120.0) as con:
                self._make_views(con)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # A run in a copied or moved home: its views read its own files before any step asks.
        if self._views_stale():
            self.refresh_views()

    @staticmethod
    def _kind(con: duckdb.DuckDBPyConnection, name: str) -> str | None:
        """'BASE TABLE', 'VIEW' or None."""
        query = "SELECT table_type FROM information_schema.tables WHERE table_name = ?"
        found = con.execute(query, [name]).fetchall()
        return found[0][0] if found else None

    def _write_table(self, name: str, df: pd.DataFrame, batches: list[str] | None) -> None:
        if batches is None:
            with named_write_errors(f"table {name!r}", self._database()), self._connect() as con:
                con.register("incoming", arrow(df))
                con.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM incoming')
            return
        for batch in batches:
            path = self._batch_file(name, batch)
            with named_write_errors(f"table {name!r} (batch {batch!r})", path):
                self._write_file(path, df[df[BATCH] == batch])
        with named_write_errors(f"table {name!r}", self._database()), self._connect() as con:
            if self._kind(con, name) == "BASE TABLE":
                self._move_to_files(con, name)
            if self._kind(con, name) is None and any(self._batch_files(name).glob("*.parquet")):
                con.execute(self._view_sql(name))

    @staticmethod
    def _write_file(path: Path, df: pd.DataFrame) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(path.name + ".tmp")
        try:
            pq.write_table(arrow(df), staging)
            staging.replace(path)  # a reader sees the old batch or the new one, never half of one
        finally:
            staging.unlink(missing_ok=True)  # a failed write leaves the old batch, and no half-written file

    def _move_to_files(self, con: duckdb.DuckDBPyConnection, name: str) -> None:
        """A partitioned table stored whole in DuckDB (by earlier versions) becomes a file per batch."""
        for (batch,) in con.execute(f'SELECT DISTINCT {BATCH} FROM "{name}"').fetchall():
            if not self._batch_file(name, batch).exists():
                rows = con.sql(f'SELECT * FROM "{name}" WHERE {BATCH} = ?', params=[batch])
                self._write_file(self._batch_file(name, batch), rows.to_arrow_table().to_pandas())
        con.execute(f'DROP TABLE "{name}"')

    def _read_table(self, name: str, batches: Sequence[str] | None) -> pd.DataFrame:
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

    def _has_table(self, name: str) -> bool:
        with self._connect() as con:
            return self._kind(con, name) is not None

    def _save_artefact(self, name: str, obj: object) -> None:
        folder = self._artefacts() / name
        with named_write_errors(f"artefact {name!r}", folder):
            dump_artefact(obj, folder)

    def _load_artefact(self, name: str) -> object | None:
        folder = self._artefacts() / name
        return restore_artefact(folder) if (folder / "manifest.json").exists() else None

    def save_page(self, name: str, html: str) -> str:
        path = self._artefacts() / f"{name}.html"
        staging = path.with_name(path.name + ".tmp")
        with named_write_errors(f"page {name!r}", path):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                staging.write_text(html, encoding="utf-8")
                staging.replace(path)
            finally:
                staging.unlink(missing_ok=True)
        return str(path.resolve())

    def scratch_dir(self) -> Path:
        # The data directory itself: where the embedding caches (embedding_cache_<name>.npz) have always been.
        home = self._home()
        home.mkdir(parents=True, exist_ok=True)
        return home

    def describe(self) -> str:
        return f"duckdb:{self._database()}"
