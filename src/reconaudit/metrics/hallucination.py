"""Did the reconstructor add or remove something real?  Hallucination and uncertainty measures.

* :func:`decision_flips`: the diagnostic model finds a finding in the reconstruction that it does
  not find in the clean image (a hallucinated finding), or the converse (an erased finding).
* :func:`false_positive_volume`: segmented lesion pixels in the reconstruction where the reference
  (the truth, or the segmentation of the clean image) has none.
* :func:`sample_spread`, :func:`uncertainty_coverage`, :func:`pixel_correlation`: for stochastic
  reconstructors, how much the K samples disagree and whether that spread is where the errors are.
* :func:`hallucination_map`: the part of the reconstruction error that the degradation's noise
  does not explain, in the spirit of the hallucination index of Tivnan et al. (2024).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage, special, stats

from ._utils import to_numpy
from .image import _batch

__all__ = [
    "decision_flips",
    "record_flips",
    "record_sample_spread",
    "spread_error_correlation",
    "false_positive_volume",
    "sample_spread",
    "uncertainty_coverage",
    "pixel_correlation",
    "hallucination_map",
]


def decision_flips(clean_score: object, score: object, threshold: object) -> tuple[np.ndarray, np.ndarray]:
    r"""Hallucinated and erased findings: decisions that differ between clean image and reconstruction.

    With the operating threshold :math:`t` (chosen on clean validation data):

    .. math:: \mathrm{hallucinated} = [s_\mathrm{clean} < t] \wedge [s \ge t], \qquad
              \mathrm{erased} = [s_\mathrm{clean} \ge t] \wedge [s < t]

    Parameters
    ----------
    clean_score, score : array (N,) or (N, L)
        Probabilities on the clean image and on the reconstruction.
    threshold : float or array broadcastable to ``score``

    Returns
    -------
    (hallucinated, erased) : bool arrays of the shape of ``score``
    """
    c = np.asarray(to_numpy(clean_score, "clean_score"), dtype=np.float64)
    s = np.asarray(to_numpy(score, "score"), dtype=np.float64)
    if c.shape != s.shape:
        raise ValueError(f"clean_score and score must have the same shape, got {c.shape} and {s.shape}")
    t = np.asarray(threshold, dtype=np.float64)
    return (c < t) & (s >= t), (c >= t) & (s < t)


def _labels(records: pd.DataFrame) -> list[str]:
    return [c.split(":", 1)[1] for c in records.columns
            if c.startswith("score:") and f"clean_score:{c.split(':', 1)[1]}" in records
            and f"threshold:{c.split(':', 1)[1]}" in records]


def record_flips(records: pd.DataFrame) -> pd.DataFrame:
    """Per-study hallucinated / erased findings from the records' scores (see :func:`decision_flips`).

    Parameters
    ----------
    records : DataFrame
        With ``score:<label>``, ``clean_score:<label>`` and ``threshold:<label>`` for every label.

    Returns
    -------
    DataFrame, index aligned with ``records``
        ``hallucinated:<label>``, ``erased:<label>`` (float 0/1; NaN where a score is missing) and
        ``hallucinated:any`` / ``erased:any`` (at least one label flipped that way).
    """
    labels = _labels(records)
    if not labels:
        raise KeyError("records have no score:<label> / clean_score:<label> / threshold:<label> columns "
                       "(classification cells)")
    out = pd.DataFrame(index=records.index)
    for lb in labels:
        c, s = records[f"clean_score:{lb}"].to_numpy(float), records[f"score:{lb}"].to_numpy(float)
        h, e = decision_flips(c, s, records[f"threshold:{lb}"].to_numpy(float))
        bad = np.isnan(c) | np.isnan(s)
        out[f"hallucinated:{lb}"] = np.where(bad, np.nan, h.astype(float))
        out[f"erased:{lb}"] = np.where(bad, np.nan, e.astype(float))
    for kind in ("hallucinated", "erased"):
        block = out[[f"{kind}:{lb}" for lb in labels]]
        out[f"{kind}:any"] = np.where(block.isna().all(axis=1), np.nan, (block.fillna(0) > 0).any(axis=1).astype(float))
    return out


def record_sample_spread(records: pd.DataFrame) -> pd.DataFrame:
    """Per-study spread of each label's score across the K samples (``sample_score:<label>:<k>``).

    Returns
    -------
    DataFrame, index aligned with ``records``
        ``spread:<label>`` = :func:`sample_spread` of the study's K sample scores (NaN for rows
        without samples) and ``spread:mean`` over the labels.
    """
    out = pd.DataFrame(index=records.index)
    for lb in _labels(records):
        cols = sorted((c for c in records if c.startswith(f"sample_score:{lb}:")), key=lambda c: int(c.rsplit(":", 1)[1]))
        if len(cols) >= 2:
            v = records[cols].to_numpy(float)
            ok = ~np.isnan(v).any(1)
            spread = np.full(len(v), np.nan)
            spread[ok] = v[ok].std(axis=1, ddof=1)
            out[f"spread:{lb}"] = spread
    if len(out.columns):
        out["spread:mean"] = out.mean(axis=1, skipna=False)
    return out


def spread_error_correlation(spread: object, error: object) -> float:
    r"""Spearman rank correlation between per-study spread and per-study error (finite pairs only).

    A positive value means the reconstructor is unsure where it is wrong (e.g. spread of the
    diagnosis across samples against :math:`|s - s_\mathrm{clean}|`).  NaN with fewer than 3 pairs
    or a constant input.
    """
    a, b = np.asarray(spread, dtype=np.float64).ravel(), np.asarray(error, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"spread and error must have the same length, got {a.shape} and {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(stats.spearmanr(a[ok], b[ok]).statistic)


def false_positive_volume(pred: object, reference: object) -> np.ndarray:
    r"""Predicted lesion pixels outside the reference, per study: :math:`|P \setminus R|`.

    Parameters
    ----------
    pred, reference : array (N, 1, H, W) or (N, H, W)
        Binary segmentation of the reconstruction, and the reference (the ground truth, or the
        segmentation of the clean image).

    Returns
    -------
    numpy.ndarray (N,) of float64 (pixel counts)
    """
    p, r = _batch(pred, "pred") != 0, _batch(reference, "reference") != 0
    if p.shape != r.shape:
        raise ValueError(f"pred and reference must have the same shape, got {p.shape} and {r.shape}")
    return (p & ~r).reshape(len(p), -1).sum(1).astype(np.float64)


def sample_spread(sample_scores: object) -> np.ndarray:
    r"""Spread of a per-study quantity across K stochastic samples: the sample standard deviation.

    .. math:: \hat\sigma = \sqrt{\tfrac{1}{K-1} \textstyle\sum_k (s_k - \bar s)^2}

    Parameters
    ----------
    sample_scores : array (N, K), K >= 2

    Returns
    -------
    numpy.ndarray (N,)
    """
    a = np.asarray(to_numpy(sample_scores, "sample_scores"), dtype=np.float64)
    if a.ndim != 2 or a.shape[1] < 2:
        raise ValueError(f"sample_scores: expected (N, K) with K >= 2 samples, got shape {a.shape}")
    return a.std(axis=1, ddof=1)


def uncertainty_coverage(
    error: object, std: object, *, samples: int, levels: Sequence[float] = (0.5, 0.8, 0.9, 0.95),
    mask: object | None = None,
) -> np.ndarray:
    r"""Coverage of the K-sample predictive intervals, per study and nominal level.

    If the truth :math:`x` were one more draw from the distribution the K samples come from (a
    Gaussian with the samples' mean :math:`\bar x` and std :math:`s`), then
    :math:`(x - \bar x) / (s\sqrt{1 + 1/K}) \sim t_{K-1}` exactly, so the interval
    :math:`\bar x \pm t_{K-1, (1+p)/2}\, s \sqrt{1 + 1/K}` covers the truth with probability
    :math:`p`.  The coverage is the share of pixels (within ``mask``) where it does:

    .. math:: c_p = \frac{1}{|M|} \sum_{i \in M} \big[\,|\bar x_i - x_i| \le t_{K-1,(1+p)/2}\, s_i \sqrt{1+1/K}\,\big]

    Calibrated uncertainty gives :math:`c_p \approx p`; :math:`c_p < p` is over-confidence.

    Parameters
    ----------
    error : array (N, 1, H, W) or (N, H, W)
        :math:`\bar x - x`, the sample mean minus the clean image.
    std : array, same shape
        The pixel-wise sample standard deviation :math:`s` (ddof=1).
    samples : int
        K, the number of samples (>= 2).
    levels : sequence of float in (0, 1)
    mask : array, same shape, optional
        Pixels to count (e.g. the body).

    Returns
    -------
    numpy.ndarray (N, len(levels))
        NaN for a study with an empty mask.
    """
    if int(samples) < 2:
        raise ValueError(f"samples: coverage needs K >= 2 samples, got {samples}")
    e, s = np.abs(_batch(error, "error")), _batch(std, "std")
    if e.shape != s.shape:
        raise ValueError(f"error and std must have the same shape, got {e.shape} and {s.shape}")
    m = np.ones(e.shape, dtype=bool) if mask is None else _batch(mask, "mask") != 0
    lv = np.asarray(levels, dtype=np.float64)
    if ((lv <= 0) | (lv >= 1)).any():
        raise ValueError(f"levels must lie in (0, 1), got {list(levels)}")
    k = int(samples)
    half = special.stdtrit(k - 1, (1 + lv) / 2) * np.sqrt(1 + 1 / k)
    n = m.reshape(len(e), -1).sum(1)
    out = np.empty((len(e), len(lv)))
    for j, h in enumerate(half):
        inside = (e <= h * s) & m
        out[:, j] = inside.reshape(len(e), -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n[:, None] > 0, out / np.maximum(n, 1)[:, None], np.nan)


def pixel_correlation(a: object, b: object, *, mask: object | None = None) -> np.ndarray:
    r"""Pearson correlation of two maps within each study, e.g. the uncertainty map and :math:`|x̂ - x|`.

    .. math:: r = \frac{\sum_{i\in M} (a_i - \bar a)(b_i - \bar b)}{\sqrt{\sum_{i\in M} (a_i-\bar a)^2 \sum_{i\in M} (b_i-\bar b)^2}}

    Returns
    -------
    numpy.ndarray (N,)
        NaN where either map is constant on the mask.
    """
    x, y = _batch(a, "a"), _batch(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a and b must have the same shape, got {x.shape} and {y.shape}")
    m = np.ones(x.shape) if mask is None else (_batch(mask, "mask") != 0).astype(np.float64)
    n = m.reshape(len(x), -1).sum(1)[:, None, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = (x * m).reshape(len(x), -1).sum(1)[:, None, None] / n
        my = (y * m).reshape(len(x), -1).sum(1)[:, None, None] / n
        dx, dy = (x - mx) * m, (y - my) * m
        num = (dx * dy).reshape(len(x), -1).sum(1)
        den = np.sqrt((dx**2).reshape(len(x), -1).sum(1) * (dy**2).reshape(len(x), -1).sum(1))
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _smooth(a: np.ndarray, window: float) -> np.ndarray:
    return ndimage.gaussian_filter(a, sigma=(0, window, window), mode="reflect")


def hallucination_map(
    recon: object, clean: object, *, noise_sigma: object | None = None, degraded: object | None = None,
    observed: object | None = None, window: float = 1.5, z: float = 3.0, tolerance: float = 0.02,
    scale_window: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Where the reconstruction departs from the truth by more than the degradation explains.

    In the spirit of the hallucination index of Tivnan et al. (2024), which measures how far a
    reconstruction lies from a zero-hallucination reference (the truth plus what the measurement
    allows), pixel by pixel: the error :math:`e = \hat x - x` is smoothed with a Gaussian
    :math:`g` of ``window`` pixels, :math:`\bar e = g * e`, so that noise-like error averages out
    while added or removed structure survives, and divided by the scale of error the degradation
    itself leaves at the same smoothing, :math:`s_n`:

    .. math:: z_i = \frac{\bar e_i}{\sqrt{s_n^2 + \tau^2}}, \qquad
              s_n = \sigma_n \lVert g \rVert_2 \ \text{(white noise of std } \sigma_n\text{)}
              \quad\text{or}\quad
              s_n = \Big(\tfrac{1}{|O|}\textstyle\sum_{i \in O} \big(g * ((y - x) \odot 1_O)\big)_i^2\Big)^{1/2}

    the second from the degraded input :math:`y` itself over its observed pixels :math:`O`
    (every pixel by default), so that what the raw degraded input already shows (low-dose
    noise, zero-filling aliasing) counts as explained, and observed pixels of an inpainting
    mask, which are exact, explain nothing.  With ``scale_window`` :math:`w_s`, the sums are
    local instead (a normalized convolution with a Gaussian :math:`h` of :math:`w_s` pixels,
    :math:`s_{n,i}^2 = (h * (\bar e_y^2 1_O))_i / (h * 1_O)_i` with :math:`\bar e_y = g*((y-x) \odot 1_O)`),
    for degradations whose error varies over the image (aliasing concentrated on the anatomy).  :math:`\tau` is a ``tolerance`` for errors too small
    to matter (in image units).  A pixel is *hallucinated* where :math:`z_i > z` (the
    reconstruction brighter than the truth beyond what the degradation explains: added
    structure) and *erased* where :math:`z_i < -z`.  Under pure white noise of level
    :math:`\sigma_n` and :math:`\tau = 0`, :math:`z_i \sim N(0, 1)`: a share
    :math:`2\,(1 - \Phi(z))` of pixels is flagged by chance (0.27% for :math:`z = 3`).

    Parameters
    ----------
    recon, clean : array (N, 1, H, W) or (N, H, W)
    noise_sigma : float or array (N,), optional
        :math:`\sigma_n` of each study's white noise.
    degraded : array like ``recon``, optional
        The degraded input :math:`y` (exactly one of ``noise_sigma`` and ``degraded``).
    observed : array like ``recon``, optional
        :math:`O`, nonzero at observed pixels (an inpainting mask); with ``degraded`` only.
    window : float
        Standard deviation of the smoothing Gaussian in pixels.
    z : float
        Threshold on :math:`|z_i|`.
    tolerance : float
        :math:`\tau`.
    scale_window : float, optional
        :math:`w_s` in pixels for a local scale from ``degraded``; ``None``: one scale per study.

    Returns
    -------
    (zmap, hallucinated, erased) : float64 (N, H, W), bool (N, H, W), bool (N, H, W)
    """
    x, y = _batch(recon, "recon"), _batch(clean, "clean")
    if x.shape != y.shape:
        raise ValueError(f"recon and clean must have the same shape, got {x.shape} and {y.shape}")
    if (noise_sigma is None) == (degraded is None):
        raise ValueError("give exactly one of noise_sigma (white-noise std) and degraded (the degraded input)")
    if window <= 0 or tolerance < 0:
        raise ValueError(f"window must be > 0 and tolerance >= 0, got {window} and {tolerance}")
    if noise_sigma is not None:
        sig = np.broadcast_to(np.asarray(noise_sigma, dtype=np.float64).reshape(-1), (len(x),))
        if (sig < 0).any() or not np.isfinite(sig).all():
            raise ValueError("noise_sigma must be finite and >= 0")
        delta = np.zeros((int(8 * window) + 1,) * 2)
        delta[len(delta) // 2, len(delta) // 2] = 1.0
        s_n = sig * float(np.sqrt((ndimage.gaussian_filter(delta, window, mode="constant") ** 2).sum()))
    else:
        d = _batch(degraded, "degraded")
        if d.shape != x.shape:
            raise ValueError(f"degraded must have the shape of recon {x.shape}, got {d.shape}")
        o = np.ones(d.shape) if observed is None else (_batch(observed, "observed") != 0).astype(np.float64)
        if o.shape != x.shape:
            raise ValueError(f"observed must have the shape of recon {x.shape}, got {o.shape}")
        se = _smooth((d - y) * o, window) ** 2 * o
        if scale_window is None:
            s_n = np.sqrt(se.reshape(len(x), -1).sum(1) / np.maximum(o.reshape(len(x), -1).sum(1), 1))
        else:
            if scale_window <= 0:
                raise ValueError(f"scale_window must be > 0 pixels, got {scale_window}")
            with np.errstate(invalid="ignore", divide="ignore"):
                loc = _smooth(se, scale_window) / _smooth(o, scale_window)
            s_n = np.sqrt(np.nan_to_num(loc, nan=0.0, posinf=0.0))
    s_n = np.asarray(s_n, dtype=np.float64)
    scale = np.sqrt(s_n**2 + tolerance**2)
    if (scale == 0).any():
        raise ValueError("the degradation explains no error and tolerance is 0: every error would count; give tolerance > 0")
    if scale.ndim == 1:
        scale = scale[:, None, None]
    zmap = _smooth(x - y, window) / scale
    return zmap, zmap > z, zmap < -z
