"""Statistics: weighted AUROC/counts vs oracles, DeLong, bootstrap coverage, permutation calibration."""

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from reconaudit.metrics import (
    FairnessUndefinedWarning,
    MetricUndefinedWarning,
    adjust_pvalues,
    aggregate_seeds,
    auroc,
    auroc_gap,
    bca_interval,
    benjamini_hochberg,
    bootstrap_metrics,
    bootstrap_weights,
    delong_test,
    dice_gap,
    equal_opportunity_difference,
    equalized_odds_difference,
    holm,
    iter_bootstrap_weights,
    metric_change,
    paired_permutation_test,
    placement_values,
    weighted_auroc,
    weighted_confusion_counts,
)
from reconaudit.metrics._auroc import jackknife_auroc


def _cohort(seed, n_pat=60, max_studies=3, n_groups=3):
    rng = np.random.default_rng(seed)
    k = rng.integers(1, max_studies + 1, n_pat)
    pid = np.repeat(np.arange(n_pat), k)
    n = len(pid)
    g = np.repeat(rng.integers(0, n_groups, n_pat), k)
    y = (rng.random(n) < 0.4).astype(int)
    s = np.round(np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1), 1)  # ties
    return rng, pid, g, y, s


def test_weighted_auroc_matches_sklearn_sample_weight_with_ties():
    rng, pid, g, y, s = _cohort(0)
    w = bootstrap_weights(pid, 20, rng)
    got = weighted_auroc(y, s, w, chunk_size=7)
    ref = [roc_auc_score(y, s, sample_weight=w[b]) for b in range(len(w))]
    np.testing.assert_allclose(got, ref, atol=1e-12)
    assert weighted_auroc(y, s, np.ones(len(y)))[0] == pytest.approx(roc_auc_score(y, s))


def test_bootstrap_weights_resample_patients():
    rng, pid, *_ = _cohort(1)
    w = bootstrap_weights(pid, 50, rng)
    # studies of one patient share a weight; patient draws sum to the number of patients
    for p in np.unique(pid):
        assert (w[:, pid == p] == w[:, pid == p][:, :1]).all()
    first = np.unique(pid, return_index=True)[1]
    assert (w[:, first].sum(axis=1) == len(first)).all()
    # chunked generator with the same seed and chunk size gives the same weights
    a = np.concatenate(list(iter_bootstrap_weights(pid, 50, np.random.default_rng(3), chunk_size=8)))
    b = np.concatenate(list(iter_bootstrap_weights(pid, 50, np.random.default_rng(3), chunk_size=8)))
    assert (a == b).all()


def test_weighted_confusion_counts_match_direct_sums():
    rng, pid, g, y, s = _cohort(2)
    p = (s >= 0.5).astype(int)
    w = bootstrap_weights(pid, 5, rng)
    c = weighted_confusion_counts(y, p, g, w)
    for b in range(5):
        for k in range(3):
            sel = g == k
            tp = w[b, sel & (y == 1) & (p == 1)].sum()
            fn = w[b, sel & (y == 1) & (p == 0)].sum()
            fp = w[b, sel & (y == 0) & (p == 1)].sum()
            tn = w[b, sel & (y == 0) & (p == 0)].sum()
            np.testing.assert_array_equal(c[b, k], [tp, fp, tn, fn])


def test_jackknife_auroc_matches_leave_one_patient_out():
    _, pid, g, y, s = _cohort(3, n_pat=25)
    got = jackknife_auroc(y, s, pid, 25)
    ref = [roc_auc_score(y[pid != p], s[pid != p]) for p in range(25)]
    np.testing.assert_allclose(got, ref, atol=1e-12)


