"""Task metrics: AUROC/AUPRC per label, sensitivity/specificity, Dice and HD95 per study.

Operating thresholds live in :mod:`reconaudit.metrics.thresholds`."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import ndimage
from sklearn.metrics import average_precision_score

from ._auroc import SortedScores
from ._utils import as_1d, as_binary, check_same_length, to_numpy

__all__ = [
    "MetricUndefinedWarning",
    "auroc",
    "auprc",
    "sensitivity_specificity",
    "dice",
    "hd95",
    "normalized_surface_dice",
    "patient_level",
]


class MetricUndefinedWarning(UserWarning):
    """A metric is undefined for the given data (e.g. AUROC with one class); NaN is returned."""


def _binary_auroc(y: np.ndarray, s: np.ndarray) -> float:
    return float(SortedScores(y, s).auroc(np.ones((1, len(y))))[0])


def _per_label(
    y_true: object,
    y_score: object,
    fn: Callable[[np.ndarray, np.ndarray], float],
    name: str,
    average: str | None,
) -> float | np.ndarray:
    yt = to_numpy(y_true, "y_true").astype(np.float64)
    ys = to_numpy(y_score, "y_score").astype(np.float64)
    if yt.shape != ys.shape:
        raise ValueError(f"y_true and y_score must have the same shape, got {yt.shape} and {ys.shape}")
    if yt.ndim not in (1, 2):
        raise ValueError(f"y_true: expected (N,) or (N, labels), got shape {yt.shape}")
    if average not in (None, "macro"):
        raise ValueError(f"average: expected None or 'macro', got {average!r}")
    one_d = yt.ndim == 1
    yt2, ys2 = (yt[:, None], ys[:, None]) if one_d else (yt, ys)
    out = np.full(yt2.shape[1], np.nan)
    for j in range(yt2.shape[1]):  # loop over labels (a handful), not studies
        keep = ~np.isnan(yt2[:, j])
        y, s = as_binary(yt2[keep, j], f"y_true[:, {j}]"), ys2[keep, j]
        if np.isnan(s).any():
            raise ValueError(f"y_score[:, {j}]: contains NaN where the target is known")
        if y.min(initial=1) == y.max(initial=0):
            warnings.warn(
                f"{name} undefined for label {j}: only one class present among {keep.sum()} studies; returning NaN",
                MetricUndefinedWarning,
                stacklevel=3,
            )
            continue
        out[j] = fn(y, s)
    if one_d:
        return float(out[0])
    if average == "macro":
        return float(np.nanmean(out)) if np.isfinite(out).any() else float("nan")
    return out


def auroc(y_true: object, y_score: object, *, average: str | None = None) -> float | np.ndarray:
    r"""Area under the ROC curve (Mann-Whitney statistic, ties counted 1/2).

    .. math:: \mathrm{AUROC} = \frac{1}{n_1 n_0} \sum_{i: y_i=1} \sum_{j: y_j=0}
              \left( [s_i > s_j] + \tfrac12 [s_i = s_j] \right)

    Equal to ``sklearn.metrics.roc_auc_score``.

    Parameters
    ----------
    y_true : array, shape (N,) or (N, labels)
        Binary targets; NaN marks a missing target (that study is left out for that label).
    y_score : array, same shape
        Scores (higher means more likely positive).
    average : {None, "macro"}
        For 2-D input: ``None`` returns one AUROC per label, ``"macro"`` their mean over the
        labels where it is defined.

    Returns
    -------
    float or numpy.ndarray
        NaN (with a :class:`MetricUndefinedWarning`) for a label with a single class.
    """
    return _per_label(y_true, y_score, _binary_auroc, "AUROC", average)


def auprc(y_true: object, y_score: object, *, average: str | None = None) -> float | np.ndarray:
    r"""Area under the precision-recall curve as average precision (scikit-learn's definition).

    .. math:: \mathrm{AP} = \sum_k (R_k - R_{k-1}) P_k

    Same input conventions and undefined cases as :func:`auroc`.
    """
    return _per_label(y_true, y_score, lambda y, s: float(average_precision_score(y, s)), "AUPRC", average)


def sensitivity_specificity(y_true: object, y_score: object, threshold: float) -> tuple[float, float]:
    r"""Sensitivity and specificity at a fixed threshold (positive when :math:`s \ge t`).

    .. math:: \mathrm{sens} = \frac{TP}{TP + FN}, \quad \mathrm{spec} = \frac{TN}{TN + FP}

    NaN (with a warning) when there is no positive (sensitivity) or no negative (specificity).
    """
    y = as_binary(y_true, "y_true")
    s = as_1d(y_score, "y_score", np.float64)
    check_same_length(y_true=y, y_score=s)
    pred = s >= threshold
    n1, n0 = int(y.sum()), int(len(y) - y.sum())
    if n1 == 0 or n0 == 0:
        warnings.warn(
            f"sensitivity/specificity: {n1} positives and {n0} negatives; the missing one is NaN",
            MetricUndefinedWarning,
            stacklevel=2,
        )
    sens = float((pred & (y == 1)).sum() / n1) if n1 else float("nan")
    spec = float((~pred & (y == 0)).sum() / n0) if n0 else float("nan")
    return sens, spec


def _masks(x: object, name: str) -> np.ndarray:
    arr = to_numpy(x, name)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim < 2:
        raise ValueError(
            f"{name}: expected a batch of masks (N, 1, H, W) or (N, H, W), got shape {arr.shape}"
        )
    return arr.astype(bool)


def dice(pred_mask: object, true_mask: object) -> np.ndarray:
    r"""Dice coefficient per study.

    .. math:: D = \frac{2 |A \cap B|}{|A| + |B|}

    Convention: when both masks are empty the prediction is perfect and :math:`D = 1`.

    Parameters
    ----------
    pred_mask, true_mask : array or tensor of bool, shape (N, 1, H, W) or (N, H, W) (or (N, ...))

    Returns
    -------
    numpy.ndarray of shape (N,)
    """
    a, b = _masks(pred_mask, "pred_mask"), _masks(true_mask, "true_mask")
    if a.shape != b.shape:
        raise ValueError(f"pred_mask and true_mask must have the same shape, got {a.shape} and {b.shape}")
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    inter = (a & b).sum(axis=1)
    tot = a.sum(axis=1) + b.sum(axis=1)
    return np.where(tot > 0, 2.0 * inter / np.maximum(tot, 1), 1.0)


def grouped_percentile(values: np.ndarray, groups: np.ndarray, n_groups: int, q: float) -> np.ndarray:
    """``np.percentile(values[groups == g], q)`` (linear interpolation) for every group at once.

    Groups without values get NaN.
    """
    order = np.lexsort((values, groups))
    v = values[order]
    counts = np.bincount(groups, minlength=n_groups)
    starts = np.cumsum(counts) - counts
    pos = q / 100.0 * np.maximum(counts - 1, 0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(counts - 1, 0))
    frac = pos - lo
    out = np.full(n_groups, np.nan)
    ok = counts > 0
    vlo, vhi = v[(starts + lo)[ok]], v[(starts + hi)[ok]]
    out[ok] = vlo + frac[ok] * (vhi - vlo)
    return out


def _surface_distances(a: np.ndarray, b: np.ndarray, batch_size: int):
    """Yield ``(sel, d_ab, i_ab, d_ba, i_ba)`` per chunk of studies where both masks are non-empty:
    distances from each boundary pixel of A to the boundary of B (and back) with their study index."""
    n = len(a)
    flat_a, flat_b = a.reshape(n, -1), b.reshape(n, -1)
    idx = np.flatnonzero(flat_a.any(axis=1) & flat_b.any(axis=1))
    struct = np.zeros((3,) * a.ndim, dtype=bool)
    struct[1] = ndimage.generate_binary_structure(a.ndim - 1, 1)
    sampling = (2.0 * float(sum(a.shape[1:])),) + (1.0,) * (a.ndim - 1)
    for start in range(0, len(idx), batch_size):  # chunks of whole batches, bounded memory
        sel = idx[start : start + batch_size]
        pa, pb = a[sel], b[sel]
        ea = pa & ~ndimage.binary_erosion(pa, structure=struct, border_value=0)
        eb = pb & ~ndimage.binary_erosion(pb, structure=struct, border_value=0)
        da = ndimage.distance_transform_edt(~ea, sampling=sampling)
        db = ndimage.distance_transform_edt(~eb, sampling=sampling)
        yield sel, db[ea], np.nonzero(ea)[0], da[eb], np.nonzero(eb)[0]


def _mask_pair(pred_mask: object, true_mask: object) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    a, b = _masks(pred_mask, "pred_mask"), _masks(true_mask, "true_mask")
    if a.shape != b.shape:
        raise ValueError(f"pred_mask and true_mask must have the same shape, got {a.shape} and {b.shape}")
    n = len(a)
    return a, b, a.reshape(n, -1).any(axis=1), b.reshape(n, -1).any(axis=1)


def hd95(
    pred_mask: object, true_mask: object, *, percentile: float = 95.0, batch_size: int = 256,
    empty: str = "worst",
) -> np.ndarray:
    r"""Percentile (default 95th) symmetric Hausdorff distance in pixels per study.

    Boundaries are :math:`\partial A = A \setminus \mathrm{erode}(A)` (cross-shaped element, pixels
    outside the image count as background); with :math:`d(p, \partial B)` the Euclidean distance to
    the nearest boundary pixel of :math:`B`:

    .. math:: \mathrm{HD}_{95} = \max\left( P_{95}\{d(p, \partial B): p \in \partial A\},
                                            P_{95}\{d(q, \partial A): q \in \partial B\} \right)

    the convention of ``monai.metrics.compute_hausdorff_distance(..., percentile=95)``
    (percentiles with linear interpolation).  Distance transforms run on whole batches
    (``scipy.ndimage.distance_transform_edt`` with the batch axis spaced far apart so that studies
    never see each other).

    Empty masks (``empty="worst"``, the default, Metrics Reloaded's worst-case convention): a missed
    lesion (empty prediction, non-empty truth) or a false lesion (the reverse) scores the image
    diagonal :math:`\sqrt{\sum_k s_k^2}` over the spatial shape :math:`s` (the largest distance in
    the image), so that missing more lesions never improves the mean.  Both masks empty (a slice
    without lesion, correctly left empty) has no boundary to measure: NaN, left out of means (its
    Dice is 1).  ``empty="nan"`` returns NaN whenever either mask is empty (the older convention).
    """
    if empty not in ("worst", "nan"):
        raise ValueError(f"empty: expected 'worst' or 'nan', got {empty!r}")
    a, b, any_a, any_b = _mask_pair(pred_mask, true_mask)
    out = np.full(len(a), np.nan)
    if empty == "worst":
        out[any_a != any_b] = float(np.sqrt(np.sum(np.square(a.shape[1:]))))
    for sel, d_ab, i_ab, d_ba, i_ba in _surface_distances(a, b, batch_size):
        q1 = grouped_percentile(d_ab, i_ab, len(sel), percentile)
        q2 = grouped_percentile(d_ba, i_ba, len(sel), percentile)
        out[sel] = np.maximum(q1, q2)
    return out


def normalized_surface_dice(
    pred_mask: object, true_mask: object, *, tolerance: float = 1.0, batch_size: int = 256
) -> np.ndarray:
    r"""Normalized surface Dice (NSD) at a tolerance of ``tolerance`` pixels per study (Nikolov et al. 2021).

    With the boundaries of :func:`hd95`:

    .. math:: \mathrm{NSD}_\tau = \frac{|\{p \in \partial A: d(p, \partial B) \le \tau\}|
              + |\{q \in \partial B: d(q, \partial A) \le \tau\}|}{|\partial A| + |\partial B|}

    Metrics Reloaded recommends it next to HD95 with the tolerance stated (default 1 pixel).  A
    missed or a false lesion scores 0 (worst case); both masks empty: NaN (nothing to measure).
    """
    if not tolerance >= 0:
        raise ValueError(f"tolerance: expected a distance >= 0 in pixels, got {tolerance!r}")
    a, b, any_a, any_b = _mask_pair(pred_mask, true_mask)
    out = np.where(any_a | any_b, 0.0, np.nan)
    for sel, d_ab, i_ab, d_ba, i_ba in _surface_distances(a, b, batch_size):
        m = len(sel)
        hit = np.bincount(i_ab, weights=d_ab <= tolerance, minlength=m) + np.bincount(
            i_ba, weights=d_ba <= tolerance, minlength=m)
        tot = np.bincount(i_ab, minlength=m) + np.bincount(i_ba, minlength=m)
        out[sel] = hit / tot
    return out


def patient_level(
    values: object, patient_ids: object, *, agg: str | Callable[[np.ndarray], float] = "median"
) -> pd.Series:
    """Aggregate per-study (per-slice) scores to one value per patient.

    Parameters
    ----------
    values : array, shape (N,)
        Per-study values (e.g. slice scores or slice Dice).
    patient_ids : array, shape (N,)
        Patient of each study.
    agg : str or callable
        ``"median"`` (default), ``"mean"``, ``"max"``, ``"min"`` or any function of a 1-D array.

    Returns
    -------
    pandas.Series
        Indexed by patient id (sorted), named ``values``.
    """
    v = as_1d(values, "values", np.float64)
    p = as_1d(patient_ids, "patient_ids")
    check_same_length(values=v, patient_ids=p)
    return pd.Series(v, name="values").groupby(p, sort=True).agg(agg)
