"""Factors: property assignment, listings, scores, evidence, storage frame, description, warm-start alignment."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from instruct_lf_dagster.bench.corex import planted
from instruct_lf_dagster.core.corex import LinearCorex
from instruct_lf_dagster.core.factors import Factors, ends

PROPS = ("dark humor", "features actor x", "romance", "slow pace", "happy ending")


def handmade() -> LinearCorex:
    """A "fitted" model with chosen weights: factor 0 = {0, 1}, factor 1 empty, factor 2 = {2, 3, 4}."""
    model = LinearCorex(3, seed=0)
    model.w_ = np.array(
        [
            [1.0, 0.5, 0.0, 0.0, 0.1],
            [0.1, 0.1, 0.1, 0.1, 0.1],
            [0.0, 0.0, -1.0, -0.2, -0.6],  # negative weights: the factor is oriented by its members' sum
        ],
        dtype=np.float32,
    )
    model.mis_ = np.array(
        [
            [0.9, 0.4, 0.0, 0.0, 0.1],
            [0.1, 0.1, 0.1, 0.1, 0.1],
            [0.0, 0.0, 0.8, 0.2, 0.5],
        ]
    )
    model.mean_, model.std_ = np.zeros(5), np.ones(5)
    model.objective_, model.n_iter_, model.history_, model.optimizer_ = -1.0, 0, [], "lbfgs"
    return model


@pytest.fixture
def factors() -> Factors:
    return Factors(handmade(), PROPS)


def test_assignment_members_and_empty_factors(factors):
    np.testing.assert_array_equal(factors.assignment, [0, 0, 2, 2, 2])
    assert factors.nonempty() == [0, 2]
    assert factors.members(0) == [("dark humor", 0.9), ("features actor x", 0.4)]
    assert [p for p, _ in factors.members(2)] == ["romance", "happy ending", "slow pace"]
    assert factors.members(1) == []
    assert factors.strength(2) == pytest.approx(1.5)


def test_property_count_must_match_model():
    with pytest.raises(ValueError, match="properties"):
        Factors(handmade(), PROPS[:-1])


def test_scores_keep_every_factor_column(factors):
    rows = np.eye(5)
    scores = factors.scores(rows)
    assert scores.shape == (5, 3)
    np.testing.assert_allclose(scores, rows @ handmade().w_.T, rtol=1e-6)


def test_evidence_names_top_factors_and_their_properties(factors):
    doc = np.array([[2.0, 0.0, 1.0, 0.0, 1.0]])  # strong on factor 2 (romance, happy ending), some dark humor
    (entries,) = factors.evidence(doc, top_factors=3, top_properties=2)
    assert [e["factor"] for e in entries] == [0, 2]  # the empty factor 1 is never listed
    assert entries[0]["score"] == pytest.approx(2.1) and entries[1]["score"] == pytest.approx(1.6)
    assert entries[0]["properties"] == [("dark humor", pytest.approx(2.0)), ("features actor x", 0.0)]
    assert entries[1]["properties"] == [("romance", pytest.approx(1.0)), ("happy ending", pytest.approx(0.6))]
    (only,) = factors.evidence(doc[0], top_factors=1, top_properties=1)  # one row may be given as a vector
    assert len(only) == 1 and len(only[0]["properties"]) == 1


def test_frame_for_storage(factors):
    frame = factors.to_frame()
    assert list(frame.columns) == ["factor", "rank", "property", "mi", "pole"]
    assert frame["factor"].tolist() == [0, 0, 2, 2, 2]
    assert frame["rank"].tolist() == [1, 2, 1, 2, 3]
    assert frame.loc[2, "property"] == "romance" and frame.loc[2, "mi"] == pytest.approx(0.8)


def test_describe_lists_strongest_factors_first(factors):
    text = factors.describe(top=1, properties=2)
    lines = text.splitlines()
    assert lines[0].startswith("| factor") and len(lines) == 3
    assert lines[2].startswith("| 2 | 3 |") and "romance (0.80)" in lines[2] and "slow pace" not in lines[2]


def signed() -> Factors:
    """Two latent causes; "humourless" loads negatively on the first: it is that factor's low end."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((600, 2))
    loadings = [(0, 1.0), (0, 0.9), (0, 0.8), (0, -0.9), (1, 1.0), (1, 0.9), (1, 0.8)]
    x = np.stack([sign * z[:, c] + 0.4 * rng.standard_normal(600) for c, sign in loadings], axis=1)
    names = ["witty", "gag humor", "funny", "humourless", "slow", "long", "drawn out"]
    return Factors(LinearCorex(2, 0.0, seed=0, threads=1).fit(x), names)


