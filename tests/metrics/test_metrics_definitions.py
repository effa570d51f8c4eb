"""The study's definitions (EODD mean, segmentation SER) and operating-point flags: hand-computed answers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from fairlearn.metrics import equalized_odds_difference as fl_eodd

import reconaudit.metrics as M


def test_eodd_mean_and_worst_case_hand_computed_and_fairlearn():
    y = np.array([1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0])
    p = np.array([1, 1, 1, 0, 1, 0, 1, 0, 0, 0, 0, 0])
    g = np.array(["a"] * 6 + ["b"] * 6)
    # a: TPR 3/4, FPR 1/2; b: TPR 1/4, FPR 0 -> TPR gap 0.5, FPR gap 0.5 ... use unequal gaps:
    p[4] = 0  # a: FPR 0 -> FPR gap 0
    assert M.equalized_odds_difference(y, p, sensitive_features=g) == pytest.approx(0.5)
    assert M.equalized_odds_difference(y, p, sensitive_features=g, agg="mean") == pytest.approx(0.25)
    for agg in ("worst_case", "mean"):
        assert M.equalized_odds_difference(y, p, sensitive_features=g, agg=agg) == pytest.approx(
            fl_eodd(y, p, sensitive_features=g, agg=agg), abs=1e-12)
    with pytest.raises(ValueError, match="agg"):
        M.equalized_odds_difference(y, p, sensitive_features=g, agg="median")
    # the bootstrap and the permutation test use the same definition
    res = M.bootstrap_metrics(y, patient_ids=np.arange(12), sensitive_features=g, y_pred=p, y_pred_clean=1 - p,
                              n_resamples=20, bca=False, eodd_agg="mean")
    t = res.table.set_index(["metric", "attribute", "arm"])
    assert t.loc[("equalized_odds_difference", "group", "recon"), "estimate"] == pytest.approx(0.25)


def test_dice_skewed_error_ratio_hand_computed():
    dice = np.array([0.9, 0.7, 0.6, 0.6])  # group means: a 0.8, b 0.6
    g = np.array(["a", "a", "b", "b"])
    assert M.dice_skewed_error_ratio(dice, sensitive_features=g) == pytest.approx((1 - 0.6) / (1 - 0.8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.MetricUndefinedWarning)
        assert np.isnan(M.dice_skewed_error_ratio(np.array([1.0, 1.0, 0.5, 0.5]), sensitive_features=g))
    res = M.bootstrap_metrics(np.zeros(4), patient_ids=np.arange(4), sensitive_features=g, values=dice,
                              values_clean=np.array([0.9, 0.9, 0.8, 0.8]), n_resamples=20, bca=False)
    t = res.table.set_index(["metric", "attribute", "arm"])
    assert t.loc[("dice_skewed_error_ratio", "group", "recon"), "estimate"] == pytest.approx(2.0)
    assert t.loc[("dice_skewed_error_ratio", "group", "clean"), "estimate"] == pytest.approx(2.0)
    # bias change in percent: clean gap 0.1 -> processed 0.2 is +100 %
    assert t.loc[("dice_gap", "group", "relative_change"), "estimate"] == pytest.approx(100.0)


def test_operating_point_flags():
    y = np.array([1, 1, 0, 0, 1, 0])
    g = np.array(["F", "F", "F", "M", "M", "M"])
    clean = np.array([1, 0, 0, 1, 1, 0])
    assert "nothing called positive" in M.operating_point_flag(y, clean, np.zeros(6, int), sensitive_features=g)
    assert "everything called positive" in M.operating_point_flag(y, clean, np.ones(6, int))
    # F's sensitivity goes from 0.5 to 0: flagged for that group only
    recon = np.array([0, 0, 0, 1, 1, 0])
    flag = M.operating_point_flag(y, clean, recon, sensitive_features=g)
    assert flag == "group 'F': sensitivity 0.00 after processing (clean 0.50)"
    assert M.operating_point_flag(y, clean, clean, sensitive_features=g) == ""


def test_worst_group_auroc_comes_from_the_bootstrap_engine():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    n = 90
    g = rng.choice(["a", "b", "c"], n)
    y = rng.integers(0, 2, n)
    s = np.clip(0.4 * y + rng.random(n) * (0.6 + 0.3 * (g == "c")), 0, 1)
    res = M.bootstrap_metrics(y, patient_ids=np.arange(n), sensitive_features={"g": g}, y_score=s,
                              y_score_clean=np.sqrt(s), n_resamples=40, auroc_gap=True, bca=True)
    t = res.table.set_index(["metric", "attribute", "arm"])
    per = [roc_auc_score(y[g == k], s[g == k]) for k in "abc"]
    assert t.loc[("worst_group_auroc", "g", "recon"), "estimate"] == pytest.approx(min(per), abs=1e-12)
    gap = res.distributions[("auroc_gap", "g", "recon")]
    worst = res.distributions[("worst_group_auroc", "g", "recon")]
    assert (worst <= 1).all() and (gap >= 0).all()
    assert np.isfinite(t.loc[("worst_group_auroc", "g", "recon"), "bca_low"])
