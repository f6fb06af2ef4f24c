"""The whole method in one object: proposals -> vocabulary -> linker -> compatibility -> factors.

`InstructLF` holds every setting of the method, with its default, and exposes each stage (`fit_vocabulary`,
`fit_linker`, `fit_factors`) as well as `fit`, which chains them. The evaluations use the object; the Dagster
assets call the same stages one by one, with storage and partitions around them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from instruct_lf_dagster.core.compatibility import EmbeddingCache, compatibility
from instruct_lf_dagster.core.config import ComputeConfig, MethodConfig
from instruct_lf_dagster.core.corex import CorexStatistics, LinearCorex
from instruct_lf_dagster.core.factors import Factors
from instruct_lf_dagster.core.linker import Linker, LinkerReport
from instruct_lf_dagster.core.proposals import Goal, normalise_property
from instruct_lf_dagster.core.vocabulary import Vocabulary

log = logging.getLogger(__name__)

Progress = Callable[[int, float, float | None], None]  # (epoch, train loss, validation loss or None)


def auto_factors(n_properties: int) -> int:
    """The default number of factors: one per 8 properties, between 2 and the paper's 368."""
    return int(np.clip(n_properties // 8, 2, 368))


def auto_themes(n_factors: int) -> int:
    """The default number of themes: about the square root of the factor count, between 3 and 15 (fewer only
    when there are fewer factors)."""
    return max(1, min(n_factors, int(np.clip(round(np.sqrt(n_factors)), 3, 15))))


def _log_epoch(epoch: int, train: float, val: float | None) -> None:
    log.info("linker: epoch %d train loss %.4f validation loss %s", epoch, train, val)


@dataclass
class InstructLF:
    """Goal-conditioned latent factors from documents and the properties an LLM proposed for them.

    `fit(documents, proposals)` folds the proposals into a vocabulary, fine-tunes the linker on
    (document, property) pairs, builds the compatibility matrix of `corpus` (default: the documents; it may hold
    documents that have no proposals, which is what the linker is for) and fits Linear CorEx on it.
    `transform(texts)` gives factor scores. Every random step is seeded by `config.seed`.

    `config` holds the method's settings (`MethodConfig`: vocabulary, linker, factors, truncation, seed) and
    `compute` where it runs; their defaults live in `core.config`. To refit factors with other settings:
    `model.but(factors={"n_factors": m, "l1": l1}).fit_factors(x, properties)`.
    """

    config: MethodConfig = field(default_factory=MethodConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    cache: EmbeddingCache = field(default_factory=EmbeddingCache, repr=False)

    def but(self, compute: ComputeConfig | None = None, **changes: object) -> InstructLF:
        """An unfitted copy with `changes` to the method's settings (see `Settings.but`), sharing the cache."""
        return InstructLF(self.config.but(**changes), compute or self.compute, self.cache)

    def anchors(self) -> tuple[tuple[str, ...], ...]:
        """The seed factors' properties as the vocabulary spells them, a group per seed factor (`Factors.anchors`)."""
        return tuple(
            tuple(dict.fromkeys(filter(None, map(normalise_property, seed.properties))))
            for seed in self.config.seed_factors
        )

    # -- stages -------------------------------------------------------------------------------------------------
    def _linker(self) -> Linker:
        """An untrained linker (MiniLM) with this object's encoding settings."""
        return Linker(
            truncation=self.config.truncation,
            max_seq_length=self.config.linker.max_seq_length,
            device=self.compute.device,
        )

    def fit_vocabulary(
        self, proposals: Sequence[Sequence[str] | None], goal: Goal | None = None
    ) -> Vocabulary:
        """Every proposed property, normalised and screened (`core.screening`: with `goal`, restatements of it
        are kept out too); exact and near duplicates (MiniLM cosine) folded together; the seed factors'
        properties added.

        MiniLM is loaded only when there are at least two properties to compare.
        """

        def embed(texts: list[str]) -> np.ndarray:  # called once, with every property
            return self._linker().encode_properties(texts, batch_size=self.compute.encode_batch_size)

        vocabulary = Vocabulary.fit(
            [p or () for p in proposals],
            embed,
            threshold=self.config.vocabulary.merge_threshold,
            min_count=self.config.vocabulary.min_count,
            goal=goal,
            exclude=self.config.vocabulary.exclude,
        ).with_properties(p for group in self.anchors() for p in group)
        if not len(vocabulary):
            raise ValueError("no usable property in the proposals: nothing to discover factors from")
        return vocabulary

    def fit_linker(
        self,
        documents: Sequence[str],
        proposals: Sequence[Sequence[str] | None],
        vocabulary: Vocabulary,
        progress: Progress | None = None,
    ) -> tuple[Linker, LinkerReport]:
        """A fresh linker fine-tuned on each document paired with `vocabulary.map` of its proposals.

        Documents none of whose proposals is in the vocabulary are left out. `progress(epoch, train_loss,
        val_loss)` is called after every epoch (default: a log line).
        """
        _check_aligned(documents, proposals)
        pairs = [(d, vocabulary.map(list(p))) for d, p in zip(documents, proposals, strict=True) if p]
        pairs = [(d, props) for d, props in pairs if props]
        if not pairs:
            raise ValueError("no document has a property in the vocabulary: nothing to train the linker on")
        pairs = self._sample(pairs)
        log.info("linker: %d documents with proposals, %d properties", len(pairs), len(vocabulary))
        linker = self._linker()
        report = linker.fit(
            [d for d, _ in pairs],
            [props for _, props in pairs],
            self.config.linker,
            seed=self.config.seed,
            mini_batch_size=self.compute.train_mini_batch_size,
            progress=progress or _log_epoch,
        )
        return linker, report

    def _sample(self, pairs: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
        """At most `linker.max_pairs` (document, property) pairs, drawn with `seed`, in their original order.

        Bounds fine-tuning time and memory on a large corpus, whatever the number of batches.
        """
        flat = [(i, prop) for i, (_, props) in enumerate(pairs) for prop in props]
        limit = self.config.linker.max_pairs
        if limit is None or len(flat) <= limit:
            return pairs
        chosen = np.sort(np.random.default_rng(self.config.seed).choice(len(flat), limit, replace=False))
        kept: dict[int, list[str]] = {}
        for k in chosen:
            i, prop = flat[k]
            kept.setdefault(i, []).append(prop)
        return [(pairs[i][0], props) for i, props in kept.items()]

    def fit_factors(
        self, x: np.ndarray, properties: Sequence[str], previous: Factors | None = None
    ) -> Factors:
        """Linear CorEx on the compatibility matrix x (documents x `properties`), read as factors.

        With `warm_start`, a `previous` fit with the same factor count is the starting point (its known
        properties keep their weights, new ones start at 0); otherwise the weights start random.
        """
        if np.ndim(x) != 2 or np.shape(x)[1] != len(properties):
            raise ValueError(
                f"x of shape {np.shape(x)} does not have one column per property ({len(properties)})"
            )
        corex, warm = self._corex(np.shape(x)[0], properties, previous)
        return Factors(corex.fit(x, warm_start=warm), properties, anchors=self.anchors())

    def fit_factors_from_statistics(
        self, stats: CorexStatistics, properties: Sequence[str], previous: Factors | None = None
    ) -> Factors:
        """`fit_factors` from `CorexStatistics` of the compatibility rows (accumulated batch by batch).

        Same settings and warm-start rule; the result is `fit_factors`' to float32 rounding. Needs the
        quasi-Newton fit, so l1 = 0: with l1 > 0 (Adam, which needs the rows) it raises ValueError.
        """
        if stats.p != len(properties):
            raise ValueError(
                f"statistics of {stats.p} columns do not have one per property ({len(properties)})"
            )
        corex, warm = self._corex(stats.n, properties, previous)
        return Factors(corex.fit_statistics(stats, warm_start=warm), properties, anchors=self.anchors())

    def _auto_factors(self, n_properties: int, previous: Factors | None) -> int:
        """`auto_factors`, except that a refit keeps the last fit's count while it is within a quarter of it, so
        that a batch or two more neither restarts CorEx cold nor reshuffles the factors."""
        count = auto_factors(n_properties)
        if (
            self.config.factors.warm_start
            and previous is not None
            and abs(count - previous.n_factors) <= previous.n_factors / 4
        ):
            return previous.n_factors
        return count

    def fit_themes(self, stats: CorexStatistics, factor_ids: Sequence[int]) -> Factors:
        """The second layer (the paper's stacking): Linear CorEx over the documents' factor strengths groups
        factors into themes. `stats`: statistics of the strengths of the factors `factor_ids` (in that column
        order), accumulated batch by batch; the result's "properties" are the factor ids, as strings."""
        labels = [str(i) for i in factor_ids]
        if stats.p != len(labels):
            raise ValueError(f"statistics of {stats.p} columns for {len(labels)} factors")
        corex, _ = self._corex(
            stats.n, labels, None, self.config.factors.n_themes or auto_themes(len(labels))
        )
        return Factors(corex.fit_statistics(stats), labels)

    def _corex(
        self,
        n_documents: int,
        properties: Sequence[str],
        previous: Factors | None,
        n_factors: int | None = None,
    ) -> tuple[LinearCorex, np.ndarray | None]:
        """The unfitted Linear CorEx (the one place it is built: factors, and themes over factors) and its warm
        start, if any. Themes are fitted from statistics, so always with l1 = 0."""
        themes = n_factors is not None
        n_factors = (
            n_factors or self.config.factors.n_factors or self._auto_factors(len(properties), previous)
        )
        anchors = () if themes else self.anchors()
        warm = (
            previous.warm_start(properties)
            if self.config.factors.warm_start
            and previous is not None
            and previous.n_factors == n_factors
            and previous.anchors == anchors  # an anchored row must start where its seeds are
            else None
        )
        column = {p.casefold(): j for j, p in enumerate(properties)}
        groups = [[column[p.casefold()] for p in group if p.casefold() in column] for group in anchors]
        log.info(
            "Linear CorEx: %d x %d -> %d factors%s",
            n_documents,
            len(properties),
            n_factors,
            " (warm start)" * (warm is not None),
        )
        corex = LinearCorex(
            n_factors,
            l1=0.0 if themes else self.config.factors.l1,
            seed=self.config.seed,
            device=self.compute.device,
            max_iter=self.config.factors.max_iter,
            threads=self.compute.threads,
            anchors=groups[:n_factors],
            anchor_strength=[seed.strength for seed in self.config.seed_factors][: len(groups[:n_factors])],
        )
        return corex, warm

    # -- the whole method ---------------------------------------------------------------------------------------
    def fit(
        self,
        documents: Sequence[str],
        proposals: Sequence[Sequence[str] | None],
        corpus: Sequence[str] | None = None,
        linker: Linker | None = None,
        goal: Goal | None = None,
    ) -> InstructLF:
        """Discover factors; `proposals[i]` belongs to `documents[i]` (None or empty: nothing proposed).

        Sets `vocabulary_`, `linker_`, `linker_report_` and `factors_` (fitted afresh: no warm start; with l1 = 0
        from the statistics of the compatibility rows, as the Dagster assets do batch by batch).
        `linker`: one already trained on these proposals (e.g. `Linker.load` of `linker_.save`), used as is, so
        that trying other CorEx settings skips the costly fine-tuning; `linker_report_` is then None. `goal`:
        properties that only restate it are kept out of the vocabulary (`fit_vocabulary`).
        """
        _check_aligned(documents, proposals)
        self.vocabulary_ = self.fit_vocabulary(proposals, goal)
        self.linker_report_: LinkerReport | None = None
        if linker is None:
            self.linker_, self.linker_report_ = self.fit_linker(documents, proposals, self.vocabulary_)
        else:
            self.linker_ = linker
        x = self.compatibility(documents if corpus is None else corpus)
        if self.config.factors.l1 == 0:  # as the platform fits, from the rows' statistics: the same factors
            self.factors_ = self.fit_factors_from_statistics(
                CorexStatistics.of([x]), self.vocabulary_.properties
            )
        else:
            self.factors_ = self.fit_factors(x, self.vocabulary_.properties)
        return self

    def compatibility(self, texts: Sequence[str]) -> np.ndarray:
        """Rows of the documents x properties matrix for `texts` (embeddings cached by text)."""
        return compatibility(
            self.linker_,
            texts,
            self.vocabulary_.properties,
            batch_size=self.compute.encode_batch_size,
            cache=self.cache,
        )

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """Factor scores (n, n_factors) of `texts`."""
        return self.factors_.scores(self.compatibility(texts))


def _check_aligned(documents: Sequence[str], proposals: Sequence[object]) -> None:
    if len(documents) != len(proposals):
        raise ValueError(f"{len(documents)} documents but {len(proposals)} proposal lists")