def test_delong_matches_direct_placement_computation():
    rng = np.random.default_rng(4)
    y = (rng.random(80) < 0.4).astype(int)
    a = np.round(rng.normal(y, 1.0), 1)
    b = a + rng.normal(0, 0.8, 80)
    pos, neg = a[y == 1], a[y == 0]
    psi = (pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None])
    v10, v01 = placement_values(y, a)
    np.testing.assert_allclose(v10, psi.mean(axis=1))
    np.testing.assert_allclose(v01, psi.mean(axis=0))
    assert v10.mean() == pytest.approx(roc_auc_score(y, a)) == pytest.approx(auroc(y, a))

    def direct(score):
        p, n_ = score[y == 1], score[y == 0]
        m = (p[:, None] > n_[None]) + 0.5 * (p[:, None] == n_[None])
        return m.mean(1), m.mean(0)

    (xa, ya), (xb, yb) = direct(a), direct(b)
    m, n = len(xa), len(ya)
    var = np.var(xa - xb, ddof=1) / m + np.var(ya - yb, ddof=1) / n
    res = delong_test(y, a, b)
    assert res.difference == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b))
    assert res.standard_error == pytest.approx(np.sqrt(var))
    from scipy.stats import norm

    assert res.p_value == pytest.approx(2 * norm.sf(abs(res.difference) / np.sqrt(var)))
    assert delong_test(y, a, 2 * a + 1) == (0.0, 0.0, 1.0)  # same ordering: no difference


def test_holm_and_bh_known_answers():
    p = [0.01, 0.04, 0.03, 0.005]
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(benjamini_hochberg(p), [0.02, 0.04, 0.04, 0.02])
    np.testing.assert_allclose(holm([0.5, np.nan, 0.01]), [0.5, np.nan, 0.02])
    df = adjust_pvalues(p, comparisons=list("abcd"), method="bh", family="EOD change, 4 cells")
    assert list(df.columns) == [
        "comparison",
        "p",
        "p_adjusted",
        "method",
        "family",
        "family_size",
        "significant",
    ]
    assert (df["family_size"] == 4).all() and df["significant"].tolist() == [True, True, True, True]


def test_bootstrap_point_estimates_distributions_and_seed():
    rng, pid, g, y, s = _cohort(5, n_pat=80)
    s_clean = np.round(np.clip(s + rng.normal(0, 0.1, len(s)), 0, 1), 2)
    p, pc = (s >= 0.5).astype(int), (s_clean >= 0.5).astype(int)
    kw = dict(
        patient_ids=pid,
        sensitive_features={"site": g},
        y_pred=p,
        y_pred_clean=pc,
        y_score=s,
        y_score_clean=s_clean,
        n_resamples=64,
        seed=7,
        chunk_size=16,
    )
    r = bootstrap_metrics(y, **kw)
    t = r.table.set_index(["metric", "attribute", "arm"])
    eod = equalized_odds_difference(y, p, sensitive_features=g)
    eod_c = equalized_odds_difference(y, pc, sensitive_features=g)
    assert t.loc[("equalized_odds_difference", "site", "recon"), "estimate"] == pytest.approx(eod)
    assert t.loc[("equalized_odds_difference", "site", "change"), "estimate"] == pytest.approx(eod - eod_c)
    assert t.loc[("equal_opportunity_difference", "site", "clean"), "estimate"] == pytest.approx(
        equal_opportunity_difference(y, pc, sensitive_features=g)
    )
    assert t.loc[("auroc", "all", "recon"), "estimate"] == pytest.approx(roc_auc_score(y, s))
    # the resample distribution is the metric on the patient-resampled data (same draws, paired arms)
    w = np.concatenate(list(iter_bootstrap_weights(pid, 64, np.random.default_rng(7), chunk_size=16)))
    np.testing.assert_allclose(r.distributions[("auroc", "all", "recon")], weighted_auroc(y, s, w))
    np.testing.assert_allclose(
        r.distributions[("auroc", "all", "change")], weighted_auroc(y, s, w) - weighted_auroc(y, s_clean, w)
    )
    wi = w[10].astype(int)
    rep = np.repeat(np.arange(len(y)), wi)
    assert r.distributions[("equalized_odds_difference", "site", "recon")][10] == pytest.approx(
        equalized_odds_difference(y[rep], p[rep], sensitive_features=g[rep])
    )
    ok, okb = t["ci_low"].notna(), t["bca_low"].notna()
    assert (t.loc[ok, "ci_low"] <= t.loc[ok, "ci_high"]).all()
    assert (t.loc[okb, "bca_low"] <= t.loc[okb, "bca_high"]).all()
    auc_row = t.loc[("auroc", "all", "recon")]
    assert auc_row.ci_low < auc_row.estimate < auc_row.ci_high
    # seeded: same seed, same intervals; another seed, other intervals
    r2 = bootstrap_metrics(y, **kw)
    pd.testing.assert_frame_equal(r.table, r2.table)
    r3 = bootstrap_metrics(y, **{**kw, "seed": 8})
    assert not np.allclose(r.table["ci_low"].fillna(0), r3.table["ci_low"].fillna(0))


