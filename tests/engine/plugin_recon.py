"""A user's own reconstructor, as a plug-in factory (used by test_plugins_audit.py)."""

import torch
from torch import nn


class Halve(nn.Module):
    """Multiplies the degraded input by a fixed factor: a model whose output is known exactly."""

    def __init__(self, factor: float = 0.5) -> None:
        super().__init__()
        self.register_buffer("factor", torch.tensor(float(factor)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def build(factor: float = 0.5) -> nn.Module:
    return Halve(factor)


class Scale(nn.Module):
    """Multiplies the input by a learnable factor (its weights file sets the factor)."""

    def __init__(self) -> None:
        super().__init__()
        self.factor = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def build_scale() -> nn.Module:
    return Scale()


def build_marking(marker: str) -> nn.Module:
    """A factory that leaves a file behind when it is called (to show who calls it)."""
    with open(marker, "w") as f:
        f.write("called")
    return Scale()
