"""Declared discoveries on disk: write a new one's YAML, list them (`instruct-lf discovery new|list`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

import instruct_lf_dagster.defs
from instruct_lf_dagster.definitions import declared

FOLDER = Path(instruct_lf_dagster.defs.__file__).parent

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


def new(
    name: str, goal: str, document_kind: str, truncation: str = "head", refit_cron: str = "0 3 * * 1"
) -> str:
    """Write `defs/<name>/defs.yaml` and load it (a bad value is refused, naming the field); what to do next."""
    folder = FOLDER / name
    if folder.exists():
        raise SystemExit(f"{folder} already exists: edit its defs.yaml, or choose another name")
    text = TEMPLATE.format(
        name=name,
        goal=json.dumps(goal),  # a JSON string is a YAML string, with any quote or colon escaped
        document_kind=json.dumps(document_kind),
        kind=document_kind.replace('"', "'"),
        truncation=truncation,
        refit_cron=refit_cron,
    )
    folder.mkdir(parents=True)
    (folder / "defs.yaml").write_text(text)
    try:
        declared()
    except Exception as error:
        shutil.rmtree(folder)
        cause = error.__cause__ or error
        raise SystemExit(f"not written, the discovery would not load: {cause}") from None
    return (
        f"wrote {folder / 'defs.yaml'}\n"
        f"Next: add a worked example under `examples:` there (small models need one), then "
        f"`instruct-lf run --discovery {name}`; `dg list defs` shows its assets ({name}/...)."
    )


def describe() -> str:
    """A table of the declared discoveries."""
    files = {}
    for path in sorted(FOLDER.glob("*/defs.yaml")):
        attributes = (yaml.safe_load(path.read_text()) or {}).get("attributes") or {}
        files.setdefault(attributes.get("name"), path)
    rows = [("name", "goal", "document kind", "model", "refit", "file")]
    for d in sorted(declared()[0], key=lambda d: d.name):
        goal = d.goal if len(d.goal) <= 60 else d.goal[:57] + "..."
        model = d.llm.model or "(environment's)"
        rows.append((d.name, goal, d.document_kind, model, d.refit_cron, str(files.get(d.name, "?"))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)
