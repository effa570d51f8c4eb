"""The base of the network diagnostic models: build, fit with :func:`train_network`, predict, freeze."""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from reconaudit.arrays import as_float_view, is_lazy
from reconaudit.devices import resolve_device
from reconaudit.seeding import derive_seed
from reconaudit.tasks.base import DiagnosticModel
from reconaudit.tasks.loop import LossFn, seeded_rng, train_network
from reconaudit.tasks.params import TaskConfigError, TrainParams, validate_params

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# shared model machinery


def pooled(t: torch.Tensor) -> torch.Tensor:
    """Global average pooling of every axis after the channel axis: (N, C, ...) -> (N, C)."""
    return t.flatten(2).mean(-1) if t.ndim > 2 else t.reshape(t.shape[0], -1)


def hooked_output(net: nn.Module, module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``net(x)`` and capture the output of the submodule ``module`` (differentiably)."""
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        out = net(x)
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"submodule {type(module).__name__} was not called in the forward pass")
    return out, captured[-1]


def as_float_tensor(a, name: str) -> torch.Tensor:
    """``a`` (numpy array or tensor) as a float32 CPU tensor; error naming ``name`` otherwise.

    A lazy array of the study store (:class:`~reconaudit.arrays.LazyStudies`) stays lazy, read as
    float32 batch by batch.
    """
    if is_lazy(a):
        return as_float_view(a)
    if isinstance(a, torch.Tensor):
        return a.detach().to("cpu", torch.float32)
    if isinstance(a, np.ndarray):
        return torch.from_numpy(np.asarray(a, dtype=np.float32))
    raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(a).__name__}")


class NetworkDiagnosticModel(DiagnosticModel):
    """A diagnostic model backed by one ``torch.nn.Module`` that maps (N, C, H, W) to logits.

    Subclasses say which parameters each architecture takes (:attr:`arch_params`), build the
    network (:meth:`_build_network`), define the loss (:meth:`_make_loss`), turn targets into a
    tensor (:meth:`_prepare_targets`), extract features (:meth:`_features`) and set thresholds
    after fitting (:meth:`_after_fit`).

    Outside :meth:`fit` the network is frozen: eval mode (BatchNorm uses running statistics,
    dropout is off) and ``requires_grad=False`` on every parameter, so :meth:`logits` and
    :meth:`features` pass gradients to their input and never to the weights.
    """

    arch_params: ClassVar[dict[str, type[TrainParams]]] = {}
    reinit_on_fit: ClassVar[bool] = True
    reads_lazily: ClassVar[bool] = True  # train_network reads batches through a DataLoader

    def __init__(
        self,
        device: str | torch.device = "cpu",
        *,
        arch: str,
        in_channels: int = 1,
        n_outputs: int = 1,
        **params: object,
    ) -> None:
        super().__init__(resolve_device(str(device) if isinstance(device, torch.device) else device))
        where = f"{self.kind} model (arch={arch!r})"
        if arch not in self.arch_params:
            raise TaskConfigError(
                f"{self.kind} model: unknown arch {arch!r}; allowed: {', '.join(sorted(self.arch_params))}"
            )
        if int(in_channels) < 1:
            raise TaskConfigError(f"{where}: in_channels must be >= 1, got {in_channels!r}")
        if int(n_outputs) < 1:
            raise TaskConfigError(f"{where}: n_outputs must be >= 1, got {n_outputs!r}")
        self.arch = arch
        self.in_channels = int(in_channels)
        self.n_outputs = int(n_outputs)
        self.config = validate_params(self.arch_params[arch], dict(params), where)
        self.params = {"arch": arch, "in_channels": self.in_channels, "n_outputs": self.n_outputs}
        self.params.update(self.config.model_dump())
        self.net = self._build(seed=0)
        self.thresholds = self._default_thresholds()

    # ----------------------------------------------------------------- for subclasses
    def _build_network(self) -> nn.Module:
        raise NotImplementedError

    def _make_loss(self, train_targets: torch.Tensor) -> LossFn:
        raise NotImplementedError

    def _prepare_targets(self, targets, n: int, x: torch.Tensor, name: str) -> torch.Tensor:
        raise NotImplementedError

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _after_fit(self, val_x: torch.Tensor, val_targets) -> None:
        return None

    def _default_thresholds(self) -> np.ndarray:
        return np.full(self.n_outputs, 0.5)

    def _probabilities(self, logits: torch.Tensor) -> np.ndarray:
        return torch.sigmoid(logits).double().cpu().numpy()

    def _check_images(self, x: torch.Tensor, name: str) -> None:
        return None

    # ----------------------------------------------------------------- shared
    def _build(self, seed: int) -> nn.Module:
        with seeded_rng(derive_seed("tasks/init", seed), self.device):
            net = self._build_network()
        if not isinstance(net, nn.Module):
            raise TypeError(f"the {self.kind} network must be a torch.nn.Module, got {type(net).__name__}")
        net = net.to(self.device)
        self._freeze(net)
        return net

    @staticmethod
    def _freeze(net: nn.Module) -> None:
        net.eval()
        net.zero_grad(set_to_none=True)
        for p in net.parameters():
            p.requires_grad_(False)

    @staticmethod
    def _unfreeze(net: nn.Module) -> None:
        for p in net.parameters():
            p.requires_grad_(True)

    def _prepare_images(self, images, name: str) -> torch.Tensor:
        x = as_float_tensor(images, name)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{name} must be (N, {self.in_channels}, H, W) for this {self.kind} model "
                f"(in_channels={self.in_channels}), got {tuple(x.shape)}"
            )
        if not is_lazy(x) and not torch.isfinite(x).all():  # a stored cohort was checked when written
            raise ValueError(f"{name} holds NaN or infinite values")
        self._check_images(x, name)
        return x

    def _train_settings(self) -> dict:
        c = self.config
        return dict(
            epochs=c.epochs,
            batch_size=c.batch_size,
            lr=c.lr,
            weight_decay=c.weight_decay,
            patience=c.patience,
            augment=c.augment,
            eval_batch_size=c.eval_batch_size,
            max_batches=c.max_batches,
        )

    def fit(self, images, targets, val_images, val_targets, *, seed: int = 0) -> dict:
        """Train on clean ``images`` with early stopping on the validation loss, then freeze.

        Built-in architectures start from a fresh initialisation drawn from ``seed``
        (``derive_seed("tasks/init", seed)``), so the same seed gives identical weights on CPU.
        Thresholds are then chosen on ``val_images`` / ``val_targets`` (see the subclass).

        Returns
        -------
        dict
            The history of :func:`train_network`: ``train_loss``, ``val_loss`` per epoch,
            ``best_epoch``, ``best_val_loss``, ``epochs_run``, ``stopped_early``.
        """
        x = self._prepare_images(images, "images")
        vx = self._prepare_images(val_images, "val_images")
        y = self._prepare_targets(targets, x.shape[0], x, "targets")
        vy = self._prepare_targets(val_targets, vx.shape[0], vx, "val_targets")
        if self.reinit_on_fit:
            self.net = self._build(seed)
        self._unfreeze(self.net)
        try:
            history = train_network(
                self.net,
                self._make_loss(y),
                x,
                y,
                vx,
                vy,
                seed=seed,
                device=self.device,
                description=f"training {self.kind} model ({self.arch})",
                **self._train_settings(),
            )
        finally:
            self._freeze(self.net)
        self._after_fit(vx, val_targets)
        return history

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of the frozen network; differentiable with respect to ``images``.

        ``images`` (N, in_channels, H, W) is moved to the model's device as float32; the result lives
        on that device.
        """
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        self.net.eval()
        return self.net(images.to(self.device, torch.float32))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, F) of the frozen network; differentiable with respect to ``images``."""
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        self.net.eval()
        return self._features(images.to(self.device, torch.float32))

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and penultimate features ``(N, F)`` of the network as it is (train or eval mode),
        differentiable with respect to the weights: what latent alignment trains on
        (:mod:`reconaudit.tasks.alignment`).  Subclasses compute both in one forward pass."""
        return self.net(x), self._features(x)

    def predict(self, images) -> np.ndarray:
        """Sigmoid probabilities, computed in batches of ``eval_batch_size`` without gradient."""
        x = self._prepare_images(images, "images")
        self.net.eval()
        bs = self.config.eval_batch_size
        out = []
        with torch.no_grad():
            for start in range(0, x.shape[0], bs):
                out.append(self._probabilities(self.net(x[start : start + bs].to(self.device))))
        if not out:
            return self._probabilities(self.net(x.to(self.device)))
        return np.concatenate(out, 0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The network's weights and buffers."""
        return {k: v.detach() for k, v in self.net.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load weights saved from a model built with the same ``arch``, channels and parameters."""
        try:
            self.net.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(
                f"weights do not fit this {self.kind} model (arch={self.arch!r}, in_channels={self.in_channels}, "
                f"n_outputs={self.n_outputs}); build it with the settings it was trained with. {err}"
            ) from None
        self._freeze(self.net)
