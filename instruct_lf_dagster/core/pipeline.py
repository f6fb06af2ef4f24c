"""The whole method in one object: proposals -> vocabulary -> linker -> compatibility -> factors.

`InstructLF` is for notebooks, tests and the evaluations: the Dagster assets run the same stages one by one,
with storage and partitions around them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from instruct_lf_dagster.core.compatibility import EmbeddingCache, compatibility
from instruct_lf_dagster.core.corex import LinearCorex
from instruct_lf_dagster.core.factors import Factors
from instruct_lf_dagster.core.linker import Linker, LinkerReport, Truncation
from instruct_lf_dagster.core.vocabulary import Vocabulary

log = logging.getLogger(__name__)


def auto_factors(n_properties: int) -> int:
    """The default number of factors: one per 8 properties, between 2 and the paper's 368."""
    return int(np.clip(n_properties // 8, 2, 368))


@dataclass
class InstructLF:
    """Goal-conditioned latent factors from documents and the properties an LLM proposed for them.

    `fit(documents, proposals)` folds the proposals into a vocabulary, fine-tunes the linker on
    (document, property) pairs, builds the compatibility matrix of `corpus` (default: the documents; it may hold
    documents that have no proposals, which is what the linker is for) and fits Linear CorEx on it.
    `transform(texts)` gives factor scores. Every random step is seeded by `seed`.
    """

    n_factors: int | None = None  # None: `auto_factors` of the vocabulary size
    l1: float = 0.9
    truncation: Truncation = "head"
    merge_threshold: float = 0.9
    min_count: int = 1
    linker_epochs: int = 20
    linker_batch_size: int = 512
    linker_patience: int = 2
    max_seq_length: int = 256
    # shorter texts while fine-tuning only (CPU time); None: max_seq_length
    linker_seq_length: int | None = None
    max_iter: int = 1000
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    cache: EmbeddingCache = field(default_factory=EmbeddingCache, repr=False)

    def fit(
        self,
        documents: Sequence[str],
        proposals: Sequence[Sequence[str] | None],
        corpus: Sequence[str] | None = None,
        linker: Linker | None = None,
    ) -> InstructLF:
        """Discover factors; `proposals[i]` belongs to `documents[i]` (None or empty: nothing proposed).

        `linker`: one already trained on these proposals (e.g. `Linker.load` of `linker_.save`), used as is, so
        that trying other CorEx settings skips the costly fine-tuning; `linker_report_` is then None.
        """
        if len(documents) != len(proposals):
            raise ValueError(f"{len(documents)} documents but {len(proposals)} proposal lists")
        trained, linker = (
            linker,
            Linker(truncation=self.truncation, max_seq_length=self.max_seq_length, device=self.device),
        )
        self.vocabulary_ = Vocabulary.fit(
            [p or () for p in proposals],
            lambda texts: linker.encode_properties(texts),
            threshold=self.merge_threshold,
            min_count=self.min_count,
        )
        if not len(self.vocabulary_):
            raise ValueError("no usable property in the proposals: nothing to discover factors from")
        pairs = [(d, self.vocabulary_.map(list(p))) for d, p in zip(documents, proposals, strict=True) if p]
        log.info("linker: %d documents with proposals, %d properties", len(pairs), len(self.vocabulary_))
        self.linker_report_: LinkerReport | None = None
        if trained is not None:
            self.linker_ = trained
            return self._fit_factors(documents if corpus is None else corpus)
        self.linker_report_ = linker.fit(
            [d for d, _ in pairs],
            [p for _, p in pairs],
            epochs=self.linker_epochs,
            batch_size=self.linker_batch_size,
            patience=self.linker_patience,
            seed=self.seed,
            max_seq_length=self.linker_seq_length,
            progress=lambda epoch, train, val: log.info(
                "linker: epoch %d train loss %.4f validation loss %s", epoch, train, val
            ),
        )
        self.linker_ = linker
        return self._fit_factors(documents if corpus is None else corpus)

    def _fit_factors(self, corpus: Sequence[str]) -> InstructLF:
        x = self.compatibility(corpus)
        n_factors = self.n_factors or auto_factors(x.shape[1])
        log.info("Linear CorEx: %d x %d -> %d factors", *x.shape, n_factors)
        corex = LinearCorex(
            n_factors,
            l1=self.l1,
            seed=self.seed,
            device=self.device,
            max_iter=self.max_iter,
            threads=self.threads,
        ).fit(x)
        self.factors_ = Factors(corex, self.vocabulary_.properties)
        return self

    def compatibility(self, texts: Sequence[str]) -> np.ndarray:
        """Rows of the documents x properties matrix for `texts` (embeddings cached by text)."""
        return compatibility(self.linker_, texts, self.vocabulary_.properties, cache=self.cache)

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """Factor scores (n, n_factors) of `texts`."""
        return self.factors_.scores(self.compatibility(texts))
