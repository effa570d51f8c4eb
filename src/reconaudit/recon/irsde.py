"""IR-SDE: image restoration with a mean-reverting SDE (Luo et al., ICML 2023).

Forward process, with ``mu`` the degraded image and ``x_0`` the clean one::

    dx = theta_t (mu - x) dt + sigma_t dw,      sigma_t^2 / theta_t = 2 lambda^2,

discretised on ``t = 0..T`` with the cosine theta schedule of the paper and ``dt = -log(eps) /
thetabar_T`` (``thetabar_t = sum_{i=1..t} theta_i``, so ``exp(-thetabar_T dt) = eps``).  Its marginal
is Gaussian with

    m_t(x_0) = mu + (x_0 - mu) b_t,    b_t = exp(-thetabar_t dt),
    sigmabar_t^2 = lambda^2 (1 - b_t^2),

so at ``t = T`` the state is close to ``N(mu, lambda^2)`` (stationary std ``max_sigma = lambda``; the
study used ``10/255``, ``T = 100``).  A time-conditioned U-Net (``monai.networks.nets.DiffusionModelUNet``)
predicts the noise ``eps`` from ``(x_t - mu, mu)``; the score is ``-eps_hat / sigmabar_t``.

Training (``loss="ml"``, the default and the paper's maximum-likelihood objective): the L1 distance
between the network's reverse Euler step ``x_t - (theta_t (mu - x_t) - sigma_t^2 score) dt`` and the
optimal reverse state ``x*_{t-1} = mu + [a (1 - b_{t-1}^2) (x_t - mu) + b_{t-1} (1 - a^2) (x_0 - mu)] /
(1 - b_t^2)`` with ``a = exp(-theta_t dt)`` (the mean of ``x_{t-1} | x_t, x_0``).  ``loss="noise"`` uses
``||eps_hat - eps||^2`` instead, and ``loss="x0"`` the L1 error of the clean-image estimate,
``||x0_hat - x_0||_1`` (below; the x0-parametrised objective, which weights every ``t`` by what the
sampler's last step returns and trains in a few CPU epochs).

The loss hook receives ``x0_hat = mu + (x_t - mu - sigmabar_t eps_hat) / b_t``, the clean-image estimate
implied by the network's noise estimate, so a fairness penalty on it has a gradient into the network.
(Its error is the noise error amplified by ``sigmabar_t / b_t``, large near ``t = T``.)

Sampling starts from ``x_T = mu + lambda z``.  ``sampler="sde"`` with ``steps = T`` is the paper's
Euler-Maruyama reverse SDE ``x_{t-1} = x_t - (theta_t (mu - x_t) - sigma_t^2 score) dt - sigma_t sqrt(dt) z``;
with ``steps < T`` (strided times ``t > s``) it draws from the closed-form posterior ``x_s | x_t,
x0_hat`` (mean as ``x*`` above with ``a = b_t / b_s``, variance ``lambda^2 (1 - b_s^2)(1 - a^2) /
(1 - b_t^2)``).  ``sampler="ode"`` is deterministic at any stride:
``x_s = mu + b_s (x0_hat - mu) + sigmabar_s eps_hat``.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from reconaudit.physics.base import Degraded
from reconaudit.recon._fft import apply_data_consistency
from reconaudit.recon.base import TrainingHooks
from reconaudit.recon.training import LearnedReconstructor, TrainParams, apply_loss_hook, pad_to_multiple
from reconaudit.seeding import derive_seed, torch_generator


class IRSDESchedule:
    """The discretised mean-reverting SDE: ``theta_t``, ``sigma_t``, ``thetabar_t``, ``dt``, ``sigmabar_t``.

    ``theta`` follows the paper's cosine schedule: ``theta_i = 1 - abar_{i+1}`` (i = 0..T) with
    ``abar_j = cos^2(((j / (T + 2)) + s) / (1 + s) pi / 2)`` normalised by ``abar_0`` (s = 0.008);
    ``thetabar_t = cumsum(theta)_t - theta_0`` (so ``thetabar_0 = 0``); ``sigma_t = sqrt(2 lambda^2 theta_t)``.
    """

    def __init__(self, max_sigma: float, T: int, eps: float = 0.01) -> None:
        self.max_sigma = float(max_sigma)
        self.T = int(T)
        steps = T + 2
        x = torch.linspace(0, steps, steps + 1, dtype=torch.float64)
        s = 0.008
        acp = torch.cos(((x / steps) + s) / (1 + s) * math.pi * 0.5) ** 2
        acp = acp / acp[0]
        self.theta = 1 - acp[1:-1]
        self.thetabar = torch.cumsum(self.theta, 0) - self.theta[0]
        self.dt = -math.log(eps) / float(self.thetabar[-1])
        self.sigma = torch.sqrt(2 * self.max_sigma**2 * self.theta)
        self.b = torch.exp(-self.thetabar * self.dt)
        self.sigmabar = self.max_sigma * torch.sqrt(1 - self.b**2)

    def _at(self, v: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return v.to(like.device)[t.to(like.device)].to(like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def marginal(self, x0: torch.Tensor, mu: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``mu + (x0 - mu) b_t`` and std ``sigmabar_t`` of ``x_t | x_0`` (t: (N,) long)."""
        return mu + (x0 - mu) * self._at(self.b, t, x0), self._at(self.sigmabar, t, x0)

    def posterior(
        self, xt: torch.Tensor, x0: torch.Tensor, mu: torch.Tensor, t: torch.Tensor, s: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of ``x_s | x_t, x_0`` for ``s < t`` (Gaussian; see the module docstring)."""
        bt, bs = self._at(self.b, t, xt), self._at(self.b, s, xt)
        a = bt / bs
        den = 1 - bt**2
        mean = mu + (a * (1 - bs**2) * (xt - mu) + bs * (1 - a**2) * (x0 - mu)) / den
        var = self.max_sigma**2 * (1 - bs**2) * (1 - a**2) / den
        return mean, torch.sqrt(var.clamp(min=0))

    def x0_from_noise(self, xt: torch.Tensor, mu: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x0_hat = mu + (x_t - mu - sigmabar_t eps) / b_t``."""
        return mu + (xt - mu - self._at(self.sigmabar, t, xt) * eps) / self._at(self.b, t, xt)

    def reverse_euler_mean(self, xt: torch.Tensor, mu: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t - (theta_t (mu - x_t) - sigma_t^2 score) dt`` with ``score = -eps / sigmabar_t``."""
        score = -eps / self._at(self.sigmabar, t, xt)
        th, sg = self._at(self.theta, t, xt), self._at(self.sigma, t, xt)
        return xt - (th * (mu - xt) - sg**2 * score) * self.dt

    def euler_noise_std(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``sigma_t sqrt(dt)``: the std of the Euler-Maruyama noise at step t."""
        return self._at(self.sigma, t, like) * math.sqrt(self.dt)


class TimeConditionedUNet(nn.Module):
    """Noise predictor ``eps_hat(x_t, mu, t)``: a MONAI ``DiffusionModelUNet`` on ``cat(x_t - mu, mu)``."""

    def __init__(self, channels: tuple[int, ...], num_res_blocks: int, norm_num_groups: int) -> None:
        super().__init__()
        from monai.networks.nets import DiffusionModelUNet

        self.multiple = 2 ** (len(channels) - 1)
        self.net = DiffusionModelUNet(
            spatial_dims=2, in_channels=2, out_channels=1, channels=tuple(channels),
            attention_levels=(False,) * len(channels), num_res_blocks=num_res_blocks,
            norm_num_groups=norm_num_groups,
        )

    def forward(self, xt: torch.Tensor, mu: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted noise, same shape as ``xt``."""
        inp, (h, w) = pad_to_multiple(torch.cat([xt - mu, mu], dim=1), self.multiple)
        return self.net(inp, t.to(xt.device))[..., :h, :w]


class IRSDEReconstructor(LearnedReconstructor):
    """Conditional diffusion by the mean-reverting SDE of Luo et al. (2023); see the module docstring.

    Defaults are a CPU quickstart (channels (16, 32, 64), T = 100, 3 epochs, lr 1e-3).  The study:
    ``T=100``, ``max_sigma=10/255``, ``eps=0.01``, channels ``(64, 128, 256, 512)``, ``lr=1e-4``, many
    more epochs at 256x256 on a GPU.
    """

    name: ClassVar[str] = "irsde"
    stochastic: ClassVar[bool] = True

    class Params(TrainParams):
        """Hyperparameters of :class:`IRSDEReconstructor` (plus those of :class:`TrainParams`)."""

        T: int = Field(100, ge=2)
        max_sigma: float = Field(10.0 / 255.0, gt=0)
        eps: float = Field(0.01, gt=0, lt=1)
        channels: tuple[int, ...] = Field((16, 32, 64), min_length=2)
        num_res_blocks: int = Field(1, ge=1)
        norm_num_groups: int = Field(8, ge=1)
        loss: Literal["ml", "noise", "x0"] = "ml"
        prediction: Literal["noise", "x0"] = "noise"
        sampler: Literal["sde", "ode"] = "sde"
        steps: int | None = Field(None, ge=1)

    def __init__(self, device: str | torch.device = "cpu", **params: object) -> None:
        super().__init__(device, **params)
        if any(c % self.hp.norm_num_groups for c in self.hp.channels):
            raise ValueError(
                f"irsde: every entry of channels={self.hp.channels} must be divisible by norm_num_groups="
                f"{self.hp.norm_num_groups}"
            )
        if self.hp.steps is not None and self.hp.steps > self.hp.T:
            raise ValueError(f"irsde: steps={self.hp.steps} must be <= T={self.hp.T}")
        self.schedule = IRSDESchedule(self.hp.max_sigma, self.hp.T, self.hp.eps)
        self.sampler = self.hp.sampler
        self.steps = self.hp.steps or self.hp.T

    def _build(self) -> dict[str, nn.Module]:
        return {"net": TimeConditionedUNet(self.hp.channels, self.hp.num_res_blocks, self.hp.norm_num_groups)}

    def _noise(self, xt: torch.Tensor, mu: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise estimate ``eps_hat``: the network's output (``prediction="noise"``), or derived from
        its clean-image residual ``r`` (``prediction="x0"``: ``x0_hat = mu + r``,
        ``eps_hat = (x_t - mu - b_t r) / sigmabar_t``)."""
        assert self.modules is not None
        out = self.modules["net"](xt, mu, t)
        if self.hp.prediction == "noise":
            return out
        sch = self.schedule
        return (xt - mu - sch._at(sch.b, t, xt) * out) / sch._at(sch.sigmabar, t, xt)

    # ------------------------------------------------------------------ training
    def _losses(
        self, batch: Degraded, clean: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.modules is not None
        sch = self.schedule
        mu = batch.image.to(self.device, torch.float32)
        n = mu.shape[0]
        t = torch.randint(1, sch.T + 1, (n,), generator=gen)
        noise = torch.randn(mu.shape, generator=gen).to(self.device)
        mean, std = sch.marginal(clean, mu, t)
        xt = mean + std * noise
        eps_hat = self._noise(xt, mu, t)
        x0_hat = sch.x0_from_noise(xt, mu, eps_hat, t)
        if self.hp.data_consistency:
            x0_hat = apply_data_consistency(x0_hat, batch)
        if self.hp.loss == "noise":
            base = ((eps_hat - noise) ** 2).mean()
        elif self.hp.loss == "x0":
            base = (x0_hat - clean).abs().mean()
        else:
            target, _ = sch.posterior(xt, clean, mu, t, t - 1)
            base = (sch.reverse_euler_mean(xt, mu, eps_hat, t) - target).abs().mean()
        return base, x0_hat

    def _train_step(self, batch, clean, idx, gen, hooks: TrainingHooks | None, opts):
        opt = opts["net"]
        opt.zero_grad(set_to_none=True)
        base, x0_hat = self._losses(batch, clean, gen)
        total = apply_loss_hook(base, x0_hat, idx, hooks)
        total.backward()
        opt.step()
        return float(base.detach()), float(total.detach())

    def _batch_val_loss(self, batch, clean, gen):
        return self._losses(batch, clean, gen)[0]

    # ------------------------------------------------------------------ sampling
    def timesteps(self, steps: int) -> list[int]:
        """The descending sampling times ``T = t_0 > ... > t_steps = 0`` (evenly strided, rounded)."""
        ts = torch.linspace(self.schedule.T, 0, steps + 1).round().long().tolist()
        out = [ts[0]]
        for t in ts[1:]:
            if t < out[-1]:
                out.append(t)
        return out

    def _predict(self, degraded: Degraded, seeds: list[int] | None, samples: int) -> torch.Tensor:
        assert self.modules is not None and seeds is not None
        sch = self.schedule
        n, k = len(degraded), samples
        mu = degraded.image.to(self.device, torch.float32).repeat_interleave(k, dim=0)
        shape = mu.shape[1:]
        gens = [torch_generator(derive_seed("recon/irsde/sample", seeds[i], j)) for i in range(n) for j in range(k)]

        def randn() -> torch.Tensor:
            return torch.stack([torch.randn(shape, generator=g) for g in gens]).to(self.device)

        x = mu + sch.max_sigma * randn()
        ts = self.timesteps(self.steps)
        full = len(ts) == sch.T + 1
        for t_i, s_i in zip(ts[:-1], ts[1:]):
            t = torch.full((n * k,), t_i, dtype=torch.long)
            s = torch.full((n * k,), s_i, dtype=torch.long)
            eps_hat = self._noise(x, mu, t)
            if self.sampler == "sde" and full:
                x = sch.reverse_euler_mean(x, mu, eps_hat, t) - sch.euler_noise_std(t, x) * randn()
            elif self.sampler == "sde":
                x0_hat = sch.x0_from_noise(x, mu, eps_hat, t)
                mean, std = sch.posterior(x, x0_hat, mu, t, s)
                x = mean + std * randn() if s_i > 0 else mean
            else:
                x0_hat = sch.x0_from_noise(x, mu, eps_hat, t)
                x = mu + sch._at(sch.b, s, x) * (x0_hat - mu) + sch._at(sch.sigmabar, s, x) * eps_hat
        if self.hp.data_consistency:
            rep = Degraded(
                mu,
                None if degraded.kspace is None else degraded.kspace.repeat_interleave(k, dim=0),
                None if degraded.mask is None else (
                    degraded.mask if degraded.mask.shape[0] == 1 else degraded.mask.repeat_interleave(k, dim=0)
                ),
            )
            x = apply_data_consistency(x, rep)
        x = x.view(n, k, *shape)
        return x[:, 0] if k == 1 else x
