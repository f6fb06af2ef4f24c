"""The labelled-document probe: data reading, split, cross-validated scoring, and the whole protocol."""

from __future__ import annotations

import argparse
import ast
import json

import numpy as np
import pandas as pd
import pytest

from instruct_lf_dagster.core.proposals import Example
from instruct_lf_dagster.evaluation import probe, probe_data
from instruct_lf_dagster.evaluation.probe_data import read_labelled
from instruct_lf_dagster.evaluation.probe_protocol import (
    agreement,
    agreements,
    classifiers,
    cross_validated,
    evaluate,
    frequent,
    refit_factors,
    split,
)
from instruct_lf_dagster.settings import Settings

GENRES = {
    "comedy": ("funny", "laugh"),
    "horror": ("scary", "ghost"),
    "romance": ("love", "kiss"),
    "action": ("explosion", "chase"),
}
PLACES = ["in Paris", "on a farm", "at sea", "in a small town", "in space", "in a prison"]


def reviews(n: int = 48) -> list[dict]:
    """Reviews whose genre and pace show in their keywords (what the `keyword_llm` fixture describes)."""
    rows = []
    for i in range(n):
        genre = list(GENRES)[i % 4]
        first, second = GENRES[genre]
        pace = "slow" if (i // 4) % 2 else "lively"
        tempo = "slow and boring" if pace == "slow" else "quick and sharp"
        text = f"A {first} story set {PLACES[i % len(PLACES)]}, {tempo}, with a {second} scene in part {i}."
        rows.append({"id": i, "review": text, "genre": genre, "pace": pace})
    return rows


def write(rows: list[dict], path) -> None:
    frame = pd.DataFrame(rows)
    if path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)


