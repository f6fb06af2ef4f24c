"""The INSPIRED protocol: a count-based kNN recommender over dialogue vectors, Hit@k, and one seed of every
method (baselines, the compatibility matrix and Instruct-LF factors) scored with it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from instruct_lf_dagster.core.config import FactorConfig, MethodConfig
from instruct_lf_dagster.evaluation import representations
from instruct_lf_dagster.evaluation.inspired_data import Inspired
from instruct_lf_dagster.evaluation.readouts import readouts
from instruct_lf_dagster.evaluation.report import Scores

if TYPE_CHECKING:
    from instruct_lf_dagster.core.compatibility import EmbeddingCache

log = logging.getLogger(__name__)

# The paper's INSPIRED settings: 368 factors, L1 0.9, the latest turns of a dialogue kept.
PAPER = MethodConfig(truncation="tail", factors=FactorConfig(n_factors=368, l1=0.9))

KS = (1, 5, 10, 20, 50, 100, 300)
NEIGHBOURS = (1, 5, 20, 60, 180, 360, 720, 1024)
SELECT_K = 20
HELD_OUT = 0.2


def recommend(neighbours: np.ndarray, titles: Sequence[Sequence[str]], limit: int) -> list[list[str]]:
    """Per query, up to `limit` titles ranked by how many of its neighbours (rows of `neighbours`, most similar
    first) lead to them; ties go to the title reached through the more similar neighbour."""
    ranked = []
    for row in neighbours:
        counts: Counter[str] = Counter()
        first: dict[str, int] = {}
        for position, index in enumerate(row):
            for title in titles[index]:
                counts[title] += 1
                first.setdefault(title, position)
        ranked.append(sorted(counts, key=lambda t: (-counts[t], first[t]))[:limit])
    return ranked


def hits(
    ranked: Sequence[Sequence[str]], gold: Sequence[Sequence[str]], ks: Sequence[int] = KS
) -> dict[str, float]:
    """Hit@k: the share of queries with a gold title among the first k recommendations."""
    return {
        f"hit@{k}": float(np.mean([bool(set(r[:k]) & set(g)) for r, g in zip(ranked, gold, strict=True)]))
        for k in ks
    }


def choose_neighbours(
    train: np.ndarray, data: Inspired, neighbours: Sequence[int] = NEIGHBOURS
) -> tuple[int, float]:
    """The n of the count-based kNN with the best Hit@20 on the held-out tail of the training rows (datastore:
    the rest), and that Hit@20."""
    cut = int(round(len(train) * (1 - HELD_OUT)))
    held_gold = data.train_titles[cut:]
    candidates = [n for n in neighbours if n <= cut] or [cut]
    order = representations.cosine_neighbours(train[cut:], train[:cut], max(candidates))
    chosen, best = candidates[0], -1.0
    for n in candidates:  # the first n of a longer neighbour list are the n nearest
        score = hits(recommend(order[:, :n], data.train_titles[:cut], SELECT_K), held_gold, [SELECT_K])
        if score[f"hit@{SELECT_K}"] > best:
            chosen, best = n, score[f"hit@{SELECT_K}"]
    return chosen, best


def knn_scores(
    train: np.ndarray, test: np.ndarray, data: Inspired, neighbours: Sequence[int] = NEIGHBOURS
) -> tuple[dict[str, float], int]:
    """Hit@k on the test dialogues of the count-based kNN over representations `train` (one row per training
    row) and `test`, with n chosen on the held-out tail of the training rows; returns (hits, n)."""
    chosen, _ = choose_neighbours(train, data, neighbours)
    order = representations.cosine_neighbours(test, train, chosen)
    ranked = recommend(order, data.train_titles, max(KS))
    return hits(ranked, [[t] for t in data.test_titles]), chosen


def popularity_scores(data: Inspired) -> dict[str, float]:
    """Hit@k of recommending the most frequent training titles to everyone (ties by first appearance)."""
    counts = Counter(t for titles in data.train_titles for t in titles)
    top = [t for t, _ in counts.most_common(max(KS))]
    return hits([top] * len(data.test_titles), [[t] for t in data.test_titles])


@dataclass
class Settings:
    """The discovery settings of the `instruct_lf` and `compatibility` rows (the paper's, dialogues kept by
    their most recent turns)."""

    method: MethodConfig = PAPER
    # other penalties and factor counts, chosen between by Hit@20 on the held-out training rows
    l1_alternatives: tuple[float, ...] = ()
    factor_alternatives: tuple[int, ...] = ()
    # vocabulary and linker see the first N proposed dialogues (file order); several Ns: a row pair per N
    linker_documents: tuple[int | None, ...] = (None,)
    lda_topics: int = representations.LDA_TOPICS
    linker_dir: str | None = None  # a trained linker to reuse, or where to save the one trained
    readouts: bool = False  # also the held-out Hit@20 of each readout of the factors (`evaluation.readouts`)


def evaluate_seed(
    data: Inspired,
    proposals: dict[str, list[str]],
    seed: int,
    settings: Settings,
    methods: Sequence[str],
    cache: EmbeddingCache | None = None,
    fixed: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[Scores, dict[str, str], dict[str, float]]:
    """One seed of every method: (metric -> method -> value, chosen n per method, seconds per method).

    `cache` keeps embeddings across seeds: the raw encoder's, and a reused linker's, do not depend on the seed.
    `fixed`: method -> (training rows, test rows) of representations made once for every seed (topicgpt).
    """
    from instruct_lf_dagster.core.compatibility import EmbeddingCache
    from instruct_lf_dagster.core.linker import CONFIG_FILE, Linker
    from instruct_lf_dagster.core.pipeline import InstructLF

    scores: Scores = {}
    chosen: dict[str, str] = {}
    seconds: dict[str, float] = {}

    def record(method: str, result: dict[str, float], n: int | None = None) -> None:
        for metric, value in result.items():
            scores.setdefault(metric, {})[method] = value
        if n is not None:
            chosen[method] = f"n={n}"

    def timed(method: str, fn: Callable[[], None]) -> None:
        if method in methods:
            started = time.perf_counter()
            fn()
            seconds[method] = time.perf_counter() - started
            log.info("inspired seed %d: %s done in %.1fs", seed, method, seconds[method])

    train, test = data.train_dialogues, data.test_dialogues
    timed("popularity", lambda: record("popularity", popularity_scores(data)))

    def embeddings() -> None:
        vectors = representations.raw_embeddings(
            train + test, truncation=settings.method.truncation, cache=cache
        )
        record("raw_embedding", *knn_scores(vectors[: len(train)], vectors[len(train) :], data))

    timed("raw_embedding", embeddings)

    def lda() -> None:
        topics = representations.LDA(settings.lda_topics, seed=seed).fit(train).transform(train + test)
        record("lda", *knn_scores(topics[: len(train)], topics[len(train) :], data))

    timed("lda", lda)

    def bertopic() -> None:
        topics = representations.BERTopicPeer(seed=seed).fit(train).transform(train + test)
        record("bertopic", *knn_scores(topics[: len(train)], topics[len(train) :], data))

    if representations.bertopic_available():
        timed("bertopic", bertopic)
    for method, (train_rows, test_rows) in (fixed or {}).items():
        record(method, *knn_scores(train_rows, test_rows, data))

    def discover(budget: int | None) -> None:
        """The `compatibility` and `instruct_lf` rows when vocabulary and linker see the first `budget`
        proposed dialogues (the recorded file is in sample order, so any prefix is a uniform sample)."""
        started = time.perf_counter()
        documents = list(proposals)[:budget]
        suffix = f" ({len(documents)} proposed)" if len(settings.linker_documents) > 1 else ""
        model = InstructLF(
            settings.method.but(seed=seed), cache=cache if cache is not None else EmbeddingCache()
        )
        # The linker learns from the dialogues with proposals; the matrix and CorEx cover every training one.
        saved = Path(settings.linker_dir) if settings.linker_dir else None
        reuse = saved is not None and (saved / CONFIG_FILE).is_file()
        if reuse:
            log.info("inspired seed %d: reusing the linker saved in %s", seed, saved)
        linker = Linker.load(saved, max_seq_length=settings.method.linker.max_seq_length) if reuse else None
        model.fit(documents, [proposals[d] for d in documents], corpus=data.contexts(), linker=linker)
        if saved is not None and not reuse:
            model.linker_.save(saved)
        rows = model.compatibility(train + test)
        seconds["discovery" + suffix] = time.perf_counter() - started
        if "compatibility" in methods:
            record("compatibility" + suffix, *knn_scores(rows[: len(train)], rows[len(train) :], data))
        if "instruct_lf" not in methods:
            return
        first = settings.method.factors
        l1s = dict.fromkeys((first.l1, *settings.l1_alternatives))
        sizes = dict.fromkeys((first.n_factors, *settings.factor_alternatives))
        candidates = {(first.n_factors, first.l1): model.factors_}
        corpus = model.compatibility(data.contexts()) if len(l1s) * len(sizes) > 1 else None
        for m in sizes:
            for l1 in l1s:
                if (m, l1) not in candidates:
                    refit = model.but(factors={"n_factors": m, "l1": l1})
                    candidates[m, l1] = refit.fit_factors(corpus, model.vocabulary_.properties)
        # Settings are chosen on the held-out training rows only (ties: the first listed, the paper's).
        held_out = {
            key: choose_neighbours(f.scores(rows[: len(train)]), data)[1] for key, f in candidates.items()
        }
        m, l1 = max(held_out, key=held_out.get)
        factors = candidates[m, l1].scores(rows)
        method = "instruct_lf" + suffix
        record(method, *knn_scores(factors[: len(train)], factors[len(train) :], data))
        if settings.readouts:  # the ablation: held-out training rows only, the test split is not looked at
            for name, features in readouts(candidates[m, l1], rows[: len(train)]).items():
                held = choose_neighbours(features, data)[1]
                scores.setdefault(f"held-out hit@{SELECT_K}", {})[f"{method}/{name}"] = held
        chosen[method] += f" m={m}" * (len(sizes) > 1) + f" l1={l1:g}" * (len(l1s) > 1)
        if len(candidates) > 1:
            log.info("inspired seed %d: held-out Hit@20 by (factors, l1): %s", seed, held_out)

    if {"compatibility", "instruct_lf"} & set(methods):
        for budget in settings.linker_documents:
            discover(budget)
    return scores, chosen, seconds


METHODS = ("popularity", "raw_embedding", "lda", "bertopic", "topicgpt", "compatibility", "instruct_lf")
BASELINES = ("popularity", "raw_embedding", "lda", "bertopic", "topicgpt")


def summary(means: Scores) -> dict:
    """The final JSON: Hit@k per method, the best baseline's Hit@20 and instruct_lf's ratio to it."""
    result: dict = {metric: dict(values) for metric, values in means.items()}
    key = f"hit@{SELECT_K}"
    baselines = [v for m, v in means.get(key, {}).items() if m in BASELINES]
    best = max(baselines) if baselines else None
    # With a budget curve, the row of the largest budget stands for the method.
    ours = next((v for m, v in reversed(means.get(key, {}).items()) if m.startswith("instruct_lf")), None)
    result["best_baseline_hit@20"] = best
    result["instruct_lf_over_best_baseline"] = ours / best if ours is not None and best else None
    return result
