"""A deliberately broken reconstructor, as a plug-in factory (used by test_competence_audit.py)."""

import torch
from torch import nn


class Noise(nn.Module):
    """Ignores its input and returns uniform noise in [0, 1] (a fixed draw, so runs repeat)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return torch.rand(x.shape, generator=g).to(x)


def build() -> nn.Module:
    return Noise()
