"""The probe's protocol: a seeded fit/evaluation split, and balanced accuracy of cross-validated classifiers.

Also the choice between factor settings, made on the fit part's own labels, and the refit of a model's
factors with another seed on the same linker (fine-tuning the linker is the costly step on a CPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from instruct_lf_dagster.evaluation.report import Scores

if TYPE_CHECKING:  # torch comes with them: loaded only when factors are discovered
    from instruct_lf_dagster.core.factors import Factors
    from instruct_lf_dagster.core.pipeline import InstructLF

FOLDS = 5


def split(
    n: int, fit_fraction: float, *, max_docs: int | None = None, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Sorted row indices (fit, evaluation) of a seeded random sample of at most `max_docs` of `n` rows."""
    if not 0 < fit_fraction < 1:
        raise ValueError(f"fit fraction must be between 0 and 1, not {fit_fraction}")
    order = np.random.default_rng(seed).permutation(n)[:max_docs]
    n_fit = round(fit_fraction * len(order))
    return sorted(order[:n_fit].tolist()), sorted(order[n_fit:].tolist())


def classifiers(seed: int) -> dict:
    """The probe's classifiers, unfitted: the paper's default tree, and logistic regression on standardised
    features.

    Standardising first gives LogisticRegression's default regularisation the same meaning for every
    representation (raw embeddings have tiny coordinates, LDA mixtures sum to one).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    return {
        "tree": DecisionTreeClassifier(random_state=seed),
        "logreg": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed)),
    }


def frequent(labels: np.ndarray, minimum: int = FOLDS) -> np.ndarray:
    """Mask of the rows whose label occurs at least `minimum` times (stratified folds need one per fold)."""
    values, counts = np.unique(labels, return_counts=True)
    return np.isin(labels, values[counts >= minimum])


def cross_validated(
    features: np.ndarray, labels: np.ndarray, classifier, *, folds: int = FOLDS, seed: int = 0
) -> float:
    """Mean balanced accuracy of `classifier` over seeded, shuffled, stratified k-fold cross-validation."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(classifier, features, labels, cv=cv, scoring="balanced_accuracy")))


def evaluate(
    features: dict[str, np.ndarray], labels: dict[str, np.ndarray], *, folds: int = FOLDS, seed: int = 0
) -> Scores:
    """Balanced accuracy per "field/classifier" metric and representation, on each field's frequent labels."""
    scores: Scores = {}
    for field, y in labels.items():
        keep = frequent(y, folds)
        if len(np.unique(y[keep])) < 2:
            raise ValueError(f"label field {field!r}: fewer than 2 labels with {folds} documents to score")
        for name, classifier in classifiers(seed).items():
            scores[f"{field}/{name}"] = {
                method: cross_validated(x[keep], y[keep], classifier, folds=folds, seed=seed)
                for method, x in features.items()
            }
    return scores


def refit_factors(
    model: InstructLF,
    corpus: Sequence[str],
    seed: int,
    l1: float | None = None,
    n_factors: int | None = None,
) -> Factors:
    """A fitted model's factors again, from Linear CorEx with another seed (and L1 penalty and factor count,
    default the model's) on the same linker's matrix.

    Fine-tuning the linker is the costly step on a CPU, so one linker serves every seed of a run.
    """
    refit = model.but(
        factors={
            "n_factors": n_factors or model.factors_.n_factors,
            "l1": model.config.factors.l1 if l1 is None else l1,
        },
        seed=seed,
    )
    return refit.fit_factors(model.compatibility(corpus), model.vocabulary_.properties)


Setting = tuple[int, float]  # (factors, L1 penalty)


def choose_setting(
    model: InstructLF,
    texts: Sequence[str],
    labels: dict[str, np.ndarray],
    settings: Sequence[Setting],
    *,
    folds: int = FOLDS,
    seed: int = 0,
) -> tuple[Setting, Factors, dict[Setting, float]]:
    """The (factors, L1 penalty) whose factors score best on the fit part itself (`texts`, `labels`: mean
    balanced accuracy over label fields and classifiers); the evaluation part is not looked at. Ties go to the
    first setting, whose factors must be the model's. Returns (setting, its factors, score per setting)."""
    x = model.compatibility(texts)
    candidates = {settings[0]: model.factors_} | {
        (m, l1): refit_factors(model, texts, seed, l1, m) for m, l1 in settings[1:] if (m, l1) != settings[0]
    }

    def score(factors: Factors) -> float:
        result = evaluate({"factors": factors.scores(x)}, labels, folds=folds, seed=seed)
        return float(np.mean([values["factors"] for values in result.values()]))

    scores = {setting: score(factors) for setting, factors in candidates.items()}
    best = max(scores, key=scores.get)
    return best, candidates[best], scores


def agreement(assignment: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """How a hard topic assignment (a document's strongest topic; -1: none, a cluster of its own) agrees with
    labels, as TopicGPT reports it: harmonic purity, adjusted Rand index, normalised mutual information.

    Harmonic purity is the harmonic mean of purity (each topic counted by its most frequent label) and inverse
    purity (each label by the topic that holds most of it): neither one topic per document nor one topic for
    all scores well. scikit-learn has ARI and NMI but not purity, hence the contingency table here.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    from sklearn.metrics.cluster import contingency_matrix

    table = contingency_matrix(labels, assignment)  # labels x topics
    purity = table.max(axis=0).sum() / table.sum()
    inverse = table.max(axis=1).sum() / table.sum()
    return {
        "purity": float(2 * purity * inverse / (purity + inverse)),
        "ari": float(adjusted_rand_score(labels, assignment)),
        "nmi": float(normalized_mutual_info_score(labels, assignment)),
    }


def agreements(assignments: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> Scores:
    """`agreement` per "field/measure" metric and method."""
    scores: Scores = {}
    for field, y in labels.items():
        for method, assignment in assignments.items():
            for measure, value in agreement(assignment, y).items():
                scores.setdefault(f"{field}/{measure}", {})[method] = value
    return scores
