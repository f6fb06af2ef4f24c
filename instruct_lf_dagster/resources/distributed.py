"""The per-batch work on a Ray cluster: documents encoded by a pool of linker actors (Ray Data), and the
Linear CorEx statistics of each batch computed by tasks and summed on the driver.

Ray itself (the `ray` extra) is imported only when a Ray address is set: the local default never needs it. The
in-process path of the statistics is here too, so that both sum the same per-batch statistics in the same order.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from instruct_lf_dagster.core.corex import CorexStatistics
from instruct_lf_dagster.core.linker import Linker

log = logging.getLogger(__name__)

ROWS_PER_CALL = 256  # documents per actor call: spreads a batch over the pool, amortises the call
# Seconds to reach the cluster's port before giving up: ray.init itself retries an absent cluster for minutes.
CONNECT_TIMEOUT = 10.0
# Ray Client tries: the head starts a server process per client, and that start can fail once on a busy head.
CONNECT_ATTEMPTS = 3

ReadRows = Callable[[str], "np.ndarray | None"]  # a batch key -> its compatibility rows (None: no rows)


def connect(address: str, cpus: int) -> bool:
    """Connect this process to the Ray cluster at `address`; 'local' starts one here on `cpus` CPUs.

    Returns whether Ray was started or connected by this call (False: already connected). A cluster that
    cannot be reached raises ConnectionError naming the address.
    """
    try:
        import ray
    except ImportError as error:
        raise ImportError(
            f"a Ray address is set ({address!r}) but Ray is not installed: pip install 'instruct-lf-dagster[ray]'"
        ) from error
    if ray.is_initialized():
        return False
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address == "local":
        # address="local": always a new cluster, never one a stale /tmp/ray/ray_current_cluster points at
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, **quiet)
    else:
        reachable(address)
        _init(ray, address, quiet)
    from ray.data import DataContext

    # Progress goes to the run's log (see `encode`); Ray Data's own bars and info lines would bury it.
    DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    return True


def _init(ray, address: str, options: dict) -> None:
    """`ray.init(address)`, tried again after a refused Ray Client start; the error names the address."""
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            ray.init(address=address, **options)
            return
        except Exception as error:  # Ray raises several kinds (ConnectionError, RuntimeError, gRPC errors)
            # A failed Ray Client init leaves client mode on, and every later ray.init in this process would fail.
            ray.shutdown()
            # ConnectionAbortedError: the head could not start this client's server; anything else will not heal.
            if attempt == CONNECT_ATTEMPTS or not isinstance(error, ConnectionAbortedError):
                tries = f" ({attempt} tries)" if attempt > 1 else ""
                hint = ""
                if address.startswith("ray://") and "timeout" in str(error):
                    hint = " (a ray:// address names the head's Ray Client port, 10001 unless set otherwise)"
                raise ConnectionError(
                    f"cannot connect to the Ray cluster at {address!r}{tries}: {error}{hint}"
                ) from error
            reason = str(error).strip().splitlines()[-1]  # the server's traceback ends with its reason
            log.warning("ray: the cluster at %s refused the connection (%s); trying again", address, reason)
            time.sleep(2.0 * attempt)


def reachable(address: str) -> None:
    """Raise ConnectionError naming the address when nothing listens at its host:port ('auto' is left to Ray)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT):
            pass
    except (OSError, ValueError) as error:
        raise ConnectionError(
            f"cannot reach the Ray cluster at {address!r} (INSTRUCT_LF_RAY_ADDRESS): {error}"
        ) from error


def disconnect() -> None:
    import ray

    ray.shutdown()


class _Encoder:
    """One actor of the pool: a copy of the linker, loaded once and kept across calls and batches."""

    def __init__(self, linker: Linker, batch_size: int, threads: int, device: str) -> None:
        import ray
        import torch

        torch.set_num_threads(threads)
        if isinstance(linker, ray.ObjectRef):
            linker = ray.get(linker)
        self.linker, self.batch_size = linker.to(device), batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors = self.linker.encode_documents(batch["text"].tolist(), batch_size=self.batch_size)
        return {"row": batch["row"], "vector": vectors}


