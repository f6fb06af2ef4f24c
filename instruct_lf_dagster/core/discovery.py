"""A discovery: one goal over the document stream, with everything its assets are built from.

`DiscoverySpec` is Dagster-free and frozen: the component resolves a discovery's YAML into one, and the assets,
checks, jobs and schedules are built from it (they read it, never the component).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from instruct_lf_dagster.core.config import ComputeConfig, MethodConfig, Settings
from instruct_lf_dagster.core.curation import Curation
from instruct_lf_dagster.core.pipeline import InstructLF
from instruct_lf_dagster.core.proposals import Goal, ProposalBudget

NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")  # a discovery's name: part of asset keys, job and folder names

# Each discovery's assets, <name>/<stage>, in the order they run.
STAGES = (
    "proposals",
    "vocabulary",
    "linker",
    "compatibility",
    "latent_factors",
    "themes",
    "factor_report",
    "judged_quality",
    "document_factors",
    "factor_prevalence",
    "html_report",
)


class DiscoveryLLM(Settings):
    """The LLM a discovery asks; empty: the environment's model (local: the embedded llama.cpp one)."""

    model: str | None = None
    api_key_env: str | None = None  # the name of the environment variable that holds the key, never the key


@dataclass(frozen=True)
class DiscoverySpec:
    """What one discovery is: its name, the goal the LLM is given, its budget, its LLM, the method's settings and
    the curation of what it found."""

    name: str
    goal: Goal
    method: MethodConfig = MethodConfig()
    budget: ProposalBudget = ProposalBudget()
    llm: DiscoveryLLM = DiscoveryLLM()
    refit_cron: str = "0 3 * * 1"
    curation: Curation = Curation()

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.name):
            raise ValueError(
                f"name {self.name!r}: use lower-case letters, digits and underscores (it names assets and jobs)"
            )

    def key(self, stage: str) -> list[str]:
        """The asset key path of `stage` (one of `STAGES`): `[name, stage]`."""
        if stage not in STAGES:
            raise ValueError(f"no stage {stage!r}; the stages are {', '.join(STAGES)}")
        return [self.name, stage]

    def proposal_budget(self, environment_limit: int | None) -> ProposalBudget:
        """The budget with the environment's per-batch limit where the discovery sets none."""
        if self.budget.max_documents is not None:
            return self.budget
        return self.budget.but(max_documents=environment_limit)

    def instruct_lf(self, compute: ComputeConfig) -> InstructLF:
        """The method with this discovery's settings, on `compute`."""
        return InstructLF(self.method, compute)

    def versions(self) -> dict[str, str]:
        """Code version of each stage: a hash of the settings it and its upstream stages read.

        Chained, so that an edit shows every downstream asset of this discovery as unsynced at once (Dagster
        would otherwise flag them only after the edited stage is re-materialised). A stage that reads nothing of
        its own inherits its upstream's version; the curation is read from `factor_report` on, so editing it
        re-runs only the reporting stages (and no curation leaves every version as it was before curation).
        """
        m = self.method
        reads = {
            "proposals": [self.budget, self.goal, self.llm.model],
            "vocabulary": [m.vocabulary],
            "linker": [m.linker, m.truncation, m.seed],
            "compatibility": [],
            "latent_factors": [m.factors, m.seed],
        }
        if m.seed_factors:  # only when set: discoveries without them keep their versions
            reads["vocabulary"].append(m.seed_factors)
        if self.curation:
            reads["factor_report"] = [self.curation]
        versions, upstream = {}, ""
        for stage in STAGES:
            if stage in reads:
                blob = json.dumps([upstream, reads[stage]], default=_plain, sort_keys=True)
                upstream = hashlib.sha256(blob.encode()).hexdigest()[:16]
            versions[stage] = upstream
        return versions


def _plain(value: object) -> object:
    if isinstance(value, Settings):
        return value.model_dump()
    if isinstance(value, Goal):
        return repr(value)
    return str(value)
