r"""Intervals and p-values of bootstrap distributions: percentile and BCa intervals, the two-sided
bootstrap p-value (undefined resamples counted against the statistic), its Monte Carlo floor and
the two-stage test that resolves p-values small enough for a multiple-comparison correction.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

__all__ = ["percentile_interval", "bootstrap_p_value", "floor_p_value", "two_stage_resamples",
           "needs_second_stage", "bca_interval", "column_intervals", "column_p_values"]


def percentile_interval(dist: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the defined (non-NaN) bootstrap values."""
    d = np.asarray(dist, dtype=np.float64)
    d = d[~np.isnan(d)]
    if len(d) == 0:
        return float("nan"), float("nan")
    alpha = 1 - confidence
    lo, hi = np.percentile(d, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def bootstrap_p_value(dist: np.ndarray) -> float:
    r"""Two-sided bootstrap p-value of a change, undefined resamples counted **against** the statistic.

    With :math:`B` resamples of which :math:`U` are undefined (NaN: a group drew no positive, ...):

    .. math:: p = \min\left(1,\ \frac{2}{B}\min\left(\#\{\Delta^*_b \le 0\} + U,\
              \#\{\Delta^*_b \ge 0\} + U\right)\right)

    An undefined resample cannot support the sign of the change, so it counts on both sides (as a
    resample-by-resample fairlearn computation would when it scores such a resample at 0).  Without
    undefined resamples this is the usual :math:`2\min(P^*(\Delta^* \le 0), P^*(\Delta^* \ge 0))`;
    with them :math:`p \ge 2U/B`, so a statistic undefined in 48 % of resamples is never significant.
    NaN when every resample is undefined.
    """
    d = np.asarray(dist, dtype=np.float64)
    b = len(d)
    bad = np.isnan(d)
    u = int(bad.sum())
    if b == 0 or u == b:
        return float("nan")
    ok = d[~bad]
    return float(min(1.0, 2 * min(np.sum(ok <= 0) + u, np.sum(ok >= 0) + u) / b))


def floor_p_value(p: object, n_resamples: object) -> np.ndarray:
    r"""A Monte Carlo p-value from :math:`B` resamples cannot be below :math:`1/(B+1)`: :math:`\max(p, 1/(B+1))`.

    NaN stays NaN; broadcasts over arrays.
    """
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(p), np.nan, np.maximum(p, 1.0 / (np.asarray(n_resamples, dtype=np.float64) + 1)))


def two_stage_resamples(n_tests: int, alpha: float, cap: int = 100_000) -> int:
    r"""Resamples of the second stage of a two-stage bootstrap test: :math:`B_2 = \lceil 4m/\alpha \rceil` (at most ``cap``).

    The smallest of :math:`m` p-values must reach :math:`\alpha/m` under Holm; a bootstrap p-value
    :math:`2\min(P^*(\Delta^* \le 0), P^*(\Delta^* \ge 0))` from :math:`B` resamples cannot resolve values below
    about :math:`2/B`, so changes with at most two first-stage resamples on the far side of zero
    (:func:`needs_second_stage`) are bootstrapped again with :math:`B_2` resamples.
    """
    return int(min(cap, math.ceil(4 * max(n_tests, 1) / alpha)))


def needs_second_stage(p: float, n_resamples: int) -> bool:
    """True when a first-stage bootstrap p-value has at most two resamples on the far side of zero."""
    return bool(np.isfinite(p) and p * n_resamples / 2 <= 2)


def bca_interval(
    dist: np.ndarray, estimate: float, jackknife: np.ndarray, confidence: float = 0.95
) -> tuple[float, float]:
    r"""Bias-corrected and accelerated (BCa) interval (Efron 1987).

    .. math:: z_0 = \Phi^{-1}\!\left(\frac{\#\{\theta^*_b < \hat\theta\} + \tfrac12\#\{\theta^*_b = \hat\theta\}}{B}\right),
              \quad a = \frac{\sum_j (\bar\theta_{(\cdot)} - \theta_{(j)})^3}
                             {6 \left(\sum_j (\bar\theta_{(\cdot)} - \theta_{(j)})^2\right)^{3/2}}

    with :math:`\theta_{(j)}` the leave-one-patient-out (jackknife) estimates; the interval is the
    :math:`\Phi(z_0 + \frac{z_0 + z_q}{1 - a(z_0 + z_q)})` percentiles of the bootstrap values,
    :math:`q \in \{\alpha/2, 1 - \alpha/2\}`.  NaN when the estimate or a jackknife value is undefined.
    """
    d = np.asarray(dist, dtype=np.float64)
    d = d[~np.isnan(d)]
    jack = np.asarray(jackknife, dtype=np.float64)
    if len(d) == 0 or not np.isfinite(estimate) or not np.isfinite(jack).all():
        return float("nan"), float("nan")
    p0 = (np.sum(d < estimate) + 0.5 * np.sum(d == estimate)) / len(d)
    if p0 <= 0 or p0 >= 1:
        return float("nan"), float("nan")
    z0 = sps.norm.ppf(p0)
    diff = jack.mean() - jack
    ss = float((diff**2).sum())
    a = float((diff**3).sum()) / (6 * ss**1.5) if ss > 0 else 0.0
    alpha = 1 - confidence
    zq = sps.norm.ppf([alpha / 2, 1 - alpha / 2])
    q = sps.norm.cdf(z0 + (z0 + zq) / (1 - a * (z0 + zq)))
    lo, hi = np.percentile(d, 100 * q)
    return float(lo), float(hi)


def column_intervals(dist: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """:func:`percentile_interval` of each column of ``dist`` ``(B, K)``: ``(ci_low, ci_high)``, each ``(K,)``."""
    lo_hi = np.array([percentile_interval(dist[:, k], confidence) for k in range(dist.shape[1])])
    if len(lo_hi) == 0:
        return np.empty(0), np.empty(0)
    return lo_hi[:, 0], lo_hi[:, 1]


def column_p_values(dist: np.ndarray) -> np.ndarray:
    """:func:`bootstrap_p_value` of each column of ``dist`` ``(B, K)`` (the convention of every
    change row: undefined resamples count against the change)."""
    return np.array([bootstrap_p_value(dist[:, k]) for k in range(dist.shape[1])], dtype=np.float64)
