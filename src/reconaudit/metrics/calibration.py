r"""Calibration of predicted probabilities, per group, on clean and on reconstructed inputs.

Reconstruction can leave AUROC intact and still shift the scores, which moves every decision at a
fixed threshold; calibration measures that shift directly.

- **Expected calibration error** over bins :math:`B_1..B_M` of the predicted probability:

  .. math:: \mathrm{ECE} = \sum_{m=1}^{M} \frac{|B_m|}{n}\,\Big|\bar y_{B_m} - \bar p_{B_m}\Big|
            = \frac{1}{\sum_i w_i}\sum_m \Big|\sum_{i \in B_m} w_i (y_i - p_i)\Big|

  ``strategy="uniform"``: equal-width bins :math:`[\frac{m-1}{M}, \frac{m}{M})` (the last bin closed);
  ``strategy="quantile"``: equal-mass bins with edges at the :math:`\frac{m}{M}` quantiles of the
  scores (ties can merge bins; per group, the group's own quantiles).  Under resampling the bin
  edges stay those of the full sample.
- **Calibration slope and intercept** (logistic recalibration, Cox 1958): the maximum-likelihood fit
  of :math:`\operatorname{logit} P(y = 1) = a + b \operatorname{logit}(p)`; a calibrated score has
  :math:`a = 0, b = 1`; :math:`b < 1` means over-confident scores.  Scores are clipped to
  :math:`[10^{-6}, 1 - 10^{-6}]` before the logit; the fit is Newton-Raphson on the weighted
  log-likelihood, batched over resamples (NaN when it does not converge, e.g. separable data).
- **ECE gap** of an attribute: :math:`\max_g \mathrm{ECE}_g - \min_g \mathrm{ECE}_g`, and its
  change with reconstruction :math:`\Delta = \text{gap}_{recon} - \text{gap}_{clean}`.

Intervals are patient-level paired bootstrap intervals (the weights of
:func:`reconaudit.metrics.resampling.iter_bootstrap_weights`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import expit

from ._utils import as_1d, as_binary, check_same_length, group_codes
from .intervals import column_intervals, column_p_values
from .resampling import bootstrap_statistic, patients_per_group

__all__ = [
    "calibration_bins",
    "expected_calibration_error",
    "calibration_slope_intercept",
    "reliability_curve",
    "calibration_by_group",
]

_EPS = 1e-6


def _prob(y_prob: object, name: str = "y_prob") -> np.ndarray:
    p = as_1d(y_prob, name, np.float64)
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        i = int(np.flatnonzero(np.isnan(p) | (p < 0) | (p > 1))[0])
        raise ValueError(f"{name}: expected probabilities in [0, 1], got {p[i]!r} at index {i}")
    return p


def calibration_bins(y_prob: object, n_bins: int = 10, strategy: str = "uniform") -> np.ndarray:
    """Bin index ``0..n_bins-1`` of each score (equal-width ``"uniform"`` or equal-mass ``"quantile"`` bins)."""
    p = _prob(y_prob)
    if n_bins < 1:
        raise ValueError(f"n_bins: expected at least 1, got {n_bins}")
    if strategy == "uniform":
        return np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    if strategy == "quantile":
        edges = np.quantile(p, np.linspace(0, 1, n_bins + 1)[1:-1]) if len(p) else np.empty(0)
        return np.searchsorted(edges, p, side="right").astype(np.int64)
    raise ValueError(f"strategy: expected 'uniform' or 'quantile', got {strategy!r}")


def _ece_weighted(y: np.ndarray, p: np.ndarray, bins: np.ndarray, n_bins: int, w: np.ndarray) -> np.ndarray:
    onehot = np.zeros((len(y), n_bins))
    onehot[np.arange(len(y)), bins] = 1.0
    resid = (y - p)[:, None] * onehot
    tot = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, np.abs(w @ resid).sum(axis=1) / tot, np.nan)


def expected_calibration_error(
    y_true: object, y_prob: object, *, n_bins: int = 10, strategy: str = "uniform", weights: object | None = None
) -> float | np.ndarray:
    """Expected calibration error (see the module docstring); ``weights`` ``(B, n)`` give ``(B,)`` values.

    ``strategy="uniform"`` uses equal-width bins, ``"quantile"`` equal-mass bins.
    """
    y = as_binary(y_true, "y_true").astype(np.float64)
    p = _prob(y_prob)
    check_same_length(y_true=y, y_prob=p)
    bins = calibration_bins(p, n_bins, strategy)
    if weights is None:
        return float(_ece_weighted(y, p, bins, n_bins, np.ones((1, len(y))))[0])
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    return _ece_weighted(y, p, bins, n_bins, w)


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, _EPS, 1 - _EPS)
    return np.log(q) - np.log1p(-q)


def _recalibration_fit(y: np.ndarray, x: np.ndarray, w: np.ndarray, max_iter: int = 30,
                       tol: float = 1e-10, start: tuple[float, float] = (0.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Batched Newton-Raphson for ``logit P(y=1) = a + b x`` with study weights ``w`` ``(B, n)``.

    Starts at ``start`` (the identity recalibration by default; the full-sample fit for resamples);
    only the rows not yet converged are iterated; rows that do not converge in ``max_iter`` steps
    (separable or empty data) are NaN.
    """
    b_ = len(w)
    a, b = np.full(b_, float(start[0])), np.full(b_, float(start[1]))
    active = np.flatnonzero(w.sum(axis=1) > 0)
    done = np.zeros(b_, bool)
    x2 = x * x
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for _ in range(max_iter):
            if len(active) == 0:
                break
            wa = w[active]
            mu = expit(a[active, None] + b[active, None] * x[None, :])
            r = wa * (y[None, :] - mu)
            h = wa * mu * (1 - mu)
            g0, g1 = r.sum(1), r @ x
            h00, h01, h11 = h.sum(1), h @ x, h @ x2
            det = h00 * h11 - h01**2
            da = (h11 * g0 - h01 * g1) / det
            db = (h00 * g1 - h01 * g0) / det
            a[active] += da
            b[active] += db
            conv = (np.abs(da) < tol * (1 + np.abs(a[active]))) & (np.abs(db) < tol * (1 + np.abs(b[active])))
            done[active[conv]] = True
            keep = ~conv & np.isfinite(a[active]) & np.isfinite(b[active])
            active = active[keep]
    bad = ~done | ~np.isfinite(a) | ~np.isfinite(b)
    return np.where(bad, np.nan, a), np.where(bad, np.nan, b)


