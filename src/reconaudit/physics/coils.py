"""Multi-coil MRI: coil sensitivities, the SENSE forward operator and its adjoint, batched in torch.

A receive array of :math:`C` coils sees the complex object :math:`x` through smooth sensitivities
:math:`S_c`; each coil's k-space is sampled on the same Cartesian mask :math:`M`:

.. math::

    y_c = M \\, \\mathcal{F} (S_c \\, x) + M n_c, \\qquad c = 1, \\dots, C,

with :math:`\\mathcal{F}` the orthonormal centred 2-D FFT (:func:`~reconaudit.physics.mri.fft2c`)
and :math:`n_c` white complex Gaussian noise. Written :math:`y = A x`, :math:`A = M F S`, the adjoint
is :math:`A^H y = \\sum_c \\overline{S_c} \\, \\mathcal{F}^{-1}(M y_c)`. Single-coil MRI is the
case :math:`C = 1`, :math:`S_1 = 1`.

Shapes: images (N, 1, H, W), sensitivities (N or 1, C, H, W) complex64, k-space (N, C, H, W)
complex64, masks (N or 1, 1, H, W) float32 (broadcast over coils).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from reconaudit.physics.mri import fft2c, ifft2c

__all__ = [
    "birdcage_maps",
    "calibration_size",
    "coil_adjoint",
    "coil_forward",
    "complex_noise",
    "estimate_sensitivities",
    "noise_sigma",
    "rss",
    "sensitivity_correlation",
    "smooth_phase",
]


def birdcage_maps(n_coils: int, shape: tuple[int, int], radius: float = 1.5) -> torch.Tensor:
    """Synthetic birdcage-like receive sensitivities (C, H, W) complex64, normalised to unit RSS.

    Coil :math:`c` sits on a circle of radius ``radius`` (in units of the half field of view) at
    angle :math:`\\theta_c = 2\\pi c / C`; with normalised pixel coordinates
    :math:`u = (x - W/2) / (W/2)`, :math:`v = (y - H/2) / (H/2)` and
    :math:`d_c = (u - r\\cos\\theta_c, v - r\\sin\\theta_c)`,

    .. math::

        \\tilde S_c = \\frac{1}{|d_c|} \\exp\\big(i (\\operatorname{atan2}(d_{c,u}, -d_{c,v}) - \\theta_c)\\big),
        \\qquad S_c = \\tilde S_c \\Big/ \\sqrt{\\textstyle\\sum_{c'} |\\tilde S_{c'}|^2}

    (the model of ``sigpy.mri.birdcage_maps``), so :math:`\\sum_c |S_c|^2 = 1` at every pixel, and
    in particular inside the object: the root-sum-of-squares of the coil images of :math:`x` is
    :math:`|x|`.
    """
    c_n, h, w = int(n_coils), int(shape[0]), int(shape[1])
    if c_n < 1:
        raise ValueError(f"birdcage_maps: n_coils must be >= 1, got {n_coils!r}")
    if not radius > 1.0:
        raise ValueError(f"birdcage_maps: radius must be > 1 (coils outside the field of view), got {radius!r}")
    c = torch.arange(c_n, dtype=torch.float64).view(-1, 1, 1)
    y = torch.arange(h, dtype=torch.float64).view(1, -1, 1)
    x = torch.arange(w, dtype=torch.float64).view(1, 1, -1)
    theta = c * (2 * math.pi / c_n)
    xc = (x - w / 2.0) / (w / 2.0) - radius * torch.cos(theta)
    yc = (y - h / 2.0) / (h / 2.0) - radius * torch.sin(theta)
    rr = torch.sqrt(xc**2 + yc**2)
    phi = torch.atan2(xc, -yc) - theta
    out = torch.polar(1.0 / rr, phi)
    out = out / torch.sqrt((out.abs() ** 2).sum(0, keepdim=True))
    return out.to(torch.complex64)


def smooth_phase(shape: tuple[int, int], generators: Sequence[torch.Generator], max_phase: float) -> torch.Tensor:
    """One smooth phase map per study, (N, 1, H, W) float32 radians, from each study's generator.

    .. math::

        \\varphi(u, v) = \\varphi_{\\max} \\, \\frac{a_0 + a_1 u + a_2 v + a_3 u v + a_4 (u^2 - v^2)}{5}

    with :math:`u, v \\in [-1, 1)` the normalised coordinates and :math:`a_k \\sim U(-1, 1)` drawn
    per study, so :math:`|\\varphi| \\le \\varphi_{\\max}`. A magnitude image times
    :math:`e^{i\\varphi}` has k-space without Hermitian symmetry, as measured data has.
    """
    h, w = int(shape[0]), int(shape[1])
    a = torch.stack([torch.rand(5, generator=g, dtype=torch.float64) * 2 - 1 for g in generators])  # (N, 5)
    v = ((torch.arange(h, dtype=torch.float64) - h // 2) / (h / 2.0)).view(1, -1, 1)
    u = ((torch.arange(w, dtype=torch.float64) - w // 2) / (w / 2.0)).view(1, 1, -1)
    basis = torch.stack(torch.broadcast_tensors(torch.ones_like(u * v), u + 0 * v, v + 0 * u, u * v, u**2 - v**2))
    phi = torch.einsum("nk,khw->nhw", a, basis[:, 0]) * (float(max_phase) / 5.0)
    return phi.unsqueeze(1).to(torch.float32)


def coil_forward(x: torch.Tensor, maps: torch.Tensor | None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """:math:`y_c = M \\mathcal{F}(S_c x)`: image (N, 1, H, W) to coil k-space (N, C, H, W) complex64.

    ``maps`` (N or 1, C, H, W) complex, or ``None`` for a single coil with :math:`S = 1`; ``mask``
    broadcastable to (N, 1, H, W) (``None``: full sampling).
    """
    x = x.to(torch.complex64)
    k = fft2c(x if maps is None else maps.to(x.device, torch.complex64) * x)
    return k if mask is None else k * mask.to(k.device, torch.float32)


def coil_adjoint(y: torch.Tensor, maps: torch.Tensor | None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """:math:`A^H y = \\sum_c \\overline{S_c} \\mathcal{F}^{-1}(M y_c)`: (N, C, H, W) to (N, 1, H, W) complex64."""
    y = y.to(torch.complex64)
    if mask is not None:
        y = y * mask.to(y.device, torch.float32)
    z = ifft2c(y)
    if maps is None:
        return z
    return (maps.to(z.device, torch.complex64).conj() * z).sum(1, keepdim=True)


def rss(coil_images: torch.Tensor) -> torch.Tensor:
    """Root-sum-of-squares coil combination :math:`\\sqrt{\\sum_c |z_c|^2}` over dim 1, kept (N, 1, H, W).

    For one coil this is :math:`|z|` (computed as ``abs`` so single-coil results are unchanged).
    """
    if coil_images.shape[1] == 1:
        return coil_images.abs()
    return torch.sqrt((coil_images.abs() ** 2).sum(1, keepdim=True))


def noise_sigma(coil_images: torch.Tensor, snr: float) -> torch.Tensor:
    """Per-study noise standard deviation for a stated per-coil SNR, shape (N, 1, 1, 1).

    .. math:: \\sigma = \\sqrt{\\tfrac{1}{C H W} \\textstyle\\sum_{c, r} |S_c x (r)|^2} \\Big/ \\mathrm{SNR}

    i.e. the RMS coil-image signal over coils and pixels divided by ``snr``; the same
    :math:`\\sigma` applies to every coil (uncorrelated receivers of equal noise). With the
    orthonormal FFT, k-space noise of standard deviation :math:`\\sigma` is image noise of the
    same :math:`\\sigma`.
    """
    if not snr > 0:
        raise ValueError(f"noise_sigma: snr must be > 0, got {snr!r}")
    power = (coil_images.abs() ** 2).mean(dim=(1, 2, 3), keepdim=True)
    return torch.sqrt(power) / float(snr)


def complex_noise(shape: tuple[int, ...], generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Unit-variance circular complex Gaussian noise, one study per generator: (N, *shape) complex64.

    Real and imaginary parts are independent :math:`\\mathcal{N}(0, 1/2)`, so :math:`E|n|^2 = 1`.
    """
    parts = [torch.randn(2, *shape, generator=g, dtype=torch.float32) for g in generators]
    ri = torch.stack(parts) * math.sqrt(0.5)
    return torch.complex(ri[:, 0], ri[:, 1])


