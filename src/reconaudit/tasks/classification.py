"""Multi-label classification: a small CNN or a MONAI DenseNet, masked binary cross-entropy.

Targets are float (N, L): 1, 0, or NaN where a label is missing; missing entries contribute
nothing to the loss (:func:`masked_bce_with_logits`).  After training, one operating threshold per
label is chosen on the clean validation data with the configured policy
(:mod:`reconaudit.tasks.thresholds`) and then fixed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from reconaudit.tasks.loop import LossFn
from reconaudit.tasks.network import NetworkDiagnosticModel, as_float_tensor, pooled
from reconaudit.tasks.params import TrainParams
from reconaudit.tasks.thresholds import choose_thresholds

# ---------------------------------------------------------------------------------------------
# loss


def masked_bce_with_logits(
    logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary cross-entropy over the observed (non-NaN) targets only.

    .. math::

        \\mathcal{L} = \\frac{1}{\\sum_{ij} m_{ij}} \\sum_{ij} m_{ij}\\,
        -\\big[w_j\\, y_{ij} \\log \\sigma(z_{ij}) + (1 - y_{ij}) \\log(1 - \\sigma(z_{ij}))\\big]

    with :math:`m_{ij} = 1` where :math:`y_{ij}` is observed, :math:`w_j` the positive weight of
    label :math:`j` (1 without ``pos_weight``).  With no observed entry the loss is 0 (and still
    differentiable).

    Parameters
    ----------
    logits:
        (N, L) logits :math:`z`.
    targets:
        (N, L) targets in [0, 1], NaN where missing.
    pos_weight:
        Optional (L,) weights :math:`w_j` for the positive term.
    """
    observed = ~torch.isnan(targets)
    y = torch.where(observed, targets, torch.zeros_like(targets))
    per_entry = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight, reduction="none")
    m = observed.to(per_entry.dtype)
    return (per_entry * m).sum() / m.sum().clamp_min(1.0)


def balanced_pos_weight(targets: torch.Tensor) -> torch.Tensor:
    """Per-label :math:`w_j = n^-_j / n^+_j` over observed targets, clipped to [0.01, 100] (1 if undefined)."""
    observed = ~torch.isnan(targets)
    pos = ((targets == 1) & observed).sum(0).double()
    neg = ((targets == 0) & observed).sum(0).double()
    w = torch.where(pos > 0, neg / pos.clamp_min(1), torch.ones_like(pos))
    w = torch.where(neg > 0, w, torch.ones_like(w))
    return w.clamp(0.01, 100.0).float()


# ---------------------------------------------------------------------------------------------
# networks


