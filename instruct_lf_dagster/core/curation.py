"""Curation: what people decide about the fitted factors, by public id (`Factors.ids`, kept across refits).

A name pinned to a factor, factors hidden, groups of factors shown as one. Curation is applied to what is shown
(the factor report and everything read from it), never to the fit: Linear CorEx, the factors' ids and the stored
model scores stay as they are, so an edit re-runs only the reporting stages.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pandas as pd
from pydantic import field_validator, model_validator

from instruct_lf_dagster.core.config import Settings, setting
from instruct_lf_dagster.core.factors import Factors


class Curation(Settings):
    """A discovery's curation, by public factor id: `names` pinned, `drop` hidden, `merge` shown as one.

    A merge group is shown under its first id (the first one still fitted); its members are the union of its
    factors' members and a document's score on it is the sum of their oriented scores (`Factors.grouped`): no
    refit, simply the factors added up, each turned so that high means "has its properties".
    """

    names: dict[int, str] = setting({}, "factor id -> its name, pinned: the LLM is not asked for it")
    drop: Sequence[int] = setting((), "factor ids hidden from every report and listing")
    merge: Sequence[Sequence[int]] = setting(
        (), "groups of factor ids each shown as one factor, under the group's first id"
    )

    @field_validator("drop")
    @classmethod
    def _dropped(cls, ids: Sequence[int]) -> tuple[int, ...]:
        return tuple(ids)  # a tuple, so that the frozen settings stay hashable (the YAML gives a list)

    @field_validator("merge")
    @classmethod
    def _merged(cls, groups: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(group) for group in groups)

    @field_validator("names")
    @classmethod
    def _named(cls, names: dict[int, str]) -> dict[int, str]:
        stripped = {int(k): " ".join(str(v).split()) for k, v in names.items()}
        empty = sorted(k for k, v in stripped.items() if not v)
        if empty:
            raise ValueError(f"names of factors {empty} are empty")
        return stripped

    @model_validator(mode="after")
    def _consistent(self) -> Curation:
        seen: set[int] = set()
        for group in self.merge:
            if len(set(group)) < 2:
                raise ValueError(f"merge group {list(group)}: name two factors or more")
            again = seen & set(group)
            if again:
                raise ValueError(f"factors {sorted(again)} are in two merge groups")
            seen |= set(group)
        both = seen & set(self.drop)
        if both:
            raise ValueError(f"factors {sorted(both)} are both dropped and merged")
        hidden = {i for group in self.merge for i in group[1:]} & set(self.names)
        if hidden:
            raise ValueError(
                f"factors {sorted(hidden)} are named but merged into another: name a group by its first id"
            )
        return self

    def __hash__(self) -> int:  # `names` is a dict; the settings stay hashable like the others
        return hash((tuple(sorted(self.names.items())), self.drop, self.merge))

    def __bool__(self) -> bool:
        return bool(self.names or self.drop or self.merge)

    def ids(self) -> set[int]:
        """Every factor id the curation speaks of."""
        return set(self.names) | set(self.drop) | {i for group in self.merge for i in group}

    def missing(self, fitted: Iterable[int]) -> list[int]:
        """The ids the curation speaks of that none of the `fitted` (non-empty) factors has any more."""
        return sorted(self.ids() - set(fitted))

    def groups(self, fitted: Sequence[int]) -> dict[int, list[int]]:
        """Shown factor id -> the `fitted` ids it stands for, in the order of `fitted`: dropped factors are left
        out, a merge group is shown under its first id still fitted, at its first member's place in `fitted`."""
        present = set(fitted)
        shown_as = {}
        for group in self.merge:
            kept = [i for i in group if i in present]
            shown_as |= {i: kept[0] for i in kept}
        out: dict[int, list[int]] = {}
        for i in fitted:
            if i not in self.drop:
                out.setdefault(shown_as.get(i, i), []).append(i)
        return out

    def marker(self, shown: int, members: Sequence[int]) -> str:
        """What the curation did to one shown factor: "named", "merged", "named, merged" or ""."""
        return ", ".join(
            word for word, done in (("named", shown in self.names), ("merged", len(members) > 1)) if done
        )


def curate(frame: pd.DataFrame, curation: Curation, fitted: Sequence[int]) -> pd.DataFrame:
    """`frame` (`Factors.to_frame`: one row per property with its factor id, rank, mi and pole) as shown: rows
    of dropped factors left out, a merge group's rows under its shown id, where that factor's rows stood, and
    ranked again by MI, and a `curated` column (`Curation.marker`). `fitted`: the non-empty factors' ids."""
    groups = curation.groups(fitted)
    shown_of = {i: shown for shown, members in groups.items() for i in members}
    first = {int(f): n for n, f in reversed(list(enumerate(frame["factor"])))}  # where each factor starts
    out = frame[frame["factor"].isin(shown_of)].copy()
    out["factor"] = out["factor"].map(shown_of).astype("int64")
    out = out.sort_values(
        ["factor", "mi"], key=lambda c: c.map(first) if c.name == "factor" else -c, kind="stable"
    )
    out["rank"] = (out.groupby("factor", sort=False).cumcount() + 1).astype("int64")
    out["curated"] = out["factor"].map(lambda k: curation.marker(k, groups[k])).astype("string")
    return out.reset_index(drop=True)


def mark_seeded(frame: pd.DataFrame, seeded: Iterable[int]) -> pd.DataFrame:
    """`frame` (`curate`) with the factors `seeded` (shown ids that hold a seed factor and show its name)
    marked "named" and "seeded" in `curated`."""
    seeded = set(seeded)
    marks = [
        ", ".join(dict.fromkeys([*filter(None, m.split(", ")), "named", "seeded"])) if f in seeded else m
        for f, m in zip(frame["factor"], frame["curated"], strict=True)
    ]
    return frame.assign(curated=pd.array(marks, dtype="string"))


def shown_groups(report: pd.DataFrame, factors: Factors) -> dict[int, list[int]]:
    """Shown factor id -> the ids of `factors` it stands for, read back from the factor `report` written with
    them: the curation as it was applied, so that everything downstream of the report shows what it shows (a
    dropped factor is in no group). Groups come in the order of `factors.nonempty()`."""
    fitted_id = {
        p: factors.ids[k] for p, k in zip(factors.properties, factors.assignment, strict=True) if k >= 0
    }
    shown_of = {
        fitted_id[p]: int(f)
        for p, f in zip(report["property"], report["factor"], strict=True)
        if p in fitted_id
    }
    out: dict[int, list[int]] = {}
    for k in factors.nonempty():
        if factors.ids[k] in shown_of:
            out.setdefault(shown_of[factors.ids[k]], []).append(factors.ids[k])
    return out


def in_order(groups: Mapping[int, list[int]], ranked: Sequence[int]) -> dict[int, list[int]]:
    """`groups` reordered as their shown ids stand in `ranked` (ids, strongest first)."""
    position = {i: n for n, i in enumerate(ranked)}
    return dict(sorted(groups.items(), key=lambda g: position.get(g[0], len(position))))
