"""Next-action prediction on expert trajectories: the paper's ALFWorld protocol.

Every prefix of an expert trajectory, up to an expert action, is a state (goal, history, current observation);
its label is that action. A state is predicted to take the action of its nearest training state (cosine), and
accuracy is the share of exact matches once digits are ignored ("go to desk 1" = "go to desk 2"), on held-out
games from the training distribution ("seen") and from a different one ("unseen"). Methods: the most frequent
training action; raw all-MiniLM-L6-v2 embeddings; rows of the Instruct-LF compatibility matrix; factor scores.

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
import logging
import random
import re
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from instruct_lf_dagster.core.proposals import Example, Goal

TWC_TRAIN_PARAMS = "numLocations=2,numItemsToPutAway=3,includeDoors=0,limitInventorySize=0"
TWC_UNSEEN_PARAMS = "numLocations=2,numItemsToPutAway=4,includeDoors=1,limitInventorySize=0"
ALFWORLD_SPLITS = {"train": "train", "valid_seen": "seen", "valid_unseen": "unseen"}
METHODS = ("most_frequent", "raw_embedding", "compatibility", "instruct_lf")


@dataclass(frozen=True)
class Trajectory:
    """One expert game: `observations[i]` is what the agent saw before taking `actions[i]`."""

    game: str
    goal: str
    observations: tuple[str, ...]
    actions: tuple[str, ...]


@dataclass(frozen=True)
class State:
    """A prefix of a trajectory as text, and the expert's next action."""

    game: str
    text: str
    action: str


def render_state(goal: str, observations: Sequence[str], actions: Sequence[str]) -> str:
    """The text of a state: the history (observation, "> action" lines), then the goal and what is seen now.

    The goal sits after the history, next to the current observation, so that keeping the tail of a long state
    (the latest steps, which matter most for the next action) never cuts it.
    """
    if len(observations) != len(actions) + 1:
        raise ValueError(f"{len(observations)} observations for {len(actions)} past actions")
    history = [
        line
        for obs, action in zip(observations[:-1], actions, strict=True)
        for line in (obs.strip(), f"> {action}")
    ]
    return "\n".join([*history, f"Goal: {goal.strip()}", f"Observation: {observations[-1].strip()}"])


def states(trajectory: Trajectory) -> list[State]:
    """Every state of a trajectory: the prefix before each expert action, labelled with that action."""
    return [
        State(
            trajectory.game,
            render_state(trajectory.goal, trajectory.observations[: i + 1], trajectory.actions[:i]),
            action,
        )
        for i, action in enumerate(trajectory.actions)
    ]


def normalise_action(action: str) -> str:
    """An action compared the paper's way, digits ignored (object ids), plus case and spacing folded."""
    return " ".join(re.sub(r"\d", " ", action).lower().split())


def most_frequent_action(actions: Sequence[str]) -> str:
    """The most frequent normalised action (ties: the first one seen)."""
    return Counter(normalise_action(a) for a in actions).most_common(1)[0][0]


def nearest_actions(train: np.ndarray, train_actions: Sequence[str], queries: np.ndarray) -> list[str]:
    """The action of each query's most cosine-similar training state (ties: the earliest training state)."""
    from instruct_lf_dagster.evaluation.representations import cosine_neighbours

    return [train_actions[i] for i in cosine_neighbours(queries, train, 1)[:, 0]]


def evaluate(spaces: dict[str, dict[str, np.ndarray]], actions: dict[str, Sequence[str]]) -> dict:
    """Accuracy per evaluated split and method: the most frequent training action, then 1-NN in each space.

    `actions[split]` are the gold actions of a split's states ("train": the datastore) and `spaces[method][split]`
    the states' vectors. Returns {split: {method: accuracy}} for every split but "train".
    """
    frequent = most_frequent_action(actions["train"])
    scores: dict[str, dict[str, float]] = {}
    for split, gold in actions.items():
        if split == "train" or not gold:
            continue
        scores[split] = {"most_frequent": accuracy([frequent] * len(gold), gold)}
        for method, space in spaces.items():
            predicted = nearest_actions(space["train"], actions["train"], space[split])
            scores[split][method] = accuracy(predicted, gold)
    return scores


