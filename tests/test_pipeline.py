"""The asset graph of declared discoveries, materialised with a deterministic fake LLM, the real MiniLM and a real
DuckDB file."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from instruct_lf_dagster import cli
from instruct_lf_dagster.assets import documents
from instruct_lf_dagster.automation import all_batches_tags
from instruct_lf_dagster.components import Discovery
from instruct_lf_dagster.components.discovery import discovery_definitions
from instruct_lf_dagster.fitted import load_discovery
from instruct_lf_dagster.partitions import batches
from instruct_lf_dagster.resources.compute import ComputeResource
from instruct_lf_dagster.resources.inbox import LocalInbox, S3Inbox, batch_key
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


def discovery(name: str = "reviews", goal: str = "What makes a film worth watching?", **changes) -> Discovery:
    """A small, fast discovery (2 linker epochs, 3 factors)."""
    attributes = {
        "name": name,
        "goal": goal,
        "document_kind": "movie review",
        "linker": {"epochs": 2, "batch_size": 8, "train_seq_length": 64},
        "factors": {"n_factors": 3, "max_iter": 300},
        **changes,
    }
    return Discovery.resolve_from_dict(attributes)


def write_batches(folder: Path, count: int = 3) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for b in range(count):
        records = [{"id": f"r{b}-{i}", "text": f"{text} (batch {b})"} for i, text in enumerate(REVIEWS)]
        (folder / f"reviews_{b}.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    return [f"reviews_{b}.jsonl" for b in range(count)]


def local_resources(tmp_path: Path) -> dict:
    storage = LocalStorage(home=str(tmp_path / "home"))
    return {
        "io_manager": StorageIOManager(storage=storage),
        "storage": storage,
        "inbox": LocalInbox(path=str(tmp_path / "inbox")),
        "llm": LLMResource(model="keywords/fake", cache_path=str(tmp_path / "llm_cache.duckdb")),
        "compute": ComputeResource(device="cpu", encode_batch_size=16),
    }


def graph(*discoveries: Discovery) -> list:
    """The shared documents and every asset and check of `discoveries`."""
    defs = dg.Definitions.merge(*(discovery_definitions(d.spec()) for d in discoveries))
    return [documents, *defs.assets, *defs.asset_checks]


def run(resources, instance, keys, discoveries=None, selection=None, raise_on_error=True):
    return dg.materialize(
        graph(*(discoveries or [discovery()])),
        resources=resources,
        instance=instance,
        tags=all_batches_tags(keys),
        selection=selection,
        raise_on_error=raise_on_error,
    )


def table(resources: dict, name: str, keys=None):
    return resources["storage"].read_table(name, keys)


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
    scores = storage.read_table("reviews__document_factors", keys)
    assert len(scores) == 3 * len(REVIEWS)
    assert {len(s) for s in scores["scores"]} == {3}
    vocab = storage.load_artefact("reviews__vocabulary")
    assert "Comedy genre" in vocab.properties and "Horror genre" in vocab.properties
    report = storage.read_table("reviews__factor_report")
    assert sorted(report["property"]) == sorted(vocab.properties)  # every property in exactly one factor
    # Every document is distinct, so each was asked exactly once.
    calls = keyword_llm.calls
    assert keyword_llm.proposal_calls == 3 * len(REVIEWS)
    report = storage.read_table("reviews__factor_report")
    # and one call naming each factor, one each theme of two factors or more (a theme of one factor takes its
    # name); the judge: relevance of each factor, intrusion of each factor with 5 properties or more (5 shown
    # and 1 planted)
    asked = int((report.groupby("factor").size() >= 5).sum())
    factors_of = report.groupby("theme")["factor"].nunique()
    themes_asked = int((factors_of > 1).sum())
    assert calls == 3 * len(REVIEWS) + 2 * report["factor"].nunique() + themes_asked + asked
    assert (report["theme"] >= 0).all() and report["theme_name"].str.len().gt(0).all()
    single = report[report["theme"].isin(factors_of[factors_of == 1].index)]
    assert (single["theme_name"] == single["name"]).all()
    assert report["named_by_llm"].all() and report["name"].str.startswith("All about ").all()

    # Backfill one batch again: same rows, no new LLM call.
    before = storage.read_table("reviews__document_factors", keys).sort_values("document_id")
    rescore = [dg.AssetKey(["reviews", s]) for s in ("proposals", "compatibility", "document_factors")]
    again = run(resources, instance, [keys[1]], selection=rescore)
    assert again.success
    after = storage.read_table("reviews__document_factors", keys).sort_values("document_id")
    assert len(after) == len(before)
    assert keyword_llm.calls == calls
    np.testing.assert_allclose(np.stack(after["scores"]), np.stack(before["scores"]), atol=1e-5)


def test_the_fitted_discovery_scores_texts_as_document_factors_stored_them(
    tmp_path, keyword_llm, instance, monkeypatch, capsys
):
    keys = write_batches(tmp_path / "inbox", count=1)
    instance.add_dynamic_partitions(batches.name, keys)
    resources = local_resources(tmp_path)
    assert run(resources, instance, keys).success
    stored = table(resources, "reviews__document_factors", keys).sort_values("document_id", ignore_index=True)
    docs = table(resources, "documents", keys).set_index("document_id").loc[stored["document_id"]]

    fitted = load_discovery("reviews", resources["storage"])
    scored = fitted.transform(docs["text"].tolist())
    assert list(scored.columns[:3]) == fitted.columns() and len(set(fitted.columns())) == 3
    np.testing.assert_allclose(scored[fitted.columns()].to_numpy(), np.stack(stored["scores"]), atol=1e-5)
    for column in ("top_factor", "top_factor_name", "top_factor_pole", "evidence"):
        assert scored[column].tolist() == stored[column].tolist(), column
    assert fitted.transform([]).empty and list(fitted.transform([]).columns[:3]) == fitted.columns()
    assert all(name in fitted.describe() for name in fitted.names.values())

    # The command line, on a file with bad rows: they are reported and skipped, the others scored.
    lines = [json.dumps({"id": "a", "text": REVIEWS[0]}), "{not json", json.dumps({"id": "b", "text": "  "})]
    lines.append(json.dumps({"id": "c", "text": REVIEWS[3]}))
    (tmp_path / "new.jsonl").write_text("\n".join(lines))
    monkeypatch.setenv("INSTRUCT_LF_HOME", str(tmp_path / "home"))
    out = tmp_path / "scores.parquet"
    assert cli.main(["score", "--discovery", "reviews", str(tmp_path / "new.jsonl"), "--out", str(out)]) == 0
    written = pd.read_parquet(out)
    assert written["document_id"].tolist() == ["a", "c"]
    expected = fitted.transform([REVIEWS[0], REVIEWS[3]])
    np.testing.assert_allclose(written[fitted.columns()].to_numpy(), expected[fitted.columns()], atol=1e-5)
    err = capsys.readouterr().err
    assert "undecodable_rows" in err and "empty_skipped" in err and "2 documents scored" in err
    with pytest.raises(SystemExit, match="no linker, latent_factors, factor_report"):
        cli.main(["score", "--discovery", "nothing_here", str(tmp_path / "new.jsonl")])


def test_same_inputs_give_the_same_factors(tmp_path, keyword_llm, instance):
    keys = write_batches(tmp_path / "inbox", count=2)
    instance.add_dynamic_partitions(batches.name, keys)
    reports = []
    for attempt in ("one", "two"):
        resources = local_resources(tmp_path / attempt)
        resources["inbox"] = LocalInbox(path=str(tmp_path / "inbox"))
        assert run(resources, instance, keys).success
        reports.append(table(resources, "reviews__factor_report").sort_values(["factor", "rank"]))
    assert reports[0]["property"].tolist() == reports[1]["property"].tolist()
    assert reports[0]["factor"].tolist() == reports[1]["factor"].tolist()


def test_a_bad_file_fails_its_batch_only(tmp_path, keyword_llm, instance):
    keys = write_batches(tmp_path / "inbox", count=2)
    (tmp_path / "inbox" / "broken.csv").write_text("body\nno text column here\n")
    keys.append("broken.csv")
    keys.append("gone.jsonl")  # registered, then its file was deleted
    instance.add_dynamic_partitions(batches.name, keys)
    resources = local_resources(tmp_path)

    result = run(resources, instance, keys)
    assert result.success
    docs = resources["storage"].read_table("documents", keys)
    assert set(docs["batch"]) == set(keys[:2])
    meta = result.asset_materializations_for_node("documents")[0].metadata
    assert "broken.csv: no 'text' column" in meta["failed_batches"].data["broken.csv"]
    assert "no file for it" in meta["failed_batches"].data["gone.jsonl"]

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
    storage = S3Storage(s3=s3, bucket=bucket, prefix="prod", local_cache=str(tmp_path / "home" / "s3_cache"))
    resources = {
        **local_resources(tmp_path),
        "io_manager": StorageIOManager(storage=storage),
        "storage": storage,
        "inbox": S3Inbox(s3=s3, bucket=bucket, prefix="inbox/"),
    }
    assert run(resources, instance, keys).success
    listed = s3.get_client().list_objects_v2(Bucket=bucket, Prefix="prod/")["Contents"]
    names = {item["Key"] for item in listed}
    assert "prod/tables/reviews__document_factors/reviews_0.jsonl.parquet" in names
    assert "prod/artefacts/reviews__linker/manifest.json" in names
    assert len(storage.read_table("reviews__document_factors", keys)) == 2 * len(REVIEWS)

    # The answers live in the bucket, not on the run's disk (a pod's is gone after the run): the LLM steps
    # run again pay for nothing.
    assert any(name.startswith("prod/llm_cache/") for name in names)
    assert not (tmp_path / "llm_cache.duckdb").exists()
    calls = keyword_llm.calls
    llm_steps = [dg.AssetKey(["reviews", "proposals"]), dg.AssetKey(["reviews", "factor_report"])]
    assert run(resources, instance, keys, selection=llm_steps).success
    assert keyword_llm.calls == calls


def test_two_discoveries_over_one_inbox_in_one_run(tmp_path, keyword_llm, instance):
    keys = write_batches(tmp_path / "inbox", count=2)
    instance.add_dynamic_partitions(batches.name, keys)
    resources = local_resources(tmp_path)
    churn = discovery("churn", "Why do customers leave?")
    features = discovery("features", "Which features do customers ask for?", document_kind="support ticket")
    assert run(resources, instance, keys, discoveries=[churn, features]).success

    # Each discovery's prompts carried its own goal and document kind.
    systems = [m[0]["content"] for m in keyword_llm.requests if m[0]["content"].startswith("You analyze")]
    assert sum("Why do customers leave?" in s for s in systems) == 2 * len(REVIEWS)
    assert sum(
        "Which features do customers ask for?" in s and "support ticket" in s for s in systems
    ) == 2 * len(REVIEWS)
    for d in (churn, features):
        assert len(table(resources, f"{d.name}__factor_report")) > 0
        assert len(table(resources, f"{d.name}__document_factors", keys)) == 2 * len(REVIEWS)
    # documents ran once per batch, for both discoveries.
    records = instance.fetch_materializations(dg.AssetKey("documents"), limit=100).records
    assert sorted(r.partition_key for r in records) == sorted(keys)


def test_the_method_object_and_the_asset_graph_agree_under_a_proposal_budget(tmp_path, keyword_llm, instance):
    keys = write_batches(tmp_path / "inbox", count=2)
    instance.add_dynamic_partitions(batches.name, keys)
    resources = local_resources(tmp_path)
    d = discovery(proposal_budget={"fraction": 0.6})
    assert run(resources, instance, keys, discoveries=[d]).success
    docs = table(resources, "documents", keys)
    proposed = table(resources, "reviews__proposals", keys)
    assert 0 < len(proposed) < len(docs) and keyword_llm.proposal_calls == len(proposed)
    assert set(proposed["document_id"]) == {
        i
        for i, p in zip(
            docs["document_id"], d.proposal_budget.pick("reviews", docs["document_id"]), strict=True
        )
        if p
    }
    scores = table(resources, "reviews__document_factors", keys)
    assert sorted(scores["document_id"]) == sorted(docs["document_id"])  # unproposed documents are scored too

    # The method object, given the same proposals (None: not proposed), runs the same stages bit for bit.
    from instruct_lf_dagster.assets.matrix import read
    from instruct_lf_dagster.core.compatibility import EmbeddingCache
    from instruct_lf_dagster.core.config import ComputeConfig
    from instruct_lf_dagster.core.corex import CorexStatistics

    aligned = docs.merge(proposed, on=["batch", "document_id"], how="left")["properties"]
    proposals = [list(p) if isinstance(p, list | np.ndarray) else None for p in aligned]
    method = d.spec().instruct_lf(ComputeConfig(encode_batch_size=16)).fit(docs["text"].tolist(), proposals)
    storage = resources["storage"]
    assert method.vocabulary_ == storage.load_artefact("reviews__vocabulary")
    assert method.linker_.fingerprint == storage.load_artefact("reviews__linker").fingerprint
    width = len(method.vocabulary_)
    matrices = [read(storage, "reviews__compatibility", key, width)[1] for key in keys]
    # Encoded as the graph encodes, one batch per call: an embedding moves in the 7th digit with the texts that
    # share its encoder batch (padding), enough to move a fit on data as small as this.
    for key, matrix in zip(keys, matrices, strict=True):
        method.cache = EmbeddingCache()
        np.testing.assert_array_equal(
            matrix, method.compatibility(docs.loc[docs["batch"] == key, "text"].tolist())
        )
    graph_factors = storage.load_artefact("reviews__latent_factors")
    refit = method.fit_factors_from_statistics(CorexStatistics.of(matrices), method.vocabulary_.properties)
    assert refit.properties == graph_factors.properties
    np.testing.assert_array_equal(refit.model.w_, graph_factors.model.w_)
    unproposed = ~docs["document_id"].isin(proposed["document_id"])
    by_id = dict(zip(scores["document_id"], scores["scores"], strict=True))
    np.testing.assert_allclose(
        np.stack([by_id[i] for i in docs.loc[unproposed, "document_id"]]),
        refit.scores(np.concatenate(matrices)[unproposed.to_numpy()]),
        atol=1e-6,
    )

    # A backfill of one batch asks about the same documents again: no new call.
    calls = keyword_llm.calls
    assert run(
        resources, instance, [keys[0]], discoveries=[d], selection=[dg.AssetKey(d.spec().key("proposals"))]
    ).success
    assert keyword_llm.calls == calls
    assert set(table(resources, "reviews__proposals", keys)["document_id"]) == set(proposed["document_id"])


def test_a_goal_edit_marks_only_that_discovery_unsynced(tmp_path, keyword_llm, instance):
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._core.loader import LoadingContextForTest

    keys = write_batches(tmp_path / "inbox", count=1)
    instance.add_dynamic_partitions(batches.name, keys)
    resources = local_resources(tmp_path)
    churn, features = discovery("churn", "Why do customers leave?"), discovery("features", "Which features?")
    assert run(resources, instance, keys, discoveries=[churn, features]).success

    edited = discovery("churn", "Why do customers leave within a month?")
    defs = dg.Definitions(assets=graph(edited, features), resources=resources)
    resolver = CachingStaleStatusResolver(
        instance, defs.resolve_asset_graph(), LoadingContextForTest(instance)
    )
    for stage in ("proposals", "vocabulary", "linker", "compatibility", "latent_factors", "document_factors"):
        key = dg.AssetKey(["churn", stage])
        partition = keys[0] if stage in ("proposals", "compatibility", "document_factors") else None
        assert resolver.get_status(key, partition) == StaleStatus.STALE, stage
        assert resolver.get_status(dg.AssetKey(["features", stage]), partition) == StaleStatus.FRESH, stage

    # Re-materialising the other discovery proposes nothing again (a factor its refit moved may be renamed);
    # the edited one proposes again.
    features_only = dg.AssetSelection.groups("features")
    proposed = keyword_llm.proposal_calls
    assert run(resources, instance, keys, discoveries=[edited, features], selection=features_only).success
    assert keyword_llm.proposal_calls == proposed
    churn_only = dg.AssetSelection.groups("churn")
    assert run(resources, instance, keys, discoveries=[edited, features], selection=churn_only).success
    assert keyword_llm.proposal_calls == proposed + len(REVIEWS)


def test_a_refit_after_a_new_batch_keeps_its_factors_and_follows_them(tmp_path, keyword_llm, instance):
    keys = write_batches(tmp_path / "inbox", count=5)
    instance.add_dynamic_partitions(batches.name, keys[:4])
    resources = local_resources(tmp_path)
    first = run(resources, instance, keys[:4])
    assert first.success
    storage = resources["storage"]
    before = table(resources, "reviews__factor_report")
    names = before.drop_duplicates("factor").set_index("factor")["name"]

    instance.add_dynamic_partitions(batches.name, keys[4:])
    again = run(resources, instance, keys)
    assert again.success
    after = table(resources, "reviews__factor_report")
    # Matched factors keep their id, so their name; the identity check reports how many properties stayed.
    identity = next(e for e in again.get_asset_check_evaluations() if e.check_name == "factors_kept_identity")
    kept = identity.metadata["kept_share"].value
    assert 0.0 <= kept <= 1.0 and identity.passed == (kept >= 0.7)
    materialized = again.asset_materializations_for_node("reviews__latent_factors")[0].metadata
    assert {"identity_new", "identity_vanished", "identity_splits", "identity_merges"} <= set(materialized)
    same = set(names.index) & set(after["factor"])
    assert same, "no factor kept its id across a refit on nearly the same data"
    for factor in same:
        members_before = set(before.loc[before["factor"] == factor, "property"])
        members_after = set(after.loc[after["factor"] == factor, "property"])
        if len(members_before & members_after) / len(members_before | members_after) >= 0.5:
            assert after.loc[after["factor"] == factor, "name"].iloc[0] == names[factor]

    # Prevalence: a row per batch and factor in arrival order; the drift check judges the fifth batch.
    prevalence = table(resources, "reviews__factor_prevalence")
    assert sorted(prevalence["position"].unique()) == [0, 1, 2, 3, 4]
    assert list(prevalence.drop_duplicates("position")["batch"]) == keys
    assert prevalence["share_strong"].between(0, 1).all()
    drift = next(e for e in again.get_asset_check_evaluations() if e.check_name == "prevalence_drift")
    assert "not judged" not in drift.metadata["drifted"].value
    # The batches are the same reviews: nothing drifted.
    assert drift.passed

    # The HTML report: a card per factor, inside its theme.
    page = again.asset_materializations_for_node("reviews__html_report")[0].metadata["report"].value
    assert Path(page).parent == Path(storage.home).resolve() / "artefacts"
    text = Path(page).read_text()
    assert text.count('<article class="card"') == after["factor"].nunique()
    assert text.count('<section class="theme"') == after["theme"].nunique()
    assert "What makes a film worth watching?" in text
    # The judge's verdicts beside each factor: one row per shown factor, on its card too.
    judged = table(resources, "reviews__judged_quality")
    assert sorted(judged["factor"]) == sorted(after["factor"].unique())
    sizes = after.groupby("factor").size()
    assert judged["intrusion"].notna().tolist() == [sizes[f] >= 5 for f in judged["factor"]]  # 5 + 1 planted
    assert all(
        row.intruder in row.intrusion_options for row in judged.dropna(subset="intrusion").itertuples()
    )
    assert text.count("judge: intruder") == after["factor"].nunique()


def test_a_run_goes_on_without_a_batch_whose_file_is_gone(tmp_path, keyword_llm, monkeypatch):
    from instruct_lf_dagster import definitions, run
    from instruct_lf_dagster.settings import Settings

    names = write_batches(tmp_path / "inbox", count=2)
    resources = local_resources(tmp_path)
    monkeypatch.setitem(definitions.RESOURCES, "local", lambda settings: resources)
    with dg.instance_for_test() as inst:
        inst.add_dynamic_partitions(batches.name, ["gone.jsonl"])  # registered, then its file was deleted
        outcome = run.run_discovery(Settings.from_env(), "movie_critics", inst)
        assert outcome.unread == ["gone.jsonl"] and not outcome.ok
        assert outcome.results[-1].success and not outcome.failed_steps
        assert inst.get_dynamic_partitions(batches.name) == ["gone.jsonl", *map(batch_key, names)]
        report = table(resources, "movie_critics__document_factors", [batch_key(n) for n in names])
        assert len(report) == 2 * len(REVIEWS)


def test_a_curation_applies_by_factor_id_across_a_refit_and_warns_of_ids_gone(
    tmp_path, keyword_llm, instance
):
    keys = write_batches(tmp_path / "inbox", count=2)
    instance.add_dynamic_partitions(batches.name, keys[:1])
    resources = local_resources(tmp_path)
    small = {"n_factors": 4, "max_iter": 300}
    assert run(resources, instance, keys[:1], discoveries=[discovery(factors=small)]).success
    fitted = sorted(table(resources, "reviews__factor_report")["factor"].unique())
    assert len(fitted) >= 3, fitted
    (first, second, third), rest = fitted[:3], fitted[3:]

    # Curated after a look at the report: only the reporting stages re-run (proposals, linker, CorEx kept).
    curation = {
        "names": {int(first): "Pinned name"},
        "merge": [[int(first), int(second)]],
        "drop": [int(third)],
    }
    curated = discovery(factors=small, curation=curation)
    reporting = [
        dg.AssetKey(curated.spec().key(s)) for s in ("factor_report", "judged_quality", "document_factors")
    ]
    reporting += [dg.AssetKey(curated.spec().key(s)) for s in ("factor_prevalence", "html_report")]
    proposals = keyword_llm.proposal_calls
    result = run(resources, instance, keys[:1], discoveries=[curated], selection=reporting)
    assert result.success and keyword_llm.proposal_calls == proposals

    def shown(result) -> pd.DataFrame:
        """The stored tables, checked against the curation by id, and the check's verdict."""
        report = table(resources, "reviews__factor_report")
        factors = resources["storage"].load_artefact("reviews__latent_factors")
        fitted = [factors.ids[k] for k in factors.ranked()]
        rule = curated.spec().curation
        groups = rule.groups(fitted)  # the ids a refit lost are left out; a merge shows under its first left
        assert set(report["factor"]) == set(groups) and third not in groups
        for shown_id, members in groups.items():
            rows = report[report["factor"] == shown_id]
            assert set(rows["property"]) == {p for i in members for p in factors.membership()[i]}
            assert set(rows["curated"]) == {rule.marker(shown_id, members)}
            assert (set(rows["name"]) == {"Pinned name"}) == (shown_id == first)
            assert rows["named_by_llm"].all() == (shown_id != first)
        scored = table(resources, "reviews__document_factors", instance.get_dynamic_partitions(batches.name))
        assert set(scored["top_factor"]) <= set(groups)  # never a dropped factor nor a merged-away member
        assert {len(s) for s in scored["scores"]} == {factors.n_factors}  # the model's scores, untouched
        assert set(table(resources, "reviews__factor_prevalence")["factor"]) == set(groups)
        check = next(e for e in result.get_asset_check_evaluations() if e.check_name == "curation_ids_exist")
        assert check.severity == dg.AssetCheckSeverity.WARN
        assert check.passed == (rule.missing(fitted) == [])
        assert check.metadata["missing"].value == (", ".join(map(str, rule.missing(fitted))) or "none")
        return report

    report = shown(result)
    assert set(report["factor"]) == {first, *rest}  # the first fit has every curated id
    page = result.asset_materializations_for_node("reviews__html_report")[0].metadata["report"].value
    text = Path(page).read_text()
    assert (
        "curated: named, merged" in text and text.count('<article class="card"') == report["factor"].nunique()
    )
    fitted_discovery = load_discovery("reviews", resources["storage"])
    fit = fitted_discovery.factors
    empty = fit.n_factors - len(fit.nonempty())  # an empty factor keeps its (unnamed) score column
    assert (
        "Pinned name" in fitted_discovery.columns()
        and len(fitted_discovery.columns()) == len(rest) + 1 + empty
    )
    assert "[curated: named, merged]" in fitted_discovery.describe()

    # A second batch and a refit: the curation applies to the same ids.
    instance.add_dynamic_partitions(batches.name, keys[1:])
    result = run(resources, instance, keys, discoveries=[curated])
    assert result.success
    shown(result)

    # An id the fit does not have: the check warns (WARN, listed), the run goes on.
    gone = discovery(factors=small, curation={**curation, "drop": [int(third), 999]})
    result = run(resources, instance, keys, discoveries=[gone], selection=reporting)
    assert result.success
    check = next(e for e in result.get_asset_check_evaluations() if e.check_name == "curation_ids_exist")
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert "999" in check.metadata["missing"].value.split(", ")


