"""Device selection: CUDA when available, else CPU; overridable by config."""

from __future__ import annotations

import torch


def resolve_device(device: str | None = "auto") -> torch.device:
    """Map ``"auto"`` / ``None`` to CUDA when available, else CPU; check an explicit request."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available on this machine; use 'cpu' or 'auto'")
    return dev