def calibration_slope_intercept(
    y_true: object, y_prob: object, *, weights: object | None = None
) -> tuple[float, float] | tuple[np.ndarray, np.ndarray]:
    """``(intercept, slope)`` of the logistic recalibration fit (see the module docstring).

    Equal to an unpenalised ``sklearn.linear_model.LogisticRegression`` on :math:`\\operatorname{logit}(p)`;
    with ``weights`` ``(B, n)`` one fit per row, returned as two ``(B,)`` arrays.
    """
    y = as_binary(y_true, "y_true").astype(np.float64)
    p = _prob(y_prob)
    check_same_length(y_true=y, y_prob=p)
    x = _logit(p)
    if weights is None:
        a, b = _recalibration_fit(y, x, np.ones((1, len(y))))
        return float(a[0]), float(b[0])
    return _recalibration_fit(y, x, np.atleast_2d(np.asarray(weights, dtype=np.float64)))


def reliability_curve(y_true: object, y_prob: object, *, n_bins: int = 10, strategy: str = "uniform") -> pd.DataFrame:
    """Reliability diagram data: per non-empty bin ``bin, mean_predicted, observed_rate, n``."""
    y = as_binary(y_true, "y_true").astype(np.float64)
    p = _prob(y_prob)
    check_same_length(y_true=y, y_prob=p)
    bins = calibration_bins(p, n_bins, strategy)
    n = np.bincount(bins, minlength=n_bins)
    ok = n > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        mp = np.bincount(bins, weights=p, minlength=n_bins) / n
        ob = np.bincount(bins, weights=y, minlength=n_bins) / n
    return pd.DataFrame({"bin": np.arange(n_bins)[ok], "mean_predicted": mp[ok], "observed_rate": ob[ok],
                         "n": n[ok]})


