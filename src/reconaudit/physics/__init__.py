"""Simulated acquisitions as batched torch operators.

Each degradation is built at one severity level and called as ``op(images, seeds)`` with clean
images (N, 1, H, W) float32 in [0, 1] and one integer seed per study; it returns a
:class:`~reconaudit.physics.base.Degraded` batch.

- :class:`LowDoseXray` (``"lowdose-xray"``, level ``photons``): photon-count noise on a
  radiograph (projection model) or a CT-style sinogram with FBP (the MIDL 2026 study's model).
- :class:`KspaceUndersampling` (``"kspace"``, level ``acceleration``): single- or multi-coil MRI
  (``coils=``; sensitivities, phase and noise in :mod:`reconaudit.physics.coils`) with random /
  equispaced Cartesian, Gaussian variable-density or radial masks, zero-filled.
- :class:`RandomMasking` (``"masking"``, level ``ratio``): patch masking for inpainting.

:data:`DEGRADATIONS` maps config names to classes; :func:`make_degradation` builds one.
"""

from __future__ import annotations

import inspect

from reconaudit.physics.base import Degradation, Degraded
from reconaudit.physics.coils import (
    birdcage_maps,
    coil_adjoint,
    coil_forward,
    estimate_sensitivities,
    rss,
    sensitivity_correlation,
)
from reconaudit.physics.masking import RandomMasking
from reconaudit.physics.mri import KspaceUndersampling, default_center_fraction, fft2c, ifft2c, radial_mask
from reconaudit.physics.radon import iradon, radon
from reconaudit.physics.xray import LowDoseXray, bowtie_profile

__all__ = [
    "DEGRADATIONS",
    "Degraded",
    "Degradation",
    "KspaceUndersampling",
    "LowDoseXray",
    "RandomMasking",
    "birdcage_maps",
    "bowtie_profile",
    "coil_adjoint",
    "coil_forward",
    "estimate_sensitivities",
    "default_center_fraction",
    "fft2c",
    "ifft2c",
    "iradon",
    "make_degradation",
    "radial_mask",
    "radon",
    "rss",
    "sensitivity_correlation",
]

DEGRADATIONS: dict[str, type[Degradation]] = {
    LowDoseXray.name: LowDoseXray,
    KspaceUndersampling.name: KspaceUndersampling,
    RandomMasking.name: RandomMasking,
}


def _params_of(cls: type) -> list[str]:
    sig = inspect.signature(cls.__init__)
    return [p for p in sig.parameters if p != "self" and p != cls.level_name]


def make_degradation(name: str, level: float, **params: object) -> Degradation:
    """Build the degradation registered as ``name`` at severity ``level``.

    ``level`` is passed as the class's ``level_name`` argument (``photons``, ``acceleration`` or
    ``ratio``); ``params`` are its other keyword arguments.

    Raises
    ------
    ValueError
        If ``name`` is not in :data:`DEGRADATIONS` or a parameter is not one the class takes
        (the message lists the allowed names).
    """
    if name not in DEGRADATIONS:
        raise ValueError(f"degradation name {name!r} is unknown; allowed names: {sorted(DEGRADATIONS)}")
    cls = DEGRADATIONS[name]
    allowed = _params_of(cls)
    if cls.level_name in params:
        raise ValueError(
            f"degradation {name!r}: {cls.level_name!r} is the level; pass it as level=, not among the parameters"
        )
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"degradation {name!r}: unknown parameter(s) {unknown}; allowed parameters: {allowed} "
            f"(the level is {cls.level_name!r})"
        )
    return cls(**{cls.level_name: level}, **params)
