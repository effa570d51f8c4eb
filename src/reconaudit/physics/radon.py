"""Batched parallel-beam Radon transform and filtered back-projection in torch.

Both operators reproduce scikit-image's :func:`skimage.transform.radon` and
:func:`skimage.transform.iradon` (linear interpolation) but run on a whole batch at once: each is a
sparse matrix, built once per geometry (image size, angles, ``circle``, device) and cached, and
applied to the batch with one sparse-dense matrix product.

Geometry (scikit-image's conventions, angles in degrees)
-------------------------------------------------------
For a square (padded or cropped) image of side ``S`` with centre ``c = S // 2``, the projection at
angle ``theta`` and detector bin ``u`` is the sum along rows ``r`` of the image rotated by
``theta`` and sampled with bilinear interpolation:

.. math::

    p_\\theta(u) = \\sum_{r=0}^{S-1} f\\big(c - \\sin\\theta\\,(u - c) + \\cos\\theta\\,(r - c),\\;
                                      c + \\cos\\theta\\,(u - c) + \\sin\\theta\\,(r - c)\\big).

Filtered back-projection filters each projection along the detector axis in the Fourier domain
(ramp filter times a window, zero-padded to a power of two) and back-projects with linear
interpolation at :math:`t = x\\cos\\theta - y\\sin\\theta` (``x`` the column, ``y`` the row offset
from the centre), scaled by :math:`\\pi / (2 n_\\theta)`.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["radon", "iradon", "fourier_filter", "FILTERS", "radon_detector_count"]

log = logging.getLogger(__name__)

FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann", None)

_ANGLE_CHUNK = 8


def _angles_tuple(angles: Sequence[float] | np.ndarray | torch.Tensor | None, default_n: int) -> tuple[float, ...]:
    if angles is None:
        return tuple(float(a) for a in np.arange(default_n, dtype=np.float64))
    if isinstance(angles, torch.Tensor):
        angles = angles.detach().cpu().double().numpy()
    arr = np.asarray(angles, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError("angles: expected at least one projection angle (degrees), got an empty sequence")
    if not np.all(np.isfinite(arr)):
        raise ValueError("angles: every projection angle must be finite (degrees)")
    return tuple(float(a) for a in arr)


def _square_geometry(h: int, w: int, circle: bool) -> tuple[int, int, int]:
    """Side ``S`` of the square scikit-image projects, and the offsets of the image inside it.

    ``circle=True`` crops the centre square of side ``min(h, w)`` (offsets are negative crops);
    ``circle=False`` zero-pads to ``ceil(sqrt(2) * max(h, w))``.
    """
    if circle:
        s = min(h, w)
        off_r = -int(math.ceil((h - s) / 2))
        off_c = -int(math.ceil((w - s) / 2))
        return s, off_r, off_c
    diagonal = math.sqrt(2) * max(h, w)
    pads = [int(math.ceil(diagonal - n)) for n in (h, w)]
    s = h + pads[0]
    offs = [(n + p) // 2 - n // 2 for n, p in zip((h, w), pads)]
    return s, offs[0], offs[1]


def radon_detector_count(shape: tuple[int, int], circle: bool = True) -> int:
    """Number of detector bins :func:`radon` returns for an image of ``shape`` (H, W)."""
    return _square_geometry(int(shape[0]), int(shape[1]), circle)[0]


def _csr(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, val, size=size, check_invariants=False)


@functools.lru_cache(maxsize=4)
def _radon_matrix(h: int, w: int, angles: tuple[float, ...], circle: bool, device: str) -> torch.Tensor:
    """Sparse CSR (n_angles * S, h * w): row ``a * S + u`` holds the weights of projection ``(a, u)``."""
    s, off_r, off_c = _square_geometry(h, w, circle)
    c = s // 2
    n_pix = h * w
    idx = torch.arange(s, dtype=torch.float64)
    uu = (idx - c).view(1, 1, s)  # detector offset (output column of the rotated image)
    rr = (idx - c).view(1, s, 1)  # row offset along the ray
    th = torch.deg2rad(torch.tensor(angles, dtype=torch.float64))
    crows = [torch.zeros(1, dtype=torch.int64)]
    cols_all: list[torch.Tensor] = []
    vals_all: list[torch.Tensor] = []
    total = 0
    for a0 in range(0, len(angles), _ANGLE_CHUNK):
        t = th[a0 : a0 + _ANGLE_CHUNK].view(-1, 1, 1)
        na = t.shape[0]
        cos, sin = torch.cos(t), torch.sin(t)
        # sample (r, u) of the rotated image, in original-image coordinates
        xo = (c - off_c) + cos * uu + sin * rr  # (na, S_r, S_u)
        yo = (c - off_r) - sin * uu + cos * rr
        sel = (yo > -1) & (yo < h) & (xo > -1) & (xo < w)  # samples whose 2x2 neighbourhood meets the image
        a_i, _, u_i = torch.nonzero(sel, as_tuple=True)
        row = a_i * s + u_i
        xo, yo = xo[sel], yo[sel]
        x0, y0 = torch.floor(xo), torch.floor(yo)
        dx, dy = (xo - x0).to(torch.float32), (yo - y0).to(torch.float32)
        itype = torch.int32 if na * s * n_pix < 2**31 else torch.int64
        x0, y0 = x0.to(itype), y0.to(itype)
        keys, wts = [], []
        for oy, ox, wgt in ((0, 0, (1 - dy) * (1 - dx)), (0, 1, (1 - dy) * dx), (1, 0, dy * (1 - dx)), (1, 1, dy * dx)):
            yi, xi = y0 + oy, x0 + ox
            ok = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
            # out-of-image neighbours keep a clamped index and weight 0 (no boolean gather needed)
            keys.append(row.to(itype) * n_pix + yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1))
            wts.append(wgt * ok)
        ukey, inv = torch.unique(torch.cat(keys), sorted=True, return_inverse=True)
        val = torch.zeros(ukey.shape[0], dtype=torch.float32).index_add_(0, inv, torch.cat(wts))
        ukey = ukey.long()
        counts = torch.bincount(torch.div(ukey, n_pix, rounding_mode="floor"), minlength=na * s)
        crows.append(torch.cumsum(counts, 0) + total)
        total += int(ukey.shape[0])
        cols_all.append((ukey % n_pix).to(torch.int32))
        vals_all.append(val)
    crow = torch.cat(crows).to(torch.int32 if total < 2**31 - 1 else torch.int64)
    col = torch.cat(cols_all).to(crow.dtype)
    val = torch.cat(vals_all)
    mat = _csr(crow, col, val, (len(angles) * s, n_pix))
    log.debug("radon operator %dx%d, %d angles, circle=%s: %d non-zeros", h, w, len(angles), circle, total)
    return mat.to(device)


def fourier_filter(size: int, filter: str | None = "ramp") -> np.ndarray:  # noqa: A002 - skimage's word
    """Frequency response of the FBP filter on ``size`` (even) samples, as scikit-image builds it.

    The ramp is the discrete Fourier transform of the spatial ramp kernel
    :math:`h(0) = 1/4,\\ h(n) = -1/(\\pi n)^2` for odd ``n`` and 0 for even ``n`` (Kak & Slaney,
    eq. 61), times ``2``; the windows multiply it: ``shepp-logan`` :math:`\\mathrm{sinc}`,
    ``cosine`` :math:`\\sin`, ``hamming`` / ``hann`` the fftshifted window of length ``size``.
    ``None`` is the identity (plain back-projection).
    """
    if filter not in FILTERS:
        raise ValueError(f"filter: expected one of {FILTERS}, got {filter!r}")
    n = np.concatenate((np.arange(1, size / 2 + 1, 2, dtype=int), np.arange(size / 2 - 1, 0, -2, dtype=int)))
    f = np.zeros(size)
    f[0] = 0.25
    f[1::2] = -1 / (np.pi * n) ** 2
    filt = 2 * np.real(np.fft.fft(f))
    if filter == "shepp-logan":
        omega = np.pi * np.fft.fftfreq(size)[1:]
        filt[1:] *= np.sin(omega) / omega
    elif filter == "cosine":
        freq = np.linspace(0, np.pi, size, endpoint=False)
        filt *= np.fft.fftshift(np.sin(freq))
    elif filter == "hamming":
        filt *= np.fft.fftshift(np.hamming(size))
    elif filter == "hann":
        filt *= np.fft.fftshift(np.hanning(size))
    elif filter is None:
        filt[:] = 1
    return filt


@functools.lru_cache(maxsize=4)
def _backprojection_matrix(
    n_det: int, angles: tuple[float, ...], out: int, circle: bool, device: str
) -> torch.Tensor:
    """Sparse CSR (out * out, n_angles * n_det): linear-interpolation back-projection times pi / (2 A)."""
    radius = out // 2
    off = torch.arange(out, dtype=torch.float64) - radius
    yr = off.view(1, -1, 1)  # row offset
    xc = off.view(1, 1, -1)  # column offset
    inside = (yr**2 + xc**2 <= radius**2).reshape(-1) if circle else torch.ones(out * out, dtype=torch.bool)
    pix = torch.nonzero(inside).reshape(-1)
    th = torch.deg2rad(torch.tensor(angles, dtype=torch.float64))
    scale = math.pi / (2 * len(angles))
    n_ang, n_pix = len(angles), int(pix.shape[0])
    half = n_det // 2
    # Fixed structure: every kept pixel has two entries per angle (the two detector bins around
    # t), so the CSR rows need no sorting; out-of-range bins get weight 0.
    cols = torch.zeros(n_pix, n_ang, 2, dtype=torch.int64)
    vals = torch.zeros(n_pix, n_ang, 2, dtype=torch.float32)
    yp = yr.reshape(-1)[torch.div(pix, out, rounding_mode="floor")].view(-1, 1)
    xp = xc.reshape(-1)[pix % out].view(-1, 1)
    for a0 in range(0, n_ang, 4 * _ANGLE_CHUNK):
        t_ = th[a0 : a0 + 4 * _ANGLE_CHUNK].view(1, -1)
        pos = xp * torch.cos(t_) - yp * torch.sin(t_) + half  # fractional detector index (P, na)
        k0 = torch.floor(pos)
        fr = pos - k0
        k0 = k0.long()
        inside = (pos >= 0) & (pos <= n_det - 1)
        base = torch.arange(a0, a0 + t_.shape[1]).view(1, -1) * n_det
        for j, (k, wgt) in enumerate(((k0, 1 - fr), (k0 + 1, fr))):
            ok = inside & (k >= 0) & (k < n_det)
            cols[:, a0 : a0 + t_.shape[1], j] = base + torch.where(ok, k, 0)
            vals[:, a0 : a0 + t_.shape[1], j] = torch.where(ok, wgt * scale, 0.0).to(torch.float32)
    counts = torch.zeros(out * out, dtype=torch.int64)
    counts[pix] = 2 * n_ang
    crow = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0)])
    itype = torch.int32 if crow[-1] < 2**31 - 1 else torch.int64
    mat = _csr(crow.to(itype), cols.reshape(-1).to(itype), vals.reshape(-1), (out * out, n_ang * n_det))
    return mat.to(device)


def _check_batch(x: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what}: expected a torch.Tensor of shape (N, 1, H, W), got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"{what}: expected shape (N, 1, H, W), got {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        x = x.float()
    return x


def _spmm(mat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``mat @ dense`` in float32 (dense is (K, N))."""
    return torch.sparse.mm(mat, dense.to(torch.float32).contiguous())


