"""pix2pix: a conditional GAN (Isola et al., CVPR 2017) for reconstruction.

Generator: the residual U-Net of :mod:`reconaudit.recon.unet`.  Discriminator: a PatchGAN on the
concatenated (input, output) pair, ``n_layers`` stride-2 4x4 convolutions with instance norm and
LeakyReLU(0.2), then a 1-channel 4x4 convolution giving one logit per patch.

Objective (per batch, discriminator step first, then generator step):
``L_D = [l(D(x, y), 1) + l(D(x, G(x)), 0)] / 2`` and
``L_G = l(D(x, G(x)), 1) + lambda_L1 * ||G(x) - y||_1`` with ``l`` binary cross-entropy on logits
(``gan_loss="bce"``) or squared error (``"lsgan"``).  ``lambda_L1 = 1000`` by default (the value the
study used; pix2pix's paper used 100).  The loss hook sees ``L_G`` and ``G(x)``; the validation
loss used for early stopping is the L1 error of ``G(x)``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from reconaudit.recon.base import TrainingHooks
from reconaudit.recon.training import TrainParams, apply_loss_hook
from reconaudit.recon.unet import ImageToImageReconstructor, make_unet


class PatchGAN(nn.Module):
    """PatchGAN discriminator on (input, output) pairs: (N, 2, H, W) -> (N, 1, h, w) logits."""

    def __init__(self, in_channels: int = 2, ndf: int = 32, n_layers: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = ndf
        for i in range(1, n_layers):
            nxt = ndf * min(2**i, 8)
            layers += [nn.Conv2d(ch, nxt, 4, 2, 1), nn.InstanceNorm2d(nxt, affine=True), nn.LeakyReLU(0.2)]
            ch = nxt
        nxt = ndf * min(2**n_layers, 8)
        layers += [nn.Conv2d(ch, nxt, 4, 1, 1), nn.InstanceNorm2d(nxt, affine=True), nn.LeakyReLU(0.2)]
        layers += [nn.Conv2d(nxt, 1, 4, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Patch logits for the pair ``(x, y)``."""
        return self.net(torch.cat([x, y], dim=1))


class Pix2PixReconstructor(ImageToImageReconstructor):
    """Conditional GAN with a U-Net generator and a PatchGAN discriminator (see module docstring).

    Defaults: a CPU quickstart (channels (16, 32, 64), 3 epochs, lr 2e-4, Adam betas (0.5, 0.999)).
    Study setting at 256x256: ``channels=(64, 128, 256, 512, 512)``, ``ndf=64``, ``n_layers=3``,
    ``epochs=100``, ``lambda_l1=1000``.
    """

    name: ClassVar[str] = "pix2pix"

    class Params(TrainParams):
        """Hyperparameters of :class:`Pix2PixReconstructor` (plus those of :class:`TrainParams`)."""

        lr: float = Field(2e-4, gt=0)
        channels: tuple[int, ...] = Field((16, 32, 64), min_length=2)
        num_res_units: int = Field(1, ge=0)
        residual: bool = True
        ndf: int = Field(32, ge=1)
        n_layers: int = Field(2, ge=1)
        gan_loss: Literal["bce", "lsgan"] = "bce"
        lambda_l1: float = Field(1000.0, ge=0)
        beta1: float = Field(0.5, ge=0, lt=1)

    @property
    def _multiple(self) -> int:  # type: ignore[override]
        return 2 ** (len(self.hp.channels) - 1)

    def _build(self) -> dict[str, nn.Module]:
        return {
            "net": make_unet(self.hp.channels, self.hp.num_res_units),
            "disc": PatchGAN(2, self.hp.ndf, self.hp.n_layers),
        }

    def _make_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        assert self.modules is not None
        betas = (self.hp.beta1, 0.999)
        wd = self.hp.weight_decay
        return {
            "net": torch.optim.Adam(self.modules["net"].parameters(), lr=lr, betas=betas, weight_decay=wd),
            "disc": torch.optim.Adam(self.modules["disc"].parameters(), lr=lr, betas=betas, weight_decay=wd),
        }

    def _gan(self, logits: torch.Tensor, real: bool) -> torch.Tensor:
        target = torch.ones_like(logits) if real else torch.zeros_like(logits)
        if self.hp.gan_loss == "lsgan":
            return ((logits - target) ** 2).mean()
        return nn.functional.binary_cross_entropy_with_logits(logits, target)

    def _train_step(self, batch, clean, idx, gen, hooks: TrainingHooks | None, opts):
        assert self.modules is not None
        disc = self.modules["disc"]
        x = batch.image.to(self.device, torch.float32)
        fake = self._forward(batch)
        # discriminator step
        opts["disc"].zero_grad(set_to_none=True)
        loss_d = 0.5 * (self._gan(disc(x, clean), True) + self._gan(disc(x, fake.detach()), False))
        loss_d.backward()
        opts["disc"].step()
        # generator step (discriminator parameters receive gradients but are not stepped here)
        opts["net"].zero_grad(set_to_none=True)
        base = self._gan(disc(x, fake), True) + self.hp.lambda_l1 * (fake - clean).abs().mean()
        total = apply_loss_hook(base, fake, idx, hooks)
        total.backward()
        opts["net"].step()
        return float(base.detach()), float(total.detach())

    def _batch_val_loss(self, batch, clean, gen):
        return (self._forward(batch) - clean).abs().mean()
