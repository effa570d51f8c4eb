"""Differentiable fairness penalties on a batch of reconstructions.

Every penalty is a loss hook (:data:`reconaudit.recon.base.LossHook`): it takes the reconstructor's
own loss ``base``, the batch's reconstruction ``recon`` (B, 1, H, W) with a graph back to the
reconstructor's parameters, and the batch's positions ``idx`` in the training pairs, and returns

.. math:: L = L_{base} + \\lambda \\, \\frac{\\bar m_{base}}{\\bar m_{pen}} \\, P,

with :math:`\\bar m` exponential running means of :math:`L_{base}` and :math:`|P|`, so that
:math:`\\lambda = 1` weighs the penalty like the reconstruction loss whatever their scales.  The
frozen diagnostic model sits between the reconstruction and the penalty: its parameters get no
gradient, its input does.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class RunningMean:
    """Exponential running mean of a detached scalar: ``m <- momentum * m + (1 - momentum) * x``.

    The first value initialises ``m``.  Used to normalise a penalty to the scale of the
    reconstruction loss: ``total = base + lambda * (m_base / m_penalty) * penalty``.

    Parameters
    ----------
    momentum:
        Weight of the past, in [0, 1); 0 keeps only the latest value.
    """

    def __init__(self, momentum: float = 0.9) -> None:
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"RunningMean: momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.value: float | None = None

    def update(self, x: torch.Tensor | float) -> float:
        """Fold ``x`` into the mean and return the new mean."""
        v = float(x.detach()) if isinstance(x, torch.Tensor) else float(x)
        self.value = v if self.value is None else self.momentum * self.value + (1 - self.momentum) * v
        return self.value


def _group_index(groups: np.ndarray) -> tuple[torch.Tensor, int]:
    uniq, inv = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    return torch.as_tensor(inv.reshape(-1), dtype=torch.long), len(uniq)


def soft_equalized_odds(
    soft_pred: torch.Tensor, y: torch.Tensor, groups: np.ndarray, min_count: float = 1.0
) -> torch.Tensor | None:
    """Soft equalized-odds difference of one label and one attribute in a batch.

    With soft predictions :math:`s_i \\in [0, 1]`, targets :math:`y_i` and group :math:`g_i`:

    .. math::

        TPR_g = \\frac{\\sum_i s_i y_i [g_i = g]}{\\sum_i y_i [g_i = g]}, \\quad
        FPR_g = \\frac{\\sum_i s_i (1 - y_i) [g_i = g]}{\\sum_i (1 - y_i) [g_i = g]},

        EOD = \\max\\big(\\max_g TPR_g - \\min_g TPR_g,\\ \\max_g FPR_g - \\min_g FPR_g\\big),

    taking for each rate only the groups with at least ``min_count`` positives (TPR) or negatives
    (FPR) in the batch.  With hard 0/1 predictions and every group holding both classes this is
    fairlearn's ``equalized_odds_difference`` (``method="between_groups"``).

    Parameters
    ----------
    soft_pred:
        (B,) soft predictions, differentiable.
    y:
        (B,) targets in {0, 1}; NaN marks a missing target (left out).
    groups:
        (B,) group of each study (any values; compared as strings).
    min_count:
        Smallest number of positives (negatives) for a group's TPR (FPR) to count.

    Returns
    -------
    torch.Tensor or None
        A scalar, or ``None`` when neither rate is defined in two groups.
    """
    ok = ~torch.isnan(y)
    if int(ok.sum()) == 0:
        return None
    s, t = soft_pred[ok], y[ok].to(soft_pred.dtype)
    g, n_groups = _group_index(np.asarray(groups)[ok.cpu().numpy()])
    onehot = torch.nn.functional.one_hot(g.to(s.device), n_groups).to(s.dtype)  # (B, G)
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


def soft_dice(prob: torch.Tensor, mask: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Per-study soft Dice: ``(2 sum p m + eps) / (sum p + sum m + eps)`` over each study's pixels, (B,)."""
    p = prob.flatten(1)
    m = mask.flatten(1).to(p.dtype)
    return (2 * (p * m).sum(1) + eps) / (p.sum(1) + m.sum(1) + eps)


