"""The command line: every benchmark and evaluation is reachable and documents its options."""

from __future__ import annotations

import argparse
import logging

import pytest

from instruct_lf_dagster import cli
from instruct_lf_dagster.components.scaffold import DiscoveryParams
from instruct_lf_dagster.settings import Settings


@pytest.mark.parametrize(
    ("command", "name"),
    [("bench", name) for name in cli.BENCHMARKS] + [("eval", name) for name in cli.EVALUATIONS],
)
def test_each_table_command_shows_its_own_help(command, name, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, name, "--help"])
    assert exit_.value.code == 0
    assert f"instruct-lf {command} {name}" in capsys.readouterr().out


def test_an_unknown_evaluation_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["eval", "nonsense"])
    assert exit_.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_evaluation_progress_is_not_buried_under_litellm_call_logs(tmp_path, monkeypatch, caplog):
    (tmp_path / "calls_llm.py").write_text(
        "import logging\n"
        "import litellm\n"
        "def add_arguments(parser):\n"
        "    pass\n"
        "def main(args):\n"
        "    litellm.completion(model='gpt-3.5-turbo', messages=[{'role': 'user', 'content': 'hi'}],\n"
        "                      mock_response='hello')\n"
        "    logging.getLogger('evaluation').info('proposals: 1/1')\n"
        "    return {}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(logging.getLogger("LiteLLM"), "level", logging.NOTSET)  # as in a fresh process
    caplog.set_level(logging.INFO)
    run = cli._table_command("eval", {"calls-llm": "calls_llm"})
    run(argparse.Namespace(name="calls-llm", options=[], settings=Settings.from_env()))
    assert [r.getMessage() for r in caplog.records if r.name == "evaluation"] == ["proposals: 1/1"]
    assert not [r for r in caplog.records if r.name.startswith("LiteLLM") and r.levelno < logging.WARNING]


def test_discovery_new_writes_a_yaml_that_loads_and_list_shows_it(tmp_path, monkeypatch, capsys):
    from instruct_lf_dagster import discoveries
    from instruct_lf_dagster.definitions import declared

    package = "cli_defs_" + tmp_path.name.replace("-", "_")
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    goal = 'Why do customers churn: "price" or service?'
    message = discoveries.new(
        "support", DiscoveryParams(goal=goal, document_kind="support ticket"), defs_module=package
    )
    assert "worked example" in message and "instruct-lf run --discovery support" in message
    (support,), _ = declared(package)
    assert (support.name, support.goal, support.document_kind, support.examples) == (
        "support",
        goal,
        "support ticket",
        [],
    )
    assert "support ticket" in discoveries.describe(package)
    with pytest.raises(SystemExit, match="already exists"):
        discoveries.new("support", DiscoveryParams(goal="Another goal?"), defs_module=package)
    for bad in ("../escape", "Support Team"):
        with pytest.raises(SystemExit, match="lower-case letters"):
            discoveries.new(bad, DiscoveryParams(goal="A goal?"), defs_module=package)
    with pytest.raises(SystemExit, match="refit_cron"):
        discoveries.new(
            "nightly", DiscoveryParams(goal="A goal?", refit_cron="every night"), defs_module=package
        )
    assert sorted(p.name for p in (tmp_path / package).iterdir() if p.is_dir()) == ["support"]


def test_run_help_names_the_discovery_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    assert "--discovery" in capsys.readouterr().out


def test_factors_are_printed_by_theme_largest_first():
    import pandas as pd

    from instruct_lf_dagster.run import format_factors

    rows = [
        (7, 1, "Ghosts", "Haunted stories", "Fear.", True, 0, "Genre thrills"),
        (7, 2, "Jump scares", "Haunted stories", "Fear.", True, 0, "Genre thrills"),
        (3, 1, "Car chase", "Action set pieces", "Speed.", True, 0, "Genre thrills"),
        (5, 1, "Kiss", "Kiss", "", False, 1, "Romance"),
    ]
    columns = ["factor", "rank", "property", "name", "description", "named_by_llm", "theme", "theme_name"]
    text = format_factors(pd.DataFrame(rows, columns=columns), top_factors=2)
    lines = text.splitlines()
    assert lines[0] == "theme: Genre thrills"
    assert lines[1].split() == ["factor", "7", "Haunted", "stories", "(2", "properties)"]
    assert "Ghosts, Jump scares" in text and "Car chase" in text
    assert "Romance" not in text and lines[-1].startswith("... and 1 smaller factors")


def test_a_factor_with_two_ends_is_printed_high_then_low():
    import pandas as pd

    from instruct_lf_dagster.run import format_factors

    rows = [
        (1, 1, "Witty humor", "high"),
        (1, 2, "Lack of humor", "low"),
        (1, 3, "Gag humor", "high"),
    ]
    report = pd.DataFrame(rows, columns=["factor", "rank", "property", "pole"]).assign(name="Humor")
    assert "        Witty humor, Gag humor / Lack of humor" in format_factors(report).splitlines()


def test_the_judge_s_verdicts_are_one_line_after_the_factors():
    import dagster as dg

    from instruct_lf_dagster.run import judged

    with dg.DagsterInstance.ephemeral() as inst:
        assert judged(inst, "films") == ""  # nothing judged yet
        meta = {
            "intrusion_accuracy": 0.25,
            "intrusion_asked": 8,
            "relevance": float("nan"),
            "judge": "llamacpp/x",
        }
        inst.report_runless_asset_event(dg.AssetMaterialization(["films", "judged_quality"], metadata=meta))
        line = judged(inst, "films")
    assert "Judged by llamacpp/x: the planted property found in 25% of 8 factors asked" in line
    assert "n/a judged relevant" in line
