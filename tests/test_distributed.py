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
