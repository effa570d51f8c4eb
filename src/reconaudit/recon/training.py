"""The training loop shared by the learned reconstructors (U-Net, pix2pix, IR-SDE, trainable plug-ins).

One epoch draws ``N`` training positions (a permutation, or with
``TrainingHooks.sample_weights`` a ``WeightedRandomSampler`` draw with replacement) from a
``torch.Generator`` seeded by ``derive_seed("recon/train", name, seed, epoch)``, so an epoch's batches
do not depend on what ran before it: that is what makes resuming from a checkpoint give the same
weights as an uninterrupted run.  Each batch calls the model's own step, which passes its loss
through ``hooks.loss_hook(base_loss, recon, idx)``; ``hooks.on_batch_end(idx)`` follows the
optimiser step.  After each epoch the validation loss decides early stopping (``patience`` epochs
without a strict improvement) and a checkpoint is written; at the end the best weights are restored.

Checkpoints are one safetensors file ``checkpoint.safetensors`` in ``checkpoint_dir``: tensors of the
current weights (``model.*``), the best weights (``best.*``) and the optimiser state (``optim.*``), and
the small state (epoch, history, early-stopping counters, optimiser hyperparameters) as JSON in the
file's metadata.  Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from reconaudit.arrays import batch_loader
from reconaudit.physics.base import Degraded
from reconaudit.progress import task
from reconaudit.recon.base import PairSet, Reconstructor, TrainingHooks
from reconaudit.seeding import derive_seed, torch_generator

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.safetensors"


# ---------------------------------------------------------------------------------------------- params
class ReconParams(BaseModel):
    """Base of every reconstructor's hyperparameter model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainParams(ReconParams):
    """Hyperparameters shared by the learned reconstructors.

    Attributes
    ----------
    epochs, batch_size, lr, weight_decay:
        Adam optimisation; one epoch = ``len(train)`` studies.
    patience:
        Early stopping: stop after this many epochs without a strict decrease of the validation loss,
        then restore the best weights.
    data_consistency:
        Apply :func:`reconaudit.recon._fft.apply_data_consistency` to the output (MRI: measured k-space
        replaces the output's at sampled locations; inpainting: observed pixels kept), in training
        (differentiably) and at inference.
    clip_output:
        Clamp reconstructions to [0, 1] at inference (never in the loss path).
    eval_batch_size:
        Studies per forward pass in :meth:`reconstruct` and validation.
    lr_schedule:
        ``"constant"`` (the default), or ``"cosine"``: epoch ``e`` of ``E`` (1-based) trains at
        ``lr_e = lr_min + (lr - lr_min) (1 + cos(pi (e - 1) / E)) / 2`` with ``lr_min = lr / 100``
        (cosine annealing, Loshchilov & Hutter 2017, without restarts), set at the start of every
        epoch so that resuming from a checkpoint gives the same rates.
    max_batches:
        Train on at most this many mini-batches per epoch (the first of the epoch's shuffled order),
        so a large split trains in a fixed time (``None``: every batch, one pass over the split).
    """

    epochs: int = Field(3, ge=0)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    patience: int = Field(5, ge=1)
    data_consistency: bool = False
    clip_output: bool = True
    eval_batch_size: int = Field(32, ge=1)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    max_batches: int | None = Field(None, ge=1)


def validate_params(cls: type[Reconstructor], params: dict[str, Any]) -> ReconParams:
    """Validate ``params`` against ``cls.Params``; raise ``ValueError`` naming the allowed ones."""
    from reconaudit.validation import validate_params as _validate

    return _validate(cls.Params, params, where=f"reconstructor {cls.name!r}")  # type: ignore[attr-defined,return-value]


class ParamsMixin:
    """Validates ``**params`` with the class's ``Params`` model at construction."""

    Params: ClassVar[type[ReconParams]] = ReconParams

    def _init_params(self, device: str | torch.device, params: dict[str, Any]) -> None:
        hp = validate_params(type(self), params)  # type: ignore[arg-type]
        Reconstructor.__init__(self, device, **hp.model_dump())  # type: ignore[arg-type]
        self.hp = hp


