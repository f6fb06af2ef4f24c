"""Seed factors: properties a discovery asks for join the vocabulary, and the fit keeps each group in one factor."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from instruct_lf_dagster.core.config import MethodConfig, SeedFactor
from instruct_lf_dagster.core.discovery import STAGES, DiscoverySpec
from instruct_lf_dagster.core.factors import Factors
from instruct_lf_dagster.core.pipeline import InstructLF
from instruct_lf_dagster.core.proposals import Goal
from instruct_lf_dagster.core.vocabulary import Vocabulary
from tests.test_curation import handmade

PRICE = SeedFactor(name="Price", properties=["cheap tickets", "Expensive seats "])


def test_a_seed_factor_needs_a_name_and_properties():
    assert PRICE.properties == ("cheap tickets", "Expensive seats")
    with pytest.raises(ValidationError, match="at least one property"):
        SeedFactor(name="Price", properties=["  "])
    with pytest.raises(ValidationError, match="name is empty"):
        SeedFactor(name=" ", properties=["cheap tickets"])
    method = InstructLF(MethodConfig(seed_factors=[PRICE, {"name": "Stars", "properties": ["- star cast"]}]))
    assert method.anchors() == (("Cheap tickets", "Expensive seats"), ("Star cast",))  # spelled as proposals


def test_seed_properties_join_the_vocabulary_once_unscreened():
    vocabulary = Vocabulary.fit([["Slow pacing", "Expensive seats"], ["Slow pacing"]])
    seeded = vocabulary.with_properties(["Cheap tickets", "expensive seats", "Cheap tickets"])
    assert seeded.properties == ["Cheap tickets", "Expensive seats", "Slow pacing"]
    assert seeded.counts == {"Cheap tickets": 0, "Expensive seats": 1, "Slow pacing": 2}
    assert seeded.map(["Slow pacing"]) == ["Slow pacing"]  # proposals map as before
    assert vocabulary.with_properties([]) is vocabulary


def test_an_anchor_group_is_put_whole_into_the_factor_that_shares_most_with_it(tmp_path):
    plain = handmade()
    assert plain.assignment.tolist() == [0, 0, 1, 1, 2, 2, 3]
    anchored = Factors(plain.model, plain.properties, plain.ids, [("Witty", "kiss"), ("romance",), ("nope",)])
    # witty (MI 0.9 with row 0) outweighs kiss (0.7 with row 2): both go to row 0, public id 10. Row 0 is taken,
    # so the next group goes to the free factor that shares most with it; a group of unknown properties, nowhere.
    assert anchored.assignment.tolist() == [0, 0, 1, 1, 0, 2, 3]
    assert anchored.anchored() == [10, 12, None]
    assert set(anchored.membership()[10]) == {"witty", "gag humor", "kiss"}
    anchored.save(tmp_path / "anchored")
    again = Factors.load(tmp_path / "anchored")
    assert again.anchors == anchored.anchors and again.assignment.tolist() == anchored.assignment.tolist()
    plain.save(tmp_path / "plain")
    assert (
        not (tmp_path / "plain" / "anchors.json").exists() and Factors.load(tmp_path / "plain").anchors == ()
    )
    # More groups than factors: the extra ones are anchored nowhere.
    many = Factors(plain.model, plain.properties, plain.ids, [(p,) for p in plain.properties])
    assert many.anchored()[4:] == [None, None, None]
    np.testing.assert_array_equal(plain.model.clusters(), [0, 0, 1, 1, 2, 2, 3])  # the model is untouched


def test_a_seed_factor_edit_reruns_from_the_vocabulary_on():
    goal = Goal("What makes a film worth watching?")
    plain = DiscoverySpec("films", goal).versions()
    seeded = DiscoverySpec("films", goal, method=MethodConfig(seed_factors=[PRICE])).versions()
    assert DiscoverySpec("films", goal, method=MethodConfig(seed_factors=[])).versions() == plain
    assert seeded["proposals"] == plain["proposals"]
    for stage in STAGES[STAGES.index("vocabulary") :]:
        assert seeded[stage] != plain[stage], stage
