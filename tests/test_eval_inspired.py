"""The INSPIRED recommendation protocol: hand-checked Hit@k, neighbour choice, proposals, determinism."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from instruct_lf_dagster.evaluation import inspired
from instruct_lf_dagster.evaluation.inspired_data import PROPOSALS_FILE, Inspired, load_proposals, title_key
from instruct_lf_dagster.evaluation.inspired_protocol import (
    KS,
    hits,
    knn_scores,
    popularity_scores,
    recommend,
    summary,
)
from instruct_lf_dagster.evaluation.readouts import READOUTS
from instruct_lf_dagster.settings import Settings

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "inspired"


def test_title_key_strips_only_a_trailing_year():
    assert title_key(" Knives Out (2019) ") == "Knives Out"
    assert title_key("2001: A Space Odyssey") == "2001: A Space Odyssey"
    assert title_key("Blade Runner 2049") == "Blade Runner 2049"


def test_recommend_ranks_by_count_then_by_the_nearer_neighbour():
    titles = [["A"], ["B", "C"], ["B"], ["C"]]
    # Query 0: neighbours 3, 1, 2 -> C twice (first at position 0), B twice (first at 1).
    # Query 1: neighbours 0, 2, 3 -> A, B, C once each, in the order of their neighbours.
    ranked = recommend(np.array([[3, 1, 2], [0, 2, 3]]), titles, limit=5)
    assert ranked[0] == ["C", "B"]
    assert ranked[1] == ["A", "B", "C"]
    assert recommend(np.array([[0, 2, 3]]), titles, limit=2) == [["A", "B"]]


def test_hits_by_hand():
    ranked = [["A", "B", "C"], ["C", "A"], ["B"]]
    gold = [["C"], ["D"], ["B", "X"]]
    # Hit@1: only query 2; Hit@3: queries 0 and 2.
    assert hits(ranked, gold, ks=[1, 3]) == {"hit@1": pytest.approx(1 / 3), "hit@3": pytest.approx(2 / 3)}


def _toy() -> tuple[Inspired, np.ndarray, np.ndarray]:
    # Two kinds of dialogue: horror fans lead to "Scream", comedy fans to "Elf"; vectors say which kind.
    kinds = [0, 1] * 10
    data = Inspired(
        train_dialogues=[f"dialogue {i}" for i in range(20)],
        train_titles=[["Scream"] if k == 0 else ["Elf"] for k in kinds],
        test_dialogues=["horror?", "comedy?"],
        test_titles=["Scream", "Elf"],
    )
    basis = np.eye(2)
    train = np.stack([basis[k] for k in kinds]) + 0.01 * np.arange(20)[:, None]
    return data, train, basis


def test_knn_finds_the_title_of_similar_dialogues_and_reports_its_choice_of_n():
    data, train, test = _toy()
    scores, n = knn_scores(train, test, data, neighbours=(1, 5))
    assert scores["hit@1"] == 1.0
    assert n in (1, 5)
    # Swapped queries: the nearest dialogues all lead to the other title, and only their titles are ranked.
    flipped, _ = knn_scores(train, test[::-1], data, neighbours=(1, 5))
    assert flipped["hit@300"] == 0.0
    # With every training row as a neighbour both titles are ranked, the right one second.
    everyone, n = knn_scores(train, test[::-1], data, neighbours=(20,))
    assert n == 16 and everyone["hit@1"] == 0.0 and everyone["hit@5"] == 1.0


def test_popularity_recommends_the_most_frequent_titles():
    data = Inspired(["a", "b", "c"], [["X"], ["X", "Y"], ["Z"]], ["q1", "q2"], ["X", "Z"])
    scores = popularity_scores(data)
    assert scores["hit@1"] == 0.5  # X is first for everyone
    assert scores["hit@300"] == 1.0


def test_recorded_proposals_are_checked_against_the_dialogues(tmp_path):
    data = Inspired(["b dialogue", "a dialogue", "b dialogue"], [["X"], ["Y"], ["X"]], [], [])
    good = {"context_index": 1, "context_sha1": hashlib.sha1(b"b dialogue").hexdigest(), "properties": ["P"]}
    skipped = {
        "context_index": 0,
        "context_sha1": hashlib.sha1(b"a dialogue").hexdigest(),
        "properties": None,
    }
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [good, skipped]))
    assert load_proposals(path, data) == {"b dialogue": ["P"]}
    path.write_text(json.dumps({**good, "context_index": 0}))
    with pytest.raises(ValueError, match="sha1"):
        load_proposals(path, data)


def test_summary_compares_instruct_lf_with_the_best_baseline():
    means = {"hit@20": {"popularity": 0.2, "raw_embedding": 0.25, "compatibility": 0.4, "instruct_lf": 0.3}}
    result = summary(means)
    assert result["best_baseline_hit@20"] == 0.25  # compatibility is an ablation, not a baseline
    assert result["instruct_lf_over_best_baseline"] == pytest.approx(1.2)


needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"INSPIRED data not found at {DATA} (../shared)")


@needs_data
def test_the_shared_split_matches_the_method_notes():
    data = Inspired.load(DATA)
    assert len(data.train_dialogues) == 1448 and len(data.test_titles) == 208
    assert len(data.contexts()) == 1442
    known = {t for titles in data.train_titles for t in titles}
    # METHOD.md: 140 of 208 test titles occur in training; most-popular Hit@20 = 0.2115.
    assert sum(t in known for t in data.test_titles) == 140
    assert popularity_scores(data)["hit@20"] == pytest.approx(0.2115, abs=5e-4)
    proposals = load_proposals(DATA / PROPOSALS_FILE, data)
    assert 800 < len(proposals) <= 861 and set(proposals) <= set(data.contexts())


@pytest.mark.integration
def test_a_small_run_is_deterministic_and_prints_a_json_line(tmp_path, capsys, keyword_llm):
    # A miniature INSPIRED in the shared files' format: two tastes, each with its own titles and properties.
    import pandas as pd

    rng = np.random.default_rng(0)
    tastes = {
        "horror": (["Scream", "It (2017)"], ["Horror genre", "Scary atmosphere"]),
        "comedy": (["Elf", "Step Brothers"], ["Comedy genre", "Silly humor"]),
    }
    rows, proposals = [], []
    for i in range(24):
        taste = list(tastes)[i % 2]
        text = f"User: I love {taste} movies, number {i}.\nSystem: "
        rows.append({"full_situation": text, "movies": str([tastes[taste][0][rng.integers(2)]])})
        proposals.append({"text": text, "properties": tastes[taste][1]})
    pd.DataFrame(rows).to_csv(tmp_path / "inspired_train.csv")
    test = [
        {"test_inputs": f"User: any good {t} film?\nSystem: ", "test_outputs": tastes[t][0][0]}
        for t in tastes
    ]
    pd.DataFrame(test).to_csv(tmp_path / "inspired_test.csv")
    pd.DataFrame(proposals).to_json(tmp_path / "proposals.jsonl", orient="records", lines=True)

    parser = argparse.ArgumentParser()
    inspired.add_arguments(parser)
    args = parser.parse_args(
        [
            "--data",
            str(tmp_path),
            "--proposals",
            str(tmp_path / "proposals.jsonl"),
            "--seeds",
            "0",
            "--methods",
            "popularity,raw_embedding,lda,instruct_lf",
            "--factors",
            "2",
            "--linker-epochs",
            "1",
        ]
    )
    first = inspired.main(args)
    printed = capsys.readouterr().out.strip().splitlines()
    assert json.loads(printed[-1]) == json.loads(json.dumps(first))
    assert "instruct_lf" in printed[2] or any(line.startswith("instruct_lf") for line in printed)
    second = inspired.main(args)
    saved = tmp_path / "linker"
    args.linker = str(saved)
    trained_and_saved = inspired.main(args)
    assert (saved / "linker.json").is_file()
    reused = inspired.main(args)  # no fine-tuning: the saved linker gives the same matrix and factors
    for metric in (f"hit@{k}" for k in KS):
        assert first[metric] == second[metric] == trained_and_saved[metric] == reused[metric]
    capsys.readouterr()
    args.l1 = "0.9,0"  # two penalties: one is chosen on the held-out training rows and named in the table
    chosen = inspired.main(args)
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("instruct_lf"))
    assert "l1=0.9" in row or "l1=0" in row
    if "l1=0.9" in row:
        assert chosen["hit@20"] == first["hit@20"]
    args.l1, args.factors = "0.9", "2,3"  # factor counts are chosen the same way
    sized = inspired.main(args)
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("instruct_lf"))
    assert ("m=2" in row or "m=3" in row) and "l1=" not in row
    if "m=2" in row:
        assert sized["hit@20"] == first["hit@20"]
    assert set(first["hit@20"]) == {"popularity", "raw_embedding", "lda", "instruct_lf"}
    # The LLM-only peer beside the factors, with its cost, and the readouts ablation on held-out training rows.
    args.methods, args.model, args.readouts = "popularity,topicgpt,instruct_lf", "keywords/fake", True
    args.settings = Settings.from_env()  # what the CLI adds: the LLM resource's settings (this test's home)
    args.topicgpt_sample, args.topicgpt_assign = 4, 6
    peers = inspired.main(args)
    assert set(peers["hit@20"]) == {"popularity", "topicgpt", "instruct_lf"}
    assert 4 + 6 <= peers["cost"]["topicgpt"]["llm_calls"] == keyword_llm.calls
    assert set(peers["held-out hit@20"]) == {f"instruct_lf/{name}" for name in READOUTS}
    args.methods, args.readouts = "popularity,raw_embedding,lda,instruct_lf", False
    # The budget curve: proposals from two files read in turn; the whole budget reproduces the default run.
    lines = (tmp_path / "proposals.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "first.jsonl").write_text("".join(lines[:12]))
    (tmp_path / "rest.jsonl").write_text("".join(lines[12:]))
    args.proposals = f"{tmp_path / 'first.jsonl'},{tmp_path / 'rest.jsonl'}"
    args.factors, args.linker, args.linker_documents = "2", None, "12,24"
    curve = inspired.main(args)
    assert set(curve["hit@20"]) == {
        "popularity",
        "raw_embedding",
        "lda",
        "instruct_lf (12 proposed)",
        "instruct_lf (24 proposed)",
    }
    assert curve["hit@20"]["instruct_lf (24 proposed)"] == first["hit@20"]["instruct_lf"]
    assert curve["instruct_lf_over_best_baseline"] == first["instruct_lf_over_best_baseline"]
    assert all(0.0 <= v <= 1.0 for v in first["hit@20"].values())


@pytest.mark.parametrize("content", ["", "not json\n", '{"context_index": 0, "properties": null}\n'])
def test_unusable_proposal_files_name_the_file(tmp_path, content):
    path = tmp_path / "broken.jsonl"
    path.write_text(content)
    data = Inspired(["a dialogue"], [["X"]], [], [])
    with pytest.raises(ValueError, match="broken.jsonl"):
        load_proposals(path, data)


@pytest.mark.parametrize(
    ("option", "bad"),
    [
        ("--l1", "abc"),
        ("--l1", ""),
        ("--l1", "0.9,-1"),
        ("--factors", "0"),
        ("--factors", "2.5"),
        ("--max-seq-length", "0"),
        ("--linker-seq-length", "-8"),
        ("--linker-documents", "0"),
        ("--linker-documents", "24,12"),
    ],
)
def test_bad_setting_lists_are_refused_clearly(option, bad):
    parser = argparse.ArgumentParser()
    inspired.add_arguments(parser)
    with pytest.raises(SystemExit, match=option):
        inspired.main(parser.parse_args([option, bad]))


@pytest.mark.integration
def test_raw_embeddings_are_encoded_once_across_seeds(monkeypatch):
    from instruct_lf_dagster.core.compatibility import EmbeddingCache
    from instruct_lf_dagster.core.linker import Linker
    from instruct_lf_dagster.evaluation.representations import raw_embeddings

    texts = ["User: a scary film please.\nSystem: ", "User: something funny?\nSystem: "]
    cache = EmbeddingCache()
    first = raw_embeddings(texts, truncation="tail", cache=cache)
    np.testing.assert_allclose(first, raw_embeddings(texts, truncation="tail"), atol=1e-6)

    def encode_again(self, texts, batch_size=64):
        raise AssertionError(f"encoded again: {texts}")

    monkeypatch.setattr(Linker, "encode_documents", encode_again)
    np.testing.assert_array_equal(raw_embeddings(texts, truncation="tail", cache=cache), first)
