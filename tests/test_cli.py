"""The command line: every benchmark and evaluation is reachable and documents its options."""

from __future__ import annotations

import pytest

from instruct_lf_dagster import cli


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
