"""Next-action prediction on expert trajectories: the paper's ALFWorld protocol.

Every prefix of an expert trajectory, up to an expert action, is a state (goal, history, current observation);
its label is that action. A state is predicted to take the action of its nearest training state (cosine), and
accuracy is the share of exact matches once digits are ignored ("go to desk 1" = "go to desk 2"), on held-out
games from the training distribution ("seen") and from a different one ("unseen"). Methods: the most frequent
training action; raw all-MiniLM-L6-v2 embeddings and rows of the Instruct-LF compatibility matrix (references,
not interpretable); the interpretable peers LDA, BERTopic and the LLM-only topicgpt (`--peers`); factor scores.

Data: `--env twc` generates expert (gold) trajectories offline with TextWorldExpress (`pip install
textworld-express`, needs Java): game `twc`, tidying a house, close to ALFWorld. Seen games share the training
games' parameters; unseen ones differ in them (default: one more item to put away, and closed doors between
rooms). All games come from TWC's train fold: its other folds use disjoint object names, which no copied
training action could ever match. More than 2 locations is refused: TWC's gold paths then take random detours
that change from run to run.

`--env alfworld --data FILE` reads ALFWorld expert trajectories, as JSON Lines, one game per line:
`{"split": "train" | "valid_seen" | "valid_unseen", "game": "<id>", "observations": [...], "actions": [...]}`
where `observations[0]` is what `env.reset()` returned and `observations[i]` the feedback of `actions[i - 1]`
(the feedback of the last action may be left out), i.e. what ALFWorld's text environment shows while one
follows `infos["extra.expert_plan"]`. The goal is the optional `"task"`, else the "Your task is to: ..." line of
the first observation.

Instruct-LF proposes properties for a seeded sample of training states only (`--propose`, the LLM is the slow
part); the linker then scores every state. Games and that sample are drawn with `--data-seed`; `--seeds` vary
the linker and Linear CorEx. Settings are chosen with `--dev`: held-out training games replace seen and unseen.
Long states keep their tail (`--truncation tail`) for every method: the next action depends on the latest steps,
while the head (the first observation) is the same for all states of a game and would make them look alike.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from instruct_lf_dagster.core.config import FactorConfig, LinkerConfig, MethodConfig
from instruct_lf_dagster.core.llm import DEFAULT_MODEL
from instruct_lf_dagster.core.topics import Cost
from instruct_lf_dagster.evaluation.next_action_data import (
    TWC_TRAIN_PARAMS,
    TWC_UNSEEN_PARAMS,
    Trajectory,
    load_alfworld,
    twc_splits,
    twc_unavailable,
)
from instruct_lf_dagster.evaluation.next_action_protocol import (
    GOAL,
    evaluate,
    game_split,
    proposal_sample,
    states,
)
from instruct_lf_dagster.settings import Settings

METHODS = ("most_frequent", "raw_embedding", "compatibility", "lda", "bertopic", "topicgpt", "instruct_lf")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `instruct-lf eval next-action`."""
    parser.add_argument(
        "--env", choices=["twc", "alfworld"], default="twc", help="where trajectories come from"
    )
    parser.add_argument(
        "--data", type=Path, help="ALFWorld expert trajectories (JSON Lines), for --env alfworld"
    )
    parser.add_argument("--train-games", type=int, default=30, help="TWC training games (default 30)")
    parser.add_argument(
        "--eval-games", type=int, default=15, help="TWC seen and unseen games each (default 15)"
    )
    parser.add_argument(
        "--train-params", default=TWC_TRAIN_PARAMS, help="TWC parameters of train and seen games"
    )
    parser.add_argument("--unseen-params", default=TWC_UNSEEN_PARAMS, help="TWC parameters of unseen games")
    parser.add_argument(
        "--propose", type=int, default=36, help="training states sent to the LLM (default 36)"
    )
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"litellm model string (default {DEFAULT_MODEL})"
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of linker and CorEx")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the games and the proposal sample")
    parser.add_argument(
        "--truncation", choices=["head", "tail"], default="tail", help="end of long states kept"
    )
    parser.add_argument("--factors", type=int, default=0, help="latent factors (0 = automatic)")
    parser.add_argument("--l1", type=float, default=0.4, help="CorEx L1 penalty (the paper's ALFWorld value)")
    parser.add_argument("--linker-epochs", type=int, default=2, help="most linker epochs (default 2)")
    parser.add_argument(
        "--topicgpt-assign",
        type=int,
        default=36,
        help="states of each split the topicgpt peer's LLM assigns (default 36, like --propose); the rest by "
        "embedding similarity",
    )
    parser.add_argument(
        "--topicgpt-sample", type=int, default=20, help="training states topicgpt generates from"
    )
    parser.add_argument(
        "--peers", default="lda,bertopic,topicgpt", help="interpretable peers to compare (comma-separated)"
    )
    parser.add_argument("--dev", action="store_true", help="evaluate on held-out training games instead")
    parser.add_argument("--json", action="store_true", help="print only the final JSON line")