def test_a_member_with_a_negative_loading_sits_at_the_low_end():
    factors = signed()
    (humor,) = [k for k in factors.nonempty() if "witty" in dict(factors.members(k))]
    (pace,) = [k for k in factors.nonempty() if k != humor]
    high, low = factors.poles(humor)
    assert {p for p, _ in high} == {"witty", "gag humor", "funny"} and [p for p, _ in low] == ["humourless"]
    assert factors.poles(pace)[1] == [] and len(factors.poles(pace)[0]) == 3
    assert sorted(high + low, key=lambda m: -m[1]) == factors.members(humor)  # members() is unchanged
    frame = factors.to_frame().set_index("property")
    assert frame.loc["humourless", "pole"] == "low" and frame.loc["witty", "pole"] == "high"
    line = next(row for row in factors.describe(top=2, properties=4).splitlines() if "witty" in row)
    assert line.count(" / ") == 1 and line.rsplit(" / ", 1)[1].startswith("humourless")
    # A document with the low end's property and none of the high end's sits at the low end, and says so.
    standard = np.zeros(7)
    standard[3], standard[:3] = 2.0, -1.0
    raw = factors.model.mean_ + standard * factors.model.std_
    (entry,) = factors.evidence(raw, top_factors=1, top_properties=1)[0]
    assert entry["factor"] == factors.ids[humor] and entry["pole"] == "low" and entry["score"] < 0
    assert entry["properties"][0][0] == "humourless" and entry["properties"][0][1] > 0
    assert (
        factors.evidence(factors.model.mean_ - raw + factors.model.mean_, top_factors=1)[0][0]["pole"]
        == "high"
    )


def test_ends_read_high_then_low():
    assert ends(["witty humor", "gag humor"], ["lack of humor"]) == "witty humor, gag humor / lack of humor"
    assert ends(["slow"], []) == "slow"


def test_warm_start_aligns_columns_by_property(factors):
    w = factors.warm_start(["romance", "new property", "dark humor"])
    np.testing.assert_array_equal(w[:, 0], handmade().w_[:, 2])
    np.testing.assert_array_equal(w[:, 1], 0.0)
    np.testing.assert_array_equal(w[:, 2], handmade().w_[:, 0])


def test_save_load_round_trip(tmp_path, factors):
    factors.save(tmp_path / "factors")
    loaded = Factors.load(tmp_path / "factors")
    assert loaded.properties == PROPS
    assert loaded.to_frame().equals(factors.to_frame())
    rows = np.random.default_rng(0).standard_normal((4, 5))
    np.testing.assert_array_equal(loaded.scores(rows), factors.scores(rows))
    assert loaded.evidence(rows) == factors.evidence(rows)


def test_factors_of_a_fitted_model_recover_planted_groups():
    x, groups = planted(300, 40, 4, seed=2)
    names = [f"group {g} property {j}" for j, g in enumerate(groups)]
    factors = Factors(LinearCorex(4, 0.0, seed=0, threads=1).fit(x), names)
    assert adjusted_rand_score(groups, factors.assignment) >= 0.9
    for k in factors.nonempty():
        members = factors.members(k)
        assert len({name.split()[1] for name, _ in members}) == 1  # one planted group per factor
        mis = [mi for _, mi in members]
        assert mis == sorted(mis, reverse=True)
    assert len(factors.to_frame()) == 40


def test_a_refit_keeps_the_public_ids_of_the_factors_it_matches(factors, tmp_path):
    # The same factors in other rows (a fit from another seed): rows 0 and 2 swap, row 1 stays empty.
    swapped = handmade()
    swapped.w_, swapped.mis_ = swapped.w_[[2, 1, 0]], swapped.mis_[[2, 1, 0]]
    refit, found = Factors(swapped, PROPS).aligned_to(factors)
    assert refit.ids[0] == 2 and refit.ids[2] == 0 and refit.ids[1] == 3  # the empty row: a fresh id
    assert refit.membership() == factors.membership()
    assert found.kept_share == 1.0 and found.new == [] and found.vanished == []

    def frame(f):
        return f.to_frame().sort_values(["factor", "rank"]).reset_index(drop=True)

    assert frame(refit).equals(frame(factors))
    assert [e["factor"] for e in refit.evidence(np.eye(5)[:1], top_factors=1)[0]] == [0]
    refit.save(tmp_path / "f")
    assert Factors.load(tmp_path / "f").ids == refit.ids
    assert factors.aligned_to(None) == (factors, None)


def test_ids_must_be_distinct_and_one_per_row():
    with pytest.raises(ValueError, match="ids"):
        Factors(handmade(), PROPS, (0, 0, 1))
