"""The environment is read in one place (`instruct_lf_dagster.settings`) and nothing installs packages at run time."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from instruct_lf_dagster.settings import Settings

PACKAGE = Path(__file__).resolve().parents[1] / "instruct_lf_dagster"
ENVIRONMENT = re.compile(r"\bos\.environ\b|\bos\.getenv\b|\bgetenv\(|\bos\.putenv\b")


def test_only_the_settings_module_reads_or_writes_the_environment():
    readers = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "settings.py" and ENVIRONMENT.search(path.read_text(encoding="utf-8"))
    ]
    assert readers == []


def test_settings_from_a_mapping(tmp_path):
    settings = Settings.from_env(
        {
            "INSTRUCT_LF_HOME": "home",
            "INSTRUCT_LF_ENV": "prod",
            "INSTRUCT_LF_RAY_ADDRESS": " local ",
            "INSTRUCT_LF_MAX_PROPOSALS_PER_BATCH": "12",
            "INSTRUCT_LF_LLM_MODEL": "",
        },
        cwd=tmp_path,
    )
    assert settings.home == tmp_path / "home" and settings.env == "prod" and settings.ray_address == "local"
    assert settings.max_proposals_per_batch == 12 and settings.llm_model is None  # empty counts as unset
    assert Settings.from_env({}, cwd=tmp_path).home == tmp_path / "data"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"INSTRUCT_LF_ENV": "staging"}, "INSTRUCT_LF_ENV must be one of"),
        ({"INSTRUCT_LF_LLM_THREADS": "two"}, "INSTRUCT_LF_LLM_THREADS='two' is not a whole number"),
    ],
)
def test_bad_settings_are_refused_naming_the_variable(environ, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_env(environ)
