"""The metrics registry: one table per family, every entry callable the same way (a recipe too)."""

import numpy as np
import pytest
from fairlearn.metrics import (
    demographic_parity_difference,
    equalized_odds_difference,
    false_negative_rate_difference,
)
from tests.engine import recipes

from reconaudit import schema
from reconaudit.metrics import registry


def _compute_family(y, pred, score, groups) -> dict[str, float]:
    """What a caller does with the registry: every fairness metric, without naming one."""
    out = {}
    for name, m in registry.FAIRNESS_METRICS.items():
        arg = score if m.input == "score" else pred
        out[name] = m.fn(y, arg, sensitive_features=groups, min_group_size=1)
    return out


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    groups = rng.choice(["F", "M", "X"], 400)
    score = np.clip(0.3 * y + rng.normal(0.35, 0.2, 400) + 0.1 * (groups == "F"), 0, 1)
    return y, (score > 0.5).astype(int), score, groups


def test_fairness_family_matches_the_schema_and_fairlearn(data):
    y, pred, score, groups = data
    assert set(registry.FAIRNESS_METRICS) == set(schema.CLASSIFICATION_FAIRNESS) - {"worst_group_auroc"}
    assert set(registry.IMAGE_METRICS) == set(schema.QUALITY_METRICS)
    vals = _compute_family(y, pred, score, groups)
    assert vals["equalized_odds_difference"] == pytest.approx(
        equalized_odds_difference(y, pred, sensitive_features=groups), abs=1e-12)
    assert vals["demographic_parity_difference"] == pytest.approx(
        demographic_parity_difference(y, pred, sensitive_features=groups), abs=1e-12)


def test_metric_recipe_one_line_registers_a_new_fairness_metric(data, monkeypatch):
    y, pred, score, groups = data
    fn = recipes.false_negative_rate_difference
    monkeypatch.setitem(registry.FAIRNESS_METRICS, fn.__name__, registry.Metric(fn, "fairness", "prediction"))
    vals = _compute_family(y, pred, score, groups)
    assert vals["false_negative_rate_difference"] == pytest.approx(
        false_negative_rate_difference(y, pred, sensitive_features=groups), abs=1e-12)


def test_segmentation_fairness_family_matches_the_schema_and_its_formulas():
    assert set(registry.SEGMENTATION_FAIRNESS_METRICS) == set(schema.SEGMENTATION_FAIRNESS) - {"worst_group_dice"}
    dice = np.array([0.9, 0.7, 0.8, 0.5, 0.6, 0.4])
    groups = np.array(["F", "F", "F", "M", "M", "M"])  # group means 0.8 and 0.5
    vals = {name: m.fn(dice, sensitive_features=groups, min_group_size=1)
            for name, m in registry.SEGMENTATION_FAIRNESS_METRICS.items()}
    assert vals["dice_gap"] == pytest.approx(0.8 - 0.5)
    assert vals["dice_skewed_error_ratio"] == pytest.approx((1 - 0.5) / (1 - 0.8))
