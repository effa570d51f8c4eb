"""Penalty formulas against independent oracles (fairlearn, reconaudit.metrics) and the adversarial signs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reconaudit.metrics import dice, dice_gap
from reconaudit.mitigation import (
    AdversarialPenalty,
    EqualizedOddsPenalty,
    RunningMean,
    soft_dice_gap,
    soft_equalized_odds,
)


@st.composite
def _hard_predictions(draw):
    n_groups = draw(st.integers(2, 4))
    per_group = draw(st.lists(st.integers(2, 12), min_size=n_groups, max_size=n_groups))
    y, pred, grp = [], [], []
    for g, n in enumerate(per_group):
        ys = [1, 0] + draw(st.lists(st.integers(0, 1), min_size=n - 2, max_size=n - 2))  # both classes
        y += ys
        pred += draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
        grp += [f"g{g}"] * n
    return np.array(y), np.array(pred), np.array(grp)


@settings(max_examples=60, deadline=None)
@given(_hard_predictions())
def test_soft_eod_equals_fairlearn_on_hard_predictions(data) -> None:
    from fairlearn.metrics import equalized_odds_difference

    y, pred, grp = data
    ours = soft_equalized_odds(torch.tensor(pred, dtype=torch.float64), torch.tensor(y, dtype=torch.float64), grp)
    ref = equalized_odds_difference(y, pred, sensitive_features=grp)
    assert ours is not None
    assert math.isclose(float(ours), float(ref), abs_tol=1e-12)


def test_soft_eod_known_answer_and_missing_targets() -> None:
    # group a: positives score 0.9, 0.7 -> TPR 0.8; negatives 0.2 -> FPR 0.2
    # group b: positive 0.3 -> TPR 0.3; negatives 0.1, 0.3 -> FPR 0.2; a NaN target is ignored
    s = torch.tensor([0.9, 0.7, 0.2, 0.3, 0.1, 0.3, 0.99])
    y = torch.tensor([1, 1, 0, 1, 0, 0, float("nan")])
    g = np.array(["a", "a", "a", "b", "b", "b", "b"])
    assert math.isclose(float(soft_equalized_odds(s, y, g)), 0.5, rel_tol=1e-6)
    assert soft_equalized_odds(s[:3], y[:3], g[:3]) is None  # one group only


def test_soft_dice_gap_matches_metrics_dice_gap_on_binary_masks() -> None:
    gen = torch.Generator().manual_seed(0)
    pred = (torch.rand(12, 1, 16, 16, generator=gen) < 0.4).float()
    mask = (torch.rand(12, 1, 16, 16, generator=gen) < 0.5).float()
    groups = np.array(["a"] * 5 + ["b"] * 4 + ["c"] * 3)
    ours = float(soft_dice_gap(pred, mask, groups, eps=1e-9))
    ref = dice_gap(dice(pred.numpy().astype(bool), mask.numpy().astype(bool)), sensitive_features=groups)
    assert math.isclose(ours, float(ref), rel_tol=1e-5)


def test_running_mean_and_normalised_total() -> None:
    m = RunningMean(0.5)
    assert m.update(2.0) == 2.0 and m.update(4.0) == 3.0 and m.update(torch.tensor(1.0)) == 2.0

    class Fixed(EqualizedOddsPenalty):
        def __init__(self, values):
            self.values = iter(values)
            super().__init__(type("C", (), {"thresholds": np.array([0.5])})(), np.zeros((4, 1)),
                             {"a": np.array(list("abab"))}, lam=2.0, momentum=0.5, penalty_floor=0.05)

        def penalty(self, recon, idx):
            return torch.tensor(next(self.values))

    pen = Fixed([0.4, 0.2, 0.01])
    idx = torch.arange(4)
    # call 1: m_base = 1, m_pen = 0.4 -> 1 + 2 * (1 / 0.4) * 0.4 = 3
    assert math.isclose(float(pen(torch.tensor(1.0), None, idx)), 3.0, rel_tol=1e-6)
    # call 2: m_base = 2, m_pen = 0.3 -> 3 + 2 * (2 / 0.3) * 0.2
    assert math.isclose(float(pen(torch.tensor(3.0), None, idx)), 3 + 2 * (2 / 0.3) * 0.2, rel_tol=1e-6)
    # call 3: m_pen = 0.155 -> not floored; total uses |m_base| / m_pen
    assert math.isclose(float(pen(torch.tensor(2.0), None, idx)), 2 + 2 * (2 / 0.155) * 0.01, rel_tol=1e-5)
    floored = Fixed([0.001])
    assert math.isclose(float(floored(torch.tensor(1.0), None, idx)), 1 + 2 * (1 / 0.05) * 0.001, rel_tol=1e-5)
    with pytest.raises(ValueError, match="lambda"):
        EqualizedOddsPenalty(type("C", (), {"thresholds": np.array([0.5])})(), np.zeros((4, 1)),
                             {"a": np.array(list("abab"))}, lam=-1.0)


class _Features:
    """A frozen 'diagnostic model' whose features are fixed random projections of the image."""

    def __init__(self, size: int = 8, n_features: int = 6) -> None:
        self.w = torch.randn(size * size, n_features, generator=torch.Generator().manual_seed(3))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x.flatten(1) @ self.w)


@pytest.mark.parametrize("objective", ["confusion", "reversal"])
def test_adversarial_signs(objective: str) -> None:
    """A reconstructor step with the penalty raises the adversary's loss; an adversary step lowers it."""
    gen = torch.Generator().manual_seed(0)
    n = 64
    groups = np.array(["f", "m"] * (n // 2))
    shift = torch.as_tensor((groups == "m").astype(np.float32))[:, None, None, None]
    degraded = torch.rand(n, 1, 8, 8, generator=gen) * 0.5 + 0.5 * shift  # the group is visible
    model = _Features()
    pen = AdversarialPenalty(model, {"sex": groups}, lam=1.0, n_features=6, hidden=16, adv_lr=1e-2,
                             objective=objective, seed=0)
    pen.warm_up(degraded, epochs=30, batch_size=64)
    idx = torch.arange(n)
    g = pen.batch_groups(idx)

    def adv_loss(x: torch.Tensor) -> float:
        with torch.no_grad():
            return float(pen.adversary_loss(model.features(x), g))

    # a one-layer "reconstructor": x_hat = degraded + b (per-pixel bias), base loss = MSE to a clean image
    bias = torch.zeros(1, 1, 8, 8, requires_grad=True)
    opt = torch.optim.SGD([bias], lr=0.5)
    before = adv_loss(degraded)
    pen.opt.zero_grad(set_to_none=True)
    recon = degraded + bias
    base = ((recon - 0.9 * degraded) ** 2).mean()
    total = pen(base, recon, idx)
    opt.zero_grad()
    total.backward()
    assert all(p.grad is None for p in pen.adversary.parameters())  # the adversary is not in this graph
    assert bias.grad is not None and float(bias.grad.abs().sum()) > 0
    opt.step()
    after_rec = adv_loss(degraded + bias.detach())
    assert after_rec > before
    pen.adversary_step(idx)
    after_adv = adv_loss(degraded + bias.detach())
    assert after_adv < after_rec
