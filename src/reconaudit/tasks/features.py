"""Penultimate features of a frozen diagnostic model, for task-aware perceptual distances."""

from __future__ import annotations

import numpy as np
import torch

from reconaudit.tasks.training import pooled

__all__ = ["penultimate_features"]


def penultimate_features(model, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """The model's penultimate features of every image, without gradient, as float64 (N, F).

    Uses the model's own :meth:`~reconaudit.tasks.base.DiagnosticModel.features` (a forward hook
    on the classifier's pooled last block or the segmenter's U-Net bottleneck, or a plug-in's
    named layer); spatial feature maps are globally average pooled to (N, C).

    Parameters
    ----------
    model : DiagnosticModel
        A fitted (frozen) diagnostic model.
    images : torch.Tensor (N, C, H, W)
    batch_size : int

    Returns
    -------
    numpy.ndarray (N, F)
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise TypeError(f"images: expected a tensor (N, C, H, W), got {getattr(images, 'shape', type(images))}")
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            f = model.features(images[i : i + batch_size])
            out.append(pooled(f).double().cpu().numpy())
    return np.concatenate(out, 0) if out else np.zeros((0, 0))
