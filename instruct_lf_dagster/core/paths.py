"""Where the platform keeps its files (one data directory, chosen by INSTRUCT_LF_HOME), and staying offline."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """The platform's data directory (models, DuckDB file, artefacts); created on first use."""
    path = Path(os.environ.get("INSTRUCT_LF_HOME", Path.cwd() / "data")).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def offline_defaults() -> None:
    """Keep litellm and Hugging Face libraries off the network; call before they are first imported.

    litellm fetches its price table when imported unless told to use its bundled copy; every model here is
    loaded from a local path.
    """
    defaults = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for name, value in defaults.items():
        os.environ.setdefault(name, value)
