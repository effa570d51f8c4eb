"""Differentiable fairness penalties on a batch of reconstructions.

All penalties take the reconstruction ``recon`` (B, 1, H, W) with a graph back to the
reconstructor's parameters and return a scalar tensor; the frozen diagnostic model sits between
(its parameters get no gradient, its input does).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class RunningMean:
    """Exponential running mean of a detached scalar: ``m <- momentum * m + (1 - momentum) * x``.

    The first value initialises ``m``.  Used to normalise a penalty to the scale of the
    reconstruction loss: ``total = base + lambda * (m_base / m_penalty) * penalty``.
    """

    def __init__(self, momentum: float = 0.9) -> None:
        self.momentum = float(momentum)
        self.value: float | None = None

    def update(self, x: torch.Tensor | float) -> float:
        v = float(x.detach()) if isinstance(x, torch.Tensor) else float(x)
        self.value = v if self.value is None else self.momentum * self.value + (1 - self.momentum) * v
        return self.value


def _group_index(groups: np.ndarray) -> tuple[torch.Tensor, int]:
    uniq, inv = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    return torch.as_tensor(inv, dtype=torch.long), len(uniq)


def soft_equalized_odds(
    soft_pred: torch.Tensor, y: torch.Tensor, groups: np.ndarray, min_count: float = 1.0
) -> torch.Tensor | None:
    """Soft equalized-odds difference of one label and one attribute in a batch.

    With soft predictions s_i in (0, 1), targets y_i and group g_i:
    TPR_g = sum_i s_i y_i [g_i = g] / sum_i y_i [g_i = g],
    FPR_g = sum_i s_i (1 - y_i) [g_i = g] / sum_i (1 - y_i) [g_i = g],
    EOD = max( max_g TPR_g - min_g TPR_g, max_g FPR_g - min_g FPR_g ),
    taking only groups with at least ``min_count`` positives (for TPR) or negatives (for FPR)
    in the batch.  Returns ``None`` when no rate has two defined groups.
    """
    ok = ~torch.isnan(y)
    if ok.sum() == 0:
        return None
    s, t = soft_pred[ok], y[ok]
    g, n_groups = _group_index(np.asarray(groups)[ok.cpu().numpy()])
    g = g.to(s.device)
    onehot = torch.nn.functional.one_hot(g, n_groups).to(s.dtype)  # (B, G)
    gaps = []
    for weight in (t, 1 - t):
        denom = onehot.T @ weight  # (G,)
        num = onehot.T @ (s * weight)
        defined = denom >= min_count
        if int(defined.sum()) >= 2:
            rate = num[defined] / denom[defined]
            gaps.append(rate.max() - rate.min())
    if not gaps:
        return None
    return torch.stack(gaps).max()


def soft_dice_gap(prob: torch.Tensor, mask: torch.Tensor, groups: np.ndarray, eps: float = 1.0) -> torch.Tensor | None:
    """Gap between the largest and smallest group mean of the per-study soft Dice.

    soft Dice_i = (2 sum p m + eps) / (sum p + sum m + eps) over the pixels of study i.
    Returns ``None`` when fewer than two groups are present in the batch.
    """
    p = prob.flatten(1)
    m = mask.flatten(1).to(p.dtype)
    d = (2 * (p * m).sum(1) + eps) / (p.sum(1) + m.sum(1) + eps)
    g, n_groups = _group_index(groups)
    if n_groups < 2:
        return None
    onehot = torch.nn.functional.one_hot(g.to(p.device), n_groups).to(p.dtype)
    means = (onehot.T @ d) / onehot.sum(0)
    return means.max() - means.min()


class _BasePenalty:
    """Shared plumbing: look up the batch's groups/targets and normalise by running means."""

    def __init__(self, lam: float, groups: dict[str, np.ndarray], momentum: float = 0.9) -> None:
        self.lam = float(lam)
        self.groups = {a: np.asarray(v).astype(str) for a, v in groups.items()}
        self.m_base = RunningMean(momentum)
        self.m_pen = RunningMean(momentum)
        self.last_penalty: float | None = None
        self.calls = 0

    def penalty(self, recon: torch.Tensor, idx: np.ndarray) -> torch.Tensor | None:
        raise NotImplementedError

    def __call__(self, base: torch.Tensor, recon: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The loss hook: ``base + lam * (m_base / m_penalty) * penalty``."""
        self.calls += 1
        pen = self.penalty(recon, idx.detach().cpu().numpy())
        mb = self.m_base.update(base)
        if pen is None or self.lam == 0:
            self.last_penalty = None
            return base
        mp = self.m_pen.update(pen)
        self.last_penalty = float(pen.detach())
        scale = mb / mp if mp > 1e-12 else 1.0
        return base + self.lam * scale * pen


class EqualizedOddsPenalty(_BasePenalty):
    """Soft equalized-odds penalty from a frozen multi-label classifier.

    Soft predictions at the classifier's operating threshold t_l of label l:
    s = sigmoid((z_l - logit(t_l)) / temperature), with z_l the classifier's logit.
    The penalty is the mean (or max) over attributes and labels of :func:`soft_equalized_odds`.
    """

    def __init__(self, classifier, targets: np.ndarray, groups: dict[str, np.ndarray], lam: float,
                 temperature: float = 0.25, reduce: str = "mean", labels: list[int] | None = None,
                 momentum: float = 0.9) -> None:
        super().__init__(lam, groups, momentum)
        self.classifier = classifier
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.float32))
        thr = np.clip(np.asarray(classifier.thresholds, dtype=np.float64), 1e-6, 1 - 1e-6)
        self.logit_thr = torch.as_tensor(np.log(thr / (1 - thr)), dtype=torch.float32)
        self.temperature = float(temperature)
        self.reduce = reduce
        self.labels = labels if labels is not None else list(range(self.targets.shape[1]))

    def soft_predictions(self, recon: torch.Tensor) -> torch.Tensor:
        z = self.classifier.logits(recon)
        return torch.sigmoid((z - self.logit_thr.to(z.device)) / self.temperature)

    def penalty(self, recon: torch.Tensor, idx: np.ndarray) -> torch.Tensor | None:
        s = self.soft_predictions(recon)
        y = self.targets[idx].to(s.device)
        terms = []
        for groups in self.groups.values():
            g = groups[idx]
            for j in self.labels:
                v = soft_equalized_odds(s[:, j], y[:, j], g)
                if v is not None:
                    terms.append(v)
        if not terms:
            return None
        stack = torch.stack(terms)
        return stack.mean() if self.reduce == "mean" else stack.max()


class DiceGapPenalty(_BasePenalty):
    """Soft Dice gap between groups from a frozen segmenter (segmentation tasks)."""

    def __init__(self, segmenter, masks: torch.Tensor, groups: dict[str, np.ndarray], lam: float,
                 momentum: float = 0.9) -> None:
        super().__init__(lam, groups, momentum)
        self.segmenter = segmenter
        self.masks = masks

    def penalty(self, recon: torch.Tensor, idx: np.ndarray) -> torch.Tensor | None:
        prob = torch.sigmoid(self.segmenter.logits(recon))
        m = self.masks[torch.as_tensor(idx)].to(prob.device)
        terms = [t for g in self.groups.values() if (t := soft_dice_gap(prob, m, g[idx])) is not None]
        return torch.stack(terms).mean() if terms else None


class AdversarialPenalty(_BasePenalty):
    """Adversarial debiasing with alternating min-max.

    An adversary ``a`` (a small MLP) predicts the joint group of the chosen attributes from the frozen
    diagnostic model's features f(x̂) of the reconstruction.  Each batch:

    1. reconstructor step on ``base + lam * scale * L_rec`` where, for ``objective="confusion"``,
       L_rec = CE(a(f(x̂)), uniform) (the reconstructor pushes the adversary towards chance), or,
       for ``objective="reversal"``, L_rec = -CE(a(f(x̂)), g) (gradient reversal);
    2. adversary step (``on_batch_end``) on CE(a(f(x̂).detach()), g), the adversary minimising its loss.

    The signs are checked in the tests: step 1 increases the adversary's loss on the batch, step 2
    decreases it.
    """

    def __init__(self, model, groups: dict[str, np.ndarray], lam: float, n_features: int, hidden: int = 32,
                 adv_lr: float = 1e-3, objective: str = "confusion", seed: int = 0, momentum: float = 0.9,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(lam, groups, momentum)
        self.model = model
        joint = np.array(["|".join(t) for t in zip(*self.groups.values(), strict=True)])
        self.group_idx, self.n_groups = _group_index(joint)
        gen = torch.Generator().manual_seed(int(seed))
        self.adversary = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, self.n_groups))
        with torch.no_grad():
            for p in self.adversary.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / max(1, p.shape[-1])) ** 0.5)
        self.adversary.to(device)
        self.opt = torch.optim.Adam(self.adversary.parameters(), lr=adv_lr)
        self.objective = objective
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None
        self.adv_losses: list[float] = []

    def penalty(self, recon: torch.Tensor, idx: np.ndarray) -> torch.Tensor | None:
        feats = self.model.features(recon)
        g = self.group_idx[torch.as_tensor(idx)].to(feats.device)
        self._last = (feats.detach(), g)
        if self.n_groups < 2:
            return None
        for p in self.adversary.parameters():
            p.requires_grad_(False)
        logits = self.adversary(feats)
        for p in self.adversary.parameters():
            p.requires_grad_(True)
        if self.objective == "reversal":
            return -nn.functional.cross_entropy(logits, g)
        uniform = torch.full_like(logits, 1.0 / self.n_groups)
        return -(uniform * torch.log_softmax(logits, 1)).sum(1).mean()

    def adversary_step(self, idx: torch.Tensor | None = None) -> float | None:
        """One adversary update on the features of the last batch (the ``on_batch_end`` hook)."""
        if self._last is None:
            return None
        feats, g = self._last
        self.opt.zero_grad()
        loss = nn.functional.cross_entropy(self.adversary(feats), g)
        loss.backward()
        self.opt.step()
        self.adv_losses.append(float(loss.detach()))
        return self.adv_losses[-1]
