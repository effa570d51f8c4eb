"""The metrics by family, registered as every other room registers its kinds: ``{name: entry}``.

A family says what a metric takes, so a caller (the report's analysis, a user's script) can
compute every registered metric of a family without naming it:

- ``image``: ``fn(x, y, *, mask=None) -> (N,)`` per study, reconstruction ``x`` against clean ``y``;
- ``task``: ``fn(y_true, y_score)`` (classification) or ``fn(pred_mask, true_mask)`` (segmentation);
- ``fairness``: ``fn(y_true, arg, *, sensitive_features, min_group_size)`` where ``arg`` is the
  thresholded prediction (``input="prediction"``) or the score (``input="score"``);
- ``segmentation_fairness``: ``fn(dice, *, sensitive_features, min_group_size)`` over per-study Dice
  (``input="dice"``);
- ``regression``: ``fn(y_true, y_pred) -> float`` over continuous targets (``input="value"``); their
  group gaps come from :func:`reconaudit.metrics.regression.group_mae`.

To add a metric: write the function (one module of ``metrics/``, docstring with its formula) and
add one line to the family's table below.  The names of the fairness family are the records
schema's :data:`reconaudit.schema.CLASSIFICATION_FAIRNESS` minus the worst-group summaries, those of
the segmentation family its :data:`~reconaudit.schema.SEGMENTATION_FAIRNESS` minus ``worst_group_dice``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .fairness import (
    auroc_gap,
    demographic_parity_difference,
    dice_gap,
    dice_skewed_error_ratio,
    equal_opportunity_difference,
    equalized_odds_difference,
    skewed_error_ratio,
)
from .image import nmse, psnr, ssim
from .regression import mae, r2, rmse
from .task import auroc, dice


@dataclass(frozen=True)
class Metric:
    """A registered metric: its function, family and (fairness) which input it takes."""

    fn: Callable
    family: Literal["image", "task", "fairness", "segmentation_fairness", "regression"]
    input: Literal["prediction", "score", "image", "mask", "dice", "value"] = "prediction"

    @property
    def name(self) -> str:
        """The metric's name: its function's name."""
        return self.fn.__name__


def _table(*entries: Metric) -> dict[str, Metric]:
    return {m.name: m for m in entries}


IMAGE_METRICS = _table(
    Metric(psnr, "image", "image"),
    Metric(ssim, "image", "image"),
    Metric(nmse, "image", "image"),
)
TASK_METRICS = _table(
    Metric(auroc, "task", "score"),
    Metric(dice, "task", "mask"),
)
FAIRNESS_METRICS = _table(
    Metric(equalized_odds_difference, "fairness", "prediction"),
    Metric(equal_opportunity_difference, "fairness", "prediction"),
    Metric(demographic_parity_difference, "fairness", "prediction"),
    Metric(skewed_error_ratio, "fairness", "prediction"),
    Metric(auroc_gap, "fairness", "score"),
)
SEGMENTATION_FAIRNESS_METRICS = _table(
    Metric(dice_gap, "segmentation_fairness", "dice"),
    Metric(dice_skewed_error_ratio, "segmentation_fairness", "dice"),
)
REGRESSION_METRICS = _table(
    Metric(mae, "regression", "value"),
    Metric(rmse, "regression", "value"),
    Metric(r2, "regression", "value"),
)
METRICS: dict[str, Metric] = {**IMAGE_METRICS, **TASK_METRICS, **FAIRNESS_METRICS, **SEGMENTATION_FAIRNESS_METRICS,
                              **REGRESSION_METRICS}
"""Every registered metric by name."""
