"""`instruct-lf eval stability`: comparing a refit's factors with the reference's."""

import argparse

import numpy as np
import pytest

from instruct_lf_dagster.core.factors import Factors
from instruct_lf_dagster.evaluation import stability
from tests.test_factors import PROPS, handmade


def test_the_same_factors_in_other_rows_are_perfectly_stable():
    reference = Factors(handmade(), PROPS)
    swapped = handmade()
    swapped.w_, swapped.mis_ = swapped.w_[[2, 1, 0]], swapped.mis_[[2, 1, 0]]
    assert stability.compare(reference, Factors(swapped, PROPS)) == {
        "matched_jaccard": 1.0,
        "matched_share": 1.0,
        "ari": 1.0,
    }


def test_a_moved_property_lowers_every_score_and_only_common_properties_count():
    reference = Factors(handmade(), PROPS)
    moved = handmade()
    moved.mis_ = moved.mis_.copy()
    moved.mis_[2, 1] = 0.95  # "features actor x" now belongs to factor 2
    scores = stability.compare(reference, Factors(moved, PROPS))
    assert scores["matched_share"] == 1.0
    assert scores["matched_jaccard"] == pytest.approx((1 / 2 + 3 / 4) / 2)
    assert scores["ari"] < 1.0
    # A refit on other documents knows fewer properties: the comparison keeps those both have.
    fewer = handmade()
    fewer.w_, fewer.mis_ = fewer.w_[:, :4], fewer.mis_[:, :4]
    fewer.mean_, fewer.std_ = np.zeros(4), np.ones(4)
    assert stability.compare(reference, Factors(fewer, PROPS[:4]))["ari"] == 1.0


@pytest.mark.parametrize("options", [["--seeds", "0"], ["--fraction", "1.5"], ["--levels", "corex,lda"]])
def test_bad_settings_are_refused(options):
    parser = argparse.ArgumentParser()
    stability.add_arguments(parser)
    with pytest.raises(SystemExit):
        stability.main(parser.parse_args(options))
