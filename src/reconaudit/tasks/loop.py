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

import torch
from torch import nn

from reconaudit import progress
from reconaudit.arrays import batch_loader
from reconaudit.seeding import derive_seed, torch_generator

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
    max_batches: int | None = None,
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
        Training and validation inputs and targets (first axis: studies): tensors, or lazy arrays
        of the study store (:mod:`reconaudit.arrays`) read batch by batch through a
        :func:`~reconaudit.arrays.batch_loader` DataLoader; moved to ``device`` batch by batch.
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
    max_batches:
        At most this many mini-batches per epoch (the first of its shuffled order); ``None``: all.

    Returns
    -------
    dict
        ``train_loss`` and ``val_loss`` (one float per epoch run), ``best_epoch`` (1-based, as in
        the reconstructors' loop: its loss is ``val_loss[best_epoch - 1]``; 0 when no epoch ran),
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
    best_epoch, since_best, stopped_early = 0, 0, False
    with seeded_rng(derive_seed("tasks/train", seed), device), progress.task(description, total=epochs) as bar:
        for epoch in range(epochs):
            net.train()
            order = torch.randperm(n, generator=gen)
            total, count = 0.0, 0
            # BatchNorm cannot train on a batch of one; drop the remainder
            batches = [idx for idx in order.split(batch_size)
                       if not (has_bn and idx.numel() == 1 and n > 1)][:max_batches]
            for idx, (xb, yb) in zip(batches, batch_loader((x, y), batches, device=device), strict=True):
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
                best_loss, best_epoch, since_best = val_loss, epoch + 1, 0
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
