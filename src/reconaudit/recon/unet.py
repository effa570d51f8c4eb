"""Image-to-image U-Net reconstructor (MONAI ``UNet``), residual to its input.

``x_hat = x + UNet(x)`` with ``x = Degraded.image``; optional data consistency
(:func:`reconaudit.recon._fft.apply_data_consistency`) on the output, inside the loss path as well.
Loss: mean squared error (default) or L1 against the clean image.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from reconaudit.physics.base import Degraded
from reconaudit.recon._fft import apply_data_consistency
from reconaudit.recon.base import TrainingHooks
from reconaudit.recon.training import LearnedReconstructor, TrainParams, apply_loss_hook, pad_to_multiple


def make_unet(channels: tuple[int, ...], num_res_units: int, in_channels: int = 1, out_channels: int = 1) -> nn.Module:
    """A 2-D ``monai.networks.nets.UNet`` (stride-2 levels) followed by a zero-initialised 1x1 convolution.

    The MONAI U-Net ends in ``channels[0]`` feature maps (its top layer normalises its output, which
    suits features, not a residual image); the 1x1 head maps them to ``out_channels`` and starts at
    zero, so a residual model starts as the identity.
    """
    from monai.networks.nets import UNet

    body = UNet(
        spatial_dims=2, in_channels=in_channels, out_channels=channels[0], channels=tuple(channels),
        strides=(2,) * (len(channels) - 1), num_res_units=num_res_units,
    )
    head = nn.Conv2d(channels[0], out_channels, kernel_size=1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return nn.Sequential(body, head)


class ImageToImageReconstructor(LearnedReconstructor):
    """A network mapping the degraded image to the clean one, trained with a pixel loss.

    Subclasses provide ``_build`` returning ``{"net": module}`` and ``_multiple`` (the size the
    network's input must be divisible by; inputs are reflect-padded up to it and cropped back).
    """

    _multiple: int = 1

    def _forward(self, batch: Degraded) -> torch.Tensor:
        assert self.modules is not None
        x = batch.image.to(self.device, torch.float32)
        xp, (h, w) = pad_to_multiple(x, self._multiple)
        out = self.modules["net"](xp)[..., :h, :w]
        if getattr(self.hp, "residual", False):
            out = x + out
        if self.hp.data_consistency:
            out = apply_data_consistency(out, batch)
        return out

    def _pixel_loss(self, out: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        if getattr(self.hp, "loss", "mse") == "l1":
            return (out - clean).abs().mean()
        return ((out - clean) ** 2).mean()

    def _train_step(self, batch, clean, idx, gen, hooks: TrainingHooks | None, opts):
        opt = opts["net"]
        opt.zero_grad(set_to_none=True)
        out = self._forward(batch)
        base = self._pixel_loss(out, clean)
        total = apply_loss_hook(base, out, idx, hooks)
        total.backward()
        opt.step()
        return float(base.detach()), float(total.detach())

    def _batch_val_loss(self, batch, clean, gen):
        return self._pixel_loss(self._forward(batch), clean)

    def _predict(self, degraded, seeds, samples):
        from reconaudit.recon.training import as_samples

        return as_samples(self._forward(degraded), samples)


class UNetReconstructor(ImageToImageReconstructor):
    """Residual U-Net: ``x_hat = x + UNet(x)``, MSE or L1 loss, optional data consistency.

    Defaults are a CPU quickstart at 64x64 (channels (16, 32, 64), 3 epochs, batch 16, lr 1e-3).
    For the study's setting at 256x256 on a GPU use e.g. ``channels=(32, 64, 128, 256, 512)``,
    ``num_res_units=2``, ``epochs=100``, ``patience=10``, ``lr=1e-4``.
    """

    name: ClassVar[str] = "unet"

    class Params(TrainParams):
        """Hyperparameters of :class:`UNetReconstructor` (plus those of :class:`TrainParams`)."""

        channels: tuple[int, ...] = Field((16, 32, 64), min_length=2)
        num_res_units: int = Field(1, ge=0)
        loss: Literal["mse", "l1"] = "mse"
        residual: bool = True

    @property
    def _multiple(self) -> int:  # type: ignore[override]
        return 2 ** (len(self.hp.channels) - 1)

    def _build(self) -> dict[str, nn.Module]:
        return {"net": make_unet(self.hp.channels, self.hp.num_res_units)}
