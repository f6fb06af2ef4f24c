"""The one reader for document files: every format, and errors that name the file (and the line)."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from instruct_lf_dagster.core.records import RecordsError, read_path, read_records

RECORDS = [{"id": "a", "text": "first review", "label": "01"}, {"id": "b", "text": "second", "label": "NA"}]


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return buffer.getvalue()


def _jsonl(records) -> bytes:
    return "\n".join(json.dumps(r) for r in records).encode()


@pytest.mark.parametrize(
    "name, data",
    [
        ("x.jsonl", _jsonl(RECORDS)),
        ("x.ndjson", b"\n" + _jsonl(RECORDS) + b"\n\n"),  # blank lines are no records
        ("x.json", json.dumps(RECORDS).encode()),  # a JSON array
        ("X.JSON", _jsonl(RECORDS)),  # .json holding JSON Lines; suffixes in any case
        ("x.csv", pd.DataFrame(RECORDS).to_csv(index=False).encode()),
        ("x.parquet", _parquet(pd.DataFrame(RECORDS))),
        ("x.pq", _parquet(pd.DataFrame(RECORDS))),
    ],
)
def test_every_format_gives_the_same_records(name, data):
    frame = read_records(name, data, required=("text",))
    assert frame.to_dict("records") == RECORDS, name


def test_csv_cells_stay_text_as_written():
    frame = read_records("codes.csv", b"text,code,note\nfirst,01,NA\nsecond,2,\n")
    assert frame["code"].tolist() == ["01", "2"]  # no number guessing
    assert frame["note"].tolist() == ["NA", ""]  # no missing-value guessing


def test_json_keeps_its_types_and_missing_keys_are_missing():
    frame = read_records("x.jsonl", _jsonl([{"n": 1, "tags": ["a", "b"]}, {"n": 2}]))
    assert frame["n"].tolist() == [1, 2]
    assert frame["tags"][0] == ["a", "b"] and pd.isna(frame["tags"][1])


def test_a_broken_json_line_is_named_by_its_number():
    data = _jsonl(RECORDS) + b"\n\n{broken json\n"
    with pytest.raises(RecordsError, match=r"^broken\.jsonl: line 4 is not JSON"):
        read_records("broken.jsonl", data)
    with pytest.raises(RecordsError, match=r"^list\.jsonl: line 2 is not a JSON object"):
        read_records("list.jsonl", _jsonl([RECORDS[0], [1, 2]]))


def test_bad_lines_can_be_skipped_and_reported_instead():
    bad: list[tuple[int, str]] = []
    data = _jsonl([RECORDS[0]]) + b"\n{broken\n[1, 2]\n" + _jsonl([RECORDS[1]])
    frame = read_records("f.jsonl", data, on_bad_line=lambda number, reason: bad.append((number, reason)))
    assert frame["id"].tolist() == ["a", "b"]
    assert [number for number, _ in bad] == [2, 3]
    assert bad[0][1].startswith("not JSON") and bad[1][1] == "not a JSON object"


@pytest.mark.parametrize("data", [b"", b"  \n\n"])
def test_an_empty_file_is_refused(data):
    with pytest.raises(RecordsError, match=r"^empty\.csv: the file is empty$"):
        read_records("empty.csv", data)


def test_a_missing_column_is_named_with_the_ones_found():
    with pytest.raises(RecordsError, match=r"^cols\.csv: no 'text' column \(found: body, id\)$"):
        read_records("cols.csv", b"body,id\nhello,1\n", required=["text"])
    with pytest.raises(RecordsError, match=r"no 'text', 'label' columns \(found: body\)"):
        read_records("cols.jsonl", _jsonl([{"body": "x"}]), required=["text", "label"])
    bad_only = read_records("bad.jsonl", b"{oops\n", on_bad_line=lambda *_: None)
    assert bad_only.empty
    with pytest.raises(RecordsError, match=r"no 'text' column \(found: none\)"):
        read_records("bad.jsonl", b"{oops\n", required=["text"], on_bad_line=lambda *_: None)


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("notes.txt", b"hello", r"notes\.txt: unknown file kind '\.txt' \(expected \.jsonl, "),
        ("bad.parquet", b"not parquet", r"bad\.parquet: not a readable Parquet file"),
        ("bad.json", b"[{", r"bad\.json: not a readable JSON array"),
        (
            "odd.json",
            b'[{"text": "x"}, 3]',
            r"odd\.json: not a readable JSON array \(item 2 is not a JSON object\)",
        ),
        ("bad.csv", b'text\n"never closed\n', r"bad\.csv: not a readable CSV file"),
    ],
)
def test_unreadable_files_name_the_file_and_the_problem(name, data, message):
    with pytest.raises(RecordsError, match=message):
        read_records(name, data)


def test_undecodable_bytes_cost_a_character_not_the_file():
    frame = read_records("latin.csv", b"text\ncaf\xe9\n")
    assert frame["text"].tolist() == ["caf\ufffd"]


def test_read_path_reads_a_file_and_names_a_missing_one(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(_jsonl(RECORDS))
    assert read_path(path, required=["text"]).to_dict("records") == RECORDS
    with pytest.raises(FileNotFoundError, match=r"nowhere\.csv: no such file"):
        read_path(tmp_path / "nowhere.csv")
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(RecordsError, match=r"broken\.jsonl: line 2 is not JSON"):
        read_path(tmp_path / "broken.jsonl")
