"""Artefacts (vocabulary, linker, Linear CorEx) as folders: the object's own `save` output and a manifest naming
its kind, so that loading needs no pickle."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path


def _artefact_kinds() -> dict[str, tuple[type, str]]:
    """Artefact kind -> (class with save/load, file or folder name inside the artefact folder)."""
    # Imported here: the core modules pull in torch, which a process that only reads tables never needs.
    from instruct_lf_dagster.core.factors import Factors
    from instruct_lf_dagster.core.linker import Linker
    from instruct_lf_dagster.core.vocabulary import Vocabulary

    return {
        "vocabulary": (Vocabulary, "vocabulary.json"),
        "linker": (Linker, "linker"),
        "factors": (Factors, "factors"),
    }


def dump_artefact(obj: object, folder: Path) -> None:
    """Save `obj` into `folder` (replacing it) with a manifest naming its kind."""
    matches = [(kind, name) for kind, (cls, name) in _artefact_kinds().items() if isinstance(obj, cls)]
    if not matches:
        raise TypeError(f"cannot store {type(obj).__name__}: not a DataFrame or a known artefact")
    kind, name = matches[0]
    staging = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        obj.save(staging / name)
        (staging / "manifest.json").write_text(json.dumps({"kind": kind, "saved_at": time.time()}))
    except BaseException:  # a failed save leaves the old artefact, and no half of one
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # Swap in one step so a crash mid-save never leaves a half-written artefact behind.
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)


def restore_artefact(folder: Path) -> object:
    """Load an artefact saved by `dump_artefact`."""
    kind = json.loads((folder / "manifest.json").read_text())["kind"]
    cls, name = _artefact_kinds()[kind]
    return cls.load(folder / name)
