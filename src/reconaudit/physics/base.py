"""The contract every degradation follows.

A degradation takes clean images (N, 1, H, W) float32 in [0, 1] and one seed per study, and
returns a :class:`Degraded` batch: the image a reconstructor sees, plus (for MRI) the measured
k-space and the sampling mask that data consistency needs.  The same study with the same seed
gets the same noise whatever batch it is in.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch


@dataclass
class Degraded:
    """A batch of degraded acquisitions.

    Attributes
    ----------
    image:
        What a reconstructor takes as input: float32 (N, 1, H, W), nominally in [0, 1]
        (the filtered back-projection for X-ray, the zero-filled magnitude for MRI, the masked
        image for inpainting).
    kspace:
        Measured (undersampled, zero where not sampled) complex64 k-space (N, C, H, W) with C
        receive coils (C = 1 single-coil), or None. Memory: 8 N C H W bytes.
    mask:
        Sampling / observation mask, float32 broadcastable to (N, 1, H, W) (1 = measured), or None.
    info:
        Per-batch scalars worth recording (e.g. ``effective_acceleration``).
    """

    image: torch.Tensor
    kspace: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def subset(self, idx: Sequence[int] | np.ndarray | torch.Tensor) -> Degraded:
        """The studies at positions ``idx``."""
        ti = torch.as_tensor(np.asarray(idx), dtype=torch.long)

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            if t.shape[0] == 1 and self.image.shape[0] != 1:  # a shared mask
                return t
            return t[ti]

        return Degraded(self.image[ti], pick(self.kspace), pick(self.mask), dict(self.info))

    def to(self, device: torch.device | str) -> Degraded:
        """Move every tensor to ``device``."""

        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return Degraded(self.image.to(device), mv(self.kspace), mv(self.mask), dict(self.info))

    @staticmethod
    def concat(parts: Sequence[Degraded]) -> Degraded:
        """Concatenate batches along the study axis."""
        if not parts:
            raise ValueError("Degraded.concat needs at least one batch")

        def cat(ts: list[torch.Tensor | None]) -> torch.Tensor | None:
            if any(t is None for t in ts):
                return None
            return torch.cat(ts, 0)  # type: ignore[arg-type]

        return Degraded(
            torch.cat([p.image for p in parts], 0),
            cat([p.kspace for p in parts]),
            cat([p.mask.expand(p.image.shape[0], *p.mask.shape[1:]) if p.mask is not None else None for p in parts]),
            dict(parts[0].info),
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        """A flat dict of tensors for safetensors storage (see :meth:`from_tensors`)."""
        out = {"image": self.image.contiguous()}
        if self.kspace is not None:
            out["kspace_real"] = self.kspace.real.contiguous()
            out["kspace_imag"] = self.kspace.imag.contiguous()
        if self.mask is not None:
            out["mask"] = self.mask.contiguous()
        return out

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], info: dict | None = None) -> Degraded:
        """Inverse of :meth:`tensors`."""
        k = torch.complex(t["kspace_real"], t["kspace_imag"]) if "kspace_real" in t else None
        return cls(t["image"], k, t.get("mask"), dict(info or {}))


class Degradation(ABC):
    """Base class: a simulated acquisition at one severity ``level``.

    The engine builds one as ``cls(**{cls.level_name: level}, **params)`` (see
    :func:`~reconaudit.physics.make_degradation`) and calls it as ``op(images, seeds)`` on batches
    of clean images, adding ``kspace=`` (the cohort's measured k-space batch) when the class sets
    ``accepts_kspace``.  Subclasses set ``name`` (the config name), ``modality`` (``"xray"``,
    ``"mri"`` or ``"any"``), ``level_name`` (the config's word for the level: ``photons``,
    ``acceleration``, ``ratio``) and implement :attr:`level` and :meth:`__call__`.
    """

    name: ClassVar[str] = "degradation"
    modality: ClassVar[str] = "any"
    level_name: ClassVar[str] = "level"
    accepts_kspace: ClassVar[bool] = False

    @property
    @abstractmethod
    def level(self) -> float:
        """The severity level as the config names it (photons, acceleration, ratio)."""

    @abstractmethod
    def __call__(self, images: torch.Tensor, seeds: Sequence[int] | torch.Tensor) -> Degraded:
        """Degrade ``images`` (N, 1, H, W) with one integer seed per study."""
