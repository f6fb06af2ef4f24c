"""Movie recommendation on INSPIRED dialogues: the paper's count-based kNN protocol, baselines side by side.

A dialogue is represented by some vector (factor scores, a compatibility row, an embedding, topic mixtures);
the recommender takes the n most cosine-similar training dialogues and ranks the titles they lead to by count.
n is chosen from `NEIGHBOURS` by Hit@20 on the last 20% of training rows (datastore: the first 80%), then the
datastore is every training row. Titles match exactly once a year suffix " (YYYY)" is stripped.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from instruct_lf_dagster.core.topics import Cost
from instruct_lf_dagster.evaluation import representations
from instruct_lf_dagster.evaluation.inspired_data import PROPOSALS_FILE, Inspired, load_proposals
from instruct_lf_dagster.evaluation.inspired_protocol import METHODS, PAPER, Settings, evaluate_seed, summary
from instruct_lf_dagster.evaluation.report import (
    aggregate,
    cost_table,
    format_table,
    method_settings,
    numbers,
)

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `instruct-lf eval inspired`."""
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
        default=str(PAPER.factors.n_factors),
        help=f"CorEx factors (default {PAPER.factors.n_factors}); several, comma-separated, are chosen between like --l1",
    )
    parser.add_argument(
        "--l1",
        default=str(PAPER.factors.l1),
        help=f"CorEx L1 penalty (default {PAPER.factors.l1}); several, comma-separated, are chosen between by Hit@20 on the "
        "held-out training rows (ties: the first)",
    )
    parser.add_argument(
        "--truncation",
        choices=["head", "tail"],
        default=PAPER.truncation,
        help="which end of long dialogues the encoders keep (default tail: the latest turns)",
    )
    parser.add_argument(
        "--linker-epochs",
        type=int,
        default=PAPER.linker.epochs,
        help=f"at most (default {PAPER.linker.epochs})",
    )
    parser.add_argument(
        "--linker-documents",
        help="vocabulary and linker see the first N proposed dialogues (default: all); several, comma-separated "
        "and ascending, give the quality-against-budget curve in one run (a row pair per N)",
    )
    parser.add_argument(
        "--max-seq-length",
        type=int,
        default=PAPER.linker.max_seq_length,
        help=f"tokens per text the linker encodes (default {PAPER.linker.max_seq_length})",
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
    parser.add_argument(
        "--topicgpt-sample",
        type=int,
        default=20,
        help="training dialogues the topicgpt peer generates topics from",
    )
    parser.add_argument(
        "--topicgpt-assign",
        type=int,
        default=100,
        help="dialogues the topicgpt peer's LLM assigns, of the training and of the test dialogues each; the rest "
        "by embedding similarity",
    )
    parser.add_argument(
        "--model", default=None, help="the topicgpt peer's litellm model (default: the LLM resource's)"
    )
    parser.add_argument(
        "--readouts",
        action="store_true",
        help="the ablation of what kNN reads from the factors: held-out Hit@20 (training rows only) of the matrix, "
        "the factor scores, both ends of each factor and its members' evidence",
    )
    parser.add_argument("--json", action="store_true", help="print only the final JSON line")


def topicgpt_rows(data: Inspired, args: argparse.Namespace, seed: int) -> tuple[tuple, Cost, str]:
    """The topicgpt peer's (training rows, test rows) features, its cost and a note: topics generated from and
    assigned to the training dialogues (each row gets its dialogue's topic), then the test dialogues assigned."""
    from instruct_lf_dagster.definitions import local_llm
    from instruct_lf_dagster.evaluation.inspired_propose import GOAL
    from instruct_lf_dagster.evaluation.topicgpt import TopicGPT

    client = local_llm(args.settings, args.model).get_client()
    peer = TopicGPT(client, GOAL, sample=args.topicgpt_sample, assign=args.topicgpt_assign, seed=seed)
    contexts = data.contexts()
    found = peer.fit(contexts).topics().indicators()
    row = {text: i for i, text in enumerate(contexts)}
    train = found[[row[text] for text in data.train_dialogues]]
    test = peer.transform(data.test_dialogues)
    return (train, test), peer.cost, peer.describe()


def main(args: argparse.Namespace) -> dict:
    """Run every method for every seed; print the table (mean ± std over seeds) and the final JSON line."""
    from instruct_lf_dagster.core.compatibility import EmbeddingCache

    l1s = numbers(args.l1, "--l1")
    sizes = numbers(args.factors, "--factors", int, 1)
    budgets = (
        tuple(numbers(args.linker_documents, "--linker-documents", int, 1))
        if args.linker_documents
        else (None,)
    )
    if list(budgets) != sorted(budgets):
        raise SystemExit("--linker-documents: give the budgets in ascending order")
    if len(budgets) > 1 and args.linker:
        raise SystemExit("--linker saves or reuses one linker: it cannot go with several --linker-documents")
    method = method_settings(
        "inspired",
        {
            "max_seq_length": "--max-seq-length",
            "train_seq_length": "--linker-seq-length",
            "epochs": "--linker-epochs",
        },
        lambda: PAPER.but(
            truncation=args.truncation,
            factors={"n_factors": sizes[0], "l1": l1s[0]},
            linker={
                "epochs": args.linker_epochs,
                "max_seq_length": args.max_seq_length,
                "train_seq_length": args.linker_seq_length,
            },
        ),
    )
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
        method=method,
        l1_alternatives=tuple(l1s[1:]),
        factor_alternatives=tuple(sizes[1:]),
        linker_documents=budgets,
        linker_dir=args.linker,
        readouts=args.readouts,
    )
    runs, notes, per_seed = [], {}, {}
    if "bertopic" in methods and not representations.bertopic_available():
        notes["bertopic"] = "skipped: pip install 'instruct-lf-dagster[baselines]'"
    started = time.perf_counter()
    cache = EmbeddingCache()
    costs = {"instruct_lf": Cost(calls=len(proposals))}  # recorded proposals: calls known, tokens not kept
    fixed, elapsed = {}, {}
    if "topicgpt" in methods:
        # Fitted once, with the first seed: its LLM calls are the costly step (like the linker's training).
        clock = time.perf_counter()
        fixed["topicgpt"], costs["topicgpt"], notes["topicgpt"] = topicgpt_rows(data, args, seeds[0])
        elapsed["topicgpt"] = time.perf_counter() - clock
    for seed in seeds:
        scores, chosen, seconds = evaluate_seed(data, proposals, seed, settings, methods, cache, fixed)
        for method, value in seconds.items():
            elapsed.setdefault(method, value)
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
        print("\nCost (LLM calls and tokens; seconds of this run's first seed):")
        print(cost_table([m for m in methods if m in elapsed or m in costs], costs, elapsed))
    result["cost"] = {m: c.as_dict() for m, c in costs.items() if m in methods}
    print(json.dumps(result))
    return result