def test_bootstrap_gaps_and_bca_match_direct_computations():
    rng, pid, g, y, s = _cohort(9, n_pat=30)
    p = (s >= 0.5).astype(int)
    dice_v = rng.uniform(0.5, 1.0, len(y))
    r = bootstrap_metrics(
        y,
        patient_ids=pid,
        sensitive_features=g,
        y_pred=p,
        y_score=s,
        values=dice_v,
        auroc_gap=True,
        n_resamples=40,
        seed=1,
        chunk_size=16,
    )
    w = np.concatenate(list(iter_bootstrap_weights(pid, 40, np.random.default_rng(1), chunk_size=16)))
    for b in (0, 17, 39):
        rep = np.repeat(np.arange(len(y)), w[b])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FairnessUndefinedWarning)
            ref = auroc_gap(y[rep], s[rep], sensitive_features=g[rep])
        np.testing.assert_allclose(r.distributions[("auroc_gap", "group", "recon")][b], ref, atol=1e-12)
        np.testing.assert_allclose(
            r.distributions[("dice_gap", "group", "recon")][b],
            dice_gap(dice_v[rep], sensitive_features=g[rep]),
        )
    # BCa from the leave-one-patient-out jackknife, recomputed directly
    jack = [
        equalized_odds_difference(y[pid != q], p[pid != q], sensitive_features=g[pid != q]) for q in range(30)
    ]
    row = r.table.set_index(["metric", "attribute", "arm"]).loc[
        ("equalized_odds_difference", "group", "recon")
    ]
    dist = r.distributions[("equalized_odds_difference", "group", "recon")]
    assert (row.bca_low, row.bca_high) == pytest.approx(bca_interval(dist, row.estimate, np.array(jack)))


def test_bootstrap_ci_of_mean_covers_at_nominal_rate():
    rng = np.random.default_rng(6)
    hit_pct, hit_bca = 0, 0
    for _ in range(200):
        k = rng.integers(1, 4, 60)  # 60 patients, 1-3 studies, correlated within patient
        pid = np.repeat(np.arange(60), k)
        v = np.repeat(rng.gamma(4.0, 0.25, 60), k) + rng.normal(0, 0.3, len(pid))
        true_mean = 1.0  # E[v] and E of the study-weighted mean
        r = bootstrap_metrics(
            np.zeros(len(pid)),
            patient_ids=pid,
            values=v,
            values_name="v",
            n_resamples=300,
            seed=int(rng.integers(1 << 31)),
        )
        row = r.table.set_index("metric").loc["mean_v"]
        hit_pct += row.ci_low <= true_mean <= row.ci_high
        hit_bca += row.bca_low <= true_mean <= row.bca_high
    assert 0.90 <= hit_pct / 200 <= 0.99
    assert 0.90 <= hit_bca / 200 <= 0.99


def _permutation_cohort(rng, bias):
    n_pat = 120
    pid = np.repeat(np.arange(n_pat), 2)
    g = np.repeat(rng.integers(0, 2, n_pat), 2)
    y = (rng.random(2 * n_pat) < 0.5).astype(int)
    latent = rng.normal(1.0 * y, 1.0)
    clean = (latent + rng.normal(0, 0.5, len(y)) > 0.5).astype(int)
    recon = (latent + rng.normal(0, 0.5, len(y)) - bias * (g == 1) > 0.5).astype(int)
    return y, clean, recon, g, pid


