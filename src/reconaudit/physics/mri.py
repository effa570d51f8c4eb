"""Accelerated MRI: Cartesian, variable-density and radial k-space undersampling, single- or multi-coil."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch

from reconaudit.physics._common import check_images, generators, seed_list
from reconaudit.physics.base import Degradation, Degraded
from reconaudit.seeding import derive_seed

__all__ = [
    "fft2c",
    "ifft2c",
    "KspaceUndersampling",
    "PATTERNS",
    "default_center_fraction",
    "radial_mask",
]

log = logging.getLogger(__name__)

PATTERNS = ("random", "equispaced", "gaussian", "radial")
_DIMS = (-2, -1)


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal centred 2-D FFT over the last two axes.

    .. math:: K = \\mathrm{fftshift}\\big(\\mathcal{F}_{\\text{ortho}}(\\mathrm{ifftshift}(x))\\big)

    The DC coefficient sits at index ``(H // 2, W // 2)``; Parseval holds
    (:math:`\\|K\\|_2 = \\|x\\|_2`). Real input is promoted to complex64.
    """
    if not x.is_complex():
        x = x.to(torch.complex64)
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=_DIMS), norm="ortho"), dim=_DIMS)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft2c`: :math:`x = \\mathrm{fftshift}(\\mathcal{F}^{-1}_{\\text{ortho}}(\\mathrm{ifftshift}(K)))`."""
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=_DIMS), norm="ortho"), dim=_DIMS)


def default_center_fraction(acceleration: float) -> float:
    """fastMRI's fully sampled centre: 0.08 at 4x, 0.04 at 8x, 0.02 at 16x, i.e. ``0.32 / acceleration``."""
    return 0.32 / float(acceleration)


def _center_slice(n: int, n_low: int) -> slice:
    """fastMRI's centre block: ``pad = (n - n_low + 1) // 2``, lines ``pad .. pad + n_low - 1``."""
    pad = (n - n_low + 1) // 2
    return slice(pad, pad + n_low)


def _radial_masks(h: int, w: int, spokes: int, offsets: torch.Tensor) -> torch.Tensor:
    """(len(offsets), H, W) float32 radial masks, one per spoke-rotation offset (radians)."""
    phi = offsets.view(-1, 1).double() + 2.0 * math.pi * torch.arange(spokes, dtype=torch.float64) / spokes
    n_read = max(h, w) // 2 + 1
    t = torch.arange(n_read, dtype=torch.float64) / (max(h, w) / 2.0)  # unit spacing on the longer axis
    y = torch.round(h // 2 + torch.sin(phi).unsqueeze(-1) * t * (h / 2.0)).long().flatten(1)
    x = torch.round(w // 2 + torch.cos(phi).unsqueeze(-1) * t * (w / 2.0)).long().flatten(1)
    ok = (y >= 0) & (y < h) & (x >= 0) & (x < w)
    flat = torch.where(ok, y * w + x, 0)
    m = torch.zeros(phi.shape[0], h * w, dtype=torch.float32)
    m.scatter_reduce_(1, flat, ok.to(torch.float32), reduce="amax")  # out-of-range points add nothing
    return m.view(-1, h, w)


def radial_mask(shape: tuple[int, int], spokes: int, offset: float = 0.0) -> torch.Tensor:
    """Centre-out radial mask (H, W) float32 with ``spokes`` spokes.

    Spoke ``k`` runs from the k-space centre ``(H // 2, W // 2)`` at angle
    :math:`\\varphi_k = \\varphi_0 + 2\\pi k / n_{\\text{spokes}}` and samples ``max(H, W) // 2 + 1``
    readout points at unit k-space spacing (radius 0 to ``max(H, W) / 2``), each gridded to the
    nearest Cartesian point. Two opposite spokes form one diameter, so 60 spokes are 30 diameters:
    at 256 x 256 they sample 7,059 of 65,536 points, an effective acceleration of about 9.3.
    """
    h, w = int(shape[0]), int(shape[1])
    if int(spokes) < 1:
        raise ValueError(f"radial_mask: spokes must be >= 1, got {spokes!r}")
    return _radial_masks(h, w, int(spokes), torch.tensor([float(offset)]))[0]


class KspaceUndersampling(Degradation):
    """Accelerated MRI: mask the centred k-space of each study (one or several coils) and zero-fill.

    For a magnitude image :math:`x` (or measured k-space :math:`K`, see :meth:`from_kspace`),

    .. math::

        K = \\mathrm{fft2c}(x), \\qquad K_u = M \\odot K, \\qquad
        \\hat x = \\mathrm{clip}\\big(|\\mathrm{ifft2c}(K_u)|, 0, 1\\big)

    and the result carries ``image`` :math:`\\hat x`, ``kspace`` :math:`K_u` (complex64) and
    ``mask`` :math:`M` (float32, (N, 1, H, W), or (1, 1, H, W) with ``shared_mask=True``).

    Patterns (``pattern=``), with ``N`` phase-encode lines (columns) and
    ``N_low = round(N * center_fraction)`` fully sampled centre lines (fastMRI,
    ``fastmri/data/subsample.py``):

    ``"random"``
        Each line outside the centre is kept with probability
        :math:`p = (N / R - N_{low}) / (N - N_{low})`, so the expected number of lines is
        :math:`N / R` (``RandomMaskFunc``).
    ``"equispaced"``
        Exactly ``round(N / R)`` lines: the centre, and :math:`k = \\mathrm{round}(N/R) - N_{low}`
        lines equally spaced (spacing :math:`(N - N_{low}) / k`, random offset per study) over the
        lines outside it. fastMRI's ``EquispacedMaskFractionFunc`` reaches :math:`N / R` only on
        average (its spacing collides with the centre by chance); this variant is exact per mask.
    ``"gaussian"``
        2-D variable density: a fully sampled centre block of ``N_low`` x ``round(H *
        center_fraction)`` points, and exactly ``round(H W / R)`` points in all, the rest drawn
        without replacement with weights
        :math:`\\exp(-(k_y^2 + k_x^2) / (2\\sigma^2))` (``k`` normalised to [-1, 1)).
    ``"radial"``
        ``spokes`` centre-out spokes (:func:`radial_mask`) with a random rotation per study. With
        ``acceleration`` instead of ``spokes``, the fewest spokes whose effective acceleration does
        not exceed ``acceleration`` at the image size. Spoke count is not acceleration: 60 spokes
        at 256 x 256 are about 9.3x.

    Multi-coil (``coils`` = C > 1, see :mod:`reconaudit.physics.coils`): the object is
    :math:`x = m \\, e^{i\\varphi}` (magnitude image :math:`m`, smooth synthetic phase
    :math:`\\varphi` of amplitude ``phase``, :func:`~reconaudit.physics.coils.smooth_phase`), seen
    by ``coils`` birdcage sensitivities :math:`S_c` (:func:`~reconaudit.physics.coils.birdcage_maps`,
    :math:`\\sum_c |S_c|^2 = 1`):

    .. math::

        y_c = M \\big(\\mathrm{fft2c}(S_c x) + \\sigma n_c\\big), \\qquad
        \\hat x = \\mathrm{clip}\\Big(\\sqrt{\\textstyle\\sum_c |\\mathrm{ifft2c}(y_c)|^2}, 0, 1\\Big)

    with :math:`n_c` unit complex Gaussian noise and :math:`\\sigma` set by the per-coil ``snr``
    (:func:`~reconaudit.physics.coils.noise_sigma`; ``None``: noise-free). ``kspace`` is then
    complex64 (N, C, H, W), ``image`` the coil-combined (root-sum-of-squares) zero-filled image.
    The single-coil model is the case C = 1, :math:`S_1 = 1`, :math:`\\varphi = 0`.
    ``coils=0`` undersamples the cohort's own measured coil k-space (e.g. fastMRI multi-coil)
    instead of simulating coils. Phase and noise are drawn from generators seeded by
    ``derive_seed("coil-phase" / "coil-noise", study seed)``, so masks do not change with them.

    The effective acceleration (all points / sampled points) is reported per batch in
    ``Degraded.info["effective_acceleration"]`` and by :meth:`effective_acceleration`.

    Parameters
    ----------
    acceleration:
        Nominal acceleration :math:`R` (the level; the study used 4, 8 and 16). May be ``None``
        only for ``pattern="radial"`` with ``spokes``.
    center_fraction:
        Fully sampled centre fraction (default :func:`default_center_fraction`: 0.08 / 0.04 /
        0.02 at 4x / 8x / 16x). Not used by ``"radial"``.
    pattern:
        One of :data:`PATTERNS`.
    spokes:
        Number of spokes (``"radial"`` only).
    sigma:
        Width of the ``"gaussian"`` density in normalised k-space units.
    shared_mask:
        ``True``: one mask for every study, drawn from ``mask_seed``.
    mask_seed:
        The seed of the shared mask.
    coils:
        Receive coils C (1: single-coil; 0: the cohort's measured multi-coil k-space).
    snr:
        Per-coil signal-to-noise ratio of the complex Gaussian noise, or ``None`` (noise-free).
    phase:
        Amplitude (radians) of the smooth synthetic object phase (0: real object).
    coil_radius:
        Radius of the birdcage coil circle in half fields of view (> 1).

    Notes
    -----
    Masks are drawn per study from a CPU generator seeded with the study's seed, so a study gets
    the same mask in any batch, on any worker and on any device.
    """

    name = "kspace"
    modality = "mri"
    level_name = "acceleration"

    def __init__(
        self,
        acceleration: float | None = 4.0,
        center_fraction: float | None = None,
        pattern: str = "random",
        *,
        spokes: int | None = None,
        sigma: float = 0.3,
        shared_mask: bool = False,
        mask_seed: int = 0,
        coils: int = 1,
        snr: float | None = None,
        phase: float = 0.0,
        coil_radius: float = 1.5,
    ) -> None:
        if isinstance(coils, bool) or not isinstance(coils, int) or coils < 0:
            raise ValueError(f"KspaceUndersampling: coils must be an integer >= 0 (0 = measured coils), got {coils!r}")
        if snr is not None and not (isinstance(snr, int | float) and math.isfinite(snr) and snr > 0):
            raise ValueError(f"KspaceUndersampling: snr must be a positive number or null (noise-free), got {snr!r}")
        if not (isinstance(phase, int | float) and math.isfinite(phase) and phase >= 0):
            raise ValueError(f"KspaceUndersampling: phase must be a number >= 0 (radians), got {phase!r}")
        if not (isinstance(coil_radius, int | float) and coil_radius > 1):
            raise ValueError(f"KspaceUndersampling: coil_radius must be > 1 (half fields of view), got {coil_radius!r}")
        if pattern not in PATTERNS:
            raise ValueError(f"KspaceUndersampling: pattern must be one of {PATTERNS}, got {pattern!r}")
        if spokes is not None and pattern != "radial":
            raise ValueError(f"KspaceUndersampling: spokes= applies to pattern='radial' only, got pattern={pattern!r}")
        if acceleration is None:
            if pattern != "radial" or spokes is None:
                raise ValueError("KspaceUndersampling: acceleration is required (or pattern='radial' with spokes=)")
        elif not (isinstance(acceleration, int | float) and math.isfinite(acceleration) and acceleration >= 1):
            raise ValueError(f"KspaceUndersampling: acceleration must be a number >= 1, got {acceleration!r}")
        if spokes is not None and int(spokes) < 1:
            raise ValueError(f"KspaceUndersampling: spokes must be >= 1, got {spokes!r}")
        if spokes is not None and acceleration is not None:
            raise ValueError("KspaceUndersampling: give either acceleration= or spokes= for pattern='radial', not both")
        if center_fraction is None and acceleration is not None:
            center_fraction = default_center_fraction(acceleration)
        if center_fraction is not None and not 0 <= center_fraction < 1:
            raise ValueError(f"KspaceUndersampling: center_fraction must be in [0, 1), got {center_fraction!r}")
        if not sigma > 0:
            raise ValueError(f"KspaceUndersampling: sigma must be > 0, got {sigma!r}")
        self.acceleration = None if acceleration is None else float(acceleration)
        self.center_fraction = None if center_fraction is None else float(center_fraction)
        self.pattern = pattern
        self.spokes = None if spokes is None else int(spokes)
        self.sigma = float(sigma)
        self.shared_mask = bool(shared_mask)
        self.mask_seed = int(mask_seed)
        self.coils = int(coils)
        self.snr = None if snr is None else float(snr)
        self.phase = float(phase)
        self.coil_radius = float(coil_radius)
        self._spokes_for: dict[tuple[int, int], int] = {}

    @property
    def level(self) -> float:
        """The nominal acceleration; for radial masks given by ``spokes``, the effective one at 256 x 256."""
        if self.acceleration is not None:
            return self.acceleration
        return self.effective_acceleration((256, 256))

    @property
    def accepts_kspace(self) -> bool:
        """True for ``coils=0``: the engine then passes the cohort's measured k-space as ``kspace=``."""
        return self.coils == 0

    def __repr__(self) -> str:
        lvl = f"spokes={self.spokes}" if self.spokes is not None else f"acceleration={self.acceleration:g}"
        extra = "" if self.coils == 1 else f", coils={self.coils}"
        return f"KspaceUndersampling({lvl}, pattern={self.pattern!r}{extra})"

    # ------------------------------------------------------------------ masks
    def spokes_for(self, shape: tuple[int, int]) -> int:
        """Spoke count used at image ``shape``: ``spokes``, or the fewest reaching ``acceleration``."""
        if self.spokes is not None:
            return self.spokes
        shape = (int(shape[0]), int(shape[1]))
        if shape not in self._spokes_for:
            total = shape[0] * shape[1]
            target = self.acceleration
            lo, hi = 1, 8 * max(shape)
            while lo < hi:  # sampled points grow with the spoke count
                mid = (lo + hi) // 2
                if total / float(radial_mask(shape, mid).sum()) <= target:
                    hi = mid
                else:
                    lo = mid + 1
            self._spokes_for[shape] = lo
        return self._spokes_for[shape]

    def _n_low(self, n: int) -> int:
        return int(round(n * (self.center_fraction or 0.0)))

    def masks(self, shape: tuple[int, int], seeds: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """One mask per seed, (len(seeds), 1, H, W) float32 on CPU (1 = sampled)."""
        h, w = int(shape[0]), int(shape[1])
        seeds_ = seed_list(seeds, len(seeds), "KspaceUndersampling.masks")
        gens = generators(seeds_)
        n = len(seeds_)
        if self.pattern in ("random", "equispaced"):
            n_low = self._n_low(w)
            target = w / self.acceleration
            if n_low > target:
                raise ValueError(
                    f"KspaceUndersampling: center_fraction={self.center_fraction} keeps {n_low} of {w} lines, "
                    f"more than the {target:.1f} that acceleration={self.acceleration:g} allows; lower center_fraction"
                )
            lines = torch.zeros(n, w, dtype=torch.bool)
            if self.pattern == "random":
                prob = (target - n_low) / (w - n_low) if w > n_low else 0.0
                u = torch.stack([torch.rand(w, generator=g) for g in gens])  # per-study draws
                lines = u < prob
            else:
                centre = torch.zeros(w, dtype=torch.bool)
                centre[_center_slice(w, n_low)] = True
                outside = torch.nonzero(~centre).view(-1)
                k = int(round(target)) - n_low
                if k > 0:
                    step = outside.numel() / k
                    for i, g in enumerate(gens):  # one random offset per study
                        o = float(torch.rand(1, generator=g, dtype=torch.float64)) * step
                        pos = np.minimum(np.floor(o + step * np.arange(k)).astype(np.int64), outside.numel() - 1)
                        lines[i, outside[torch.from_numpy(pos)]] = True
            lines[:, _center_slice(w, n_low)] = True
            return lines.to(torch.float32).view(n, 1, 1, w).expand(n, 1, h, w).contiguous()
        if self.pattern == "gaussian":
            return self._gaussian(h, w, gens)
        spokes = self.spokes_for((h, w))
        offs = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in gens]) * 2.0 * math.pi / spokes
        return _radial_masks(h, w, spokes, offs).unsqueeze(1)

    def _gaussian(self, h: int, w: int, gens: list[torch.Generator]) -> torch.Tensor:
        n = len(gens)
        ky = (torch.arange(h, dtype=torch.float64) - h // 2) / (h / 2.0)
        kx = (torch.arange(w, dtype=torch.float64) - w // 2) / (w / 2.0)
        logw = -(ky.view(-1, 1) ** 2 + kx.view(1, -1) ** 2) / (2 * self.sigma**2)
        centre = torch.zeros(h, w, dtype=torch.bool)
        centre[_center_slice(h, self._n_low(h)), _center_slice(w, self._n_low(w))] = True
        budget = int(round(h * w / self.acceleration))
        k = budget - int(centre.sum())
        if k < 0:
            raise ValueError(
                f"KspaceUndersampling: the centre block ({int(centre.sum())} points) exceeds the "
                f"{budget} points acceleration={self.acceleration:g} allows; lower center_fraction"
            )
        u = torch.stack([torch.rand(h * w, generator=g, dtype=torch.float64) for g in gens])
        # Gumbel top-k = weighted sampling without replacement (Efraimidis & Spirakis)
        keys = logw.view(1, -1) - torch.log(-torch.log(u.clamp(min=1e-300)))
        keys[:, centre.view(-1)] = -math.inf
        m = centre.view(1, -1).repeat(n, 1)
        if k > 0:
            top = torch.topk(keys, k, dim=1).indices
            m.scatter_(1, top, True)
        return m.view(n, 1, h, w).to(torch.float32)

    def effective_acceleration(self, shape: tuple[int, int] = (256, 256)) -> float:
        """Expected all / sampled points at image ``shape``.

        Exact for ``"random"`` (:math:`N / (N_{low} + (N - N_{low}) p)`); for the other patterns
        the mean sampled fraction over the masks of seeds 0..7 (or the shared mask).
        """
        h, w = int(shape[0]), int(shape[1])
        if self.shared_mask:
            return float(h * w / self.masks((h, w), [self.mask_seed]).sum())
        if self.pattern == "random":
            n_low = self._n_low(w)
            prob = (w / self.acceleration - n_low) / (w - n_low) if w > n_low else 0.0
            return float(w / (n_low + (w - n_low) * prob))
        frac = float(self.masks((h, w), list(range(8))).mean())
        return 1.0 / frac

    # ------------------------------------------------------------------ apply
    def __call__(
        self,
        images: torch.Tensor | None,
        seeds: Sequence[int] | torch.Tensor,
        *,
        kspace: torch.Tensor | None = None,
    ) -> Degraded:
        """Undersample ``fft2c(images)`` with one integer seed per study.

        With ``kspace=`` (complex (N, C, H, W), already in image units) that k-space is undersampled
        instead and ``images`` may be ``None``; see :meth:`from_kspace` to normalise measured data.
        With ``coils`` > 1 the coil k-space is simulated from ``images`` (class docstring).
        """
        if kspace is not None:
            if images is not None and (
                images.shape[0] != kspace.shape[0] or tuple(images.shape[2:]) != tuple(kspace.shape[2:])
            ):
                raise ValueError(
                    f"KspaceUndersampling: images {tuple(images.shape)} and kspace {tuple(kspace.shape)} differ in shape"
                )
            return self.from_kspace(kspace, seeds, normalize=False)
        if images is None:
            raise ValueError("KspaceUndersampling: pass images (N, 1, H, W) or kspace=")
        if self.coils == 0:
            raise ValueError(
                "KspaceUndersampling: coils=0 undersamples the cohort's measured multi-coil k-space, but none was "
                "given (this cohort has no k-space); set coils to the number of coils to simulate"
            )
        images = check_images(images, "KspaceUndersampling")
        if self.coils == 1 and self.phase == 0:
            return self._apply(fft2c(images), seeds)
        from reconaudit.physics.coils import birdcage_maps, coil_forward, smooth_phase

        seeds_ = seed_list(seeds, images.shape[0], "KspaceUndersampling")
        x = images.to(torch.complex64)
        if self.phase > 0:
            gens = generators([derive_seed("coil-phase", s) for s in seeds_])
            x = x * torch.polar(torch.ones(()), smooth_phase(images.shape[-2:], gens, self.phase)).to(x.device)
        maps = None
        if self.coils > 1:
            maps = birdcage_maps(self.coils, tuple(images.shape[-2:]), self.coil_radius).unsqueeze(0)
        return self._apply(coil_forward(x, maps), seeds_)

    def from_kspace(
        self, kspace: torch.Tensor, seeds: Sequence[int] | torch.Tensor, *, normalize: bool = True
    ) -> Degraded:
        """Undersample measured complex k-space (N, C, H, W) (e.g. a fastMRI cohort; C = 1 single-coil).

        With ``normalize=True`` each study's k-space is first divided by the maximum of its fully
        sampled root-sum-of-squares image :math:`\\max \\sqrt{\\sum_c |\\mathrm{ifft2c}(K_c)|^2}`, so
        that image lies in [0, 1] (it is the clean image such a cohort pairs with the degraded one).
        """
        if not isinstance(kspace, torch.Tensor) or kspace.ndim != 4 or kspace.shape[1] < 1:
            shape = tuple(kspace.shape) if isinstance(kspace, torch.Tensor) else type(kspace).__name__
            raise ValueError(f"KspaceUndersampling.from_kspace: kspace must be a tensor (N, C, H, W), got {shape}")
        k = kspace.to(torch.complex64)
        if normalize:
            from reconaudit.physics.coils import rss

            scale = rss(ifft2c(k)).amax(dim=(1, 2, 3), keepdim=True)
            k = k / torch.where(scale > 0, scale, torch.ones_like(scale))
        return self._apply(k, seeds)

    def _apply(self, k: torch.Tensor, seeds: Sequence[int] | torch.Tensor) -> Degraded:
        n, _, h, w = k.shape  # k: fully sampled (N, C, H, W)
        seeds_ = seed_list(seeds, n, "KspaceUndersampling")
        if self.shared_mask:
            mask = self.masks((h, w), [self.mask_seed])
        else:
            mask = self.masks((h, w), seeds_)
        mask = mask.to(k.device)
        if self.snr is not None:
            from reconaudit.physics.coils import complex_noise, noise_sigma

            noise = complex_noise(tuple(k.shape[1:]), generators([derive_seed("coil-noise", s) for s in seeds_]))
            k = k + noise_sigma(k, self.snr) * noise.to(k.device)  # Parseval: k-space power = coil-image power
        ku = (k * mask).to(torch.complex64)
        from reconaudit.physics.coils import rss

        image = rss(ifft2c(ku)).clamp_(0.0, 1.0).to(torch.float32)
        sampled = float(mask.sum()) * (n if mask.shape[0] == 1 else 1)
        info = {
            "acceleration": self.acceleration,
            "pattern": self.pattern,
            "effective_acceleration": float(n * h * w / max(sampled, 1.0)),
        }
        if self.pattern == "radial":
            info["spokes"] = self.spokes_for((h, w))
        if k.shape[1] != 1 or self.snr is not None:
            info["coils"] = int(k.shape[1])
            info["snr"] = self.snr if self.snr is not None else "none"
        return Degraded(image, ku, mask, info)
