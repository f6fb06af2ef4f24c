"""The next-action protocol: states (trajectory prefixes labelled with the expert's next action), digit-blind
accuracy of the nearest training state's action, seeded samples, and the goal shown to the LLM.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from instruct_lf_dagster.core.proposals import Example, Goal
from instruct_lf_dagster.evaluation.next_action_data import Trajectory


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


def proposal_sample(train: Sequence[State], n: int, seed: int) -> list[State]:
    """A seeded uniform sample of `n` training states, in their original order: the ones the LLM describes."""
    return [train[i] for i in sorted(random.Random(seed).sample(range(len(train)), min(n, len(train))))]


def game_split(games: Sequence[Trajectory], fraction: float, seed: int) -> tuple[list, list]:
    """(kept, held out): a seeded `fraction` of the games held out, for choosing settings without test data."""
    order = random.Random(seed).sample(range(len(games)), len(games))
    held = set(order[: max(1, round(fraction * len(games)))])
    return [g for i, g in enumerate(games) if i not in held], [g for i, g in enumerate(games) if i in held]


# What the LLM is asked, with worked examples rendered exactly like the states it will describe.
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
