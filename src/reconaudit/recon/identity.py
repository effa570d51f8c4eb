"""The identity reconstructor: the degraded input as it is."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from reconaudit.physics.base import Degraded
from reconaudit.recon.base import Reconstructor
from reconaudit.recon.training import ParamsMixin, ReconParams, as_samples, check_degraded


class IdentityReconstructor(ParamsMixin, Reconstructor):
    """Return ``Degraded.image`` unchanged: the filtered back-projection for X-ray, the zero-filled
    magnitude ``|F^H y|`` for MRI, the masked image for inpainting.  The baseline every other model is
    compared with.  No parameters.
    """

    name: ClassVar[str] = "identity"
    Params: ClassVar[type[ReconParams]] = ReconParams

    def __init__(self, device: str | torch.device = "cpu", **params: object) -> None:
        self._init_params(device, dict(params))

    def reconstruct(
        self,
        degraded: Degraded,
        *,
        seeds: Sequence[int] | None = None,
        samples: int = 1,
        study_ids: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """``degraded.image`` as float32 (N, 1, H, W), repeated to (N, K, 1, H, W) when ``samples > 1``."""
        check_degraded(degraded, "identity.reconstruct")
        return as_samples(degraded.image.detach().to(torch.float32).cpu().clone(), samples)
