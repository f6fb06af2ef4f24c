"""Reading inbox files: every format, and bad input that fails clearly or is skipped and counted (the inbox
itself, its listing and batch keys: test_inbox.py)."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from instruct_lf_dagster.assets.documents import BatchError, DocumentsConfig, read_batch

CONFIG = DocumentsConfig()


def _jsonl(records) -> bytes:
    return "\n".join(json.dumps(r) for r in records).encode()


def test_formats_give_the_same_rows():
    records = [{"id": "a", "text": "first review"}, {"id": "b", "text": "second review"}]
    parquet = io.BytesIO()
    pd.DataFrame(records).to_parquet(parquet)
    files = {
        "x.jsonl": _jsonl(records),
        "x.json": json.dumps(records).encode(),
        "x.csv": pd.DataFrame(records).to_csv(index=False).encode(),
        "x.parquet": parquet.getvalue(),
    }
    for name, data in files.items():
        rows, report = read_batch("b1", name, data, CONFIG)
        assert rows.to_dict("records") == [
            {"batch": "b1", "document_id": "a", "text": "first review"},
            {"batch": "b1", "document_id": "b", "text": "second review"},
        ], name
        assert report["undecodable_rows"] == 0


def test_bad_rows_are_skipped_and_counted():
    data = (
        _jsonl([{"id": 1, "text": "ok"}, {"id": 2, "text": "   "}, {"id": 1, "text": "dup id"}, {"id": 3}])
        + b"\n{broken json\n[1, 2]\n"
        + json.dumps({"id": 4, "text": "x" * 50}).encode()
    )
    rows, report = read_batch("b", "f.jsonl", data, DocumentsConfig(max_chars=10))
    assert rows["document_id"].tolist() == ["1", "4"]
    assert rows["text"].tolist() == ["ok", "x" * 10]
    assert report == {
        "undecodable_rows": 2,
        "replaced_characters": 0,
        "empty_skipped": 2,
        "clipped": 1,
        "duplicate_ids_skipped": 1,
    }


def test_broken_encoding_is_decoded_and_counted():
    rows, report = read_batch("b", "f.jsonl", b'{"text": "caf\xe9 au lait"}', CONFIG)
    assert rows["text"][0].startswith("caf") and rows["text"][0].endswith("au lait")
    assert report["undecodable_rows"] == 0 or report["replaced_characters"] >= 0
    rows, report = read_batch("b", "f.csv", b"text\ncaf\xe9\n", CONFIG)
    assert report["replaced_characters"] == 1


def test_ten_megabyte_document_is_clipped():
    rows, report = read_batch("b", "big.jsonl", _jsonl([{"text": "word " * 2_000_000}]), CONFIG)
    assert len(rows["text"][0]) == CONFIG.max_chars
    assert report["clipped"] == 1


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("empty.jsonl", b"", "empty.jsonl: the file is empty"),
        ("blank.csv", b"  \n\n", "blank.csv: the file is empty"),
        ("cols.csv", b"body,id\nhello,1\n", "cols.csv: no 'text' column (found: body, id)"),
        ("none.jsonl", _jsonl([{"text": ""}, {"text": " "}]), "none.jsonl: no document has any text"),
        ("bad.parquet", b"not parquet", "bad.parquet: not a readable Parquet file"),
        ("bad.json", b"[{", "bad.json: not a readable JSON array"),
        ("broken.jsonl", b"{broken\n{also broken\n", "broken.jsonl: line 1 is not JSON"),
    ],
)
def test_unusable_files_fail_naming_the_file(name, data, message):
    with pytest.raises(BatchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_batch("b", name, data, CONFIG)
