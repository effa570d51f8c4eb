"""U-Net and pix2pix: learning, persistence, loss-hook gradients, checkpoint resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _recon_data import noisy, pairs, phantoms, psnr

from reconaudit.recon import TrainingHooks, make_reconstructor

SMALL = {"channels": (8, 16), "batch_size": 8, "eval_batch_size": 16}


@pytest.fixture(scope="module")
def data():
    clean = phantoms(32, seed=5)
    d = noisy(clean, sigma=0.1, seed=6)
    return pairs(clean[:24], d.subset(range(24))), pairs(clean[24:], d.subset(range(24, 32)))


@pytest.mark.parametrize("name,extra", [("unet", {"lr": 3e-3}), ("pix2pix", {"lr": 2e-3})])
def test_learns_and_beats_identity_and_round_trips(name, extra, data, tmp_path) -> None:
    train, val = data
    rec = make_reconstructor(name, epochs=3, **SMALL, **extra)
    hist = rec.fit(train, val, seed=0)
    assert hist["epochs_run"] == 3 and hist["resumed_from"] is None
    assert hist["train_loss"][-1] < hist["train_loss"][0]
    out = rec.reconstruct(val.degraded)
    assert psnr(out, val.clean) > psnr(val.degraded.image, val.clean) + 1.0
    rec.save(tmp_path / "m.safetensors")
    other = make_reconstructor(name, epochs=3, **SMALL, **extra)
    other.load(tmp_path / "m.safetensors")
    assert torch.equal(other.reconstruct(val.degraded), out)


@pytest.mark.parametrize("name", ["unet", "pix2pix"])
def test_loss_hook_recon_reaches_trainable_parameters(name, data) -> None:
    train, val = data
    rec = make_reconstructor(name, epochs=1, **SMALL)
    seen = {}

    def hook(base, recon, idx):
        assert recon.grad_fn is not None and recon.shape[1:] == (1, 32, 32) and idx.dtype == torch.long
        seen["n"] = seen.get("n", 0) + 1
        # the penalty alone must reach every trainable module's parameters
        params = [p for m in rec.trainable_modules() for p in m.parameters()]
        grads = torch.autograd.grad(recon.mean(), params, allow_unused=True, retain_graph=True)
        seen["nonzero"] = any(g is not None and g.abs().sum() > 0 for g in grads)
        return base + recon.mean()

    rec.fit(train, val, seed=0, hooks=TrainingHooks(loss_hook=hook))
    assert seen["n"] == 3 and seen["nonzero"]


def test_sample_weights_change_the_draws(data) -> None:
    train, val = data
    drawn: list[int] = []
    w = np.zeros(len(train))
    w[:4] = 1.0
    rec = make_reconstructor("unet", epochs=1, **SMALL)
    rec.fit(train, val, seed=0, hooks=TrainingHooks(sample_weights=w, on_batch_end=lambda i: drawn.extend(i.tolist())))
    assert len(drawn) == len(train) and set(drawn) <= {0, 1, 2, 3}


def test_checkpoint_resume_equals_uninterrupted_run(data, tmp_path) -> None:
    train, val = data
    params = dict(epochs=2, patience=10, **SMALL)
    full = make_reconstructor("unet", **params)
    full.fit(train, val, seed=1)
    calls = {"n": 0}

    def interrupt(idx):
        calls["n"] += 1
        if calls["n"] > 3:  # first batch of epoch 2
            raise KeyboardInterrupt

    first = make_reconstructor("unet", **params)
    with pytest.raises(KeyboardInterrupt):
        first.fit(train, val, seed=1, hooks=TrainingHooks(on_batch_end=interrupt), checkpoint_dir=tmp_path)
    resumed = make_reconstructor("unet", **params)
    hist = resumed.fit(train, val, seed=1, checkpoint_dir=tmp_path)
    assert hist["resumed_from"] == 1 and hist["epochs_run"] == 2 and len(hist["val_loss"]) == 2
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a finished checkpoint is reused as is
    again = make_reconstructor("unet", **params)
    assert again.fit(train, val, seed=1, checkpoint_dir=tmp_path)["resumed_from"] == 2
    with pytest.raises(ValueError, match="different run"):
        make_reconstructor("unet", **params).fit(train, val, seed=2, checkpoint_dir=tmp_path)


def test_finetune_continues_and_early_stopping_restores_best(data) -> None:
    train, val = data
    rec = make_reconstructor("unet", epochs=1, **SMALL)
    rec.fit(train, val, seed=0)
    before = {k: v.clone() for k, v in rec.state_dict().items()}
    hist = rec.finetune(train, val, epochs=2, lr=1e-9, seed=0)
    assert hist["epochs_run"] == 2
    after = rec.state_dict()
    assert all(torch.allclose(before[k], after[k], atol=1e-5) for k in before)  # tiny lr: continued, not re-initialised
    # a huge lr makes validation worse: patience 1 stops early and keeps epoch 1's weights
    rec2 = make_reconstructor("unet", epochs=3, patience=1, lr=0.5, **SMALL)
    h2 = rec2.fit(train, val, seed=0)
    best = int(np.nanargmin(h2["val_loss"])) + 1
    assert h2["best_epoch"] == best


@pytest.mark.parametrize("name,kind", [("unet", "mri"), ("pix2pix", "inpaint"), ("irsde", "mri"), ("irsde", "inpaint")])
def test_every_degradation_with_data_consistency(name, kind) -> None:
    from _recon_data import inpaint, mri

    clean = phantoms(10, size=16, seed=9)
    extra = {"T": 5, "channels": (8, 16)} if name == "irsde" else {"channels": (8, 16)}
    for deg in [mri(clean) if kind == "mri" else inpaint(clean)]:
        rec = make_reconstructor(name, epochs=1, batch_size=8, data_consistency=True, clip_output=False, **extra)
        rec.fit(pairs(clean[:8], deg.subset(range(8))), pairs(clean[8:], deg.subset([8, 9])), seed=0)
        out = rec.reconstruct(deg, seeds=list(range(10)), study_ids=[f"s{i}" for i in range(10)])
        assert out.shape == clean.shape and torch.isfinite(out).all()
        if deg.kspace is None:  # inpainting: observed pixels are kept exactly
            m = deg.mask.bool()
            assert torch.allclose(out[m], clean[m], atol=1e-6)
        else:  # MRI: a magnitude image (exact consistency of the complex image: test_recon_classical.py)
            assert (out >= 0).all()
