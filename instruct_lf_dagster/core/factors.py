"""Factors: a fitted Linear CorEx read as clusters of properties, and documents scored on them."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from instruct_lf_dagster.core.corex import LinearCorex
from instruct_lf_dagster.core.identity import Match, match


def ends(high: Sequence[str], low: Sequence[str]) -> str:
    """A factor's two ends as people read them: "witty humor, gag humor / lack of humor" (no low end: no slash)."""
    return " / ".join(", ".join(end) for end in (high, low) if end)


@dataclass(frozen=True)
class Factors:
    """The factors of a fitted `LinearCorex` over `properties` (the columns it was fitted on, in order).

    Each property belongs to the factor with which it shares the most mutual information (argmax MI); a factor is
    shown as its properties ordered by MI. Methods take and give factors as the model's rows k (the columns of
    `scores`); what users see (`to_frame`, `evidence`, `describe`) names them by `ids[k]`, their public ids, which
    a refit carries over from the factors it matches (`aligned_to`). Factors that received no property are left out
    of every listing but keep their row.

    A factor is a direction: each member's weight has a sign, and the factor is oriented (`_signs`) so that its
    members' weights sum positive. Its high end (`poles`) is the members whose oriented weight is non-negative,
    its low end the others: a document scores high when it has the high end's properties, low when it has the
    low end's.
    """

    model: LinearCorex
    properties: tuple[str, ...]
    ids: tuple[int, ...] = ()  # public id of each row; default: the row itself
    anchors: tuple[tuple[str, ...], ...] = ()  # groups of properties kept in one factor each (seed factors)

    def __post_init__(self):
        object.__setattr__(self, "properties", tuple(self.properties))
        object.__setattr__(self, "anchors", tuple(tuple(group) for group in self.anchors))
        object.__setattr__(self, "ids", tuple(int(i) for i in self.ids) or tuple(range(self.n_factors)))
        if len(self.ids) != self.n_factors or len(set(self.ids)) != len(self.ids):
            raise ValueError(
                f"{len(self.ids)} ids (distinct: {len(set(self.ids))}) for {self.n_factors} factors"
            )
        if len(self.properties) != self.model.w_.shape[1]:
            raise ValueError(
                f"{len(self.properties)} properties for a model of {self.model.w_.shape[1]} columns"
            )

    @cached_property
    def assignment(self) -> np.ndarray:
        """Factor of each property (P,); -1 for properties constant in training. An anchor group's properties all
        go to one factor (`anchored`)."""
        return self._anchoring[0]

    @cached_property
    def _anchoring(self) -> tuple[np.ndarray, list[int | None]]:
        """(assignment, factor row of each anchor group or None).

        Each group of `anchors`, in order, is put whole into its factor: row g for group g when the fit was
        anchored (`LinearCorex.anchors`: the fit itself steered that row towards the group), else (fits stored
        before anchoring) the factor that shares the most mutual information with its properties among those no
        earlier group took. Properties absent from `properties` or constant in training are skipped; a group
        with none left, or beyond the factor count, is anchored nowhere.
        """
        labels = self.model.clusters().copy()
        column = {p.casefold(): j for j, p in enumerate(self.properties)}
        anchored = any(self.model.anchors)
        rows: list[int | None] = []
        for g, group in enumerate(self.anchors):
            cols = [column[p.casefold()] for p in group if p.casefold() in column]
            cols = [j for j in cols if labels[j] >= 0]
            free = [k for k in range(self.n_factors) if k not in rows]
            if not cols or not free or (anchored and g >= self.n_factors):
                rows.append(None)
                continue
            k = g if anchored else free[int(np.argmax(self.model.mis[free][:, cols].sum(axis=1)))]
            labels[cols] = k
            rows.append(k)
        return labels, rows

    def anchored(self) -> list[int | None]:
        """The public id of the factor each anchor group was put into (None: anchored nowhere)."""
        return [None if k is None else self.ids[k] for k in self._anchoring[1]]

    @cached_property
    def _members(self) -> dict[int, list[int]]:
        mis = self.model.mis
        members: dict[int, list[int]] = {}
        for j in np.argsort(-mis.max(0), kind="stable"):
            if self.assignment[j] >= 0:
                members.setdefault(int(self.assignment[j]), []).append(int(j))
        return dict(sorted(members.items()))

    @cached_property
    def _signs(self) -> np.ndarray:
        """+1 or -1 per factor so that its members' weights sum positive: a high score then means "has them"."""
        signs = np.ones(self.model.w_.shape[0])
        for k, cols in self._members.items():
            signs[k] = 1.0 if self.model.w_[k, cols].sum() >= 0 else -1.0
        return signs

    @cached_property
    def _high(self) -> np.ndarray:
        """Whether each property sits at the high end of its factor (oriented weight >= 0); False if unassigned."""
        high = np.zeros(len(self.properties), dtype=bool)
        for k, cols in self._members.items():
            high[cols] = self.model.w_[k, cols] * self._signs[k] >= 0
        return high

    @property
    def n_factors(self) -> int:
        return self.model.w_.shape[0]

    def nonempty(self) -> list[int]:
        """Indices of the factors that hold at least one property, ascending."""
        return list(self._members)

    def ranked(self) -> list[int]:
        """Non-empty factors, strongest (total mutual information with their properties) first."""
        return sorted(self.nonempty(), key=lambda k: (-self.strength(k), k))

    def members(self, k: int) -> list[tuple[str, float]]:
        """Properties of factor k with their MI, highest MI first (empty for an empty factor)."""
        return [(self.properties[j], float(self.model.mis[k, j])) for j in self._members.get(k, [])]

    def poles(self, k: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        """Factor k's members split by the sign of their oriented weight: (high end, low end), each as
        (property, MI), highest MI first. A document with the high end's properties scores high on k."""
        high = [
            (self.properties[j], float(self.model.mis[k, j]))
            for j in self._members.get(k, [])
            if self._high[j]
        ]
        low = [
            (self.properties[j], float(self.model.mis[k, j]))
            for j in self._members.get(k, [])
            if not self._high[j]
        ]
        return high, low

    def membership(self) -> dict[int, dict[str, float]]:
        """Public id -> {member property: MI}, for every non-empty factor."""
        return {self.ids[k]: dict(self.members(k)) for k in self.nonempty()}

    def aligned_to(self, previous: Factors | None) -> tuple[Factors, Match | None]:
        """These factors with the public ids of the `previous` fit's factors they match (`core.identity`); the
        others get ids never used before. Returns them and the match (None without a previous fit)."""
        if previous is None:
            return self, None
        found = match(previous.membership(), self.membership())
        taken = dict(found.pairs)  # row id (as it stands) -> previous id
        fresh = iter(range(max(previous.ids) + 1, max(previous.ids) + 1 + self.n_factors))
        ids = tuple(taken[i] if i in taken else next(fresh) for i in self.ids)
        renamed = {self.ids[k]: ids[k] for k in range(self.n_factors)}
        found = replace(
            found,
            pairs={renamed[b]: a for b, a in found.pairs.items()},
            overlaps={renamed[b]: v for b, v in found.overlaps.items()},
            new=[renamed[b] for b in found.new],
            splits={a: [renamed[b] for b in bs] for a, bs in found.splits.items()},
            merges={renamed[b]: a for b, a in found.merges.items()},
        )
        return replace(self, ids=ids), found

    def strength(self, k: int) -> float:
        """Total MI between factor k and its properties: how much it explains; used to rank factors."""
        return float(sum(mi for _, mi in self.members(k)))

    def scores(self, compatibility: np.ndarray) -> np.ndarray:
        """Factor scores (n, m) of documents given their compatibility rows (n, P): the model's transform."""
        return self.model.transform(compatibility)

    def strengths(self, compatibility: np.ndarray) -> np.ndarray:
        """Factor scores (n, m) oriented so that high means "has this factor's properties"."""
        return self.oriented(self.scores(compatibility))

    def oriented(self, scores: np.ndarray) -> np.ndarray:
        """`scores` (n, m) of these factors turned so that high means "has this factor's properties"."""
        return np.asarray(scores) * self._signs

    def grouped(self, oriented: np.ndarray, groups: Mapping[int, Sequence[int]]) -> np.ndarray:
        """Oriented scores (n, m) as one column per group (shown id -> member public ids, `core.curation`): the
        sum of its members' columns; a group of one is its factor's column as it is."""
        row = {i: k for k, i in enumerate(self.ids)}
        columns = [
            np.asarray(oriented)[:, [row[i] for i in members]].sum(axis=1) for members in groups.values()
        ]
        return np.stack(columns, axis=1) if columns else np.zeros((len(oriented), 0))

    def _groups(self, groups: Mapping[int, Sequence[int]] | None) -> Mapping[int, Sequence[int]]:
        """`groups`, or every non-empty factor alone (no curation)."""
        return groups if groups is not None else {self.ids[k]: [self.ids[k]] for k in self.nonempty()}

    def evidence(
        self,
        compatibility_rows: np.ndarray,
        top_factors: int = 3,
        top_properties: int = 3,
        groups: Mapping[int, Sequence[int]] | None = None,
    ) -> list[list[dict]]:
        """Why each document scores as it does: the factors it sits furthest along, at which end, and the
        properties that put it there.

        A document's score on factor k is sum_j x_j W_kj over all properties (x standardised), oriented by
        `_signs`. Factors are ranked by the size of that score; its sign says the end ("high" or "low", see
        `poles`). Each is explained by the member properties j whose contribution x_j * W_kj (oriented likewise)
        pushes furthest towards that end: properties the document matches more (high end) or less (low end) than
        the average document does, weighted by how much the factor relies on them. Returns, per document,
        [{"factor" (public id), "score" (oriented), "pole", "properties": [(property, push towards the pole)]}].

        `groups` (shown id -> member public ids): rank and explain these instead, each scored as the sum of its
        members' oriented scores and explained by all their members (a curation's merges and drops).
        """
        rows = np.atleast_2d(compatibility_rows)
        x = self.model.standardise(rows)
        groups = self._groups(groups)
        shown = list(groups)
        row = {i: k for k, i in enumerate(self.ids)}
        members = [[row[i] for i in groups[g]] for g in shown]
        oriented = self.grouped((x @ self.model.w_.T) * self._signs, groups)
        cols = [np.array([j for k in ks for j in self._members.get(k, [])], dtype=int) for ks in members]
        result = []
        for i in range(len(x)):
            best = np.argsort(-np.abs(oriented[i]), kind="stable")[:top_factors]
            entries = []
            for g in best:
                direction = 1.0 if oriented[i, g] >= 0 else -1.0
                # A property's push on a group: its pushes through every member factor, each turned alike.
                push = np.sum(
                    [
                        x[i, cols[g]] * self.model.w_[k, cols[g]] * self._signs[k] * direction
                        for k in members[g]
                    ],
                    axis=0,
                )
                order = np.argsort(-push, kind="stable")[:top_properties]
                entries.append(
                    {
                        "factor": shown[g],
                        "score": float(oriented[i, g]),
                        "pole": "high" if direction > 0 else "low",
                        "properties": [(self.properties[cols[g][o]], float(push[o])) for o in order],
                    }
                )
            result.append(entries)
        return result

    def document_table(
        self,
        compatibility_rows: np.ndarray,
        names: dict[int, str],
        groups: Mapping[int, Sequence[int]] | None = None,
    ) -> pd.DataFrame:
        """Each document's row as `document_factors` stores it: `scores` (the model's, one per factor row),
        the factor it sits furthest along (`top_factor`, its public id, -1 when no factor has a member), that
        factor's name from `names` (public id -> name), the end it sits at and the properties that put it there.
        `groups`: the factors shown (see `evidence`); `scores` stay the model's."""
        rows = np.atleast_2d(compatibility_rows)
        scores = self.scores(rows).astype(np.float32)
        top = [
            entries[0] if entries else None for entries in self.evidence(rows, top_factors=1, groups=groups)
        ]
        return pd.DataFrame(
            {
                "scores": list(scores),
                "top_factor": [e["factor"] if e else -1 for e in top],
                "top_factor_name": [names.get(e["factor"], "") if e else "" for e in top],
                "top_factor_pole": [e["pole"] if e else "" for e in top],
                "evidence": ["; ".join(p for p, _ in e["properties"]) if e else "" for e in top],
            }
        )

    def to_frame(self) -> pd.DataFrame:
        """One row per assigned property: factor (public id), rank (1 = highest MI in its factor), property, mi,
        pole ("high" or "low": the end of the factor it sits at)."""
        rows = [
            (
                self.ids[k],
                rank,
                self.properties[j],
                float(self.model.mis[k, j]),
                "high" if self._high[j] else "low",
            )
            for k in self.nonempty()
            for rank, j in enumerate(self._members[k], start=1)
        ]
        return pd.DataFrame(rows, columns=["factor", "rank", "property", "mi", "pole"]).astype(
            {"factor": "int64", "rank": "int64", "property": "string", "mi": "float64", "pole": "string"}
        )

    def describe(self, top: int = 5, properties: int = 5) -> str:
        """A markdown table of the `top` strongest factors (total MI), each with its first `properties` members
        (by MI) as "high end / low end"."""
        lines = ["| factor | size | properties: high / low (MI) |", "|---:|---:|---|"]
        for k in self.ranked()[:top]:
            shown = {prop for prop, _ in self.members(k)[:properties]}
            ends = [
                ", ".join(f"{prop.replace('|', '/')} ({mi:.2f})" for prop, mi in end if prop in shown)
                for end in self.poles(k)
            ]
            lines.append(f"| {self.ids[k]} | {len(self.members(k))} | {' / '.join(e for e in ends if e)} |")
        return "\n".join(lines)

    def warm_start(self, properties: Sequence[str]) -> np.ndarray:
        """Weights (m, len(properties)) to warm-start a refit on a new property list: each known property keeps
        its column of W, new properties start at 0."""
        index = {prop: j for j, prop in enumerate(self.properties)}
        w = np.zeros((self.n_factors, len(properties)), dtype=np.float32)
        for new, prop in enumerate(properties):
            if prop in index:
                w[:, new] = self.model.w_[:, index[prop]]
        return w

    def save(self, path: str | Path) -> None:
        """Write to the folder `path`: the model (corex.safetensors), the properties (properties.json), the
        public ids (ids.json) and the anchors, if any (anchors.json)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save(path / "corex.safetensors")
        (path / "properties.json").write_text(json.dumps(list(self.properties), ensure_ascii=False))
        (path / "ids.json").write_text(json.dumps(list(self.ids)))
        if self.anchors:
            (path / "anchors.json").write_text(json.dumps(self.anchors, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> Factors:
        """Read factors written by `save`."""
        path = Path(path)
        properties = json.loads((path / "properties.json").read_text())
        ids = json.loads((path / "ids.json").read_text()) if (path / "ids.json").exists() else ()
        anchors = json.loads((path / "anchors.json").read_text()) if (path / "anchors.json").exists() else ()
        return cls(LinearCorex.load(path / "corex.safetensors"), properties, tuple(ids), anchors)
