import numpy as np

from instruct_lf_dagster.core.vocabulary import Vocabulary


def _fake_embed(groups: dict[str, int]):
    """Embeds each text as the unit vector of its group: same group -> cosine 1, else 0."""

    def embed(texts):
        out = np.zeros((len(texts), max(groups.values()) + 1), dtype=np.float32)
        for i, t in enumerate(texts):
            out[i, groups[t]] = 1.0
        return out

    return embed


def test_exact_duplicates_fold_to_most_frequent_spelling():
    vocab = Vocabulary.fit([["Comedy genre", "dark humor"], ["comedy genre.", "Dark humor"], ["Dark humor"]])
    assert vocab.properties == ["Comedy genre", "Dark humor"]
    assert vocab.counts == {"Comedy genre": 2, "Dark humor": 3}
    assert vocab.canonical["comedy genre."] == "Comedy genre"
    assert vocab.canonical["dark humor"] == "Dark humor"
    assert vocab.merges == 0


def test_near_duplicates_merge_without_chaining():
    proposals = [
        ["Horror"],
        ["Horror"],
        ["Horror"],
        ["Scary movies"],
        ["Horror comedy"],
        ["Comedy"],
        ["Comedy"],
    ]
    # Scary movies is a near duplicate of Horror; Horror comedy sits between Horror and Comedy, close to neither.
    vectors = {
        "Horror": [1, 0, 0],
        "Scary movies": [0.99, 0.14, 0],
        "Horror comedy": [0.7, 0.7, 0.14],
        "Comedy": [0, 1, 0],
    }

    def embed(texts):
        v = np.array([vectors[t] for t in texts], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    vocab = Vocabulary.fit(proposals, embed, threshold=0.95)
    assert vocab.properties == ["Comedy", "Horror", "Horror comedy"]
    assert vocab.canonical["Scary movies"] == "Horror"
    assert vocab.counts["Horror"] == 4
    assert vocab.merges == 1


def test_result_does_not_depend_on_input_order():
    proposals = [["b thing", "A thing"], ["c thing"], ["a thing", "B thing"]]
    embed = _fake_embed({"A thing": 0, "B thing": 0, "C thing": 1, "a thing": 0, "b thing": 0})
    one = Vocabulary.fit(proposals, embed)
    two = Vocabulary.fit(list(reversed(proposals)), embed)
    assert one.to_dict() == two.to_dict()
    assert len(one) == 2


def test_junk_and_empty_proposals_are_skipped():
    vocab = Vocabulary.fit([[], None, ["", "...", "Real property"]])
    assert vocab.properties == ["Real property"]
    assert vocab.map(["...", "Real property", "unknown"]) == ["Real property"]


def test_min_count_and_round_trip(tmp_path):
    vocab = Vocabulary.fit([["Rare"], ["Common"], ["Common"]], min_count=2)
    assert vocab.properties == ["Common"]
    assert "Rare" not in vocab.canonical
    vocab.save(tmp_path / "v.json")
    assert Vocabulary.load(tmp_path / "v.json") == vocab