class SmallCNN(nn.Module):
    """A small CNN for CPU runs: blocks of conv3x3-BatchNorm-ReLU-maxpool, then average pool and linear.

    ``features`` are the globally average-pooled output of the last block, (N, channels[-1]).
    """

    def __init__(
        self, in_channels: int, n_outputs: int, channels: Sequence[int] = (16, 32, 64), dropout: float = 0.0
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_prev = in_channels
        for c in channels:
            layers += [nn.Conv2d(c_prev, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            c_prev = c
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(c_prev, n_outputs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features (N, channels[-1])."""
        return pooled(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.forward_features(x)))


def densenet_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate features of a MONAI DenseNet: ReLU and average pooling of the dense blocks' output."""
    return net.class_layers[:-1](net.features(x))


# ---------------------------------------------------------------------------------------------
# parameters


class ClassifierParams(TrainParams):
    """Parameters shared by every classifier architecture (on top of :class:`TrainParams`).

    Attributes
    ----------
    threshold_policy:
        ``"sens_eq_spec"`` (default, as in the MIDL 2026 study), ``"youden"`` or
        ``"target_sensitivity"``; see :mod:`reconaudit.tasks.thresholds`.
    threshold_target:
        Target sensitivity in (0, 1] for ``"target_sensitivity"``.
    pos_weight:
        Weight of the positive term of the BCE: one number for every label, one per label, or
        ``"balanced"`` (:math:`n^-/n^+` per label on the training targets); ``None`` for 1.
    label_names:
        Label names, used in warnings (e.g. a label with one class in validation).
    """

    threshold_policy: Literal["sens_eq_spec", "youden", "target_sensitivity"] = "sens_eq_spec"
    threshold_target: float | None = Field(None, gt=0, le=1)
    pos_weight: float | list[float] | Literal["balanced"] | None = None
    label_names: list[str] | None = None

    @model_validator(mode="after")
    def _target_given(self) -> ClassifierParams:
        if self.threshold_policy == "target_sensitivity" and self.threshold_target is None:
            raise ValueError("threshold_policy 'target_sensitivity' needs threshold_target (a sensitivity in (0, 1])")
        return self


class SmallCNNParams(ClassifierParams):
    """``arch="small-cnn"``: ``channels`` per block (each block halves H and W) and head ``dropout``."""

    channels: tuple[int, ...] = Field((16, 32, 64), min_length=1)
    dropout: float = Field(0.0, ge=0, lt=1)


class DenseNetParams(ClassifierParams):
    """``arch="densenet"``: :class:`monai.networks.nets.DenseNet` settings.

    The default block layout (6, 12, 24, 16) is DenseNet-121's, with ``init_features=16`` and
    ``growth_rate=16`` (instead of 64 and 32) to suit 64x64 inputs.  Inputs must be at least 32x32.
    """

    init_features: int = Field(16, ge=1)
    growth_rate: int = Field(16, ge=1)
    block_config: tuple[int, ...] = Field((6, 12, 24, 16), min_length=1)
    bn_size: int = Field(4, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)


# ---------------------------------------------------------------------------------------------
# model


class Classifier(NetworkDiagnosticModel):
    """Multi-label classifier trained with masked BCE on clean images.

    Parameters
    ----------
    device:
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    arch:
        ``"small-cnn"`` (:class:`SmallCNN`, the CPU default) or ``"densenet"``
        (:class:`monai.networks.nets.DenseNet`, 2-D).
    in_channels:
        1 for images, 2 for k-space as real and imaginary channels (:mod:`reconaudit.tasks.direct`).
    n_outputs:
        Number of labels L.
    **params:
        See :class:`SmallCNNParams` / :class:`DenseNetParams` (unknown keys are an error).

    Notes
    -----
    :meth:`predict` returns sigmoid probabilities float64 (N, L); :meth:`logits` differentiable
    (N, L); :meth:`features` the pooled penultimate features (N, F).  After :meth:`fit`,
    ``thresholds`` (L,) hold the per-label operating points chosen on the validation data.
    """

    kind: ClassVar[str] = "classification"
    arch_params: ClassVar[dict[str, type[TrainParams]]] = {"small-cnn": SmallCNNParams, "densenet": DenseNetParams}

    def __init__(
        self,
        device: str | torch.device = "cpu",
        *,
        arch: str = "small-cnn",
        in_channels: int = 1,
        n_outputs: int = 1,
        **params: object,
    ) -> None:
        super().__init__(device, arch=arch, in_channels=in_channels, n_outputs=n_outputs, **params)
        names = self.config.label_names
        if names is not None and len(names) != self.n_outputs:
            raise ValueError(f"label_names has {len(names)} names but n_outputs={self.n_outputs}")

    # ----------------------------------------------------------------- network
    def _build_network(self) -> nn.Module:
        c = self.config
        if self.arch == "small-cnn":
            return SmallCNN(self.in_channels, self.n_outputs, c.channels, c.dropout)
        from monai.networks.nets import DenseNet

        return DenseNet(
            spatial_dims=2,
            in_channels=self.in_channels,
            out_channels=self.n_outputs,
            init_features=c.init_features,
            growth_rate=c.growth_rate,
            block_config=c.block_config,
            bn_size=c.bn_size,
            dropout_prob=c.dropout,
        )

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if self.arch == "densenet":
            return densenet_features(self.net, x)
        return self.net.forward_features(x)

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and pooled penultimate features from one forward pass."""
        if self.arch == "densenet":
            f = densenet_features(self.net, x)
            return self.net.class_layers[-1](f), f
        f = self.net.forward_features(x)
        return self.net.head(self.net.dropout(f)), f

    def _check_images(self, x: torch.Tensor, name: str) -> None:
        if self.arch == "densenet" and min(x.shape[-2:]) < 32:
            raise ValueError(f"{name}: arch 'densenet' needs images of at least 32x32, got {tuple(x.shape[-2:])}")

    # ----------------------------------------------------------------- targets and loss
    def _prepare_targets(self, targets, n: int, x: torch.Tensor, name: str) -> torch.Tensor:
        y = as_float_tensor(targets, name)
        if y.ndim == 1 and self.n_outputs == 1:
            y = y[:, None]
        if y.shape != (n, self.n_outputs):
            raise ValueError(f"{name} must be (N, L) = ({n}, {self.n_outputs}), got {tuple(y.shape)}")
        obs = y[~torch.isnan(y)]
        if obs.numel() and (obs.min() < 0 or obs.max() > 1):
            raise ValueError(f"{name} must hold values in [0, 1] or NaN for missing labels")
        return y

    def _pos_weight(self, y: torch.Tensor) -> torch.Tensor | None:
        pw = self.config.pos_weight
        if pw is None:
            return None
        if pw == "balanced":
            return balanced_pos_weight(y).to(self.device)
        w = torch.as_tensor(pw, dtype=torch.float32).reshape(-1)
        if w.numel() == 1:
            w = w.expand(self.n_outputs).clone()
        if w.numel() != self.n_outputs:
            raise ValueError(f"pos_weight has {w.numel()} values but there are {self.n_outputs} labels")
        return w.to(self.device)

    def _make_loss(self, train_targets: torch.Tensor) -> LossFn:
        pw = self._pos_weight(train_targets)

        def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return masked_bce_with_logits(logits, y, pw)

        return loss

    # ----------------------------------------------------------------- thresholds
    def select_thresholds(self, images, targets) -> np.ndarray:
        """Thresholds (L,) chosen on ``images`` / ``targets`` with the configured policy (no side effect)."""
        y = self._prepare_targets(targets, len(images), None, "targets").numpy()
        scores = self.predict(images)
        return choose_thresholds(
            y,
            scores,
            self.config.threshold_policy,
            self.config.threshold_target,
            labels=self.config.label_names,
        )

    def _after_fit(self, val_x: torch.Tensor, val_targets) -> None:
        self.thresholds = self.select_thresholds(val_x, val_targets)
