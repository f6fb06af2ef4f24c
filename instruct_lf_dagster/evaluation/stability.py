"""Stability of the factors: refits with other seeds and on samples of the documents, against a reference fit.

The reference is `InstructLF` fitted with the first seed on every document. Each refit's factors are matched to
the reference's (`core.identity`, on the properties both have) and scored by the mean Jaccard of matched factors'
memberships, the share of reference factors matched, and the adjusted Rand index of the property -> factor
assignments. Two levels:
- corex: the reference's compatibility matrix, Linear CorEx refitted (another seed; a sample of the rows);
- linker: vocabulary, linker and CorEx refitted (another seed; a sample of the documents).

Data: `demo`, the demo's Rotten Tomatoes snippets with proposals by the movie_critics discovery's LLM (cached);
or `inspired`, the INSPIRED training dialogues with the recorded proposals (the matrix covers every dialogue).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

from instruct_lf_dagster.core.corex import CorexStatistics
from instruct_lf_dagster.core.factors import Factors
from instruct_lf_dagster.core.identity import match
from instruct_lf_dagster.core.pipeline import InstructLF
from instruct_lf_dagster.evaluation.report import aggregate, format_table
from instruct_lf_dagster.settings import Settings

log = logging.getLogger(__name__)
METRICS = ("matched_jaccard", "matched_share", "ari")


def compare(reference: Factors, other: Factors) -> dict[str, float]:
    """Matched Jaccard, matched share and ARI of `other` against `reference`, on the properties both have."""
    common = set(reference.properties) & set(other.properties)

    def membership(f: Factors) -> dict[int, dict[str, float]]:
        kept = {
            k: {p: mi for p, mi in members.items() if p in common} for k, members in f.membership().items()
        }
        return {k: members for k, members in kept.items() if members}

    before, after = membership(reference), membership(other)
    found = match(before, after)
    jaccard = [
        len(before[a].keys() & after[b].keys()) / len(before[a].keys() | after[b].keys())
        for b, a in found.pairs.items()
    ]
    ordered = sorted(common)

    def labels(f: Factors) -> list[int]:
        return [int(f.assignment[f.properties.index(p)]) for p in ordered]

    return {
        "matched_jaccard": float(np.mean(jaccard)) if jaccard else 0.0,
        "matched_share": len(found.pairs) / len(before) if before else 0.0,
        "ari": float(adjusted_rand_score(labels(reference), labels(other))) if ordered else 0.0,
    }


def demo_data(settings: Settings, documents: int) -> tuple[InstructLF, list[str], list[list[str]], list[str]]:
    """The movie_critics discovery's method, the demo snippets and their proposals (through the response cache)."""
    from instruct_lf_dagster import demo
    from instruct_lf_dagster.core.proposals import propose
    from instruct_lf_dagster.definitions import declared, local_resources

    spec = next(d.spec() for d in declared()[0] if d.name == "movie_critics")
    texts = demo.sample(settings.home / "downloads", documents)["text"].tolist()
    local = local_resources(settings)
    client = local["llm"].client_for(spec.name, spec.llm, local["storage"].response_cache())
    proposals = propose(client, spec.goal, texts)
    usable = [(t, p) for t, p in zip(texts, proposals.properties, strict=True) if p]
    return InstructLF(spec.method), [t for t, _ in usable], [p for _, p in usable], texts


