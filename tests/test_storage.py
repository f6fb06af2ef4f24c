"""Storage: a real DuckDB file locally and a real S3-compatible server, through the same interface."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from instruct_lf_dagster.core.llm import Completion
from instruct_lf_dagster.core.vocabulary import Vocabulary
from instruct_lf_dagster.resources.storage import LocalStorage, S3Storage


def _rows(batch: str, n: int, offset: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "batch": batch,
            "document_id": [f"{batch}-{i}" for i in range(n)],
            "compatibility": [np.full(3, i + offset, dtype=np.float32) for i in range(n)],
            "properties": [["a", "b"][: i % 3] for i in range(n)],
        }
    )


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def storage(request, data_home):
    if request.param == "local":
        return LocalStorage(home=str(data_home))
    s3, bucket = request.getfixturevalue("s3_bucket")
    return S3Storage(s3=s3, bucket=bucket, prefix="unit", local_cache=str(data_home / "s3_cache"))


def test_batches_are_replaced_not_duplicated(storage):
    storage.write_table("compat", _rows("a", 3), ["a"])
    storage.write_table("compat", _rows("b", 2), ["b"])
    storage.write_table("compat", _rows("a", 3, offset=10), ["a"])  # re-materialise batch a
    both = storage.read_table("compat", ["a", "b"]).sort_values("document_id").reset_index(drop=True)
    assert len(both) == 5
    assert both["document_id"].tolist() == ["a-0", "a-1", "a-2", "b-0", "b-1"]
    assert both["compatibility"][0].dtype == np.float32
    np.testing.assert_array_equal(both["compatibility"][1], np.full(3, 11, dtype=np.float32))
    assert list(both["properties"][2]) == ["a", "b"]
    assert storage.read_table("compat", ["b"])["document_id"].tolist() == ["b-0", "b-1"]


def test_a_batch_missing_from_the_output_keeps_its_rows(storage):
    storage.write_table("docs", _rows("a", 2), ["a"])
    storage.write_table("docs", _rows("b", 1), ["a", "b"])  # batch a failed in this run
    assert len(storage.read_table("docs", ["a", "b"])) == 3


def test_a_table_never_written_or_written_empty_has_no_rows(storage):
    assert storage.read_table("never", ["a"]).empty
    storage.write_table("empty", _rows("a", 0), ["a"])  # e.g. a budget that proposed for no document
    assert storage.read_table("empty", ["a"]).empty
    storage.write_table("empty", _rows("b", 1), ["b"])
    assert storage.read_table("empty", ["a", "b"])["document_id"].tolist() == ["b-0"]


def test_rows_outside_the_run_are_refused(storage):
    with pytest.raises(ValueError, match="outside this run"):
        storage.write_table("docs", _rows("z", 1), ["a"])


def test_unpartitioned_table_is_replaced(storage):
    storage.write_table("report", pd.DataFrame({"factor": [0, 1], "property": ["x", "y"]}), None)
    storage.write_table("report", pd.DataFrame({"factor": [3], "property": ["z"]}), None)
    assert storage.read_table("report").to_dict("records") == [{"factor": 3, "property": "z"}]


def test_artefact_round_trip(storage):
    assert storage.load_artefact("vocabulary") is None
    vocab = Vocabulary.fit([["Dark humor", "Slow pacing"], ["dark humor"]])
    storage.save_artefact("vocabulary", vocab)
    assert storage.load_artefact("vocabulary") == vocab
    smaller = Vocabulary.fit([["Only one"]])
    storage.save_artefact("vocabulary", smaller)
    assert storage.load_artefact("vocabulary") == smaller


def test_unknown_objects_are_not_stored(storage):
    with pytest.raises(TypeError, match="not a DataFrame or a known artefact"):
        storage.save_artefact("thing", object())


def test_hostile_batch_names_are_bound_not_spliced(data_home):
    storage = LocalStorage(home=str(data_home))
    evil = "x'); DROP TABLE docs; --"
    storage.write_table("docs", _rows("ok", 1), ["ok"])
    storage.write_table("docs", _rows(evil, 1), [evil])
    assert sorted(storage.read_table("docs", ["ok", evil])["batch"]) == sorted(["ok", evil])


def test_a_batch_compatibility_matrix_reads_back_bit_for_bit_and_alone(storage):
    import dagster as dg
    import numpy as np

    from instruct_lf_dagster.assets.matrix import read, to_row

    rng = np.random.default_rng(0)
    written = {b: rng.standard_normal((n, 7)).astype(np.float32) for b, n in (("b1", 5), ("b2", 3))}
    written["b1"][0, 0] = np.float32(1e-38)  # subnormal-adjacent values survive too
    for batch, matrix in written.items():
        storage.write_table(
            "compat", to_row(batch, [f"{batch}-{i}" for i in range(len(matrix))], matrix), [batch]
        )
    ids, matrix = read(storage, "compat", "b2", 7)
    assert ids == ["b2-0", "b2-1", "b2-2"]
    assert matrix.dtype == np.float32 and matrix.tobytes() == written["b2"].tobytes()
    assert read(storage, "compat", "b9", 7) is None
    with pytest.raises(dg.Failure, match="older vocabulary"):
        read(storage, "compat", "b1", 8)


def test_local_batches_are_files_of_their_own_and_a_duckdb_view(data_home):
    import duckdb

    storage = LocalStorage(home=str(data_home))
    storage.write_table("docs", _rows("a", 2), ["a"])
    storage.write_table("docs", _rows("b/c", 1), ["b/c"])
    # Reading one batch opens only its file: a damaged neighbour does not matter.
    (data_home / "instruct_lf_tables" / "docs" / "a.parquet").write_bytes(b"not parquet")
    assert storage.read_table("docs", ["b/c"])["document_id"].tolist() == ["b/c-0"]
    storage.write_table("docs", _rows("a", 3), ["a"])
    with duckdb.connect(str(data_home / "instruct_lf.duckdb")) as con:
        assert con.execute("SELECT count(*) FROM docs").fetchone()[0] == 4
    assert storage.has_table("docs")


def test_a_partitioned_table_stored_whole_in_duckdb_moves_to_files(data_home):
    import duckdb

    data_home.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(data_home / "instruct_lf.duckdb")) as con:
        old = pd.concat([_rows("a", 2), _rows("b", 1)], ignore_index=True)
        con.register("old", old)
        con.execute("CREATE TABLE docs AS SELECT * FROM old")
    storage = LocalStorage(home=str(data_home))
    assert storage.read_table("docs", ["a"])["document_id"].tolist() == ["a-0", "a-1"]  # read before a write
    storage.write_table("docs", _rows("b", 2, offset=5), ["b"])
    both = storage.read_table("docs", ["a", "b"]).sort_values("document_id")
    assert both["document_id"].tolist() == ["a-0", "a-1", "b-0", "b-1"]
    np.testing.assert_array_equal(both["compatibility"].iloc[2], np.full(3, 5, dtype=np.float32))


def test_a_storage_travels_to_another_process_as_its_settings(storage):
    import pickle

    import cloudpickle
    import dagster as dg

    storage.write_table("t", pd.DataFrame({"batch": ["b1"], "x": [1]}), ["b1"])
    with dg.build_resources({"storage": storage}) as resources:
        in_run = resources.storage  # holds the run's context, which does not pickle
        with pytest.raises(Exception, match="pickle"):
            cloudpickle.dumps(in_run)
        opened = pickle.loads(cloudpickle.dumps(in_run.portable())).open()
    assert type(opened) is type(storage) and opened.describe() == storage.describe()
    assert opened.read_table("t", ["b1"])["x"].tolist() == [1]


@pytest.mark.integration
def test_llm_answers_persist_in_the_bucket_across_caches(s3_bucket, data_home):
    s3, bucket = s3_bucket
    storage = S3Storage(s3=s3, bucket=bucket, prefix="prod", local_cache=str(data_home / "s3_cache"))
    first = storage.response_cache()
    first.put("k1", Completion(text="Comedy genre", prompt_tokens=12, completion_tokens=3, cost_usd=0.001))
    with pytest.raises(ValueError, match="only successful"):
        first.put("k2", Completion(text=None, error="timeout"))
    again = storage.response_cache()  # another run, another pod
    found = again.get_many(["k1", "k2", "k3"])
    assert list(found) == ["k1"]
    assert (found["k1"].text, found["k1"].cached, found["k1"].prompt_tokens) == ("Comedy genre", True, 12)
    assert again.path == f"s3://{bucket}/prod/llm_cache"
    for damaged in (b"{not json", b'{"text": "x"}', b"[]"):  # e.g. a partial write by another tool
        s3.get_client().put_object(Bucket=bucket, Key="prod/llm_cache/k1.json", Body=damaged)
        assert again.get_many(["k1"]) == {}  # asked again, not a failed run
    assert LocalStorage(home=str(data_home)).response_cache() is None  # the LLM resource's DuckDB file


def test_an_asset_key_and_its_table_name_address_the_same_table(storage):
    import dagster as dg

    key = dg.AssetKey(["reviews", "compatibility"])
    assert storage.table_name(key) == "reviews__compatibility"
    storage.write_table(key, _rows("a", 2), ["a"])
    assert storage.read_table("reviews__compatibility", ["a"])["document_id"].tolist() == ["a-0", "a-1"]
    report = dg.AssetKey(["reviews", "factor_report"])
    assert not storage.has_table(report)
    storage.write_table(report, pd.DataFrame({"factor": [1]}), None)
    assert storage.has_table(report)
    assert storage.read_table("reviews__factor_report")["factor"].tolist() == [1]
    vocab = Vocabulary.fit([["Dark humor"]])
    storage.save_artefact(dg.AssetKey(["reviews", "vocabulary"]), vocab)
    assert storage.load_artefact("reviews__vocabulary") == vocab


def test_the_io_manager_stores_an_asset_under_its_table_name(data_home):
    import dagster as dg

    from instruct_lf_dagster.resources.storage import StorageIOManager

    @dg.asset(key=["films", "report"])
    def report() -> pd.DataFrame:
        return pd.DataFrame({"factor": [0, 1]})

    @dg.asset(ins={"upstream": dg.AssetIn(["films", "report"])})
    def downstream(upstream: pd.DataFrame) -> pd.DataFrame:
        return upstream.assign(factor=upstream["factor"] + 1)

    storage = LocalStorage(home=str(data_home))
    io_manager = StorageIOManager(storage=storage)
    assert dg.materialize([report, downstream], resources={"io_manager": io_manager}).success
    assert storage.read_table("films__report")["factor"].tolist() == [0, 1]
    assert storage.read_table(dg.AssetKey("downstream"))["factor"].tolist() == [1, 2]


def test_scratch_dir_is_a_local_folder_of_the_storage(data_home, tmp_path):
    from dagster_aws.s3 import S3Resource

    # Locally the data directory itself: where the embedding caches have always been.
    assert LocalStorage(home=str(data_home)).scratch_dir() == data_home.resolve()
    remote = S3Storage(s3=S3Resource(), bucket="b", local_cache=str(tmp_path / "cache"))
    assert remote.scratch_dir() == tmp_path / "cache" and (tmp_path / "cache").is_dir()


@pytest.mark.integration
def test_s3_artefacts_are_downloaded_into_its_local_cache(s3_bucket, tmp_path):
    s3, bucket = s3_bucket
    storage = S3Storage(s3=s3, bucket=bucket, prefix="unit", local_cache=str(tmp_path / "cache"))
    vocab = Vocabulary.fit([["Dark humor"]])
    storage.save_artefact("vocabulary", vocab)
    assert storage.load_artefact("vocabulary") == vocab
    assert (tmp_path / "cache" / bucket / "unit" / "artefacts" / "vocabulary" / "manifest.json").exists()


def test_a_copied_home_reads_its_own_files_through_its_views(data_home, tmp_path):
    import shutil

    import duckdb

    storage = LocalStorage(home=str(data_home))
    storage.write_table("documents", _rows("a", 2), ["a"])
    storage.write_table("report", pd.DataFrame({"factor": [1]}), None)
    copy = tmp_path / "copy"
    shutil.copytree(data_home, copy, symlinks=True)
    shutil.rmtree(data_home)
    database = str(copy / "instruct_lf.duckdb")
    # The problem: the views name the original, gone now.
    with duckdb.connect(database) as con, pytest.raises(duckdb.IOException, match=str(data_home)):
        con.sql("from documents").fetchall()

    LocalStorage(home=str(copy)).write_table("documents", _rows("b", 1), ["b"])  # one write in the copy
    with duckdb.connect(database) as con:
        rows = con.sql("select document_id from documents").fetchall()
        (sql,) = con.execute("select sql from duckdb_views() where view_name = 'documents'").fetchone()
    assert sorted(rows) == [("a-0",), ("a-1",), ("b-0",)]
    assert str(copy.resolve()) in sql


@pytest.mark.parametrize("first_use", ["read", "has_table", "refresh_views", "a run"])
def test_any_use_of_a_moved_home_makes_its_views_again(data_home, tmp_path, first_use):
    import dagster as dg
    import duckdb

    LocalStorage(home=str(data_home)).write_table("documents", _rows("a", 1), ["a"])
    LocalStorage(home=str(data_home)).write_table("report", pd.DataFrame({"factor": [1]}), None)
    moved = tmp_path / "moved"
    data_home.rename(moved)
    storage = LocalStorage(home=str(moved))
    if first_use == "read":
        assert storage.read_table("report")["factor"].tolist() == [1]
    elif first_use == "has_table":
        assert storage.has_table("documents")
    elif first_use == "refresh_views":
        storage.refresh_views()
    else:  # a run's resources are set up before any step asks for a table
        with dg.build_resources({"storage": storage}):
            pass
    with duckdb.connect(str(moved / "instruct_lf.duckdb")) as con:
        assert con.sql("select document_id from documents").fetchall() == [("a-0",)]
