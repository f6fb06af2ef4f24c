"""The demo's stored inputs give the same vocabulary, compatibility, factors, names and report.

Inputs (tests/golden/): 48 demo snippets in 3 batches and a deterministic stand-in for the LLM (properties are a
snippet's content words; a factor is named after its top property). The whole graph runs for real: MiniLM
fine-tuning, Linear CorEx, Dagster runs, local storage. `python tests/test_golden.py RECORD_DIR` writes the
expected outputs (recorded before a refactoring, compared after it).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

GOLDEN = Path(__file__).parent / "golden"
_STOP_WORDS = (  # words the stand-in never proposes
    "about after again against also although among another because been before being between both could "
    "does doing during each either enough every from have having here into itself just least less like "
    "made make makes many might more most much must never neither nothing only other over perhaps quite "
    "rather same seems should since some such than that their them then there these they thing things "
    "this those though through under until very what when where whether which while whom whose will with "
    "within without would your film films movie movies"
)
STOP = frozenset(_STOP_WORDS.split())


def properties(text: str) -> list[str]:
    """The stand-in LLM's answer: up to five content words of the snippet, as properties."""
    words = [w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 5 and w not in STOP]
    return [f"{w.capitalize()} quality" for w in dict.fromkeys(words)][:5] or ["General appeal"]


def register_llm() -> None:
    """Serve the stand-in as litellm provider `golden`, through the real client, cache and accounting."""
    import litellm

    class Golden(litellm.CustomLLM):
        def completion(self, *args, **kwargs):
            messages = kwargs["messages"]
            if messages[0]["content"].startswith("You name the latent "):
                top = messages[-1]["content"].split(": ", 1)[1].split(";")[0].split("\n")[0].strip()
                answer = {
                    "name": f"All about {top}",
                    "description": f"Snippets where {top.lower()} stands out.",
                }
            else:
                answer = {"properties": properties(messages[-1]["content"].rsplit("\n", 1)[-1])}
            return litellm.completion(
                model="openai/fake", messages=messages, mock_response=json.dumps(answer)
            )

    litellm.custom_provider_map = [p for p in litellm.custom_provider_map if p["provider"] != "golden"] + [
        {"provider": "golden", "custom_handler": Golden()}
    ]
    litellm.utils.custom_llm_setup()


def discovery():
    """The demo's discovery (its YAML), with the stand-in LLM and a short linker schedule (CI time)."""
    import yaml

    from instruct_lf_dagster.components import Discovery

    path = Path(__file__).resolve().parents[1] / "instruct_lf_dagster/defs/movie_critics/defs.yaml"
    attributes = yaml.safe_load(path.read_text())["attributes"]
    attributes.update(
        llm={"model": "golden/stand-in"},
        linker={"epochs": 3, "batch_size": 64, "train_seq_length": 64},
    )
    return Discovery.resolve_from_dict(attributes)


def outputs(home: Path) -> dict[str, object]:
    """Run documents -> ... -> html_report on the golden batches in `home`; what each stage produced."""
    import shutil

    import dagster as dg

    from instruct_lf_dagster.automation import all_batches_tags
    from instruct_lf_dagster.definitions import build_definitions
    from instruct_lf_dagster.partitions import batches
    from instruct_lf_dagster.resources.inbox import batch_key

    register_llm()
    shutil.copytree(GOLDEN / "documents", home / "inbox")
    keys = sorted(batch_key(p.name) for p in (home / "inbox").iterdir())
    defs = build_definitions("local", discoveries=[discovery()])
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(batches.name, keys)
        job = defs.resolve_job_def("all_discoveries")
        result = job.execute_in_process(instance=instance, tags=all_batches_tags(keys))
        assert result.success

        def value(stage: str):
            return result.asset_value(dg.AssetKey(["movie_critics", stage]))

        vocabulary, factors, themes, report = (
            value(s) for s in ("vocabulary", "latent_factors", "themes", "factor_report")
        )
        scored = value("document_factors")
    tables = home / "instruct_lf_tables" / "movie_critics__compatibility"
    stored = pd.concat([pd.read_parquet(p) for p in sorted(tables.glob("*.parquet"))])
    matrices = [
        np.frombuffer(r["matrix"], dtype="<f4").reshape(int(r["rows"]), int(r["columns"]))
        for _, r in stored.iterrows()
    ]
    (page,) = home.rglob("movie_critics_report.html")
    report = report.drop(columns=["examples"]).astype({"mi": float})
    return {
        "properties": list(vocabulary.properties),
        "compatibility": np.concatenate(matrices),
        "compatibility_ids": [i for ids in stored["document_ids"] for i in ids],
        "factor_ids": [int(i) for i in factors.ids],
        "assignment": [int(k) for k in factors.assignment],
        "weights": np.asarray(factors.model.w_, dtype=np.float32),
        "themes": [int(k) for k in themes.assignment],
        "report": report.to_dict(orient="list"),
        "scores": np.stack(scored["scores"].to_numpy()).astype(np.float32),
        "top_factor": [int(k) for k in scored["top_factor"]],
        "page": page.read_text(encoding="utf-8"),
    }


def save(found: dict[str, object], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {k: v for k, v in found.items() if isinstance(v, np.ndarray)}
    np.savez_compressed(folder / "expected.npz", **arrays)
    plain = {k: v for k, v in found.items() if k not in arrays}
    (folder / "expected.json").write_text(json.dumps(plain, indent=1, sort_keys=True, default=str))


@pytest.mark.integration
def test_the_demo_inputs_give_the_recorded_outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTRUCT_LF_HOME", str(tmp_path / "home"))
    found = outputs(tmp_path / "home")
    save(found, tmp_path / "found")  # through JSON, as recorded
    expected = json.loads((GOLDEN / "expected.json").read_text())
    got = json.loads((tmp_path / "found" / "expected.json").read_text())
    arrays = np.load(GOLDEN / "expected.npz")
    # Discrete outputs exactly; floats to what another CPU's kernels may round differently.
    for key in ("properties", "compatibility_ids", "factor_ids", "assignment", "themes", "top_factor"):
        assert got[key] == expected[key], key
    for key in ("compatibility", "weights", "scores"):
        np.testing.assert_allclose(found[key], arrays[key], atol=1e-4, err_msg=key)
    for column, values in expected["report"].items():
        if column == "mi":
            np.testing.assert_allclose(got["report"][column], values, atol=1e-4)
        else:
            assert got["report"][column] == values, column
    # The page as a reader gets it: the same elements, text and attributes (the template lays out whitespace
    # between tags and spells entities its own way), the judge's line on every card.
    page = readable(found["page"])
    assert page.count('<p class="judged"') == page.count('<article class="card"') > 0
    assert page == readable(expected["page"])


def readable(page: str) -> str:
    """An HTML page with whitespace between tags dropped, runs of whitespace collapsed and entities resolved."""
    import html

    return html.unescape(re.sub(r"\s+", " ", re.sub(r">\s+<", "><", page.strip())))


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        import os

        os.environ["INSTRUCT_LF_HOME"] = str(Path(tmp) / "home")
        save(outputs(Path(tmp) / "home"), Path(sys.argv[1]))
