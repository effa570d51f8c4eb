"""Regression metrics and their group gaps against scikit-learn and direct computations."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

from reconaudit.metrics import (
    bootstrap_weights,
    group_mae,
    mae,
    r2,
    regression_summary,
    rmse,
    weighted_regression_metrics,
)
from reconaudit.metrics import registry as metric_registry


def _data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.normal(5, 2, n)
    groups = np.array(["F", "M", "X"])[rng.integers(0, 3, n)]
    pred = y + rng.normal(0, 1, n) * np.where(groups == "F", 1.5, 0.5)
    pid = np.arange(n) // 2
    return y, pred, groups, pid


def test_metrics_equal_scikit_learn():
    y, p, _, _ = _data()
    assert mae(y, p) == pytest.approx(mean_absolute_error(y, p), rel=1e-12)
    assert rmse(y, p) == pytest.approx(root_mean_squared_error(y, p), rel=1e-12)
    assert r2(y, p) == pytest.approx(r2_score(y, p), rel=1e-12)


def test_weighted_metrics_equal_scikit_learn_with_sample_weight():
    y, p, _, _ = _data(seed=1)
    w = np.random.default_rng(2).integers(0, 4, (3, len(y)))
    m = weighted_regression_metrics(y, p, w)
    for b in range(3):
        assert m["mae"][b] == pytest.approx(mean_absolute_error(y, p, sample_weight=w[b]), rel=1e-10)
        assert m["rmse"][b] == pytest.approx(root_mean_squared_error(y, p, sample_weight=w[b]), rel=1e-10)
        assert m["r2"][b] == pytest.approx(r2_score(y, p, sample_weight=w[b]), rel=1e-10)


def test_nan_pairs_are_left_out():
    y, p, _, _ = _data(seed=3)
    y2 = y.copy()
    y2[:10] = np.nan
    assert mae(y2, p) == pytest.approx(mean_absolute_error(y[10:], p[10:]))


def test_group_mae_gap_equals_a_direct_computation():
    y, p, g, _ = _data(seed=4)
    per = pd.DataFrame({"e": np.abs(p - y), "g": g}).groupby("g")["e"].mean()
    out = group_mae(y, p, sensitive_features=g)
    assert out["groups"] == list(per.index)
    np.testing.assert_allclose(out["group_mae"][0], per.to_numpy(), rtol=1e-12)
    assert out["mae_gap"][0] == pytest.approx(per.max() - per.min(), rel=1e-12)
    assert out["worst_group_mae"][0] == pytest.approx(per.max(), rel=1e-12)


def test_group_mae_respects_min_group_size():
    y, p, g, _ = _data(seed=5)
    g = g.astype(object)
    g[:2] = "tiny"
    out = group_mae(y, p, sensitive_features=g, min_group_size=5)
    assert np.isnan(out["group_mae"][0][out["groups"].index("tiny")])
    assert np.isfinite(out["mae_gap"][0])


def test_summary_point_estimates_and_changes():
    y, p, g, pid = _data(seed=6)
    clean = y + np.random.default_rng(7).normal(0, 0.3, len(y))
    s = regression_summary(y, p, clean, patient_ids=pid, sensitive_features={"sex": g}, n_resamples=200, seed=0)
    get = lambda m, a, arm: s[(s.metric == m) & (s.attribute == a) & (s.arm == arm)].iloc[0]  # noqa: E731
    assert get("mae", "all", "recon")["estimate"] == pytest.approx(mean_absolute_error(y, p))
    assert get("mae", "all", "clean")["estimate"] == pytest.approx(mean_absolute_error(y, clean))
    assert get("mae", "all", "change")["estimate"] == pytest.approx(mean_absolute_error(y, p) - mean_absolute_error(y, clean))
    gap = group_mae(y, p, sensitive_features=g)["mae_gap"][0] - group_mae(y, clean, sensitive_features=g)["mae_gap"][0]
    assert get("mae_gap", "sex", "change")["estimate"] == pytest.approx(gap)
    for _, r in s.iterrows():
        assert r["ci_low"] <= r["estimate"] + 1e-9 <= r["ci_high"] + 2e-9 or r["metric"] == "r2"
    # the processed predictions are worse: the MAE change is significant
    assert get("mae", "all", "change")["p_value"] < 0.05


def test_summary_intervals_come_from_the_patient_level_bootstrap():
    """The interval is the percentile interval of the metric over stats.bootstrap_weights' resamples
    (the project's one patient resampling), drawn with the same seed."""
    y, p, g, pid = _data(seed=8)
    n_res = 100
    s = regression_summary(y, p, patient_ids=pid, n_resamples=n_res, seed=3)
    w = bootstrap_weights(pid.astype(str), n_res, np.random.default_rng(3)).astype(float)
    dist = np.array([mean_absolute_error(y, p, sample_weight=wb) for wb in w])
    row = s[(s.metric == "mae") & (s.arm == "recon")].iloc[0]
    assert row["ci_low"] == pytest.approx(np.percentile(dist, 2.5))
    assert row["ci_high"] == pytest.approx(np.percentile(dist, 97.5))


def test_regression_metrics_are_registered():
    assert set(metric_registry.REGRESSION_METRICS) == {"mae", "rmse", "r2"}
    assert all(m.family == "regression" for m in metric_registry.REGRESSION_METRICS.values())