def encode(linker: Linker, texts: Sequence[str], *, batch_size: int, cpus_per_actor: int) -> np.ndarray:
    """Document embeddings of `texts` (one row each, in order) from an actor pool on the connected cluster.

    One actor per GPU when the cluster has GPUs, else one per `cpus_per_actor` CPUs. An actor that dies is
    restarted by Ray and its calls are run again, so a lost worker costs time, not the batch.
    """
    import ray

    if not len(texts):
        return np.zeros((0, linker.dimension), dtype=np.float32)
    if ray.util.client.ray.is_connected():
        # Ray Data runs only where the driver is a cluster process: over Ray Client, the pipeline runs in a task.
        log.info("ray: encoding %d documents in a task on the cluster (Ray Client)", len(texts))
        task = ray.remote(num_cpus=0)(_encode)
        # Put, not passed inline: Ray Client streams a put in chunks, and warns of task messages over 10 MB.
        return ray.get(task.remote(ray.put(linker), ray.put(list(texts)), batch_size, cpus_per_actor))
    return _encode(linker, texts, batch_size, cpus_per_actor)


def _encode(linker: Linker, texts: Sequence[str], batch_size: int, cpus_per_actor: int) -> np.ndarray:
    import pandas as pd
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    calls = -(-len(texts) // ROWS_PER_CALL)
    actors = min(calls, gpus or max(1, int(resources.get("CPU", 1)) // cpus_per_actor))
    frames = [
        pd.DataFrame(
            {
                "row": np.arange(start, min(start + ROWS_PER_CALL, len(texts))),
                "text": texts[start : start + ROWS_PER_CALL],
            }
        )
        for start in range(0, len(texts), ROWS_PER_CALL)
    ]
    linker_ref = ray.put(linker)  # one copy in the object store, shared by every actor
    dataset = ray.data.from_pandas(
        frames
    ).map_batches(
        _Encoder,
        fn_constructor_kwargs={
            "linker": linker_ref,
            "batch_size": batch_size,
            "threads": cpus_per_actor,
            "device": "cuda" if gpus else "cpu",
        },
        batch_size=ROWS_PER_CALL,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=0 if gpus else cpus_per_actor,
        num_gpus=1 if gpus else 0,
    )  # Ray Data's actor pools replace a dead actor and run its calls again (max_restarts = max_task_retries = -1)
    vectors = np.empty((len(texts), linker.dimension), dtype=np.float32)
    done, reported = 0, 0
    for batch in dataset.iter_batches(batch_format="numpy", batch_size=None):
        vectors[batch["row"]] = batch["vector"]
        done += len(batch["row"])
        if done - reported >= len(texts) / 10 or done == len(texts):
            log.info("ray: encoded %d/%d documents on %d actor(s)", done, len(texts), actors)
            reported = done
    if done != len(texts):
        raise RuntimeError(f"the Ray pool returned {done} of {len(texts)} document embeddings")
    return vectors


def _batch_statistics(read: ReadRows, key: str, p: int) -> CorexStatistics:
    rows = read(key)
    return CorexStatistics(p) if rows is None else CorexStatistics.of([rows])


def statistics(keys: Sequence[str], read: ReadRows, p: int, in_flight: int = 0) -> CorexStatistics:
    """The summed Linear CorEx statistics of every batch in `keys`, each batch's computed by a Ray task that
    reads its rows from storage. Summed in key order, as in process; at most `in_flight` results (0: two per
    CPU) wait on the driver, so memory stays bounded whatever the number of batches."""
    import ray

    task = ray.remote(max_retries=3)(_batch_statistics)  # a task on a lost worker runs again
    read_ref = ray.put(read)
    in_flight = in_flight or 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    total, pending = CorexStatistics(p), deque()
    for key in keys:
        pending.append(task.remote(read_ref, key, p))
        if len(pending) >= in_flight:
            total = total.merge(ray.get(pending.popleft()))
    while pending:
        total = total.merge(ray.get(pending.popleft()))
    return total


def batch_statistics_here(keys: Sequence[str], read: ReadRows, p: int) -> CorexStatistics:
    """`statistics` in this process: the same per-batch statistics, summed in the same order."""
    total = CorexStatistics(p)
    for key in keys:
        total = total.merge(_batch_statistics(read, key, p))
    return total