def test_a_seed_factor_joins_the_vocabulary_and_is_shown_as_one_named_factor(tmp_path, keyword_llm, instance):
    keys = write_batches(tmp_path / "inbox", count=1)
    instance.add_dynamic_partitions(batches.name, keys)
    resources = local_resources(tmp_path)
    seeds = [{"name": "Price", "properties": ["Cheap tickets", "Expensive seats"]}]
    assert run(resources, instance, keys, discoveries=[discovery(seed_factors=seeds)]).success

    vocabulary = resources["storage"].load_artefact("reviews__vocabulary")
    assert {"Cheap tickets", "Expensive seats"} <= set(vocabulary.properties)  # no review proposed them
    compatibility = table(resources, "reviews__compatibility", keys)
    assert int(compatibility["columns"].iloc[0]) == len(
        vocabulary
    )  # the linker scores every document on them
    report = table(resources, "reviews__factor_report")
    price = report[report["property"].isin(["Cheap tickets", "Expensive seats"])]
    assert price["factor"].nunique() == 1  # kept together
    assert set(price["name"]) == {"Price"} and set(price["curated"]) == {"named, seeded"}
    assert not price["named_by_llm"].any()
    asked = [
        m[-1]["content"] for m in keyword_llm.requests if m[0]["content"].startswith("You name the latent f")
    ]
    assert not any("Cheap tickets" in a or "Expensive seats" in a for a in asked)  # the LLM never named it