def _splits(args: argparse.Namespace) -> dict[str, list[Trajectory]]:
    if args.env == "alfworld":
        if args.data is None:
            raise SystemExit("--env alfworld needs --data FILE (ALFWorld expert trajectories, JSON Lines)")
        return load_alfworld(args.data)
    if reason := twc_unavailable():
        raise SystemExit(reason)
    return twc_splits(
        args.train_games,
        args.eval_games,
        data_seed=args.data_seed,
        train_params=args.train_params,
        unseen_params=args.unseen_params,
    )


def _peers(
    names: Sequence[str], texts: dict[str, list[str]], seed: int, topicgpt: dict, client_for, took: dict
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Cost], dict[str, str]]:
    """Each peer's vectors per split (fitted on the training states), its LLM cost and a note; topicgpt is
    fitted once (its calls are the costly step) and kept in `topicgpt` for later seeds. `took` gets each
    peer's seconds in the first seed."""
    from instruct_lf_dagster.evaluation import representations as rep

    spaces, costs, notes = {}, {}, {}
    for name in names:
        started = time.perf_counter()
        if name == "topicgpt":
            if "space" not in topicgpt:
                from instruct_lf_dagster.evaluation.topicgpt import TopicGPT

                peer = TopicGPT(client_for(), GOAL, seed=seed, **topicgpt.pop("options"))
                train = peer.fit(texts["train"]).topics().indicators()
                topicgpt["space"] = {"train": train} | {
                    split: peer.transform(rows) for split, rows in texts.items() if split != "train"
                }
                topicgpt["cost"], topicgpt["note"] = peer.cost, peer.describe()
            spaces[name], costs[name], notes[name] = topicgpt["space"], topicgpt["cost"], topicgpt["note"]
        elif name == "bertopic" and not rep.bertopic_available():
            notes[name] = "skipped: pip install 'instruct-lf-dagster[baselines]'"
        else:
            peer = (rep.LDA if name == "lda" else rep.BERTopicPeer)(seed=seed).fit(texts["train"])
            spaces[name] = {split: peer.transform(rows) for split, rows in texts.items()}
        took.setdefault(name, time.perf_counter() - started)
    return spaces, costs, notes


def _propose(settings: Settings, model: str, texts: Sequence[str], say):
    from instruct_lf_dagster.core.proposals import propose
    from instruct_lf_dagster.definitions import local_llm

    def progress(done: int, total: int) -> None:
        if done % 10 == 0 or done == total:
            say(f"proposals: {done}/{total}")

    proposals = propose(local_llm(settings, model).get_client(), GOAL, texts, progress=progress)
    if proposals.failed:
        say(
            f"proposals: {proposals.failed} of {len(texts)} calls failed; first error: "
            f"{next(e for e in proposals.errors if e)}"
        )
    return proposals


