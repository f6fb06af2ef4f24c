"""The whole asset graph, materialised with a deterministic fake LLM, the real MiniLM and a real DuckDB file."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from instruct_lf_dagster.assets import all_assets, all_checks
from instruct_lf_dagster.automation import all_batches_tags
from instruct_lf_dagster.partitions import batches
from instruct_lf_dagster.resources.compute import ComputeResource
from instruct_lf_dagster.resources.inbox import LocalInbox, S3Inbox
from instruct_lf_dagster.resources.llm import LLMResource
from instruct_lf_dagster.resources.storage import LocalStorage, S3Storage, StorageIOManager

pytestmark = pytest.mark.integration  # every test here runs the asset graph (MiniLM, DuckDB)

REVIEWS = [
    "A funny film that made me laugh out loud, the lead actor is brilliant.",
    "So scary, the ghost scenes kept me awake at night.",
    "A love story with one perfect kiss, a brilliant romance.",
    "The explosion in the final chase is spectacular action.",
    "Slow and boring, nothing happens for two hours.",
    "Funny and scary at once: a ghost comedy that made everyone laugh.",
    "A slow love story; the actor is brilliant but the plot is boring.",
    "Car chase after car chase, one explosion after another.",
]

RUN_CONFIG = {
    "ops": {
        "linker": {"config": {"epochs": 2, "batch_size": 8, "train_seq_length": 64, "seed": 0}},
        "latent_factors": {"config": {"n_factors": 3, "max_iter": 300, "seed": 0}},
    }
}


def write_batches(folder: Path, count: int = 3) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for b in range(count):
        records = [{"id": f"r{b}-{i}", "text": f"{text} (batch {b})"} for i, text in enumerate(REVIEWS)]
        (folder / f"reviews_{b}.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    return [f"reviews_{b}.jsonl" for b in range(count)]


def local_resources(tmp_path: Path) -> dict:
    storage = LocalStorage(database=str(tmp_path / "platform.duckdb"), artefacts=str(tmp_path / "artefacts"))
    return {
        "io_manager": StorageIOManager(storage=storage),
        "storage": storage,
        "inbox": LocalInbox(path=str(tmp_path / "inbox")),
        "llm": LLMResource(model="keywords/fake", cache_path=str(tmp_path / "llm_cache.duckdb")),
        "compute": ComputeResource(device="cpu", encode_batch_size=16),
    }


def run(resources: dict, instance: dg.DagsterInstance, keys: list[str], selection=None, raise_on_error=True):
    return dg.materialize(
        [*all_assets, *all_checks],
        resources=resources,
        instance=instance,
        run_config=RUN_CONFIG if selection is None else {},
        tags=all_batches_tags(keys),
        selection=selection,
        raise_on_error=raise_on_error,
    )


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def test_whole_graph_then_backfill_is_idempotent(tmp_path, keyword_llm, instance):
    keys = write_batches(tmp_path / "inbox")
    instance.add_dynamic_partitions(batches.name, keys)
    resources = local_resources(tmp_path)

    result = run(resources, instance, keys)
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["compatibility_is_finite"] and checks["every_property_assigned"]
    assert checks["llm_failure_rate"]

    storage = resources["storage"]
    scores = storage.read_table("document_factors", keys)
    assert len(scores) == 3 * len(REVIEWS)
    assert {len(s) for s in scores["scores"]} == {3}
    vocab = storage.load_artefact("vocabulary")
    assert "Comedy genre" in vocab.properties and "Horror genre" in vocab.properties
    report = storage.read_table("factor_report")
    assert sorted(report["property"]) == sorted(vocab.properties)  # every property in exactly one factor
    # Every document is distinct, so each was asked exactly once.
    calls = keyword_llm.calls
    assert calls == 3 * len(REVIEWS)

    # Backfill one batch again: same rows, no new LLM call.
    before = storage.read_table("document_factors", keys).sort_values("document_id")
    again = run(resources, instance, [keys[1]], selection=dg.AssetSelection.groups("batches"))
    assert again.success
    after = storage.read_table("document_factors", keys).sort_values("document_id")
    assert len(after) == len(before)
    assert keyword_llm.calls == calls
    np.testing.assert_allclose(np.stack(after["scores"]), np.stack(before["scores"]), atol=1e-5)


def test_same_inputs_give_the_same_factors(tmp_path, keyword_llm, instance):
    keys = write_batches(tmp_path / "inbox", count=2)
    instance.add_dynamic_partitions(batches.name, keys)
    reports = []
    for attempt in ("one", "two"):
        resources = local_resources(tmp_path / attempt)
        resources["inbox"] = LocalInbox(path=str(tmp_path / "inbox"))
        assert run(resources, instance, keys).success
        reports.append(resources["storage"].read_table("factor_report").sort_values(["factor", "rank"]))
    assert reports[0]["property"].tolist() == reports[1]["property"].tolist()
    assert reports[0]["factor"].tolist() == reports[1]["factor"].tolist()


def test_a_bad_file_fails_its_batch_only(tmp_path, keyword_llm, instance):
    keys = write_batches(tmp_path / "inbox", count=2)
    (tmp_path / "inbox" / "broken.csv").write_text("body\nno text column here\n")
    keys.append("broken.csv")
    instance.add_dynamic_partitions(batches.name, keys)
    resources = local_resources(tmp_path)

    result = run(resources, instance, keys)
    assert result.success
    docs = resources["storage"].read_table("documents", keys)
    assert set(docs["batch"]) == set(keys[:2])
    meta = result.asset_materializations_for_node("documents")[0].metadata
    assert "broken.csv: no 'text' column" in meta["failed_batches"].data["broken.csv"]

    alone = run(resources, instance, ["broken.csv"], selection=["documents"], raise_on_error=False)
    assert not alone.success
    failure = next(e for e in alone.all_events if e.is_step_failure)
    assert "broken.csv: no 'text' column" in str(failure.step_failure_data.user_failure_data.description)
    assert len(resources["storage"].read_table("documents", keys)) == 2 * len(REVIEWS)


def test_s3_environment(tmp_path, keyword_llm, instance, s3_bucket):
    s3, bucket = s3_bucket
    keys = write_batches(tmp_path / "local_inbox", count=2)
    for key in keys:
        s3.get_client().upload_file(str(tmp_path / "local_inbox" / key), bucket, f"inbox/{key}")
    instance.add_dynamic_partitions(batches.name, keys)
    storage = S3Storage(s3=s3, bucket=bucket, prefix="prod")
    resources = {
        **local_resources(tmp_path),
        "io_manager": StorageIOManager(storage=storage),
        "storage": storage,
        "inbox": S3Inbox(s3=s3, bucket=bucket, prefix="inbox/"),
    }
    assert run(resources, instance, keys).success
    listed = s3.get_client().list_objects_v2(Bucket=bucket, Prefix="prod/")["Contents"]
    names = {item["Key"] for item in listed}
    assert "prod/tables/document_factors/reviews_0.jsonl.parquet" in names
    assert "prod/artefacts/linker/manifest.json" in names
    assert len(storage.read_table("document_factors", keys)) == 2 * len(REVIEWS)
