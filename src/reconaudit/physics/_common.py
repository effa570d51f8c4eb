"""Shared validation and per-study random draws for the degradations."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from reconaudit.seeding import as_seed_list, torch_generator


def check_images(images: torch.Tensor, where: str) -> torch.Tensor:
    """Validate a batch of clean images: float tensor (N, 1, H, W) with values in [0, 1]."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{where}: images must be a torch.Tensor (N, 1, H, W), got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"{where}: images must have shape (N, 1, H, W), got {tuple(images.shape)}")
    if images.is_complex():
        raise ValueError(f"{where}: images must be real magnitudes in [0, 1]; pass complex k-space as kspace=")
    if images.shape[0] == 0:
        raise ValueError(f"{where}: got an empty batch (N = 0)")
    images = images.to(torch.float32)
    lo, hi = float(images.min()), float(images.max())
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1e-4 or hi > 1 + 1e-4:
        raise ValueError(
            f"{where}: images must be finite and in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; "
            "rescale the cohort images (e.g. min-max per study) first"
        )
    return images.clamp(0.0, 1.0)


def seed_list(seeds: Sequence[int] | torch.Tensor | np.ndarray, n: int, where: str) -> list[int]:
    """One integer seed per study (see :func:`reconaudit.seeding.as_seed_list`)."""
    try:
        return as_seed_list(seeds, n)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per study: draws do not depend on the batch, the device or the worker."""
    return [torch_generator(int(s) % (2**64), "cpu") for s in seeds]
