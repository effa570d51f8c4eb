"""Fairness metrics against fairlearn (hypothesis property tests) and their undefined cases."""

import warnings

import numpy as np
import pytest
from fairlearn.metrics import (
    MetricFrame,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from fairlearn.metrics import (
    demographic_parity_difference as fl_dpd,
)
from fairlearn.metrics import (
    equal_opportunity_difference as fl_eopp,
)
from fairlearn.metrics import (
    equalized_odds_difference as fl_eod,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score, zero_one_loss

from reconaudit.metrics import (
    FairnessUndefinedWarning,
    auroc_gap,
    confusion_counts,
    demographic_parity_difference,
    dice_gap,
    equal_opportunity_difference,
    equalized_odds_difference,
    skewed_error_ratio,
    worst_group,
)


@st.composite
def cohorts(draw):
    """Several imbalanced groups, each with at least one positive and one negative."""
    n_groups = draw(st.integers(2, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    sizes = 2 + rng.geometric(draw(st.floats(0.02, 0.3)), n_groups)  # imbalanced group sizes
    groups = np.repeat(np.array(["g" + str(i) for i in range(n_groups)], dtype=object), sizes)
    prev = rng.uniform(0.05, 0.9, n_groups)
    y = (rng.random(len(groups)) < np.repeat(prev, sizes)).astype(int)
    starts = np.cumsum(sizes) - sizes
    y[starts], y[starts + 1] = 1, 0  # every group has both classes
    y_pred = (
        rng.random(len(groups)) < np.where(y == 1, rng.uniform(0.3, 0.95), rng.uniform(0.05, 0.6))
    ).astype(int)
    perm = rng.permutation(len(groups))
    return y[perm], y_pred[perm], groups[perm]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cohorts())
def test_fairness_metrics_agree_with_fairlearn(data):
    y, p, g = data
    with warnings.catch_warnings():
        warnings.simplefilter("error", FairnessUndefinedWarning)
        assert equalized_odds_difference(y, p, sensitive_features=g) == pytest.approx(
            fl_eod(y, p, sensitive_features=g), abs=1e-12
        )
        assert demographic_parity_difference(y, p, sensitive_features=g) == pytest.approx(
            fl_dpd(y, p, sensitive_features=g), abs=1e-12
        )
        assert equal_opportunity_difference(y, p, sensitive_features=g) == pytest.approx(
            fl_eopp(y, p, sensitive_features=g), abs=1e-12
        )
    mf = MetricFrame(
        metrics={
            "tpr": true_positive_rate,
            "fpr": false_positive_rate,
            "sr": selection_rate,
            "err": zero_one_loss,
        },
        y_true=y,
        y_pred=p,
        sensitive_features=g,
    )
    bg = mf.by_group
    assert equal_opportunity_difference(y, p, sensitive_features=g) == pytest.approx(
        bg["tpr"].max() - bg["tpr"].min(), abs=1e-12
    )
    err = bg["err"]
    if err.min() > 0:
        assert skewed_error_ratio(y, p, sensitive_features=g) == pytest.approx(
            err.max() / err.min(), rel=1e-12
        )
    else:
        with pytest.warns(FairnessUndefinedWarning, match="error rate 0"):
            assert np.isnan(skewed_error_ratio(y, p, sensitive_features=g))
    # counts engine: rates from the (G, 4) array equal fairlearn's per-group rates
    c = confusion_counts(y, p, g)
    np.testing.assert_allclose(c[:, 0] / (c[:, 0] + c[:, 3]), bg["tpr"].to_numpy(), atol=1e-12)
    np.testing.assert_allclose(c[:, 1] / (c[:, 1] + c[:, 2]), bg["fpr"].to_numpy(), atol=1e-12)
    np.testing.assert_allclose((c[:, 0] + c[:, 1]) / c.sum(1), bg["sr"].to_numpy(), atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(cohorts())
def test_auroc_gap_and_worst_group_agree_with_sklearn_per_group(data):
    y, p, g = data
    rng = np.random.default_rng(len(y))
    s = np.round(rng.random(len(y)) + 0.5 * y, 1)  # ties
    per = MetricFrame(metrics=roc_auc_score, y_true=y, y_pred=s, sensitive_features=g).by_group
    assert auroc_gap(y, s, sensitive_features=g) == pytest.approx(per.max() - per.min(), abs=1e-12)
    assert worst_group(s, y_true=y, sensitive_features=g, agg=roc_auc_score) == pytest.approx(
        per.min(), abs=1e-12
    )


def test_undefined_cases_warn_with_group_and_reason():
    y = np.array([1, 0, 1, 0, 0, 0])
    p = np.array([1, 0, 0, 0, 1, 0])
    g = np.array(["a", "a", "a", "b", "b", "b"])  # group b has no positives
    with pytest.warns(FairnessUndefinedWarning, match="'b' has no positives"):
        assert np.isnan(equalized_odds_difference(y, p, sensitive_features=g))
    with pytest.warns(FairnessUndefinedWarning, match="'b' has no positives"):
        assert np.isnan(equal_opportunity_difference(y, p, sensitive_features=g))
    with pytest.warns(FairnessUndefinedWarning, match="'b' has no positives"):
        assert np.isnan(auroc_gap(y, p.astype(float), sensitive_features=g))
    # demographic parity needs no positives: defined (1/3 - 1/3 = 0)
    assert demographic_parity_difference(y, p, sensitive_features=g) == pytest.approx(0.0)
    with pytest.warns(FairnessUndefinedWarning, match="min_group_size=4"):
        assert np.isnan(demographic_parity_difference(y, p, sensitive_features=g, min_group_size=4))


def test_dice_gap_and_worst_group_known_answers():
    d = np.array([0.9, 0.8, 0.5, 0.7, 1.0])
    g = np.array(["x", "x", "y", "y", "z"])
    assert dice_gap(d, sensitive_features=g) == pytest.approx(1.0 - 0.6)
    assert worst_group(d, sensitive_features=g) == pytest.approx(0.6)
    assert worst_group(d, sensitive_features=g, higher_is_better=False) == pytest.approx(1.0)
    with pytest.warns(FairnessUndefinedWarning, match="'z'"):
        assert np.isnan(dice_gap(d, sensitive_features=g, min_group_size=2))
