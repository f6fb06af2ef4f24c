"""The `Discovery` component: a discovery's YAML (`defs/<name>/defs.yaml`), resolved into a `DiscoverySpec`.

The YAML's fields are the method's setting groups (`core.config`) plus the goal and the curation
(`core.curation`); their defaults and ranges are declared there once. Each discovery builds its own assets, checks, jobs and refit schedule from its spec.
"""

from __future__ import annotations

from typing import Annotated, Any

import dagster as dg
from dagster._utils.schedules import is_valid_cron_string  # no public equivalent in Dagster 1.13
from pydantic import PositiveInt, TypeAdapter

from instruct_lf_dagster.assets import discovery_assets
from instruct_lf_dagster.automation import discovery_jobs, refit_schedule
from instruct_lf_dagster.components.scaffold import DiscoveryScaffolder
from instruct_lf_dagster.core.config import (
    FactorConfig,
    LinkerConfig,
    MethodConfig,
    SeedFactor,
    Truncation,
    VocabularyConfig,
)
from instruct_lf_dagster.core.curation import Curation
from instruct_lf_dagster.core.discovery import NAME, DiscoveryLLM, DiscoverySpec
from instruct_lf_dagster.core.proposals import Example, Goal, ProposalBudget

METHOD = MethodConfig()  # the defaults of the method's top-level settings


def _checked(kind: Any) -> dg.Resolver:
    """Validate a field while the YAML is resolved, so that an error names the file and the line.

    Dagster accepts a template string for every field of the YAML model; a value checked only by the component
    itself would fail later, naming the field but not the file.
    """
    adapter = TypeAdapter(kind)
    return dg.Resolver(
        lambda context, raw: adapter.validate_python(context.resolve_value(raw)), model_field_type=kind
    )


def _name(context: dg.ResolutionContext, raw: str) -> str:
    value = context.resolve_value(raw, as_type=str)
    if not NAME.fullmatch(value):
        raise ValueError(
            f"name {value!r}: use lower-case letters, digits and underscores (it names assets and jobs)"
        )
    return value


def _cron(context: dg.ResolutionContext, raw: str) -> str:
    value = context.resolve_value(raw, as_type=str)
    if not is_valid_cron_string(value):
        raise ValueError(f"refit_cron {value!r} is not a cron expression of 5 fields, e.g. '0 3 * * 1'")
    return value


def _goal(context: dg.ResolutionContext, raw: str) -> str:
    value = context.resolve_value(raw, as_type=str)
    if not value.strip():
        raise ValueError("goal is empty: say in plain words what the factors are for")
    return value.strip()


class WorkedExample(dg.Model):
    """A document and the properties a good answer lists for it."""

    document: str
    properties: list[str]


@dg.scaffold_with(DiscoveryScaffolder)
class Discovery(dg.Component, dg.Resolvable, dg.Model):
    """Goal-conditioned latent factors over the document stream: one instance per goal."""

    name: Annotated[str, dg.Resolver(_name, model_field_type=str)]
    goal: Annotated[str, dg.Resolver(_goal, model_field_type=str)]
    document_kind: str = Goal.document_kind
    examples: Annotated[list[WorkedExample], _checked(list[WorkedExample])] = []
    truncation: Annotated[Truncation, _checked(Truncation)] = METHOD.truncation
    max_document_chars: Annotated[int, _checked(PositiveInt)] = Goal.max_document_chars
    llm: Annotated[DiscoveryLLM, _checked(DiscoveryLLM)] = DiscoveryLLM()
    proposal_budget: Annotated[ProposalBudget, _checked(ProposalBudget)] = ProposalBudget()
    vocabulary: Annotated[VocabularyConfig, _checked(VocabularyConfig)] = METHOD.vocabulary
    linker: Annotated[LinkerConfig, _checked(LinkerConfig)] = METHOD.linker
    factors: Annotated[FactorConfig, _checked(FactorConfig)] = METHOD.factors
    seed: Annotated[int, _checked(int)] = METHOD.seed
    seed_factors: Annotated[list[SeedFactor], _checked(list[SeedFactor])] = []
    refit_cron: Annotated[str, dg.Resolver(_cron, model_field_type=str)] = DiscoverySpec.refit_cron
    curation: Annotated[Curation, _checked(Curation)] = Curation()

    def spec(self) -> DiscoverySpec:
        """What the assets are built from: this YAML, resolved once."""
        return DiscoverySpec(
            name=self.name,
            goal=Goal(
                text=self.goal,
                document_kind=self.document_kind,
                examples=tuple(Example(e.document, tuple(e.properties)) for e in self.examples),
                max_document_chars=self.max_document_chars,
                truncation=self.truncation,
            ),
            method=MethodConfig(
                truncation=self.truncation,
                vocabulary=self.vocabulary,
                linker=self.linker,
                factors=self.factors,
                seed=self.seed,
                seed_factors=self.seed_factors,
            ),
            budget=self.proposal_budget,
            llm=self.llm,
            refit_cron=self.refit_cron,
            curation=self.curation,
        )

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        return discovery_definitions(self.spec())


def discovery_definitions(spec: DiscoverySpec) -> dg.Definitions:
    """Everything one discovery adds: `<name>/...` assets and checks, its two jobs and its refit schedule."""
    built = discovery_assets(spec)
    refit, score = discovery_jobs(spec)
    return dg.Definitions(
        assets=[a for a in built if not isinstance(a, dg.AssetChecksDefinition)],
        asset_checks=[c for c in built if isinstance(c, dg.AssetChecksDefinition)],
        jobs=[refit, score],
        schedules=[refit_schedule(spec, refit)],
    )