def calibration_size(mask: torch.Tensor) -> torch.Tensor:
    """Side of the largest fully sampled square block centred on the k-space centre, per study.

    ``mask`` (N, 1, H, W) (1 = sampled); the centre is ``(H // 2, W // 2)``. Returns a LongTensor (N,)
    (0 when the centre itself is not sampled).
    """
    m = mask.to(torch.bool)[:, 0]
    n, h, w = m.shape
    cy, cx = h // 2, w // 2
    size = torch.zeros(n, dtype=torch.long)
    ok = torch.ones(n, dtype=torch.bool)
    for s in range(1, min(h, w) + 1):
        top, left = cy - s // 2, cx - s // 2
        block = m[:, top : top + s, left : left + s].flatten(1).all(1)
        ok = ok & block
        if not bool(ok.any()):
            break
        size = torch.where(ok, torch.full_like(size, s), size)
    return size


def estimate_sensitivities(
    kspace: torch.Tensor, mask: torch.Tensor, *, threshold: float = 0.0, min_calibration: int = 2
) -> torch.Tensor:
    """Coil sensitivities from the fully sampled calibration region by the low-resolution ratio method.

    The centred square of fully sampled k-space of side :math:`s` (:func:`calibration_size`) is
    tapered by a separable Hann window :math:`w(k) = \\cos^2(\\pi k / s)` for :math:`|k| < s/2`,
    giving low-resolution coil images :math:`z_c = \\mathcal{F}^{-1}(w \\, y_c)`; the estimate is

    .. math:: \\hat S_c = z_c \\Big/ \\sqrt{\\textstyle\\sum_{c'} |z_{c'}|^2}

    (the "sum-of-squares" normalisation of SENSE, Pruessmann et al. 1999), so :math:`\\sum_c
    |\\hat S_c|^2 = 1`. The estimate equals the true maps up to a common smooth phase per pixel
    (the object's low-resolution phase), which a SENSE reconstruction absorbs into the image
    phase. Pixels where the low-resolution RSS is below ``threshold`` times its maximum get
    :math:`\\hat S = 0` (outside the object).

    Parameters
    ----------
    kspace:
        Measured coil k-space (N, C, H, W) complex.
    mask:
        Sampling mask (N or 1, 1, H, W).
    threshold:
        Relative RSS threshold for zeroing the maps outside the object (0 keeps every pixel).
    min_calibration:
        Fewest calibration lines accepted.

    Raises
    ------
    ValueError
        When a study has fewer than ``min_calibration`` fully sampled centre lines.
    """
    n, _, h, w = kspace.shape
    m = mask.expand(n, 1, h, w) if mask.shape[0] == 1 else mask
    s = calibration_size(m.cpu()).to(torch.float64)
    if bool((s < min_calibration).any()):
        i = int(torch.nonzero(s < min_calibration)[0])
        raise ValueError(
            f"estimate_sensitivities: study {i} has a fully sampled calibration region of {int(s[i])} lines, "
            f"fewer than {min_calibration}; raise center_fraction (or give the sensitivities)"
        )
    ky = (torch.arange(h, dtype=torch.float64) - h // 2).view(1, -1, 1)
    kx = (torch.arange(w, dtype=torch.float64) - w // 2).view(1, 1, -1)
    half = (s / 2.0).view(-1, 1, 1)
    wy = torch.where(ky.abs() < half, torch.cos(math.pi * ky / s.view(-1, 1, 1)) ** 2, torch.zeros(()))
    wx = torch.where(kx.abs() < half, torch.cos(math.pi * kx / s.view(-1, 1, 1)) ** 2, torch.zeros(()))
    window = (wy * wx).unsqueeze(1).to(kspace.device, torch.float32)  # (N, 1, H, W)
    z = ifft2c(kspace.to(torch.complex64) * window)
    norm = rss(z) if z.shape[1] > 1 else z.abs()
    maps = z / norm.clamp_min(torch.finfo(torch.float32).tiny)
    if threshold > 0:
        keep = norm >= threshold * norm.amax(dim=(2, 3), keepdim=True)
        maps = maps * keep
    return maps.to(torch.complex64)


def sensitivity_correlation(est: torch.Tensor, true: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised correlation of two sets of coil maps (N, C, H, W), after removing each pixel's common phase; (N,).

    Every calibration method recovers the maps only up to a common phase per pixel, so both map
    sets are first referred to the phase of their first coil, :math:`S'_c = S_c \\, e^{-i \\arg S_1}`;
    then, over the pixels :math:`R` of ``region`` (bool, broadcastable to (N, 1, H, W); default all),

    .. math::

        \\rho = \\frac{\\big|\\sum_{r \\in R} \\sum_c \\hat S'_c(r) \\overline{S'_c(r)}\\big|}
                   {\\sqrt{\\sum_{r \\in R} \\sum_c |\\hat S_c(r)|^2 \\; \\sum_{r \\in R} \\sum_c |S_c(r)|^2}}

    :math:`\\rho = 1` iff :math:`\\hat S' = \\alpha S'` on :math:`R` for one complex constant :math:`\\alpha`.
    """
    r = torch.ones_like(est[:, :1].real, dtype=torch.bool) if region is None else region.to(torch.bool)
    r = r.expand(est.shape[0], 1, *est.shape[2:]).to(torch.float32)

    def refer(s: torch.Tensor) -> torch.Tensor:
        ref = s[:, :1]
        return s * (ref.conj() / ref.abs().clamp_min(1e-30))

    e, t = refer(est.to(torch.complex64)), refer(true.to(torch.complex64))
    num = ((e * t.conj()).sum(1, keepdim=True) * r).sum(dim=(1, 2, 3)).abs()
    ea = ((est.abs() ** 2).sum(1, keepdim=True) * r).sum(dim=(1, 2, 3))
    ta = ((true.abs() ** 2).sum(1, keepdim=True) * r).sum(dim=(1, 2, 3))
    return num / torch.sqrt(ea * ta).clamp_min(1e-30)
