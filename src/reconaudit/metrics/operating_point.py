r"""Operating-point audit: decisions at the clean model's fixed threshold, per group.

A site deploys the diagnostic model with the threshold :math:`t` chosen on clean validation data.
With reconstructed inputs the scores move, and so do the decisions :math:`\hat y = [s \ge t]`.
Per group :math:`g` (and over all studies):

.. math::
    \mathrm{Se}_g = \frac{\#\{y=1, s \ge t\}_g}{\#\{y=1\}_g}, \quad
    \mathrm{Sp}_g = \frac{\#\{y=0, s < t\}_g}{\#\{y=0\}_g}, \quad
    \mathrm{flip}_g = \frac{\#\{[s^{clean} \ge t] \ne [s^{recon} \ge t]\}_g}{n_g}

on clean (:math:`s^{clean}`) and reconstructed (:math:`s^{recon}`) inputs, the changes
:math:`\Delta\mathrm{Se}_g, \Delta\mathrm{Sp}_g` (recon - clean), and the **restoring threshold**
:math:`t^*_g = \max\{t : \mathrm{Se}^{recon}_g(t) \ge \mathrm{Se}^{clean}_g(t_0)\}`, the threshold a site
would need on reconstructed inputs to keep its clean sensitivity (the :math:`\lceil
\mathrm{Se}^{clean}_g n^+_g\rceil`-th largest reconstructed score of the group's positives).
Intervals: patient-level paired bootstrap (rates as ratios of weighted counts); the restoring
threshold is a point estimate.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ._utils import as_1d, as_binary, check_same_length, group_codes
from .intervals import column_intervals, column_p_values
from .resampling import bootstrap_statistic, patients_per_group

__all__ = ["restoring_threshold", "operating_point_audit", "OPERATING_POINT_QUANTITIES"]

#: Quantities of :func:`operating_point_audit`, in table order.
OPERATING_POINT_QUANTITIES = (
    "sensitivity_clean", "sensitivity_recon", "sensitivity_change",
    "specificity_clean", "specificity_recon", "specificity_change",
    "flip_rate", "flip_to_negative", "flip_to_positive",
)


def restoring_threshold(y_true: object, y_score: object, target_sensitivity: float) -> float:
    r"""The largest threshold :math:`t` with :math:`\mathrm{Se}(t) = \#\{y=1, s \ge t\}/\#\{y=1\} \ge` target.

    NaN without positives or with a NaN target; for a target of 0, just above the largest positive score.
    """
    y = as_binary(y_true, "y_true")
    s = as_1d(y_score, "y_score", np.float64)
    check_same_length(y_true=y, y_score=s)
    pos = np.sort(s[y == 1])[::-1]
    if len(pos) == 0 or not np.isfinite(target_sensitivity):
        return float("nan")
    k = math.ceil(min(max(target_sensitivity, 0.0), 1.0) * len(pos) - 1e-9)
    if k <= 0:
        return float(np.nextafter(pos[0], np.inf))
    return float(pos[k - 1])


def operating_point_audit(
    y_true: object,
    y_score_clean: object,
    y_score: object,
    threshold: float | object,
    *,
    sensitive_features: object,
    patient_ids: object,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    min_group_patients: int = 1,
) -> pd.DataFrame:
    """Per-group sensitivity, specificity and decision flips at a fixed threshold (module docstring).

    ``threshold`` is a scalar or one value per study (the clean-validation threshold of the cell).

    Returns
    -------
    pandas.DataFrame
        One row per group (and ``(all)``) and quantity (:data:`OPERATING_POINT_QUANTITIES` and
        ``restoring_threshold``): ``group, quantity, estimate, ci_low, ci_high, p_value`` (change
        rows), ``n_patients``, ``n_positive``, ``n_negative``, ``estimable``.
    """
    y = as_binary(y_true, "y_true")
    sc = as_1d(y_score_clean, "y_score_clean", np.float64)
    sr = as_1d(y_score, "y_score", np.float64)
    t = np.broadcast_to(np.asarray(threshold, dtype=np.float64), y.shape) if np.ndim(threshold) == 0 \
        else as_1d(threshold, "threshold", np.float64)
    codes, labels = group_codes(sensitive_features)
    pcodes, _ = group_codes(patient_ids, "patient_ids")
    check_same_length(y_true=y, y_score_clean=sc, y_score=sr, threshold=t, sensitive_features=codes,
                      patient_ids=pcodes)
    dc, dr = sc >= t, sr >= t
    pos, neg = y == 1, y == 0
    g = len(labels)
    npat = patients_per_group(codes, pcodes, g)
    ok = np.append(npat >= max(min_group_patients, 1), True)
    # indicator columns per group: pos&dc, pos&dr, pos, neg&!dc, neg&!dr, neg, flip, flip-, flip+, 1
    base = np.stack([pos & dc, pos & dr, pos, neg & ~dc, neg & ~dr, neg, dc != dr, dc & ~dr, ~dc & dr,
                     np.ones_like(pos)], axis=1).astype(np.float64)
    gmask = [codes == k for k in range(g)] + [np.ones(len(y), bool)]
    design = np.concatenate([base * m[:, None] for m in gmask], axis=1)  # (n, 10 (G+1))

    def stat(w: np.ndarray) -> np.ndarray:
        c = (w @ design).reshape(len(w), g + 1, 10)
        with np.errstate(invalid="ignore", divide="ignore"):
            se_c, se_r = c[..., 0] / c[..., 2], c[..., 1] / c[..., 2]
            sp_c, sp_r = c[..., 3] / c[..., 5], c[..., 4] / c[..., 5]
            fl, fn, fp = c[..., 6] / c[..., 9], c[..., 7] / c[..., 9], c[..., 8] / c[..., 9]
        out = np.stack([se_c, se_r, se_r - se_c, sp_c, sp_r, sp_r - sp_c, fl, fn, fp], axis=2)
        out[:, ~ok] = np.nan
        return out.reshape(len(w), -1)

    point, dist = bootstrap_statistic(stat, pcodes, n_resamples=n_resamples, seed=seed)
    lo, hi = column_intervals(dist, confidence)
    pv = column_p_values(dist)
    names = [*map(str, labels.tolist()), "(all)"]
    q = OPERATING_POINT_QUANTITIES
    rows = []
    for k, grp in enumerate(names):
        sel = gmask[k]
        for j, name in enumerate(q):
            i = k * len(q) + j
            rows.append({"group": grp, "quantity": name, "estimate": point[i], "ci_low": lo[i], "ci_high": hi[i],
                         "p_value": pv[i] if name.endswith("_change") else np.nan})
        thr = float(np.median(t[sel])) if sel.any() else np.nan
        target = point[k * len(q)]
        rt = restoring_threshold(y[sel], sr[sel], target) if ok[k] and sel.any() else np.nan
        rows.append({"group": grp, "quantity": "restoring_threshold", "estimate": rt, "ci_low": np.nan,
                     "ci_high": np.nan, "p_value": np.nan, "clean_threshold": thr})
    out = pd.DataFrame(rows)
    npos = np.append(np.bincount(codes, weights=pos, minlength=g), pos.sum())
    nneg = np.append(np.bincount(codes, weights=neg, minlength=g), neg.sum())
    info = pd.DataFrame({"group": names, "n_patients": np.append(npat, len(np.unique(pcodes))).astype(int),
                         "n_positive": npos.astype(int), "n_negative": nneg.astype(int), "estimable": ok})
    return out.merge(info, on="group", how="left")
