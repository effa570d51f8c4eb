"""A user's own diagnostic networks, as a plug-in module would provide them."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """Conv-ReLU-pool then linear: (N, C, H, W) -> (N, n_outputs) logits."""

    def __init__(self, in_channels: int = 1, n_outputs: int = 2, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, n_outputs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.conv(x))).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def build(in_channels: int = 1, n_outputs: int = 2, width: int = 8) -> nn.Module:
    """The factory named in the config: ``target="_plugin_model:build"``."""
    return TinyNet(in_channels, n_outputs, width)


def build_segmenter() -> nn.Module:
    """A per-pixel logistic model: (N, 1, H, W) -> (N, 1, H, W) logits."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 1))


def build_wrong() -> nn.Module:
    """Returns (N, 5) logits, which does not fit a 2-label config."""
    return TinyNet(1, 5)


def not_a_module() -> object:
    return object()
