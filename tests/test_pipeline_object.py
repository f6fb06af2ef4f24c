"""InstructLF refuses input it cannot discover factors from, with a message that says why."""

from __future__ import annotations

import pytest

from instruct_lf_dagster.core.pipeline import InstructLF, auto_factors


def test_proposals_must_line_up_with_documents():
    with pytest.raises(ValueError, match="2 documents but 1 proposal lists"):
        InstructLF().fit(["a", "b"], [["Comedy genre"]])


@pytest.mark.parametrize("proposals", [[None, None], [[], []], [["", "  "], ["1.", "-"]]])
def test_no_usable_property_is_a_clear_error(proposals):
    with pytest.raises(ValueError, match="no usable property"):
        InstructLF().fit(["first review", "second review"], proposals)


def test_automatic_factor_count_stays_in_the_papers_range():
    assert [auto_factors(p) for p in (0, 16, 800, 100_000)] == [2, 2, 100, 368]
