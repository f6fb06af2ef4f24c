"""The linker: batching, truncation, persistence, determinism and what fine-tuning buys."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from instruct_lf_dagster.core.config import LinkerConfig
from instruct_lf_dagster.core.linker import Linker, no_duplicate_batches, positive_pairs

# Synthetic documents: topic words plus a mood sentence. Each topic's property is an arbitrary code
# word, so only training can link them; the moods are linked by meaning already.
TOPICS = {
    "Amber signal": "oven recipe flour simmer garlic bake sauce knife onion butter",
    "Violet signal": "goal striker referee penalty stadium midfield tackle league coach kick",
    "Falcon signal": "telescope galaxy orbit comet nebula planet stars eclipse lunar cosmic",
    "Granite signal": "soil seeds compost prune tulips hedge watering roots shovel greenhouse",
    "Willow signal": "loan interest deposit mortgage account credit teller savings cheque branch",
    "Copper signal": "guitar chord melody drummer concert rhythm piano lyrics chorus tempo",
    "Saffron signal": "mast anchor hull breeze harbor sail knots deck rudder tide",
    "Marble signal": "doctor fever clinic dose symptom nurse surgery vaccine patient diagnosis",
}
MOODS = {"Upbeat mood": "what a wonderful happy day", "Gloomy mood": "what a sad miserable day"}
FILLER = ["the", "a", "then", "and", "so", "we", "it", "was", "very", "quite", "really", "just"]
PROPERTIES = [*TOPICS, *MOODS]


def synthetic(per_topic: int, seed: int) -> tuple[list[str], list[list[str]]]:
    rng = random.Random(seed)
    documents, proposals = [], []
    for code, words in TOPICS.items():
        for _ in range(per_topic):
            mood = rng.choice(list(MOODS))
            body = " ".join(rng.choice(words.split() + FILLER) for _ in range(14))
            documents.append(f"{body}, {MOODS[mood]}")
            proposals.append([code, mood])
    return documents, proposals


def mean_reciprocal_rank(linker: Linker, documents: list[str], proposals: list[list[str]]) -> float:
    """Rank of each true property among all properties, the document's other true ones left out."""
    scores = linker.encode_documents(documents) @ linker.encode_properties(PROPERTIES).T
    ranks = []
    for row, true in zip(scores, proposals, strict=True):
        for prop in true:
            others = [PROPERTIES.index(p) for p in true if p != prop]
            ranks.append(1 + int((np.delete(row, others) > row[PROPERTIES.index(prop)]).sum()))
    return float(np.mean([1 / r for r in ranks]))


def test_positive_pairs_drop_blanks_and_repeats() -> None:
    pairs = positive_pairs(["a", "b", " ", "a"], [["x", "y", "x"], [], ["z"], ["y", ""]])
    assert pairs == [("a", "x"), ("a", "y")]
    with pytest.raises(ValueError):
        positive_pairs(["a"], [])


def test_no_duplicate_batches() -> None:
    rng = random.Random(0)
    pairs = list({(f"doc {rng.randrange(30)}", f"prop {rng.randrange(12)}") for _ in range(200)})
    batches = no_duplicate_batches(pairs, 8, torch.Generator().manual_seed(1))
    assert sorted(i for batch in batches for i in batch) == list(range(len(pairs)))
    for batch in batches:
        assert 0 < len(batch) <= 8
        assert len({pairs[i][0] for i in batch}) == len(batch)
        assert len({pairs[i][1] for i in batch}) == len(batch)
    assert batches == no_duplicate_batches(pairs, 8, torch.Generator().manual_seed(1))
    assert batches != no_duplicate_batches(pairs, 8, torch.Generator().manual_seed(2))
    assert no_duplicate_batches([], 8, torch.Generator()) == []


@pytest.mark.integration
def test_tail_truncation_keeps_the_end() -> None:
    long = " ".join(["we baked bread with flour butter and garlic in the oven"] * 20)
    long += " then we watched the telescope, the galaxy, a comet and the nebula"
    head = Linker(truncation="head", max_seq_length=32)
    tail = Linker(truncation="tail", max_seq_length=32)
    probe = head.encode_properties(
        ["astronomy: telescope, galaxy, comet, nebula", "baking bread in the oven"]
    )
    head_vector, tail_vector = head.encode_documents([long])[0], tail.encode_documents([long])[0]
    assert head_vector @ probe[0] < tail_vector @ probe[0]
    assert head_vector @ probe[1] > tail_vector @ probe[1]
    short = ["a short dialogue about comets"]
    np.testing.assert_allclose(head.encode_documents(short), tail.encode_documents(short), atol=1e-6)


@pytest.mark.integration
def test_lengths_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_seq_length must be a positive"):
        Linker(max_seq_length=0)
    with pytest.raises(ValueError, match="train_seq_length must be at least 8"):
        LinkerConfig(train_seq_length=-5)


