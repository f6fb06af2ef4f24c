"""Declared discoveries on disk: write a new one's YAML, list them (`instruct-lf discovery new|list`)."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import yaml

from instruct_lf_dagster.components.discovery import NAME
from instruct_lf_dagster.definitions import DEFS_MODULE, declared

TEMPLATE = """\
# A discovery: one goal over the document stream. Edit and check with `dg check defs`; every field is in
# instruct_lf_dagster/components/discovery.py. An edit shows this discovery's assets as unsynced in the UI.
type: instruct_lf_dagster.components.Discovery

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
  # linker: {{epochs: 20, batch_size: 512}}
  # factors: {{n_factors: 0, l1: 0.0}}  # 0 factors: properties / 8
  refit_cron: "{refit_cron}"
"""


def folder(defs_module: str = DEFS_MODULE) -> Path:
    """The folder of the discoveries' YAML files."""
    return Path(importlib.import_module(defs_module).__file__).parent


def new(
    name: str,
    goal: str,
    document_kind: str,
    truncation: str = "head",
    refit_cron: str = "0 3 * * 1",
    defs_module: str = DEFS_MODULE,
) -> str:
    """Write `<defs folder>/<name>/defs.yaml` and load it (a bad value is refused, naming the field); what next."""
    if not NAME.fullmatch(name):
        raise SystemExit(
            f"name {name!r}: use lower-case letters, digits and underscores (it names assets and jobs)"
        )
    target = folder(defs_module) / name
    if target.exists():
        raise SystemExit(f"{target} already exists: edit its defs.yaml, or choose another name")
    text = TEMPLATE.format(
        name=name,
        goal=json.dumps(goal),  # a JSON string is a YAML string, with any quote or colon escaped
        document_kind=json.dumps(document_kind),
        kind=document_kind.replace('"', "'"),
        truncation=truncation,
        refit_cron=refit_cron,
    )
    target.mkdir(parents=True)
    (target / "defs.yaml").write_text(text)
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
    rows = [("name", "goal", "document kind", "model", "refit", "file")]
    for d in sorted(declared(defs_module)[0], key=lambda d: d.name):
        goal = d.goal if len(d.goal) <= 60 else d.goal[:57] + "..."
        model = d.llm.model or "(environment's)"
        rows.append((d.name, goal, d.document_kind, model, d.refit_cron, str(files.get(d.name, "?"))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)
