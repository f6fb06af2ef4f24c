"""Declared discoveries on disk: write a new one's YAML, list them (`instruct-lf discovery new|list`)."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import dagster as dg
import yaml
from tabulate import tabulate

from instruct_lf_dagster.components import Discovery
from instruct_lf_dagster.components.scaffold import DiscoveryParams, DiscoveryScaffolder
from instruct_lf_dagster.core.discovery import NAME
from instruct_lf_dagster.definitions import DEFS_MODULE, declared, declared_each


def folder(defs_module: str = DEFS_MODULE) -> Path:
    """The folder of the discoveries' YAML files."""
    return Path(importlib.import_module(defs_module).__file__).parent


def new(name: str, params: DiscoveryParams, defs_module: str = DEFS_MODULE) -> str:
    """Write `<defs folder>/<name>/defs.yaml` with the component's scaffolder (what `dg scaffold defs` runs) and
    load it (a bad value is refused, naming the field); what to do next."""
    if not NAME.fullmatch(name):
        raise SystemExit(
            f"name {name!r}: use lower-case letters, digits and underscores (it names assets and jobs)"
        )
    target = folder(defs_module) / name
    if target.exists():
        raise SystemExit(f"{target} already exists: edit its defs.yaml, or choose another name")
    type_name = f"{Discovery.__module__.rpartition('.')[0]}.{Discovery.__name__}"  # as the YAML names it
    request = dg.ScaffoldRequest(
        type_name=type_name, target_path=target, scaffold_format="yaml", project_root=None, params=params
    )
    DiscoveryScaffolder().scaffold(request)
    try:
        declared(defs_module)
    except Exception as error:
        shutil.rmtree(target)
        cause = error.__cause__ or error
        raise SystemExit(f"not written, the discovery would not load: {cause}") from None
    return (
        f"wrote {target / 'defs.yaml'}\n"
        f"Next: add a worked example under `examples:` there (small models need one), then "
        f"`instruct-lf run --discovery {name}`; `dg list defs` shows its assets ({name}/...)."
    )


def describe(defs_module: str = DEFS_MODULE) -> str:
    """A table of the declared discoveries."""
    files = {}
    for path in sorted(folder(defs_module).glob("*/defs.yaml")):
        attributes = (yaml.safe_load(path.read_text()) or {}).get("attributes") or {}
        files.setdefault(attributes.get("name"), path)
    found, broken = declared_each(defs_module)
    rows = [
        (
            d.name,
            d.goal if len(d.goal) <= 60 else d.goal[:57] + "...",
            d.document_kind,
            d.llm.model or "(environment's)",
            d.refit_cron,
            str(files.get(d.name, "?")),
        )
        for d in sorted(found, key=lambda d: d.name)
    ]
    headers = ("name", "goal", "document kind", "model", "refit", "file")
    table = tabulate(rows, headers=headers, tablefmt="plain")
    problems = [f"{path} does not load: {reason}" for path, reason in broken.items()]
    return "\n\n".join([table, *problems])
