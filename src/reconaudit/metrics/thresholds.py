"""Operating thresholds: the package's one operating-point function (:func:`choose_threshold`).

The engine chooses each label's threshold on clean validation data and fixes it; the report's
``definitions: study`` re-chooses it on each arm's test scores.  Both call this module.

A study is called positive for a label when its score is **greater than or equal to** the label's
threshold (:func:`apply_thresholds`), the convention of :func:`sklearn.metrics.roc_curve`.  Every
candidate threshold is one of the validation scores (a vertex of the empirical ROC curve), so the
chosen operating point reproduces exactly on the validation data.

Policies
--------
``"sens_eq_spec"``
    The ROC point where sensitivity equals specificity, as in the MIDL 2026 study:
    :math:`t^* = \\arg\\min_t |\\mathrm{TPR}(t) - (1 - \\mathrm{FPR}(t))|`.  The empirical ROC curve
    is a step function, so exact equality is rare; ties in :math:`|\\mathrm{TPR} - \\mathrm{TNR}|`
    are broken by the larger balanced accuracy :math:`(\\mathrm{TPR} + \\mathrm{TNR}) / 2`, then by
    the higher threshold (fewer positive calls).
``"youden"``
    Youden's index :math:`J(t) = \\mathrm{TPR}(t) - \\mathrm{FPR}(t)`, maximised; ties go to the
    higher threshold.
``"target_sensitivity"``
    The highest threshold whose sensitivity reaches the target:
    :math:`t^* = \\max\\{t : \\mathrm{TPR}(t) \\ge \\tau\\}`, which gives the best specificity
    at that sensitivity.

The artificial ROC point sklearn adds at threshold :math:`+\\infty` (nothing called positive) is
never chosen.  Rows whose target is NaN (a missing label) are ignored.  A label with only one class
among its observed rows has no ROC curve: it gets threshold 0.5 (:data:`FALLBACK_THRESHOLD`) and a
logged warning naming the label, never an error, so one rare label cannot stop an audit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
from sklearn.metrics import roc_curve

logger = logging.getLogger(__name__)

ThresholdPolicy = Literal["sens_eq_spec", "youden", "target_sensitivity"]
THRESHOLD_POLICIES: tuple[str, ...] = ("sens_eq_spec", "youden", "target_sensitivity")
FALLBACK_THRESHOLD = 0.5


def _check_policy(policy: str, target: float | None) -> None:
    if policy not in THRESHOLD_POLICIES:
        raise ValueError(f"threshold policy must be one of {THRESHOLD_POLICIES}, got {policy!r}")
    if policy == "target_sensitivity":
        if target is None:
            raise ValueError(
                "threshold policy 'target_sensitivity' needs target= (the sensitivity to reach, in (0, 1])"
            )
        if not (0.0 < float(target) <= 1.0):
            raise ValueError(f"target sensitivity must lie in (0, 1], got {target!r}")


def choose_threshold(
    y_true: np.ndarray | Sequence[float],
    y_score: np.ndarray | Sequence[float],
    policy: str = "sens_eq_spec",
    target: float | None = None,
    *,
    label: str | None = None,
) -> float:
    """Choose one label's operating threshold from validation targets and scores.

    Parameters
    ----------
    y_true:
        Binary targets (1, 0, or NaN for missing), shape (N,).  NaN rows are ignored.
    y_score:
        Scores (e.g. probabilities), shape (N,); higher means more likely positive.
    policy:
        ``"sens_eq_spec"``, ``"youden"`` or ``"target_sensitivity"`` (see the module docstring).
    target:
        The sensitivity to reach for ``"target_sensitivity"`` (in (0, 1]); unused otherwise.
    label:
        Name used in warnings and errors.

    Returns
    -------
    float
        The threshold :math:`t`; a study is positive when ``score >= t``.  0.5 when the observed
        targets hold a single class (with a logged warning).

    Notes
    -----
    The ROC curve comes from :func:`sklearn.metrics.roc_curve` with ``drop_intermediate=False``, so
    every distinct score is a candidate.  With :math:`\\mathrm{TPR}(t) = P(s \\ge t \\mid y=1)` and
    :math:`\\mathrm{FPR}(t) = P(s \\ge t \\mid y=0)`:

    - sens_eq_spec: :math:`\\arg\\min_t |\\mathrm{TPR}(t) + \\mathrm{FPR}(t) - 1|`, ties to the larger
      :math:`\\mathrm{TPR} - \\mathrm{FPR}`, then to the higher :math:`t`;
    - youden: :math:`\\arg\\max_t \\mathrm{TPR}(t) - \\mathrm{FPR}(t)`, ties to the higher :math:`t`;
    - target_sensitivity: :math:`\\max\\{t : \\mathrm{TPR}(t) \\ge \\tau\\}`.
    """
    _check_policy(policy, target)
    name = "label" if label is None else f"label {label!r}"
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    s = np.asarray(y_score, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"{name}: y_true has {y.size} rows but y_score has {s.size}")
    keep = ~np.isnan(y)
    y, s = y[keep], s[keep]
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{name}: y_score holds NaN or infinite values where the target is observed")
    bad = (y != 0) & (y != 1)
    if bad.any():
        raise ValueError(f"{name}: targets must be 0, 1 or NaN, got {y[bad][0]!r}")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        logger.warning(
            "%s: validation targets hold a single class (%d observed, %d positive); threshold set to %.1f",
            name,
            y.size,
            n_pos,
            FALLBACK_THRESHOLD,
        )
        return FALLBACK_THRESHOLD

    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    finite = np.isfinite(thr)  # drop sklearn's artificial first point at +inf
    fpr, tpr, thr = fpr[finite], tpr[finite], thr[finite]
    # thresholds are strictly decreasing: index order == descending threshold, so np.lexsort's
    # "last key is primary" with the index as a final tie-break picks the highest threshold.
    idx = np.arange(thr.size)
    if policy == "sens_eq_spec":
        gap = np.abs(tpr - (1.0 - fpr))
        j = tpr - fpr
        # primary: smallest gap; then largest J; then smallest index (highest threshold)
        order = np.lexsort((idx, -np.round(j, 12), np.round(gap, 12)))
        best = int(order[0])
    elif policy == "youden":
        j = np.round(tpr - fpr, 12)
        best = int(np.flatnonzero(j == j.max())[0])
    else:
        ok = np.flatnonzero(tpr >= float(target) - 1e-12)  # tpr is non-decreasing along idx
        best = int(ok[0])
    return float(thr[best])


def choose_thresholds(
    Y: np.ndarray,
    S: np.ndarray,
    policy: str = "sens_eq_spec",
    target: float | None = None,
    *,
    labels: Sequence[str] | None = None,
) -> np.ndarray:
    """Choose one threshold per label with :func:`choose_threshold`.

    Parameters
    ----------
    Y:
        Targets (N, L), 1/0/NaN.
    S:
        Scores (N, L).
    policy, target:
        As in :func:`choose_threshold`.
    labels:
        Optional label names (length L) for warnings.

    Returns
    -------
    numpy.ndarray
        Thresholds, float64 (L,).
    """
    _check_policy(policy, target)
    Y = np.asarray(Y, dtype=np.float64)
    S = np.asarray(S, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    if S.ndim == 1:
        S = S[:, None]
    if Y.shape != S.shape or Y.ndim != 2:
        raise ValueError(f"Y and S must both be (N, L) with the same shape, got {Y.shape} and {S.shape}")
    if labels is not None and len(labels) != Y.shape[1]:
        raise ValueError(f"labels: expected {Y.shape[1]} names, got {len(labels)}")
    names = list(labels) if labels is not None else [str(i) for i in range(Y.shape[1])]
    return np.array(
        [choose_threshold(Y[:, k], S[:, k], policy, target, label=names[k]) for k in range(Y.shape[1])],
        dtype=np.float64,
    )


def apply_thresholds(S: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Binary calls ``S >= thresholds`` (broadcast over the last axis), as bool.

    Parameters
    ----------
    S:
        Scores (N, L) (or any shape whose last axis matches ``thresholds``).
    thresholds:
        One threshold per label (L,).
    """
    S = np.asarray(S)
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim != 1 or (S.ndim and S.shape[-1] != t.size and t.size != 1):
        raise ValueError(f"thresholds of shape {t.shape} do not match scores of shape {S.shape}")
    return S >= t
