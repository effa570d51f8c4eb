"""The training loop shared by the diagnostic models: Adam, mini-batches, early stopping.

Determinism: the batch order and augmentation draws come from a ``torch.Generator`` seeded with
``derive_seed("tasks/shuffle", seed)``; any other draw that uses torch's global generator (dropout)
happens inside :func:`torch.random.fork_rng` seeded with ``derive_seed("tasks/train", seed)``, so
the same seed gives the same weights on CPU and the caller's global random state is left untouched.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator
from typing import ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from reconaudit import progress
from reconaudit.devices import resolve_device
from reconaudit.seeding import derive_seed, torch_generator
from reconaudit.tasks.base import DiagnosticModel

logger = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """A :func:`torch.random.fork_rng` context with torch's global generators seeded by ``seed``.

    Used around network construction and training so that weight initialisation and dropout are
    reproducible and the caller's random state is restored afterwards.
    """
    dev = torch.device(device)
    devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed) % (2**63))
        yield


def random_shift(
    x: torch.Tensor, y: torch.Tensor | None, max_shift: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Light augmentation: a circular shift by up to ``max_shift`` pixels per axis, per image.

    Each image :math:`n` is shifted by integers :math:`(d_y, d_x) \\sim U\\{-m, .., m\\}^2`:
    :math:`x'[n, c, i, j] = x[n, c, (i - d_y) \\bmod H, (j - d_x) \\bmod W]`.  When ``y`` is a mask
    batch (N, C, H, W) it gets the same shift; otherwise it is returned as is.
    """
    n, c, h, w = x.shape
    dy = torch.randint(-max_shift, max_shift + 1, (n,), generator=generator)
    dx = torch.randint(-max_shift, max_shift + 1, (n,), generator=generator)

    def shift(t: torch.Tensor) -> torch.Tensor:
        ch = t.shape[1]
        rows = (torch.arange(h)[None, :] - dy[:, None]) % h  # (N, H)
        cols = (torch.arange(w)[None, :] - dx[:, None]) % w  # (N, W)
        rows = rows.to(t.device)[:, None, :, None].expand(n, ch, h, w)
        cols = cols.to(t.device)[:, None, None, :].expand(n, ch, h, w)
        return t.gather(2, rows).gather(3, cols)

    x2 = shift(x)
    y2 = shift(y) if (y is not None and y.ndim == 4 and y.shape[-2:] == x.shape[-2:]) else y
    return x2, y2


def evaluate_loss(
    net: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
) -> float:
    """Mean loss over ``x`` in evaluation mode, batches weighted by their size (no gradient)."""
    net.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].to(device)
            yb = y[start : start + batch_size].to(device)
            loss = loss_fn(net(xb), yb)
            total += float(loss) * xb.shape[0]
            count += xb.shape[0]
    return total / max(count, 1)


