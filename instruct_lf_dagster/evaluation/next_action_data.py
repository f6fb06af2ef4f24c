"""Where next-action trajectories come from: TextWorldExpress's TWC games, played along their gold paths
offline, or recorded ALFWorld expert trajectories (JSON Lines).
"""

from __future__ import annotations

import logging
import math
import random
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from instruct_lf_dagster.core.records import read_path

TWC_TRAIN_PARAMS = "numLocations=2,numItemsToPutAway=3,includeDoors=0,limitInventorySize=0"
TWC_UNSEEN_PARAMS = "numLocations=2,numItemsToPutAway=4,includeDoors=1,limitInventorySize=0"
ALFWORLD_SPLITS = {"train": "train", "valid_seen": "seen", "valid_unseen": "unseen"}


@dataclass(frozen=True)
class Trajectory:
    """One expert game: `observations[i]` is what the agent saw before taking `actions[i]`."""

    game: str
    goal: str
    observations: tuple[str, ...]
    actions: tuple[str, ...]


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
    """ALFWorld expert trajectories from JSON Lines (format: the `next_action` module docstring), as train, seen
    and unseen. Errors name the file and the game's place in it."""
    frame = read_path(path, required=("split", "observations", "actions"))
    splits: dict[str, list[Trajectory]] = {name: [] for name in ALFWORLD_SPLITS.values()}
    for number, record in enumerate(frame.to_dict("records"), start=1):
        observations, actions = list(record["observations"]), list(record["actions"])
        if len(observations) not in (len(actions), len(actions) + 1):
            raise ValueError(
                f"{path}: game {number}: {len(observations)} observations for {len(actions)} actions"
            )
        task = record.get("task")
        # A key some games lack is NaN in theirs once the games share a table.
        found = task if isinstance(task, str) and task else _TASK.search(observations[0])
        if found is None:
            raise ValueError(
                f"{path}: game {number}: no task, and no 'Your task is to:' in the first observation"
            )
        goal = found if isinstance(found, str) else found.group(1).strip()
        game = record.get("game")
        if game is None or (isinstance(game, float) and math.isnan(game)):
            game = f"{Path(path).name}:{number}"
        trajectory = Trajectory(str(game), goal, tuple(observations[: len(actions)]), tuple(actions))
        splits[ALFWORLD_SPLITS[record["split"]]].append(trajectory)
    return splits