def radon(
    images: torch.Tensor,
    angles: Sequence[float] | np.ndarray | torch.Tensor | None = None,
    *,
    circle: bool = True,
) -> torch.Tensor:
    """Parallel-beam Radon transform of a batch, as :func:`skimage.transform.radon`.

    Parameters
    ----------
    images:
        (N, 1, H, W) float tensor (CPU or CUDA).
    angles:
        Projection angles in degrees (default ``0, 1, ..., 179`` as scikit-image).
    circle:
        ``True``: the image is assumed zero outside its inscribed circle and the centre square of
        side ``min(H, W)`` is projected on ``min(H, W)`` detector bins. ``False``: the image is
        zero-padded to ``ceil(sqrt(2) * max(H, W))`` so every pixel is seen at every angle.

    Returns
    -------
    torch.Tensor
        Sinograms (N, 1, n_det, n_angles) float32 (scikit-image's layout: detector along rows,
        one column per angle), with
        :math:`p_\\theta(u) = \\sum_r f_{\\text{bilinear}}(\\text{rot}_\\theta(u, r))` (module docstring).
    """
    images = _check_batch(images, "radon: images")
    n, _, h, w = images.shape
    ang = _angles_tuple(angles, 180)
    mat = _radon_matrix(int(h), int(w), ang, bool(circle), str(images.device))
    s = mat.shape[0] // len(ang)
    out = _spmm(mat, images.reshape(n, h * w).t())  # (A * S, N)
    return out.reshape(len(ang), s, n).permute(2, 1, 0).unsqueeze(1).contiguous()


