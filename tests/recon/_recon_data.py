"""Small synthetic problems for the reconstructor tests (32x32 smooth phantoms)."""

from __future__ import annotations

import torch

from reconaudit.physics.base import Degraded
from reconaudit.recon._fft import fft2c, ifft2c
from reconaudit.recon.base import PairSet


def phantoms(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth images in [0, 1]: a sum of 3 random Gaussian blobs on a disc, (n, 1, size, size)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    centres = torch.rand(n, 3, 2, generator=g) * 1.2 - 0.6
    widths = torch.rand(n, 3, generator=g) * 0.3 + 0.2
    amps = torch.rand(n, 3, generator=g) * 0.5 + 0.3
    d2 = (yy[None, None] - centres[..., 0, None, None]) ** 2 + (xx[None, None] - centres[..., 1, None, None]) ** 2
    img = (amps[..., None, None] * torch.exp(-d2 / (2 * widths[..., None, None] ** 2))).sum(1)
    disc = ((yy**2 + xx**2) < 0.85).float()
    img = 0.15 * disc + img * disc
    return (img / img.amax(dim=(-2, -1), keepdim=True).clamp(min=1e-6) * 0.9).unsqueeze(1).float()


def noisy(clean: torch.Tensor, sigma: float = 0.1, seed: int = 1) -> Degraded:
    g = torch.Generator().manual_seed(seed)
    return Degraded(clean + sigma * torch.randn(clean.shape, generator=g))


def mri(clean: torch.Tensor, acceleration: int = 4, seed: int = 2) -> Degraded:
    """Column-undersampled k-space with a fully sampled centre; one mask per study."""
    n, _, h, w = clean.shape
    g = torch.Generator().manual_seed(seed)
    cols = (torch.rand(n, w, generator=g) < (1.0 / acceleration)).float()
    c = w // 2
    cols[:, c - 3:c + 3] = 1.0
    mask = cols[:, None, None, :].expand(n, 1, h, w).contiguous()
    k = mask * fft2c(clean.to(torch.complex64))
    return Degraded(ifft2c(k).abs().float(), k.to(torch.complex64), mask)


def inpaint(clean: torch.Tensor, keep: float = 0.6, seed: int = 3) -> Degraded:
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(clean.shape, generator=g) < keep).float()
    return Degraded(clean * mask, None, mask)


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    mse = ((x.reshape(ref.shape) - ref) ** 2).mean(dim=(1, 2, 3))
    return float((10 * torch.log10(1.0 / mse)).mean())


def pairs(clean: torch.Tensor, degraded: Degraded) -> PairSet:
    return PairSet(degraded, clean, [f"s{i:03d}" for i in range(len(clean))])


