"""The inbox: one file, one batch, forever. Distinct names never share a key, a key never moves to another file,
and a home registered by an earlier version keeps its keys."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import dagster as dg
import pytest

from instruct_lf_dagster.assets import documents
from instruct_lf_dagster.partitions import DOCUMENTS, batches
from instruct_lf_dagster.resources.inbox import (
    BatchFileError,
    LocalInbox,
    S3Inbox,
    batch_key,
    legacy_key,
)
from instruct_lf_dagster.resources.storage import LocalStorage, StorageIOManager

LONG = "a" * 120
PAIRS = [
    ("with space.jsonl", "with_space.jsonl"),
    (LONG + "x" * 80 + ".jsonl", LONG + "y" * 80 + ".jsonl"),  # 200 characters, the first 120 shared
    ("映画レビュー.jsonl", "電影評論.jsonl"),
    ("_.jsonl", "..jsonl"),
]


def put(folder: Path, name: str, ids: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("\n".join(json.dumps({"id": i, "text": f"review {i}"}) for i in ids))


def read_documents(inbox: LocalInbox, home: Path, instance: dg.DagsterInstance, keys: list[str]):
    """Materialise `documents` for `keys` as a run does; the stored rows."""
    storage = LocalStorage(home=str(home))
    resources = {"inbox": inbox, "io_manager": StorageIOManager(storage=storage)}
    tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
    result = dg.materialize(
        [documents], resources=resources, instance=instance, tags=tags, raise_on_error=False
    )
    return result, storage.read_table(DOCUMENTS, keys)


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("reviews 2024-01.jsonl", "reviews_2024-01-{}.jsonl"),
        ("../../etc/passwd.csv", "etc_passwd-{}.csv"),
        ("weird'; DROP TABLE x;--.csv", "weird_DROP_TABLE_x-{}.csv"),
        ("..jsonl", "batch-{}.jsonl"),
        ("a...b.JSONL", "a_b-{}.jsonl"),
        ("café au lait.parquet", "cafe_au_lait-{}.parquet"),
        ("映画レビュー.jsonl", "batch-{}.jsonl"),
        ("line\nbreak\t.csv", "line_break-{}.csv"),
    ],
)
def test_a_key_is_a_readable_stem_a_hash_of_the_whole_name_and_the_suffix(name, key):
    made = batch_key(name)
    assert re.fullmatch(re.escape(key).replace(r"\{\}", "[0-9a-f]{8}"), made), made
    assert batch_key(name) == made  # stable
    with dg.instance_for_test() as instance:  # Dagster takes it as a partition key
        instance.add_dynamic_partitions(batches.name, [made])


def test_the_rule_never_changes():
    # Registered keys live on in homes: a rule that changed would give a known file a second batch.
    assert batch_key("with space.jsonl") == "with_space-db26fdbb.jsonl"  # the README's examples
    assert batch_key("映画レビュー.jsonl") == "batch-debbe8d6.jsonl"
    assert batch_key("with space.jsonl", 16).startswith("with_space-db26fdbb")


def test_keys_are_bounded_and_distinct_names_get_distinct_keys():
    names = [a for pair in PAIRS for a in pair] + ["x" * 250 + ".parquet", ".jsonl", "-.csv"]
    keys = [batch_key(n) for n in names]
    assert len(set(keys)) == len(names)
    assert max(len(k) for k in keys) <= 48 + 1 + 8 + len(".parquet")
    assert len(batch_key("x" * 250 + ".jsonl", 64)) <= 48 + 1 + 64 + len(".jsonl")
    assert {legacy_key(a) for a, _ in PAIRS} == {legacy_key(b) for _, b in PAIRS}  # what collided before


@pytest.mark.parametrize(("first", "second"), PAIRS)
def test_colliding_names_each_become_their_own_batch_with_every_document(tmp_path, first, second):
    inbox = LocalInbox(path=str(tmp_path / "inbox"))
    put(tmp_path / "inbox", first, ["a1", "a2"])
    put(tmp_path / "inbox", second, ["b1"])
    files = inbox.register([])
    assert files == {batch_key(first): first, batch_key(second): second}
    keys = sorted(files, key=files.__getitem__)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(batches.name, keys)
        result, rows = read_documents(inbox, tmp_path / "home", instance, keys)
    assert result.success
    assert sorted(zip(rows["batch"], rows["document_id"], strict=True)) == sorted(
        [(batch_key(first), "a1"), (batch_key(first), "a2"), (batch_key(second), "b1")]
    )


def test_a_key_never_moves_to_a_file_added_later(tmp_path):
    folder = tmp_path / "inbox"
    inbox = LocalInbox(path=str(folder))
    put(folder, "_.jsonl", ["rt8414"])
    first = inbox.register([])
    put(folder, "..jsonl", ["rt1"])  # sorts first, and once took the key of `_.jsonl`
    again = inbox.register(list(first))
    assert again == {**first, batch_key("..jsonl"): "..jsonl"}
    assert inbox.read(batch_key("_.jsonl"))[1] == (folder / "_.jsonl").read_bytes()
    # Gone and back: the same file, the same batch.
    (folder / "_.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"its file _\.jsonl is gone"):
        inbox.read(batch_key("_.jsonl"))
    assert inbox.register(list(again)) == {batch_key("..jsonl"): "..jsonl"}
    put(folder, "_.jsonl", ["rt8414"])
    assert inbox.register(list(again)) == again


def test_an_old_home_keeps_its_keys_and_a_new_file_gets_the_new_rule(tmp_path):
    folder = tmp_path / "inbox"
    inbox = LocalInbox(path=str(folder))
    for name in ("day 1.jsonl", "day_1.jsonl", "-.jsonl", "reviews.csv"):
        put(folder, name, [name])
    # Registered by an earlier version: the first file of each old key had it, the others were never read.
    old = ["day_1.jsonl", "jsonl", "reviews.csv"]
    files = inbox.register(old)
    assert files == {
        "day_1.jsonl": "day 1.jsonl",
        "jsonl": "-.jsonl",
        "reviews.csv": "reviews.csv",
        batch_key("day_1.jsonl"): "day_1.jsonl",  # skipped before, read now
    }
    assert sorted(p.name for p in (folder / ".batches").iterdir()) == sorted(files)
    # Recorded: a file added later with the same old key does not take it.
    put(folder, "..jsonl", ["rt1"])
    put(folder, "new.jsonl", ["n"])
    later = inbox.register([*old, batch_key("day_1.jsonl")])
    assert later == {**files, batch_key("..jsonl"): "..jsonl", batch_key("new.jsonl"): "new.jsonl"}
    assert inbox.read("jsonl")[0] == "-.jsonl"


def test_an_old_home_reads_its_batches_through_documents(tmp_path):
    folder = tmp_path / "inbox"
    inbox = LocalInbox(path=str(folder))
    put(folder, "_.jsonl", ["rt8414", "rt2"])
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(batches.name, ["jsonl"])  # an earlier version's key
        assert read_documents(inbox, tmp_path / "home", instance, ["jsonl"])[0].success  # recorded as read
        put(folder, "..jsonl", ["rt9"])
        known = instance.get_dynamic_partitions(batches.name)
        new = [k for k in inbox.register(known) if k not in known]
        assert new == [batch_key("..jsonl")]
        instance.add_dynamic_partitions(batches.name, new)
        result, rows = read_documents(inbox, tmp_path / "home", instance, ["jsonl", *new])
    assert result.success
    assert sorted(rows.loc[rows["batch"] == "jsonl", "document_id"]) == ["rt2", "rt8414"]
    assert rows.loc[rows["batch"] == new[0], "document_id"].tolist() == ["rt9"]


def test_a_key_registered_without_a_record_is_found_by_the_rules_and_recorded(tmp_path):
    folder = tmp_path / "inbox"
    inbox = LocalInbox(path=str(folder))
    put(folder, "reviews_0.jsonl", ["r"])
    put(folder, "reviews_1.jsonl", ["s"])
    (folder / "notes.txt").write_text("not a document")
    assert inbox.read("reviews_0.jsonl")[0] == "reviews_0.jsonl"  # e.g. registered by hand, as tests do
    assert (folder / ".batches" / "reviews_0.jsonl").read_text() == "reviews_0.jsonl"
    assert inbox.read(batch_key("reviews_1.jsonl"))[0] == "reviews_1.jsonl"
    with pytest.raises(FileNotFoundError, match="batch 'gone.jsonl': no file for it"):
        inbox.read("gone.jsonl")
    put(folder, "day 2.jsonl", ["t"])
    put(folder, "day_2.jsonl", ["u"])
    with pytest.raises(BatchFileError, match=r"files \['day 2.jsonl', 'day_2.jsonl'\] all map to it"):
        inbox.read("day_2.jsonl")
    (folder / "secret").write_text("reviews_0.jsonl")
    with pytest.raises(FileNotFoundError):  # a key made by hand never names a record outside the records
        inbox.read("../secret")


def test_a_key_another_file_holds_gives_a_longer_hash(tmp_path):
    folder = tmp_path / "inbox"
    inbox = LocalInbox(path=str(folder))
    put(folder, "b.jsonl", ["b"])
    (folder / ".batches").mkdir()
    (folder / ".batches" / batch_key("b.jsonl")).write_text("a.jsonl")  # as if two hashes began alike
    put(folder, "a.jsonl", ["a"])
    files = inbox.register([])
    assert files == {batch_key("b.jsonl"): "a.jsonl", batch_key("b.jsonl", 16): "b.jsonl"}
    assert inbox.read(batch_key("b.jsonl", 16))[0] == "b.jsonl"
    assert not inbox._add_record(batch_key("b.jsonl"), "c.jsonl")  # a record is never replaced


def test_a_record_that_cannot_be_written_is_an_error_and_the_batch_still_registers(
    tmp_path, monkeypatch, caplog
):
    folder = tmp_path / "inbox"
    put(folder, "day 1.jsonl", ["d"])

    def refuse(self, key, name):
        raise PermissionError(13, "Permission denied", str(folder / ".batches" / key))

    monkeypatch.setattr(LocalInbox, "_add_record", refuse)
    inbox = LocalInbox(path=str(folder))
    with caplog.at_level(logging.ERROR):
        assert inbox.register([]) == {batch_key("day 1.jsonl"): "day 1.jsonl"}
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and "day 1.jsonl" in record.getMessage()
    assert "could not be recorded" in record.getMessage() and "Permission denied" in record.getMessage()
    assert inbox.read(batch_key("day 1.jsonl"))[0] == "day 1.jsonl"  # its name gives the key back


@pytest.mark.integration
def test_s3_inbox_registers_lists_and_reads(s3_bucket):
    s3, bucket = s3_bucket
    client = s3.get_client()
    for name, body in (
        ("day 1.csv", b"text\nhello\n"),
        ("day_1.csv", b"text\nagain\n"),
        ("sub/skip.csv", b"x"),
    ):
        client.put_object(Bucket=bucket, Key=f"inbox/{name}", Body=body)
    inbox = S3Inbox(s3=s3, bucket=bucket, prefix="inbox/")
    files = inbox.register(["day_1.csv"])  # an earlier version's key stays with the file that had it
    assert files == {"day_1.csv": "day 1.csv", batch_key("day_1.csv"): "day_1.csv"}
    assert inbox.read("day_1.csv") == ("day 1.csv", b"text\nhello\n")
    assert inbox.read(batch_key("day_1.csv")) == ("day_1.csv", b"text\nagain\n")
    assert inbox.names() == ["day 1.csv", "day_1.csv"]  # neither the records nor a sub-folder
    listed = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="inbox/.batches/")["Contents"]}
    assert listed == {f"inbox/.batches/{key}" for key in files}
    client.put_object(Bucket=bucket, Key="inbox/_day_1.csv", Body=b"text\nlater\n")
    fresh = S3Inbox(s3=s3, bucket=bucket, prefix="inbox/")  # another process
    assert fresh.register(list(files)) == {**files, batch_key("_day_1.csv"): "_day_1.csv"}
    assert not fresh._add_record("day_1.csv", "other.csv")
    client.delete_object(Bucket=bucket, Key="inbox/day 1.csv")
    with pytest.raises(FileNotFoundError, match="its file day 1.csv is gone"):
        fresh.read("day_1.csv")
