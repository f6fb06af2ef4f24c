"""InstructLF: one object holds the method's settings and runs its stages; bad input is refused clearly.

The fast tests load no model: factors are fitted on small synthetic matrices, and the linker is replaced by a
stand-in where a stage would build one. Tests that load MiniLM are marked integration.
"""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest

from instruct_lf_dagster.core import pipeline
from instruct_lf_dagster.core.config import (
    ComputeConfig,
    FactorConfig,
    LinkerConfig,
    VocabularyConfig,
)
from instruct_lf_dagster.core.corex import CorexStatistics, LinearCorex
from instruct_lf_dagster.core.factors import Factors
from instruct_lf_dagster.core.linker import Linker, LinkerReport
from instruct_lf_dagster.core.pipeline import InstructLF, auto_factors
from instruct_lf_dagster.core.vocabulary import Vocabulary

PROPERTIES = [f"property {j}" for j in range(12)]


def planted(n: int = 60, groups: int = 3, seed: int = 0) -> np.ndarray:
    """n x 12 compatibility-like rows: 3 groups of 4 columns, each driven by one hidden factor."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, groups))
    x = np.repeat(z, 12 // groups, axis=1) + 0.5 * rng.normal(size=(n, 12))
    return x.astype(np.float32)


def same_model(a: LinearCorex, b: LinearCorex) -> None:
    for name in ("w_", "mis_", "mean_", "std_"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.objective_ == b.objective_ and a.history_ == b.history_


class FakeLinker:
    """Stands in for `Linker` (no MiniLM): records how it was built, fitted and asked to encode."""

    built: list[dict] = []
    batch_sizes: list[int] = []

    def __init__(self, encoder=None, **settings):
        self.fitted = None
        FakeLinker.built.append(settings)

    def encode_properties(self, texts, batch_size=256):
        FakeLinker.batch_sizes.append(batch_size)
        return np.eye(len(texts), dtype=np.float32)  # no two properties alike: nothing merges

    def fit(self, documents, proposals, config, **options):
        self.fitted = (list(documents), [list(p) for p in proposals], {**config.model_dump(), **options})
        return LinkerReport(epochs_run=config.epochs)


@pytest.fixture
def fake_linker(monkeypatch):
    FakeLinker.built, FakeLinker.batch_sizes = [], []
    monkeypatch.setattr(pipeline, "Linker", FakeLinker)
    return FakeLinker


# -- settings -------------------------------------------------------------------------------------------------


def test_settings_are_nested_groups_with_the_platforms_defaults():
    model = InstructLF()
    factors = model.config.factors
    assert (factors.n_factors, factors.l1, factors.warm_start, model.config.seed, model.compute.device) == (
        0,
        0.0,
        True,
        0,
        "cpu",
    )
    fields = [f.name for f in dataclasses.fields(InstructLF)]
    assert fields == ["config", "compute", "cache"] and "cache" not in repr(model)
    # The stages take data only: their settings come from the object.
    names = {"seed", "truncation"} | set(ComputeConfig.model_fields)
    names |= set(FactorConfig.model_fields) | set(LinkerConfig.model_fields)
    for stage in (InstructLF.fit_vocabulary, InstructLF.fit_linker, InstructLF.fit_factors):
        assert not set(inspect.signature(stage).parameters) & names


def test_but_changes_only_the_named_settings_and_validates_them():
    model = InstructLF().but(factors={"n_factors": 5}, seed=3)
    assert model.config.factors.n_factors == 5 and model.config.factors.max_iter == FactorConfig().max_iter
    assert model.config.seed == 3 and InstructLF().config.seed == 0  # a copy: the original is unchanged
    with pytest.raises(ValueError, match="epochs must be at least 0, not -3"):
        InstructLF().but(linker={"epochs": -3})
    with pytest.raises(ValueError, match="merge_threshold must be at most 1"):
        VocabularyConfig(merge_threshold=7.5)
    with pytest.raises(ValueError, match="Extra inputs"):
        InstructLF().but(factors={"n_factor": 5})


def test_automatic_factor_count_stays_in_the_papers_range():
    assert [auto_factors(p) for p in (0, 16, 800, 100_000)] == [2, 2, 100, 368]


# -- factors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("l1", [0.0, 0.9])  # the two optimisers: quasi-Newton without L1, Adam with it
def test_fit_factors_is_a_direct_linear_corex_fit_with_the_objects_settings(l1):
    x = planted()
    model = InstructLF().but(
        ComputeConfig(threads=1), factors={"n_factors": 3, "l1": l1, "max_iter": 60}, seed=7
    )
    factors = model.fit_factors(x, PROPERTIES)
    direct = LinearCorex(3, l1=l1, seed=7, device="cpu", max_iter=60, threads=1).fit(x)
    same_model(factors.model, direct)
    assert factors.properties == tuple(PROPERTIES) and factors.model.l1 == l1
    assert factors.model.optimizer_ == ("adam" if l1 else "lbfgs")


def test_fit_factors_counts_factors_from_the_properties_when_not_set():
    x = np.hstack([planted(), planted(seed=1)])  # 24 properties -> 3 factors
    properties = [f"p{j}" for j in range(24)]
    assert (
        InstructLF().but(factors={"max_iter": 20}).fit_factors(x, properties).n_factors
        == auto_factors(24)
        == 3
    )


def test_an_automatic_factor_count_stays_while_the_vocabulary_grows_a_little():
    x = np.hstack([planted(), planted(seed=1)])  # 24 properties -> 3 factors
    previous = (
        InstructLF()
        .but(factors={"n_factors": 4, "max_iter": 20})
        .fit_factors(x, [f"p{j}" for j in range(24)])
    )
    model = InstructLF().but(factors={"max_iter": 20})
    # auto 3 is within a quarter of 4: the refit keeps 4 (and warm-starts); far from it, auto wins
    assert model.fit_factors(x, [f"p{j}" for j in range(24)], previous=previous).n_factors == 4
    far = (
        InstructLF()
        .but(factors={"n_factors": 8, "max_iter": 20})
        .fit_factors(x, [f"p{j}" for j in range(24)])
    )
    assert model.fit_factors(x, [f"p{j}" for j in range(24)], previous=far).n_factors == 3
    cold = model.but(factors={"warm_start": False})
    assert cold.fit_factors(x, [f"p{j}" for j in range(24)], previous=previous).n_factors == 3


def test_fit_factors_refuses_a_matrix_of_another_width():
    with pytest.raises(ValueError, match="one column per property"):
        InstructLF().but(factors={"n_factors": 2}).fit_factors(planted(), PROPERTIES[:-1])


def test_warm_start_only_from_a_previous_fit_with_the_same_factor_count():
    x = planted()
    previous = InstructLF().but(factors={"n_factors": 3, "max_iter": 50}).fit_factors(x, PROPERTIES)
    # The vocabulary grew: known properties keep their columns, the new one starts at 0.
    grown = [*PROPERTIES, "new property"]
    x2 = np.hstack([planted(seed=2), planted(seed=3)[:, :1]])
    model = InstructLF().but(factors={"n_factors": 3, "max_iter": 50}, seed=1)

    warm = model.fit_factors(x2, grown, previous=previous)
    direct = LinearCorex(3, l1=0.0, seed=1, max_iter=50).fit(x2, warm_start=previous.warm_start(grown))
    same_model(warm.model, direct)
    assert len(warm.model.history_) == 1  # a warm start skips annealing

    cold = LinearCorex(3, l1=0.0, seed=1, max_iter=50).fit(x2)
    assert len(cold.history_) > 1
    same_model(model.fit_factors(x2, grown).model, cold)
    same_model(model.but(factors={"warm_start": False}).fit_factors(x2, grown, previous).model, cold)
    other_count = model.but(factors={"n_factors": 4}).fit_factors(x2, grown, previous=previous)
    same_model(other_count.model, LinearCorex(4, l1=0.0, seed=1, max_iter=50).fit(x2))


def test_a_refit_with_other_settings_keeps_the_rest():
    model = InstructLF().but(
        ComputeConfig(threads=1), factors={"n_factors": 2, "l1": 0.9, "max_iter": 30}, seed=3
    )
    refit = model.but(factors={"n_factors": 3, "l1": 0.0})
    assert (refit.config.factors.max_iter, refit.config.seed, refit.compute.threads) == (30, 3, 1)
    assert refit.cache is model.cache
    x = planted()
    same_model(
        refit.fit_factors(x, PROPERTIES).model,
        LinearCorex(3, l1=0.0, seed=3, max_iter=30, threads=1).fit(x),
    )


def test_fit_factors_from_statistics_gives_fit_factors_of_the_stacked_matrix():
    x = planted(600)
    stats = CorexStatistics.of(np.array_split(x, 3))  # the compatibility rows as they stream in
    model = InstructLF().but(ComputeConfig(threads=1), factors={"n_factors": 3, "max_iter": 60}, seed=7)
    stacked = model.fit_factors(x, PROPERTIES)
    streamed = model.fit_factors_from_statistics(stats, PROPERTIES)
    assert streamed.properties == stacked.properties and streamed.model.optimizer_ == "lbfgs"
    np.testing.assert_array_equal(streamed.assignment, stacked.assignment)
    # 60 steps stop short of the optimum, where the objective is flat in the small weights: the covariance's
    # float32 rounding (which differs between AVX2 and AVX-512 kernels) moves those by a few 1e-4.
    np.testing.assert_allclose(streamed.model.w_, stacked.model.w_, atol=1e-3)
    assert not set(inspect.signature(InstructLF.fit_factors_from_statistics).parameters) & {
        f.name for f in dataclasses.fields(InstructLF)
    }

    # the same warm-start rule: a previous fit with the same factor count, aligned by property
    grown = [*PROPERTIES, "new property"]
    x2 = np.hstack([planted(600, seed=2), planted(600, seed=3)[:, :1]])
    warm = model.fit_factors_from_statistics(CorexStatistics.of([x2]), grown, previous=stacked)
    direct = LinearCorex(3, l1=0.0, seed=7, max_iter=60, threads=1).fit(
        x2, warm_start=stacked.warm_start(grown)
    )
    assert len(warm.model.history_) == 1
    np.testing.assert_array_equal(warm.assignment, Factors(direct, grown).assignment)
    # near a warm start the objective is flat: float32 rounding of the covariance (fit's own, even for the same
    # rows in another order) moves the step where the stop rule ends, and W by up to ~1e-3; not the optimum
    assert warm.model.objective_ == pytest.approx(direct.objective_, rel=1e-5)
    np.testing.assert_allclose(warm.model.w_, direct.w_, atol=1e-2)


def test_fit_factors_from_statistics_refuses_l1_and_another_width():
    stats = CorexStatistics.of([planted()])
    with pytest.raises(ValueError, match="quasi-Newton"):
        InstructLF().but(factors={"n_factors": 2, "l1": 0.9}).fit_factors_from_statistics(stats, PROPERTIES)
    with pytest.raises(ValueError, match="one per property"):
        InstructLF().but(factors={"n_factors": 2}).fit_factors_from_statistics(stats, PROPERTIES[:-1])


# -- vocabulary and linker, with a stand-in linker ------------------------------------------------------------


def test_fit_vocabulary_encodes_with_the_objects_settings(fake_linker):
    model = InstructLF().but(
        ComputeConfig(device="cpu", encode_batch_size=16),
        linker={"max_seq_length": 128},
        vocabulary={"min_count": 2},
        truncation="tail",
    )
    vocabulary = model.fit_vocabulary([["Comedy genre", "Silly humor"], None, ["comedy genre"], []])
    assert vocabulary.properties == ["Comedy genre"]  # "Silly humor" proposed once: below min_count
    assert fake_linker.built == [{"truncation": "tail", "max_seq_length": 128, "device": "cpu"}]
    assert fake_linker.batch_sizes == [16]


@pytest.mark.parametrize("proposals", [[None, None], [[], []], [["", "  "], ["1.", "-"]]])
def test_no_usable_property_is_a_clear_error_and_loads_no_model(proposals, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("MiniLM loaded")

    monkeypatch.setattr(pipeline, "Linker", no_model)
    with pytest.raises(ValueError, match="no usable property"):
        InstructLF().fit(["first review", "second review"], proposals)


def test_proposals_must_line_up_with_documents():
    with pytest.raises(ValueError, match="2 documents but 1 proposal lists"):
        InstructLF().fit(["a", "b"], [["Comedy genre"]])
    with pytest.raises(ValueError, match="2 documents but 1 proposal lists"):
        InstructLF().fit_linker(["a", "b"], [["Comedy genre"]], Vocabulary.fit([["Comedy genre"]]))


def test_fit_linker_pairs_documents_with_their_vocabulary_properties(fake_linker):
    vocabulary = Vocabulary.fit([["Comedy genre", "Horror genre"], ["comedy genre"]], min_count=2)
    model = InstructLF().but(
        linker={
            "epochs": 3,
            "batch_size": 8,
            "lr": 1e-4,
            "patience": 1,
            "val_fraction": 0.2,
            "train_seq_length": 64,
        },
        seed=5,
    )
    calls = []
    linker, report = model.fit_linker(
        ["a", "b", "c", "d"],
        [["Comedy genre", "Horror genre"], None, ["Horror genre"], ["comedy genre"]],
        vocabulary,
        progress=lambda *epoch: calls.append(epoch),
    )
    documents, proposals, options = linker.fitted
    assert (documents, proposals) == (["a", "d"], [["Comedy genre"], ["Comedy genre"]])
    assert {k: v for k, v in options.items() if k != "progress"} == {
        "epochs": 3,
        "batch_size": 8,
        "lr": 1e-4,
        "patience": 1,
        "val_fraction": 0.2,
        "seed": 5,
        "mini_batch_size": 8,
        "train_seq_length": 64,
        "max_seq_length": LinkerConfig().max_seq_length,
        "max_pairs": None,
    }
    options["progress"](1, 0.5, None)
    assert calls == [(1, 0.5, None)] and report.epochs_run == 3


def test_fit_linker_refuses_when_no_document_has_a_vocabulary_property(fake_linker):
    vocabulary = Vocabulary.fit([["Comedy genre"], ["Comedy genre"]], min_count=2)
    with pytest.raises(ValueError, match="no document has a property in the vocabulary"):
        InstructLF().fit_linker(["a", "b"], [["Horror genre"], None], vocabulary)
    assert fake_linker.built == []


def test_fit_chains_the_stages(fake_linker, monkeypatch):
    caches = []

    def matrix(linker, texts, properties, *, batch_size, cache):
        assert batch_size == 16
        caches.append(cache)
        return planted(len(texts))[:, : len(properties)]

    monkeypatch.setattr(pipeline, "compatibility", matrix)
    proposals = [[f"Trait {j}" for j in range(12)] if i % 2 else None for i in range(8)]
    documents = [f"document {i}" for i in range(8)]
    corpus = [f"text {i}" for i in range(40)]
    model = (
        InstructLF()
        .but(ComputeConfig(encode_batch_size=16), factors={"max_iter": 20})
        .fit(documents, proposals, corpus=corpus)
    )
    assert len(model.vocabulary_) == 12 and model.linker_report_.epochs_run == 20
    assert model.linker_.fitted[0] == documents[1::2]
    # With l1 = 0, fit fits from the rows' statistics, as the Dagster assets do.
    expected = (
        InstructLF()
        .but(factors={"max_iter": 20})
        .fit_factors_from_statistics(CorexStatistics.of([planted(40)]), PROPERTIES)
    )
    same_model(model.factors_.model, expected.model)
    assert model.transform(["a", "b", "c"]).shape == (3, 2)
    assert caches == [model.cache, model.cache]

    given = Linker.__new__(Linker)  # a trained linker passed in is used as is, not trained again
    again = InstructLF().but(ComputeConfig(encode_batch_size=16), factors={"max_iter": 20})
    assert again.fit(documents, proposals, corpus=corpus, linker=given).linker_ is given
    assert again.linker_report_ is None


# -- with MiniLM ----------------------------------------------------------------------------------------------


@pytest.mark.integration  # MiniLM folds the vocabulary and is fine-tuned
def test_the_stages_by_hand_give_what_fit_gives():
    tastes = {"horror": ["Horror genre", "Scary atmosphere"], "comedy": ["Comedy genre", "Silly humor"]}
    documents = [f"I love {t} movies, number {i}." for i in range(12) for t in tastes]
    proposals = [tastes[t] + (["horror genre."] if t == "horror" else []) for _ in range(12) for t in tastes]
    corpus = [*documents, "Something frightening tonight?", "A film to laugh at?"]
    settings = {"factors": {"n_factors": 2, "max_iter": 50}, "linker": {"epochs": 1, "batch_size": 8}}
    model = InstructLF().but(**settings).fit(documents, proposals, corpus=corpus)
    assert len(model.vocabulary_) == 4 and model.linker_report_.epochs_run == 1

    staged = InstructLF().but(**settings)
    vocabulary = staged.fit_vocabulary(proposals)
    assert vocabulary == model.vocabulary_
    linker, report = staged.fit_linker(documents, proposals, vocabulary)
    assert linker.fingerprint == model.linker_.fingerprint and report.pairs == model.linker_report_.pairs
    staged.vocabulary_, staged.linker_ = vocabulary, linker
    stats = CorexStatistics.of([staged.compatibility(corpus)])
    factors = staged.fit_factors_from_statistics(stats, vocabulary.properties)
    same_model(factors.model, model.factors_.model)
    np.testing.assert_array_equal(
        model.transform(corpus[-2:]), factors.scores(staged.compatibility(corpus[-2:]))
    )
    assert isinstance(factors, Factors)


def test_the_linker_trains_on_a_bounded_seeded_sample_of_pairs(fake_linker):
    documents = [f"document {i}" for i in range(30)]
    proposals = [[f"Trait {j}" for j in range(i % 4 + 1)] for i in range(30)]  # 73 pairs
    vocabulary = InstructLF().fit_vocabulary(proposals)

    def trained_pairs(max_pairs: int | None = None, seed: int = 0) -> list[tuple[str, str]]:
        model = InstructLF().but(linker={"max_pairs": max_pairs}, seed=seed)
        linker, _ = model.fit_linker(documents, proposals, vocabulary)
        docs, props, _ = linker.fitted
        return [(d, p) for d, ps in zip(docs, props, strict=True) for p in ps]

    everything = trained_pairs()
    assert len(everything) == 73
    sample = trained_pairs(max_pairs=20)
    assert len(sample) == 20 and set(sample) <= set(everything)
    assert sample == sorted(sample, key=everything.index)  # in the corpus' order
    assert trained_pairs(max_pairs=20) == sample  # the same draw every time
    assert trained_pairs(max_pairs=20, seed=1) != sample
    assert trained_pairs(max_pairs=500) == everything
