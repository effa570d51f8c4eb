"""IR-SDE: the forward process's statistics, learning, seeded sampling, persistence, loss-hook gradient."""

from __future__ import annotations

import math

import pytest
import torch
from _recon_data import noisy, pairs, phantoms, psnr

from reconaudit.recon import PairSet, TrainingHooks, make_reconstructor
from reconaudit.recon.irsde import IRSDESchedule

SMALL = {"channels": (8, 16), "norm_num_groups": 8, "T": 10, "batch_size": 8, "eval_batch_size": 16}


def test_stationary_marginal_at_T() -> None:
    lam = 10 / 255
    sch = IRSDESchedule(lam, 100, eps=0.01)
    assert math.isclose(float(sch.b[-1]), 0.01, rel_tol=1e-6)  # exp(-thetabar_T dt) = eps
    assert torch.allclose(sch.sigma**2 / sch.theta.clamp(min=1e-12), torch.full_like(sch.theta, 2 * lam**2))
    n = 200_000
    g = torch.Generator().manual_seed(0)
    x0, mu = torch.ones(n), torch.zeros(n)
    mean, std = sch.marginal(x0, mu, torch.full((n,), 100))
    xT = mean + std * torch.randn(n, generator=g)
    se = lam / math.sqrt(n)
    assert abs(float(xT.mean()) - 0.01) < 4 * se  # mu + eps (x0 - mu): within 1% of the unit gap from mu
    assert abs(float(xT.var()) / lam**2 - 1.0) < 0.01  # variance max_sigma^2 (1 - eps^2)


def test_closed_form_matches_simulated_sde() -> None:
    lam, T, sub = 0.2, 100, 10
    sch = IRSDESchedule(lam, T, eps=0.01)
    n = 10_000
    g = torch.Generator().manual_seed(1)
    x0, mu = 1.0, 0.3
    x = torch.full((n,), x0, dtype=torch.float64)
    h = sch.dt / sub
    for t in range(1, T + 1):  # Euler-Maruyama with `sub` substeps per schedule step
        th, sg = float(sch.theta[t]), float(sch.sigma[t])
        for _ in range(sub):
            x = x + th * (mu - x) * h + sg * math.sqrt(h) * torch.randn(n, generator=g, dtype=torch.float64)
        if t in (10, 50, 100):
            m, s = sch.marginal(torch.tensor([x0]), torch.tensor([mu]), torch.tensor([t]))
            assert abs(float(x.mean()) - float(m)) < 4 * float(s) / math.sqrt(n) + 2e-3
            assert abs(float(x.std()) / float(s) - 1.0) < 0.03


def test_posterior_is_the_optimal_reverse_step() -> None:
    sch = IRSDESchedule(0.1, 30)
    t, s = torch.tensor([12]), torch.tensor([11])
    xt, x0, mu = torch.tensor([0.7]), torch.tensor([0.2]), torch.tensor([0.5])
    a = math.exp(-float(sch.theta[12]) * sch.dt)
    B, C = float(sch.b[12]), float(sch.b[11])
    ref = a * (1 - C**2) / (1 - B**2) * (0.7 - 0.5) + C * (1 - a**2) / (1 - B**2) * (0.2 - 0.5) + 0.5
    mean, _ = sch.posterior(xt, x0, mu, t, s)
    assert math.isclose(float(mean), ref, rel_tol=1e-5)


@pytest.fixture(scope="module")
def fitted():
    clean = phantoms(30, size=16, seed=7)
    d = noisy(clean, sigma=0.1, seed=8)
    train, val = pairs(clean[:24], d.subset(range(24))), pairs(clean[24:], d.subset(range(24, 30)))
    rec = make_reconstructor("irsde", epochs=3, lr=3e-3, prediction="x0", **SMALL)
    hist = rec.fit(train, val, seed=0)
    return rec, hist, train, val


def test_learns_and_beats_identity(fitted) -> None:
    rec, hist, _, val = fitted
    assert hist["train_loss"][-1] < hist["train_loss"][0]
    seeds = list(range(100, 106))
    for sampler, steps in (("sde", 10), ("sde", 5), ("ode", 5)):
        rec.sampler, rec.steps = sampler, steps
        out = rec.reconstruct(val.degraded, seeds=seeds)
        assert psnr(out, val.clean) > psnr(val.degraded.image, val.clean) + 1.0, (sampler, steps)
    rec.sampler, rec.steps = "sde", 10


def test_samples_are_seeded_per_study_and_survive_save_load(fitted, tmp_path) -> None:
    rec, _, _, val = fitted
    seeds = [11, 12, 13]
    deg = val.degraded.subset(range(3))
    out = rec.reconstruct(deg, seeds=seeds, samples=2)
    assert out.shape == (3, 2, 1, 16, 16)
    assert not torch.allclose(out[:, 0], out[:, 1])  # stochastic
    # the same study with the same seed gives the same samples whatever the batch
    alone = rec.reconstruct(deg.subset([2]), seeds=[13], samples=2)
    assert torch.allclose(alone[0], out[2], atol=1e-5)
    rec.save(tmp_path / "irsde.safetensors")
    other = make_reconstructor("irsde", epochs=3, lr=3e-3, prediction="x0", **SMALL)
    other.load(tmp_path / "irsde.safetensors")
    assert torch.equal(other.reconstruct(deg, seeds=seeds, samples=2), out)


def test_loss_hook_gets_x0_hat_with_gradient(fitted) -> None:
    _, _, train, val = fitted
    rec = make_reconstructor("irsde", epochs=1, **SMALL)
    seen = {}

    def hook(base, recon, idx):
        params = list(rec.trainable_modules()[0].parameters())
        grads = torch.autograd.grad(recon.mean(), params, allow_unused=True, retain_graph=True)
        seen["nonzero"] = any(g is not None and g.abs().sum() > 0 for g in grads)
        return base + recon.mean()

    rec.fit(PairSet(train.degraded.subset(range(8)), train.clean[:8]), val, seed=0,
            hooks=TrainingHooks(loss_hook=hook))
    assert seen["nonzero"]


def test_x0_loss_starts_at_the_inputs_l1_error() -> None:
    # prediction x0 starts as the identity (zero-initialised output), so x0_hat = mu for every t and
    # the x0 loss is the mean absolute error of the degraded input, whatever noise was drawn
    clean = phantoms(8, 16, seed=3)
    deg = noisy(clean, 0.1, seed=4)
    rec = make_reconstructor("irsde", **SMALL, prediction="x0", loss="x0")
    rec._ensure_built()
    base, x0_hat = rec._losses(deg, clean, torch.Generator().manual_seed(0))
    assert torch.allclose(x0_hat, deg.image, atol=1e-5)
    assert float(base) == pytest.approx(float((deg.image - clean).abs().mean()), rel=1e-4)


def test_cosine_learning_rate_schedule() -> None:
    from reconaudit.recon.training import epoch_lr

    lr = 1e-3
    assert epoch_lr(lr, 3, 4, "constant") == lr
    assert epoch_lr(lr, 1, 4, "cosine") == pytest.approx(lr)
    # lr_min + (lr - lr_min) (1 + cos(pi (e - 1) / E)) / 2, lr_min = lr / 100
    assert epoch_lr(lr, 3, 4, "cosine") == pytest.approx(1e-5 + 0.99e-3 * 0.5)
    assert epoch_lr(lr, 4, 4, "cosine") == pytest.approx(1e-5 + 0.99e-3 * (1 + math.cos(0.75 * math.pi)) / 2)