def train_network(
    net: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    *,
    seed: int,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.0,
    patience: int = 3,
    augment: bool = False,
    eval_batch_size: int = 64,
    device: torch.device | str = "cpu",
    description: str = "training diagnostic model",
) -> dict:
    """Fit ``net`` with Adam on mini-batches and keep the weights of the best validation epoch.

    Parameters
    ----------
    net:
        The network (already on ``device``); trained in place, left in eval mode with the best
        epoch's weights.
    loss_fn:
        ``loss_fn(outputs, targets) -> scalar``.
    x, y, val_x, val_y:
        Training and validation inputs and targets (first axis: studies); moved to ``device`` batch
        by batch.
    seed:
        Fixes the batch order, the augmentation draws and dropout.
    epochs, batch_size, lr, weight_decay:
        Adam settings; one epoch visits every training study once in a seeded random order.
    patience:
        Stop after this many epochs without a lower validation loss (early stopping).
    augment:
        Apply :func:`random_shift` (up to max(1, H // 16) pixels) to training batches.
    eval_batch_size:
        Batch size for the validation loss.
    device:
        Where the computation runs.
    description:
        Progress bar name (see :mod:`reconaudit.progress`).

    Returns
    -------
    dict
        ``train_loss`` and ``val_loss`` (one float per epoch run), ``best_epoch`` (0-based),
        ``best_val_loss``, ``epochs_run``, ``stopped_early``.
    """
    device = torch.device(device)
    n = int(x.shape[0])
    if n == 0 or val_x.shape[0] == 0:
        raise ValueError(f"training needs at least one training and one validation study, got {n} and {val_x.shape[0]}")
    gen = torch_generator(derive_seed("tasks/shuffle", seed))
    max_shift = max(1, int(x.shape[-1]) // 16)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())

    history: dict = {"train_loss": [], "val_loss": []}
    best_loss = float("inf")
    best_state = copy.deepcopy(net.state_dict())
    best_epoch, since_best, stopped_early = -1, 0, False
    with seeded_rng(derive_seed("tasks/train", seed), device), progress.task(description, total=epochs) as bar:
        for epoch in range(epochs):
            net.train()
            order = torch.randperm(n, generator=gen)
            total, count = 0.0, 0
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                if has_bn and idx.numel() == 1 and n > 1:
                    continue  # BatchNorm cannot train on a batch of one; drop the remainder
                xb, yb = x[idx], y[idx]
                if augment:
                    xb, yb = random_shift(xb, yb, max_shift, gen)
                xb, yb = xb.to(device), yb.to(device)
                loss = loss_fn(net(xb), yb)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"{description}: loss became {float(loss)} at epoch {epoch}; lower lr (now {lr}) "
                        "or check the inputs for NaN"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * idx.numel()
                count += idx.numel()
            train_loss = total / max(count, 1)
            val_loss = evaluate_loss(net, loss_fn, val_x, val_y, batch_size=eval_batch_size, device=device)
            history["train_loss"].append(train_loss)
            history["val_loss"].append(val_loss)
            logger.debug("%s: epoch %d train %.5f val %.5f", description, epoch, train_loss, val_loss)
            bar.advance(1)
            if val_loss < best_loss:
                best_loss, best_epoch, since_best = val_loss, epoch, 0
                best_state = copy.deepcopy(net.state_dict())
            else:
                since_best += 1
                if since_best >= patience:
                    stopped_early = True
                    break
    net.load_state_dict(best_state)
    net.eval()
    history.update(
        best_epoch=best_epoch,
        best_val_loss=best_loss,
        epochs_run=len(history["train_loss"]),
        stopped_early=stopped_early,
    )
    return history


# ---------------------------------------------------------------------------------------------
# parameters


class TaskConfigError(ValueError):
    """A diagnostic model was configured wrongly; the message names the key and what is allowed."""


class TrainParams(BaseModel):
    """Training settings shared by every network diagnostic model.

    Attributes
    ----------
    epochs:
        Maximum number of epochs (early stopping may end sooner).
    batch_size:
        Training mini-batch size.
    eval_batch_size:
        Batch size for validation losses and :meth:`predict`.
    lr, weight_decay:
        Adam learning rate and L2 weight decay.
    patience:
        Early stopping: epochs without a lower validation loss before training stops.
    augment:
        Light augmentation (random circular shifts of up to H/16 pixels); off by default.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(5, ge=1)
    batch_size: int = Field(16, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    patience: int = Field(3, ge=1)
    augment: bool = False


def validate_params(model: type[BaseModel], params: dict, where: str) -> BaseModel:
    """Validate ``params`` against the pydantic ``model``; raise :class:`TaskConfigError` naming the key.

    Unknown keys are reported with the list of allowed ones; bad values with pydantic's reason
    (which lists the allowed values of a choice) and the value received.
    """
    from reconaudit.validation import validate_params as _validate

    return _validate(model, params, where=where, error=TaskConfigError)


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
    """``a`` (numpy array or tensor) as a float32 CPU tensor; error naming ``name`` otherwise."""
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
        if not torch.isfinite(x).all():
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
