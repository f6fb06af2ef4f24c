"""A materialised discovery outside Dagster: load its linker, factors and names from storage, score new texts.

    from instruct_lf_dagster.fitted import load_discovery
    critics = load_discovery("movie_critics")
    critics.transform(["A witty, warm comedy.", "Two hours of noise."])

`transform` computes what the `compatibility` and `document_factors` assets compute for a batch, with the same
stored objects, so a text scores the same here as it would in the pipeline.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from instruct_lf_dagster.core.compatibility import compatibility
from instruct_lf_dagster.core.config import ComputeConfig
from instruct_lf_dagster.core.curation import shown_groups
from instruct_lf_dagster.core.factors import Factors, ends
from instruct_lf_dagster.core.linker import Linker
from instruct_lf_dagster.resources.storage import Storage
from instruct_lf_dagster.settings import Settings

SUMMARY = ["top_factor", "top_factor_name", "top_factor_pole", "evidence"]


@dataclass(frozen=True)
class FittedDiscovery:
    """A discovery as its last materialisation left it: `linker`, `factors` and the factor report (`report`:
    names, descriptions, members and their ends, with the discovery's curation applied)."""

    name: str
    linker: Linker
    factors: Factors
    report: pd.DataFrame
    encode_batch_size: int = ComputeConfig().encode_batch_size

    @property
    def names(self) -> dict[int, str]:
        """Public factor id -> name, for the factors the report shows."""
        first = self.report.sort_values("rank").drop_duplicates("factor")
        return dict(zip(first["factor"].astype(int), first["name"].astype(str), strict=True))

    @cached_property
    def groups(self) -> dict[int, list[int]]:
        """Shown factor id -> the fitted ids it stands for: the discovery's curation as the report applied it."""
        return shown_groups(self.report, self.factors)

    def _shown(self) -> list[tuple[int, list[int]]]:
        """(id, fitted rows) of each score column of `transform`, in the factors' row order: a factor alone, a
        merge group at its shown id's place; dropped factors (non-empty but not in the report) left out."""
        row = {i: k for k, i in enumerate(self.factors.ids)}
        shown_of = {i: g for g, members in self.groups.items() for i in members}
        nonempty = set(self.factors.nonempty())
        return [
            (i, [row[m] for m in self.groups.get(i, [i])])
            for k, i in enumerate(self.factors.ids)
            if shown_of.get(i) == i or k not in nonempty
        ]

    def columns(self) -> list[str]:
        """The score columns of `transform`, one per factor shown (and per empty factor): its name, or
        "factor ID" when it has none."""
        names = self.names
        return [names.get(i) or f"factor {i}" for i, _ in self._shown()]

    def compatibility(self, texts: Sequence[str]) -> np.ndarray:
        """The texts' rows of the compatibility matrix (texts x the factors' properties)."""
        return compatibility(
            self.linker, list(texts), self.factors.properties, batch_size=self.encode_batch_size
        )

    def transform(self, texts: Sequence[str]) -> pd.DataFrame:
        """One row per text: a score column per factor (named), then the factor the text sits furthest along,
        its name, the end it sits at and the properties that put it there, as `document_factors` stores them.

        A factor's column is the model's score, as `document_factors` stores it; a merge group's (curation) is
        the sum of its members' scores, each turned so that high means "has its properties" (the sign of a lone
        factor's score is the model's own; a sum needs them turned alike). Dropped factors have none."""
        if not len(texts):
            return pd.DataFrame(columns=[*self.columns(), *SUMMARY])
        table = self.factors.document_table(self.compatibility(texts), self.names, self.groups)
        raw = np.stack(table["scores"].to_numpy())
        oriented = self.factors.oriented(raw)
        columns = [
            raw[:, rows[0]] if len(rows) == 1 else oriented[:, rows].sum(axis=1) for _, rows in self._shown()
        ]
        scores = pd.DataFrame(
            np.stack(columns, axis=1) if columns else np.zeros((len(raw), 0)), columns=self.columns()
        )
        return pd.concat([scores, table[SUMMARY]], axis=1)

    def describe(self) -> str:
        """One line per factor shown, largest first: id, name (marked when curated) and its two ends."""
        lines = []
        sizes = self.report.groupby("factor").size().sort_values(ascending=False, kind="stable")
        for factor in sizes.index:
            members = self.report[self.report["factor"] == factor].sort_values("rank").head(5)
            pole = members["pole"] if "pole" in members else ["high"] * len(members)
            high, low = (
                [p for p, e in zip(members["property"], pole, strict=True) if e == end]
                for end in ("high", "low")
            )
            curated = members["curated"].iloc[0] if "curated" in members else ""
            mark = f" [curated: {curated}]" if curated else ""
            lines.append(f"{factor:>4}  {self.names.get(int(factor), '')}{mark}: {ends(high, low)}")
        return "\n".join(lines)


def load_discovery(
    name: str, storage: Storage | None = None, settings: Settings | None = None
) -> FittedDiscovery:
    """The fitted discovery `name` from `storage` (default: the environment's, local or S3, as `instruct-lf run`
    uses it). Raises LookupError when its linker, factors or report was never materialised."""
    if storage is None:
        # Beta and preview APIs the project uses, warned of as the definitions are imported and built: not the
        # notebook's concern.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".* is currently in (beta|preview)")
            from instruct_lf_dagster.definitions import build_definitions

            defs = build_definitions(settings=settings or Settings.from_env())
        with dg.build_resources({"storage": defs.resources["storage"]}) as resources:
            return load_discovery(name, resources.storage)
    linker = storage.load_artefact(dg.AssetKey([name, "linker"]))
    factors = storage.load_artefact(dg.AssetKey([name, "latent_factors"]))
    report_key = dg.AssetKey([name, "factor_report"])
    missing = [
        stage
        for stage, present in [
            ("linker", linker is not None),
            ("latent_factors", factors is not None),
            ("factor_report", storage.has_table(report_key)),
        ]
        if not present
    ]
    if missing:
        raise LookupError(
            f"discovery {name!r} has no {', '.join(missing)} in {storage.describe()}: "
            f"run `instruct-lf run --discovery {name}` first"
        )
    return FittedDiscovery(name, linker, factors, storage.read_table(report_key))


OUT_SUFFIXES = (".csv", ".jsonl", ".parquet")


def score_file(
    discovery: FittedDiscovery, path: str | Path, text_column: str = "text", id_column: str = "id"
) -> tuple[pd.DataFrame, dict]:
    """Score a document file (JSONL, JSON, CSV or Parquet) without registering it as a batch: rows
    (document_id, scores by factor name, top factor, pole, evidence) and what was skipped, counted as the
    `documents` asset counts it (undecodable lines, empty texts, repeated ids, clipped texts)."""
    from instruct_lf_dagster.assets.documents import DocumentsConfig, read_batch

    path = Path(path)
    config = DocumentsConfig(text_column=text_column, id_column=id_column)
    rows, report = read_batch("score", path.name, path.read_bytes(), config)
    scored = discovery.transform(rows["text"].tolist())
    return pd.concat([rows[["document_id"]], scored], axis=1), report


def write_scores(scores: pd.DataFrame, out: str | Path) -> Path:
    """Write `scores` as its suffix says (.csv, .jsonl or .parquet)."""
    out = Path(out)
    if out.suffix not in OUT_SUFFIXES:
        raise ValueError(f"{out}: write .csv, .jsonl or .parquet")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        scores.to_parquet(out, index=False)
    elif out.suffix == ".csv":
        scores.to_csv(out, index=False)
    else:
        scores.to_json(out, orient="records", lines=True, force_ascii=False)
    return out
