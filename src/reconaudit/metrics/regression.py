r"""Regression metrics (continuous phenotypes) and their group gaps, as functions of study weights.

For targets :math:`y_i`, predictions :math:`\hat y_i` and study weights :math:`w_i` (1 for the point
estimate, patient-level resampling counts in a bootstrap resample):

.. math::

    \mathrm{MAE} = \frac{\sum_i w_i |\hat y_i - y_i|}{\sum_i w_i}, \qquad
    \mathrm{RMSE} = \sqrt{\frac{\sum_i w_i (\hat y_i - y_i)^2}{\sum_i w_i}}, \qquad
    R^2 = 1 - \frac{\sum_i w_i (\hat y_i - y_i)^2}{\sum_i w_i (y_i - \bar y_w)^2},

with :math:`\bar y_w` the weighted mean (scikit-learn's ``mean_absolute_error``,
``root_mean_squared_error`` and ``r2_score`` with ``sample_weight``).  Per group :math:`g` of an
attribute, :math:`\mathrm{MAE}_g` over the group's studies; the **MAE gap** is
:math:`\max_g \mathrm{MAE}_g - \min_g \mathrm{MAE}_g` and the **worst-group MAE** :math:`\max_g
\mathrm{MAE}_g`.  :func:`regression_summary` gives every metric on clean and processed inputs and
their change (processed - clean), with patient-level bootstrap percentile intervals from
:func:`reconaudit.metrics.resampling.bootstrap_statistic` (the project's one resampling of patients,
:func:`reconaudit.metrics.resampling.iter_bootstrap_weights`; the same weights for both arms: paired).
Studies with a NaN target or prediction are left out.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd

from ._utils import group_codes
from .intervals import column_intervals, column_p_values
from .resampling import bootstrap_statistic

__all__ = ["group_mae", "mae", "r2", "regression_summary", "rmse", "weighted_regression_metrics"]


def _w(weights, n: int) -> np.ndarray:
    return np.ones((1, n)) if weights is None else np.atleast_2d(np.asarray(weights, dtype=np.float64))


def weighted_regression_metrics(y_true, y_pred, weights=None) -> dict[str, np.ndarray]:
    """``mae``, ``rmse``, ``r2`` for each row of ``weights`` ``(B, n)`` (one row of ones by default): ``(B,)`` each."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D of the same length, got {y.shape} and {p.shape}")
    w = _w(weights, len(y))
    ok = np.isfinite(y) & np.isfinite(p)
    w = w * ok
    y, p = np.where(ok, y, 0.0), np.where(ok, p, 0.0)
    sw = w.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mae_ = (w @ np.abs(p - y)) / sw
        mse = (w @ (p - y) ** 2) / sw
        ybar = (w @ y) / sw
        ss_tot = (w * (y[None] - ybar[:, None]) ** 2).sum(1)
        r2_ = np.where(ss_tot > 0, 1 - mse * sw / np.where(ss_tot > 0, ss_tot, 1.0), np.nan)
    return {"mae": np.where(sw > 0, mae_, np.nan), "rmse": np.where(sw > 0, np.sqrt(mse), np.nan),
            "r2": np.where(sw > 0, r2_, np.nan)}


def mae(y_true, y_pred) -> float:
    """Mean absolute error :math:`\\frac1n \\sum_i |\\hat y_i - y_i|` (NaN pairs left out)."""
    return float(weighted_regression_metrics(y_true, y_pred)["mae"][0])


def rmse(y_true, y_pred) -> float:
    """Root mean squared error :math:`\\sqrt{\\frac1n \\sum_i (\\hat y_i - y_i)^2}` (NaN pairs left out)."""
    return float(weighted_regression_metrics(y_true, y_pred)["rmse"][0])


def r2(y_true, y_pred) -> float:
    """Coefficient of determination :math:`1 - SS_{res}/SS_{tot}` (NaN pairs left out; NaN for constant targets)."""
    return float(weighted_regression_metrics(y_true, y_pred)["r2"][0])


