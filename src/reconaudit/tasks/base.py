"""The diagnostic model interface: trained on clean images, frozen, applied to reconstructions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch


class DiagnosticModel(ABC):
    """Base class for classifiers and segmenters.

    ``kind`` is ``"classification"`` (outputs: probabilities (N, L) for L labels) or
    ``"segmentation"`` (outputs: foreground probabilities (N, 1, H, W)).  ``thresholds`` holds the
    operating point per output (per label, or the pixel threshold for segmentation), chosen on
    clean validation data and then fixed.

    The engine builds one as ``cls(device, arch=..., in_channels=..., n_outputs=..., **params)``,
    calls :meth:`fit` (which also sets ``thresholds``) and :meth:`save`, and later :meth:`load`,
    :meth:`predict` and (for the saliency of the report's examples, and the penalties of
    mitigation) :meth:`logits`.  These are the abstract methods, with :meth:`state_dict` and
    :meth:`load_state_dict` that :meth:`save` and :meth:`load` use; :meth:`features` is needed
    only by adversarial mitigation.
    """

    kind: ClassVar[str] = "classification"
    #: ``fit`` accepts lazy arrays of the study store (:mod:`reconaudit.arrays`) and reads them in
    #: batches; when False (a user's model) the engine gives it in-memory tensors of the split
    reads_lazily: ClassVar[bool] = False

    def __init__(self, device: str | torch.device = "cpu", **params: object) -> None:
        self.device = torch.device(device)
        self.params = dict(params)
        self.thresholds: np.ndarray = np.zeros(0)

    @abstractmethod
    def fit(self, images: torch.Tensor, targets, val_images: torch.Tensor, val_targets, *, seed: int = 0) -> dict:
        """Train on ``images`` with ``targets`` (float (N, L) with NaN for missing, or masks (N, 1, H, W));
        choose ``thresholds`` on ``val_images`` / ``val_targets``; return a history dict."""

    @abstractmethod
    def predict(self, images: torch.Tensor) -> np.ndarray:
        """Probabilities for a batch of images (N, in_channels, H, W); no gradient."""

    @abstractmethod
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Differentiable logits (gradients flow to ``images``); the network stays frozen."""

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Differentiable penultimate features (N, F), for adversarial debiasing."""
        raise NotImplementedError(
            f"{type(self).__name__} has no features(): adversarial mitigation needs one (penultimate features (N, F))"
        )

    @abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that define the trained model (thresholds are saved separately)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore from :meth:`state_dict`."""

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
