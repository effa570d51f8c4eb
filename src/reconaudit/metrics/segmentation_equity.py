r"""Equity-scaled and worst-case segmentation metrics (per-study values such as Dice).

- **Equity-scaled Dice** (FairMedFM): :math:`\mathrm{ES} = \bar D / (1 + \operatorname{sd}_g(\bar D_g))`,
  the mean Dice over all studies divided by one plus the (population, ddof = 0) standard deviation of
  the group means :math:`\bar D_g`.  Equal group means give :math:`\mathrm{ES} = \bar D`.
- **Worst-case**: the worst group mean :math:`\min_g \bar D_g`, and the worst group's lower tail,
  :math:`\min_g Q_q(D_g)` with :math:`Q_q` the weighted :math:`q`-quantile (default 10 %) of the group's
  studies (for a higher-is-better value; ``higher_is_better=False`` takes maxima and the upper tail,
  e.g. for HD95).

:func:`segmentation_equity` gives each on clean and reconstructed inputs with its change and
patient-level paired bootstrap intervals.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._utils import as_1d, check_same_length, group_codes
from .intervals import column_intervals, column_p_values
from .resampling import bootstrap_statistic, patients_per_group

__all__ = ["equity_scaled", "segmentation_equity", "SEGMENTATION_EQUITY_METRICS"]

SEGMENTATION_EQUITY_METRICS = ("mean", "equity_scaled", "worst_group_mean", "worst_group_tail")


def _group_means(v: np.ndarray, onehot: np.ndarray, w: np.ndarray, ok: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        m = (w @ (onehot * v[:, None])) / (w @ onehot)
    m[:, ~ok] = np.nan
    return m


def equity_scaled(values: object, *, sensitive_features: object, weights: object | None = None) -> float | np.ndarray:
    """Equity-scaled mean: mean / (1 + sd of the group means) (module docstring); ``(B,)`` for ``(B, n)`` weights."""
    v = as_1d(values, "values", np.float64)
    codes, labels = group_codes(sensitive_features)
    check_same_length(values=v, sensitive_features=codes)
    onehot = np.eye(len(labels))[codes]
    w = np.ones((1, len(v))) if weights is None else np.atleast_2d(np.asarray(weights, dtype=np.float64))
    gm = _group_means(v, onehot, w, np.ones(len(labels), bool))
    es = (w @ v) / w.sum(1) / (1 + np.nanstd(gm, axis=1))
    return float(es[0]) if weights is None else es


def _weighted_quantile(v: np.ndarray, w: np.ndarray, q: float) -> np.ndarray:
    """Weighted lower ``q``-quantile of ``v`` for each row of ``w``: min{x : F_w(x) >= q}."""
    order = np.argsort(v, kind="stable")
    vs, ws = v[order], w[:, order]
    cw = np.cumsum(ws, axis=1)
    tot = cw[:, -1:]
    with np.errstate(invalid="ignore"):
        idx = (cw < q * tot - 1e-12).sum(axis=1)
    out = vs[np.minimum(idx, len(vs) - 1)]
    return np.where(tot[:, 0] > 0, out, np.nan)


def segmentation_equity(
    values: object,
    *,
    sensitive_features: object,
    patient_ids: object,
    values_clean: object | None = None,
    higher_is_better: bool = True,
    tail: float = 0.1,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    min_group_patients: int = 1,
) -> pd.DataFrame:
    """Mean, equity-scaled mean, worst group mean and worst group tail, with intervals.

    Returns
    -------
    pandas.DataFrame
        ``metric`` (:data:`SEGMENTATION_EQUITY_METRICS`), ``arm`` (clean/recon/change), ``estimate``,
        ``ci_low``, ``ci_high``, ``p_value`` (change rows), ``worst_group`` (point estimate's group),
        ``groups_estimable``.
    """
    arms = {"recon": as_1d(values, "values", np.float64)}
    if values_clean is not None:
        arms = {"clean": as_1d(values_clean, "values_clean", np.float64), **arms}
    for k, v in arms.items():
        if np.isnan(v).any():
            raise ValueError(f"{'values' if k == 'recon' else 'values_clean'}: contains NaN; drop those studies")
    codes, labels = group_codes(sensitive_features)
    pcodes, _ = group_codes(patient_ids, "patient_ids")
    check_same_length(sensitive_features=codes, patient_ids=pcodes, **arms)
    g = len(labels)
    ok = patients_per_group(codes, pcodes, g) >= max(min_group_patients, 1)
    onehot = np.eye(g)[codes]
    sign = 1.0 if higher_is_better else -1.0
    q = tail if higher_is_better else 1 - tail

    def stat(w: np.ndarray) -> np.ndarray:
        cols = []
        for v in arms.values():
            gm = _group_means(v, onehot, w, ok)
            mean = (w @ v) / w.sum(1)
            with np.errstate(invalid="ignore"):
                sd = np.nanstd(gm, axis=1) if ok.any() else np.full(len(w), np.nan)
            tails = np.stack([_weighted_quantile(v, w * (codes == k), q) if ok[k] else np.full(len(w), np.nan)
                              for k in range(g)], axis=1)
            worst = (lambda a: np.nanmin(a, axis=1)) if higher_is_better else (lambda a: np.nanmax(a, axis=1))
            with np.errstate(invalid="ignore"):
                cols += [mean, mean / (1 + sd) if higher_is_better else mean * (1 + sd), worst(gm), worst(tails)]
        return np.stack(cols, axis=1)

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: no estimable group
        point, dist = bootstrap_statistic(stat, pcodes, n_resamples=n_resamples, seed=seed)
        gm_point = {a: _group_means(v, onehot, np.ones((1, len(v))), ok)[0] for a, v in arms.items()}
    m = SEGMENTATION_EQUITY_METRICS
    rows = pd.DataFrame([(mm, arm) for arm in arms for mm in m], columns=["metric", "arm"])
    rows["estimate"] = point
    rows["ci_low"], rows["ci_high"] = column_intervals(dist, confidence)
    rows["p_value"] = np.nan
    if "clean" in arms:
        k = len(m)
        dch = dist[:, k:] - dist[:, :k]
        lo, hi = column_intervals(dch, confidence)
        ch = pd.DataFrame({"metric": list(m), "arm": "change", "estimate": point[k:] - point[:k], "ci_low": lo,
                           "ci_high": hi, "p_value": column_p_values(dch)})
        rows = pd.concat([rows, ch], ignore_index=True)

    def worst_name(arm: str) -> str:
        if arm not in gm_point or not ok.any():
            return ""
        gm = np.where(ok, sign * gm_point[arm], np.inf)
        return str(labels[int(np.argmin(gm))])

    rows["worst_group"] = rows["arm"].map(worst_name)
    rows["groups_estimable"] = int(ok.sum())
    return rows
