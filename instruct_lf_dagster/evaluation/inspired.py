"""Movie recommendation on INSPIRED dialogues: the paper's count-based kNN protocol, baselines side by side.

A dialogue is represented by some vector (factor scores, a compatibility row, an embedding, topic mixtures);
the recommender takes the n most cosine-similar training dialogues and ranks the titles they lead to by count.
n is chosen from `NEIGHBOURS` by Hit@20 on the last 20% of training rows (datastore: the first 80%), then the
datastore is every training row. Titles match exactly once a year suffix " (YYYY)" is stripped.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from instruct_lf_dagster.evaluation import representations
from instruct_lf_dagster.evaluation.report import Scores, aggregate, format_table, numbers

if TYPE_CHECKING:
    from instruct_lf_dagster.core.compatibility import EmbeddingCache

log = logging.getLogger(__name__)

KS = (1, 5, 10, 20, 50, 100, 300)
NEIGHBOURS = (1, 5, 20, 60, 180, 360, 720, 1024)
SELECT_K = 20
HELD_OUT = 0.2
PROPOSALS_FILE = "proposals_qwen25coder15b.jsonl"
_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")


def title_key(title: str) -> str:
    """A title as compared: surrounding space and a trailing " (YYYY)" removed."""
    return _YEAR.sub("", str(title)).strip()


@dataclass(frozen=True)
class Inspired:
    """Training dialogues with the titles mentioned next, and test dialogues with one title each."""

    train_dialogues: list[str]
    train_titles: list[list[str]]
    test_dialogues: list[str]
    test_titles: list[str]

    @classmethod
    def load(cls, folder: str | Path) -> Inspired:
        """Read `inspired_train.csv` and `inspired_test.csv` from `folder`."""
        folder = Path(folder)
        train = pd.read_csv(folder / "inspired_train.csv")
        test = pd.read_csv(folder / "inspired_test.csv")
        return cls(
            train_dialogues=train["full_situation"].astype(str).tolist(),
            train_titles=[[title_key(t) for t in ast.literal_eval(m)] for m in train["movies"]],
            test_dialogues=test["test_inputs"].astype(str).tolist(),
            test_titles=[title_key(t) for t in test["test_outputs"]],
        )

    def contexts(self) -> list[str]:
        """The unique training dialogues, sorted (what recorded proposals index into)."""
        return sorted(set(self.train_dialogues))


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


def load_proposals(path: str | Path, data: Inspired) -> dict[str, list[str]]:
    """Proposals per training dialogue text, from a recorded file (`context_index`, `context_sha1`,
    `properties`; see the data README) or a table with `text` and `properties` columns (JSONL, CSV, Parquet;
    e.g. the project's proposals joined with its documents). Unparsed entries (null) are skipped."""
    path = Path(path)
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif path.suffix == ".csv":
            frame = pd.read_csv(path, converters={"properties": ast.literal_eval})
        else:
            frame = pd.read_json(path, lines=True)
    except (ValueError, SyntaxError, OSError) as error:
        raise ValueError(f"{path}: not a readable proposals table ({error})") from error
    if "text" in frame:
        pairs = zip(frame["text"], frame["properties"], strict=True)
    elif {"context_index", "properties"} <= set(frame.columns):
        contexts = data.contexts()
        pairs = []
        for index, digest, props in zip(
            frame["context_index"],
            frame.get("context_sha1", [None] * len(frame)),
            frame["properties"],
            strict=True,
        ):
            text = contexts[int(index)]
            if digest is not None and hashlib.sha1(text.encode()).hexdigest() != digest:
                raise ValueError(
                    f"{path}: context {index} does not match its sha1: a different INSPIRED split?"
                )
            pairs.append((text, props))
    else:
        raise ValueError(f"{path}: expected columns text+properties or context_index+properties")
    # Unparsed outputs are null (NaN once pandas has read them); Parquet gives arrays.
    proposals = {
        text: list(props)
        for text, props in pairs
        if isinstance(props, list | tuple | np.ndarray) and len(props)
    }
    if not proposals:
        raise ValueError(f"{path}: no dialogue has a parsed list of properties")
    return proposals


@dataclass
class Settings:
    """The discovery settings of the `instruct_lf` and `compatibility` rows (the paper's, dialogues kept by
    their most recent turns)."""

    n_factors: int = 368
    l1: float = 0.9
    # other penalties and factor counts, chosen between by Hit@20 on the held-out training rows
    l1_alternatives: tuple[float, ...] = ()
    factor_alternatives: tuple[int, ...] = ()
    truncation: str = "tail"
    linker_epochs: int = 20
    # vocabulary and linker see the first N proposed dialogues (file order); several Ns: a row pair per N
    linker_documents: tuple[int | None, ...] = (None,)
    max_seq_length: int = 256
    # fine-tune on shorter cuts (CPU time); encoding keeps max_seq_length
    linker_seq_length: int | None = None
    lda_topics: int = representations.LDA_TOPICS
    linker_dir: str | None = None  # a trained linker to reuse, or where to save the one trained


def evaluate_seed(
    data: Inspired,
    proposals: dict[str, list[str]],
    seed: int,
    settings: Settings,
    methods: Sequence[str],
    cache: EmbeddingCache | None = None,
) -> tuple[Scores, dict[str, str], dict[str, float]]:
    """One seed of every method: (metric -> method -> value, chosen n per method, seconds per method).

    `cache` keeps embeddings across seeds: the raw encoder's, and a reused linker's, do not depend on the seed.
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
        vectors = representations.raw_embeddings(train + test, truncation=settings.truncation, cache=cache)
        record("raw_embedding", *knn_scores(vectors[: len(train)], vectors[len(train) :], data))

    timed("raw_embedding", embeddings)

    def lda() -> None:
        topics = representations.lda_topics(train, train + test, n_topics=settings.lda_topics, seed=seed)
        record("lda", *knn_scores(topics[: len(train)], topics[len(train) :], data))

    timed("lda", lda)

    def bertopic() -> None:
        topics = representations.bertopic_topics(train, train + test, seed=seed)
        record("bertopic", *knn_scores(topics[: len(train)], topics[len(train) :], data))

    if representations.bertopic_available():
        timed("bertopic", bertopic)

    def discover(budget: int | None) -> None:
        """The `compatibility` and `instruct_lf` rows when vocabulary and linker see the first `budget`
        proposed dialogues (the recorded file is in sample order, so any prefix is a uniform sample)."""
        started = time.perf_counter()
        documents = list(proposals)[:budget]
        suffix = f" ({len(documents)} proposed)" if len(settings.linker_documents) > 1 else ""
        model = InstructLF(
            n_factors=settings.n_factors,
            l1=settings.l1,
            truncation=settings.truncation,
            linker_epochs=settings.linker_epochs,
            max_seq_length=settings.max_seq_length,
            linker_seq_length=settings.linker_seq_length,
            seed=seed,
            cache=cache if cache is not None else EmbeddingCache(),
        )
        # The linker learns from the dialogues with proposals; the matrix and CorEx cover every training one.
        saved = Path(settings.linker_dir) if settings.linker_dir else None
        reuse = saved is not None and (saved / CONFIG_FILE).is_file()
        if reuse:
            log.info("inspired seed %d: reusing the linker saved in %s", seed, saved)
        linker = Linker.load(saved, max_seq_length=settings.max_seq_length) if reuse else None
        model.fit(documents, [proposals[d] for d in documents], corpus=data.contexts(), linker=linker)
        if saved is not None and not reuse:
            model.linker_.save(saved)
        rows = model.compatibility(train + test)
        seconds["discovery" + suffix] = time.perf_counter() - started
        if "compatibility" in methods:
            record("compatibility" + suffix, *knn_scores(rows[: len(train)], rows[len(train) :], data))
        if "instruct_lf" not in methods:
            return
        l1s = dict.fromkeys((settings.l1, *settings.l1_alternatives))
        sizes = dict.fromkeys((settings.n_factors, *settings.factor_alternatives))
        candidates = {(settings.n_factors, settings.l1): model.factors_}
        corpus = model.compatibility(data.contexts()) if len(l1s) * len(sizes) > 1 else None
        for m in sizes:
            for l1 in l1s:
                if (m, l1) not in candidates:
                    refit = replace(model, n_factors=m, l1=l1)
                    candidates[m, l1] = refit.fit_factors(corpus, model.vocabulary_.properties)
        # Settings are chosen on the held-out training rows only (ties: the first listed, the paper's).
        held_out = {
            key: choose_neighbours(f.scores(rows[: len(train)]), data)[1] for key, f in candidates.items()
        }
        m, l1 = max(held_out, key=held_out.get)
        factors = candidates[m, l1].scores(rows)
        method = "instruct_lf" + suffix
        record(method, *knn_scores(factors[: len(train)], factors[len(train) :], data))
        chosen[method] += f" m={m}" * (len(sizes) > 1) + f" l1={l1:g}" * (len(l1s) > 1)
        if len(candidates) > 1:
            log.info("inspired seed %d: held-out Hit@20 by (factors, l1): %s", seed, held_out)

    if {"compatibility", "instruct_lf"} & set(methods):
        for budget in settings.linker_documents:
            discover(budget)
    return scores, chosen, seconds


METHODS = ("popularity", "raw_embedding", "lda", "bertopic", "compatibility", "instruct_lf")
BASELINES = ("popularity", "raw_embedding", "lda", "bertopic")


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", default="../shared/data/inspired", help="folder with inspired_train/test.csv"
    )
    parser.add_argument(
        "--proposals",
        help=f"proposals file (default: DATA/{PROPOSALS_FILE}), or a table with text and properties columns; "
        "several, comma-separated, are read in turn (e.g. the recorded file, then the project's "
        "evaluation/data/inspired_unsampled_qwen25coder15b.jsonl, which proposes for the rest)",
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}"
    )
    parser.add_argument(
        "--factors",
        default=str(Settings.n_factors),
        help="CorEx factors (default 368); several, comma-separated, are chosen between like --l1",
    )
    parser.add_argument(
        "--l1",
        default=str(Settings.l1),
        help="CorEx L1 penalty (default 0.9); several, comma-separated, are chosen between by Hit@20 on the "
        "held-out training rows (ties: the first)",
    )
    parser.add_argument(
        "--truncation",
        choices=["head", "tail"],
        default=Settings.truncation,
        help="which end of long dialogues the encoders keep (default tail: the latest turns)",
    )
    parser.add_argument(
        "--linker-epochs", type=int, default=Settings.linker_epochs, help="at most (default 20)"
    )
    parser.add_argument(
        "--linker-documents",
        help="vocabulary and linker see the first N proposed dialogues (default: all); several, comma-separated "
        "and ascending, give the quality-against-budget curve in one run (a row pair per N)",
    )
    parser.add_argument(
        "--max-seq-length",
        type=int,
        default=Settings.max_seq_length,
        help="tokens per text the linker encodes (default 256)",
    )
    parser.add_argument(
        "--linker-seq-length",
        type=int,
        help="fine-tune the linker on texts cut to N tokens, to save CPU time (default: --max-seq-length)",
    )
    parser.add_argument(
        "--linker",
        help="a folder: reuse the linker saved there, or save there the one the first seed trains (later seeds "
        "and runs reuse it: try other CorEx settings without fine-tuning again; linker settings must match, "
        "except --max-seq-length, the length it encodes at)",
    )
    parser.add_argument("--json", action="store_true", help="print only the final JSON line")


def main(args: argparse.Namespace) -> dict:
    """Run every method for every seed; print the table (mean ± std over seeds) and the final JSON line."""
    from instruct_lf_dagster.core.compatibility import EmbeddingCache

    l1s = numbers(args.l1, "--l1")
    sizes = numbers(args.factors, "--factors", int, 1)
    for option, tokens in (
        ("--max-seq-length", args.max_seq_length),
        ("--linker-seq-length", args.linker_seq_length),
    ):
        if tokens is not None and tokens < 1:
            raise SystemExit(f"{option} must be a positive number of tokens, not {tokens}")
    budgets = (
        tuple(numbers(args.linker_documents, "--linker-documents", int, 1))
        if args.linker_documents
        else (None,)
    )
    if list(budgets) != sorted(budgets):
        raise SystemExit("--linker-documents: give the budgets in ascending order")
    if len(budgets) > 1 and args.linker:
        raise SystemExit("--linker saves or reuses one linker: it cannot go with several --linker-documents")
    data = Inspired.load(args.data)
    proposals: dict[str, list[str]] = {}
    for path in (args.proposals or str(Path(args.data) / PROPOSALS_FILE)).split(","):
        proposals.update({k: v for k, v in load_proposals(path.strip(), data).items() if k not in proposals})
    seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    settings = Settings(
        n_factors=sizes[0],
        l1=l1s[0],
        l1_alternatives=tuple(l1s[1:]),
        factor_alternatives=tuple(sizes[1:]),
        truncation=args.truncation,
        linker_epochs=args.linker_epochs,
        linker_documents=budgets,
        max_seq_length=args.max_seq_length,
        linker_seq_length=args.linker_seq_length,
        linker_dir=args.linker,
    )
    runs, notes, per_seed = [], {}, {}
    if "bertopic" in methods and not representations.bertopic_available():
        notes["bertopic"] = "skipped: pip install 'instruct-lf-dagster[baselines]'"
    started = time.perf_counter()
    cache = EmbeddingCache()
    for seed in seeds:
        scores, chosen, seconds = evaluate_seed(data, proposals, seed, settings, methods, cache)
        runs.append(scores)
        for method, note in chosen.items():
            per_seed.setdefault(method, []).append(note)
        log.info("seed %d seconds: %s", seed, {k: round(v, 1) for k, v in seconds.items()})
    means, stds = aggregate(runs)
    result = summary(means)
    result["seeds"] = seeds
    result["seconds"] = round(time.perf_counter() - started, 1)
    if not args.json:
        print(
            f"INSPIRED: {len(data.train_dialogues)} training rows, {len(data.test_dialogues)} test dialogues, "
            f"proposals for {len(proposals)} of {len(data.contexts())} training contexts, seeds {seeds}\n{settings}"
        )
        # A choice made the same way for every seed is shown once, else one per seed, in seed order.
        for method, chosen in per_seed.items():
            notes[method] = chosen[0] if len(set(chosen)) == 1 else "; ".join(chosen)
        print(format_table(means, stds, notes=notes))
    print(json.dumps(result))
    return result
