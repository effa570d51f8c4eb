"""Image-domain patch masking (inpainting): the generation end of the reconstruction spectrum."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from reconaudit.physics._common import check_images, generators, seed_list
from reconaudit.physics.base import Degradation, Degraded

__all__ = ["RandomMasking"]


class RandomMasking(Degradation):
    """Hide a fraction ``ratio`` of square patches of each image (set them to 0).

    The image is tiled into :math:`n_p = \\lceil H / P \\rceil \\lceil W / P \\rceil` patches of side
    ``patch`` :math:`P` (edge patches may be smaller); exactly
    :math:`k = \\mathrm{round}(\\text{ratio} \\cdot n_p)` of them, chosen uniformly without
    replacement per study, are hidden:

    .. math:: \\hat x = M \\odot x, \\qquad M_{ij} = 0 \\text{ if pixel } (i, j) \\text{ is in a hidden patch}

    ``Degraded.mask`` is :math:`M` (1 = observed pixel). ``info["hidden_fraction"]`` is the hidden
    pixel fraction of the batch (``k / n_p`` when ``P`` divides ``H`` and ``W``).

    Parameters
    ----------
    ratio:
        Fraction of patches hidden, in [0, 1] (the level).
    patch:
        Patch side in pixels.
    """

    name = "masking"
    modality = "any"
    level_name = "ratio"

    def __init__(self, ratio: float = 0.5, patch: int = 16) -> None:
        if not (isinstance(ratio, int | float) and 0.0 <= ratio <= 1.0):
            raise ValueError(f"RandomMasking: ratio must be a fraction of patches in [0, 1], got {ratio!r}")
        if int(patch) < 1:
            raise ValueError(f"RandomMasking: patch must be a side length >= 1 pixel, got {patch!r}")
        self.ratio = float(ratio)
        self.patch = int(patch)

    @property
    def level(self) -> float:
        """Fraction of patches hidden."""
        return self.ratio

    def __repr__(self) -> str:
        return f"RandomMasking(ratio={self.ratio:g}, patch={self.patch})"

    def n_hidden(self, shape: tuple[int, int]) -> tuple[int, int]:
        """``(k, n_p)``: patches hidden per study and patches in all at image ``shape``."""
        n_p = math.ceil(shape[0] / self.patch) * math.ceil(shape[1] / self.patch)
        return int(round(self.ratio * n_p)), n_p

    def masks(self, shape: tuple[int, int], seeds: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Observation masks (len(seeds), 1, H, W) float32 on CPU (1 = observed)."""
        h, w = int(shape[0]), int(shape[1])
        seeds_ = seed_list(seeds, len(seeds), "RandomMasking.masks")
        ph, pw = math.ceil(h / self.patch), math.ceil(w / self.patch)
        k, n_p = self.n_hidden((h, w))
        hidden = torch.stack([torch.randperm(n_p, generator=g)[:k] for g in generators(seeds_)])  # per-study draws
        observed = torch.ones(len(seeds_), n_p, dtype=torch.float32)
        observed.scatter_(1, hidden, 0.0)
        grid = observed.view(-1, 1, ph, pw)
        full = grid.repeat_interleave(self.patch, dim=2).repeat_interleave(self.patch, dim=3)
        return full[:, :, :h, :w].contiguous()

    def __call__(self, images: torch.Tensor, seeds: Sequence[int] | torch.Tensor) -> Degraded:
        """Mask ``images`` (N, 1, H, W) in [0, 1] with one integer seed per study."""
        images = check_images(images, "RandomMasking")
        n, _, h, w = images.shape
        seeds_ = seed_list(seeds, n, "RandomMasking")
        mask = self.masks((h, w), seeds_).to(images.device)
        info = {"ratio": self.ratio, "patch": self.patch, "hidden_fraction": float(1.0 - mask.mean())}
        return Degraded(images * mask, None, mask, info)
