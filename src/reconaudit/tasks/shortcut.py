"""The CNN variant of the shortcut probe: a small CNN trained to predict group membership from images.

:func:`cnn_probe_scores` trains a small CNN (:func:`probe_network`: two conv3x3-ReLU-maxpool blocks,
global max and average pooling concatenated, a linear layer with one output per group;
cross-entropy, Adam) on all folds but one and scores the held-out fold, with the patient-grouped
folds of :func:`reconaudit.metrics.shortcut.probe_folds`; the out-of-fold probabilities go to
:func:`reconaudit.metrics.shortcut.shortcut_probe` (``scores=``) or
:func:`reconaudit.metrics.shortcut.probe_auroc`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reconaudit.metrics._utils import group_codes
from reconaudit.metrics.shortcut import probe_folds

__all__ = ["cnn_probe_scores", "probe_network"]


class _MaxAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.amax(dim=(2, 3)), x.mean(dim=(2, 3))], dim=1)


def probe_network(in_channels: int, n_groups: int, channels: Sequence[int] = (8, 16)) -> nn.Module:
    """Conv3x3-ReLU-maxpool blocks, global max and average pooling (a local marker survives the max), linear."""
    layers: list[nn.Module] = []
    c_prev = in_channels
    for c in channels:
        layers += [nn.Conv2d(c_prev, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        c_prev = c
    return nn.Sequential(*layers, _MaxAvgPool(), nn.Linear(2 * c_prev, n_groups))


def cnn_probe_scores(
    images: torch.Tensor,
    groups: object,
    patient_ids: object,
    *,
    n_splits: int = 3,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 3e-3,
    channels: Sequence[int] = (8, 16),
    seed: int = 0,
    folds: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold group probabilities ``(n, G)`` of a small CNN probe on ``images`` ``(n, 1, H, W)``, and the labels."""
    x = torch.as_tensor(images, dtype=torch.float32)
    if x.ndim != 4:
        raise ValueError(f"images: expected (N, C, H, W), got shape {tuple(x.shape)}")
    codes, labels = group_codes(groups, "groups")
    if len(codes) != len(x):
        raise ValueError(f"groups: expected {len(x)} values (one per image), got {len(codes)}")
    fold = probe_folds(codes, patient_ids, n_splits, seed) if folds is None else np.asarray(folds)
    y = torch.as_tensor(codes)
    out = np.zeros((len(x), len(labels)))
    gen = torch.Generator().manual_seed(seed)
    for f in np.unique(fold):
        tr = torch.as_tensor(np.flatnonzero(fold != f))
        te = torch.as_tensor(np.flatnonzero(fold == f))
        torch.manual_seed(seed + int(f))
        net = probe_network(x.shape[1], len(labels), channels)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        net.train()
        for _ in range(epochs):
            perm = tr[torch.randperm(len(tr), generator=gen)]
            for i in range(0, len(perm), batch_size):
                b = perm[i : i + batch_size]
                if len(b) < 2:
                    continue
                opt.zero_grad()
                F.cross_entropy(net(x[b]), y[b]).backward()
                opt.step()
        net.eval()
        with torch.no_grad():
            out[te.numpy()] = torch.softmax(net(x[te]), dim=1).numpy()
    return out, labels
