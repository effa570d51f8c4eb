"""Image quality per study: PSNR, SSIM and NMSE of a reconstruction against the clean image.

All functions take a batch ``(N, 1, H, W)`` or ``(N, H, W)`` (numpy or torch), compare study by
study and return a float64 array of length ``N``.  ``mask=`` (same shape, boolean) restricts the
comparison to the pixels of a body or brain mask.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._utils import to_numpy

__all__ = ["psnr", "ssim", "nmse"]


def _batch(x: object, name: str) -> np.ndarray:
    arr = to_numpy(x, name).astype(np.float64)
    if arr.ndim == 4:
        if arr.shape[1] != 1:
            raise ValueError(f"{name}: expected shape (N, 1, H, W), got {arr.shape} (one channel per study)")
        arr = arr[:, 0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{name}: expected a batch (N, 1, H, W) or (N, H, W), got shape {arr.shape}")
    return arr


def _pair(x: object, y: object, mask: object | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    xa, ya = _batch(x, "x"), _batch(y, "y")
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same shape, got {xa.shape} and {ya.shape}")
    m = None
    if mask is not None:
        m = _batch(mask, "mask") != 0
        if m.shape != xa.shape:
            raise ValueError(f"mask: expected the shape of x {xa.shape}, got {m.shape}")
    return xa, ya, m


def _masked_mean(values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if mask is None:
        return values.reshape(len(values), -1).mean(axis=1)
    n = mask.reshape(len(mask), -1).sum(axis=1)
    s = np.where(mask, values, 0.0).reshape(len(values), -1).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def psnr(x: object, y: object, *, data_range: float = 1.0, mask: object | None = None) -> np.ndarray:
    r"""Peak signal-to-noise ratio per study (scikit-image convention).

    .. math:: \mathrm{PSNR} = 10 \log_{10} \frac{R^2}{\frac{1}{|M|}\sum_{p \in M} (x_p - y_p)^2}

    with data range :math:`R` and :math:`M` all pixels, or the pixels of ``mask``.

    Parameters
    ----------
    x : array or tensor, shape (N, 1, H, W) or (N, H, W)
        Reconstructions (test images).
    y : array or tensor, same shape
        Clean reference images.
    data_range : float
        :math:`R`; 1 for images in [0, 1].
    mask : array or tensor of bool, same shape, optional
        Pixels to compare (e.g. the body mask).  A study with an empty mask gets NaN.

    Returns
    -------
    numpy.ndarray of shape (N,)
        PSNR in dB (``inf`` when x equals y on the compared pixels).
    """
    xa, ya, m = _pair(x, y, mask)
    mse = _masked_mean((xa - ya) ** 2, m)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range**2 / mse)


def nmse(x: object, y: object, *, mask: object | None = None) -> np.ndarray:
    r"""Normalised mean squared error per study.

    .. math:: \mathrm{NMSE} = \frac{\sum_{p \in M} (x_p - y_p)^2}{\sum_{p \in M} y_p^2}

    Parameters
    ----------
    x, y : array or tensor, shape (N, 1, H, W) or (N, H, W)
        Reconstructions and clean references.
    mask : array or tensor of bool, optional
        Pixels :math:`M` to compare; all pixels by default.

    Returns
    -------
    numpy.ndarray of shape (N,)
        NMSE; NaN where the reference is zero on every compared pixel.
    """
    xa, ya, m = _pair(x, y, mask)
    if m is None:
        m = np.ones(xa.shape, dtype=bool)
    num = np.where(m, (xa - ya) ** 2, 0.0).reshape(len(xa), -1).sum(axis=1)
    den = np.where(m, ya**2, 0.0).reshape(len(xa), -1).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def ssim_map(
    x: object, y: object, *, data_range: float = 1.0, win_size: int = 7, k1: float = 0.01, k2: float = 0.03
) -> np.ndarray:
    r"""SSIM map of each study, batched (scikit-image's uniform-window convention).

    With :math:`\mu, \sigma` the local means and sample (co)variances over a ``win_size``-square
    uniform window (``scipy.ndimage.uniform_filter``, reflect padding, covariance normalised by
    :math:`P/(P-1)` with :math:`P` pixels in the window), :math:`C_1=(k_1R)^2`, :math:`C_2=(k_2R)^2`:

    .. math:: S = \frac{(2\mu_x\mu_y + C_1)(2\sigma_{xy} + C_2)}
                       {(\mu_x^2 + \mu_y^2 + C_1)(\sigma_x^2 + \sigma_y^2 + C_2)}

    Returns
    -------
    numpy.ndarray of shape (N, H, W)
    """
    xa, ya, _ = _pair(x, y, None)
    if win_size % 2 != 1 or win_size < 3:
        raise ValueError(f"win_size: expected an odd integer >= 3, got {win_size}")
    if min(xa.shape[1:]) < win_size:
        raise ValueError(f"images of size {xa.shape[1:]} are smaller than win_size={win_size}")
    size = (1, win_size, win_size)

    def filt(a: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(a, size=size, mode="reflect")

    npix = win_size**2
    cov_norm = npix / (npix - 1)
    ux, uy = filt(xa), filt(ya)
    uxx, uyy, uxy = filt(xa * xa), filt(ya * ya), filt(xa * ya)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    a1, a2 = 2 * ux * uy + c1, 2 * vxy + c2
    b1, b2 = ux**2 + uy**2 + c1, vx + vy + c2
    return (a1 * a2) / (b1 * b2)


def ssim(
    x: object, y: object, *, data_range: float = 1.0, win_size: int = 7, mask: object | None = None
) -> np.ndarray:
    r"""Structural similarity per study, equal to ``skimage.metrics.structural_similarity``.

    Uses scikit-image's conventions: ``data_range=1``, ``gaussian_weights=False``, a 7x7 uniform
    window, :math:`K_1=0.01`, :math:`K_2=0.03`, sample covariance, and the mean of the SSIM map
    (see :func:`ssim_map`) after cropping a border of ``(win_size - 1) // 2`` pixels:

    .. math:: \mathrm{SSIM} = \frac{1}{|M|} \sum_{p \in M} S_p

    where :math:`M` is the cropped interior, intersected with ``mask`` when one is given.

    Parameters
    ----------
    x, y : array or tensor, shape (N, 1, H, W) or (N, H, W)
        Reconstructions and clean references.
    data_range : float
        Dynamic range :math:`R` of the images.
    win_size : int
        Side of the uniform window (odd).
    mask : array or tensor of bool, optional
        Pixels over which the SSIM map is averaged; a study whose mask has no interior pixel gets NaN.

    Returns
    -------
    numpy.ndarray of shape (N,)
    """
    xa, ya, m = _pair(x, y, mask)
    s = ssim_map(xa, ya, data_range=data_range, win_size=win_size)
    pad = (win_size - 1) // 2
    interior = np.zeros(s.shape, dtype=bool)
    interior[:, pad : s.shape[1] - pad, pad : s.shape[2] - pad] = True
    if m is not None:
        interior &= m
    return _masked_mean(s, interior)
