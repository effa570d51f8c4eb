"""One patient-level bootstrap loop for statistics written as functions of study weights.

The depth analyses (calibration, operating points, segmentation equity, ranking) express every
statistic as a function ``stat(W) -> (b, K)`` of study weights ``W`` of shape ``(b, n)``; the
point estimate is ``stat(1)`` and the bootstrap distribution is ``stat`` of the patient-level
resampling weights from :func:`reconaudit.metrics.stats.iter_bootstrap_weights` (so every module
resamples patients the same way, paired across arms).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .stats import iter_bootstrap_weights, percentile_interval


def bootstrap_statistic(
    stat: Callable[[np.ndarray], np.ndarray],
    patient_ids: object,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    chunk_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Point estimate ``(K,)`` and patient-level bootstrap distribution ``(n_resamples, K)`` of ``stat``.

    ``stat`` maps float study weights ``(b, n)`` to ``(b, K)`` values (NaN where undefined).
    ``chunk_size`` resamples are evaluated at once (default: as many as keep a weight chunk near
    2 million entries, between 16 and 256).
    """
    n = len(np.asarray(patient_ids))
    if chunk_size is None:
        chunk_size = int(min(256, max(16, 2_000_000 // max(n, 1))))
    point = np.asarray(stat(np.ones((1, n))), dtype=np.float64)[0]
    rng = np.random.default_rng(seed)
    dist = [np.asarray(stat(w.astype(np.float64)), dtype=np.float64)
            for w in iter_bootstrap_weights(patient_ids, n_resamples, rng, chunk_size)]
    return point, (np.concatenate(dist) if dist else np.empty((0, len(point))))


def intervals(dist: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of each column of ``dist`` (NaN resamples left out)."""
    lo_hi = np.array([percentile_interval(dist[:, k], confidence) for k in range(dist.shape[1])])
    if len(lo_hi) == 0:
        return np.empty(0), np.empty(0)
    return lo_hi[:, 0], lo_hi[:, 1]


def bootstrap_p(dist: np.ndarray) -> np.ndarray:
    r"""Two-sided bootstrap p-value per column, :math:`\min(1, 2\min(P^*(\Delta^* \le 0), P^*(\Delta^* \ge 0)))`.

    The convention of :func:`reconaudit.metrics.stats.bootstrap_metrics` for change rows.
    """
    out = np.full(dist.shape[1], np.nan)
    for k in range(dist.shape[1]):
        d = dist[:, k][~np.isnan(dist[:, k])]
        if len(d):
            out[k] = min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0)))
    return out


def patients_per_group(codes: np.ndarray, patient_codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Number of distinct patients in each group ``(G,)``."""
    pairs = np.unique(np.stack([codes, patient_codes]), axis=1)
    return np.bincount(pairs[0], minlength=n_groups)
