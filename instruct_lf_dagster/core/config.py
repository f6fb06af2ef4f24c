"""The method's settings, each declared once with its default and its range.

These models are at once `InstructLF`'s settings and the schema of a discovery's YAML (the Dagster component
declares fields of these types), so a default or a range is written here and nowhere else. Unknown fields are
refused, so a typo fails when the YAML loads, not in a run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Truncation = Literal["head", "tail"]
_BOUNDS = {  # JSON-schema keyword -> (test that passes, words of the message)
    "minimum": (lambda v, b: v >= b, "at least"),
    "exclusiveMinimum": (lambda v, b: v > b, "more than"),
    "maximum": (lambda v, b: v <= b, "at most"),
    "exclusiveMaximum": (lambda v, b: v < b, "less than"),
}


def setting(default: object, description: str = "", **bounds: float) -> object:
    """A field with its default, what it means and its range as JSON-schema bounds (`minimum=1`, ...).

    The range is checked by `Settings` rather than by pydantic's `ge=`/`le=`: those become `Annotated` metadata,
    which Dagster's component schema refuses in a nested model.
    """
    unknown = set(bounds) - set(_BOUNDS)
    if unknown:
        raise TypeError(f"unknown bounds {sorted(unknown)}")
    return Field(default, description=description or None, json_schema_extra=bounds or None)


class Settings(BaseModel):
    """A frozen group of settings; `extra="forbid"` turns a misspelt field into an error naming it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="after")
    def _in_range(self) -> Settings:
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            if not isinstance(info.json_schema_extra, dict) or value is None:
                continue
            for keyword, bound in info.json_schema_extra.items():
                passes, words = _BOUNDS[keyword]
                if not passes(value, bound):
                    raise ValueError(f"{name} must be {words} {bound:g}, not {value!r}")
        return self

    def but(self, **changes: object) -> Settings:
        """A validated copy with `changes`; a dict given for a nested group changes only the fields it names:
        `config.but(factors={"n_factors": 5})`. (pydantic's `model_copy(update=...)` skips validation.)"""
        merged = self.model_dump()
        for name, value in changes.items():
            if isinstance(value, dict) and isinstance(merged.get(name), dict):
                merged[name] = {**merged[name], **value}
            else:
                merged[name] = value.model_dump() if isinstance(value, Settings) else value
        return type(self).model_validate(merged)


class VocabularyConfig(Settings):
    """How proposed properties are folded into the vocabulary."""

    merge_threshold: float = setting(
        0.9, minimum=0, maximum=1, description="MiniLM cosine at or above which two merge"
    )
    min_count: int = setting(1, minimum=1, description="drop properties proposed fewer times than this")
    exclude: Sequence[str] = setting(
        (),
        description="regular expressions (searched ignoring case): matching properties are kept out of the "
        "vocabulary and listed as excluded, besides the built-in rules (instructions, code, the goal restated)",
    )

    @field_validator("exclude")
    @classmethod
    def _compiles(cls, patterns: Sequence[str]) -> tuple[str, ...]:
        # A tuple, so that the frozen settings stay hashable (the YAML gives a list).
        patterns = tuple(patterns)
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(
                    f"exclude pattern {pattern!r} is not a regular expression: {error}"
                ) from None
        return patterns


class LinkerConfig(Settings):
    """How the dual encoder (MiniLM) is fine-tuned on (document, property) pairs."""

    epochs: int = setting(20, "passes over the pairs; 0: the untrained encoder", minimum=0)
    batch_size: int = setting(512, minimum=2, description="pairs per step; the loss uses in-batch negatives")
    lr: float = setting(5e-5, exclusiveMinimum=0)
    patience: int = setting(2, minimum=1, description="epochs without validation improvement before stopping")
    val_fraction: float = setting(
        0.1, minimum=0, exclusiveMaximum=1, description="share of pairs held out for early stopping"
    )
    max_seq_length: int = setting(256, minimum=8, description="tokens per text the linker encodes")
    train_seq_length: int | None = setting(
        None, minimum=8, description="shorter cuts while fine-tuning (CPU time); empty: max_seq_length"
    )
    max_pairs: int | None = setting(
        None, minimum=1, description="fine-tune on a seeded sample of this many (document, property) pairs"
    )


class FactorConfig(Settings):
    """Linear CorEx over the compatibility matrix, and the themes layer over the factors."""

    n_factors: int = setting(0, minimum=0, description="0: automatic, properties / 8 between 2 and 368")
    l1: float = setting(
        0.0, minimum=0, description="sparsity penalty; 0 fits from batch statistics (quasi-Newton)"
    )
    max_iter: int = setting(1000, minimum=1, description="optimiser steps per annealing stage")
    warm_start: bool = setting(
        True, description="a refit starts from the last fit when its factor count matches"
    )
    n_themes: int = setting(
        0, minimum=0, description="0: automatic, about the square root of the factor count"
    )


class ComputeConfig(Settings):
    """Where and how fast the method runs: set by the platform's compute resource, never by a discovery."""

    device: str = setting("cpu", description="'cpu' or 'cuda[:N]'")
    threads: int | None = setting(
        None, minimum=1, description="CPU threads for CorEx; empty: torch's default"
    )
    encode_batch_size: int = setting(64, minimum=1, description="texts per encoder forward pass")
    train_mini_batch_size: int = setting(
        8,
        minimum=1,
        description="texts embedded at once with gradients while fine-tuning (the loss still sees every "
        "in-batch negative): on a CPU, 8 peaks at 1.6 GiB against 3.0 GiB for 32 and runs faster",
    )


class SeedFactor(Settings):
    """A factor asked for by name: its properties join the vocabulary (the linker scores every document on them)
    and anchor one factor of the fit (Anchored CorEx, `core.corex.objective._anchored`), named `name`.

    The strength, chosen on a planted corpus (tests/test_corex_anchors.py, six seeds): at 1 the anchored factor
    holds a weak group, with or without a stray property of another factor, in every fit; at 0.5 in 5 of 6 with
    a stray; the rest of the fit moves by about 0.01 nats. At 2, groups with two strays came apart.
    """

    name: str = Field(description="the factor's name, pinned: the LLM is not asked for it")
    properties: Sequence[str] = Field(description="its properties, as the LLM would propose them")
    strength: float = setting(
        1.0,
        minimum=0,
        maximum=2,
        description="how strongly the fit rewards the factor for its seed properties",
    )

    @field_validator("name")
    @classmethod
    def _named(cls, name: str) -> str:
        if not name.strip():
            raise ValueError("a seed factor's name is empty")
        return " ".join(name.split())

    @field_validator("properties")
    @classmethod
    def _some(cls, properties: Sequence[str]) -> tuple[str, ...]:
        properties = tuple(p for p in (" ".join(str(p).split()) for p in properties) if p)
        if not properties:
            raise ValueError("a seed factor needs at least one property")
        return properties  # a tuple, so that the frozen settings stay hashable (the YAML gives a list)


class MethodConfig(Settings):
    """Every setting of the method after proposal: what `InstructLF` does."""

    truncation: Truncation = setting("head", description="which end of long documents the encoder keeps")
    vocabulary: VocabularyConfig = VocabularyConfig()
    linker: LinkerConfig = LinkerConfig()
    factors: FactorConfig = FactorConfig()
    seed: int = setting(0, description="seeds every random step")
    seed_factors: Sequence[SeedFactor] = setting(
        (), description="factors asked for by name, each kept together from its properties"
    )

    @field_validator("seed_factors")
    @classmethod
    def _seeds(cls, seeds: Sequence[SeedFactor]) -> tuple[SeedFactor, ...]:
        return tuple(seeds)
