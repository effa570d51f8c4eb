"""Orthonormal centred 2-D FFT and k-space data consistency.

Same convention as :mod:`reconaudit.physics`: ``fft2c(x) = fftshift(fft2(ifftshift(x), norm="ortho"))``
over the last two dimensions, so the zero frequency sits at the array centre and the transform is
unitary (Parseval: ``||fft2c(x)|| = ||x||``).
"""

from __future__ import annotations

import torch

from reconaudit.physics.base import Degraded

_DIMS = (-2, -1)


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D FFT over the last two dims: ``F x = shift(FFT(ishift(x))) / sqrt(HW)``."""
    x = torch.fft.ifftshift(x, dim=_DIMS)
    return torch.fft.fftshift(torch.fft.fft2(x, dim=_DIMS, norm="ortho"), dim=_DIMS)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft2c`: ``F^H k = shift(IFFT(ishift(k))) * sqrt(HW)``."""
    k = torch.fft.ifftshift(k, dim=_DIMS)
    return torch.fft.fftshift(torch.fft.ifft2(k, dim=_DIMS, norm="ortho"), dim=_DIMS)


def kspace_consistency(x: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Replace the sampled k-space locations of ``x`` with the measurement; return the complex image.

    Implements ``z = F^H[(1 - m) F x + m y]`` with ``m`` the sampling mask and ``y`` the measured
    k-space, so ``m * F z == m * y`` exactly (up to float rounding).  Differentiable in ``x``.
    """
    m = mask.to(x.device, torch.float32)
    kx = fft2c(x.to(torch.complex64))
    return ifft2c((1.0 - m) * kx + m * kspace.to(x.device, torch.complex64))


def coil_kspace_consistency(x: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Multi-coil data consistency of an image estimate; return the complex coil-combined image.

    ``z = sum_c conj(S_c) F^H[(1 - m) F (S_c x) + m y_c]`` with ``S`` estimated from the calibration
    region of ``kspace`` (N, C, H, W) (:func:`reconaudit.physics.coils.estimate_sensitivities`, unit
    RSS; the maps carry the object's low-resolution phase, so a magnitude ``x`` is consistent
    with phase-ful data).  Differentiable in ``x``.
    """
    from reconaudit.physics.coils import coil_adjoint, coil_forward, estimate_sensitivities

    k = kspace.to(x.device, torch.complex64)
    m = mask.to(x.device, torch.float32)
    maps = estimate_sensitivities(k.detach(), m)
    kx = coil_forward(x.to(torch.complex64), maps)
    return coil_adjoint((1.0 - m) * kx + m * k, maps)


def apply_data_consistency(x: torch.Tensor, degraded: Degraded) -> torch.Tensor:
    """Make an image estimate consistent with what was measured.

    MRI (``kspace`` and ``mask`` present): the magnitude ``|F^H[(1 - m) F x + m y]|`` (one coil), or
    of :func:`coil_kspace_consistency` (several coils).
    Inpainting (``mask`` but no ``kspace``): ``(1 - m) x + m f`` with ``f`` the observed image.
    Otherwise (X-ray, noise) ``x`` unchanged.  Differentiable in ``x``.
    """
    if degraded.mask is None:
        return x
    if degraded.kspace is not None:
        if degraded.kspace.shape[1] > 1:
            return coil_kspace_consistency(x, degraded.kspace, degraded.mask).abs().to(torch.float32)
        return kspace_consistency(x, degraded.kspace, degraded.mask).abs().to(torch.float32)
    m = degraded.mask.to(x.device, torch.float32)
    return (1.0 - m) * x + m * degraded.image.to(x.device, x.dtype)