def accuracy(predicted: Sequence[str], gold: Sequence[str]) -> float:
    """Share of predictions equal to the gold action, digits ignored."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predictions for {len(gold)} gold actions")
    if not gold:
        return float("nan")
    hits = sum(normalise_action(p) == normalise_action(g) for p, g in zip(predicted, gold, strict=True))
    return hits / len(gold)


# -- data ----------------------------------------------------------------------------------------------------------
def twc_unavailable() -> str | None:
    """Why TextWorldExpress cannot run here, or None when it can."""
    import importlib.util

    if importlib.util.find_spec("textworld_express") is None:
        return "textworld-express is not installed (pip install textworld-express)"
    if shutil.which("java") is None:
        return "TextWorldExpress needs Java on the PATH"
    return None


def twc_trajectories(seeds: Sequence[int], params: str, *, fold: str = "train") -> list[Trajectory]:
    """Expert trajectories of TWC games (one per seed): the gold path, played until the task is done.

    "look around" (the gold path's first step) only repeats what the agent already sees: it is dropped.
    """
    from textworld_express import TextWorldExpressEnv

    logging.getLogger("py4j").setLevel(logging.WARNING)  # it narrates every socket at INFO
    # The env shuts its JVM down when garbage-collected; closing it here as well makes py4j log errors.
    env = TextWorldExpressEnv(envStepLimit=1000)
    env.load("twc", params)
    trajectories = []
    for seed in seeds:
        observation, info = env.reset(seed=seed, gameFold=fold, generateGoldPath=True)
        if env.getGenerationProperties()["numLocations"] > 2:  # TWC's default is 3
            raise ValueError("TWC gold paths over more than 2 locations are random: not reproducible")
        gold = [a for a in env.getGoldActionSequence() if a != "look around"]
        observations, actions = [observation], []
        for action in gold:
            observation, _, _, info = env.step(action)
            observations.append(observation)
            actions.append(action)
            if info["tasksuccess"]:  # the gold path may end with a pointless move
                break
        if not info["tasksuccess"]:
            raise RuntimeError(f"the gold path of TWC game {seed} ({params}) does not finish the task")
        game = f"twc-{fold}-{seed}-{params}"
        trajectories.append(
            Trajectory(game, info["taskDescription"], tuple(observations[:-1]), tuple(actions))
        )
    return trajectories


def twc_splits(
    train_games: int,
    eval_games: int,
    *,
    data_seed: int = 0,
    train_params: str = TWC_TRAIN_PARAMS,
    unseen_params: str = TWC_UNSEEN_PARAMS,
) -> dict[str, list[Trajectory]]:
    """Train, seen and unseen TWC games on distinct seeds of the train fold, drawn with `data_seed`."""
    seeds = random.Random(data_seed).sample(range(1000), train_games + 2 * eval_games)  # the fold: 0-999
    cut = train_games + eval_games
    train, seen, unseen = seeds[:train_games], seeds[train_games:cut], seeds[cut:]
    return {
        "train": twc_trajectories(train, train_params),
        "seen": twc_trajectories(seen, train_params),
        "unseen": twc_trajectories(unseen, unseen_params),
    }


_TASK = re.compile(r"Your task is to:\s*(.+)")


def load_alfworld(path: str | Path) -> dict[str, list[Trajectory]]:
    """ALFWorld expert trajectories from JSON Lines (format: the module docstring), as train, seen and unseen."""
    splits: dict[str, list[Trajectory]] = {name: [] for name in ALFWORLD_SPLITS.values()}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        observations, actions = list(record["observations"]), list(record["actions"])
        if len(observations) not in (len(actions), len(actions) + 1):
            raise ValueError(f"{path}:{number}: {len(observations)} observations for {len(actions)} actions")
        task = record.get("task") or _TASK.search(observations[0])
        if task is None:
            raise ValueError(f"{path}:{number}: no task, and no 'Your task is to:' in the first observation")
        goal = task if isinstance(task, str) else task.group(1).strip()
        game = str(record.get("game", f"{Path(path).name}:{number}"))
        trajectory = Trajectory(game, goal, tuple(observations[: len(actions)]), tuple(actions))
        splits[ALFWORLD_SPLITS[record["split"]]].append(trajectory)
    return splits


def proposal_sample(train: Sequence[State], n: int, seed: int) -> list[State]:
    """A seeded uniform sample of `n` training states, in their original order: the ones the LLM describes."""
    return [train[i] for i in sorted(random.Random(seed).sample(range(len(train)), min(n, len(train))))]


def game_split(games: Sequence[Trajectory], fraction: float, seed: int) -> tuple[list, list]:
    """(kept, held out): a seeded `fraction` of the games held out, for choosing settings without test data."""
    order = random.Random(seed).sample(range(len(games)), len(games))
    held = set(order[: max(1, round(fraction * len(games)))])
    return [g for i, g in enumerate(games) if i not in held], [g for i, g in enumerate(games) if i in held]


# -- the goal shown to the LLM -------------------------------------------------------------------------------------
_EXAMPLE_GOAL = (
    "Your task is to pick up objects, then place them in their usual locations in the environment."
)
GOAL = Goal(
    text=(
        "Predict what the agent will do next to finish its household task: what it has done, what it holds, "
        "what is still out of place, and what is around it."
    ),
    document_kind="household task log",
    # Two situations with different answers: with one example, the small model copies its properties.
    examples=(
        Example(
            render_state(
                _EXAMPLE_GOAL,
                [
                    "You are in the kitchen. You see a fridge that is closed, a counter, and a red apple.",
                    "You take the red apple.",
                    "You open the fridge. It's empty inside.",
                ],
                ["take red apple", "open fridge"],
            ),
            (
                "Holding an apple not yet put away",
                "The apple belongs in the fridge",
                "The fridge was just opened",
                "Ready to put an item away",
                "In the kitchen",
            ),
        ),
        Example(
            render_state(
                _EXAMPLE_GOAL,
                [
                    "You are in the hallway. You see a coat hanger. To the North you see the bathroom.",
                    "You are in the bathroom. You see a towel rack, a sink, a bath mat and a wet towel.",
                ],
                ["move north"],
            ),
            (
                "Just arrived in a new room",
                "A misplaced towel lies here",
                "Carrying nothing",
                "The towel belongs on the towel rack",
                "In the bathroom",
            ),
        ),
    ),
    max_document_chars=1000,
    truncation="tail",
)


# -- the evaluation ------------------------------------------------------------------------------------------------
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
        "--model", default="llamacpp/qwen2.5-coder-1.5b-instruct", help="litellm model string"
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of linker and CorEx")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the games and the proposal sample")
    parser.add_argument(
        "--truncation", choices=["head", "tail"], default="tail", help="end of long states kept"
    )
    parser.add_argument("--factors", type=int, default=0, help="latent factors (0 = automatic)")
    parser.add_argument("--l1", type=float, default=0.4, help="CorEx L1 penalty (the paper's ALFWorld value)")
    parser.add_argument("--linker-epochs", type=int, default=2, help="most linker epochs (default 2)")
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


def _propose(model: str, texts: Sequence[str], say) -> list[list[str] | None]:
    from instruct_lf_dagster.core.proposals import propose
    from instruct_lf_dagster.resources.llm import LLMResource

    def progress(done: int, total: int) -> None:
        if done % 10 == 0 or done == total:
            say(f"proposals: {done}/{total}")

    proposals = propose(LLMResource(model=model).get_client(), GOAL, texts, progress=progress)
    if proposals.failed:
        say(
            f"proposals: {proposals.failed} of {len(texts)} calls failed; first error: "
            f"{next(e for e in proposals.errors if e)}"
        )
    return proposals.properties


def main(args: argparse.Namespace) -> dict:
    """Run the evaluation, print a table and, last, the JSON summary."""
    from instruct_lf_dagster.core.pipeline import InstructLF
    from instruct_lf_dagster.evaluation.report import aggregate, format_table
    from instruct_lf_dagster.evaluation.representations import raw_embeddings

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
    proposals = _propose(args.model, proposed, say)
    seconds["proposals"], lap = time.perf_counter() - lap, time.perf_counter()
    raw = {name: raw_embeddings(rows, truncation=args.truncation) for name, rows in texts.items()}
    seconds["raw_embeddings"], lap = time.perf_counter() - lap, time.perf_counter()
    runs, sizes = [], []
    for seed in seeds:
        model = InstructLF(
            n_factors=args.factors or None,
            l1=args.l1,
            truncation=args.truncation,
            linker_epochs=args.linker_epochs,
            seed=seed,
        ).fit(proposed, proposals, corpus=texts["train"])
        compat = {name: model.compatibility(rows) for name, rows in texts.items()}
        factors = {name: model.factors_.scores(x) for name, x in compat.items()}
        runs.append(
            evaluate({"raw_embedding": raw, "compatibility": compat, "instruct_lf": factors}, actions)
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
        "seconds": {phase: round(t, 1) for phase, t in seconds.items()},
    }
    say(
        f"next-action prediction ({args.env}): games {result['games']}, states {result['states']}; "
        f"{len(proposed)} states proposed for, {result['properties']} properties, {result['factors']} factors; "
        f"accuracy (digits ignored), mean ± std over seeds {seeds}"
    )
    say(format_table(means, stds))
    print(json.dumps(result))
    return result
