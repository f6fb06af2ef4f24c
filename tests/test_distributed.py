"""The per-batch work in process: what the Ray path must equal (the Ray cluster itself: test_ray.py)."""

from __future__ import annotations

import numpy as np
import pytest

from instruct_lf_dagster.core.corex import CorexStatistics
from instruct_lf_dagster.resources import distributed
from instruct_lf_dagster.resources.compute import ComputeResource


def test_batch_statistics_summed_in_order_equal_the_statistics_of_all_rows():
    rng = np.random.default_rng(0)
    parts = {f"b{i}": rng.normal(3.0, 1.0 + i, size=(20 + i, 6)).astype(np.float32) for i in range(4)}
    parts["empty"] = None
    total = distributed.batch_statistics_here(list(parts), parts.get, 6)
    whole = CorexStatistics.of([p for p in parts.values() if p is not None])
    assert total.n == whole.n == sum(len(p) for p in parts.values() if p is not None)
    np.testing.assert_allclose(total.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(total.covariance(), whole.covariance(), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(total.minimum, whole.minimum)


def test_in_process_by_default_and_no_ray_needed():
    compute = ComputeResource(device="cpu")
    assert compute.document_encoder(linker=None) is None  # the linker encodes, here


@pytest.mark.parametrize("address", ["127.0.0.1:notaport", "nohost.invalid:6379"])
def test_a_bad_address_is_refused_naming_it(address):
    with pytest.raises(ConnectionError, match=address.replace(".", r"\.")):
        distributed.reachable(address)


class FlakyRay:
    """Ray's init/shutdown as a Ray Client connection sees them: the first `refusals` inits are refused by the
    head (it could not start the client's server), or fail with `error` on every try."""

    def __init__(self, refusals: int = 0, error: Exception | None = None) -> None:
        self.refusals, self.error, self.calls = refusals, error, []

    def init(self, address: str, **options) -> None:
        self.calls.append("init")
        if self.error is not None:
            raise self.error
        if self.calls.count("init") <= self.refusals:
            raise ConnectionAbortedError(
                "Initialization failure from server:\nTraceback ...\nRuntimeError: Starting Ray client server failed."
            )

    def shutdown(self) -> None:
        self.calls.append("shutdown")


@pytest.fixture
def no_wait(monkeypatch):
    monkeypatch.setattr(distributed.time, "sleep", lambda seconds: None)


def test_a_refused_ray_client_start_is_tried_again_and_each_failure_is_cleaned_up(no_wait, caplog):
    ray = FlakyRay(refusals=1)
    distributed._init(ray, "ray://head:10001", {})
    assert ray.calls == ["init", "shutdown", "init"]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert (
        "ray://head:10001 refused the connection (RuntimeError: Starting Ray client server failed.)"
        in warning
    )


def test_a_head_that_keeps_refusing_fails_naming_the_address_and_the_tries(no_wait):
    ray = FlakyRay(refusals=distributed.CONNECT_ATTEMPTS)
    with pytest.raises(ConnectionError, match=rf"ray://head:10001' \({distributed.CONNECT_ATTEMPTS} tries\)"):
        distributed._init(ray, "ray://head:10001", {})
    # every failed init is followed by a shutdown: the process is left able to connect again
    assert ray.calls == ["init", "shutdown"] * distributed.CONNECT_ATTEMPTS


def test_an_error_that_will_not_heal_is_not_tried_again(no_wait):
    ray = FlakyRay(error=RuntimeError("version mismatch: the cluster runs Ray 2.9"))
    with pytest.raises(ConnectionError, match="head:6379.*version mismatch"):
        distributed._init(ray, "head:6379", {})
    assert ray.calls == ["init", "shutdown"]
