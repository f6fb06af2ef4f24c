"""`instruct-lf bench scale`: the planted corpus, and the whole benchmark at a tiny size."""

from __future__ import annotations

import json

import numpy as np
import pytest

from instruct_lf_dagster import cli
from instruct_lf_dagster.bench.scale import corpus, plan


def test_planted_documents_name_properties_of_one_to_three_factors():
    planted = plan(90, 3, seed=1)
    assert len(set(planted.properties)) == 90
    assert np.bincount(planted.factor).tolist() == [30, 30, 30]
    # No second word is shared: properties of different factors have nothing in common but the template.
    assert len({p.split()[1] for p in planted.properties}) == 90
    factor = dict(zip(planted.properties, planted.factor, strict=True))
    texts, proposals = corpus(planted, 200, seed=1)
    assert len(texts) == len(proposals) == 200
    assert len(texts[0].split()) > 100 > len(texts[1].split())  # every tenth document is long
    for text, props in zip(texts, proposals, strict=True):
        assert all(p in text for p in props)
        assert 1 <= len({factor[p] for p in props}) <= 3


@pytest.mark.integration  # two fresh processes each materialise the whole graph (MiniLM, DuckDB)
def test_tiny_run_recovers_the_planted_factors(capsys):
    cli.main(["bench", "scale", "--docs", "300", "--props", "60", "--batches", "3", "--linker-pairs", "64"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) == {
        "docs",
        "props",
        "seconds",
        "seconds_small",
        "time_ratio",
        "peak_rss_gb",
        "peak_rss_gb_small",
        "planted_ari",
    }
    assert (result["docs"], result["props"]) == (300, 60)
    assert min(result[k] for k in ("seconds", "seconds_small", "peak_rss_gb", "peak_rss_gb_small")) > 0
    assert result["planted_ari"] >= 0.9