def group_mae(y_true, y_pred, *, sensitive_features, weights=None, min_group_size: int = 1) -> dict[str, np.ndarray]:
    """Per-group MAE ``(B, G)``, the MAE gap ``(B,)`` (max - min over groups) and the worst-group MAE (max).

    A group with fewer than ``min_group_size`` studies (with a finite pair) is NaN and left out of the gap.
    Returns ``{"groups": names, "group_mae": (B, G), "mae_gap": (B,), "worst_group_mae": (B,)}``.
    """
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    codes, names = group_codes(sensitive_features, "sensitive_features")
    w = _w(weights, len(y))
    ok = np.isfinite(y) & np.isfinite(p)
    err = np.where(ok, np.abs(p - y), 0.0)
    onehot = (codes[:, None] == np.arange(len(names))[None]) & ok[:, None]
    num = w @ (onehot * err[:, None])
    den = w @ onehot
    size = onehot.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        g = np.where((den > 0) & (size >= min_group_size)[None], num / np.where(den > 0, den, 1.0), np.nan)
    defined = np.isfinite(g).sum(1) >= 2
    with warnings.catch_warnings():  # an all-NaN row (no group defined) gives NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        gmax, gmin = np.nanmax(g, 1), np.nanmin(g, 1)
    gap = np.where(defined, gmax - gmin, np.nan)
    worst = gmax
    return {"groups": [str(n) for n in names], "group_mae": g, "mae_gap": gap, "worst_group_mae": worst}


def regression_summary(
    y_true, y_pred, y_pred_clean=None, *, patient_ids, sensitive_features: Mapping[str, object] | None = None,
    n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95, min_group_size: int = 1,
) -> pd.DataFrame:
    """MAE, RMSE, R² and, per attribute, the MAE gap and worst-group MAE on the processed inputs
    (``recon``), on clean inputs (``clean``, when ``y_pred_clean`` is given) and their ``change``, with
    patient-level paired bootstrap percentile intervals and two-sided bootstrap p-values of the change.

    Returns one row per (metric, attribute, arm): ``metric``, ``attribute`` (``"all"`` for the overall
    metrics), ``arm``, ``estimate``, ``ci_low``, ``ci_high``, ``p_value`` (change rows), ``groups``
    (per-group MAE point estimates of the arm, as text, for gap rows).
    """
    y = np.asarray(y_true, dtype=np.float64)
    arms = {"recon": np.asarray(y_pred, dtype=np.float64)}
    if y_pred_clean is not None:
        arms["clean"] = np.asarray(y_pred_clean, dtype=np.float64)
    attrs = dict(sensitive_features or {})
    keys: list[tuple[str, str, str]] = []
    for arm in arms:
        keys += [(m, "all", arm) for m in ("mae", "rmse", "r2")]
        for a in attrs:
            keys += [("mae_gap", a, arm), ("worst_group_mae", a, arm)]

    def stat(w: np.ndarray) -> np.ndarray:
        cols = []
        for p in arms.values():
            m = weighted_regression_metrics(y, p, w)
            cols += [m["mae"], m["rmse"], m["r2"]]
            for g in attrs.values():
                gm = group_mae(y, p, sensitive_features=g, weights=w, min_group_size=min_group_size)
                cols += [gm["mae_gap"], gm["worst_group_mae"]]
        out = np.stack(cols, 1)
        if "clean" in arms:
            half = out.shape[1] // 2
            out = np.concatenate([out, out[:, :half] - out[:, half:]], 1)
        return out

    point, dist = bootstrap_statistic(stat, np.asarray(patient_ids).astype(str), n_resamples=n_resamples, seed=seed)
    lo, hi = column_intervals(dist, confidence)
    if "clean" in arms:
        keys += [(m, a, "change") for m, a, _ in keys[: len(keys) // 2]]
    pvals = column_p_values(dist)
    groups_text = {}
    for arm, p in arms.items():
        for a, g in attrs.items():
            gm = group_mae(y, p, sensitive_features=g, min_group_size=min_group_size)
            groups_text[(a, arm)] = ", ".join(f"{n}: {v:.3g}" for n, v in zip(gm["groups"], gm["group_mae"][0]))
    rows = []
    for k, (m, a, arm) in enumerate(keys):
        rows.append({"metric": m, "attribute": a, "arm": arm, "estimate": point[k], "ci_low": lo[k], "ci_high": hi[k],
                     "p_value": pvals[k] if arm == "change" else np.nan,
                     "groups": groups_text.get((a, arm), "") if m == "mae_gap" else ""})
    return pd.DataFrame(rows)