def args_for(path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    probe.add_arguments(parser)
    args = parser.parse_args(
        [
            "--data", str(path), "--text-field", "review", "--label-field", "genre", "--label-field", "pace",
            "--goal", "What kind of movie is this?", "--model", "keywords/fake", "--folds", "3",
            "--linker-epochs", "1", "--corex-iter", "50", "--proposal-docs", "16", "--seeds", "0,1", *extra,
        ]
    )  # fmt: skip
    args.settings = Settings.from_env()  # what the CLI adds: the environment's settings (this test's home)
    args.home = args.settings.home
    return args


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_read_labelled_formats_agree(tmp_path, suffix):
    rows = reviews(8)
    rows[1]["genre"] = None  # a missing label drops the row
    rows[2]["review"] = "   "  # so does a blank text
    path = tmp_path / f"data{suffix}"
    write(rows, path)
    frame = read_labelled(path, "review", ["genre", "pace"])
    assert list(frame.columns) == ["text", "genre", "pace"]
    assert frame["text"].tolist() == [r["review"] for i, r in enumerate(rows) if i not in (1, 2)]
    assert set(frame["genre"]) == set(GENRES)


def test_read_labelled_keeps_labels_as_text(tmp_path):
    path = tmp_path / "codes.csv"
    path.write_text("text,code\nfirst,01\nsecond,2\n")
    assert read_labelled(path, "text", ["code"])["code"].tolist() == ["01", "2"]


def test_read_labelled_errors_name_the_file_and_problem(tmp_path):
    path = tmp_path / "data.jsonl"
    write(reviews(4), path)
    with pytest.raises(
        ValueError, match=r"data\.jsonl: no 'party' column \(found: id, review, genre, pace\)"
    ):
        read_labelled(path, "review", ["genre", "party"])
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        read_labelled(tmp_path / "nowhere.csv", "text", ["label"])
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(ValueError, match=r"data\.txt: unknown file kind '\.txt'"):
        read_labelled(tmp_path / "data.txt", "text", ["label"])


def test_builtins_are_written_once_under_the_home_given(tmp_path, monkeypatch):
    homes = []

    def frame(home):
        homes.append(home)
        return pd.DataFrame({"text": ["a speech", "another"], "side": ["left", "right"]})

    builtin = probe_data.Builtin(("side",), "Which side?", "speech", Example("a speech", ("P",)), frame)
    monkeypatch.setitem(probe_data.BUILTINS, "tiny", lambda: builtin)
    path = probe_data.write_builtin("tiny", tmp_path)
    assert path == tmp_path / "probe" / "tiny.jsonl" and homes == [tmp_path]
    assert read_labelled(path, "text", ["side"])["side"].tolist() == ["left", "right"]
    assert probe_data.write_builtin("tiny", tmp_path) == path and homes == [tmp_path]  # kept once written


def test_main_reads_builtins_from_the_home_in_its_arguments(tmp_path, monkeypatch, capsys):
    rows = pd.DataFrame({"text": [f"speech {i}" for i in range(24)], "side": ["left", "right"] * 12})
    builtin = probe_data.Builtin(("side",), "Which side?", "speech", Example("a", ("P",)), lambda home: rows)
    monkeypatch.setitem(probe_data.BUILTINS, "tiny", lambda: builtin)
    args = argparse.ArgumentParser()
    probe.add_arguments(args)
    options = args.parse_args(["--data", "tiny", "--methods", "majority", "--folds", "3", "--seeds", "0"])
    options.home = tmp_path / "home"
    result = probe.main(options)
    assert result["data"] == str(tmp_path / "home" / "probe" / "tiny.jsonl")
    assert result["balanced_accuracy"]["side"]["tree"]["majority"] == 0.5


def test_split_is_seeded_disjoint_and_sized():
    fit, held = split(100, 0.3, max_docs=50, seed=4)
    assert (len(fit), len(held)) == (15, 35)
    assert not set(fit) & set(held) and all(0 <= i < 100 for i in fit + held)
    assert split(100, 0.3, max_docs=50, seed=4) == (fit, held)
    assert split(100, 0.3, max_docs=50, seed=5) != (fit, held)
    assert sorted(sum(split(10, 0.5), [])) == list(range(10))
    with pytest.raises(ValueError, match="fit fraction"):
        split(10, 1.0)


def test_cross_validated_separable_constant_and_rare_labels():
    labels = np.repeat(["a", "b", "c"], 10)
    separable = (labels == "b").astype(float)[:, None] + 2 * (labels == "c")[:, None]
    for classifier in classifiers(seed=0).values():
        assert cross_validated(separable, labels, classifier) == 1.0
        # A constant feature leaves only the majority guess: balanced accuracy 1 / number of labels.
        assert cross_validated(np.zeros((30, 1)), labels, classifier) == pytest.approx(1 / 3)
    assert frequent(np.array(["a"] * 5 + ["b"] * 4)).tolist() == [True] * 5 + [False] * 4
    with pytest.raises(ValueError, match="'topic': fewer than 2 labels"):
        evaluate({"x": np.zeros((9, 1))}, {"topic": np.array(["a"] * 5 + ["b"] * 4)})


def test_agreement_of_an_assignment_with_labels():
    labels = np.array(["a", "a", "a", "b", "b", "b"])
    # Topics that are the labels under other ids: every measure is perfect.
    assert agreement(np.array([7, 7, 7, 2, 2, 2]), labels) == pytest.approx({"purity": 1, "ari": 1, "nmi": 1})
    # One topic for everything: purity 1/2, inverse purity 1 -> harmonic 2/3; nothing explained.
    everything = agreement(np.zeros(6, dtype=int), labels)
    assert everything["purity"] == pytest.approx(2 / 3)
    assert everything["ari"] == pytest.approx(0) and everything["nmi"] == pytest.approx(0)
    # One topic per document: purity 1, inverse purity 1/3 -> harmonic 1/2.
    assert agreement(np.arange(6), labels)["purity"] == pytest.approx(0.5)
    # A hand-counted case: topics {0: a a b, 1: a b b} -> purity 4/6 and inverse purity 4/6.
    mixed = agreement(np.array([0, 0, 1, 0, 1, 1]), labels)
    assert mixed["purity"] == pytest.approx(4 / 6)
    # BERTopic's outliers (-1) are one more cluster, not dropped.
    assert agreement(np.array([-1, -1, -1, 2, 2, 2]), labels)["ari"] == pytest.approx(1)
    table = agreements({"m": np.array([0, 0, 0, 1, 1, 1])}, {"field": labels})
    assert set(table) == {"field/purity", "field/ari", "field/nmi"} and table["field/ari"] == {"m": 1.0}


def test_a_file_needs_a_goal_and_labels(tmp_path):
    path = tmp_path / "data.jsonl"
    write(reviews(4), path)
    parser = argparse.ArgumentParser()
    probe.add_arguments(parser)
    for options, message in [
        ([], "--label-field is required"),
        (["--label-field", "genre"], "--goal is required"),
    ]:
        args = parser.parse_args(["--data", str(path), *options])
        args.home = tmp_path  # what the CLI adds: the data directory
        with pytest.raises(ValueError, match=message):
            probe.main(args)


def test_refit_factors_reuses_the_models_matrix_and_settings_but_the_seed(monkeypatch):
    """A refit is the model's own factor stage with another seed (and penalty and count): a direct Linear CorEx
    fit with the same settings, bit for bit."""
    from instruct_lf_dagster.core.config import ComputeConfig
    from instruct_lf_dagster.core.corex import LinearCorex
    from instruct_lf_dagster.core.pipeline import InstructLF
    from instruct_lf_dagster.core.vocabulary import Vocabulary

    rng = np.random.default_rng(0)
    x = (np.repeat(rng.normal(size=(40, 2)), 3, axis=1) + 0.5 * rng.normal(size=(40, 6))).astype(np.float32)
    model = InstructLF().but(ComputeConfig(threads=1), factors={"n_factors": 2, "l1": 0.9, "max_iter": 40})
    model.vocabulary_ = Vocabulary.fit([[f"Trait {j}" for j in range(6)]])
    model.factors_ = model.fit_factors(x, model.vocabulary_.properties)
    monkeypatch.setattr(model, "compatibility", lambda texts: x[: len(texts)])

    def direct(m, l1, seed):
        return LinearCorex(m, l1=l1, seed=seed, max_iter=40, threads=1).fit(x)

    texts = ["a text"] * len(x)
    for (m, l1), refit in {
        (2, 0.9): refit_factors(model, texts, seed=3),
        (3, 0.0): refit_factors(model, texts, seed=3, l1=0.0, n_factors=3),
    }.items():
        np.testing.assert_array_equal(refit.model.w_, direct(m, l1, 3).w_)
        assert refit.properties == tuple(model.vocabulary_.properties)


@pytest.mark.integration
def test_protocol_end_to_end_is_deterministic(tmp_path, keyword_llm, capsys):
    """The whole probe, every method, twice with the same data and seeds: the same numbers, labelled metrics and
    costs; the second run asks no LLM."""
    path = tmp_path / "reviews.jsonl"
    write(reviews(), path)
    methods = "majority,raw_embedding,compatibility,lda,bertopic,topicgpt,instruct_lf"
    first = probe.main(
        args_for(path, "--methods", methods, "--topicgpt-sample", "6", "--topicgpt-assign", "8")
    )
    printed = capsys.readouterr().out.strip().splitlines()
    assert json.loads(printed[-1]) == first  # the JSON line comes last
    assert printed[0].split()[:3] == ["method", "genre/tree", "genre/logreg"]

    sizes = first["sizes"]
    assert (sizes["rows"], sizes["fit"], sizes["proposed"], sizes["proposals_failed"]) == (48, 24, 16, 0)
    assert sizes["properties"] > 0 and sizes["factors"] >= 2 and sizes["linker_epochs"] == 1
    asked = [m[0]["content"] for m in keyword_llm.requests]
    topicgpt = sum(a.startswith(("You build the list", "You merge", "You assign")) for a in asked)
    assert len(asked) - topicgpt == 16  # proposals for the fit part only
    # topicgpt: 6 generation calls, then at most 8 assignments of each part (and a re-assignment after a drop).
    assert 6 + 8 + 8 <= topicgpt <= 6 + 5 + 3 * 8
    scores = first["balanced_accuracy"]
    for field in ("genre", "pace"):
        for classifier in ("tree", "logreg"):
            cell = scores[field][classifier]
            assert set(cell) == set(methods.split(","))
            assert cell["majority"] == pytest.approx(1 / sizes["classes"][field], abs=1e-4)
            assert all(0.0 <= v <= 1.0 for v in cell.values())
        # Labelled metrics for the interpretable peers only.
        agreement_cells = first["agreement"][field]
        assert set(agreement_cells) == {"purity", "ari", "nmi"}
        assert set(agreement_cells["nmi"]) == {"lda", "bertopic", "topicgpt", "instruct_lf"}
    # The keywords decide the genre and the LLM names it: the factors must beat guessing.
    assert scores["genre"]["logreg"]["instruct_lf"] > scores["genre"]["logreg"]["majority"] + 0.2
    # Cost: proposals are instruct_lf's calls; topicgpt's are its own, with tokens; LDA and BERTopic pay none.
    assert first["cost"]["instruct_lf"]["llm_calls"] == 16
    assert first["cost"]["topicgpt"]["llm_calls"] == topicgpt
    assert first["cost"]["topicgpt"]["prompt_tokens"] > 0
    assert "assigned by the LLM" in first["notes"]["topicgpt"]
    calls = keyword_llm.calls

    capsys.readouterr()
    second = probe.main(
        args_for(path, "--methods", methods, "--topicgpt-sample", "6", "--topicgpt-assign", "8", "--readouts")
    )
    assert keyword_llm.calls == calls  # every answer came from the response cache
    ablation = capsys.readouterr().out.split("Ablation: ", 1)[1].splitlines()
    assert ablation[1].split()[:3] == ["method", "genre/tree", "genre/logreg"]
    assert [row.split()[0] for row in ablation[3:7]] == ["compatibility", "scores", "both_ends", "members"]
    assert second["balanced_accuracy"] == first["balanced_accuracy"]
    assert second["std"] == first["std"]

    # Two penalties and two factor counts: the setting whose factors score best on the fit part's own labels is
    # used and named.
    capsys.readouterr()
    automatic = sizes["factors"]
    methods = "majority,raw_embedding,lda,instruct_lf"
    chosen = probe.main(
        args_for(path, "--methods", methods, "--l1", "0.9,0", "--factors", f"0,{automatic + 2}")
    )
    progress = capsys.readouterr().err  # progress goes to stderr
    line = next(x for x in progress.splitlines() if x.startswith("chosen on the fit part"))
    by_setting = ast.literal_eval(line.split("by (factors, l1): ", 1)[1].removesuffix(")"))
    (m, l1) = max(by_setting, key=by_setting.get)
    assert set(by_setting) == {(a, b) for a in (automatic, automatic + 2) for b in (0.9, 0.0)}
    assert line.startswith(f"chosen on the fit part: {m} factors, l1 {l1:g} ")
    assert f"-> {m} factors, l1 {l1:g};" in chosen["notes"]["instruct_lf"]
    assert chosen["sizes"]["factors"] == m
    if (m, l1) == (automatic, 0.9):  # the default's factors, so the default's numbers
        for field, cells in chosen["balanced_accuracy"].items():
            for classifier, cell in cells.items():
                assert cell == {k: first["balanced_accuracy"][field][classifier][k] for k in cell}
    assert keyword_llm.calls == calls


@pytest.mark.parametrize("option", ["--l1", "--factors"])
@pytest.mark.parametrize("bad", ["abc", "", "0.9,-1"])
def test_bad_setting_lists_are_refused_clearly(tmp_path, option, bad):
    path = tmp_path / "reviews.jsonl"
    write(reviews(8), path)
    with pytest.raises(SystemExit, match=option):
        probe.main(args_for(path, option, bad))
