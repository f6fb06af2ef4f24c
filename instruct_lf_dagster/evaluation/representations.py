"""Document representations the evaluations compare: the alternatives a user would pick instead of factors.

Each function fits on `fit_texts` (no labels) and returns one row per text of `texts`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from instruct_lf_dagster.core.encoder import load_encoder

if TYPE_CHECKING:
    from instruct_lf_dagster.core.compatibility import EmbeddingCache

LDA_TOPICS = 50
LDA_VOCABULARY = 5000


def raw_embeddings(
    texts: Sequence[str],
    *,
    truncation: str = "head",
    batch_size: int = 64,
    cache: EmbeddingCache | None = None,
) -> np.ndarray:
    """all-MiniLM-L6-v2 embeddings (normalised), untrained: what the linker starts from.

    With `cache`, texts it already holds for this encoder are not encoded again (e.g. by a later seed)."""
    from instruct_lf_dagster.core.compatibility import encode_cached
    from instruct_lf_dagster.core.linker import Linker

    return encode_cached(Linker(truncation=truncation), list(texts), "document", cache, batch_size)


def lda_topics(
    fit_texts: Sequence[str],
    texts: Sequence[str],
    *,
    n_topics: int = LDA_TOPICS,
    max_features: int = LDA_VOCABULARY,
    seed: int = 0,
) -> np.ndarray:
    """LDA topic mixtures (scikit-learn, batch variational Bayes) over word counts.

    Vocabulary: the `max_features` most frequent words of the fit texts, English stop words removed, words in
    at least 2 and at most half of the documents.
    """
    from sklearn.decomposition import LatentDirichletAllocation
    from sklearn.feature_extraction.text import CountVectorizer

    vectorizer = CountVectorizer(
        stop_words="english", max_features=max_features, min_df=min(2, len(fit_texts)), max_df=0.5
    )
    counts = vectorizer.fit_transform(fit_texts)
    lda = LatentDirichletAllocation(n_components=n_topics, learning_method="batch", random_state=seed)
    lda.fit(counts)
    return lda.transform(vectorizer.transform(texts))


def bertopic_available() -> bool:
    """Whether the optional BERTopic baseline can run (`pip install instruct-lf-dagster[baselines]`)."""
    return importlib.util.find_spec("bertopic") is not None


def bertopic_topics(fit_texts: Sequence[str], texts: Sequence[str], *, seed: int = 0) -> np.ndarray:
    """BERTopic topic distributions with the same MiniLM encoder (UMAP seeded, HDBSCAN, c-TF-IDF)."""
    from bertopic import BERTopic
    from umap import UMAP

    encoder = load_encoder()
    umap = UMAP(n_neighbors=15, n_components=5, min_dist=0.0, metric="cosine", random_state=seed)
    model = BERTopic(embedding_model=encoder, umap_model=umap, calculate_probabilities=False)
    model.fit(list(fit_texts))
    distribution, _ = model.approximate_distribution(list(texts))
    return np.asarray(distribution, dtype=np.float32)


def cosine_neighbours(queries: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """Indices (n_queries, k) of the k most cosine-similar keys per query, most similar first.

    Ties break by key index, so the result is deterministic. Zero rows have cosine 0 with everything.
    """
    q = _normalise(queries)
    s = q @ _normalise(keys).T
    k = min(k, s.shape[1])
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)