def main(args: argparse.Namespace) -> dict:
    """Run the evaluation, print a table and, last, the JSON summary."""
    from instruct_lf_dagster.core.pipeline import InstructLF
    from instruct_lf_dagster.evaluation.report import aggregate, cost_table, format_table, method_settings
    from instruct_lf_dagster.evaluation.representations import raw_embeddings

    method = method_settings(  # checked before hours of proposals
        "next-action",
        {"n_factors": "--factors", "l1": "--l1", "epochs": "--linker-epochs"},
        lambda: MethodConfig(
            truncation=args.truncation,
            factors=FactorConfig(n_factors=args.factors, l1=args.l1),
            linker=LinkerConfig(epochs=args.linker_epochs),
        ),
    )
    started = time.perf_counter()
    say = (lambda *_: None) if args.json else (lambda text: print(text, flush=True))
    seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    splits = _splits(args)
    sample = proposal_sample([s for t in splits["train"] for s in states(t)], args.propose, args.data_seed)
    if args.dev:  # settings are chosen here, on training games only: seen and unseen stay untouched
        kept, dev = game_split(splits["train"], 0.25, args.data_seed)
        splits = {"train": kept, "dev": dev}
        # The same sample less the held-out games: a dev run and a full run share their LLM answers (cache).
        sample = [s for s in sample if s.game in {t.game for t in kept}]
    data = {name: [s for t in games for s in states(t)] for name, games in splits.items()}
    texts = {name: [s.text for s in rows] for name, rows in data.items()}
    actions = {name: [s.action for s in rows] for name, rows in data.items()}
    proposed = [s.text for s in sample]
    seconds = {"data": time.perf_counter() - started}
    lap = time.perf_counter()
    proposed_with = _propose(args.settings, args.model, proposed, say)
    proposals = proposed_with.properties
    costs = {"instruct_lf": Cost.of(proposed_with.completions)}
    seconds["proposals"], lap = time.perf_counter() - lap, time.perf_counter()
    raw = {name: raw_embeddings(rows, truncation=args.truncation) for name, rows in texts.items()}
    seconds["raw_embeddings"], lap = time.perf_counter() - lap, time.perf_counter()
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = sorted(set(peers) - {"lda", "bertopic", "topicgpt"})
    if unknown:
        raise SystemExit(f"--peers: unknown {unknown} (known: lda, bertopic, topicgpt)")
    topicgpt = {"options": {"sample": args.topicgpt_sample, "assign": args.topicgpt_assign}}

    def client():
        from instruct_lf_dagster.definitions import local_llm

        return local_llm(args.settings, args.model).get_client()

    runs, sizes, notes = [], [], {}
    took = {
        "instruct_lf": seconds["proposals"]
    }  # each method's seconds in the first seed, its calls included
    for seed in seeds:
        fitting = time.perf_counter()
        model = InstructLF(method.but(seed=seed)).fit(proposed, proposals, corpus=texts["train"])
        compat = {name: model.compatibility(rows) for name, rows in texts.items()}
        factors = {name: model.factors_.scores(x) for name, x in compat.items()}
        if seed == seeds[0]:
            took["instruct_lf"] += time.perf_counter() - fitting
        spaces, paid, notes = _peers(peers, texts, seed, topicgpt, client, took)
        costs.update(paid)
        runs.append(
            evaluate(
                {"raw_embedding": raw, "compatibility": compat, **spaces, "instruct_lf": factors}, actions
            )
        )
        sizes.append((len(model.vocabulary_), model.factors_.n_factors))
        say(f"seed {seed}: {json.dumps(runs[-1])}")
    seconds["instruct_lf"] = time.perf_counter() - lap
    seconds["total"] = time.perf_counter() - started

    means, stds = aggregate(runs)
    result = {
        "env": args.env,
        "accuracy": means,
        "std": stds,
        "seeds": seeds,
        "games": {name: len(games) for name, games in splits.items()},
        "states": {name: len(rows) for name, rows in data.items()},
        "proposed_states": len(proposed),
        "failed_proposals": sum(p is None for p in proposals),
        "properties": int(np.mean([p for p, _ in sizes])),
        "factors": int(np.mean([m for _, m in sizes])),
        "model": args.model,
        "cost": {m: c.as_dict() for m, c in costs.items()},
        "notes": notes,
        "seconds": {phase: round(t, 1) for phase, t in seconds.items()},
        "method_seconds": {method: round(t, 1) for method, t in took.items()},
    }
    say(
        f"next-action prediction ({args.env}): games {result['games']}, states {result['states']}; "
        f"{len(proposed)} states proposed for, {result['properties']} properties, {result['factors']} factors; "
        f"accuracy (digits ignored), mean ± std over seeds {seeds}"
    )
    say(format_table(means, stds, notes=notes))
    say(
        f"\nLLM cost (cached answers counted as first paid):\n{cost_table(['instruct_lf', *peers], costs, took)}"
    )
    print(json.dumps(result))
    return result
