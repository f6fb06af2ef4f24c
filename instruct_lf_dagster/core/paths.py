"""Where the platform keeps its files: one data directory, chosen by INSTRUCT_LF_HOME."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """The platform's data directory (models, DuckDB file, artefacts); created on first use."""
    path = Path(os.environ.get("INSTRUCT_LF_HOME", Path.cwd() / "data")).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
