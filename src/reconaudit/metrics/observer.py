"""Task-based image quality: the channelized Hotelling observer (CHO) with Laguerre-Gauss channels.

The model observer of CT low-contrast detectability (the FDA LCD-CT tool's LG CHO): a linear
observer that sees an image through a few rotationally symmetric channels centred on the known
signal location and applies the Hotelling (prewhitening) template in channel space.  It is given
signal-present / signal-absent image pairs and reports the detectability index :math:`d'` and AUC.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import special, stats

from ._utils import to_numpy

__all__ = ["CHOResult", "laguerre_gauss_channels", "channelized_hotelling"]


class CHOResult(NamedTuple):
    """Outcome of :func:`channelized_hotelling`."""

    d_prime: float
    """Detectability index from the test statistics, :math:`(\\bar t_1 - \\bar t_0)/\\sqrt{(s_1^2 + s_0^2)/2}`."""
    auc: float
    """Empirical area under the ROC curve of the test statistics (Mann-Whitney)."""
    d_prime_channels: float
    """Channel-space :math:`\\sqrt{\\Delta\\bar v^\\top S^{-1} \\Delta\\bar v}` of the training images."""
    template: np.ndarray
    """The observer's image-domain template :math:`U S^{-1} \\Delta\\bar v` (H, W)."""


def laguerre_gauss_channels(
    shape: tuple[int, int], n_channels: int = 6, width: float = 8.0, center: tuple[float, float] | None = None
) -> np.ndarray:
    r"""Laguerre-Gauss channels centred on the signal location, as columns of ``(H*W, n_channels)``.

    .. math:: u_p(r) = \frac{\sqrt 2}{a} \exp\!\Big(-\frac{\pi r^2}{a^2}\Big) L_p\!\Big(\frac{2\pi r^2}{a^2}\Big),
              \quad p = 0, \dots, P-1

    with :math:`L_p` the Laguerre polynomials, :math:`a` the ``width`` in pixels and :math:`r` the
    distance to ``center`` (row, column; the image centre by default).  They are orthonormal in
    the continuum.  A Gaussian signal :math:`\exp(-r^2 / 2b^2)` lies in the span of the first
    channel when :math:`a^2 = 2\pi b^2`.
    """
    h, w = int(shape[0]), int(shape[1])
    if n_channels < 1 or width <= 0:
        raise ValueError(f"need n_channels >= 1 and width > 0, got {n_channels} and {width}")
    cy, cx = ((h - 1) / 2, (w - 1) / 2) if center is None else (float(center[0]), float(center[1]))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    q = 2 * np.pi * ((yy - cy) ** 2 + (xx - cx) ** 2) / width**2
    chans = [np.sqrt(2) / width * np.exp(-q / 2) * special.eval_laguerre(p, q) for p in range(n_channels)]
    return np.stack([c.ravel() for c in chans], axis=1)


def _flat(a: object, name: str) -> tuple[np.ndarray, tuple[int, int]]:
    x = np.asarray(to_numpy(a, name), dtype=np.float64)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3 or len(x) < 3:
        raise ValueError(f"{name}: expected >= 3 images (N, 1, H, W) or (N, H, W), got shape {x.shape}")
    return x.reshape(len(x), -1), (int(x.shape[1]), int(x.shape[2]))


def channelized_hotelling(
    signal_present: object, signal_absent: object, channels: np.ndarray, *, train_fraction: float = 0.5,
    seed: int = 0,
) -> CHOResult:
    r"""Channelized Hotelling observer: :math:`d'` and AUC of detecting a known signal.

    Channel outputs :math:`v = U^\top g` of every image :math:`g`.  On a training share of the
    pairs: the mean difference :math:`\Delta\bar v = \bar v_1 - \bar v_0` and the average channel
    covariance :math:`S = (S_1 + S_0)/2`; the template :math:`w = S^{-1}\Delta\bar v`.  On the rest,
    the test statistic :math:`t = w^\top v` gives

    .. math:: d' = \frac{\bar t_1 - \bar t_0}{\sqrt{(s_{t_1}^2 + s_{t_0}^2)/2}}, \qquad
              \mathrm{AUC} = P(t_1 > t_0) + \tfrac12 P(t_1 = t_0)

    (hold-out estimates, free of the resubstitution bias).  ``train_fraction=1`` trains and tests
    on every image.  For a signal :math:`s` in white noise of std :math:`\sigma` that lies in the
    channels' span, :math:`d' = \lVert s \rVert_2 / \sigma` (the ideal observer's).

    Parameters
    ----------
    signal_present, signal_absent : array (N, 1, H, W) or (N, H, W)
        Images with and without the signal (the same N not required).
    channels : array (H*W, C)
        E.g. :func:`laguerre_gauss_channels`.
    train_fraction : float in (0, 1]
    seed : int
        Seed of the random train / test assignment.

    Returns
    -------
    CHOResult
    """
    (g1, shape), (g0, _) = _flat(signal_present, "signal_present"), _flat(signal_absent, "signal_absent")
    u = np.asarray(channels, dtype=np.float64)
    if u.ndim != 2 or u.shape[0] != g1.shape[1] or g0.shape[1] != g1.shape[1]:
        raise ValueError(f"channels must be (H*W, C) = ({g1.shape[1]}, C), images {g1.shape}, {g0.shape}; got {u.shape}")
    if not 0 < train_fraction <= 1:
        raise ValueError(f"train_fraction must lie in (0, 1], got {train_fraction}")
    v1, v0 = g1 @ u, g0 @ u
    rng = np.random.default_rng(seed)

    def split(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if train_fraction == 1:
            return v, v
        idx = rng.permutation(len(v))
        k = max(2, int(round(train_fraction * len(v))))
        if len(v) - k < 2:
            raise ValueError(f"train_fraction={train_fraction} leaves fewer than 2 test images of {len(v)}")
        return v[idx[:k]], v[idx[k:]]

    tr1, te1 = split(v1)
    tr0, te0 = split(v0)
    dv = tr1.mean(0) - tr0.mean(0)
    s = (np.cov(tr1, rowvar=False).reshape(u.shape[1], -1) + np.cov(tr0, rowvar=False).reshape(u.shape[1], -1)) / 2
    w = np.linalg.lstsq(s, dv, rcond=None)[0]
    t1, t0 = te1 @ w, te0 @ w
    d = float((t1.mean() - t0.mean()) / np.sqrt((t1.var(ddof=1) + t0.var(ddof=1)) / 2))
    ranks = stats.rankdata(np.concatenate([t0, t1]))
    auc = float((ranks[len(t0):].sum() - len(t1) * (len(t1) + 1) / 2) / (len(t1) * len(t0)))
    template = (u @ w).reshape(shape)
    return CHOResult(d, auc, float(np.sqrt(max(dv @ w, 0.0))), template)
