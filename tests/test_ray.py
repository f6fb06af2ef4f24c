"""The per-batch work on a real Ray cluster started on 127.0.0.1 (2 CPUs): the same rows and factors as in
process, a killed worker, an unreachable cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from instruct_lf_dagster.assets.matrix import read
from instruct_lf_dagster.core.linker import Linker
from instruct_lf_dagster.partitions import batches
from instruct_lf_dagster.resources import distributed
from instruct_lf_dagster.resources.compute import ComputeResource
from instruct_lf_dagster.resources.inbox import LocalInbox
from tests.conftest import _free_port
from tests.test_pipeline import local_resources, run, table, write_batches

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install '.[ray]'")
pytestmark = pytest.mark.integration

ENCODER = "MapWorker(MapBatches(_Encoder))"  # the process title Ray gives the encoder actors


@pytest.fixture(scope="module")
def ray_cluster():
    """`ray start --head` on 127.0.0.1 with 2 CPUs, in its own process group; yields its address."""
    port, client_port = _free_port(), _free_port()
    ray_cli = Path(sys.executable).with_name("ray")
    head = subprocess.Popen(
        [
            str(ray_cli), "start", "--head", "--block", "--num-cpus=2", f"--port={port}", f"--ray-client-server-port={client_port}",
            "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats",
        ],
        # A cluster on loopback for one test module: no token (production clusters keep Ray's token auth).
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            from instruct_lf_dagster.resources.distributed import reachable

            reachable(address)
            break
        except ConnectionError:
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Ray head did not start (exit code {head.poll()})") from None
            time.sleep(1)
    yield address, f"ray://127.0.0.1:{client_port}"
    os.killpg(head.pid, signal.SIGTERM)  # --block: the head stops every process it started
    head.wait(60)


def encoder_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if ENCODER in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def test_two_batches_on_ray_give_the_rows_and_factors_of_the_run_in_process(
    tmp_path, keyword_llm, instance, ray_cluster
):
    keys = write_batches(tmp_path / "inbox", count=2)
    instance.add_dynamic_partitions(batches.name, keys)
    results = {}
    for where, address in (("here", ""), ("ray", ray_cluster[0])):
        resources = local_resources(tmp_path / where)
        resources["inbox"] = LocalInbox(path=str(tmp_path / "inbox"))
        resources["compute"] = ComputeResource(device="cpu", encode_batch_size=16, ray_address=address)
        assert run(resources, instance, keys).success
        storage = resources["storage"]
        width = len(storage.load_artefact("reviews__vocabulary"))
        rows = [read(storage, "reviews__compatibility", key, width) for key in keys]
        report = table(resources, "reviews__factor_report").sort_values(["factor", "rank"])
        results[where] = (rows, report, storage.load_artefact("reviews__latent_factors"))

    (rows_here, report_here, factors_here), (rows_ray, report_ray, factors_ray) = results.values()
    for (ids_here, x_here), (ids_ray, x_ray) in zip(rows_here, rows_ray, strict=True):
        assert ids_here == ids_ray
        np.testing.assert_allclose(x_ray, x_here, atol=1e-5, rtol=0)
    assert report_ray["property"].tolist() == report_here["property"].tolist()
    assert report_ray["factor"].tolist() == report_here["factor"].tolist()
    assert factors_ray.assignment.tolist() == factors_here.assignment.tolist()


def test_a_killed_encoder_actor_is_replaced_and_no_document_is_lost(ray_cluster):
    texts = [f"review {i}: a {'slow' if i % 3 else 'funny'} film with a brilliant actor" for i in range(6000)]
    linker = Linker()
    compute = ComputeResource(device="cpu", ray_address=ray_cluster[0])
    killed: list[int] = []
    done = threading.Event()

    def kill_one_actor_mid_work():
        while not killed and not done.wait(0.2):
            pids = encoder_pids()
            if pids and not done.wait(3):  # loaded and encoding
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])

    killer = threading.Thread(target=kill_one_actor_mid_work)
    killer.start()
    try:
        vectors = compute.document_encoder(linker)(texts)
    finally:
        done.set()
        killer.join()
        compute.disconnect()
    assert killed, "no encoder actor was seen to kill"
    np.testing.assert_allclose(vectors, linker.encode_documents(texts), atol=1e-5, rtol=0)


def encodes_as_in_process(address: str, texts: list[str]) -> None:
    """Documents encoded through a ComputeResource on `address` equal the linker's own, in this process."""
    linker = Linker()
    compute = ComputeResource(device="cpu", ray_address=address)
    try:
        vectors = compute.document_encoder(linker)(texts)
    finally:
        compute.disconnect()
    np.testing.assert_allclose(vectors, linker.encode_documents(texts), atol=1e-5, rtol=0)


def test_a_failed_ray_client_connection_leaves_the_process_able_to_connect(ray_cluster):
    wrong = "ray://" + ray_cluster[0]  # the cluster's own port, not its Ray Client port
    with pytest.raises(ConnectionError, match="Ray Client port"):
        distributed.connect(wrong, 2)
    encodes_as_in_process(ray_cluster[0], [f"film {i}" for i in range(40)])


def test_a_ray_client_connection_encodes_in_a_task_on_the_cluster(ray_cluster):
    encodes_as_in_process(
        ray_cluster[1], [f"a {'slow' if i % 2 else 'funny'} film, number {i}" for i in range(300)]
    )


def test_an_unreachable_cluster_fails_the_run_naming_the_address(tmp_path, keyword_llm, instance):
    keys = write_batches(tmp_path / "inbox", count=1)
    instance.add_dynamic_partitions(batches.name, keys)
    address = f"127.0.0.1:{_free_port()}"  # nothing listens there
    resources = local_resources(tmp_path)
    resources["compute"] = ComputeResource(device="cpu", ray_address=address)
    result = run(resources, instance, keys, raise_on_error=False)
    assert not result.success
    failures = [
        str(e.event_specific_data) for e in result.all_events if e.is_failure or e.is_resource_init_failure
    ]
    assert failures and all(address in f and "Ray cluster" in f for f in failures), failures


def test_bench_ray_times_both_and_the_rows_agree(tmp_path, capsys):
    import argparse
    import json

    from instruct_lf_dagster.bench import ray as bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    result = bench.main(
        parser.parse_args(["--docs", "300", "--props", "20", "--cpus", "2", "--data", str(tmp_path)])
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert result["docs"] == 300 and result["in_process_seconds"] > 0 and result["ray_seconds"] > 0
    assert result["max_abs_diff"] <= 1e-5
