"""Document representations the evaluations compare: the alternatives a user would pick instead of factors.

Raw embeddings are a reference (not interpretable); LDA and BERTopic are peers: fitted on texts without labels,
they score any texts (`transform`) and are read as `Topics`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from instruct_lf_dagster.core.encoder import load_encoder
from instruct_lf_dagster.core.topics import Cost, Topics
from instruct_lf_dagster.evaluation.topics import hard_assignment

if TYPE_CHECKING:
    from instruct_lf_dagster.core.compatibility import EmbeddingCache

LDA_TOPICS = 50
LDA_VOCABULARY = 5000
TOP_MEMBERS = 10  # members a topic is read by


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


class LDA:
    """LDA (scikit-learn, batch variational Bayes) over word counts, read as topics of their top words.

    Vocabulary: the `max_features` most frequent words of the fit texts, English stop words removed, words in
    at least 2 and at most half of the documents. `transform` gives topic mixtures.
    """

    cost = Cost()  # no LLM

    def __init__(self, n_topics: int = LDA_TOPICS, *, max_features: int = LDA_VOCABULARY, seed: int = 0):
        self.n_topics, self.max_features, self.seed = n_topics, max_features, seed

    def fit(self, texts: Sequence[str]) -> LDA:
        from sklearn.decomposition import LatentDirichletAllocation
        from sklearn.feature_extraction.text import CountVectorizer

        self.vectorizer_ = CountVectorizer(
            stop_words="english", max_features=self.max_features, min_df=min(2, len(texts)), max_df=0.5
        )
        counts = self.vectorizer_.fit_transform(texts)
        self.model_ = LatentDirichletAllocation(
            n_components=self.n_topics, learning_method="batch", random_state=self.seed
        ).fit(counts)
        self.assignment_ = hard_assignment(self.model_.transform(counts))
        return self

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        return self.model_.transform(self.vectorizer_.transform(texts))

    def topics(self, top: int = TOP_MEMBERS) -> Topics:
        words = self.vectorizer_.get_feature_names_out()
        members = [
            tuple(words[j] for j in np.argsort(-row, kind="stable")[:top]) for row in self.model_.components_
        ]
        return Topics([", ".join(m[:3]) for m in members], members, self.assignment_)


def bertopic_available() -> bool:
    """Whether the BERTopic peer can run (`pip install instruct-lf-dagster[baselines]`)."""
    return importlib.util.find_spec("bertopic") is not None


class BERTopicPeer:
    """BERTopic as its users run it, with the same MiniLM encoder: UMAP (seeded), HDBSCAN choosing the number of
    topics, c-TF-IDF over words with English stop words removed (its documentation's advice). `min_topic_size`
    is the default 10 from 300 documents up; below, its author's advice for small corpora (a smaller minimum
    cluster size) is followed: one per 30 documents, at least 3. Without that, 100 review snippets gave no
    topic at all. `transform` gives `approximate_distribution`'s topic distributions; documents HDBSCAN leaves
    out (topic -1) are assigned no topic."""

    cost = Cost()  # no LLM

    def __init__(self, *, seed: int = 0, min_topic_size: int | None = None):
        self.seed, self.min_topic_size = seed, min_topic_size

    def fit(self, texts: Sequence[str]) -> BERTopicPeer:
        from bertopic import BERTopic
        from sklearn.feature_extraction.text import CountVectorizer
        from umap import UMAP

        umap = UMAP(n_neighbors=15, n_components=5, min_dist=0.0, metric="cosine", random_state=self.seed)
        self.model_ = BERTopic(
            embedding_model=load_encoder(),
            umap_model=umap,
            vectorizer_model=CountVectorizer(stop_words="english"),
            min_topic_size=self.min_topic_size or min(10, max(3, len(texts) // 30)),
            calculate_probabilities=False,
        )
        self.model_.fit(list(texts))
        return self

    def _ids(self) -> list[int]:
        return sorted(t for t in self.model_.get_topics() if t >= 0)

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        if not self._ids():  # HDBSCAN left every document out: no topic to score on (one constant column)
            return np.zeros((len(texts), 1), np.float32)
        distribution, _ = self.model_.approximate_distribution(list(texts))
        out = np.asarray(distribution, dtype=np.float32)
        return out.reshape(len(texts), -1) if out.size else np.zeros((len(texts), 1), np.float32)

    def topics(self, top: int = TOP_MEMBERS) -> Topics:
        ids = self._ids()
        members = [tuple(w for w, _ in (self.model_.get_topic(t) or [])[:top] if w) for t in ids]
        assignment = np.asarray(self.model_.topics_, dtype=int)
        return Topics([", ".join(m[:3]) for m in members], members, assignment)


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
