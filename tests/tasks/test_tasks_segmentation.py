"""Segmenter: learns bright discs, losses match their formulas, frozen gradients, round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _synthetic import dice, discs_and_bars

from reconaudit.tasks import Segmenter, TaskConfigError, make_task_model
from reconaudit.tasks.segmentation import dice_ce_loss, dice_l1_loss

SMALL = dict(channels=(8, 16, 32), batch_size=8, lr=1e-2)


@pytest.fixture(scope="module")
def data():
    x, _, m = discs_and_bars(40, seed=0)
    vx, _, vm = discs_and_bars(20, seed=1)
    tx, _, tm = discs_and_bars(40, seed=2)
    return x, m, vx, vm, tx, tm


@pytest.fixture(scope="module")
def trained(data):
    x, m, vx, vm, _, _ = data
    model = make_task_model("segmentation", epochs=10, patience=10, **SMALL)
    history = model.fit(x, m, vx, vm, seed=0)
    return model, history


def test_segments_discs(trained, data):
    model, history = trained
    *_, tx, tm = data
    p = model.predict(tx)
    assert isinstance(model, Segmenter)
    assert p.shape == (40, 1, 32, 32) and p.dtype == np.float32
    np.testing.assert_array_equal(model.thresholds, [0.5])
    assert dice(p >= model.thresholds[0], tm.numpy()) > 0.7
    assert history["val_loss"][-1] < history["val_loss"][0]


def _numpy_dice_term(p: np.ndarray, y: np.ndarray, eps: float = 1e-5) -> float:
    return 1 - (2 * (p * y).sum() + eps) / (p.sum() + y.sum() + eps)


def test_losses_match_their_formulas():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (3, 1, 8, 8))
    y = (rng.random((3, 1, 8, 8)) < 0.3).astype(float)
    p = 1 / (1 + np.exp(-z))
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()
    l1 = np.abs(p - y).mean()
    zt, yt = torch.tensor(z), torch.tensor(y)
    assert float(dice_ce_loss(zt, yt)) == pytest.approx(_numpy_dice_term(p, y) + bce, rel=1e-6)
    assert float(dice_l1_loss(zt, yt)) == pytest.approx(_numpy_dice_term(p, y) + l1, rel=1e-6)


def test_dice_l1_trains(data):
    x, m, vx, vm, _, _ = data
    model = make_task_model("segmentation", loss="dice_l1", epochs=2, **SMALL)
    h = model.fit(x[:16], m[:16], vx[:8], vm[:8], seed=0)
    assert h["epochs_run"] == 2 and np.all(np.isfinite(h["val_loss"]))


def test_gradients_reach_input_not_weights(trained, data):
    model, _ = trained
    *_, tx, _ = data
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = tx[:4].clone().requires_grad_(True)
    out = model.logits(x)
    assert out.shape == (4, 1, 32, 32)
    f = model.features(x)
    assert f.shape == (4, 32)  # pooled bottleneck: channels[-1]
    (out.mean() + f.mean()).backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in model.net.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_save_load_and_determinism(trained, data, tmp_path):
    model, _ = trained
    x, m, vx, vm, tx, _ = data
    model.save(tmp_path / "seg.safetensors")
    other = make_task_model("segmentation", **SMALL)
    other.load(tmp_path / "seg.safetensors")
    np.testing.assert_array_equal(other.predict(tx), model.predict(tx))
    np.testing.assert_array_equal(other.thresholds, model.thresholds)
    a = make_task_model("segmentation", epochs=1, augment=True, **SMALL)
    b = make_task_model("segmentation", epochs=1, augment=True, **SMALL)
    a.fit(x[:16], m[:16], vx[:8], vm[:8], seed=3)
    b.fit(x[:16], m[:16], vx[:8], vm[:8], seed=3)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_two_channel_input_and_errors():
    model = make_task_model("segmentation", in_channels=2, **SMALL)
    assert model.predict(torch.rand(3, 2, 32, 32)).shape == (3, 1, 32, 32)
    with pytest.raises(ValueError, match="divisible by 4"):
        model.predict(torch.rand(3, 2, 30, 30))
    with pytest.raises(TaskConfigError, match="dice_ce.*dice_l1"):
        make_task_model("segmentation", loss="focal")
    with pytest.raises(TaskConfigError, match="allowed: small-cnn, unet, plugin"):
        make_task_model("segmentation", arch="densenet")
    with pytest.raises(ValueError, match="masks of shape"):
        model.fit(torch.rand(4, 2, 32, 32), torch.zeros(4, 32, 32), torch.rand(2, 2, 32, 32), torch.zeros(2, 1, 32, 32))
