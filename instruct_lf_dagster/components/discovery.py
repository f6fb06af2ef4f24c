"""A discovery: one goal over the document stream, declared in `defs/<name>/defs.yaml`.

Each discovery gets its own assets (`<name>/proposals`, ..., `<name>/document_factors`), jobs and refit schedule;
every discovery reads the shared `documents` asset.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal

import dagster as dg
from dagster._utils.schedules import is_valid_cron_string  # no public equivalent in Dagster 1.13
from pydantic import TypeAdapter, model_validator

from instruct_lf_dagster.core.pipeline import InstructLF
from instruct_lf_dagster.core.proposals import Budget, Example, Goal

DEFAULTS = InstructLF()  # the method's settings live there; the YAML's defaults are read from it
# Each discovery's assets, <name>/<stage>, in the order they run.
STAGES = (
    "proposals",
    "vocabulary",
    "linker",
    "compatibility",
    "latent_factors",
    "themes",
    "factor_report",
    "document_factors",
    "factor_prevalence",
    "html_report",
)


def _checked(kind: Any) -> dg.Resolver:
    """Validate a field while the YAML is resolved, so that an error names the file and the line.

    Dagster accepts a template string for every field of the YAML model; a value checked only by the component
    itself would fail later, naming the field but not the file.
    """
    adapter = TypeAdapter(kind)
    return dg.Resolver(
        lambda context, raw: adapter.validate_python(context.resolve_value(raw)), model_field_type=kind
    )


NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")  # a discovery's name: part of asset keys, job and folder names


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


class LLMSettings(dg.Model):
    """The LLM that proposes properties; empty: the environment's model (local: the embedded llama.cpp one)."""

    model: str | None = None
    api_key_env: str | None = None  # the name of the environment variable that holds the key, never the key


class ProposalBudget(dg.Model):
    """Which documents of a batch the LLM is asked about (picked by a hash of the name and the document id)."""

    max_documents: int | None = None  # per batch; empty: the environment's (the llm resource's)
    fraction: float = 1.0

    @model_validator(mode="after")
    def _in_range(self) -> ProposalBudget:
        Budget(self.max_documents, self.fraction)  # raises, naming the setting out of range
        return self


class VocabularySettings(dg.Model):
    merge_threshold: float = DEFAULTS.merge_threshold
    min_count: int = DEFAULTS.min_count


class LinkerSettings(dg.Model):
    epochs: int = DEFAULTS.linker_epochs
    batch_size: int = DEFAULTS.linker_batch_size
    lr: float = DEFAULTS.linker_lr
    patience: int = DEFAULTS.linker_patience
    val_fraction: float = DEFAULTS.linker_val_fraction
    train_seq_length: int | None = DEFAULTS.linker_seq_length  # shorter cuts while fine-tuning (CPU time)
    max_pairs: int | None = DEFAULTS.linker_max_pairs  # a seeded sample of (document, property) pairs


class FactorSettings(dg.Model):
    n_factors: int = 0  # 0: automatic, properties / 8 between 2 and 368
    l1: float = DEFAULTS.l1
    max_iter: int = DEFAULTS.max_iter
    warm_start: bool = DEFAULTS.warm_start
    n_themes: int = 0  # 0: automatic, about the square root of the factor count, between 3 and 15


class Discovery(dg.Component, dg.Resolvable, dg.Model):
    """Goal-conditioned latent factors over the document stream: one instance per goal."""

    name: Annotated[str, dg.Resolver(_name, model_field_type=str)]
    goal: Annotated[str, dg.Resolver(_goal, model_field_type=str)]
    document_kind: str = "document"
    examples: Annotated[list[WorkedExample], _checked(list[WorkedExample])] = []
    truncation: Annotated[Literal["head", "tail"], _checked(Literal["head", "tail"])] = DEFAULTS.truncation
    max_document_chars: Annotated[int, _checked(int)] = 1500
    llm: Annotated[LLMSettings, _checked(LLMSettings)] = LLMSettings()
    proposal_budget: Annotated[ProposalBudget, _checked(ProposalBudget)] = ProposalBudget()
    vocabulary: Annotated[VocabularySettings, _checked(VocabularySettings)] = VocabularySettings()
    linker: Annotated[LinkerSettings, _checked(LinkerSettings)] = LinkerSettings()
    factors: Annotated[FactorSettings, _checked(FactorSettings)] = FactorSettings()
    seed: Annotated[int, _checked(int)] = DEFAULTS.seed
    refit_cron: Annotated[str, dg.Resolver(_cron, model_field_type=str)] = "0 3 * * 1"

    def to_goal(self) -> Goal:
        """What the LLM is asked, for every document."""
        return Goal(
            text=self.goal,
            document_kind=self.document_kind,
            examples=tuple(Example(e.document, tuple(e.properties)) for e in self.examples),
            max_document_chars=self.max_document_chars,
            truncation=self.truncation,
        )

    def budget(self, max_documents: int | None = None) -> Budget:
        """The proposal budget; `max_documents`: the environment's limit, used when the YAML sets none."""
        limit = self.proposal_budget.max_documents
        return Budget(
            max_documents=max_documents if limit is None else limit, fraction=self.proposal_budget.fraction
        )

    def method(self, **compute: Any) -> InstructLF:
        """The method with this discovery's settings; `compute`: device, threads, encode_batch_size."""
        return InstructLF(
            n_factors=self.factors.n_factors or None,
            l1=self.factors.l1,
            truncation=self.truncation,
            merge_threshold=self.vocabulary.merge_threshold,
            min_count=self.vocabulary.min_count,
            linker_epochs=self.linker.epochs,
            linker_batch_size=self.linker.batch_size,
            linker_lr=self.linker.lr,
            linker_patience=self.linker.patience,
            linker_val_fraction=self.linker.val_fraction,
            linker_seq_length=self.linker.train_seq_length,
            linker_max_pairs=self.linker.max_pairs,
            max_iter=self.factors.max_iter,
            warm_start=self.factors.warm_start,
            n_themes=self.factors.n_themes or None,
            seed=self.seed,
            **compute,
        )

    def versions(self) -> dict[str, str]:
        """Code version of each stage: a hash of the settings it and its upstream stages read.

        Chained, so that an edit shows every downstream asset of this discovery as unsynced at once (Dagster
        would otherwise flag them only after the edited stage is re-materialised).
        """
        stages = {
            "proposals": [
                self.proposal_budget,
                self.goal,
                self.document_kind,
                self.examples,
                self.truncation,
                self.max_document_chars,
                self.llm.model,
            ],
            "vocabulary": [self.vocabulary],
            "linker": [self.linker, self.truncation, self.seed],
            "compatibility": [],
            "latent_factors": [self.factors, self.seed],
        }
        versions, upstream = {}, ""
        for stage, settings in stages.items():
            blob = json.dumps([upstream, settings], default=_plain, sort_keys=True)
            versions[stage] = upstream = hashlib.sha256(blob.encode()).hexdigest()[:16]
        for stage in STAGES[STAGES.index("latent_factors") + 1 :]:
            versions[stage] = versions["latent_factors"]
        return versions

    def key(self, stage: str) -> dg.AssetKey:
        return dg.AssetKey([self.name, stage])

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        from instruct_lf_dagster.assets import discovery_definitions

        return discovery_definitions(self)


def _plain(value: Any) -> Any:
    return value.model_dump() if isinstance(value, dg.Model) else str(value)
