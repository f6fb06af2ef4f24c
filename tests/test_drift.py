"""Factor prevalence per batch and the drift rule on the newest batch."""

import numpy as np

from instruct_lf_dagster.core.drift import drifted, prevalence


def test_prevalence_is_the_share_of_strong_documents_and_the_mean():
    strengths = np.array([[2.0, -1.0], [0.5, 1.5], [1.0, 0.0], [-0.5, 0.5]])
    share, mean = prevalence(strengths)
    np.testing.assert_allclose(share, [0.5, 0.25])
    np.testing.assert_allclose(mean, [0.75, 0.25])
    empty_share, _ = prevalence(np.zeros((0, 3)))
    assert empty_share.tolist() == [0.0, 0.0, 0.0]


def test_a_jump_in_the_newest_batch_is_flagged_and_noise_is_not():
    rng = np.random.default_rng(0)
    history = 0.2 + 0.02 * rng.standard_normal((8, 4))
    newest = history.mean(axis=0) + np.array([0.0, 0.3, 0.01, -0.15])
    flagged, z = drifted(np.vstack([history, newest]))
    assert flagged == [1, 3]
    assert z[1] > 3 and z[3] < -3 and abs(z[0]) < 1


def test_too_short_a_history_flags_nothing():
    flagged, z = drifted(np.array([[0.1, 0.2], [0.1, 0.2], [0.9, 0.9]]))
    assert flagged == [] and z.tolist() == [0.0, 0.0]


def test_a_share_that_never_moved_needs_a_real_move():
    shares = np.vstack([np.full((5, 2), 0.3), [[0.31, 0.5]]])
    assert drifted(shares)[0] == [1]