def calibration_by_group(
    y_true: object,
    y_prob: object,
    *,
    sensitive_features: object,
    patient_ids: object,
    y_prob_clean: object | None = None,
    n_bins: int = 10,
    strategy: str = "uniform",
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    min_group_patients: int = 1,
) -> pd.DataFrame:
    """ECE, calibration slope and intercept per group and overall, and the ECE gap, with intervals.

    ``y_prob`` are the scores on reconstructed inputs (``recon``), ``y_prob_clean`` (optional) on
    clean inputs; with both, ``change`` rows (recon - clean) carry a bootstrap p-value.  A group with
    fewer than ``min_group_patients`` patients is not estimable (NaN, ``estimable = False``).

    Returns
    -------
    pandas.DataFrame
        ``group`` (a group label, ``(all)``, or ``(gap)`` for the ECE gap), ``metric`` (``ece``,
        ``slope``, ``intercept``, ``ece_gap``), ``arm`` (``clean``/``recon``/``change``),
        ``estimate``, ``ci_low``, ``ci_high``, ``p_value``, ``n_patients``, ``estimable``.
    """
    y = as_binary(y_true, "y_true").astype(np.float64)
    arms = {"recon": _prob(y_prob, "y_prob")}
    if y_prob_clean is not None:
        arms = {"clean": _prob(y_prob_clean, "y_prob_clean"), **arms}
    codes, labels = group_codes(sensitive_features)
    pcodes, _ = group_codes(patient_ids, "patient_ids")
    check_same_length(y_true=y, sensitive_features=codes, patient_ids=pcodes, **arms)
    g = len(labels)
    npat = patients_per_group(codes, pcodes, g)
    ok_group = npat >= max(min_group_patients, 1)
    masks = [codes == k for k in range(g)]
    # equal-mass bins are the group's own quantiles (scattered into a full-length array)
    bins = {}
    for arm, p in arms.items():
        for k, m in enumerate([*masks, None]):
            b = np.zeros(len(p), np.int64)
            sel = np.ones(len(p), bool) if m is None else m
            if sel.any():
                b[sel] = calibration_bins(p[sel], n_bins, strategy)
            bins[(arm, k)] = b
    xs = {arm: _logit(p) for arm, p in arms.items()}
    # resample fits start from the full-sample fit: a few Newton steps instead of a dozen
    start = {}
    for arm in arms:
        for k, m in enumerate([*masks, None]):
            wk = np.ones((1, len(y))) if m is None else m[None].astype(np.float64)
            a0, b0 = _recalibration_fit(y, xs[arm], wk)
            start[(arm, k)] = (a0[0], b0[0]) if np.isfinite(a0[0]) and np.isfinite(b0[0]) else (0.0, 1.0)
    names: list[tuple[str, str, str]] = []
    for arm in arms:
        for grp in [*labels.tolist(), "(all)"]:
            names += [(str(grp), "ece", arm), (str(grp), "slope", arm), (str(grp), "intercept", arm)]
        names.append(("(gap)", "ece_gap", arm))

    # each group's fit runs on the group's own studies only (columns of the weight matrix)
    cols_of = [np.flatnonzero(m) for m in masks] + [np.arange(len(y))]

    def stat(w: np.ndarray) -> np.ndarray:
        cols = []
        for arm, p in arms.items():
            eces = []
            for k, idx in enumerate(cols_of):
                is_group = k < g
                if is_group and not ok_group[k]:
                    ece = a = b = np.full(len(w), np.nan)
                else:
                    wk = w[:, idx]
                    ece = _ece_weighted(y[idx], p[idx], bins[(arm, k)][idx], n_bins, wk)
                    a, b = _recalibration_fit(y[idx], xs[arm][idx], wk, start=start[(arm, k)])
                if is_group:
                    eces.append(ece)
                cols += [ece, b, a]
            e = np.stack(eces, axis=1)
            cols.append(e.max(axis=1) - e.min(axis=1))
        return np.stack(cols, axis=1)

    point, dist = bootstrap_statistic(stat, pcodes, n_resamples=n_resamples, seed=seed)
    rows = pd.DataFrame(names, columns=["group", "metric", "arm"])
    rows["estimate"] = point
    rows["ci_low"], rows["ci_high"] = column_intervals(dist, confidence)
    rows["p_value"] = np.nan
    if "clean" in arms:
        half = len(names) // 2
        ch = rows.iloc[half:].copy()
        ch["arm"] = "change"
        dch = dist[:, half:] - dist[:, :half]
        ch["estimate"] = point[half:] - point[:half]
        ch["ci_low"], ch["ci_high"] = column_intervals(dch, confidence)
        ch["p_value"] = column_p_values(dch)
        rows = pd.concat([rows, ch], ignore_index=True)
    size = dict(zip([str(v) for v in labels], npat.tolist()))
    size["(all)"] = size["(gap)"] = int(len(np.unique(pcodes)))
    rows["n_patients"] = rows["group"].map(size).astype(int)
    est = dict(zip([str(v) for v in labels], ok_group.tolist()))
    est["(all)"], est["(gap)"] = True, int(ok_group.sum()) >= 2
    rows["estimable"] = rows["group"].map(est).astype(bool)
    return rows
