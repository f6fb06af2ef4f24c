"""The data-property matrix and its embedding cache, with the packaged all-MiniLM-L6-v2."""

from __future__ import annotations

import numpy as np
import pytest

from instruct_lf_dagster.core.compatibility import EmbeddingCache, compatibility, encode_cached
from instruct_lf_dagster.core.encoder import load_encoder
from instruct_lf_dagster.core.linker import Linker

pytestmark = pytest.mark.integration  # every test here runs the real MiniLM

DOCUMENTS = [
    "User: I loved the Avengers, any other superhero movies?\nSystem: ",
    "User: Something scary for Halloween night please.\nSystem: ",
    "User: My kids want an animated film with talking animals.\nSystem: ",
    "",
]
PROPERTIES = ["Superhero genre", "Horror movie", "Family friendly animation", "Romantic comedy", ""]


@pytest.fixture(scope="module")
def linker() -> Linker:
    return Linker()


@pytest.fixture
def counted(linker: Linker, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text the linker encodes from now on, in order."""
    seen: list[str] = []
    encode = linker.encode

    def counting(texts, batch_size=64):
        seen.extend(texts)
        return encode(texts, batch_size=batch_size)

    monkeypatch.setattr(linker, "encode", counting)
    return seen


def test_matrix_equals_naive_pairwise_cosine(linker: Linker) -> None:
    encoder = load_encoder()
    alone = {text: encoder.encode([text])[0] for text in DOCUMENTS + PROPERTIES}  # one text per call
    matrix = compatibility(linker, DOCUMENTS, PROPERTIES)
    for i, document in enumerate(DOCUMENTS):
        for j, prop in enumerate(PROPERTIES):
            x, c = alone[document], alone[prop]
            cosine = x @ c / np.linalg.norm(x) / np.linalg.norm(c)
            assert matrix[i, j] == pytest.approx(cosine, abs=1e-5)


def test_shape_dtype_and_blocks(linker: Linker) -> None:
    whole = compatibility(linker, DOCUMENTS, PROPERTIES)
    blocked = compatibility(linker, DOCUMENTS, PROPERTIES, block_rows=1, batch_size=2)
    assert whole.shape == (len(DOCUMENTS), len(PROPERTIES))
    assert whole.dtype == np.float32 and blocked.dtype == np.float32
    np.testing.assert_allclose(blocked, whole, atol=1e-6)
    # The diagonal of matching topics beats the mismatched romantic comedy column.
    assert all(whole[i, i] > whole[i, 3] for i in range(3))


def test_empty_inputs(linker: Linker) -> None:
    assert compatibility(linker, [], PROPERTIES).shape == (0, len(PROPERTIES))
    assert compatibility(linker, DOCUMENTS, []).shape == (len(DOCUMENTS), 0)
    assert encode_cached(linker, [], "property").shape == (0, linker.dimension)


def test_embeddings_are_normalised_float32(linker: Linker) -> None:
    vectors = encode_cached(linker, DOCUMENTS, "document")
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_cache_encodes_each_new_text_once(linker: Linker, counted: list[str]) -> None:
    cache = EmbeddingCache()
    first = compatibility(linker, DOCUMENTS + DOCUMENTS[:1], PROPERTIES, cache=cache)
    assert sorted(counted) == sorted(set(DOCUMENTS) | set(PROPERTIES))  # repeats encoded once
    counted.clear()
    again = compatibility(linker, DOCUMENTS, PROPERTIES, cache=cache)
    assert counted == []
    np.testing.assert_array_equal(again, first[: len(DOCUMENTS)])
    changed = ["User: Any Christmas movies?\nSystem: ", *DOCUMENTS[1:]]
    compatibility(linker, changed, PROPERTIES, cache=cache)
    assert counted == [changed[0]]


def test_a_stream_caches_properties_only(linker: Linker, counted: list[str]) -> None:
    cache = EmbeddingCache()
    first = compatibility(linker, DOCUMENTS, PROPERTIES, cache=cache, cache_documents=False)
    assert len(cache) == len(set(PROPERTIES))
    counted.clear()
    again = compatibility(linker, DOCUMENTS, PROPERTIES, cache=cache, cache_documents=False)
    np.testing.assert_array_equal(again, first)
    assert sorted(counted) == sorted(set(DOCUMENTS))  # the next batch encodes its documents alone


def test_cache_is_keyed_by_linker(linker: Linker) -> None:
    cache = EmbeddingCache()
    encode_cached(linker, PROPERTIES, "property", cache)
    tail = Linker(truncation="tail")
    assert tail.fingerprint != linker.fingerprint
    assert len(cache.vectors(tail.fingerprint)) == 0
    cache.prune([tail.fingerprint])
    assert len(cache.vectors(linker.fingerprint)) == 0


def test_cache_save_load_round_trip(linker: Linker, counted: list[str], tmp_path) -> None:
    cache = EmbeddingCache()
    expected = compatibility(linker, DOCUMENTS, PROPERTIES, cache=cache)
    path = cache.save(tmp_path / "embeddings.npz")
    counted.clear()
    loaded = EmbeddingCache.load(path)
    assert len(loaded) == len(cache)
    np.testing.assert_array_equal(compatibility(linker, DOCUMENTS, PROPERTIES, cache=loaded), expected)
    assert counted == []
    assert len(EmbeddingCache.load(EmbeddingCache().save(tmp_path / "empty.npz"))) == 0