@pytest.mark.integration
def test_tiny_data_is_harmless() -> None:
    linker = Linker(max_seq_length=32)
    before = linker.fingerprint
    for documents, proposals in [
        (["one document"], [["a", "b", "c"]]),  # a single document: no negatives anywhere
        (["one", "two"], [[], []]),  # nothing proposed
        ([], []),
    ]:
        report = linker.fit(documents, proposals, LinkerConfig(batch_size=4))
        assert report.epochs_run == 0 and report.train_losses == []
        assert linker.fingerprint == before
    # Fewer pairs than a batch, with repeats: trains, without a validation split to stop on.
    report = linker.fit(
        ["one", "two", "two"], [["x"], ["y", "y"], ["y"]], LinkerConfig(epochs=2, batch_size=512)
    )
    assert report.pairs == 2 and report.epochs_run == 2 and report.val_losses == []
    assert report.best_val_loss is None and all(np.isfinite(report.train_losses))
    assert linker.fingerprint != before


@pytest.mark.integration
def test_fit_is_deterministic() -> None:
    documents, proposals = synthetic(1, seed=0)

    def fitted(seed: int) -> Linker:
        linker = Linker(max_seq_length=32)
        linker.fit(documents, proposals, LinkerConfig(epochs=1, batch_size=8, val_fraction=0.25), seed=seed)
        return linker

    first, again, other = fitted(0), fitted(0), fitted(1)
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, again.model.state_dict()[name]), name
    assert first.fingerprint == again.fingerprint != other.fingerprint


@pytest.mark.integration
def test_save_load_round_trip(tmp_path) -> None:
    linker = Linker(truncation="tail", max_seq_length=48)
    linker.fit(*synthetic(1, seed=0), LinkerConfig(epochs=1, batch_size=8, val_fraction=0))
    linker.save(tmp_path / "linker")
    assert (tmp_path / "linker" / "model.safetensors").exists()
    assert not list((tmp_path / "linker").rglob("*.bin")) and not list((tmp_path / "linker").rglob("*.pkl"))
    loaded = Linker.load(tmp_path / "linker")
    assert (loaded.truncation, loaded.max_seq_length) == ("tail", 48)
    assert loaded.fingerprint == linker.fingerprint
    assert loaded.to("cpu") is loaded  # stored linkers load on the CPU; moving there is free
    texts = [" ".join(["early words"] * 40 + ["the latest turn about comets"]), "Falcon signal"]
    np.testing.assert_array_equal(loaded.encode_documents(texts), linker.encode_documents(texts))
    longer = Linker.load(tmp_path / "linker", max_seq_length=96)  # same weights, encoding a longer tail
    assert longer.max_seq_length == longer.model.max_seq_length == 96
    assert not np.allclose(longer.encode_documents(texts[:1]), linker.encode_documents(texts[:1]))
    np.testing.assert_allclose(
        longer.encode_documents(texts[1:]), linker.encode_documents(texts[1:]), atol=1e-6
    )


@pytest.mark.integration
def test_a_shorter_training_length_cuts_training_texts_only() -> None:
    documents, proposals = synthetic(1, seed=0)  # documents of 20-30 tokens
    full, short = Linker(max_seq_length=48), Linker(max_seq_length=48)
    for linker, length in ((full, None), (short, 8)):
        linker.fit(
            documents,
            proposals,
            LinkerConfig(epochs=1, batch_size=8, val_fraction=0, train_seq_length=length),
        )
    assert short.fingerprint != full.fingerprint  # it trained on other (cut) texts
    assert short.max_seq_length == short.model.max_seq_length == 48
    ends = [" ".join(["so"] * 30 + [end]) for end in ("comet nebula galaxy", "flour butter oven")]
    first, second = short.encode_documents(ends)  # the ends lie past token 8 and still count
    assert float(first @ second) < 0.99


@pytest.mark.integration
def test_fit_improves_held_out_retrieval() -> None:
    train_documents, train_proposals = synthetic(4, seed=0)
    test_documents, test_proposals = synthetic(4, seed=1)
    linker = Linker(max_seq_length=32)
    untrained = mean_reciprocal_rank(linker, test_documents, test_proposals)
    epochs = []
    report = linker.fit(
        train_documents,
        train_proposals,
        LinkerConfig(epochs=3, batch_size=16, lr=3e-4),
        progress=lambda epoch, train, val: epochs.append(epoch),
    )
    trained = mean_reciprocal_rank(linker, test_documents, test_proposals)
    assert trained > untrained + 0.15, (untrained, trained)
    assert report.pairs == 2 * len(train_documents)
    assert epochs == list(range(1, report.epochs_run + 1)) == list(range(1, len(report.train_losses) + 1))
    assert report.best_val_loss == min(report.val_losses)


@pytest.mark.integration
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_linker_moved_to_cuda_encodes_the_same() -> None:
    linker = Linker(truncation="tail", max_seq_length=48)
    texts = ["the latest turn about comets", "Falcon signal"]
    on_cpu, fingerprint = linker.encode_documents(texts), linker.fingerprint
    moved = linker.to("cuda")
    assert moved.device == "cuda" and moved.fingerprint == fingerprint
    np.testing.assert_allclose(moved.encode_documents(texts), on_cpu, atol=1e-4)
