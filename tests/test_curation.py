"""Curation by public factor id: its YAML settings, the groups it shows, and what it does to the report, the
documents' top factors, the code versions, the HTML page and the command line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from instruct_lf_dagster.assets.html import render
from instruct_lf_dagster.core.corex import LinearCorex
from instruct_lf_dagster.core.curation import Curation, curate, in_order, mark_seeded, shown_groups
from instruct_lf_dagster.core.discovery import STAGES, DiscoverySpec
from instruct_lf_dagster.core.factors import Factors
from instruct_lf_dagster.core.proposals import Goal
from instruct_lf_dagster.run import format_factors
from tests.conftest import run_warning_free

PROPS = ("witty", "gag humor", "slow", "long", "kiss", "romance", "explosions")
IDS = (10, 11, 12, 13)  # public ids, unlike the rows, as after a refit


def handmade() -> Factors:
    """Four factors with chosen weights: 10 = {witty, gag humor}, 11 = {slow, long} (negative weights: turned),
    12 = {kiss, romance}, 13 = {explosions}."""
    model = LinearCorex(4, seed=0)
    model.w_ = np.array(
        [
            [1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, -1.0, -0.4, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.8, 0.6, 0.0],
            [0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.9],
        ],
        dtype=np.float32,
    )
    model.mis_ = np.array(
        [
            [0.9, 0.4, 0.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.8, 0.3, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.7, 0.6, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5],
        ]
    )
    model.mean_, model.std_ = np.zeros(7), np.ones(7)
    model.objective_, model.n_iter_, model.history_, model.optimizer_ = -1.0, 0, [], "lbfgs"
    return Factors(model, PROPS, IDS)


CURATION = Curation(names={12: "Feel-good films"}, drop=[13], merge=[[12, 10]])


def test_a_curation_reads_as_yaml_gives_it_and_refuses_contradictions():
    read = Curation.model_validate(
        {"names": {"12": "  Feel-good   films "}, "drop": [13], "merge": [[12, 10]]}
    )
    assert read == CURATION and read.ids() == {10, 12, 13}
    assert hash(read) == hash(CURATION) and not Curation() and read
    for bad, why in [
        ({"merge": [[3]]}, "two factors or more"),
        ({"merge": [[3, 3]]}, "two factors or more"),
        ({"merge": [[1, 2], [2, 3]]}, r"factors \[2\] are in two merge groups"),
        ({"merge": [[1, 2]], "drop": [2]}, r"factors \[2\] are both dropped and merged"),
        ({"merge": [[1, 2]], "names": {2: "X"}}, "name a group by its first id"),
        ({"names": {1: "  "}}, "empty"),
        ({"dorp": [1]}, "dorp"),
    ]:
        with pytest.raises(ValidationError, match=why):
            Curation.model_validate(bad)


def test_groups_leave_dropped_factors_out_and_show_a_merge_under_its_first_fitted_id():
    assert CURATION.groups([10, 11, 12, 13]) == {12: [10, 12], 11: [11]}
    assert CURATION.marker(12, [10, 12]) == "named, merged" and CURATION.marker(11, [11]) == ""
    assert Curation(merge=[[10, 11]]).marker(10, [10, 11]) == "merged"
    # The group's first id is gone (a refit lost it): the group shows under the next; the check reports it.
    gone = Curation(merge=[[99, 12, 13]], names={99: "Lost"})
    assert gone.groups([10, 12, 13]) == {10: [10], 12: [12, 13]}
    assert gone.missing([10, 12, 13]) == [99] and CURATION.missing(IDS) == []
    assert Curation().groups([3, 1]) == {3: [3], 1: [1]}
    assert list(in_order({1: [1], 3: [3, 4]}, [3, 1])) == [3, 1]


def test_the_report_frame_drops_and_merges_and_marks_what_it_curated():
    factors = handmade()
    fitted = [factors.ids[k] for k in factors.ranked()]
    frame = curate(factors.to_frame(), CURATION, fitted)
    assert "explosions" not in set(frame["property"])  # 13 dropped
    merged = frame[frame["factor"] == 12]
    # The union of both factors' members, ranked again by MI, each at its own factor's end.
    assert merged["property"].tolist() == ["witty", "kiss", "romance", "gag humor"]
    assert merged["rank"].tolist() == [1, 2, 3, 4] and set(merged["pole"]) == {"high"}
    assert set(merged["curated"]) == {"named, merged"}
    assert frame["factor"].tolist() == [11, 11, 12, 12, 12, 12]  # where the shown factor's rows stood
    assert frame.loc[frame["factor"] == 11, "curated"].tolist() == ["", ""]
    # No curation: the frame as it was, marked as uncurated.
    plain = curate(factors.to_frame(), Curation(), fitted)
    pd.testing.assert_frame_equal(plain.drop(columns="curated"), factors.to_frame())
    assert set(plain["curated"]) == {""}
    seeded = mark_seeded(frame, [11, 12])
    assert set(seeded.loc[seeded["factor"] == 12, "curated"]) == {"named, merged, seeded"}
    assert set(seeded.loc[seeded["factor"] == 11, "curated"]) == {"named, seeded"}
    assert mark_seeded(frame, []).equals(frame)
    # Read back from the report: the same groups, in the fit's row order.
    assert shown_groups(frame, factors) == CURATION.groups(list(IDS))
    assert shown_groups(plain, factors) == {i: [i] for i in IDS}


def test_a_merged_factor_scores_the_sum_of_its_members_oriented_scores():
    factors = handmade()
    x = np.array([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 3.0]])
    oriented = factors.strengths(x)
    grouped = factors.grouped(oriented, {12: [10, 12], 11: [11]})
    np.testing.assert_allclose(grouped[:, 0], oriented[:, 0] + oriented[:, 2])
    np.testing.assert_array_equal(grouped[:, 1], oriented[:, 1])  # a factor alone: its column as it is
    assert factors.grouped(oriented, {}).shape == (2, 0)

    groups = CURATION.groups(list(IDS))
    first, second = factors.evidence(x, top_factors=3, top_properties=2, groups=groups)
    assert [e["factor"] for e in first] == [12, 11]
    assert first[0]["score"] == pytest.approx(1.0 + 0.8)  # witty through 10, kiss through 12
    assert first[0]["properties"] == [("witty", pytest.approx(1.0)), ("kiss", pytest.approx(0.8))]
    # The dropped factor 13 would lead the second document (explosions); shown, the next is: "slow" is low
    # on 11 (it is turned, its weights being negative), so the document sits at its low end.
    uncurated = factors.evidence(x[1:], top_factors=1)[0][0]
    assert uncurated["factor"] == 13
    assert second[0]["factor"] == 11 and second[0]["pole"] == "low"
    assert second[0]["score"] == pytest.approx(-1.0)

    table = factors.document_table(x, {12: "Feel-good films", 11: "Pace"}, groups)
    assert table["top_factor"].tolist() == [12, 11]
    assert table["top_factor_name"].tolist() == ["Feel-good films", "Pace"]
    assert table["evidence"].iloc[0].startswith("witty; kiss; ")  # then a member it does not have
    assert {len(s) for s in table["scores"]} == {4}  # the model's scores, every factor row, untouched


def test_without_groups_evidence_is_every_non_empty_factor_alone():
    factors = handmade()
    x = np.random.default_rng(0).standard_normal((20, 7))
    alone = {i: [i] for i in IDS}
    assert factors.evidence(x, groups=alone) == factors.evidence(x)
    pd.testing.assert_frame_equal(factors.document_table(x, {}, alone), factors.document_table(x, {}))


def test_a_curation_edit_changes_only_the_reporting_stages_versions():
    goal = Goal("What makes a film worth watching?")
    plain = DiscoverySpec("films", goal).versions()
    assert DiscoverySpec("films", goal, curation=Curation()).versions() == plain  # nothing curated: as before
    curated = DiscoverySpec("films", goal, curation=CURATION).versions()
    edited = DiscoverySpec("films", goal, curation=CURATION.but(drop=[11])).versions()
    reporting = STAGES.index("factor_report")
    for stage in STAGES[:reporting]:
        assert plain[stage] == curated[stage] == edited[stage], stage
    for stage in STAGES[reporting:]:
        assert len({plain[stage], curated[stage], edited[stage]}) == 3, stage


def report() -> pd.DataFrame:
    rows = [
        (12, 1, "witty", "Feel-good films", "", False, 0, "Mood", ["A fun film."], "high", "named, merged"),
        (12, 2, "kiss", "Feel-good films", "", False, 0, "Mood", ["A fun film."], "high", "named, merged"),
        (11, 1, "slow", "Pace", "Tempo.", True, 0, "Mood", [], "high", ""),
    ]
    columns = ["factor", "rank", "property", "name", "description", "named_by_llm", "theme", "theme_name"]
    return pd.DataFrame(rows, columns=[*columns, "examples", "pole", "curated"])


def test_the_page_and_the_command_line_mark_curated_factors():
    prevalence = pd.DataFrame(
        [(0, "b0", 12, 0.5), (0, "b0", 11, 0.2)], columns=["position", "batch", "factor", "share_strong"]
    )
    page = render("films", "What makes a film worth watching?", report(), prevalence)
    card = page[page.index('data-factor="12"') : page.index('data-factor="11"')]
    assert "curated: named, merged" in card and "the LLM gave no name" not in card  # pinned, not a fallback
    assert "curated:" not in page[page.index('data-factor="11"') :]
    text = format_factors(report())
    assert "factor  12  Feel-good films [curated: named, merged]  (2 properties)" in text
    assert "Pace  (1 properties)" in text and "gave no name" not in text


def test_a_notebook_s_load_discovery_shows_no_dagster_beta_warning(tmp_path):
    out = run_warning_free(
        "from instruct_lf_dagster.fitted import load_discovery\n"
        "try:\n    load_discovery('films')\nexcept LookupError as e:\n    print('LookupError:', e)\n",
        tmp_path,
    )
    assert "LookupError: discovery 'films' has no linker, latent_factors, factor_report" in out
