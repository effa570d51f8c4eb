"""The diagnostic model interface: trained on clean images, frozen, applied to reconstructions."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch


class DiagnosticModel:
    """Base class for classifiers and segmenters.

    ``kind`` is ``"classification"`` (outputs: probabilities (N, L) for L labels) or
    ``"segmentation"`` (outputs: foreground probabilities (N, 1, H, W)).  ``thresholds`` holds the
    operating point per output (per label, or the pixel threshold for segmentation), chosen on
    clean validation data and then fixed.
    """

    kind: ClassVar[str] = "classification"

    def __init__(self, device: str | torch.device = "cpu", **params: object) -> None:
        self.device = torch.device(device)
        self.params = dict(params)
        self.thresholds: np.ndarray = np.zeros(0)

    def fit(self, images: torch.Tensor, targets, val_images: torch.Tensor, val_targets, *, seed: int = 0) -> dict:
        """Train on ``images`` with ``targets`` (float (N, L) with NaN for missing, or masks)."""
        raise NotImplementedError

    def predict(self, images: torch.Tensor) -> np.ndarray:
        """Probabilities for a batch of images (N, in_channels, H, W); no gradient."""
        raise NotImplementedError

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Differentiable logits (gradients flow to ``images``); the network stays frozen."""
        raise NotImplementedError

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Differentiable penultimate features (N, F), for adversarial debiasing."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        """Save weights and thresholds as safetensors."""
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        state["__thresholds__"] = torch.as_tensor(np.asarray(self.thresholds, dtype=np.float64))
        save_file(state, str(path))

    def load(self, path: str | Path) -> None:
        """Load what :meth:`save` wrote."""
        from safetensors.torch import load_file

        state = load_file(str(path))
        self.thresholds = state.pop("__thresholds__").numpy()
        self.load_state_dict(state)