# ---------------------------------------------------------------------------------------------- helpers
def as_samples(x: torch.Tensor, samples: int) -> torch.Tensor:
    """(N, 1, H, W) for ``samples == 1``, else the deterministic output repeated to (N, K, 1, H, W)."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if samples == 1:
        return x
    return x.unsqueeze(1).expand(-1, samples, *x.shape[1:]).contiguous()


def check_degraded(degraded: Degraded, where: str) -> None:
    """Check the image is (N, 1, H, W) float."""
    img = degraded.image
    if img.ndim != 4 or img.shape[1] != 1:
        raise ValueError(f"{where}: Degraded.image must have shape (N, 1, H, W), got {tuple(img.shape)}")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad H and W up to a multiple of ``multiple``; return the padded tensor and (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return nn.functional.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


def _flatten_optim(name: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{name}.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    meta = {"param_groups": sd["param_groups"], "scalars": scalars, "state_keys": sorted(str(p) for p in sd["state"])}
    return tensors, meta


def _unflatten_optim(name: str, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for pid in meta["state_keys"]:
        state[int(pid)] = dict(meta["scalars"].get(pid, {}))
    prefix = f"optim.{name}."
    for key, v in tensors.items():
        if key.startswith(prefix):
            pid, k = key[len(prefix):].split(".", 1)
            state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# ---------------------------------------------------------------------------------------------- base
class LearnedReconstructor(ParamsMixin, Reconstructor):
    """A reconstructor trained with :func:`run_training`.

    Subclasses implement :meth:`_build` (the named modules), :meth:`_train_step`,
    :meth:`_batch_val_loss` and :meth:`_predict`; they may override :meth:`_make_optimizers` and
    :meth:`trainable_modules`.
    """

    trainable: ClassVar[bool] = True
    Params: ClassVar[type[ReconParams]] = TrainParams
    reads_lazily: ClassVar[bool] = True  # run_training reads batches through a DataLoader

    def __init__(self, device: str | torch.device = "cpu", **params: object) -> None:
        self._init_params(device, dict(params))
        self.modules: dict[str, nn.Module] | None = None
        self.fitted = False

    # ------------------------------------------------------------------ subclass API
    def _build(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def _make_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        params = [p for m in self.trainable_modules() for p in m.parameters() if p.requires_grad]
        return {"net": torch.optim.Adam(params, lr=lr, weight_decay=self.hp.weight_decay)}

    def _train_step(
        self,
        batch: Degraded,
        clean: torch.Tensor,
        idx: torch.Tensor,
        gen: torch.Generator,
        hooks: TrainingHooks | None,
        opts: dict[str, torch.optim.Optimizer],
    ) -> tuple[float, float]:
        """One optimisation step; return (base loss, total loss after the hook)."""
        raise NotImplementedError

    def _batch_val_loss(self, batch: Degraded, clean: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Mean validation loss over the batch (called under ``torch.no_grad`` in eval mode)."""
        raise NotImplementedError

    def _predict(self, degraded: Degraded, seeds: list[int] | None, samples: int) -> torch.Tensor:
        raise NotImplementedError

    def trainable_modules(self) -> list[nn.Module]:
        """The modules whose parameters a mitigation penalty must reach (the generator / noise network)."""
        self._ensure_built()
        assert self.modules is not None
        return [self.modules["net"]]

    # ------------------------------------------------------------------ building and state
    def _ensure_built(self, seed: int = 0) -> None:
        if self.modules is not None:
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed("recon/init", self.name, seed) % (2**63))
            mods = self._build()
        self.modules = {k: m.to(self.device) for k, m in mods.items()}

    def _train_mode(self, on: bool) -> None:
        assert self.modules is not None
        for m in self.modules.values():
            m.train(on)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All module tensors, keyed ``<module>.<parameter>``."""
        if self.modules is None:
            return {}
        return {f"{n}.{k}": v.detach().clone() for n, m in self.modules.items() for k, v in m.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the tensors of :meth:`state_dict` (strict: every module key must be present)."""
        self._ensure_built()
        assert self.modules is not None
        for n, m in self.modules.items():
            prefix = n + "."
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            m.load_state_dict(sub, strict=True)
        self.fitted = True

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError(
                f"reconstructor {self.name!r} has not been fitted: call fit(train, val) or load(path) first"
            )

    # ------------------------------------------------------------------ public API
    def fit(
        self,
        train: PairSet,
        val: PairSet,
        *,
        seed: int = 0,
        hooks: TrainingHooks | None = None,
        checkpoint_dir: str | Path | None = None,
    ) -> dict:
        """Fit on ``train`` with early stopping on ``val``; see :func:`run_training` for the history."""
        return run_training(
            self, train, val, seed=seed, hooks=hooks, checkpoint_dir=checkpoint_dir,
            epochs=self.hp.epochs, lr=self.hp.lr,
        )

    def finetune(
        self,
        train: PairSet,
        val: PairSet,
        *,
        epochs: int,
        lr: float,
        seed: int = 0,
        hooks: TrainingHooks | None = None,
        checkpoint_dir: str | Path | None = None,
    ) -> dict:
        """Continue training from the current weights for ``epochs`` epochs at learning rate ``lr``.

        A fresh optimiser is used; everything else is as in :meth:`fit`.
        """
        if epochs < 0 or lr <= 0:
            raise ValueError(f"finetune: need epochs >= 0 and lr > 0, got epochs={epochs}, lr={lr}")
        return run_training(
            self, train, val, seed=seed, hooks=hooks, checkpoint_dir=checkpoint_dir, epochs=epochs, lr=lr
        )

    def reconstruct(
        self,
        degraded: Degraded,
        *,
        seeds: Sequence[int] | None = None,
        samples: int = 1,
        study_ids: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Reconstruct a batch in chunks of ``eval_batch_size``; (N, 1, H, W) or (N, K, 1, H, W)."""
        check_degraded(degraded, f"{self.name}.reconstruct")
        self._require_fitted()
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        from reconaudit.seeding import as_seed_list

        n = len(degraded)
        seed_list = as_seed_list(seeds, n) if seeds is not None else None
        if self.stochastic and seed_list is None:
            seed_list = list(range(n))
        self._train_mode(False)
        outs = []
        bs = self.hp.eval_batch_size
        with torch.no_grad(), task(f"reconstruct ({self.name})", total=n) as bar:
            for start in range(0, n, bs):
                sl = list(range(start, min(n, start + bs)))
                part = degraded.subset(sl).to(self.device)
                s = seed_list[start:start + len(sl)] if seed_list is not None else None
                out = self._predict(part, s, samples)
                if self.hp.clip_output:
                    out = out.clamp(0.0, 1.0)
                outs.append(out.to(torch.float32).cpu())
                bar.advance(len(sl))
        return torch.cat(outs, 0)


# ---------------------------------------------------------------------------------------------- loop
def apply_loss_hook(
    base: torch.Tensor, recon: torch.Tensor, idx: torch.Tensor, hooks: TrainingHooks | None
) -> torch.Tensor:
    """``hooks.loss_hook(base, recon, idx)`` when given, else ``base``."""
    if hooks is None or hooks.loss_hook is None:
        return base
    total = hooks.loss_hook(base, recon, idx)
    if not isinstance(total, torch.Tensor) or total.ndim != 0:
        raise ValueError("TrainingHooks.loss_hook must return a scalar tensor (the total loss)")
    return total


def epoch_order(n: int, gen: torch.Generator, sample_weights: np.ndarray | None) -> torch.Tensor:
    """The training positions of one epoch: a permutation, or N weighted draws with replacement."""
    if sample_weights is None:
        return torch.randperm(n, generator=gen)
    w = np.asarray(sample_weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != n:
        raise ValueError(f"TrainingHooks.sample_weights: expected {n} weights (one per training study), got {w.shape[0]}")
    if not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise ValueError("TrainingHooks.sample_weights must be finite, non-negative and not all zero")
    sampler = torch.utils.data.WeightedRandomSampler(torch.as_tensor(w), n, replacement=True, generator=gen)
    return torch.as_tensor(list(sampler), dtype=torch.long)


def epoch_lr(lr: float, epoch: int, epochs: int, schedule: str) -> float:
    """The learning rate of 1-based ``epoch`` of ``epochs`` under ``schedule`` (see :class:`TrainParams`)."""
    if schedule == "constant" or epochs <= 1:
        return float(lr)
    lr_min = lr / 100.0
    return float(lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs)))


def _validation_loss(rec: LearnedReconstructor, val: PairSet, seed: int) -> float:
    n = len(val)
    if n == 0:
        return float("nan")
    gen = torch_generator(derive_seed("recon/val", rec.name, seed))
    rec._train_mode(False)
    total = 0.0
    bs = rec.hp.eval_batch_size
    with torch.no_grad():
        batches = [list(range(start, min(n, start + bs))) for start in range(0, n, bs)]
        for sl, (batch, clean) in zip(batches, batch_loader((val.degraded, val.clean), batches, device=rec.device),
                                      strict=True):
            loss = rec._batch_val_loss(batch.to(rec.device), clean.to(rec.device), gen)
            total += float(loss) * len(sl)
    return total / n


def _save_checkpoint(path: Path, rec: LearnedReconstructor, best: dict[str, torch.Tensor],
                     opts: dict[str, torch.optim.Optimizer], state: dict) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.cpu().contiguous() for k, v in rec.state_dict().items()}
    tensors.update({f"best.{k}": v.cpu().contiguous() for k, v in best.items()})
    optim_meta = {}
    for name, opt in opts.items():
        t, meta = _flatten_optim(name, opt)
        tensors.update(t)
        optim_meta[name] = meta
    meta = {"state": json.dumps(state), "optim": json.dumps(optim_meta)}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def _load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "state" not in meta:
        raise ValueError(f"{path}: not a reconaudit training checkpoint (no 'state' metadata)")
    return tensors, json.loads(meta["state"]), json.loads(meta.get("optim", "{}"))


def run_training(
    rec: LearnedReconstructor,
    train: PairSet,
    val: PairSet,
    *,
    seed: int,
    hooks: TrainingHooks | None,
    checkpoint_dir: str | Path | None,
    epochs: int,
    lr: float,
) -> dict:
    """Train ``rec`` on ``train`` with early stopping on ``val``.

    Returns
    -------
    dict
        ``train_loss`` (mean total loss per epoch, after the loss hook), ``train_base_loss`` (the
        model's own loss), ``val_loss`` per epoch, ``best_epoch`` (1-based; its weights are the ones
        kept; with a ``loss_hook`` (a fairness penalty) the last epoch is kept, since the validation
        reconstruction loss alone would select the least-mitigated epoch), ``epochs_run``, ``stopped_early`` and ``resumed_from`` (the checkpoint epoch training
        resumed after, or None).
    """
    if len(train) == 0:
        raise ValueError(f"{rec.name}.fit: the training PairSet is empty")
    check_degraded(train.degraded, f"{rec.name}.fit(train)")
    if tuple(train.clean.shape) != tuple(train.degraded.image.shape):
        raise ValueError(
            f"{rec.name}.fit: train.clean has shape {tuple(train.clean.shape)} but train.degraded.image has "
            f"{tuple(train.degraded.image.shape)}; they must be aligned study by study"
        )
    rec._ensure_built(seed)
    opts = rec._make_optimizers(lr)
    n = len(train)
    config = {"seed": int(seed), "n_train": n, "n_val": len(val), "epochs": int(epochs), "lr": float(lr)}
    st: dict[str, Any] = {
        "config": config, "epoch": 0, "train_loss": [], "train_base_loss": [], "val_loss": [],
        "best_val": None, "best_epoch": 0, "bad_epochs": 0, "finished": False, "stopped_early": False,
    }
    best = rec.state_dict()
    resumed_from = None
    ckpt: Path | None = None
    if checkpoint_dir is not None:
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME
        if ckpt.exists():
            tensors, saved, optim_meta = _load_checkpoint(ckpt)
            if saved.get("config") != config:
                raise ValueError(
                    f"{ckpt}: checkpoint was written by a different run ({saved.get('config')}) than this one "
                    f"({config}); use another checkpoint_dir or delete this file"
                )
            rec.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
            for name, opt in opts.items():
                if name in optim_meta:
                    _unflatten_optim(name, opt, tensors, optim_meta[name])
            st = saved
            resumed_from = int(st["epoch"])
            logger.info("%s: resuming from %s after epoch %d", rec.name, ckpt, resumed_from)

    def history() -> dict:
        return {
            "train_loss": list(st["train_loss"]), "train_base_loss": list(st["train_base_loss"]),
            "val_loss": list(st["val_loss"]), "best_epoch": int(st["best_epoch"]),
            "epochs_run": int(st["epoch"]), "stopped_early": bool(st["stopped_early"]),
            "resumed_from": resumed_from,
        }

    if st["finished"]:
        rec.load_state_dict(best)
        return history()

    bs = rec.hp.batch_size
    n_batches = min(math.ceil(n / bs), getattr(rec.hp, "max_batches", None) or math.ceil(n / bs))
    weights = hooks.sample_weights if hooks is not None else None
    with task(f"fit {rec.name}", total=(epochs - st["epoch"]) * n_batches) as bar:
        for epoch in range(int(st["epoch"]) + 1, epochs + 1):
            gen = torch_generator(derive_seed("recon/train", rec.name, seed, epoch))
            order = epoch_order(n, gen, weights)
            for opt in opts.values():
                for group in opt.param_groups:
                    group["lr"] = epoch_lr(lr, epoch, epochs, rec.hp.lr_schedule)
            rec._train_mode(True)
            tot, base_tot = 0.0, 0.0
            batches = list(order.split(bs))[: getattr(rec.hp, "max_batches", None)]
            seen = sum(len(idx) for idx in batches)
            loader = batch_loader((train.degraded, train.clean), batches, device=rec.device)
            for idx, (batch, clean) in zip(batches, loader, strict=True):
                base, total = rec._train_step(batch.to(rec.device), clean.to(rec.device), idx, gen, hooks, opts)
                if not math.isfinite(total):
                    raise FloatingPointError(f"{rec.name}.fit: non-finite loss {total} at epoch {epoch}; lower lr")
                tot += total * len(idx)
                base_tot += base * len(idx)
                if hooks is not None and hooks.on_batch_end is not None:
                    hooks.on_batch_end(idx)
                bar.advance(1)
            vloss = _validation_loss(rec, val, seed)
            st["train_loss"].append(tot / seen)
            st["train_base_loss"].append(base_tot / seen)
            st["val_loss"].append(vloss)
            st["epoch"] = epoch
            # With a penalty (mitigation fine-tuning) the validation reconstruction loss would pick the
            # least-mitigated epoch, so the last epoch is kept and there is no early stopping.
            penalised = hooks is not None and hooks.loss_hook is not None
            improved = (
                penalised or st["best_val"] is None or not math.isfinite(vloss) or vloss < st["best_val"]
            )
            if improved:
                st["best_val"] = vloss if math.isfinite(vloss) else None
                st["best_epoch"] = epoch
                st["bad_epochs"] = 0
                best = rec.state_dict()
            else:
                st["bad_epochs"] += 1
            stop = st["bad_epochs"] >= rec.hp.patience
            logger.info("%s epoch %d: train %.5g val %.5g", rec.name, epoch, st["train_loss"][-1], vloss)
            if stop or epoch == epochs:
                st["stopped_early"] = bool(stop and epoch < epochs)
                st["finished"] = True
                rec.load_state_dict(best)
            if ckpt is not None:
                _save_checkpoint(ckpt, rec, best, opts, st)
            if stop:
                break
    if epochs == st["epoch"] or st["finished"]:
        rec.load_state_dict(best)
    rec.fitted = True
    return history()