def iradon(
    sinograms: torch.Tensor,
    angles: Sequence[float] | np.ndarray | torch.Tensor | None = None,
    filter: str | None = "hann",  # noqa: A002 - skimage's word
    *,
    circle: bool = True,
    output_size: int | None = None,
) -> torch.Tensor:
    """Filtered back-projection of a batch of sinograms, as :func:`skimage.transform.iradon`.

    Each projection is zero-padded to :math:`\\max(64, 2^{\\lceil\\log_2 2 n_{det}\\rceil})` samples,
    multiplied in the Fourier domain by :func:`fourier_filter` and back-projected with linear
    interpolation:

    .. math::

        \\hat f(x, y) = \\frac{\\pi}{2 n_\\theta} \\sum_\\theta (q_\\theta)(x\\cos\\theta - y\\sin\\theta)

    with :math:`q_\\theta` the filtered projection.

    Parameters
    ----------
    sinograms:
        (N, 1, n_det, n_angles) float tensor.
    angles:
        Angles in degrees, one per column (default ``linspace(0, 180, n_angles, endpoint=False)``).
    filter:
        One of ``"ramp"``, ``"shepp-logan"``, ``"cosine"``, ``"hamming"``, ``"hann"`` or ``None``.
    circle:
        As in :func:`radon`; with ``True`` the result is zero outside the inscribed circle.
    output_size:
        Side of the square result (default ``n_det`` if ``circle`` else
        ``floor(n_det / sqrt(2))``).

    Returns
    -------
    torch.Tensor
        (N, 1, output_size, output_size) float32 reconstructions.
    """
    sinograms = _check_batch(sinograms, "iradon: sinograms")
    n, _, n_det, n_ang = sinograms.shape
    if angles is None:
        ang = tuple(float(a) for a in np.linspace(0, 180, n_ang, endpoint=False))
    else:
        ang = _angles_tuple(angles, n_ang)
    if len(ang) != n_ang:
        raise ValueError(f"iradon: got {len(ang)} angles for a sinogram with {n_ang} columns (n_angles); pass one per column")
    if filter not in FILTERS:
        raise ValueError(f"iradon: filter must be one of {FILTERS}, got {filter!r}")
    if output_size is None:
        output_size = n_det if circle else int(math.floor(math.sqrt(n_det**2 / 2.0)))
    sino = sinograms[:, 0].to(torch.float32)
    if circle:  # scikit-image pads the sinogram to the square's diagonal before filtering
        diagonal = int(math.ceil(math.sqrt(2) * n_det))
        before = diagonal // 2 - n_det // 2
        sino = torch.nn.functional.pad(sino, (0, 0, before, diagonal - n_det - before))
    n_full = sino.shape[1]
    padded = max(64, int(2 ** math.ceil(math.log2(2 * n_full))))
    filt = torch.as_tensor(fourier_filter(padded, filter), dtype=torch.float32, device=sino.device)
    spec = torch.fft.rfft(sino, n=padded, dim=1) * filt[: padded // 2 + 1].view(1, -1, 1)
    filtered = torch.fft.irfft(spec, n=padded, dim=1)[:, :n_full, :]  # (N, n_full, A)
    mat = _backprojection_matrix(n_full, ang, int(output_size), bool(circle), str(sinograms.device))
    dense = filtered.permute(2, 1, 0).reshape(n_ang * n_full, n)  # (A * n_det, N)
    out = _spmm(mat, dense)  # (out^2, N)
    return out.t().reshape(n, 1, output_size, output_size).contiguous()
