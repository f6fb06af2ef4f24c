"""The data-property matrix X[i, j] = cosine(Phi(document_i), Phi(property_j)), with an embedding cache.

Each unique text is encoded once, in a single encoder call per kind: sentence-transformers sorts the
texts of a call by length and restores their order, so batches carry little padding and no sorting is
repeated here. An empty text is encoded like any other (the encoder's embedding of an empty input).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from instruct_lf_dagster.core.config import ComputeConfig
from instruct_lf_dagster.core.linker import Linker

Kind = Literal["document", "property"]
Encode = Callable[[list[str]], np.ndarray]  # texts -> their normalised embeddings, one row each


_COMPUTE = ComputeConfig()  # declared in core.config


def text_key(text: str) -> str:
    """The cache key of a text: sha1 of its UTF-8 bytes."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Embeddings keyed by (linker fingerprint, sha1 of the text), so unchanged text is never encoded twice.

    Held in memory; `save` and `load` persist it as an .npz file of plain arrays (no pickle).
    """

    def __init__(self) -> None:
        self._vectors: dict[str, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return sum(map(len, self._vectors.values()))

    def vectors(self, fingerprint: str) -> dict[str, np.ndarray]:
        """The (mutable) text-key -> embedding mapping of one linker."""
        return self._vectors.setdefault(fingerprint, {})

    def prune(self, keep: Iterable[str]) -> None:
        """Forget the embeddings of every linker whose fingerprint is not in `keep` (e.g. retrained ones)."""
        keep = set(keep)
        self._vectors = {fp: vectors for fp, vectors in self._vectors.items() if fp in keep}

    def save(self, path: str | Path) -> Path:
        """Write the cache to `path` (.npz), atomically."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {"fingerprints": np.array(list(self._vectors), dtype=str)}
        for i, vectors in enumerate(self._vectors.values()):
            arrays[f"keys_{i}"] = np.array(list(vectors), dtype=str)
            arrays[f"vectors_{i}"] = (
                np.stack(list(vectors.values())) if vectors else np.zeros((0, 0), dtype=np.float32)
            )
        partial = path.with_name(path.name + ".partial")
        with partial.open("wb") as file:
            np.savez(file, **arrays)
        os.replace(partial, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingCache:
        """A cache written by `save`."""
        cache = cls()
        with np.load(Path(path), allow_pickle=False) as data:
            for i, fingerprint in enumerate(data["fingerprints"].tolist()):
                keys, vectors = data[f"keys_{i}"].tolist(), data[f"vectors_{i}"]
                cache._vectors[fingerprint] = dict(zip(keys, vectors, strict=True))
        return cache


def encode_cached(
    linker: Linker,
    texts: Sequence[str],
    kind: Kind = "document",
    cache: EmbeddingCache | None = None,
    batch_size: int | None = None,
    encode: Encode | None = None,
) -> np.ndarray:
    """Normalised float32 embeddings of `texts`, one row each; only texts absent from `cache` are encoded,
    each unique text once (`batch_size` None: the linker's default for the kind).

    `encode`: what encodes the missing texts (e.g. an actor pool on a Ray cluster); default: the linker here.
    """
    store = cache.vectors(linker.fingerprint) if cache is not None else {}
    keys = [text_key(text) for text in texts]
    missing: dict[str, str] = {}
    for key, text in zip(keys, texts, strict=True):
        if key not in store:
            missing.setdefault(key, text)
    if missing:
        if encode is None:
            here = linker.encode_documents if kind == "document" else linker.encode_properties
            options = {} if batch_size is None else {"batch_size": batch_size}
            vectors = here(list(missing.values()), **options)
        else:
            vectors = encode(list(missing.values()))
        store.update(zip(missing, vectors, strict=True))
    if not keys:
        return np.zeros((0, linker.dimension), dtype=np.float32)
    return np.stack([store[key] for key in keys])


def compatibility(
    linker: Linker,
    documents: Sequence[str],
    properties: Sequence[str],
    *,
    batch_size: int = _COMPUTE.encode_batch_size,
    block_rows: int = 4096,
    cache: EmbeddingCache | None = None,
    encode_documents: Encode | None = None,
    cache_documents: bool = True,
) -> np.ndarray:
    """The N x P float32 matrix of cosines between document and property embeddings.

    `batch_size` is the number of documents per encoder batch (properties, being short, use the
    linker's larger default); the product is written block by block into the result, with no
    temporaries larger than `block_rows` rows. `encode_documents`: see `encode_cached`.
    `cache_documents=False` keeps only property embeddings in `cache` (a stream's documents come once).
    """
    document_cache = cache if cache_documents else None
    document_vectors = encode_cached(
        linker, documents, "document", document_cache, batch_size, encode_documents
    )
    property_vectors = np.ascontiguousarray(encode_cached(linker, properties, "property", cache).T)
    matrix = np.empty((len(documents), len(properties)), dtype=np.float32)
    for start in range(0, len(documents), block_rows):
        stop = start + block_rows
        np.matmul(document_vectors[start:stop], property_vectors, out=matrix[start:stop])
    return matrix
