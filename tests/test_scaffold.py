"""`dg scaffold defs instruct_lf_dagster.components.Discovery NAME --goal ...` writes a discovery that loads."""

from __future__ import annotations

import dagster as dg
import pytest
import yaml
from dagster.components.testing import create_defs_folder_sandbox

from instruct_lf_dagster.components import Discovery
from instruct_lf_dagster.core.config import MethodConfig
from instruct_lf_dagster.core.discovery import STAGES


def test_scaffolded_discovery_loads_with_the_methods_defaults():
    with create_defs_folder_sandbox() as sandbox:
        path = sandbox.scaffold_component(
            Discovery,
            "support",
            {"goal": 'Why do customers churn? "Really"', "document_kind": "support ticket"},
        )
        text = (path / "defs.yaml").read_text()
        assert "# Fill in one or two worked examples" in text  # commented for the user's first edit
        attributes = yaml.safe_load(text)["attributes"]
        assert attributes["name"] == "support" and attributes["goal"] == 'Why do customers churn? "Really"'
        with sandbox.load_component_and_build_defs(defs_path=path) as (component, defs):
            assert isinstance(component, Discovery)
            spec = component.spec()
            assert spec.goal.document_kind == "support ticket"
            assert spec.method == MethodConfig()  # every setting left out has the method's default
            built = {key for asset in defs.assets for key in asset.keys}  # resources come with an environment
            assert {dg.AssetKey(spec.key(stage)) for stage in STAGES} <= built


@pytest.mark.parametrize(("name", "params"), [("Bad Name", {"goal": "g"}), ("ok", {"goal": "  "})])
def test_scaffold_refuses_a_bad_name_or_an_empty_goal(name, params):
    with create_defs_folder_sandbox() as sandbox, pytest.raises(Exception, match="lower-case|goal"):
        sandbox.scaffold_component(Discovery, name, params)
