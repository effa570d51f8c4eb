"""Undefined resamples and patient-level group guards: known answers on tiny groups."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import reconaudit.metrics as M


def test_bootstrap_p_value_counts_undefined_resamples_against_the_statistic():
    # B = 5, U = 1: #{<= 0} + U = 2, #{>= 0} + U = 4 -> p = 2 * 2 / 5
    assert M.bootstrap_p_value(np.array([np.nan, 1.0, 2.0, 3.0, -1.0])) == pytest.approx(0.8)
    # no undefined resample: the usual two-sided p
    d = np.array([1.0, 2.0, 3.0, -1.0])
    assert M.bootstrap_p_value(d) == pytest.approx(2 * min(np.mean(d <= 0), np.mean(d >= 0)))
    # 48 % undefined and every defined resample positive: p = 0.96, never significant
    d = np.r_[np.full(48, np.nan), np.ones(52)]
    assert M.bootstrap_p_value(d) == pytest.approx(0.96)
    assert np.isnan(M.bootstrap_p_value(np.full(3, np.nan)))


def _six_study_group():
    """Group A: 6 patients, one of them positive, detected on clean images and missed after reconstruction.
    Group B: 60 patients, 20 positives, every call the same on clean and recon."""
    y = np.r_[1, np.zeros(5), np.ones(20), np.zeros(40)].astype(int)
    g = np.r_[np.full(6, "A"), np.full(60, "B")]
    clean = y.copy()
    recon = y.copy()
    recon[0] = 0  # the one positive of A is missed
    recon[6:11] = 0  # B misses 5 of its 20 positives on both arms
    clean[6:11] = 0
    pid = np.arange(len(y))
    return y, g, clean, recon, pid


def test_six_study_group_is_not_significant_and_not_estimable():
    y, g, clean, recon, pid = _six_study_group()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.MetricUndefinedWarning)
        res = M.bootstrap_metrics(y, patient_ids=pid, sensitive_features={"grp": g}, y_pred=recon,
                                  y_pred_clean=clean, n_resamples=2000, seed=1, bca=False)
    t = res.table.set_index(["metric", "attribute", "arm"])
    row = t.loc[("equal_opportunity_difference", "grp", "change")]
    # EOpp: clean |1 - 0.75| = 0.25, recon |0 - 0.75| = 0.75
    assert row["estimate"] == pytest.approx(0.5)
    share = row["n_undefined"] / 2000
    assert 0.30 < share < 0.45  # the positive of A is left out of about e^-1 of the resamples
    d = res.distributions[("equal_opportunity_difference", "grp", "change")]
    dropped = d[~np.isnan(d)]
    assert 2 * min(np.mean(dropped <= 0), np.mean(dropped >= 0)) < 0.05  # what dropping them would claim
    assert row["p_value"] >= 2 * share - 1e-12 and row["p_value"] > 0.5  # counted against: not significant
    perm = M.paired_permutation_test(clean, recon, sensitive_features=g, patient_ids=pid,
                                     metric="equal_opportunity_difference", y_true=y, n_permutations=500)
    assert perm.p_value > 0.4  # the permutation test agrees: one flipped call is no evidence
    # with the patient guard on positives the metric is not estimable at all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.MetricUndefinedWarning)
        res2 = M.bootstrap_metrics(y, patient_ids=pid, sensitive_features={"grp": g}, y_pred=recon,
                                   y_pred_clean=clean, n_resamples=200, seed=1, bca=False, min_group_positives=2)
    t2 = res2.table.set_index(["metric", "attribute", "arm"])
    for m in ("equal_opportunity_difference", "equalized_odds_difference"):
        assert np.isnan(t2.loc[(m, "grp", "change"), "estimate"])
        assert np.isnan(t2.loc[(m, "grp", "change"), "p_value"])
        assert "group 'A': 1 patient(s) with a positive study" in res2.meta["not_estimable"][(m, "grp")][0]
    # demographic parity needs no positives: still estimable
    assert np.isfinite(t2.loc[("demographic_parity_difference", "grp", "change"), "estimate"])


def test_one_patient_with_24_slices_is_not_estimable_for_every_metric():
    rng = np.random.default_rng(0)
    n_b = 40
    pid = np.r_[np.zeros(24, int), 1 + np.arange(n_b)]  # patient 0: 24 slices, group "tiny"
    g = np.r_[np.full(24, "tiny"), np.full(n_b, "big")]
    y = np.r_[np.tile([0, 1], 12), rng.integers(0, 2, n_b)]
    score = np.clip(0.3 * y + rng.random(len(y)) * 0.7, 0, 1)
    score_c = np.clip(score + rng.normal(0, 0.05, len(y)), 0, 1)
    dice = rng.random(len(y))
    # 24 studies pass the study-count guard; 1 patient fails the patient guard
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.MetricUndefinedWarning)
        res = M.bootstrap_metrics(y, patient_ids=pid, sensitive_features={"g": g}, y_pred=score >= 0.5,
                                  y_pred_clean=score_c >= 0.5, y_score=score, y_score_clean=score_c,
                                  n_resamples=100, seed=0, auroc_gap=True, bca=False, min_group_size=5,
                                  min_group_patients=5)
        res_v = M.bootstrap_metrics(np.zeros(len(y)), patient_ids=pid, sensitive_features={"g": g}, values=dice,
                                    values_clean=dice[::-1].copy(), n_resamples=100, seed=0, bca=False,
                                    min_group_size=5, min_group_patients=5)
    t = res.table.set_index(["metric", "attribute", "arm"])
    for m in (*M.stats.COUNT_METRICS, "auroc_gap"):
        for arm in ("clean", "recon", "change"):
            assert np.isnan(t.loc[(m, "g", arm), "estimate"]), (m, arm)
        assert "1 patient(s) (24 studies) < min_group_patients=5" in res.meta["not_estimable"][(m, "g")][0]
    assert np.isfinite(t.loc[("auroc", "all", "recon"), "estimate"])  # pooled metrics are unaffected
    tv = res_v.table.set_index(["metric", "attribute", "arm"])
    assert np.isnan(tv.loc[("dice_gap", "g", "recon"), "estimate"])
    assert np.isnan(tv.loc[("worst_group_dice", "g", "recon"), "estimate"])


def test_auroc_gap_obeys_min_group_size():
    """A 4-study group no longer yields an AUROC gap (it used to bypass min_group_size)."""
    rng = np.random.default_rng(3)
    g = np.r_[np.full(4, "small"), np.full(50, "big")]
    y = np.r_[[0, 1, 0, 1], rng.integers(0, 2, 50)]
    s = rng.random(len(y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.MetricUndefinedWarning)
        res = M.bootstrap_metrics(y, patient_ids=np.arange(len(y)), sensitive_features=g, y_score=s,
                                  y_score_clean=s[::-1].copy(), n_resamples=50, auroc_gap=True, bca=False,
                                  min_group_size=5)
    t = res.table.set_index(["metric", "attribute", "arm"])
    assert np.isnan(t.loc[("auroc_gap", "group", "recon"), "estimate"])
    assert "4 studies < min_group_size=5" in res.meta["not_estimable"][("auroc_gap", "group")][0]


def test_group_support_counts_patients():
    sup = M.group_support([1, 0, 1, 0, 0], sensitive_features=["a", "a", "a", "b", "b"],
                          patient_ids=["p", "p", "q", "r", "s"])
    assert sup.loc["a"].tolist() == [3, 2, 2, 1]  # studies, patients, with a positive, with a negative
    assert sup.loc["b"].tolist() == [2, 2, 0, 2]
    assert M.guard_reasons(sup, ("pos",), min_group_patients=2) == [
        "group 'b': 0 patient(s) with a positive study < min_group_positives=1 (not estimable)"]


@pytest.mark.parametrize("method,sm", [("holm", "holm"), ("bh", "fdr_bh")])
def test_corrections_match_statsmodels_and_leave_nan_rows_out(method, sm):
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(4)
    p = rng.random(40) ** 3
    p[[3, 17, 29]] = np.nan  # not estimable: outside the family
    res = M.adjust_pvalues(p, method=method)
    ok = ~np.isnan(p)
    rej, adj, _, _ = multipletests(p[ok], alpha=0.05, method=sm)
    np.testing.assert_allclose(res["p_adjusted"].to_numpy()[ok], adj, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(res["significant"].to_numpy()[ok], rej)
    assert res["p_adjusted"].isna().sum() == 3 and not res["significant"][~ok].any()
    assert res["family_size"].iloc[0] == 37


def test_two_stage_bootstrap_helpers():
    # Holm over m = 500 tests at alpha 0.05 needs p < 1e-4: B2 = 4 m / alpha = 40,000 resamples
    assert M.two_stage_resamples(500, 0.05) == 40_000 and M.two_stage_resamples(10**6, 0.05) == 100_000
    assert M.needs_second_stage(2 * 2 / 1000, 1000) and not M.needs_second_stage(2 * 3 / 1000, 1000)
    assert not M.needs_second_stage(float("nan"), 1000)
    np.testing.assert_array_equal(M.floor_p_value([0.0, 0.5, np.nan], 999), [0.001, 0.5, np.nan])
