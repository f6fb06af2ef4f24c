"""The per-batch stage (a batch's compatibility rows) in this process and on a local Ray cluster, one run.

Both use the same CPUs: in process, torch on every thread; on Ray, a cluster started here with as many CPUs and
one single-threaded encoder actor per CPU (the setting `INSTRUCT_LF_RAY_ADDRESS=local` gives). Ray is timed from
the call (actors starting, the linker shipped to them, every document encoded, the product) to the last row;
starting the cluster itself is shown apart, as a long-lived cluster pays it once. The same documents and
properties as `bench compatibility` (INSPIRED dialogues and recorded proposals when ../shared is present).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from instruct_lf_dagster.bench import report
from instruct_lf_dagster.bench.compatibility import DEFAULT_DATA, build_texts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `instruct-lf bench ray`."""
    parser.add_argument("--docs", type=int, default=20000, help="documents in the batch (default 20000)")
    parser.add_argument("--props", type=int, default=1000, help="properties (default 1000)")
    parser.add_argument("--cpus", type=int, default=0, help="CPUs for both runs (default: every core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="INSPIRED data directory")


def main(args: argparse.Namespace) -> dict:
    """Run the benchmark, print a table and, last, the JSON summary."""
    import torch

    from instruct_lf_dagster.core.compatibility import EmbeddingCache, compatibility
    from instruct_lf_dagster.core.linker import Linker
    from instruct_lf_dagster.resources.compute import ComputeResource

    cpus = args.cpus or os.cpu_count() or 1
    documents, properties, sources = build_texts(args.docs, args.props, args.seed, args.data)
    linker = Linker()
    torch.set_num_threads(cpus)
    linker.encode_documents(documents[:16])  # warm-up: first-call allocations and kernel selection

    started = time.perf_counter()
    here = compatibility(linker, documents, properties, cache=EmbeddingCache())
    in_process = time.perf_counter() - started

    compute = ComputeResource(device="cpu", threads=cpus, ray_address="local")
    started = time.perf_counter()
    encode = compute.document_encoder(linker)  # starts the cluster
    startup = time.perf_counter() - started
    try:
        started = time.perf_counter()
        on_ray = compatibility(linker, documents, properties, cache=EmbeddingCache(), encode_documents=encode)
        ray_seconds = time.perf_counter() - started
    finally:
        compute.disconnect()

    actors = max(1, cpus // compute.ray_cpus_per_actor)
    result = {
        "docs": len(documents),
        "in_process_seconds": round(in_process, 2),
        "ray_seconds": round(ray_seconds, 2),
        "overhead_ratio": round(ray_seconds / in_process, 3),
        "docs_per_second_per_cpu_actor": round(len(documents) / ray_seconds / actors, 2),
        "max_abs_diff": float(np.abs(on_ray - here).max()),
    }
    table = [
        ("documents", f"{len(documents)} ({sources['documents']})"),
        ("properties", f"{len(properties)} ({sources['properties']})"),
        ("CPUs", f"{cpus} (in process: {cpus} torch threads; Ray: {actors} actor(s) x 1 thread)"),
        ("in process", f"{in_process:.1f} s ({len(documents) / in_process:.1f} documents/s)"),
        ("Ray cluster start (once per cluster)", f"{startup:.1f} s"),
        ("on Ray", f"{ray_seconds:.1f} s ({len(documents) / ray_seconds:.1f} documents/s)"),
        ("overhead ratio (target <= 1.3)", f"{result['overhead_ratio']:.3f}"),
        ("documents/s per CPU actor", f"{result['docs_per_second_per_cpu_actor']:.2f}"),
        ("max |Ray - in process| (target <= 1e-5)", f"{result['max_abs_diff']:.2e}"),
    ]
    return report(table, result)
