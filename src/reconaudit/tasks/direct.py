"""The no-reconstruction arm: diagnose straight from the degraded acquisition.

A diagnostic model of the same kind as the clean-image one is trained on the degraded inputs
themselves (and its thresholds chosen on degraded validation inputs).  What it sees:

- ``mode="image"`` (1 channel): the degraded image: the noisy filtered back-projection for low-dose
  X-ray, the zero-filled magnitude image for undersampled MRI.  Passed on unchanged (float32).
- ``mode="kspace"`` (2 channels, MRI; 2C for C receive coils): the measured k-space as its real
  and imaginary parts, each compressed by a signed logarithm (:func:`kspace_channels`); with
  multi-coil data the coils are channels. ``mode="image"`` of multi-coil data is the coil-combined
  (root-sum-of-squares) zero-filled image.

Both are computed study by study from that study's data and fixed constants, never from batch
statistics, so a study's input does not depend on which batch it lands in.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from reconaudit.tasks.base import DiagnosticModel

DirectMode = Literal["image", "kspace"]
DIRECT_IN_CHANNELS: dict[str, int] = {"image": 1, "kspace": 2}
KSPACE_SCALE = 0.01


def kspace_channels(kspace: torch.Tensor, scale: float = KSPACE_SCALE) -> torch.Tensor:
    """K-space (N, C, H, W) complex to 2C real channels (N, 2C, H, W) of unit-ish range.

    Channels ``0 .. C-1`` are the real parts of coils ``1 .. C``, channels ``C .. 2C-1`` the
    imaginary parts (C = 1 single-coil: real, imaginary).

    .. math::

        c_{\\mathrm{re}} = \\frac{\\operatorname{asinh}(\\operatorname{Re} k / s)}{\\operatorname{asinh}(1 / s)},
        \\qquad
        c_{\\mathrm{im}} = \\frac{\\operatorname{asinh}(\\operatorname{Im} k / s)}{\\operatorname{asinh}(1 / s)}

    with :math:`s` = ``scale``.  :math:`\\operatorname{asinh}` is linear near 0 and logarithmic
    for large values, so the sign and the log-magnitude are kept while the dynamic range of
    k-space (the centre is orders of magnitude above the periphery) is compressed; the division
    maps :math:`|k| = 1` to 1.  With the unitary centred FFT of :mod:`reconaudit.physics`
    (``norm="ortho"``) and images in [0, 1], the DC coefficient of an H x W image is its mean times
    :math:`\\sqrt{HW}` (about 77 for a mean of 0.3 at 256 x 256, giving 1.8) and peripheral
    coefficients of order ``scale`` map to about 0.17.  Unsampled (zero) lines stay 0.  The
    transform is elementwise with fixed constants: deterministic and independent of the batch.
    """
    if not torch.is_complex(kspace):
        raise TypeError(f"kspace must be a complex tensor (N, 1, H, W), got dtype {kspace.dtype}")
    if kspace.ndim != 4 or kspace.shape[1] < 1:
        raise ValueError(f"kspace must be (N, C, H, W), got {tuple(kspace.shape)}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    norm = math.asinh(1.0 / scale)
    parts = torch.cat([kspace.real, kspace.imag], dim=1).to(torch.float32)
    return torch.asinh(parts / scale) / norm


def direct_inputs(
    degraded_image: torch.Tensor | None,
    kspace: torch.Tensor | None = None,
    mode: DirectMode = "image",
    *,
    scale: float = KSPACE_SCALE,
) -> torch.Tensor:
    """The input of a no-reconstruction diagnostic model.

    Parameters
    ----------
    degraded_image:
        The degraded image (N, 1, H, W) (``Degraded.image``): noisy X-ray or zero-filled MRI.
    kspace:
        The measured k-space (N, C, H, W) complex (``Degraded.kspace``); needed for ``mode="kspace"``.
    mode:
        ``"image"``: ``degraded_image`` as float32 (1 channel); ``"kspace"``:
        :func:`kspace_channels` of ``kspace`` (2C channels).
    scale:
        The k-space compression constant :math:`s` of :func:`kspace_channels`.

    Returns
    -------
    torch.Tensor
        float32 (N, :data:`DIRECT_IN_CHANNELS` [mode], H, W).
    """
    if mode == "image":
        if degraded_image is None:
            raise ValueError("direct_inputs(mode='image') needs degraded_image (N, 1, H, W)")
        if degraded_image.ndim != 4 or degraded_image.shape[1] != 1:
            raise ValueError(f"degraded_image must be (N, 1, H, W), got {tuple(degraded_image.shape)}")
        return degraded_image.to(torch.float32)
    if mode == "kspace":
        if kspace is None:
            raise ValueError(
                "direct_inputs(mode='kspace') needs the measured k-space; this degradation has none "
                "(X-ray has no k-space: use mode='image')"
            )
        return kspace_channels(kspace, scale)
    raise ValueError(f"mode must be one of {tuple(DIRECT_IN_CHANNELS)}, got {mode!r}")


def make_direct_model(kind: str, mode: DirectMode = "image", **kwargs: object) -> DiagnosticModel:
    """A diagnostic model for the no-reconstruction arm: :func:`make_task_model` with the right ``in_channels``."""
    from reconaudit.tasks import make_task_model

    if mode not in DIRECT_IN_CHANNELS:
        raise ValueError(f"mode must be one of {tuple(DIRECT_IN_CHANNELS)}, got {mode!r}")
    if "in_channels" in kwargs:
        raise ValueError("make_direct_model sets in_channels from mode; do not pass it")
    return make_task_model(kind, in_channels=DIRECT_IN_CHANNELS[mode], **kwargs)  # type: ignore[arg-type]
