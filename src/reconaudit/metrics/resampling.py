r"""Patient-level resampling: bootstrap weights, weighted AUROC and confusion counts, and one
bootstrap loop for statistics written as functions of study weights.

The bootstrap resamples *patients* with replacement; a study's weight in a resample is the number
of times its patient was drawn.  Clean and reconstructed predictions of a study always share the
weight (paired).  The depth analyses (calibration, operating points, segmentation equity, ranking,
regression) express every statistic as a function ``stat(W) -> (b, K)`` of study weights ``W`` of
shape ``(b, n)``; :func:`bootstrap_statistic` evaluates it on these weights, so every module
resamples patients the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from ._auroc import SortedScores
from ._utils import as_1d, as_binary, check_same_length, group_codes
from .fairness import confusion_counts

__all__ = ["iter_bootstrap_weights", "bootstrap_weights", "weighted_confusion_counts", "weighted_auroc",
           "bootstrap_statistic", "patients_per_group"]


def _patient_codes(patient_ids: object) -> tuple[np.ndarray, int]:
    codes, labels = group_codes(patient_ids, "patient_ids")
    return codes, len(labels)


def _patient_draw_counts(n_patients: int, b: int, rng: np.random.Generator) -> np.ndarray:
    """``(b, P)`` counts: how often each patient was drawn in each of ``b`` resamples of size P."""
    draws = rng.integers(0, n_patients, size=(b, n_patients), dtype=np.int64)
    draws += (np.arange(b, dtype=np.int64) * n_patients)[:, None]
    flat = draws.ravel()
    return np.bincount(flat, minlength=b * n_patients).reshape(b, n_patients).astype(np.int32)


def iter_bootstrap_weights(
    patient_ids: object, n_resamples: int, rng: np.random.Generator, chunk_size: int = 64
) -> Iterator[np.ndarray]:
    """Yield patient-level bootstrap weights in chunks ``(<= chunk_size, n_studies)`` (int32).

    Each resample draws P patients with replacement out of the P patients; a study's weight is the
    number of times its patient was drawn.  Same ``rng`` state and ``chunk_size`` give the same weights.
    """
    codes, n_pat = _patient_codes(patient_ids)
    for start in range(0, n_resamples, chunk_size):
        b = min(chunk_size, n_resamples - start)
        yield _patient_draw_counts(n_pat, b, rng)[:, codes]


def bootstrap_weights(patient_ids: object, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Patient-level bootstrap weights ``(n_resamples, n_studies)`` (int32); see :func:`iter_bootstrap_weights`."""
    return np.concatenate(list(iter_bootstrap_weights(patient_ids, n_resamples, rng, chunk_size=n_resamples)))


def weighted_confusion_counts(y_true: object, y_pred: object, groups: object, weights: object) -> np.ndarray:
    """Confusion counts ``(B, G, 4)`` = (TP, FP, TN, FN) per resample and group, one weighted bincount.

    :math:`C_{bgk} = \\sum_i w_{bi} [g_i = g][\\text{outcome}_i = k]`.
    """
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    return confusion_counts(y_true, y_pred, groups, w)


def weighted_auroc(y_true: object, y_score: object, weights: object, chunk_size: int = 64) -> np.ndarray:
    r"""AUROC for each row of ``weights`` ``(B, n)``: scores sorted once, weights as cumulative sums.

    .. math:: \mathrm{AUROC}_b = \frac{\sum_{i:y_i=1}\sum_{j:y_j=0} w_{bi} w_{bj}
              \left([s_i > s_j] + \tfrac12 [s_i = s_j]\right)}{\sum_{i:y_i=1} w_{bi} \sum_{j:y_j=0} w_{bj}}

    Equal to ``sklearn.metrics.roc_auc_score(y_true, y_score, sample_weight=weights[b])``.
    """
    y = as_binary(y_true, "y_true")
    s = as_1d(y_score, "y_score", np.float64)
    check_same_length(y_true=y, y_score=s)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if w.shape[1] != len(y):
        raise ValueError(f"weights: expected shape (B, {len(y)}), got {w.shape}")
    ss = SortedScores(y, s)
    return np.concatenate(
        [ss.auroc(w[i : i + chunk_size][:, ss.order]) for i in range(0, len(w), chunk_size)]
    )


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


def patients_per_group(codes: np.ndarray, patient_codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Number of distinct patients in each group ``(G,)``."""
    pairs = np.unique(np.stack([codes, patient_codes]), axis=1)
    return np.bincount(pairs[0], minlength=n_groups)
