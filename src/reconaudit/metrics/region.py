"""Region-aware image quality: PSNR, SSIM and NMSE where the diagnosis looks, and per group.

A reconstruction can gain 1 dB over the whole image while erasing the lesion.  These functions
split each study into three disjoint regions and compare within each:

* ``lesion``: the finding's pixels :math:`L` (a segmentation mask, or the region a synthetic
  cohort knows its findings occupy),
* ``tissue``: the body or brain outside the lesion, :math:`B \\setminus L`,
* ``background``: everything outside the body, :math:`\\bar B`.

:func:`group_mean_summary` then gives each region's (or any per-study column's) mean per group attribute value with
patient-level bootstrap intervals (:func:`reconaudit.metrics.bootstrap_weights`) and the gap
between the best and the worst group.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ._utils import to_numpy
from .image import nmse, psnr, ssim
from .intervals import percentile_interval
from .resampling import bootstrap_weights

__all__ = ["REGIONS", "REGION_METRICS", "region_masks", "region_quality", "group_mean_summary"]

#: The regions of :func:`region_masks`, in report order.
REGIONS: tuple[str, ...] = ("lesion", "tissue", "background")
#: The image-quality measures computed per region.
REGION_METRICS: tuple[str, ...] = ("psnr", "ssim", "nmse")


def _bool_batch(m: object, name: str, shape: tuple[int, ...]) -> np.ndarray:
    a = to_numpy(m, name) != 0
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim == 2:
        a = a[None]
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {shape} (N, H, W) like the images, got {a.shape}")
    return a


def region_masks(lesion: object, body: object | None = None) -> dict[str, np.ndarray]:
    r"""The three disjoint regions of each study from a lesion mask and a body mask.

    .. math:: \mathrm{lesion} = L, \quad \mathrm{tissue} = B \setminus L, \quad \mathrm{background} = \bar B \setminus L

    Parameters
    ----------
    lesion : array or tensor, (N, 1, H, W) or (N, H, W)
        Nonzero where the finding is (may be empty for a study without one).
    body : array or tensor, same shape, optional
        Nonzero inside the body or brain; ``None`` takes the whole image as body (no background).

    Returns
    -------
    dict
        ``{"lesion", "tissue", "background"}`` -> bool array (N, H, W).
    """
    les = to_numpy(lesion, "lesion") != 0
    if les.ndim == 4 and les.shape[1] == 1:
        les = les[:, 0]
    if les.ndim == 2:
        les = les[None]
    if les.ndim != 3:
        raise ValueError(f"lesion: expected (N, 1, H, W) or (N, H, W), got shape {les.shape}")
    b = np.ones_like(les) if body is None else _bool_batch(body, "body", les.shape)
    return {"lesion": les, "tissue": b & ~les, "background": ~b & ~les}


def region_quality(
    x: object, y: object, lesion: object, body: object | None = None, *, data_range: float = 1.0
) -> dict[str, np.ndarray]:
    r"""PSNR, SSIM and NMSE of every study inside each region of :func:`region_masks`.

    Each measure is the whole-image one of :mod:`reconaudit.metrics.image` with its ``mask=``
    set to the region, e.g. :math:`\mathrm{PSNR}_L = 10\log_{10} R^2 / \big(\frac{1}{|L|}\sum_{p\in L}(x_p-y_p)^2\big)`;
    SSIM averages the (whole-image) SSIM map over the region's interior pixels.  A study whose
    region is empty gets NaN there (e.g. no lesion).

    Parameters
    ----------
    x, y : array or tensor, (N, 1, H, W) or (N, H, W)
        Reconstructions and clean references.
    lesion, body : array or tensor
        See :func:`region_masks`.
    data_range : float
        :math:`R` of PSNR and SSIM.

    Returns
    -------
    dict
        ``"<metric>:<region>"`` (e.g. ``"psnr:lesion"``) -> float64 array (N,).
    """
    regions = region_masks(lesion, body)
    out: dict[str, np.ndarray] = {}
    for r in REGIONS:
        m = regions[r]
        out[f"psnr:{r}"] = psnr(x, y, data_range=data_range, mask=m)
        out[f"ssim:{r}"] = ssim(x, y, data_range=data_range, mask=m)
        out[f"nmse:{r}"] = nmse(x, y, mask=m)
    return out


def _weighted_group_means(values: np.ndarray, codes: np.ndarray, n_groups: int, w: np.ndarray) -> np.ndarray:
    """(B, G) weighted means of ``values`` (finite only) per group under weights ``w`` (B, N)."""
    ok = np.isfinite(values)
    v = np.where(ok, values, 0.0)
    onehot = np.zeros((len(values), n_groups))
    has = codes >= 0  # -1: no group value (left out)
    onehot[np.flatnonzero(has), codes[has]] = 1.0
    onehot *= ok[:, None]
    num = w @ (onehot * v[:, None])
    den = w @ onehot
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def group_mean_summary(
    records: pd.DataFrame,
    columns: Sequence[str],
    attributes: Sequence[str],
    *,
    by: Sequence[str] = ("cohort", "degradation", "level", "reconstructor", "mitigation"),
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    r"""Per-group means of per-study columns with patient-level bootstrap intervals, and the gap.

    Used for region quality and for the hallucination rates (a 0/1 column's mean is a share).

    Within each cell (the ``by`` columns), for every column ``c`` and group attribute ``a`` with
    values :math:`g`: the mean :math:`\bar c_g` over the group's studies with a finite value, a
    percentile interval from ``n_resamples`` patient-level resamples (the same resampling weights
    for every group, column and attribute of the cell), and the gap
    :math:`\max_g \bar c_g - \min_g \bar c_g` with its interval from the same resamples.  PSNR values of
    ``inf`` (an exact region) are left out of the means, and so are studies without a value of the
    attribute (they still count in the resampling of patients).

    Parameters
    ----------
    records : DataFrame
        The records table (``patient_id`` and ``group:<attribute>`` columns).
    columns : sequence of str
        Columns to summarise, e.g. ``["region_psnr:lesion", "region_psnr:tissue"]``.
    attributes : sequence of str
        Group attributes (without the ``group:`` prefix).

    Returns
    -------
    DataFrame
        One row per cell x column x attribute x group (``group`` = ``"(gap)"`` for the gap row):
        ``value``, ``ci_low``, ``ci_high``, ``n`` (studies with a finite value).
    """
    missing = [c for c in ("patient_id", *by, *columns, *(f"group:{a}" for a in attributes)) if c not in records]
    if missing:
        raise KeyError(f"records lack the columns {missing}; were they written by a score step with region masks?")
    rows = []
    for key, cell in records.groupby(list(by), sort=True, dropna=False):
        rng = np.random.default_rng(seed)
        w = bootstrap_weights(cell["patient_id"].astype(str).to_numpy(), n_resamples, rng).astype(np.float64)
        ones = np.ones((1, len(cell)))
        for col in columns:
            v = cell[col].to_numpy(dtype=np.float64)
            v = np.where(np.isfinite(v), v, np.nan)
            for attr in attributes:
                codes, names = pd.factorize(cell[f"group:{attr}"], sort=True)
                names = [str(g) for g in names]
                point = _weighted_group_means(v, codes, len(names), ones)[0]
                dist = _weighted_group_means(v, codes, len(names), w)
                counts = np.bincount(codes[np.isfinite(v) & (codes >= 0)], minlength=len(names))
                base = dict(zip(by, key if isinstance(key, tuple) else (key,)), column=col, attribute=attr)
                for gi, g in enumerate(names):
                    lo, hi = percentile_interval(dist[:, gi], confidence)
                    rows.append({**base, "group": g, "value": point[gi], "ci_low": lo, "ci_high": hi,
                                 "n": int(counts[gi])})
                ok = counts > 0
                if ok.sum() >= 2:
                    gap = np.nanmax(point[ok]) - np.nanmin(point[ok])
                    gdist = np.nanmax(dist[:, ok], axis=1) - np.nanmin(dist[:, ok], axis=1)
                    lo, hi = percentile_interval(gdist, confidence)
                else:
                    gap, lo, hi = np.nan, np.nan, np.nan
                rows.append({**base, "group": "(gap)", "value": gap, "ci_low": lo, "ci_high": hi,
                             "n": int(counts.sum())})
    return pd.DataFrame(rows)