def soft_dice_gap(prob: torch.Tensor, mask: torch.Tensor, groups: np.ndarray, eps: float = 1.0) -> torch.Tensor | None:
    """Gap between the largest and smallest group mean of the per-study soft Dice.

    .. math:: \\mathrm{gap} = \\max_g \\overline{D}_g - \\min_g \\overline{D}_g, \\quad
              \\overline{D}_g = \\frac{1}{n_g}\\sum_{i: g_i = g} \\frac{2 \\sum p_i m_i + \\epsilon}
              {\\sum p_i + \\sum m_i + \\epsilon}

    with :math:`p` the (soft) foreground probabilities and :math:`m` the mask.  With binary ``prob``
    and ``eps -> 0`` it is the Dice gap of :func:`reconaudit.metrics.dice_gap`.
    Returns ``None`` when fewer than two groups are present in the batch.
    """
    d = soft_dice(prob, mask, eps)
    g, n_groups = _group_index(groups)
    if n_groups < 2:
        return None
    onehot = torch.nn.functional.one_hot(g.to(d.device), n_groups).to(d.dtype)
    means = (onehot.T @ d) / onehot.sum(0)
    return means.max() - means.min()


def _logit_thresholds(thresholds: np.ndarray, n: int, where: str) -> torch.Tensor:
    thr = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if thr.size == 1 and n > 1:
        thr = np.full(n, float(thr[0]))
    if thr.size != n:
        raise ValueError(f"{where}: the model has {thr.size} thresholds but {n} outputs; set its thresholds first")
    thr = np.clip(thr, 1e-6, 1 - 1e-6)
    return torch.as_tensor(np.log(thr / (1 - thr)), dtype=torch.float32)


