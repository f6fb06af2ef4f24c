"""A full disk or a refused permission while writing a table, artefact or page is named as such, with the table
and the path, at the step that hit it; what was stored before stays readable."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError
from dagster_aws.s3 import S3Resource

from instruct_lf_dagster.core.vocabulary import Vocabulary
from instruct_lf_dagster.resources.storage import LocalStorage, S3Storage, StorageIOManager, StorageWriteError


def _rows(batch: str, n: int) -> pd.DataFrame:
    return pd.DataFrame({"batch": batch, "document_id": [f"{batch}-{i}" for i in range(n)]})


def _raise(code: int, text: str):
    def fail(*args, **kwargs):
        raise OSError(code, text)

    return fail


@pytest.mark.parametrize(
    ("code", "text", "says"),
    [
        (errno.ENOSPC, "No space left on device", "no space left on the device holding"),
        (errno.EACCES, "Permission denied", "permission denied writing"),
        (errno.EROFS, "Read-only file system", "permission denied writing"),
    ],
)
def test_a_batch_file_the_disk_refuses_is_named_and_the_old_batch_stays(
    data_home, monkeypatch, code, text, says
):
    storage = LocalStorage(home=str(data_home))
    storage.write_table("documents", _rows("a", 2), ["a"])
    monkeypatch.setattr(pq, "write_table", _raise(code, text))
    with pytest.raises(StorageWriteError) as caught:
        storage.write_table("documents", _rows("a", 5), ["a"])
    path = data_home.resolve() / "instruct_lf_tables" / "documents" / "a.parquet"
    assert str(caught.value).startswith(f"cannot write table 'documents' (batch 'a'): {says} {path}")
    assert caught.value.errno == (errno.ENOSPC if code == errno.ENOSPC else errno.EACCES)
    monkeypatch.undo()
    assert len(storage.read_table("documents", ["a"])) == 2
    assert [p.name for p in path.parent.iterdir()] == ["a.parquet"]  # no half-written file left


def test_duckdb_on_a_full_disk_is_named(data_home, monkeypatch):
    storage = LocalStorage(home=str(data_home))

    def full(self, timeout=120.0):
        raise duckdb.IOException(
            'IO Error: Could not write file "instruct_lf.duckdb.wal": No space left on device'
        )

    monkeypatch.setattr(LocalStorage, "_connect", full)
    with pytest.raises(
        StorageWriteError, match="cannot write table 'report': no space left on the device holding"
    ):
        storage.write_table("report", pd.DataFrame({"factor": [1]}), None)


def test_a_full_disk_while_saving_an_artefact_is_named_and_the_old_one_stays(data_home, monkeypatch):
    storage = LocalStorage(home=str(data_home))
    old = Vocabulary.fit([["Dark humor"]])
    storage.save_artefact("reviews__vocabulary", old)

    def half_then_full(self, path):
        Path(path).write_text("{half")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(Vocabulary, "save", half_then_full)
    with pytest.raises(StorageWriteError, match="cannot write artefact 'reviews__vocabulary': no space left"):
        storage.save_artefact("reviews__vocabulary", Vocabulary.fit([["Slow pacing"]]))
    monkeypatch.undo()
    assert storage.load_artefact("reviews__vocabulary") == old
    assert sorted(p.name for p in (data_home / "artefacts").iterdir()) == ["reviews__vocabulary"]


def test_a_page_the_disk_refuses_is_named(data_home, monkeypatch):
    storage = LocalStorage(home=str(data_home))
    monkeypatch.setattr(Path, "write_text", _raise(errno.EROFS, "Read-only file system"))
    with pytest.raises(
        StorageWriteError, match="cannot write page 'reviews_report': permission denied writing"
    ):
        storage.save_page("reviews_report", "<html></html>")


def test_other_errors_pass_unchanged(data_home, monkeypatch):
    monkeypatch.setattr(pq, "write_table", _raise(errno.EIO, "Input/output error"))
    with pytest.raises(OSError, match="Input/output error") as caught:
        LocalStorage(home=str(data_home)).write_table("documents", _rows("a", 1), ["a"])
    assert not isinstance(caught.value, StorageWriteError)


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes into a read-only folder: the monkeypatched tests above"
)
def test_a_read_only_folder_is_named(data_home):
    storage = LocalStorage(home=str(data_home))
    storage.write_table("documents", _rows("a", 1), ["a"])
    folder = data_home / "instruct_lf_tables" / "documents"
    folder.chmod(0o555)
    try:
        with pytest.raises(
            StorageWriteError, match="cannot write table 'documents' .*permission denied writing"
        ):
            storage.write_table("documents", _rows("a", 2), ["a"])
    finally:
        folder.chmod(0o755)


def test_the_step_that_hits_a_full_disk_says_so(data_home, monkeypatch):
    @dg.asset(key=["reviews", "scores"], partitions_def=dg.StaticPartitionsDefinition(["a"]))
    def scores() -> pd.DataFrame:
        return _rows("a", 3)

    monkeypatch.setattr(pq, "write_table", _raise(errno.ENOSPC, "No space left on device"))
    io_manager = StorageIOManager(storage=LocalStorage(home=str(data_home)))
    result = dg.materialize(
        [scores], resources={"io_manager": io_manager}, partition_key="a", raise_on_error=False
    )
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "reviews__scores"
    error, messages = failure.step_failure_data.error, []
    while error is not None:  # Dagster names the output it was handling, then its cause: ours
        messages.append(error.message)
        error = error.cause
    message = "\n".join(messages)
    assert "cannot write table 'reviews__scores' (batch 'a'): no space left on the device holding" in message


def test_s3_access_denied_is_named(data_home, monkeypatch):
    class Denied:
        def put_object(self, **kwargs):
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "PutObject")

    monkeypatch.setattr(S3Resource, "get_client", lambda self: Denied())
    storage = S3Storage(s3=S3Resource(), bucket="b", prefix="p", local_cache=str(data_home / "cache"))
    with pytest.raises(
        StorageWriteError, match="permission denied writing s3://b/p/tables/documents/a.parquet"
    ):
        storage.write_table("documents", _rows("a", 1), ["a"])
    with pytest.raises(
        StorageWriteError, match="cannot write page 'r': permission denied writing s3://b/p/pages"
    ):
        storage.save_page("r", "<html></html>")
