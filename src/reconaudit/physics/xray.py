"""Low-dose X-ray: photon-count (Poisson) noise on radiographs or on a CT-style sinogram."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch

from reconaudit.physics._common import check_images, generators, seed_list
from reconaudit.physics.base import Degradation, Degraded
from reconaudit.physics.radon import FILTERS, _square_geometry, iradon, radon

__all__ = ["LowDoseXray", "bowtie_profile"]

log = logging.getLogger(__name__)

MODELS = ("projection", "sinogram")
BOWTIE_AXES = ("detector", "angle", None)


def bowtie_profile(n: int, sigma: float = 0.5) -> torch.Tensor:
    """Relative incident fluence of a bowtie filter over ``n`` positions.

    .. math:: w(u) = \\exp\\!\\big(-u^2 / (2\\sigma^2)\\big), \\qquad u \\in [-1, 1]

    (``u`` evenly spaced, ``w = 1`` at the centre, ``exp(-1 / (2 sigma^2))`` at the ends).
    """
    u = torch.linspace(-1.0, 1.0, n, dtype=torch.float64)
    return torch.exp(-(u**2) / (2.0 * sigma**2)).to(torch.float32)


class LowDoseXray(Degradation):
    """Low-dose X-ray acquisition at ``photons`` incident photons per detector element.

    Two forward models:

    ``model="projection"`` (default; the physically standard radiograph model)
        The image is an attenuation map: line integrals :math:`p = \\mu_s x` with
        ``mu_scale`` :math:`\\mu_s` (so ``x = 1`` transmits :math:`e^{-\\mu_s}`; the default 4.0
        gives 1.8 %). Transmitted counts and the log estimate are

        .. math::

            I \\sim \\mathrm{Poisson}(N_0 e^{-p}) + \\mathcal{N}(0, \\sigma_e^2), \\qquad
            \\hat p = -\\log\\big(\\max(I, 1) / N_0\\big), \\qquad
            \\hat x = \\mathrm{clip}(\\hat p / \\mu_s, 0, 1)

        with :math:`N_0` = ``photons`` and :math:`\\sigma_e` = ``electronic_std``. By the delta
        method :math:`\\operatorname{Var}(\\hat p) \\approx 1 / (N_0 e^{-p})` (plus
        :math:`\\sigma_e^2 / (N_0 e^{-p})^2`).

    ``model="sinogram"`` (the simulation of the MIDL 2026 study "Evaluating the Impact of Medical
    Image Reconstruction on Downstream AI Fairness and Performance", for comparability)
        Parallel-beam Radon transform :math:`s` over ``n_angles`` angles in [0, 180) (:func:`radon`),
        a bowtie fluence :math:`w` (:func:`bowtie_profile`), Poisson counts with the sinogram
        maximum mapped to ``photons`` and filtered back-projection (Hann filter), then min-max
        rescaling per study:

        .. math::

            C \\sim \\mathrm{Poisson}\\big(N_0 w\\, s / \\max s\\big), \\qquad
            \\tilde s = C \\max s / (N_0 w), \\qquad
            \\hat x = \\frac{r - \\min r}{\\max r - \\min r}, \\ r = \\mathrm{FBP}(\\tilde s)

        so :math:`\\operatorname{Var}(\\tilde s) = s \\max s / (N_0 w)`. ``bowtie_axis="detector"``
        (default) varies :math:`w` across detector bins, as a bowtie filter does;
        ``bowtie_axis="angle"`` reproduces the study's variant, which applied the profile along the
        angle axis; ``None`` uses :math:`w = 1`.

    Parameters
    ----------
    photons:
        Incident photons :math:`N_0` (the level; the study used 100000, 10000 and 3000).
    model:
        ``"projection"`` or ``"sinogram"``.
    mu_scale:
        Attenuation of a pixel of value 1 (projection model).
    electronic_std:
        Standard deviation of additive Gaussian electronic noise in counts (projection model).
    n_angles:
        Number of projection angles, evenly spaced in [0, 180) (sinogram model).
    bowtie_axis, bowtie_sigma:
        Where the bowtie profile varies and its width (sinogram model).
    circle:
        Radon geometry (sinogram model): ``False`` (default) pads so the whole image is projected;
        ``True`` assumes the image is zero outside its inscribed circle.
    filter:
        FBP filter (sinogram model), default ``"hann"``.

    Notes
    -----
    Noise is drawn per study from a CPU ``torch.Generator`` seeded with the study's seed, so a
    study gets the same noise in any batch, on any worker and on any device.
    """

    name = "lowdose-xray"
    modality = "xray"
    level_name = "photons"

    def __init__(
        self,
        photons: float = 10000.0,
        model: str = "projection",
        *,
        mu_scale: float = 4.0,
        electronic_std: float = 0.0,
        n_angles: int = 256,
        bowtie_axis: str | None = "detector",
        bowtie_sigma: float = 0.5,
        circle: bool = False,
        filter: str | None = "hann",  # noqa: A002 - skimage's word
    ) -> None:
        if not (isinstance(photons, int | float) and math.isfinite(photons) and photons > 0):
            raise ValueError(f"LowDoseXray: photons must be a positive number of incident photons, got {photons!r}")
        if model not in MODELS:
            raise ValueError(f"LowDoseXray: model must be one of {MODELS}, got {model!r}")
        if not mu_scale > 0:
            raise ValueError(f"LowDoseXray: mu_scale must be > 0 (attenuation of a pixel of value 1), got {mu_scale!r}")
        if electronic_std < 0:
            raise ValueError(f"LowDoseXray: electronic_std must be >= 0 counts, got {electronic_std!r}")
        if int(n_angles) < 1:
            raise ValueError(f"LowDoseXray: n_angles must be >= 1, got {n_angles!r}")
        if bowtie_axis not in BOWTIE_AXES:
            raise ValueError(f"LowDoseXray: bowtie_axis must be one of {BOWTIE_AXES}, got {bowtie_axis!r}")
        if not bowtie_sigma > 0:
            raise ValueError(f"LowDoseXray: bowtie_sigma must be > 0, got {bowtie_sigma!r}")
        if filter not in FILTERS:
            raise ValueError(f"LowDoseXray: filter must be one of {FILTERS}, got {filter!r}")
        self.photons = float(photons)
        self.model = model
        self.mu_scale = float(mu_scale)
        self.electronic_std = float(electronic_std)
        self.n_angles = int(n_angles)
        self.bowtie_axis = bowtie_axis
        self.bowtie_sigma = float(bowtie_sigma)
        self.circle = bool(circle)
        self.filter = filter

    @property
    def level(self) -> float:
        """Incident photons per detector element."""
        return self.photons

    @property
    def angles(self) -> np.ndarray:
        """Projection angles in degrees: ``linspace(0, 180, n_angles, endpoint=False)``."""
        return np.linspace(0.0, 180.0, self.n_angles, endpoint=False)

    def __repr__(self) -> str:
        return f"LowDoseXray(photons={self.photons:g}, model={self.model!r})"

    def __call__(self, images: torch.Tensor, seeds: Sequence[int] | torch.Tensor) -> Degraded:
        """Degrade ``images`` (N, 1, H, W) in [0, 1] with one integer seed per study."""
        images = check_images(images, "LowDoseXray")
        seeds_ = seed_list(seeds, images.shape[0], "LowDoseXray")
        if self.model == "projection":
            p_hat = self.line_integrals(images, seeds_)
            out = (p_hat / self.mu_scale).clamp_(0.0, 1.0)
        else:
            out = self._sinogram(images, seeds_)
        info = {"photons": self.photons, "model": self.model}
        return Degraded(out.to(torch.float32).contiguous(), None, None, info)

    def line_integrals(self, images: torch.Tensor, seeds: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Projection model: the noisy log estimate :math:`\\hat p` before rescaling and clipping."""
        images = check_images(images, "LowDoseXray.line_integrals")
        seeds_ = seed_list(seeds, images.shape[0], "LowDoseXray.line_integrals")
        rate = self.photons * torch.exp(-self.mu_scale * images.to(torch.float64))
        counts = self._poisson(rate.to(torch.float32), seeds_, electronic=self.electronic_std)
        return -torch.log(counts.clamp(min=1.0) / self.photons).to(torch.float32)

    def _poisson(self, rate: torch.Tensor, seeds: list[int], electronic: float = 0.0) -> torch.Tensor:
        """Per-study Poisson draws (plus Gaussian electronic noise) on CPU, returned on ``rate``'s device."""
        cpu = rate.detach().to("cpu", torch.float32)
        out = torch.empty_like(cpu)
        for i, g in enumerate(generators(seeds)):  # per-study draws only
            out[i] = torch.poisson(cpu[i], generator=g)
            if electronic > 0:
                out[i] += electronic * torch.randn(cpu[i].shape, generator=g)
        return out.to(rate.device)

    def bowtie(self, n_det: int) -> torch.Tensor:
        """Bowtie weights broadcastable to a sinogram (1, 1, n_det, n_angles)."""
        if self.bowtie_axis == "detector":
            return bowtie_profile(n_det, self.bowtie_sigma).view(1, 1, n_det, 1)
        if self.bowtie_axis == "angle":
            return bowtie_profile(self.n_angles, self.bowtie_sigma).view(1, 1, 1, self.n_angles)
        return torch.ones(1, 1, 1, 1)

    def sinograms(self, images: torch.Tensor, seeds: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sinogram model: the clean sinogram :math:`s` and the noisy one :math:`\\tilde s`, (N, 1, n_det, A)."""
        images = check_images(images, "LowDoseXray.sinograms")
        seeds_ = seed_list(seeds, images.shape[0], "LowDoseXray.sinograms")
        sino = radon(images, self.angles, circle=self.circle).clamp_(min=0.0)  # (N, 1, n_det, A)
        wgt = self.bowtie(sino.shape[2]).to(sino.device)
        smax = sino.amax(dim=(1, 2, 3), keepdim=True)
        safe = torch.where(smax > 0, smax, torch.ones_like(smax))
        counts = self._poisson(self.photons * wgt * sino / safe, seeds_)
        return sino, counts * safe / (self.photons * wgt)

    def _sinogram(self, images: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        n, _, h, w = images.shape
        angles = self.angles
        sino, noisy = self.sinograms(images, seeds)
        smax = sino.amax(dim=(1, 2, 3), keepdim=True)
        out_size = max(h, w) if not self.circle else min(h, w)
        rec = iradon(noisy, angles, self.filter, circle=self.circle, output_size=out_size)
        if (h, w) != (out_size, out_size):
            full = torch.zeros(n, 1, h, w, dtype=rec.dtype, device=rec.device)
            side, off_r, off_c = _square_geometry(h, w, self.circle)
            # original pixel (i, j) sits at output (i + r0, j + c0)
            r0, c0 = off_r - side // 2 + out_size // 2, off_c - side // 2 + out_size // 2
            rs, cs = max(r0, 0), max(c0, 0)
            hs, ws = min(h, out_size), min(w, out_size)
            fr, fc = max(-r0, 0), max(-c0, 0)
            full[:, :, fr : fr + hs, fc : fc + ws] = rec[:, :, rs : rs + hs, cs : cs + ws]
            rec = full
        lo = rec.amin(dim=(1, 2, 3), keepdim=True)
        hi = rec.amax(dim=(1, 2, 3), keepdim=True)
        out = (rec - lo) / (hi - lo).clamp(min=1e-12)
        return torch.where(smax > 0, out, torch.zeros_like(out))
