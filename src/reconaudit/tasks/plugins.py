"""The user's own diagnostic model, plugged in like a reconstructor.

``target="package.module:factory"`` names a callable returning a ``torch.nn.Module`` that maps
(N, C, H, W) to logits: (N, L) for classification, (N, 1, H, W) for segmentation.  ``weights``
optionally names a safetensors file or a ``torch.save``-d state dict (loaded with
``weights_only=True``).  By default the module is used frozen as given (``trainable=False``):
:meth:`fit` trains nothing and only chooses the operating thresholds on the clean validation data.
With ``trainable=True`` it is fine-tuned from the given weights by the same loop as the built-in
models.

Features (for adversarial debiasing): the output of the submodule named by ``features_layer``
(globally average pooled to (N, F)); else the module's own ``forward_features(x)`` when it has
one (pooled if it returns maps); else the logits themselves (pooled to (N, 1) for segmentation).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from reconaudit.plugins import import_target, load_into, load_state_dict_file
from reconaudit.tasks.classification import Classifier, ClassifierParams
from reconaudit.tasks.loop import evaluate_loss
from reconaudit.tasks.network import hooked_output, pooled
from reconaudit.tasks.params import TaskConfigError, TrainParams
from reconaudit.tasks.segmentation import Segmenter, SegmenterParams


class PluginFields(TrainParams):
    """Fields every plug-in takes.

    Attributes
    ----------
    target:
        ``"package.module:factory"`` (the factory may be a dotted attribute, ``"mod:Class.build"``).
    weights:
        Optional path to weights: ``.safetensors``, or a state dict saved with :func:`torch.save`
        (loaded with ``weights_only=True``; a dict wrapping it under ``"state_dict"`` also works).
    trainable:
        ``False`` (default): used frozen as given; ``True``: fine-tuned on the training data.
    factory_kwargs:
        Keyword arguments for the factory.
    features_layer:
        Name (as in ``module.named_modules()``) of the submodule whose output are the features.
    """

    target: str = Field(..., min_length=3)
    weights: str | None = None
    trainable: bool = False
    factory_kwargs: dict[str, Any] = Field(default_factory=dict)
    features_layer: str | None = None


class PluginClassifierParams(PluginFields, ClassifierParams):
    """Parameters of :class:`PluginClassifier`: :class:`PluginFields` plus the classifier settings."""


class PluginSegmenterParams(PluginFields, SegmenterParams):
    """Parameters of :class:`PluginSegmenter`: :class:`PluginFields` plus the segmenter settings."""


def load_factory(target: str):
    """Import ``"package.module:attr[.attr]"`` and return the callable it names (errors: TaskConfigError)."""
    return import_target(target, TaskConfigError)


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a :func:`torch.save` file (``weights_only=True``)."""
    return load_state_dict_file(path)


