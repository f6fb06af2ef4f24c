"""`dg scaffold defs instruct_lf_dagster.components.Discovery NAME --goal "..."`: a new discovery's YAML.

Dagster's own `scaffold_component` writes bare YAML; a discovery's file is written from a commented template,
because a user's first edit is its worked examples and the comments say how.
"""

from __future__ import annotations

import json

import dagster as dg
from pydantic import BaseModel, Field

from instruct_lf_dagster.core.config import MethodConfig
from instruct_lf_dagster.core.discovery import NAME, DiscoverySpec
from instruct_lf_dagster.core.proposals import Goal

TEMPLATE = """\
# A discovery: one goal over the document stream. Check with `dg check defs`; the settings and their
# defaults are in instruct_lf_dagster/core/config.py. An edit shows this discovery's assets as unsynced.
type: {type_name}

attributes:
  name: {name}
  goal: {goal}
  document_kind: {document_kind}
  # Fill in one or two worked examples before the first run: small models need one to propose properties
  # (general descriptions) rather than names copied from the text.
  examples: []
  #  - document: "<one typical {kind}, pasted here>"
  #    properties: ["<property>", "<property>", "<property>"]
  truncation: {truncation}
  # llm: {{model: openai/gpt-4o-mini, api_key_env: OPENAI_API_KEY}}  # default: the environment's model
  # proposal_budget: {{max_documents: 200, fraction: 0.5}}          # per batch; default: the environment's
  # linker: {{epochs: 20, batch_size: 512}}
  # factors: {{n_factors: 0, l1: 0.0}}  # 0 factors: properties / 8
  refit_cron: "{refit_cron}"
  # After a first run, by the factor ids of the report (kept across refits):
  # curation: {{names: {{3: "A better name"}}, drop: [7], merge: [[4, 9]]}}
"""


class DiscoveryParams(BaseModel):
    """What `dg scaffold defs ... NAME` asks for; the folder's name is the discovery's name."""

    goal: str = Field(description="what the factors are for, in plain words")
    document_kind: str = Field(Goal.document_kind, description="what one document is, e.g. 'support ticket'")
    truncation: str = Field(MethodConfig().truncation, description="which end of long documents to keep")
    refit_cron: str = Field(DiscoverySpec.refit_cron, description="when to refit on every batch")


class DiscoveryScaffolder(dg.Scaffolder[DiscoveryParams]):
    """Writes `<folder>/defs.yaml` for a new discovery named after the folder."""

    @classmethod
    def get_scaffold_params(cls) -> type[DiscoveryParams]:
        return DiscoveryParams

    def scaffold(self, request: dg.ScaffoldRequest[DiscoveryParams]) -> None:
        name = request.target_path.name
        if not NAME.fullmatch(name):
            raise ValueError(
                f"name {name!r}: use lower-case letters, digits and underscores (it names assets and jobs)"
            )
        params = request.params or DiscoveryParams(goal="")
        if not params.goal.strip():
            raise ValueError("--goal is required: say in plain words what the factors are for")
        request.target_path.mkdir(parents=True, exist_ok=True)
        (request.target_path / "defs.yaml").write_text(
            TEMPLATE.format(
                type_name=request.type_name,
                name=name,
                goal=json.dumps(params.goal.strip()),  # a JSON string is a YAML string, quotes escaped
                document_kind=json.dumps(params.document_kind),
                kind=params.document_kind.replace('"', "'"),
                truncation=params.truncation,
                refit_cron=params.refit_cron,
            )
        )