class _BasePenalty:
    """Shared plumbing: look up the batch's groups and normalise by running means.

    Attributes
    ----------
    penalties:
        The penalty's value at every call where it was defined (for diagnostics).
    """

    def __init__(self, lam: float, groups: dict[str, np.ndarray], momentum: float = 0.9,
                 penalty_floor: float = 0.05) -> None:
        if not np.isfinite(lam) or lam < 0:
            raise ValueError(f"mitigation strength (lambda) must be a finite number >= 0, got {lam}")
        if not groups:
            raise ValueError("mitigation needs at least one group attribute")
        self.lam = float(lam)
        self.groups = {a: np.asarray(v).astype(str) for a, v in groups.items()}
        self.m_base = RunningMean(momentum)
        self.m_pen = RunningMean(momentum)
        if penalty_floor <= 0:
            raise ValueError(f"penalty_floor must be > 0, got {penalty_floor}")
        self.penalty_floor = float(penalty_floor)
        self.last_penalty: float | None = None
        self.penalties: list[float] = []
        self.calls = 0

    def penalty(self, recon: torch.Tensor, idx: np.ndarray) -> torch.Tensor | None:
        """The penalty P on one batch (``None`` when undefined in it)."""
        raise NotImplementedError

    def __call__(self, base: torch.Tensor, recon: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The loss hook: ``base + lam * (m_base / max(m_|penalty|, penalty_floor)) * penalty``.

        The floor keeps the penalty's weight from growing without bound as the gap closes (with
        ``m_pen -> 0`` the coefficient ``m_base / m_pen`` would push fine-tuning to a degenerate
        solution, e.g. every study predicted positive).
        """
        self.calls += 1
        mb = self.m_base.update(base)
        pen = self.penalty(recon, idx.detach().cpu().numpy().reshape(-1))
        if pen is None:
            self.last_penalty = None
            return base
        self.last_penalty = float(pen.detach())
        self.penalties.append(self.last_penalty)
        mp = self.m_pen.update(pen.detach().abs())
        if self.lam == 0:
            return base
        scale = abs(mb) / max(mp, self.penalty_floor)
        return base + self.lam * scale * pen


class EqualizedOddsPenalty(_BasePenalty):
    """Soft equalized-odds penalty from a frozen multi-label classifier.

    Soft predictions at the classifier's operating threshold :math:`t_l` of label :math:`l`:

    .. math:: s_{il} = \\sigma\\big((z_{il} - \\operatorname{logit} t_l) / T\\big),

    with :math:`z` the classifier's logits of the reconstruction and :math:`T` the temperature
    (:math:`T \\to 0` gives the hard decision).  The penalty is the mean (``reduce="mean"``) or
    the maximum over attributes :math:`a` and labels :math:`l` of :func:`soft_equalized_odds`.

    Parameters
    ----------
    classifier:
        A frozen :class:`~reconaudit.tasks.Classifier` (``logits`` differentiable to the input,
        ``thresholds`` set).
    targets:
        (N, L) training targets (NaN = missing), aligned with the training pairs.
    groups:
        Attribute -> (N,) group of every training study.
    lam:
        The strength :math:`\\lambda`.
    temperature, reduce, labels, momentum:
        See above; ``labels`` restricts the penalty to some label positions.
    """

    def __init__(self, classifier, targets: np.ndarray, groups: dict[str, np.ndarray], lam: float,
                 temperature: float = 0.25, reduce: str = "mean", labels: list[int] | None = None,
                 momentum: float = 0.9, penalty_floor: float = 0.05) -> None:
        super().__init__(lam, groups, momentum, penalty_floor)
        if temperature <= 0:
            raise ValueError(f"EqualizedOddsPenalty: temperature must be > 0, got {temperature}")
        if reduce not in ("mean", "max"):
            raise ValueError(f"EqualizedOddsPenalty: reduce must be 'mean' or 'max', got {reduce!r}")
        self.classifier = classifier
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.float32))
        if self.targets.ndim == 1:
            self.targets = self.targets[:, None]
        n_labels = int(self.targets.shape[1])
        self.logit_thr = _logit_thresholds(classifier.thresholds, n_labels, "EqualizedOddsPenalty")
        self.temperature = float(temperature)
        self.reduce = reduce
        self.labels = list(labels) if labels is not None else list(range(n_labels))

    def soft_predictions(self, recon: torch.Tensor) -> torch.Tensor:
        """``sigmoid((z - logit t) / T)``, (B, L)."""
        z = self.classifier.logits(recon)
        return torch.sigmoid((z - self.logit_thr.to(z.device)) / self.temperature)

    def penalty(self, recon: torch.Tensor, idx: np.ndarray) -> torch.Tensor | None:
        s = self.soft_predictions(recon)
        y = self.targets[torch.as_tensor(idx)].to(s.device)
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
    """Soft Dice gap between groups from a frozen segmenter (segmentation tasks).

    Foreground probabilities at the segmenter's pixel threshold :math:`t`:
    :math:`p = \\sigma((z - \\operatorname{logit} t) / T)`; the penalty is the mean over attributes
    of :func:`soft_dice_gap`.
    """

    def __init__(self, segmenter, masks: torch.Tensor, groups: dict[str, np.ndarray], lam: float,
                 temperature: float = 1.0, momentum: float = 0.9, penalty_floor: float = 0.05) -> None:
        super().__init__(lam, groups, momentum, penalty_floor)
        if temperature <= 0:
            raise ValueError(f"DiceGapPenalty: temperature must be > 0, got {temperature}")
        self.segmenter = segmenter
        self.masks = masks
        self.logit_thr = _logit_thresholds(segmenter.thresholds, 1, "DiceGapPenalty")
        self.temperature = float(temperature)

    def probabilities(self, recon: torch.Tensor) -> torch.Tensor:
        """Soft foreground probabilities (B, 1, H, W)."""
        z = self.segmenter.logits(recon)
        return torch.sigmoid((z - self.logit_thr.to(z.device)) / self.temperature)

    def penalty(self, recon: torch.Tensor, idx: np.ndarray) -> torch.Tensor | None:
        prob = self.probabilities(recon)
        m = self.masks[torch.as_tensor(idx)].to(prob.device)
        terms = [t for g in self.groups.values() if (t := soft_dice_gap(prob, m, g[idx])) is not None]
        return torch.stack(terms).mean() if terms else None


class AdversarialPenalty(_BasePenalty):
    """Adversarial debiasing with alternating min-max.

    An adversary :math:`a` (an MLP with one hidden layer) predicts the joint group :math:`g` of the
    chosen attributes from the frozen diagnostic model's features :math:`f(\\hat x)` of the
    reconstruction.  Each batch:

    1. reconstructor step on ``base + lam * scale * P`` with, for ``objective="confusion"``,
       :math:`P = \\mathrm{KL}(u \\,\\|\\, a(f(\\hat x))) = CE(u, a(f(\\hat x))) - \\log G`
       (:math:`u` uniform over the :math:`G` groups: the reconstructor pushes the adversary to
       chance, :math:`P \\ge 0`), or, for ``objective="reversal"``,
       :math:`P = -CE(g, a(f(\\hat x)))` (gradient reversal: the reconstructor maximises the
       adversary's loss);
    2. adversary step(s) (the ``on_batch_end`` hook, :meth:`adversary_step`) minimising
       :math:`CE(g, a(f(\\hat x)))` on the batch's detached features.

    The adversary's parameters are excluded from the graph of step 1, so the reconstructor's
    backward pass never touches them.  The tests check the signs: step 1 increases the
    adversary's loss on the batch, step 2 decreases it.
    """

    def __init__(self, model, groups: dict[str, np.ndarray], lam: float, n_features: int, hidden: int = 32,
                 adv_lr: float = 1e-3, objective: str = "confusion", seed: int = 0, momentum: float = 0.9,
                 adv_steps: int = 1, penalty_floor: float = 0.05, device: str | torch.device = "cpu") -> None:
        super().__init__(lam, groups, momentum, penalty_floor)
        if objective not in ("confusion", "reversal"):
            raise ValueError(f"AdversarialPenalty: objective must be 'confusion' or 'reversal', got {objective!r}")
        if adv_steps < 1:
            raise ValueError(f"AdversarialPenalty: adv_steps must be >= 1, got {adv_steps}")
        self.model = model
        joint = np.array(["|".join(t) for t in zip(*self.groups.values(), strict=True)])
        self.group_idx, self.n_groups = _group_index(joint)
        gen = torch.Generator().manual_seed(int(seed))
        self.adversary = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, self.n_groups))
        with torch.no_grad():  # seeded He-style initialisation, zero biases
            for layer in (self.adversary[0], self.adversary[2]):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * (2.0 / layer.weight.shape[1]) ** 0.5)
                layer.bias.zero_()
        self.adversary.to(device)
        self.opt = torch.optim.Adam(self.adversary.parameters(), lr=adv_lr)
        self.objective = objective
        self.adv_steps = int(adv_steps)
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None
        self.adv_losses: list[float] = []

    def adversary_loss(self, feats: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``CE(g, a(feats))`` (mean over the batch)."""
        return nn.functional.cross_entropy(self.adversary(feats), g)

    def batch_groups(self, idx: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        """Joint-group indices of the training positions ``idx``."""
        return self.group_idx[torch.as_tensor(np.asarray(idx)).reshape(-1)].to(device)

    def penalty(self, recon: torch.Tensor, idx: np.ndarray) -> torch.Tensor | None:
        feats = self.model.features(recon)
        g = self.batch_groups(idx, feats.device)
        self._last = (feats.detach(), g)
        if self.n_groups < 2:
            return None
        for p in self.adversary.parameters():
            p.requires_grad_(False)
        try:
            logits = self.adversary(feats)
        finally:
            for p in self.adversary.parameters():
                p.requires_grad_(True)
        if self.objective == "reversal":
            return -nn.functional.cross_entropy(logits, g)
        logp = torch.log_softmax(logits, 1)
        return -logp.mean(1).mean() - float(np.log(self.n_groups))

    def warm_up(self, images: torch.Tensor, epochs: int = 1, batch_size: int = 32, seed: int = 0) -> float | None:
        """Train the adversary alone on the features of ``images`` (aligned with the training pairs).

        Called before fine-tuning with the clean training images, so that the reconstructor faces
        an adversary that already reads the groups from the diagnostic model's features.  Returns
        the mean adversary loss of the last epoch (``None`` with fewer than two groups).
        """
        if self.n_groups < 2 or epochs < 1:
            return None
        n = int(images.shape[0])
        if n != int(self.group_idx.shape[0]):
            raise ValueError(f"warm_up: got {n} images for {int(self.group_idx.shape[0])} training studies")
        dev = next(self.adversary.parameters()).device
        with torch.no_grad():
            feats = torch.cat([self.model.features(images[i:i + batch_size]).detach().to(dev)
                               for i in range(0, n, batch_size)])
        gen = torch.Generator().manual_seed(int(seed))
        last = None
        for _ in range(int(epochs)):
            order = torch.randperm(n, generator=gen)
            tot = 0.0
            for i in range(0, n, batch_size):
                b = order[i:i + batch_size]
                self.opt.zero_grad(set_to_none=True)
                loss = self.adversary_loss(feats[b], self.group_idx[b].to(dev))
                loss.backward()
                self.opt.step()
                tot += float(loss.detach()) * len(b)
            last = tot / n
        return last

    def adversary_step(self, idx: torch.Tensor | None = None) -> float | None:
        """``adv_steps`` adversary updates on the features of the last batch (the ``on_batch_end`` hook).

        Returns the adversary's loss before its last update (``None`` before any batch).
        """
        if self._last is None or self.n_groups < 2:
            return None
        feats, g = self._last
        loss = None
        for _ in range(self.adv_steps):
            self.opt.zero_grad(set_to_none=True)
            loss = self.adversary_loss(feats, g)
            loss.backward()
            self.opt.step()
        self.adv_losses.append(float(loss.detach()))
        return self.adv_losses[-1]
