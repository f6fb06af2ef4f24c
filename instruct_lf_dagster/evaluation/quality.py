"""Judged quality: the paper's human study made repeatable, for Instruct-LF and its interpretable peers at once.

Every method is fitted on the same documents without labels (instruct_lf: LLM proposals, linker, Linear CorEx,
then its LLM names the factors; lda; bertopic; topicgpt, the LLM-only peer with the same LLM), read as topics
(`evaluation.topics`), and its 20 largest topics are judged (`quality_protocol`): property intrusion (coherence
a reader sees), goal relevance (does the topic help answer the goal), embedding coherence and distinctiveness.
The judge is the LLM resource's model (`--judge-model` for a stronger one); prompts are fixed and cached, and
the order of a question's options is shuffled with the seed.

`--data`: `demo` (Rotten Tomatoes snippets, the demo discovery's goal), `inspired` (INSPIRED training dialogues
with the recorded proposals: no proposal calls), or a .jsonl/.csv/.parquet file with `--goal`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from tabulate import tabulate

from instruct_lf_dagster.core.config import LinkerConfig, MethodConfig
from instruct_lf_dagster.core.proposals import Goal
from instruct_lf_dagster.core.topics import Cost, Topics
from instruct_lf_dagster.evaluation.topics import factor_topics

METHODS = ("instruct_lf", "lda", "bertopic", "topicgpt")
SHOWN = 5  # topics per method printed, so a reader sees what was judged


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `instruct-lf eval quality`."""
    parser.add_argument("--data", default="demo", help="demo, inspired, or a .jsonl/.csv/.parquet file")
    parser.add_argument(
        "--inspired-data", default="../shared/data/inspired", help="INSPIRED's folder, for --data inspired"
    )
    parser.add_argument("--text-field", default="text", help="a file's text field")
    parser.add_argument("--goal", help="what the factors are for (required for a file)")
    parser.add_argument("--document-kind", default="document", help="what one document of a file is")
    parser.add_argument(
        "--docs", type=int, default=200, help="documents to discover on (default 200; 0 = all)"
    )
    parser.add_argument(
        "--proposal-docs", type=int, default=0, help="documents the LLM proposes for (0 = all of --docs)"
    )
    parser.add_argument("--methods", default=",".join(METHODS), help="methods to judge (comma-separated)")
    parser.add_argument(
        "--topics", type=int, default=20, help="largest topics judged per method (default 20)"
    )
    parser.add_argument(
        "--members", type=int, default=5, help="top members shown per topic (default 5; intrusion adds one)"
    )
    parser.add_argument(
        "--lda-topics", type=int, default=0, help="LDA's topic count (0 = as many as instruct_lf's factors)"
    )
    parser.add_argument("--topicgpt-sample", type=int, default=20, help="documents topicgpt generates from")
    parser.add_argument(
        "--topicgpt-assign",
        type=int,
        default=0,
        help="documents topicgpt's LLM assigns (0 = as many as proposed)",
    )
    parser.add_argument("--linker-epochs", type=int, default=LinkerConfig().epochs, help="most linker epochs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample, every method and the judge")
    parser.add_argument(
        "--model", default=None, help="the methods' litellm model (default: the LLM resource's)"
    )
    parser.add_argument("--judge-model", default=None, help="the judge's litellm model (default: --model)")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _corpus(args: argparse.Namespace) -> tuple[list[str], Goal, dict[str, list[str]] | None]:
    """(documents, goal, recorded proposals by document or None)."""
    if args.data == "demo":
        from instruct_lf_dagster import demo

        frame = demo.sample(Path(args.home) / "downloads", args.docs or 2000, seed=args.seed)
        return frame["text"].tolist(), demo.goal(), None
    if args.data == "inspired":
        from instruct_lf_dagster.evaluation.inspired_data import PROPOSALS_FILE, Inspired, load_proposals
        from instruct_lf_dagster.evaluation.inspired_propose import GOAL

        folder = Path(args.inspired_data)
        data = Inspired.load(str(folder))
        recorded = load_proposals(str(folder / PROPOSALS_FILE), data)
        texts = data.contexts()
        order = np.random.default_rng(args.seed).permutation(len(texts))[: args.docs or None]
        return [texts[i] for i in sorted(order)], GOAL, recorded
    if not args.goal:
        raise SystemExit("--goal is required for a data file")
    from instruct_lf_dagster.core.records import read_path

    frame = read_path(Path(args.data))
    if args.text_field not in frame:
        raise SystemExit(f"{args.data}: no {args.text_field!r} field (fields: {', '.join(map(str, frame))})")
    texts = [str(t) for t in frame[args.text_field].dropna().tolist()][: args.docs or None]
    return texts, Goal(text=args.goal, document_kind=args.document_kind), None


