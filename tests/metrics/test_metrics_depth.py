"""Known answers for the fairness audit in depth: calibration, operating points, intersections,
onset level, ranking, segmentation equity and the sample-size planner."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.linear_model import LogisticRegression

import reconaudit.metrics as M


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


# ---------------------------------------------------------------- calibration


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_ece_of_a_calibrated_score_is_near_zero(strategy):
    rng = np.random.default_rng(0)
    p = rng.random(40_000)
    y = (rng.random(p.size) < p).astype(int)
    assert M.expected_calibration_error(y, p, n_bins=10, strategy=strategy) < 0.015


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_ece_of_squared_probabilities_is_one_sixth(strategy):
    # P(y=1 | p) = p^2 < p everywhere: every bin is off by E[p - p^2 | bin], total E[p - p^2] = 1/6
    rng = np.random.default_rng(1)
    p = rng.random(200_000)
    y = (rng.random(p.size) < p**2).astype(int)
    assert M.expected_calibration_error(y, p, n_bins=15, strategy=strategy) == pytest.approx(1 / 6, abs=0.006)


def test_weighted_ece_equals_ece_on_repeated_rows():
    rng = np.random.default_rng(2)
    p, y = rng.random(50), (rng.random(50) < 0.4).astype(int)
    w = rng.integers(0, 4, size=(3, 50))
    got = M.expected_calibration_error(y, p, weights=w)
    for b in range(3):
        rep = np.repeat(np.arange(50), w[b])
        assert got[b] == pytest.approx(M.expected_calibration_error(y[rep], p[rep]), abs=1e-12)


def test_calibration_slope_intercept_recovers_a_shifted_logit_and_matches_sklearn():
    rng = np.random.default_rng(3)
    p = _sigmoid(rng.normal(0, 1.5, 60_000))
    y = (rng.random(p.size) < _sigmoid(0.5 + 2.0 * np.log(p / (1 - p)))).astype(int)
    a, b = M.calibration_slope_intercept(y, p)
    assert a == pytest.approx(0.5, abs=0.05) and b == pytest.approx(2.0, abs=0.05)
    # oracle: unpenalised logistic regression on logit(p), with weights
    ps, ys = p[:300], y[:300]
    w = rng.integers(0, 3, size=300).astype(float)
    lr = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(
        np.log(ps / (1 - ps))[:, None], ys, sample_weight=w)
    ai, bi = M.calibration_slope_intercept(ys, ps, weights=w[None])
    assert ai[0] == pytest.approx(lr.intercept_[0], abs=1e-5) and bi[0] == pytest.approx(lr.coef_[0, 0], abs=1e-5)


def test_calibration_by_group_finds_the_miscalibrated_group():
    rng = np.random.default_rng(4)
    n = 6000
    grp = np.where(np.arange(n) < n // 2, "A", "B")
    pid = np.arange(n) // 2
    p = rng.random(n)
    y = (rng.random(n) < np.where(grp == "A", p, p**2)).astype(int)
    tab = M.calibration_by_group(y, p, sensitive_features=grp, patient_ids=pid, y_prob_clean=p,
                                 n_resamples=100, seed=0)
    r = tab.set_index(["group", "metric", "arm"])
    assert r.loc[("A", "ece", "recon"), "estimate"] < 0.03
    assert r.loc[("B", "ece", "recon"), "estimate"] == pytest.approx(1 / 6, abs=0.02)
    gap = r.loc[("(gap)", "ece_gap", "recon")]
    assert gap["ci_low"] <= gap["estimate"] <= gap["ci_high"] and gap["ci_low"] > 0.1
    ch = r.loc[("(gap)", "ece_gap", "change")]  # same scores on both arms: no change
    assert ch["estimate"] == 0 and ch["ci_low"] == 0 and ch["ci_high"] == 0
    assert r.loc[("A", "ece", "recon"), "n_patients"] == n // 4


def test_groups_below_the_patient_guard_are_not_estimable():
    rng = np.random.default_rng(5)
    grp = np.array(["A"] * 40 + ["B"] * 4)
    pid = np.arange(44) // 2  # B: 2 patients
    p, y = rng.random(44), (rng.random(44) < 0.5).astype(int)
    tab = M.calibration_by_group(y, p, sensitive_features=grp, patient_ids=pid, n_resamples=20,
                                 min_group_patients=3)
    b = tab[tab["group"] == "B"]
    assert not b["estimable"].any() and b["estimate"].isna().all()
    assert tab[tab["metric"] == "ece_gap"]["estimate"].isna().all()


# ---------------------------------------------------------------- operating point


def test_operating_point_audit_counts_and_restoring_threshold():
    rng = np.random.default_rng(6)
    n = 400
    grp = np.where(rng.random(n) < 0.5, "A", "B")
    pid = np.arange(n)
    y = (rng.random(n) < 0.4).astype(int)
    clean = np.clip(_sigmoid(2.5 * (2 * y - 1) + rng.normal(0, 1.2, n)), 0.21, 0.99)
    recon = np.where(grp == "B", clean - 0.2, clean)  # B's scores shift down
    t = 0.5
    tab = M.operating_point_audit(y, clean, recon, t, sensitive_features=grp, patient_ids=pid, n_resamples=50)
    r = tab.set_index(["group", "quantity"])["estimate"]
    for g in ("A", "B"):
        m = grp == g
        se_c = np.mean(clean[m & (y == 1)] >= t)
        se_r = np.mean(recon[m & (y == 1)] >= t)
        sp_r = np.mean(recon[m & (y == 0)] < t)
        flips = np.mean((clean[m] >= t) != (recon[m] >= t))
        assert r[(g, "sensitivity_clean")] == pytest.approx(se_c)
        assert r[(g, "sensitivity_change")] == pytest.approx(se_r - se_c)
        assert r[(g, "specificity_recon")] == pytest.approx(sp_r)
        assert r[(g, "flip_rate")] == pytest.approx(flips)
    assert r[("A", "flip_rate")] == 0 and r[("B", "flip_to_positive")] == 0
    # the restoring threshold of B is the clean one's k-th largest positive score, shifted by -0.2
    pos = np.sort(clean[(grp == "B") & (y == 1)])[::-1]
    k = int(np.ceil(r[("B", "sensitivity_clean")] * len(pos) - 1e-9))
    assert r[("B", "restoring_threshold")] == pytest.approx(pos[k - 1] - 0.2)
    rt = r[("B", "restoring_threshold")]
    pr = recon[(grp == "B") & (y == 1)]
    assert np.mean(pr >= rt) >= r[("B", "sensitivity_clean")] > np.mean(pr >= np.nextafter(rt, 1))


def test_restoring_threshold_edges():
    assert np.isnan(M.restoring_threshold([0, 0], [0.1, 0.2], 0.5))
    assert M.restoring_threshold([1, 1, 0], [0.9, 0.3, 0.5], 1.0) == 0.3
    assert M.restoring_threshold([1, 1, 0], [0.9, 0.3, 0.5], 0.0) > 0.9


# ---------------------------------------------------------------- intersections


def test_intersections_and_patient_guard():
    cols = {"sex": np.array(["F", "F", "M", "M", "M"]), "age": np.array(["<40", "<40", "<40", ">65", ">65"])}
    g = M.intersect_groups(cols, ["sex", "age"])
    assert list(g) == ["F × <40", "F × <40", "M × <40", "M × >65", "M × >65"]
    guard = M.group_guard(g, ["p1", "p1", "p2", "p3", "p4"], min_patients=2).set_index("group")
    assert guard.loc["F × <40", "n_studies"] == 2 and guard.loc["F × <40", "n_patients"] == 1
    assert list(guard["estimable"]) == [False, False, True]
    with pytest.raises(ValueError, match="race"):
        M.intersect_groups(cols, ["sex", "race"])


# ---------------------------------------------------------------- onset


def test_onset_level_finds_a_known_change_point():
    # five levels; the disadvantaged group's true positives start being missed from level 3 on
    rng = np.random.default_rng(7)
    n = 300
    grp = np.where(np.arange(n) % 2 == 0, "A", "B")
    y = (rng.random(n) < 0.5).astype(int)
    clean = y.copy()
    levels = [1.0, 2.0, 3.0, 4.0, 5.0]
    miss = [0.0, 0.0, 0.0, 0.35, 0.5]
    p = []
    for q in miss:
        recon = np.where((grp == "B") & (y == 1) & (rng.random(n) < q), 0, clean)
        p.append(M.paired_permutation_test(clean, recon, sensitive_features=grp, patient_ids=np.arange(n),
                                           metric="equal_opportunity_difference", y_true=y,
                                           n_permutations=400, seed=1).p_value)
    res = M.onset_level(levels, p)
    assert res.level == 4.0 and res.index == 3
    assert M.onset_level(levels[:3], p[:3]).text == "none up to the most severe level"
    # the direction filter and the sustained rule
    assert M.onset_level([1, 2, 3], [0.001, 0.5, 0.001], adjust=False, sustained=True).level == 3
    assert M.onset_level([1, 2], [0.001, 0.001], changes=[-0.1, 0.2], direction="increase", adjust=False).level == 2


# ---------------------------------------------------------------- ranking


def test_rank_interval_of_a_clearly_best_method_is_one_one():
    rng = np.random.default_rng(8)
    d = np.stack([0.9 + 0.01 * rng.standard_normal(500), 0.7 + 0.05 * rng.standard_normal(500),
                  0.68 + 0.05 * rng.standard_normal(500)], axis=1)
    r = M.bootstrap_ranks(d.mean(0), d, ["best", "b", "c"])
    top = r.iloc[0]
    assert top["method"] == "best" and (top["rank_ci_low"], top["rank_ci_high"]) == (1, 1)
    assert top["p_first"] == 1.0
    assert r.iloc[1]["rank_ci_low"] == 2 and r.iloc[1]["rank_ci_high"] == 3
    assert "overlaps no other" in M.overlap_text(r)
    # lower is better flips the order
    assert M.bootstrap_ranks(d.mean(0), d, ["best", "b", "c"], higher_is_better=False).iloc[0]["method"] != "best"


def test_friedman_known_value_and_scipy():
    # N blocks with the same order of M methods: chi2_F = N (M - 1)
    tab = np.tile([0.9, 0.8, 0.7, 0.6], (5, 1)) + np.arange(5)[:, None] * 0.01
    res = M.friedman_test(tab)
    assert res.statistic == pytest.approx(5 * 3) and res.n_blocks == 5
    rng = np.random.default_rng(9)
    t = rng.random((8, 4))
    t[2, 1] = np.nan
    ok = ~np.isnan(t).any(1)
    assert M.friedman_test(t).p_value == pytest.approx(sps.friedmanchisquare(*t[ok].T).pvalue)
    assert np.isnan(M.friedman_test(t[:, :2]).p_value)


# ---------------------------------------------------------------- segmentation equity


def test_equity_scaled_dice_and_worst_case():
    d = np.array([0.8] * 10 + [0.6] * 10)
    g = np.array(["A"] * 10 + ["B"] * 10)
    assert M.equity_scaled(d, sensitive_features=g) == pytest.approx(0.7 / 1.1)
    assert M.equity_scaled(np.full(20, 0.7), sensitive_features=g) == pytest.approx(0.7)
    vals = np.concatenate([np.linspace(0.7, 0.9, 10), np.linspace(0.5, 0.7, 10)])
    tab = M.segmentation_equity(vals, values_clean=vals, sensitive_features=g, patient_ids=np.arange(20),
                                n_resamples=50, tail=0.1).set_index(["metric", "arm"])
    assert tab.loc[("worst_group_mean", "recon"), "estimate"] == pytest.approx(0.6)
    assert tab.loc[("worst_group_tail", "recon"), "estimate"] == pytest.approx(0.5)  # 10% of B: its minimum
    assert tab.loc[("worst_group_mean", "recon"), "worst_group"] == "B"
    assert tab.loc[("equity_scaled", "change"), "estimate"] == 0


# ---------------------------------------------------------------- power


def test_power_planner_matches_a_simulation():
    rng = np.random.default_rng(10)
    # pilot: 200 patients, two groups; group B loses 0.05 more Dice with reconstruction
    n0 = 200
    grp = np.where(np.arange(n0) < n0 // 2, "A", "B")
    clean = np.where(grp == "A", 0.85, 0.70) + rng.normal(0, 0.05, n0)
    recon = clean - np.where(grp == "B", 0.05, 0.0) + rng.normal(0, 0.06, n0)
    boot = M.bootstrap_metrics(np.zeros(n0), patient_ids=np.arange(n0), sensitive_features=grp, values=recon,
                               values_clean=clean, n_resamples=600, seed=0, bca=False).table
    row = boot[(boot["metric"] == "dice_gap") & (boot["arm"] == "change")].iloc[0]
    se = M.se_from_interval(row["ci_low"], row["ci_high"])
    effect = 0.03
    n = int(M.required_patients(se, n0, effect))
    assert M.power_at(n, se * np.sqrt(n0), effect) == pytest.approx(0.8, abs=0.01)
    # simulate 2000 audits of n patients with a true gap change of `effect`; z-test on the gap change
    sims, half = 2000, n // 2
    ca = 0.85 + rng.normal(0, 0.05, (sims, half))
    cb = 0.70 + rng.normal(0, 0.05, (sims, n - half))
    da = rng.normal(0, 0.06, (sims, half))
    db = -effect + rng.normal(0, 0.06, (sims, n - half))
    ra, rb = ca + da, cb + db
    change = (ra.mean(1) - rb.mean(1)) - (ca.mean(1) - cb.mean(1))  # recon gap - clean gap (A stays better)
    se_sim = np.sqrt(da.var(1, ddof=1) / half + db.var(1, ddof=1) / (n - half))
    rate = np.mean(np.abs(change / se_sim) > sps.norm.ppf(0.975))
    assert rate == pytest.approx(0.8, abs=0.05)
    with pytest.raises(ValueError, match="effect"):
        M.required_patients(se, n0, 0.0)
    assert np.isnan(M.required_patients(float("nan"), n0, 0.05))
