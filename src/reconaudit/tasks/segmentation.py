"""Binary segmentation with a 2-D MONAI U-Net, Dice + BCE (or the study's Dice + L1) loss.

The pixel threshold is fixed (0.5 by default): ``thresholds = np.array([pixel_threshold])``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from reconaudit.arrays import is_lazy
from reconaudit.tasks.loop import LossFn
from reconaudit.tasks.network import NetworkDiagnosticModel, as_float_tensor, hooked_output, pooled
from reconaudit.tasks.params import TrainParams


def dice_l1_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice plus L1 between foreground probabilities and the mask (the study's loss).

    .. math::

        \\mathcal{L} = 1 - \\frac{2 \\sum p\\,y + \\epsilon}{\\sum p + \\sum y + \\epsilon}
        + \\frac{1}{|\\Omega|}\\sum |p - y|, \\qquad p = \\sigma(z),

    with the Dice sums over the whole batch (:class:`monai.losses.DiceLoss` with ``batch=True``,
    :math:`\\epsilon = 10^{-5}`).
    """
    from monai.losses import DiceLoss

    p = torch.sigmoid(logits)
    dice = DiceLoss(sigmoid=False, batch=True)(p, target)
    return dice + (p - target).abs().mean()


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice plus binary cross-entropy on the logits (:class:`monai.losses.DiceCELoss`, sigmoid, batch Dice).

    .. math::

        \\mathcal{L} = 1 - \\frac{2 \\sum p\\,y + \\epsilon}{\\sum p + \\sum y + \\epsilon}
        - \\frac{1}{|\\Omega|}\\sum \\big[y \\log p + (1 - y)\\log(1 - p)\\big], \\qquad p = \\sigma(z).
    """
    from monai.losses import DiceCELoss

    return DiceCELoss(sigmoid=True, batch=True)(logits, target)


SEGMENTATION_LOSSES = {"dice_ce": dice_ce_loss, "dice_l1": dice_l1_loss}


class SegmenterParams(TrainParams):
    """Parameters shared by every segmenter (on top of :class:`TrainParams`).

    Attributes
    ----------
    loss:
        ``"dice_ce"`` (Dice + BCE, default) or ``"dice_l1"`` (the study's Dice + L1).
    pixel_threshold:
        A pixel is foreground when its probability is >= this (fixed, not chosen on data).
    """

    loss: Literal["dice_ce", "dice_l1"] = "dice_ce"
    pixel_threshold: float = Field(0.5, gt=0, lt=1)


class UNetParams(SegmenterParams):
    """``arch="small-cnn"`` / ``"unet"``: :class:`monai.networks.nets.UNet` settings.

    Attributes
    ----------
    channels:
        U-Net channels per level; ``None`` takes the arch default ((8, 16, 32) for
        ``"small-cnn"``, (16, 32, 64, 128) for ``"unet"``).  H and W must be divisible by
        :math:`2^{\\mathrm{len(channels)} - 1}`.
    num_res_units:
        Residual units per U-Net block.
    dropout:
        U-Net dropout probability.
    """

    channels: tuple[int, ...] | None = Field(None, min_length=2)
    num_res_units: int = Field(0, ge=0)
    dropout: float = Field(0.0, ge=0, lt=1)


DEFAULT_UNET_CHANNELS = {"small-cnn": (8, 16, 32), "unet": (16, 32, 64, 128)}


def unet_bottleneck(unet: nn.Module) -> nn.Module:
    """The deepest block of a :class:`monai.networks.nets.UNet` (the submodule of its innermost skip)."""
    from monai.networks.layers.simplelayers import SkipConnection

    module: nn.Module = unet.model if hasattr(unet, "model") else unet
    found = None
    while True:
        skips = [m for m in module.children() if isinstance(m, SkipConnection)]
        if not skips:
            break
        found = skips[0].submodule
        module = found
    if found is None:
        raise ValueError("no SkipConnection found: not a MONAI UNet")
    return found


class Segmenter(NetworkDiagnosticModel):
    """Binary segmenter: a 2-D :class:`monai.networks.nets.UNet` trained on clean images and masks.

    Parameters
    ----------
    device:
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    arch:
        ``"small-cnn"`` (a small U-Net, channels (8, 16, 32), the CPU default) or ``"unet"``
        (channels (16, 32, 64, 128)).
    in_channels:
        1 for images, 2 for k-space channels.
    n_outputs:
        Must be 1 (one foreground channel).
    **params:
        See :class:`UNetParams`.

    Notes
    -----
    :meth:`predict` returns foreground probabilities float32 (N, 1, H, W) (float32 to bound memory);
    :meth:`logits` differentiable (N, 1, H, W); :meth:`features` the globally average-pooled
    output of the U-Net bottleneck (N, channels[-1]).  ``thresholds`` is ``[pixel_threshold]``.
    """

    kind: ClassVar[str] = "segmentation"
    arch_params: ClassVar[dict[str, type[TrainParams]]] = {"small-cnn": UNetParams, "unet": UNetParams}

    def __init__(
        self,
        device: str | torch.device = "cpu",
        *,
        arch: str = "small-cnn",
        in_channels: int = 1,
        n_outputs: int = 1,
        **params: object,
    ) -> None:
        if int(n_outputs) != 1:
            raise ValueError(f"segmentation models have one foreground output; n_outputs must be 1, got {n_outputs}")
        super().__init__(device, arch=arch, in_channels=in_channels, n_outputs=1, **params)

    @property
    def channels(self) -> tuple[int, ...]:
        """U-Net channels per level."""
        return tuple(getattr(self.config, "channels", None) or DEFAULT_UNET_CHANNELS.get(self.arch, (8, 16, 32)))

    def _default_thresholds(self) -> np.ndarray:
        return np.array([float(self.config.pixel_threshold)])

    def _build_network(self) -> nn.Module:
        from monai.networks.nets import UNet

        ch = self.channels
        return UNet(
            spatial_dims=2,
            in_channels=self.in_channels,
            out_channels=1,
            channels=ch,
            strides=(2,) * (len(ch) - 1),
            num_res_units=self.config.num_res_units,
            dropout=self.config.dropout,
        )

    def _check_images(self, x: torch.Tensor, name: str) -> None:
        f = 2 ** (len(self.channels) - 1)
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(
                f"{name}: H and W must be divisible by {f} for a U-Net with {len(self.channels)} levels, "
                f"got {tuple(x.shape[-2:])}; pad the images or use fewer channels"
            )

    def _prepare_targets(self, targets, n: int, x: torch.Tensor | None, name: str) -> torch.Tensor:
        y = as_float_tensor(targets, name)
        expected = (n, 1, *x.shape[-2:]) if x is not None else None
        if y.ndim != 4 or (expected is not None and tuple(y.shape) != expected):
            raise ValueError(f"{name} must be masks of shape {expected}, got {tuple(y.shape)}")
        if not is_lazy(y) and (torch.isnan(y).any() or y.min() < 0 or y.max() > 1):  # stored masks are uint8
            raise ValueError(f"{name} must hold values in [0, 1] (binary masks) without NaN")
        return y

    def _make_loss(self, train_targets: torch.Tensor) -> LossFn:
        return SEGMENTATION_LOSSES[self.config.loss]

    def _probabilities(self, logits: torch.Tensor) -> np.ndarray:
        return torch.sigmoid(logits).float().cpu().numpy()

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        _, bottleneck = hooked_output(self.net, unet_bottleneck(self.net), x)
        return pooled(bottleneck)

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the pooled bottleneck from one forward pass."""
        out, bottleneck = hooked_output(self.net, unet_bottleneck(self.net), x)
        return out, pooled(bottleneck)