def test_permutation_p_values_calibrated_and_powered():
    rng = np.random.default_rng(7)
    null_p, alt_p = [], []
    for rep in range(100):
        y, c, r, g, pid = _permutation_cohort(rng, bias=0.0)
        null_p.append(
            paired_permutation_test(
                c,
                r,
                y_true=y,
                sensitive_features=g,
                patient_ids=pid,
                metric="equal_opportunity_difference",
                n_permutations=200,
                seed=rep,
            ).p_value
        )
    for rep in range(30):
        y, c, r, g, pid = _permutation_cohort(rng, bias=1.5)
        alt_p.append(
            paired_permutation_test(
                c,
                r,
                y_true=y,
                sensitive_features=g,
                patient_ids=pid,
                metric="equal_opportunity_difference",
                n_permutations=200,
                seed=rep,
            ).p_value
        )
    null_p, alt_p = np.array(null_p), np.array(alt_p)
    assert 0.0 <= np.mean(null_p < 0.05) <= 0.12
    assert 0.3 <= np.mean(null_p) <= 0.7  # roughly uniform
    assert np.mean(alt_p < 0.05) >= 0.8


def test_permutation_test_on_dice_gap_detects_group_drop():
    rng = np.random.default_rng(8)
    pid = np.arange(100)
    g = rng.integers(0, 2, 100)
    clean = rng.uniform(0.7, 0.9, 100)
    res = paired_permutation_test(
        clean, clean - 0.1 * g, sensitive_features=g, patient_ids=pid, metric="dice_gap", n_permutations=200
    )
    gap = lambda d: abs(d[g == 0].mean() - d[g == 1].mean())  # noqa: E731
    assert res.observed_change == pytest.approx(gap(clean - 0.1 * g) - gap(clean))
    assert res.p_value < 0.05


def test_aggregate_seeds_and_metric_change():
    df = pd.DataFrame(
        {
            "recon": ["unet"] * 3 + ["gan"] * 2,
            "seed": [0, 1, 2, 0, 1],
            "eod": [0.1, 0.2, 0.3, 0.5, 0.7],
            "ci_low": [0.0, 0.1, 0.2, 0.4, 0.6],
            "ci_high": [0.2, 0.3, 0.4, 0.8, 0.8],
        }
    )
    out = aggregate_seeds(df, "eod", by=["recon"]).set_index("recon")
    assert out.loc["unet", "seed_mean"] == pytest.approx(0.2) and out.loc[
        "unet", "seed_std"
    ] == pytest.approx(0.1)
    assert out.loc["gan", "n_seeds"] == 2 and out.loc["gan", "bootstrap_half_width"] == pytest.approx(0.15)
    ch = metric_change(0.75, 0.8)
    assert ch.difference == pytest.approx(-0.05) and ch.relative_percent == pytest.approx(-6.25)
    with pytest.warns(MetricUndefinedWarning, match="clean value is 0"):
        assert np.isnan(metric_change(np.array([0.1, 0.2]), np.array([0.0, 0.1])).relative_percent[0])


def test_column_p_values_count_undefined_resamples_against_the_change():
    """The depth analyses' per-column p-values follow the bootstrap's one convention: an undefined
    resample counts on both sides (known answer: two positive, two undefined -> p = 1, not 0)."""
    from reconaudit.metrics.intervals import bootstrap_p_value, column_intervals, column_p_values

    dist = np.array([[1.0, 0.5], [1.0, -0.2], [np.nan, 0.3], [np.nan, 0.1]])
    p = column_p_values(dist)
    assert p[0] == 1.0  # 2 * min(0 + 2, 2 + 2) / 4
    assert p[1] == pytest.approx(0.5)  # 2 * min(1, 3) / 4
    assert p.tolist() == [bootstrap_p_value(dist[:, 0]), bootstrap_p_value(dist[:, 1])]
    lo, hi = column_intervals(dist, 0.5)
    assert lo[0] == hi[0] == 1.0 and lo[1] == pytest.approx(np.percentile([0.5, -0.2, 0.3, 0.1], 25))
