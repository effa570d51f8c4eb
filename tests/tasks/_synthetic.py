"""A tiny, easy synthetic problem for the diagnostic-model tests: bright discs and vertical bars."""

from __future__ import annotations

import numpy as np
import torch


def discs_and_bars(n: int, seed: int, size: int = 32) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
    """Images (n, 1, size, size) in [0, 1], targets (n, 2) = [disc present, bar present], disc masks.

    Background: 0.2 + U(0, 0.1) per pixel.  A disc (radius 3-6 px, +0.5) is present with
    probability 1/2, a vertical bar (2 px wide, +0.3) independently with probability 1/2.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    disc = torch.rand(n, generator=g) < 0.5
    bar = torch.rand(n, generator=g) < 0.5
    lo, span = size / 4, size / 2
    cy = lo + span * torch.rand(n, generator=g)
    cx = lo + span * torch.rand(n, generator=g)
    r = 3 + 3 * torch.rand(n, generator=g)
    dmask = ((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) <= r[:, None, None] ** 2
    dmask = dmask & disc[:, None, None]
    bx = torch.randint(4, size - 6, (n,), generator=g)
    bmask = (xx >= bx[:, None, None]) & (xx < bx[:, None, None] + 2) & (yy > 4) & (yy < size - 4)
    bmask = bmask & bar[:, None, None]
    img = 0.2 + 0.1 * torch.rand(n, size, size, generator=g) + 0.5 * dmask.float() + 0.3 * bmask.float()
    img = img.clamp(0, 1)[:, None].contiguous()
    targets = torch.stack([disc, bar], 1).float().numpy().astype(np.float64)
    return img, targets, dmask[:, None].to(torch.uint8)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice over the whole set: 2|P ∩ T| / (|P| + |T|)."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    return float(2.0 * (p & t).sum() / (p.sum() + t.sum()))
