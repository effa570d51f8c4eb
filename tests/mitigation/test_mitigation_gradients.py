"""Each penalty (eodd, Dice gap, adversarial) sends a finite, non-zero gradient into every trainable
reconstructor's network (U-Net, pix2pix generator, IR-SDE noise network), through the training loop's
own loss hook."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from reconaudit.mitigation.strategies import apply_mitigation, make_hooks
from reconaudit.physics.base import Degraded
from reconaudit.recon import TrainingHooks, make_reconstructor
from reconaudit.recon.base import PairSet
from reconaudit.tasks import make_task_model

N, SIZE = 16, 32
RECON = {
    "unet": {"channels": (8, 16), "epochs": 1, "batch_size": 4},
    "pix2pix": {"channels": (8, 16), "ndf": 8, "n_layers": 1, "epochs": 1, "batch_size": 4},
    "irsde": {"channels": (8, 16), "norm_num_groups": 8, "T": 10, "epochs": 1, "batch_size": 4},
}


def _pairs(seed: int = 0) -> PairSet:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    c = 8 + 16 * torch.rand(N, 2, generator=g)
    d2 = (yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2
    masks = (d2 < 16).float()[:, None]
    clean = (0.3 + 0.4 * masks * (torch.rand(N, 1, 1, 1, generator=g) > 0.3)).clamp(0, 1)
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=g)
    groups = pd.DataFrame({"sex": np.array(["F", "M"] * (N // 2)), "age_band": np.array(["<50"] * 8 + ["50+"] * 8)})
    targets = np.stack([np.arange(N) % 3 == 0, np.arange(N) % 2 == 0], 1).astype(np.float32)
    return PairSet(Degraded(noisy), clean, [f"s{i}" for i in range(N)], groups, targets, masks)


@pytest.fixture(scope="module")
def data():
    train = _pairs(0)
    clf = make_task_model("classification", "small-cnn", n_outputs=2, channels=(4, 8))  # untrained, frozen
    clf.thresholds = np.array([0.45, 0.55])
    seg = make_task_model("segmentation", "small-cnn", channels=(4, 8))
    recs = {}
    for name, params in RECON.items():
        rec = make_reconstructor(name, **params)
        rec.fit(train, _pairs(1), seed=0)  # 4 steps: zero-initialised layers (heads, residual branches) move
        recs[name] = rec
    return train, {"classification": clf, "segmentation": seg}, recs


def _penalty_grads(rec, pen, train: PairSet) -> list[torch.Tensor | None]:
    """Run one training step of ``rec`` whose loss hook takes the gradient of the penalty alone."""
    params = [p for m in rec.trainable_modules() for p in m.parameters() if p.requires_grad]
    grads: list = []

    def hook(base, recon, idx):
        value = pen.penalty(recon, idx.numpy())
        assert value is not None and torch.isfinite(value)
        grads.extend(torch.autograd.grad(value, params, retain_graph=True, allow_unused=True))
        return base

    opts = rec._make_optimizers(1e-12)
    rec._train_mode(True)
    idx = torch.arange(len(train))
    gen = torch.Generator().manual_seed(0)
    rec._train_step(train.degraded, train.clean, idx, gen, TrainingHooks(loss_hook=hook), opts)
    return grads


@pytest.mark.parametrize("recon", sorted(RECON))
@pytest.mark.parametrize("strategy,task", [("eodd", "classification"), ("eodd", "segmentation"),
                                           ("adversarial", "classification")])
def test_penalty_reaches_every_trainable_network(data, recon: str, strategy: str, task: str) -> None:
    train, models, recs = data
    rec = recs[recon]
    _, pen = make_hooks(rec, strategy, 1.0, {"task": task, "warmup_epochs": 0} if strategy == "adversarial"
                        else {"task": task}, train, task_models={task: models[task]})
    grads = _penalty_grads(rec, pen, train)
    weights = [g for m in rec.trainable_modules() for g, (name, p) in zip(grads, m.named_parameters())
               if p.ndim > 1]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    nonzero = [float(g.abs().sum()) > 0 for g in weights]
    # every weight tensor (convolutions, time embedding, head) gets a gradient from the penalty
    assert np.mean(nonzero) >= 0.9, f"{recon}: {sum(nonzero)}/{len(nonzero)} weight tensors reached"
    first, last = weights[0], weights[-1]
    assert float(first.abs().sum()) > 0 and float(last.abs().sum()) > 0
    # the frozen diagnostic model gets nothing
    assert all(p.grad is None for p in models[task].net.parameters())


def test_eodd_finetune_changes_weights_differently_from_plain_finetuning(data) -> None:
    train, models, _ = data
    base = make_reconstructor("unet", **RECON["unet"])
    base.fit(train, _pairs(1), seed=0)
    state = base.state_dict()
    out = {}
    for lam in (0.0, 10.0):
        rec = make_reconstructor("unet", **RECON["unet"])
        rec.load_state_dict(state)
        hist = apply_mitigation(rec, "eodd", lam, {"epochs": 1, "lr": 1e-3}, train, _pairs(1),
                                task_models={"classification": models["classification"]})
        assert hist["mitigation"]["penalty_calls"] == N // 4 and hist["epochs_run"] == 1
        out[lam] = rec.state_dict()
    moved = {k: float((out[0.0][k] - state[k]).abs().sum()) for k in state}
    diff = {k: float((out[10.0][k] - out[0.0][k]).abs().sum()) for k in state}
    assert sum(moved.values()) > 0  # plain fine-tuning moved the weights
    assert sum(diff.values()) > 0  # and the penalty moved them elsewhere