def _instruct_lf(
    args: argparse.Namespace, client, goal: Goal, texts: list[str], recorded: dict[str, list[str]] | None
) -> tuple[Topics, Cost]:
    """Discover factors on `texts` and name the largest ones, as the platform does."""
    from instruct_lf_dagster.core.naming import name_factors
    from instruct_lf_dagster.core.pipeline import InstructLF
    from instruct_lf_dagster.core.proposals import propose

    cost = Cost()
    if recorded is not None:
        proposed = [t for t in texts if t in recorded]
        properties = [recorded[t] for t in proposed]
        cost = Cost(calls=len(proposed))  # recorded earlier: calls known, tokens not kept
    else:
        proposed = texts[: args.proposal_docs or None]
        found = propose(client, goal, proposed, progress=_progress("proposals"))
        properties, cost = found.properties, Cost.of(found.completions)
    config = MethodConfig(linker=LinkerConfig(epochs=args.linker_epochs), seed=args.seed)
    model = InstructLF(config).fit(proposed, properties, corpus=texts)
    factors = model.factors_
    strengths = factors.strengths(model.compatibility(texts))
    unnamed = factor_topics(factors, strengths)
    rows = factors.nonempty()
    largest = [rows[t] for t in unnamed.largest(args.topics)]
    poles = {k: [[p for p, _ in end] for end in factors.poles(k)] for k in largest}
    documents = {k: [texts[i] for i in np.argsort(-strengths[:, k], kind="stable")[:3]] for k in largest}
    # Named as the platform names them (the factor report): both ends shown, the strongest documents as evidence.
    names, usage = name_factors(
        client,
        goal,
        {k: high for k, (high, _) in poles.items()},
        documents,
        low={k: low for k, (_, low) in poles.items()},
        progress=_progress("names"),
    )
    # Naming reports a batch's usage, not its answers: calls include cached ones (and retries), tokens only the
    # calls paid in this run.
    named = Cost(usage.calls + usage.cache_hits, usage.prompt_tokens, usage.completion_tokens)
    cost = cost + named
    return factor_topics(factors, strengths, {n.factor: n.name for n in names}), cost


def _progress(what: str):
    def report(done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            _say(f"{what}: {done}/{total}")

    return report


def _table(results: dict[str, dict], costs: dict[str, Cost], seconds: dict[str, float]) -> str:
    columns = ["intrusion", "relevance", "coherence", "distinctiveness", "topics_judged"]
    rows = [
        [method, *(result.get(c, "") for c in columns), costs[method].calls, result.get("judge_calls", 0),
         round(seconds[method], 1)]
        for method, result in results.items()
    ]  # fmt: skip
    return tabulate(rows, headers=["method", *columns, "llm_calls", "judge_calls", "seconds"], floatfmt=".4f")


def _shown(topics: Topics, n: int = SHOWN) -> list[str]:
    return [f"  {topics.names[t]}: {'; '.join(topics.members[t][:5])}" for t in topics.largest(n)]


def _number(value: float | int) -> float | int | None:
    # nan (nothing was asked) is not JSON: null
    if isinstance(value, float):
        return None if np.isnan(value) else round(value, 4)
    return value


def main(args: argparse.Namespace) -> dict:
    """Fit every method, judge each one's largest topics, print a table and, last, one JSON line."""
    from instruct_lf_dagster.definitions import local_llm
    from instruct_lf_dagster.evaluation import representations as rep
    from instruct_lf_dagster.evaluation.quality_protocol import judge_all
    from instruct_lf_dagster.evaluation.topicgpt import TopicGPT

    started = time.perf_counter()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise SystemExit(f"--methods: unknown {unknown} (known: {', '.join(METHODS)})")
    texts, goal, recorded = _corpus(args)
    _say(f"data: {args.data}, {len(texts)} documents; goal: {goal.text}")
    client = local_llm(args.settings, args.model).get_client()
    judge = local_llm(args.settings, args.judge_model).get_client() if args.judge_model else client
    found: dict[str, Topics] = {}
    costs: dict[str, Cost] = {}
    seconds: dict[str, float] = {}
    notes: dict[str, str] = {}
    for method in methods:
        clock = time.perf_counter()
        if method == "instruct_lf":
            found[method], costs[method] = _instruct_lf(args, client, goal, texts, recorded)
        elif method == "lda":
            n = args.lda_topics or (len(found["instruct_lf"]) if "instruct_lf" in found else rep.LDA_TOPICS)
            found[method], costs[method] = rep.LDA(n, seed=args.seed).fit(texts).topics(), Cost()
            notes[method] = f"{n} topics"
        elif method == "bertopic":
            if not rep.bertopic_available():
                notes[method] = "skipped: pip install 'instruct-lf-dagster[baselines]'"
                continue
            found[method], costs[method] = rep.BERTopicPeer(seed=args.seed).fit(texts).topics(), Cost()
        else:
            assign = args.topicgpt_assign or args.proposal_docs or len(texts)
            peer = TopicGPT(client, goal, sample=args.topicgpt_sample, assign=assign, seed=args.seed).fit(
                texts
            )
            found[method], costs[method], notes[method] = peer.topics(), peer.cost, peer.describe()
        seconds[method] = time.perf_counter() - clock
        _say(f"{method}: {len(found[method])} topics in {seconds[method]:.0f}s")
    results = judge_all(found, judge, goal, n=args.topics, top=args.members, seed=args.seed)
    print(_table(results, costs, seconds))
    for method, topics in found.items():
        print(f"\n{method}, largest topics ({notes.get(method, f'{len(topics)} topics')}):")
        print("\n".join(_shown(topics)))
    result = {
        "quality": {m: {k: _number(v) for k, v in r.items()} for m, r in results.items()},
        "cost": {m: c.as_dict() for m, c in costs.items()},
        "documents": len(texts),
        "notes": notes,
        "judge": judge.model,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))
    return result
