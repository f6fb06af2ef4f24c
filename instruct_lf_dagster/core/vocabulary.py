"""The vocabulary: every proposed property, normalised and screened, with exact and near duplicates folded."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from instruct_lf_dagster.core.config import VocabularyConfig
from instruct_lf_dagster.core.proposals import Goal, normalise_property
from instruct_lf_dagster.core.screening import junk_reason

Embed = Callable[[list[str]], np.ndarray]  # texts -> L2-normalised rows


_DEFAULTS = VocabularyConfig()  # declared in core.config


def _key(prop: str) -> str:
    return prop.casefold()


@dataclass
class Vocabulary:
    """Canonical properties and the map from every raw proposal string to its canonical property.

    Build it with `Vocabulary.fit`. `properties` is sorted, so column j of the compatibility matrix is stable
    for a given set of proposals.
    """

    properties: list[str]
    canonical: dict[str, str]  # raw string -> canonical property
    counts: dict[str, int]  # canonical property -> number of proposals it stands for
    merges: int = 0  # near-duplicate groups folded into another property
    threshold: float | None = None
    excluded: dict[str, str] = field(default_factory=dict)  # property kept out -> why (`core.screening`)

    @classmethod
    def fit(
        cls,
        proposals: Iterable[Sequence[str]],
        embed: Embed | None = None,
        *,
        threshold: float = _DEFAULTS.merge_threshold,
        min_count: int = _DEFAULTS.min_count,
        goal: Goal | None = None,
        exclude: Sequence[str] = _DEFAULTS.exclude,
    ) -> Vocabulary:
        """Fold proposals into a vocabulary.

        Exact duplicates (after normalisation, ignoring case) become one property spelled as its most frequent
        form. With `embed`, near duplicates (cosine >= `threshold`) are merged greedily: properties are visited
        from most to least frequent and each joins the first earlier representative it is close to, so there
        is no chaining of "horror" -> "horror comedy" -> "comedy". Ties break by string, so the result does not
        depend on input order. Properties proposed fewer than `min_count` times (after merging) are dropped.
        Properties that are instructions, code, mentions of the prompt, restatements of the `goal` or matches of
        an `exclude` pattern (`core.screening.junk_reason`) are kept out before merging and listed in `excluded`.
        """
        spellings: dict[str, Counter[str]] = {}
        raw_to_key: dict[str, str] = {}
        for props in proposals:
            for raw in props or ():
                prop = normalise_property(raw)
                if prop is None:
                    continue
                raw_to_key[raw] = _key(prop)
                spellings.setdefault(_key(prop), Counter())[prop] += 1
        # The most frequent spelling represents its key; ties go to the smallest string.
        spelled = {k: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for k, c in spellings.items()}
        count = {k: sum(c.values()) for k, c in spellings.items()}
        excluded = {spelled[k]: r for k in count if (r := junk_reason(spelled[k], goal, exclude)) is not None}
        order = sorted(
            (k for k in count if spelled[k] not in excluded), key=lambda k: (-count[k], spelled[k])
        )

        leader = {k: k for k in order}
        merges = 0
        if embed is not None and len(order) > 1:
            vectors = np.asarray(embed([spelled[k] for k in order]), dtype=np.float32)
            leaders: list[int] = []
            for i, k in enumerate(order):
                if leaders:
                    sims = vectors[leaders] @ vectors[i]
                    best = int(np.argmax(sims))
                    if sims[best] >= threshold:
                        leader[k] = order[leaders[best]]
                        merges += 1
                        continue
                leaders.append(i)

        total = Counter()
        for k in order:
            total[leader[k]] += count[k]
        kept = {k for k, n in total.items() if n >= min_count}
        canonical = {
            raw: spelled[leader[k]] for raw, k in sorted(raw_to_key.items()) if leader.get(k) in kept
        }
        counts = {spelled[k]: total[k] for k in kept}
        return cls(
            properties=sorted(counts),
            canonical=canonical,
            counts=counts,
            merges=merges,
            threshold=threshold if embed is not None else None,
            excluded=dict(sorted(excluded.items())),
        )

    def with_properties(self, properties: Iterable[str]) -> Vocabulary:
        """This vocabulary with `properties` added, unscreened and with no proposal behind them (a discovery's
        seed factors: asked for, so never dropped); one already in, ignoring case, is not added twice."""
        known = {_key(p) for p in self.properties}
        added = [
            p
            for p in dict.fromkeys(filter(None, map(normalise_property, properties)))
            if _key(p) not in known
        ]
        if not added:
            return self
        return replace(
            self,
            properties=sorted([*self.properties, *dict.fromkeys(added)]),
            counts={**self.counts, **{p: 0 for p in added}},
        )

    def __len__(self) -> int:
        return len(self.properties)

    def map(self, raw: Iterable[str]) -> list[str]:
        """Canonical properties for raw proposal strings (unknown or dropped ones are skipped, order kept)."""
        out: list[str] = []
        for r in raw:
            c = self.canonical.get(r)
            if c is not None and c not in out:
                out.append(c)
        return out

    def to_dict(self) -> dict:
        return {
            "properties": self.properties,
            "canonical": self.canonical,
            "counts": self.counts,
            "merges": self.merges,
            "threshold": self.threshold,
            "excluded": self.excluded,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Vocabulary:
        return cls(**data)

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