def inspired_data(args: argparse.Namespace) -> tuple[InstructLF, list[str], list[list[str]], list[str]]:
    """The `instruct-lf eval inspired` settings, the proposed dialogues and every training dialogue."""
    from instruct_lf_dagster.evaluation.inspired_data import PROPOSALS_FILE, Inspired, load_proposals
    from instruct_lf_dagster.evaluation.inspired_protocol import PAPER

    data = Inspired.load(args.folder)
    proposals = load_proposals(Path(args.folder) / PROPOSALS_FILE, data)
    method = InstructLF(PAPER.but(factors={"l1": 0.0}, linker={"train_seq_length": 128}))
    return method, list(proposals), list(proposals.values()), data.contexts()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", choices=["demo", "inspired"], default="demo", help="which corpus (default demo)"
    )
    parser.add_argument(
        "--folder", default="../shared/data/inspired", help="INSPIRED files (--data inspired)"
    )
    parser.add_argument("--docs", type=int, default=48, help="demo snippets (default 48, the demo's)")
    parser.add_argument(
        "--seeds", default="0,1,2", help="the reference's seed first, then the refits' (default 0,1,2)"
    )
    parser.add_argument("--samples", type=int, default=3, help="refits on samples (default 3)")
    parser.add_argument("--fraction", type=float, default=0.8, help="share of documents a sample keeps")
    parser.add_argument(
        "--levels", default="corex,linker", help="corex (CorEx refitted), linker (everything refitted)"
    )
    parser.add_argument("--linker-epochs", type=int, help="linker epochs (default: the discovery's, or 1)")


def main(args: argparse.Namespace) -> dict:
    """Fit the reference, refit per level and perturbation, print the table and the final JSON line."""
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    levels = [v.strip() for v in args.levels.split(",") if v.strip()]
    if len(seeds) < 2 or not 0 < args.fraction < 1 or set(levels) - {"corex", "linker"}:
        raise SystemExit("need two seeds or more, 0 < --fraction < 1 and --levels from corex,linker")
    started = time.perf_counter()
    method, documents, proposals, corpus = (
        demo_data(args.settings, args.docs) if args.data == "demo" else inspired_data(args)
    )
    epochs = (
        args.linker_epochs if args.linker_epochs is not None else (1 if args.data == "inspired" else None)
    )
    method = method.but(seed=seeds[0], **({"linker": {"epochs": epochs}} if epochs is not None else {}))
    reference = method.fit(documents, proposals, corpus=corpus)
    x = reference.compatibility(corpus)
    log.info("reference: %d factors over %d properties", len(reference.factors_.nonempty()), x.shape[1])
    properties = reference.vocabulary_.properties
    rng = np.random.default_rng(seeds[0])
    samples = [
        np.sort(rng.choice(n, int(round(args.fraction * n)), replace=False))
        for n in [len(corpus)] * args.samples
    ]
    picks = [
        np.sort(rng.choice(len(documents), int(round(args.fraction * len(documents))), replace=False))
        for _ in range(args.samples)
    ]

    runs: dict[str, list[dict[str, float]]] = {}

    def record(row: str, refit: Factors) -> None:
        runs.setdefault(row, []).append(compare(reference.factors_, refit))
        log.info("%s: %s", row, runs[row][-1])

    if "corex" in levels:
        for seed in seeds[1:]:
            record(
                "corex, other seed",
                method.but(seed=seed).fit_factors_from_statistics(CorexStatistics.of([x]), properties),
            )
        for rows in samples:
            record(
                f"corex, {args.fraction:.0%} of rows",
                method.fit_factors_from_statistics(CorexStatistics.of([x[rows]]), properties),
            )
    if "linker" in levels:
        for seed in seeds[1:]:
            record(
                "linker + corex, other seed",
                method.but(seed=seed).fit(documents, proposals, corpus=corpus).factors_,
            )
        for pick in picks:
            chosen = [documents[i] for i in pick]
            refit = method.but().fit(chosen, [proposals[i] for i in pick], corpus=corpus)  # a fresh object
            record(f"linker + corex, {args.fraction:.0%} of documents", refit.factors_)

    # The i-th refit of every row, as `aggregate` takes runs (metric -> row -> value).
    width = max(len(results) for results in runs.values())
    means, stds = aggregate(
        [{m: {row: r[i][m] for row, r in runs.items() if i < len(r)} for m in METRICS} for i in range(width)]
    )
    print(
        f"Stability on {args.data}: {len(documents)} proposed documents, {len(corpus)} scored, "
        f"{len(properties)} properties, {len(reference.factors_.nonempty())} non-empty factors; reference seed "
        f"{seeds[0]}, refit seeds {seeds[1:]}, {args.samples} samples of {args.fraction:.0%}"
    )
    print(format_table(means, stds, notes={}))
    result = {"data": args.data, **means, "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(result))
    return result
