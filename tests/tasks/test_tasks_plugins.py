"""The user's own diagnostic model plugs in by 'package.module:factory', with an optional weights file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _plugin_model import TinyNet, build_segmenter
from _synthetic import discs_and_bars
from safetensors.torch import save_file

from reconaudit.tasks import (
    PluginClassifier,
    PluginSegmenter,
    TaskConfigError,
    choose_thresholds,
    make_task_model,
)


@pytest.fixture(scope="module")
def data():
    x, y, m = discs_and_bars(24, seed=0)
    vx, vy, vm = discs_and_bars(20, seed=1)
    return x, y, m, vx, vy, vm


@pytest.fixture(scope="module")
def user_net():
    torch.manual_seed(0)
    net = TinyNet(1, 2, width=6)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net.eval()


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "pt-wrapped"])
def test_weights_file_is_loaded(user_net, data, tmp_path, fmt):
    x, *_ = data
    state = {k: v.clone() for k, v in user_net.state_dict().items()}
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "w.pt"
        torch.save({"state_dict": state, "epoch": 3} if fmt == "pt-wrapped" else state, path)
    model = make_task_model(
        "classification", arch="plugin", n_outputs=2, target="_plugin_model:build",
        weights=str(path), factory_kwargs={"width": 6},
    )
    assert isinstance(model, PluginClassifier)
    with torch.no_grad():
        expected = torch.sigmoid(user_net(x)).double().numpy()
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-6)


def test_frozen_plugin_fit_only_chooses_thresholds(user_net, data, tmp_path):
    x, y, _, vx, vy, _ = data
    path = tmp_path / "w.safetensors"
    save_file(dict(user_net.state_dict()), str(path))
    model = make_task_model(
        "classification", arch="plugin", n_outputs=2, target="_plugin_model:build",
        weights=str(path), factory_kwargs={"width": 6}, threshold_policy="youden",
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = model.fit(x, y, vx, vy, seed=0)
    assert history["trained"] is False and history["epochs_run"] == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    np.testing.assert_array_equal(model.thresholds, choose_thresholds(vy, model.predict(vx), "youden"))
    # frozen: gradients reach the input only; features come from forward_features
    xr = x[:3].clone().requires_grad_(True)
    f = model.features(xr)
    assert f.shape == (3, 6)
    model.logits(xr).sum().backward()
    assert xr.grad.abs().sum() > 0 and all(p.grad is None for p in model.net.parameters())
    # save / load round trip through the base-class format
    model.save(tmp_path / "m.safetensors")
    other = make_task_model("classification", arch="plugin", n_outputs=2, target="_plugin_model:build",
                            factory_kwargs={"width": 6})
    other.load(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(other.predict(vx), model.predict(vx))
    np.testing.assert_array_equal(other.thresholds, model.thresholds)


def test_trainable_plugin_is_fine_tuned_deterministically(data):
    x, y, _, vx, vy, _ = data
    kw = dict(arch="plugin", n_outputs=2, target="_plugin_model:build", trainable=True, epochs=2, lr=1e-2)
    a = make_task_model("classification", **kw)
    start = {k: v.clone() for k, v in a.state_dict().items()}
    h = a.fit(x, y, vx, vy, seed=1)
    b = make_task_model("classification", **kw)
    b.fit(x, y, vx, vy, seed=1)
    assert h["trained"] is True and h["epochs_run"] == 2
    assert not all(torch.equal(v, start[k]) for k, v in a.state_dict().items())
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not any(p.requires_grad for p in a.net.parameters())


def test_features_layer_hook(data):
    x, *_ = data
    model = make_task_model("classification", arch="plugin", n_outputs=2, target="_plugin_model:build",
                            features_layer="act")
    f = model.features(x[:2])
    with torch.no_grad():
        expected = model.net.act(model.net.conv(x[:2])).mean((-2, -1))
    torch.testing.assert_close(f, expected)


def test_plugin_segmenter(data, tmp_path):
    x, _, m, vx, _, vm = data
    torch.manual_seed(1)
    net = build_segmenter()
    path = tmp_path / "seg.pt"
    torch.save(net.state_dict(), path)
    model = make_task_model("segmentation", arch="plugin", target="_plugin_model:build_segmenter", weights=str(path))
    assert isinstance(model, PluginSegmenter)
    with torch.no_grad():
        np.testing.assert_allclose(model.predict(x), torch.sigmoid(net(x)).numpy(), rtol=1e-6)
    model.fit(x, m, vx, vm, seed=0)
    np.testing.assert_array_equal(model.thresholds, [0.5])
    assert model.features(x[:2]).shape == (2, 1)  # pooled logits by default


def test_plugin_errors_are_explicit(data, tmp_path):
    x, y, _, vx, vy, _ = data
    with pytest.raises(TaskConfigError, match="cannot import module 'no_such_module'"):
        make_task_model("classification", arch="plugin", n_outputs=2, target="no_such_module:build")
    with pytest.raises(TaskConfigError, match="has no attribute 'missing'"):
        make_task_model("classification", arch="plugin", n_outputs=2, target="_plugin_model:missing")
    with pytest.raises(TaskConfigError, match="package.module:factory"):
        make_task_model("classification", arch="plugin", n_outputs=2, target="_plugin_model.build")
    with pytest.raises(TaskConfigError, match="must return a torch.nn.Module"):
        make_task_model("classification", arch="plugin", n_outputs=2, target="_plugin_model:not_a_module")
    with pytest.raises(TaskConfigError, match="'target'"):
        make_task_model("classification", arch="plugin", n_outputs=2)
    wrong = make_task_model("classification", arch="plugin", n_outputs=2, target="_plugin_model:build_wrong")
    with pytest.raises(ValueError, match=r"returned logits of shape \(1, 5\)"):
        wrong.fit(x, y, vx, vy)
    with pytest.raises(ValueError, match="nowhere.safetensors.*does not exist"):
        make_task_model("classification", arch="plugin", n_outputs=2, target="_plugin_model:build",
                        weights=str(tmp_path / "nowhere.safetensors"))
    save_file({"conv.weight": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="does not fit"):
        make_task_model("classification", arch="plugin", n_outputs=2, target="_plugin_model:build",
                        weights=str(tmp_path / "bad.safetensors"))
