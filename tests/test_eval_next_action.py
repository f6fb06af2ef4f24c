"""Next-action prediction: states, digit-blind accuracy, the ALFWorld loader, TWC trajectories, the protocol."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from instruct_lf_dagster.evaluation import next_action as na
from instruct_lf_dagster.evaluation import next_action_data as sources
from instruct_lf_dagster.evaluation import next_action_protocol as protocol
from instruct_lf_dagster.settings import Settings

FIXTURE = Path(__file__).parent / "data" / "alfworld_expert_tiny.jsonl"


def test_states_are_the_prefixes_before_each_action():
    trajectory = sources.Trajectory(
        "g", "tidy up", ("in a room", "you take it", "done?"), ("take cup", "go to desk 2", "x")
    )
    result = protocol.states(trajectory)
    assert [s.action for s in result] == list(trajectory.actions)
    last = result[2].text
    assert "> take cup" in last and "> go to desk 2" in last and "> x" not in last
    assert last.endswith("Goal: tidy up\nObservation: done?")
    assert result[0].text == "Goal: tidy up\nObservation: in a room"


def test_actions_compare_with_digits_ignored():
    assert protocol.normalise_action("go to countertop 1") == protocol.normalise_action(
        "Go to  countertop 12"
    )
    assert protocol.normalise_action("take apple 1 from desk 2") != protocol.normalise_action(
        "take mug 1 from desk 2"
    )
    assert protocol.accuracy(["go to desk 1", "open fridge 1"], ["go to desk 3", "open drawer 1"]) == 0.5
    assert protocol.most_frequent_action(["open fridge 1", "go to desk 1", "go to desk 2"]) == "go to desk"


def test_nearest_training_state_gives_the_action():
    train = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    queries = np.array([[0.9, 0.1], [0.1, 2.0], [3.0, 2.9]])
    assert protocol.nearest_actions(train, ["a", "b", "c"], queries) == ["a", "b", "c"]


def test_evaluate_scores_every_split_but_train():
    actions = {
        "train": ["go to desk 1", "open fridge 1", "go to desk 2"],
        "seen": ["open fridge 2", "go to desk 3"],
    }
    space = {"train": np.eye(3), "seen": np.array([[0.1, 1.0, 0.0], [0.0, 1.0, 0.1]])}
    scores = protocol.evaluate({"nn": space}, actions)
    assert scores == {"seen": {"most_frequent": 0.5, "nn": 0.5}}  # 1-NN says "open fridge" twice


def test_proposal_sample_and_game_split_are_seeded():
    rows = [protocol.State(f"g{i % 4}", f"text {i}", "a") for i in range(20)]
    sample = protocol.proposal_sample(rows, 6, seed=3)
    assert sample == protocol.proposal_sample(rows, 6, seed=3) != protocol.proposal_sample(rows, 6, seed=4)
    assert len(sample) == 6 and sample == sorted(sample, key=rows.index)
    games = [sources.Trajectory(f"g{i}", "goal", ("o",), ("a",)) for i in range(8)]
    kept, held = protocol.game_split(games, 0.25, seed=0)
    assert len(held) == 2 and sorted(kept + held, key=games.index) == games


def test_alfworld_loader_reads_splits_goals_and_states():
    splits = sources.load_alfworld(FIXTURE)
    assert {k: len(v) for k, v in splits.items()} == {"train": 3, "seen": 1, "unseen": 1}
    apple = splits["train"][0]
    assert apple.goal == "put a clean apple in fridge."  # from "Your task is to: ..."
    assert len(apple.observations) == len(apple.actions) == 7  # the last feedback is not a state
    assert splits["unseen"][0].goal == "put a mug in drawer."  # given as "task"
    assert sum(len(protocol.states(t)) for t in splits["train"]) == 19


def test_alfworld_loader_rejects_misaligned_records(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"split": "train", "task": "t", "observations": ["a"], "actions": ["x", "y", "z"]})
    )
    with pytest.raises(ValueError, match="1 observations for 3 actions"):
        sources.load_alfworld(bad)


@pytest.fixture
def household_llm():
    """A deterministic fake LLM (litellm provider `household`): one property, the start of what is seen now.

    One property per state, mostly distinct, keeps the linker's batches few (a property or a document may occur
    only once per batch), and each optimiser step of MiniLM costs seconds on a small CPU.
    """
    import litellm

    class Handler(litellm.CustomLLM):
        def completion(self, *args, **kwargs):
            now = kwargs["messages"][-1]["content"].rsplit("Observation:", 1)[-1].split()[:5]
            return litellm.completion(
                model="openai/fake",
                messages=kwargs["messages"],
                mock_response=json.dumps({"properties": [f"Seeing: {' '.join(now)}"]}),
            )

    previous = list(litellm.custom_provider_map)
    litellm.custom_provider_map = [p for p in previous if p["provider"] != "household"] + [
        {"provider": "household", "custom_handler": Handler()}
    ]
    litellm.utils.custom_llm_setup()
    yield "household/any"
    litellm.custom_provider_map = previous
    litellm.utils.custom_llm_setup()


def run(*options: str) -> dict:
    parser = argparse.ArgumentParser()
    na.add_arguments(parser)
    args = parser.parse_args(["--linker-epochs", "1", *options])
    args.settings = Settings.from_env()  # what the CLI adds: the environment's settings (this test's home)
    return na.main(args)


@pytest.mark.integration
def test_protocol_on_alfworld_fixture_is_deterministic(household_llm, capsys):
    options = [
        "--env",
        "alfworld",
        "--data",
        str(FIXTURE),
        "--model",
        household_llm,
        "--seeds",
        "0",
        "--propose",
        "12",
    ]
    first = run(*options)
    printed = capsys.readouterr().out.strip().splitlines()
    assert json.loads(printed[-1]) == first  # the JSON summary comes last
    assert first["states"] == {"train": 19, "seen": 7, "unseen": 5}
    assert first["games"] == {"train": 3, "seen": 1, "unseen": 1}
    assert first["proposed_states"] == 12 and first["failed_proposals"] == 0
    for split in ("seen", "unseen"):
        assert set(first["accuracy"][split]) == set(na.METHODS)
        assert all(0.0 <= v <= 1.0 for v in first["accuracy"][split].values())
    # "go to countertop" is the most frequent training action: right once among the seen game's 7 states.
    assert first["accuracy"]["seen"]["most_frequent"] == pytest.approx(1 / 7)
    assert first["accuracy"]["unseen"]["most_frequent"] == 0.0

    assert set(first["method_seconds"]) == {"instruct_lf", "lda", "bertopic", "topicgpt"}
    assert all(t >= 0 for t in first["method_seconds"].values())
    second = run(*options)
    for result in (first, second):  # wall times differ
        result.pop("seconds"), result.pop("method_seconds")
    assert second == first


@pytest.mark.integration
def test_dev_mode_holds_out_training_games(household_llm):
    result = run(
        "--env", "alfworld", "--data", str(FIXTURE), "--model", household_llm, "--seeds", "0", "--dev"
    )
    assert set(result["accuracy"]) == {"dev"}
    assert result["games"] == {"train": 2, "dev": 1}


requires_twc = pytest.mark.skipif(
    sources.twc_unavailable() is not None, reason=str(sources.twc_unavailable())
)


@pytest.mark.integration  # TextWorldExpress runs its games in a JVM
@requires_twc
def test_twc_gold_trajectories_are_reproducible_and_finish():
    splits = sources.twc_splits(3, 2, data_seed=1)
    again = sources.twc_splits(3, 2, data_seed=1)
    assert splits == again
    assert [len(splits[k]) for k in ("train", "seen", "unseen")] == [3, 2, 2]
    games = [t.game for games in splits.values() for t in games]
    assert len(set(games)) == len(games)
    for trajectory in (t for games in splits.values() for t in games):
        assert "look around" not in trajectory.actions
        assert len(trajectory.observations) == len(trajectory.actions) > 0
        assert trajectory.actions[-1].startswith("put ")  # the task ends when the last item is put away
        assert "place them in their usual locations" in trajectory.goal
    assert all("includeDoors=1" in t.game for t in splits["unseen"])


@pytest.mark.integration  # TextWorldExpress runs its games in a JVM
@requires_twc
def test_twc_refuses_wandering_gold_paths():
    with pytest.raises(ValueError, match="more than 2 locations"):
        sources.twc_trajectories(
            [0], "numLocations=3,numItemsToPutAway=2,includeDoors=0,limitInventorySize=0"
        )


@requires_twc
@pytest.mark.integration
def test_protocol_on_tiny_twc(household_llm):
    result = run(
        "--train-games", "4", "--eval-games", "2", "--model", household_llm, "--seeds", "0", "--propose", "8"
    )
    assert result["games"] == {"train": 4, "seen": 2, "unseen": 2}
    assert result["states"]["train"] > 4 and result["properties"] > 1
    assert set(result["accuracy"]) == {"seen", "unseen"}
    assert all(set(v) == set(na.METHODS) for v in result["accuracy"].values())
