"""Classical (non-learned) reconstruction: total-variation regularisation, batched in torch.

* Denoising (X-ray, noise; no mask): Chambolle's projection algorithm (J. Math. Imaging Vis. 20,
  2004) for ``min_u ||u - f||^2 / 2 + w TV(u)``, the same iteration as
  ``skimage.restoration.denoise_tv_chambolle`` (run for a fixed number of iterations).
* MRI (``kspace`` and ``mask``): ``min_x ||M F x - y||^2 / 2 + w TV(x)`` over complex images by the
  primal-dual algorithm of Chambolle & Pock (2011), whose data prox is exact in k-space,
  ``prox(v) = F^H[(F v + tau M y) / (1 + tau M)]``; the magnitude is returned.
* Multi-coil MRI (``kspace`` (N, C, H, W), C > 1): ``min_x ||M F S x - y||^2 / 2 + w TV(x)`` with the
  sensitivities ``S`` estimated from the calibration region, by Chambolle-Pock on ``K = [grad; A]``,
  ``A = M F S`` (:func:`tv_sense_primal_dual`).
* Inpainting (``mask`` only): ``min_x ||M (x - f)||^2 / 2 + w TV(x)`` by the same primal-dual
  iteration (observed pixels are kept up to the weight; holes are filled by TV).

``TV(u) = sum_pixels sqrt((D_h u)^2 + (D_w u)^2)`` with forward differences (zero at the last
row/column, Neumann boundary).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field

from reconaudit.physics.base import Degraded
from reconaudit.progress import task
from reconaudit.recon._fft import fft2c, ifft2c
from reconaudit.recon.base import Reconstructor
from reconaudit.recon.training import ParamsMixin, ReconParams, as_samples, check_degraded


def grad2d(u: torch.Tensor) -> torch.Tensor:
    """Forward differences over the last two dims: (..., H, W) -> (..., 2, H, W), zero at the far edge."""
    g = torch.zeros(*u.shape[:-2], 2, *u.shape[-2:], dtype=u.dtype, device=u.device)
    g[..., 0, :-1, :] = u[..., 1:, :] - u[..., :-1, :]
    g[..., 1, :, :-1] = u[..., :, 1:] - u[..., :, :-1]
    return g


def grad2d_adjoint(p: torch.Tensor) -> torch.Tensor:
    """The adjoint of :func:`grad2d` (minus the discrete divergence): ``<grad u, p> = <u, grad^T p>``.

    Exact for ``p`` whose far-edge entries are zero, as every ``p`` built from :func:`grad2d` is.
    """
    ph, pw = p[..., 0, :, :], p[..., 1, :, :]
    d = -(ph + pw)
    d[..., 1:, :] = d[..., 1:, :] + ph[..., :-1, :]
    d[..., :, 1:] = d[..., :, 1:] + pw[..., :, :-1]
    return d


def estimate_noise_sigma(images: torch.Tensor) -> torch.Tensor:
    """Per-study noise standard deviation by Donoho's wavelet estimator, batched.

    sigma_hat = median(|HH|) / 0.6745 over the finest diagonal Haar detail coefficients
    HH = (x[2i, 2j] - x[2i, 2j+1] - x[2i+1, 2j] + x[2i+1, 2j+1]) / 2, which are N(0, sigma^2) for white
    Gaussian noise and nearly zero on smooth image content.  Returns shape (N,) for (N, 1, H, W) input.
    """
    x = images.to(torch.float32)
    h, w = (x.shape[-2] // 2) * 2, (x.shape[-1] // 2) * 2
    x = x[..., :h, :w]
    hh = (x[..., 0::2, 0::2] - x[..., 0::2, 1::2] - x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 2
    return hh.abs().flatten(1).median(dim=1).values / 0.6745


def tv_denoise_chambolle(
    image: torch.Tensor, weight: float | torch.Tensor = 0.1, iterations: int = 100
) -> torch.Tensor:
    """Batched Chambolle TV denoising of (..., H, W) images.

    Iterates ``u = f + grad^T p``; ``p <- (p - tau grad u) / (1 + (tau / w) |grad u|)`` with ``tau = 1/4``
    (the dual projection algorithm; identical updates to ``skimage.restoration.denoise_tv_chambolle``
    with ``eps = 0`` and ``max_num_iter = iterations``).  ``weight`` is a number or a tensor
    broadcastable to the images (one weight per study, e.g. shape (N, 1, 1, 1)).
    """
    if not isinstance(weight, torch.Tensor):
        if weight <= 0:
            return image.clone()
    else:
        weight = weight.to(image.device, torch.float32).clamp_min(1e-8)
        while weight.ndim < image.ndim:
            weight = weight.unsqueeze(-1)
        weight = weight.unsqueeze(-3)  # the gradient-component axis of the dual variable
    f = image.to(torch.float32)
    p = torch.zeros(*f.shape[:-2], 2, *f.shape[-2:], dtype=f.dtype, device=f.device)
    tau = 0.25
    out = f
    for i in range(iterations):
        out = f + grad2d_adjoint(p) if i > 0 else f
        g = grad2d(out)
        norm = torch.sqrt((g * g).sum(dim=-3, keepdim=True))
        p = (p - tau * g) / (1.0 + (tau / weight) * norm)
    return out


def tv_primal_dual(
    observed: torch.Tensor,
    mask: torch.Tensor,
    weight: float,
    iterations: int,
    *,
    kspace: bool,
    init: torch.Tensor,
) -> torch.Tensor:
    """Chambolle-Pock for ``min_x ||M (T x - y)||^2 / 2 + w TV(x)`` with ``T = F`` (``kspace=True``) or identity.

    Steps ``sigma = tau = 0.99 / sqrt(8)`` (``||grad||^2 <= 8``); ``p <- proj_{|p| <= w}(p + sigma grad x_bar)``,
    ``x+ = prox_{tau G}(x - tau grad^T p)``, ``x_bar = 2 x+ - x``.  ``observed`` is ``y`` (complex k-space or
    the observed image), ``init`` the starting image.
    """
    tau = sigma = 0.99 / math.sqrt(8.0)
    m = mask.to(observed.device, torch.float32)
    x = init.clone()
    xbar = x.clone()
    p = torch.zeros(*x.shape[:-2], 2, *x.shape[-2:], dtype=x.dtype, device=x.device)
    for _ in range(iterations):
        p = p + sigma * grad2d(xbar)
        mag = torch.sqrt((p.abs() ** 2).sum(dim=-3, keepdim=True))
        p = p / torch.clamp(mag / weight, min=1.0)
        v = x - tau * grad2d_adjoint(p)
        if kspace:
            xn = ifft2c((fft2c(v) + tau * m * observed) / (1.0 + tau * m))
        else:
            xn = (v + tau * m * observed) / (1.0 + tau * m)
        xbar = 2.0 * xn - x
        x = xn
    return x


def tv_sense_primal_dual(
    kspace: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor, weight: float, iterations: int
) -> torch.Tensor:
    """Chambolle-Pock for ``min_x ||A x - y||^2 / 2 + w TV(x)``, ``A = M F S`` (multi-coil), batched.

    Both terms are dualised (``K = [grad; A]``, ``||K||^2 <= 8 + ||A||^2 <= 9`` since
    ``sum_c |S_c|^2 <= 1``), so each step is explicit: ``sigma = tau = 0.99 / 3``;
    ``p <- proj_{|p| <= w}(p + sigma grad x_bar)``, ``q <- (q + sigma (A x_bar - y)) / (1 + sigma)``,
    ``x+ = x - tau (grad^T p + A^H q)``, ``x_bar = 2 x+ - x``.  Starts from ``A^H y``; returns the
    complex image (N, 1, H, W).
    """
    from reconaudit.physics.coils import coil_adjoint, coil_forward

    tau = sigma = 0.99 / 3.0
    x = coil_adjoint(kspace, maps, mask)
    xbar = x.clone()
    p = torch.zeros(*x.shape[:-2], 2, *x.shape[-2:], dtype=x.dtype, device=x.device)
    q = torch.zeros_like(kspace)
    for _ in range(iterations):
        p = p + sigma * grad2d(xbar)
        mag = torch.sqrt((p.abs() ** 2).sum(dim=-3, keepdim=True))
        p = p / torch.clamp(mag / weight, min=1.0)
        q = (q + sigma * (coil_forward(xbar, maps, mask) - kspace)) / (1.0 + sigma)
        xn = x - tau * (grad2d_adjoint(p) + coil_adjoint(q, maps, mask))
        xbar = 2.0 * xn - x
        x = xn
    return x


class ClassicalReconstructor(ParamsMixin, Reconstructor):
    """Total-variation reconstruction for every degradation (see the module docstring).

    Parameters (``Params``)
    -----------------------
    weight:
        TV weight for denoising (X-ray / noise): a number (0.1 is skimage's default), or ``"auto"``
        (default): ``weight_scale`` times each study's noise level estimated by
        :func:`estimate_noise_sigma`, so the smoothing follows the dose instead of over-smoothing
        high-dose and under-smoothing low-dose studies.
    weight_scale:
        Multiplier of the estimated noise level for ``weight="auto"``.
    weight_dc:
        TV weight for MRI and inpainting, default 0.01 (measurements are nearly noise-free, so the
        data term dominates).
    iterations:
        Iterations of Chambolle's algorithm (denoising) or of the primal-dual algorithm.
    batch_size:
        Studies per batched solve.
    """

    name: ClassVar[str] = "classical"
    progress_label: ClassVar[str] = "classical TV"

    class Params(ReconParams):
        """Hyperparameters of :class:`ClassicalReconstructor`."""

        weight: Annotated[float, Field(ge=0)] | Literal["auto"] = "auto"
        weight_scale: float = Field(1.0, gt=0)
        weight_dc: float = Field(0.01, gt=0)
        iterations: int = Field(100, ge=1)
        batch_size: int = Field(64, ge=1)

    def __init__(self, device: str | torch.device = "cpu", **params: object) -> None:
        self._init_params(device, dict(params))

    def _solve(self, d: Degraded) -> torch.Tensor:
        hp = self.hp
        img = d.image.to(self.device, torch.float32)
        if d.mask is None:
            weight = (
                hp.weight_scale * estimate_noise_sigma(img).view(-1, *([1] * (img.ndim - 1)))
                if hp.weight == "auto"
                else hp.weight
            )
            return tv_denoise_chambolle(img, weight, hp.iterations)
        m = d.mask.to(self.device, torch.float32)
        if d.kspace is not None:
            y = d.kspace.to(self.device, torch.complex64)
            if y.shape[1] > 1:
                from reconaudit.physics.coils import estimate_sensitivities

                maps = estimate_sensitivities(y, m, threshold=0.05)
                return tv_sense_primal_dual(m * y, m, maps, hp.weight_dc, hp.iterations).abs()
            x0 = ifft2c(m * y)
            x = tv_primal_dual(m * y, m, hp.weight_dc, hp.iterations, kspace=True, init=x0)
            return x.abs()
        # inpainting: start from the observed pixels with holes set to each image's observed mean
        mb = m.expand_as(img)
        mean = (img * mb).sum(dim=(-2, -1), keepdim=True) / mb.sum(dim=(-2, -1), keepdim=True).clamp(min=1.0)
        x0 = mb * img + (1.0 - mb) * mean
        return tv_primal_dual(img, mb, hp.weight_dc, hp.iterations, kspace=False, init=x0)

    def reconstruct(
        self,
        degraded: Degraded,
        *,
        seeds: Sequence[int] | None = None,
        samples: int = 1,
        study_ids: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """TV reconstruction of each study, float32 (N, 1, H, W) (repeated to K samples if asked)."""
        check_degraded(degraded, f"{self.name}.reconstruct")
        n = len(degraded)
        outs = []
        bs = self.hp.batch_size
        with torch.no_grad(), task(f"reconstruct ({self.progress_label})", total=n) as bar:
            for start in range(0, n, bs):
                sl = list(range(start, min(n, start + bs)))
                outs.append(self._solve(degraded.subset(sl)).to(torch.float32).cpu())
                bar.advance(len(sl))
        return as_samples(torch.cat(outs, 0), samples)
