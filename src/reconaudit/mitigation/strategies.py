"""The three strategies behind one function, :func:`apply_mitigation`, and their parameters."""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reconaudit.mitigation.penalties import AdversarialPenalty, DiceGapPenalty, EqualizedOddsPenalty
from reconaudit.recon.base import PairSet, TrainingHooks

log = logging.getLogger(__name__)

MITIGATIONS = ("reweighting", "eodd", "adversarial")


class _P(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReweightingParams(_P):
    """Reweighting: ``strength`` is the exponent alpha of w_g = 1 / max(p_g, floor)^alpha.

    Attributes
    ----------
    attributes:
        Group attribute columns whose joint groups are equalised (default: every attribute of the cohort).
    floor:
        Frequencies below ``floor`` count as ``floor``, so a tiny group does not dominate.
    """

    attributes: list[str] | None = None
    floor: float = Field(0.05, gt=0, le=1)


class _FineTune(_P):
    epochs: int = Field(2, ge=1, description="fine-tuning epochs from the standard reconstructor")
    lr: float = Field(2e-4, gt=0)
    attributes: list[str] | None = None
    task: Literal["auto", "classification", "segmentation"] = "auto"
    momentum: float = Field(0.9, ge=0, lt=1, description="running means that normalise the penalty")


class EoddParams(_FineTune):
    """Equalized-odds (or Dice-gap) penalty fine-tuning; ``strength`` is lambda."""

    temperature: float = Field(0.25, gt=0, description="soft prediction sigmoid((z - logit t) / T)")
    reduce: Literal["mean", "max"] = "mean"


class AdversarialParams(_FineTune):
    """Adversarial debiasing fine-tuning; ``strength`` is lambda."""

    hidden: int = Field(32, ge=1)
    adv_lr: float = Field(1e-3, gt=0)
    objective: Literal["confusion", "reversal"] = "confusion"


_PARAMS = {"reweighting": ReweightingParams, "eodd": EoddParams, "adversarial": AdversarialParams}


def validate_mitigation_params(name: str, params: dict) -> BaseModel:
    """Validate the params of strategy ``name``; ValueError names the bad key and the allowed ones."""
    if name not in _PARAMS:
        raise ValueError(f"unknown mitigation {name!r}; allowed: {', '.join(MITIGATIONS)}")
    model = _PARAMS[name]
    try:
        return model.model_validate(params)
    except ValidationError as e:
        bad = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ValueError(f"{name}: {bad} (allowed keys: {', '.join(model.model_fields)})") from None


def group_weights(groups: pd.DataFrame, attributes: list[str] | None = None, alpha: float = 1.0,
                  floor: float = 0.05) -> np.ndarray:
    """Per-study sampling weights that equalise the joint groups of ``attributes``.

    With p_g the frequency of joint group g, each study of g gets w = 1 / max(p_g, floor)^alpha,
    normalised to mean 1.  With ``alpha = 1`` and no group below the floor, the expected number of
    draws per group in an epoch of N weighted draws is N / G for every group.
    """
    attrs = attributes if attributes is not None else list(groups.columns)
    missing = [a for a in attrs if a not in groups.columns]
    if missing:
        raise ValueError(f"reweighting: attributes {missing} are not group columns; available: {list(groups.columns)}")
    if not attrs:
        return np.ones(len(groups))
    joint = groups[attrs].astype(str).agg("|".join, axis=1).to_numpy()
    uniq, inv, counts = np.unique(joint, return_inverse=True, return_counts=True)
    freq = counts / counts.sum()
    w_group = 1.0 / np.maximum(freq, floor) ** alpha
    w = w_group[inv]
    return w / w.mean()


def _attributes(p, train: PairSet) -> dict[str, np.ndarray]:
    if train.groups is None:
        raise ValueError("mitigation needs group attributes, but the training pairs carry none")
    attrs = p.attributes if p.attributes is not None else list(train.groups.columns)
    missing = [a for a in attrs if a not in train.groups.columns]
    if missing:
        raise ValueError(f"mitigation attributes {missing} are not in the cohort; available: {list(train.groups.columns)}")
    return {a: train.groups[a].astype(str).to_numpy() for a in attrs}


def make_hooks(rec, name: str, strength: float, params: dict, train: PairSet, *, task_models: dict,
               seed: int = 0) -> tuple[TrainingHooks, object | None]:
    """The :class:`TrainingHooks` of a strategy (and its penalty object, for inspection)."""
    p = validate_mitigation_params(name, params)
    if name == "reweighting":
        w = group_weights(train.groups, p.attributes, alpha=strength, floor=p.floor)
        return TrainingHooks(sample_weights=w), None
    groups = _attributes(p, train)
    task = p.task
    if task == "auto":
        task = "segmentation" if "segmentation" in task_models else "classification"
    if task not in task_models:
        raise ValueError(f"mitigation {name!r} needs a {task} model; the cohort has {list(task_models)}")
    model = task_models[task]
    if name == "eodd":
        if task == "classification":
            if train.targets is None:
                raise ValueError("eodd on a classification task needs targets in the training pairs")
            pen = EqualizedOddsPenalty(model, train.targets, groups, strength, temperature=p.temperature,
                                       reduce=p.reduce, momentum=p.momentum)
        else:
            pen = DiceGapPenalty(model, train.masks.float(), groups, strength, momentum=p.momentum)
        return TrainingHooks(loss_hook=pen), pen
    # adversarial
    import torch

    with torch.no_grad():
        n_feat = int(model.features(train.clean[:2].to(model.device)).shape[1])
    pen = AdversarialPenalty(model, groups, strength, n_feat, hidden=p.hidden, adv_lr=p.adv_lr,
                             objective=p.objective, seed=seed, momentum=p.momentum, device=model.device)
    return TrainingHooks(loss_hook=pen, on_batch_end=pen.adversary_step), pen


def apply_mitigation(rec, name: str, strength: float, params: dict, train: PairSet, val: PairSet, *,
                     task_models: dict, cohort=None, seed: int = 0, checkpoint_dir=None) -> dict:
    """Fit ``rec`` with strategy ``name`` at ``strength``; return the training history.

    ``reweighting`` trains from scratch with weighted sampling; ``eodd`` and ``adversarial``
    fine-tune ``rec`` (already holding the standard reconstructor's weights) with the penalty.
    """
    if not getattr(rec, "trainable", False):
        raise ValueError(f"mitigation {name!r} needs a trainable reconstructor; {rec.name!r} is not")
    hooks, pen = make_hooks(rec, name, strength, params, train, task_models=task_models, seed=seed)
    if name == "reweighting":
        history = rec.fit(train, val, seed=seed, hooks=hooks, checkpoint_dir=checkpoint_dir)
    else:
        p = validate_mitigation_params(name, params)
        history = rec.finetune(train, val, epochs=p.epochs, lr=p.lr, seed=seed, hooks=hooks,
                               checkpoint_dir=checkpoint_dir)
    history = dict(history)
    history["mitigation"] = {"name": name, "strength": strength}
    if pen is not None:
        history["mitigation"]["penalty_calls"] = pen.calls
        history["mitigation"]["last_penalty"] = pen.last_penalty
    return history
