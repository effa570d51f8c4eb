"""Multi-label classifier: learns an easy problem, masks missing labels, stays frozen, round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _synthetic import discs_and_bars
from sklearn.metrics import roc_auc_score

from reconaudit.tasks import TaskConfigError, choose_thresholds, make_task_model, masked_bce_with_logits
from reconaudit.tasks.classification import Classifier

SMALL = dict(channels=(8, 16), batch_size=8, lr=3e-3)


@pytest.fixture(scope="module")
def data():
    x, y, _ = discs_and_bars(40, seed=0)
    vx, vy, _ = discs_and_bars(24, seed=1)
    tx, ty, _ = discs_and_bars(60, seed=2)
    rng = np.random.default_rng(0)
    y = y.copy()
    y[rng.random(y.shape) < 0.2] = np.nan  # 20 % missing labels in training
    return x, y, vx, vy, tx, ty


@pytest.fixture(scope="module")
def trained(data):
    x, y, vx, vy, _, _ = data
    model = make_task_model("classification", n_outputs=2, epochs=10, patience=10, label_names=["disc", "bar"], **SMALL)
    history = model.fit(x, y, vx, vy, seed=0)
    return model, history


def numpy_bce(z: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> float:
    p = 1 / (1 + np.exp(-z))
    w = np.ones(z.shape[1]) if w is None else w
    obs = ~np.isnan(y)
    terms = -(w[None, :] * y * np.log(p) + (1 - y) * np.log(1 - p))
    return float(terms[obs].sum() / obs.sum())


def test_learns_easy_problem(trained, data):
    model, history = trained
    *_, tx, ty = data
    p = model.predict(tx)
    assert p.shape == (60, 2) and p.dtype == np.float64
    assert np.all((p >= 0) & (p <= 1))
    for k in range(2):
        assert roc_auc_score(ty[:, k], p[:, k]) > 0.9
    assert len(history["train_loss"]) == len(history["val_loss"]) == history["epochs_run"]
    assert history["val_loss"][history["best_epoch"] - 1] == min(history["val_loss"])  # 1-based, as for recon


def test_thresholds_chosen_on_validation_with_policy(trained, data):
    model, _ = trained
    _, _, vx, vy, _, _ = data
    expected = choose_thresholds(vy, model.predict(vx), "sens_eq_spec")
    np.testing.assert_array_equal(model.thresholds, expected)


@pytest.mark.parametrize("with_weight", [False, True])
def test_masked_bce_equals_numpy_over_observed(with_weight):
    rng = np.random.default_rng(3)
    z = rng.normal(0, 2, (7, 3))
    y = (rng.random((7, 3)) < 0.5).astype(float)
    y[rng.random((7, 3)) < 0.3] = np.nan
    w = np.array([0.5, 2.0, 3.0]) if with_weight else None
    got = masked_bce_with_logits(
        torch.tensor(z), torch.tensor(y), None if w is None else torch.tensor(w)
    )
    assert float(got) == pytest.approx(numpy_bce(z, y, w), rel=1e-10)


def test_masked_entries_get_no_gradient_and_all_missing_is_zero():
    z = torch.zeros(4, 2, requires_grad=True)
    y = torch.tensor([[1.0, np.nan], [0.0, np.nan], [np.nan, np.nan], [1.0, np.nan]])
    masked_bce_with_logits(z, y).backward()
    assert torch.all(z.grad[:, 1] == 0) and torch.all(z.grad[2] == 0)
    assert torch.all(z.grad[[0, 1, 3], 0] != 0)
    empty = masked_bce_with_logits(torch.zeros(2, 2, requires_grad=True), torch.full((2, 2), float("nan")))
    assert float(empty.detach()) == 0.0


def test_training_loss_is_bce_over_observed_entries(data):
    """The loss a classifier trains with (here with pos_weight="balanced": w_j = n_neg / n_pos over
    the observed training targets) equals a direct numpy BCE over the observed entries only."""
    x, y, vx, vy, _, _ = data
    model = make_task_model("classification", n_outputs=2, pos_weight="balanced", epochs=1, **SMALL)
    history = model.fit(x, y, vx, vy, seed=5)
    assert all(np.isfinite(history["train_loss"]))
    obs = ~np.isnan(y)
    w = np.array([((y[:, k] == 0) & obs[:, k]).sum() / ((y[:, k] == 1) & obs[:, k]).sum() for k in range(2)])
    loss = model._make_loss(torch.as_tensor(y, dtype=torch.float32))
    logits = torch.randn(40, 2, generator=torch.Generator().manual_seed(0))
    got = float(loss(logits, torch.as_tensor(y, dtype=torch.float32)))
    assert got == pytest.approx(numpy_bce(logits.double().numpy(), y, w), rel=1e-5)


def test_logits_differentiable_wrt_input_but_frozen(trained, data):
    model, _ = trained
    *_, tx, _ = data
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = tx[:8].clone().requires_grad_(True)
    out = model.logits(x)
    assert out.shape == (8, 2) and out.requires_grad
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in model.net.parameters())
    feats = model.features(x)
    assert feats.shape == (8, 16) and feats.requires_grad
    # a step of an optimiser over the input leaves the network unchanged
    opt = torch.optim.SGD([x], lr=0.1)
    opt.zero_grad()
    model.logits(x).sum().backward()
    opt.step()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    np.testing.assert_allclose(model.predict(tx[:8]), torch.sigmoid(model.logits(tx[:8])).detach().numpy(), rtol=1e-6)


def test_save_load_round_trip(trained, data, tmp_path):
    model, _ = trained
    *_, tx, _ = data
    path = tmp_path / "clf.safetensors"
    model.save(path)
    other = make_task_model("classification", n_outputs=2, **SMALL)
    other.load(path)
    np.testing.assert_array_equal(other.predict(tx), model.predict(tx))
    np.testing.assert_array_equal(other.thresholds, model.thresholds)
    wrong = make_task_model("classification", n_outputs=3, **SMALL)
    with pytest.raises(ValueError, match="n_outputs=3"):
        wrong.load(path)


def test_same_seed_same_weights(data):
    x, y, vx, vy, _, _ = data
    kw = dict(n_outputs=2, epochs=1, augment=True, dropout=0.2, **SMALL)
    a = make_task_model("classification", **kw)
    a.fit(x, y, vx, vy, seed=11)
    torch.manual_seed(12345)  # the global generator must not matter
    b = make_task_model("classification", **kw)
    b.fit(x, y, vx, vy, seed=11)
    c = make_task_model("classification", **kw)
    c.fit(x, y, vx, vy, seed=12)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    np.testing.assert_array_equal(a.thresholds, b.thresholds)


def test_fit_leaves_global_rng_untouched(data):
    x, y, vx, vy, _, _ = data
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    make_task_model("classification", n_outputs=2, epochs=1, dropout=0.5, **SMALL).fit(x, y, vx, vy, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_densenet_arch_and_two_channels():
    x = torch.rand(6, 2, 32, 32)
    model = make_task_model(
        "classification", arch="densenet", n_outputs=3, in_channels=2,
        init_features=8, growth_rate=4, block_config=(2, 2, 2, 2),
    )
    assert isinstance(model, Classifier)
    assert model.predict(x).shape == (6, 3)
    xr = x.clone().requires_grad_(True)
    f = model.features(xr)
    assert f.ndim == 2 and f.shape[0] == 6
    model.logits(xr).sum().backward()
    assert xr.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="in_channels=2"):
        model.predict(torch.rand(6, 1, 32, 32))


def test_config_errors_name_the_key():
    with pytest.raises(TaskConfigError, match="'epoch'.*allowed parameters: .*epochs"):
        make_task_model("classification", n_outputs=2, epoch=3)
    with pytest.raises(TaskConfigError, match="threshold_policy.*youden"):
        make_task_model("classification", n_outputs=2, threshold_policy="f1")
    with pytest.raises(TaskConfigError, match="threshold_target"):
        make_task_model("classification", n_outputs=2, threshold_policy="target_sensitivity")
    with pytest.raises(TaskConfigError, match="allowed: small-cnn, densenet, plugin"):
        make_task_model("classification", arch="resnet", n_outputs=2)
    with pytest.raises(TaskConfigError, match="n_outputs"):
        make_task_model("classification")
    with pytest.raises(TaskConfigError, match="'init_features'"):
        make_task_model("classification", n_outputs=2, init_features=8)  # a densenet key on small-cnn
    with pytest.raises(TaskConfigError, match="allowed: classification, segmentation"):
        make_task_model("detection")
