"""The records table's contract, defined once: key columns, column prefixes, metric families.

The engine writes ``records.parquet`` (one row per test study × cell) and the report reads it;
both take the names below from here, and this module imports nothing, so a user's own analysis
can too.

Columns of a record
-------------------
- :data:`CELL_KEYS`: which cell of the grid the row belongs to
  (cohort × degradation × level × reconstructor × mitigation × seed, and the arm),
- :data:`STUDY_KEYS`: which study (``study_index`` is its row in the cohort's table),
- per-name columns ``<prefix><name>`` with the prefixes of :data:`COLUMN_PREFIXES`: ``group:sex``
  (a group attribute's value), ``target:effusion`` (1 / 0 / NaN), ``clean_score:effusion`` (the
  diagnostic model's probability on the clean image), ``score:effusion`` (on the reconstruction),
  ``threshold:effusion`` (the operating point, chosen on clean validation data),
  ``sample_score:effusion`` (per-sample scores of a stochastic reconstructor),
- image quality :data:`QUALITY_METRICS` (and ``input_`` + each, for the degraded input), and for
  segmentation ``dice``, ``hd95``, ``clean_dice``, ``clean_hd95``.
"""

from __future__ import annotations

CELL_KEYS: tuple[str, ...] = (
    "cell_id", "cohort", "task", "degradation", "level", "reconstructor", "arm", "mitigation",
    "mitigation_strength", "seed",
)
"""The columns that identify a cell; every row of one cell has the same values."""

STUDY_KEYS: tuple[str, ...] = ("study_id", "patient_id", "study_index")
"""The columns that identify the study of a row (the bootstrap resamples ``patient_id``)."""

RECORD_KEYS: tuple[str, ...] = CELL_KEYS + STUDY_KEYS
"""The key columns of a record, first in the table in this order."""

CONFIG_KEYS: tuple[str, ...] = tuple(c for c in CELL_KEYS if c not in ("cell_id", "seed"))
"""A cell's settings without the training seed: the configurations that seeds repeat."""

GROUP = "group:"
TARGET = "target:"
CLEAN_SCORE = "clean_score:"
SCORE = "score:"
THRESHOLD = "threshold:"
SAMPLE_SCORE = "sample_score:"
REG_TARGET = "reg_target:"
PRED = "pred:"
CLEAN_PRED = "clean_pred:"
COLUMN_PREFIXES: tuple[str, ...] = (GROUP, TARGET, CLEAN_SCORE, SCORE, THRESHOLD, SAMPLE_SCORE, REG_TARGET,
                                    CLEAN_PRED, PRED)
"""Prefixes of the per-name columns, in their order in the table (after :data:`RECORD_KEYS`).
``reg_target:<name>`` is a regression task's true value, ``clean_pred:<name>`` / ``pred:<name>``
the regressor's prediction on the clean image / on the processed input."""

ISOLINE_DICE = "isoline_dice:"
ISOLINE_VOLUME_ERROR = "isoline_volume_error:"
"""Isoline scores (``<prefix><isoline>``, and ``clean_<prefix><isoline>`` for the clean model on clean
images): Dice and relative volume error of the segmentation against the concentration region c > isoline."""

REGRESSION_METRICS: tuple[str, ...] = ("mae", "rmse", "r2")
REGRESSION_FAIRNESS: tuple[str, ...] = ("mae_gap", "worst_group_mae")


def isoline_name(value: float) -> str:
    """The column suffix of an isoline, ``0.01`` -> ``"0.01"`` (shortest round-trip text)."""
    return f"{float(value):g}"

QUALITY_METRICS: tuple[str, ...] = ("psnr", "ssim", "nmse")
"""Image-quality columns of a record (each also as ``input_<name>`` for the degraded input)."""

COUNT_METRICS: tuple[str, ...] = (
    "equalized_odds_difference", "equal_opportunity_difference", "demographic_parity_difference",
    "skewed_error_ratio",
)
"""Fairness metrics that follow from per-group confusion counts (TP, FP, TN, FN) at the threshold."""

CLASSIFICATION_FAIRNESS: tuple[str, ...] = COUNT_METRICS + ("auroc_gap", "worst_group_auroc")
SEGMENTATION_FAIRNESS: tuple[str, ...] = ("dice_gap", "worst_group_dice", "dice_skewed_error_ratio")
FAIRNESS_METRICS: tuple[str, ...] = CLASSIFICATION_FAIRNESS + SEGMENTATION_FAIRNESS
GAP_METRICS: frozenset[str] = frozenset(FAIRNESS_METRICS) - {"worst_group_auroc", "worst_group_dice"}
"""Fairness metrics where a larger value means more disparity (the others: worst-group performance)."""


def column(prefix: str, name: str) -> str:
    """The per-name column ``prefix + name``, e.g. ``column(SCORE, "effusion") == "score:effusion"``."""
    if prefix not in COLUMN_PREFIXES:
        raise ValueError(f"unknown column prefix {prefix!r}; allowed: {', '.join(COLUMN_PREFIXES)}")
    return prefix + name


def names(columns, prefix: str) -> list[str]:
    """The names after ``prefix`` of the ``columns`` that carry it, in column order."""
    return [c[len(prefix):] for c in columns if c.startswith(prefix)]