class _PluginMixin:
    """Builds the network from the user's factory, loads weights, trains only when asked."""

    reinit_on_fit: ClassVar[bool] = False
    config: Any
    net: nn.Module
    n_outputs: int
    kind: ClassVar[str]

    def _build_network(self) -> nn.Module:
        c = self.config
        factory = load_factory(c.target)
        net = factory(**c.factory_kwargs)
        if not isinstance(net, nn.Module):
            raise TaskConfigError(
                f"plugin target {c.target!r} returned {type(net).__name__}; it must return a torch.nn.Module"
            )
        if c.weights is not None:
            load_into(net, load_weights_file(c.weights), c.weights, c.target)
        if c.features_layer is not None:
            names = dict(net.named_modules())
            if c.features_layer not in names:
                raise TaskConfigError(
                    f"features_layer {c.features_layer!r} is not a submodule of the module from {c.target!r}; "
                    f"submodules: {', '.join(n for n in names if n)[:500]}"
                )
        return net

    def _check_output(self, out: torch.Tensor, x: torch.Tensor) -> None:
        if self.kind == "classification":
            ok = out.ndim == 2 and out.shape == (x.shape[0], self.n_outputs)
            want = f"({x.shape[0]}, {self.n_outputs})"
        else:
            ok = out.ndim == 4 and tuple(out.shape) == (x.shape[0], 1, *x.shape[-2:])
            want = f"({x.shape[0]}, 1, {x.shape[-2]}, {x.shape[-1]})"
        if not ok:
            raise ValueError(
                f"plugin module from {self.config.target!r} returned logits of shape {tuple(out.shape)}; "
                f"a {self.kind} model must return {want}"
            )

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        out = super().logits(images)  # type: ignore[misc]
        self._check_output(out, images)
        return out

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if c.features_layer is not None:
            module = dict(self.net.named_modules())[c.features_layer]
            _, feats = hooked_output(self.net, module, x)
            return pooled(feats)
        ff = getattr(self.net, "forward_features", None)
        if callable(ff) and inspect.ismethod(ff):
            return pooled(ff(x))
        return pooled(self.net(x))

    def fit(self, images, targets, val_images, val_targets, *, seed: int = 0) -> dict:
        """Fine-tune when ``trainable``; otherwise only choose thresholds on the validation data.

        Returns the training history, or for a frozen plug-in ``{"train_loss": [], "val_loss":
        [loss on the validation data], "best_epoch": 0, "epochs_run": 0, "trained": False}``.
        """
        if self.config.trainable:
            history = super().fit(images, targets, val_images, val_targets, seed=seed)  # type: ignore[misc]
            history["trained"] = True
            return history
        vx = self._prepare_images(val_images, "val_images")  # type: ignore[attr-defined]
        vy = self._prepare_targets(val_targets, vx.shape[0], vx, "val_targets")  # type: ignore[attr-defined]
        with torch.no_grad():
            self._check_output(self.net(vx[:1].to(self.device)), vx[:1])  # type: ignore[attr-defined]
        val_loss = evaluate_loss(
            self.net,
            self._make_loss(vy),  # type: ignore[attr-defined]
            vx,
            vy,
            batch_size=self.config.eval_batch_size,
            device=self.device,  # type: ignore[attr-defined]
        )
        self._after_fit(vx, val_targets)  # type: ignore[attr-defined]
        return {"train_loss": [], "val_loss": [val_loss], "best_epoch": 0, "epochs_run": 0, "trained": False}


class PluginClassifier(_PluginMixin, Classifier):
    """The user's classifier: ``make_task_model("classification", arch="plugin", target=..., n_outputs=L)``.

    Thresholds are chosen on clean validation data in :meth:`fit` exactly as for :class:`Classifier`.
    """

    arch_params: ClassVar[dict[str, type[TrainParams]]] = {"plugin": PluginClassifierParams}

    def __init__(
        self, device: str | torch.device = "cpu", *, arch: str = "plugin", in_channels: int = 1, n_outputs: int = 1,
        **params: object,
    ) -> None:
        super().__init__(device, arch=arch, in_channels=in_channels, n_outputs=n_outputs, **params)


class PluginSegmenter(_PluginMixin, Segmenter):
    """The user's segmenter: ``make_task_model("segmentation", arch="plugin", target=...)``.

    Its logits must be (N, 1, H, W); the pixel threshold is ``pixel_threshold`` (0.5).
    """

    arch_params: ClassVar[dict[str, type[TrainParams]]] = {"plugin": PluginSegmenterParams}

    def __init__(
        self, device: str | torch.device = "cpu", *, arch: str = "plugin", in_channels: int = 1, n_outputs: int = 1,
        **params: object,
    ) -> None:
        super().__init__(device, arch=arch, in_channels=in_channels, n_outputs=n_outputs, **params)

    def _check_images(self, x: torch.Tensor, name: str) -> None:
        return None  # the user's network decides which sizes it takes


__all__ = [
    "PluginClassifier",
    "PluginSegmenter",
    "PluginClassifierParams",
    "PluginSegmenterParams",
    "load_factory",
    "load_weights_file",
]
