r"""Regression of continuous phenotypes (tumour area, infiltration extent, cardiothoracic ratio, ...).

A :class:`Regressor` is the small CNN of the classifier (:class:`~reconaudit.tasks.classification.SmallCNN`)
with one linear output per target.  Targets are standardised with the training split's mean and
standard deviation (kept in the weights as buffers), the loss is the mean squared error over the
observed (non-NaN) entries of the standardised targets,

.. math:: \mathcal{L} = \frac{1}{\sum_{ij} m_{ij}} \sum_{ij} m_{ij} \Big(\hat z_{ij} - \frac{y_{ij} - \mu_j}{\sigma_j}\Big)^2,

and :meth:`predict` returns :math:`\hat y = \mu + \sigma \hat z` in the targets' own units, float64 (N, R).
A regressor has no operating threshold (``thresholds`` is NaN per target).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from pydantic import Field
from torch import nn

from reconaudit.tasks.classification import SmallCNN
from reconaudit.tasks.loop import LossFn
from reconaudit.tasks.network import NetworkDiagnosticModel, as_float_tensor
from reconaudit.tasks.params import TrainParams

__all__ = ["RegressionNet", "Regressor", "RegressorParams", "masked_mse"]


def masked_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the observed (non-NaN) entries of ``target`` (0 when none is observed)."""
    observed = ~torch.isnan(target)
    diff = torch.where(observed, pred - torch.nan_to_num(target), torch.zeros_like(pred))
    return (diff * diff).sum() / observed.sum().clamp_min(1)


class RegressionNet(nn.Module):
    """A :class:`SmallCNN` predicting standardised targets, with the standardisation as buffers."""

    def __init__(self, in_channels: int, n_outputs: int, channels=(16, 32, 64), dropout: float = 0.0) -> None:
        super().__init__()
        self.cnn = SmallCNN(in_channels, n_outputs, channels, dropout)
        self.register_buffer("mean", torch.zeros(n_outputs))
        self.register_buffer("std", torch.ones(n_outputs))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features (N, channels[-1])."""
        return self.cnn.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised predictions (N, R)."""
        return self.cnn(x)


class RegressorParams(TrainParams):
    """``arch="small-cnn"``: ``channels`` per block, head ``dropout`` and optional ``target_names``."""

    channels: tuple[int, ...] = Field((16, 32, 64), min_length=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_names: list[str] | None = None


class Regressor(NetworkDiagnosticModel):
    """Continuous targets (N, R) from images: a small CNN, masked MSE on standardised targets.

    :meth:`predict` returns the targets in their own units, float64 (N, R); :meth:`logits` the
    standardised predictions; :meth:`features` the pooled penultimate features.
    """

    kind: ClassVar[str] = "regression"
    arch_params: ClassVar[dict[str, type[TrainParams]]] = {"small-cnn": RegressorParams}

    def _build_network(self) -> nn.Module:
        c = self.config
        return RegressionNet(self.in_channels, self.n_outputs, c.channels, c.dropout)

    def _default_thresholds(self) -> np.ndarray:
        return np.full(self.n_outputs, np.nan)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised predictions and pooled features from one forward pass."""
        f = self.net.forward_features(x)
        return self.net.cnn.head(self.net.cnn.dropout(f)), f

    def _prepare_targets(self, targets, n: int, x, name: str) -> torch.Tensor:
        y = as_float_tensor(targets, name)
        if y.ndim == 1 and self.n_outputs == 1:
            y = y[:, None]
        if tuple(y.shape) != (n, self.n_outputs):
            raise ValueError(f"{name} must be (N, R) = ({n}, {self.n_outputs}), got {tuple(y.shape)}")
        if torch.isinf(y).any():
            raise ValueError(f"{name} holds infinite values; use NaN for a missing target")
        return y

    def _make_loss(self, train_targets: torch.Tensor) -> LossFn:
        obs = ~torch.isnan(train_targets)
        cnt = obs.sum(0).clamp_min(1)
        mean = torch.nan_to_num(train_targets).sum(0) / cnt
        var = (torch.where(obs, train_targets - mean, torch.zeros_like(train_targets)) ** 2).sum(0) / cnt
        std = var.sqrt()
        std = torch.where(std > 1e-8, std, torch.ones_like(std))
        self.net.mean.copy_(mean.to(self.net.mean.device))
        self.net.std.copy_(std.to(self.net.std.device))
        m, s = self.net.mean, self.net.std

        def loss(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return masked_mse(pred, (y - m) / s)

        return loss

    def _probabilities(self, logits: torch.Tensor) -> np.ndarray:
        return (logits * self.net.std + self.net.mean).double().cpu().numpy()
