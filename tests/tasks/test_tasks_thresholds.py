"""Operating thresholds: known answers and brute-force oracles over every candidate threshold."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from reconaudit.tasks.thresholds import apply_thresholds, choose_threshold, choose_thresholds

# 4 negatives, 4 positives; calls are score >= t.
Y = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=float)
S = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])


def rates(y: np.ndarray, s: np.ndarray, t: float) -> tuple[float, float]:
    """(sensitivity, specificity) of the calls s >= t, computed directly."""
    call = s >= t
    return float(call[y == 1].mean()), float((~call[y == 0]).mean())


def test_sens_eq_spec_hand_computed():
    # t=0.9: (.25, 1); 0.8: (.5, 1); 0.7: (.75, 1); 0.6: (.75, .75) <- equal; 0.4: (1, .75)
    assert choose_threshold(Y, S, "sens_eq_spec") == 0.6
    assert rates(Y, S, 0.6) == (0.75, 0.75)


def test_sens_eq_spec_tie_goes_to_larger_balanced_accuracy():
    # 2 positives, 4 negatives: t=0.8 gives (0.5, 0.75), t=0.7 gives (1, 0.75): both |gap| = 0.25,
    # the second has the larger TPR + TNR and must win.
    y = np.array([1, 0, 1, 0, 0, 0], dtype=float)
    s = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    assert choose_threshold(y, s, "sens_eq_spec") == 0.7


def test_youden_hand_computed_and_tie_to_higher_threshold():
    # J: 0.7 -> .75, 0.6 -> .5, 0.4 -> .75; tie between 0.7 and 0.4 goes to the higher threshold
    assert choose_threshold(Y, S, "youden") == 0.7


def test_target_sensitivity_hand_computed():
    assert choose_threshold(Y, S, "target_sensitivity", 0.75) == 0.7
    assert choose_threshold(Y, S, "target_sensitivity", 0.9) == 0.4
    assert choose_threshold(Y, S, "target_sensitivity", 1.0) == 0.4


@pytest.mark.parametrize("seed", range(6))
def test_policies_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 80
    y = (rng.random(n) < 0.4).astype(float)
    s = np.round(np.clip(0.3 * y + rng.normal(0.4, 0.25, n), 0, 1), 2)  # rounded: ties in scores
    y[rng.random(n) < 0.15] = np.nan  # missing labels are ignored
    obs = ~np.isnan(y)
    yo, so = y[obs], s[obs]
    cands = np.unique(so)[::-1]  # descending
    sens = np.array([rates(yo, so, t)[0] for t in cands])
    spec = np.array([rates(yo, so, t)[1] for t in cands])

    j = sens + spec - 1
    t_y = choose_threshold(y, s, "youden")
    assert t_y == cands[np.flatnonzero(np.isclose(j, j.max()))[0]]

    gap = np.abs(sens - spec)
    t_e = choose_threshold(y, s, "sens_eq_spec")
    ties = np.flatnonzero(np.isclose(gap, gap.min()))
    best = ties[np.flatnonzero(np.isclose(j[ties], j[ties].max()))[0]]
    assert t_e == cands[best]

    for target in (0.5, 0.8, 0.95):
        t_s = choose_threshold(y, s, "target_sensitivity", target)
        assert rates(yo, so, t_s)[0] >= target
        higher = cands[cands > t_s]
        assert all(rates(yo, so, t)[0] < target for t in higher)  # the largest such threshold


def test_nan_rows_are_ignored():
    y = np.concatenate([Y, [np.nan, np.nan]])
    s = np.concatenate([S, [0.95, 0.05]])
    assert choose_threshold(y, s) == choose_threshold(Y, S)


def test_single_class_label_falls_back_with_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="reconaudit.metrics.thresholds"):
        t = choose_thresholds(
            np.stack([Y, np.ones_like(Y)], 1), np.stack([S, S], 1), labels=["disc", "effusion"]
        )
    assert t[1] == 0.5 and t[0] == 0.6
    assert "effusion" in caplog.text and "disc" not in caplog.text


def test_choose_thresholds_matches_per_label_and_apply():
    rng = np.random.default_rng(1)
    Yl = (rng.random((50, 3)) < 0.5).astype(float)
    Sl = np.clip(0.4 * Yl + rng.random((50, 3)) * 0.7, 0, 1)
    t = choose_thresholds(Yl, Sl, "youden")
    assert t.shape == (3,) and t.dtype == np.float64
    for k in range(3):
        assert t[k] == choose_threshold(Yl[:, k], Sl[:, k], "youden")
    np.testing.assert_array_equal(apply_thresholds(Sl, t), Sl >= t[None, :])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="sens_eq_spec"):
        choose_threshold(Y, S, "f1")
    with pytest.raises(ValueError, match="target"):
        choose_threshold(Y, S, "target_sensitivity")
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        choose_threshold(Y * 2, S)
