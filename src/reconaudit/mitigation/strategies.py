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
    """Settings shared by the fine-tuning strategies (``eodd``, ``adversarial``).

    Attributes
    ----------
    epochs, lr:
        Fine-tuning epochs and Adam learning rate, starting from the standard reconstructor.
    attributes:
        Group attribute columns the penalty equalises (default: every attribute of the cohort).
    task:
        Which diagnostic model computes the penalty (``auto``: segmentation if the cohort has one).
    momentum:
        Momentum of the running means that normalise the penalty.
    penalty_floor:
        The penalty's running mean is floored at this value in the normaliser
        ``m_base / max(m_pen, penalty_floor)``, so the penalty's weight stops growing once the gap is
        small.
    """

    epochs: int = Field(2, ge=1, description="fine-tuning epochs from the standard reconstructor")
    lr: float = Field(2e-4, gt=0)
    attributes: list[str] | None = None
    task: Literal["auto", "classification", "segmentation"] = "auto"
    momentum: float = Field(0.9, ge=0, lt=1, description="running means that normalise the penalty")
    penalty_floor: float = Field(0.05, gt=0, description="floor of the penalty's running mean in the normaliser")


class EoddParams(_FineTune):
    """Equalized-odds (or, for segmentation, Dice-gap) penalty fine-tuning; ``strength`` is lambda.

    Attributes
    ----------
    temperature:
        Soft prediction ``sigmoid((z - logit t) / T)`` at the model's operating threshold t.
    reduce:
        How the soft EOD of every (attribute, label) pair is combined: ``mean`` or ``max``.
    """

    temperature: float = Field(0.25, gt=0, description="soft prediction sigmoid((z - logit t) / T)")
    reduce: Literal["mean", "max"] = "mean"


class AdversarialParams(_FineTune):
    """Adversarial debiasing fine-tuning; ``strength`` is lambda.

    Attributes
    ----------
    hidden:
        Hidden units of the adversary (an MLP on the diagnostic model's features).
    adv_lr:
        Adam learning rate of the adversary.
    adv_steps:
        Adversary updates per reconstructor update.
    warmup_epochs:
        Epochs of adversary-only training on the features of the clean training images before
        fine-tuning starts (so the reconstructor faces an adversary that can already read groups).
    objective:
        ``confusion`` (push the adversary to chance) or ``reversal`` (maximise its loss).
    """

    hidden: int = Field(32, ge=1)
    adv_lr: float = Field(1e-3, gt=0)
    adv_steps: int = Field(1, ge=1)
    warmup_epochs: int = Field(5, ge=0, description="adversary-only epochs on clean-image features first")
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
    r"""Per-study sampling weights that equalise the joint groups of ``attributes``.

    .. math:: w_i = \frac{1}{\max(p_{g_i}, f)^{\alpha}}, \quad p_g = n_g / N,

    normalised to mean 1, with :math:`g_i` the joint group of study :math:`i` (the tuple of its
    values of ``attributes``) and :math:`f` the floor.  A group's share of an epoch of :math:`N`
    weighted draws is :math:`n_g w_g / \sum_h n_h w_h`; with :math:`\alpha = 1` and no group below
    the floor it is :math:`1/G` for each of the :math:`G` groups.  A group below the floor gets
    :math:`p_g / f` of the others' share: the floor caps how much a tiny group is oversampled.
    :math:`\alpha = 0` gives uniform weights.

    Parameters
    ----------
    groups:
        One row per training study, one column per group attribute (values compared as strings).
    attributes:
        Columns whose joint groups are equalised (default: all columns).
    alpha:
        The strength (exponent), >= 0.
    floor:
        Frequencies below ``floor`` count as ``floor``; in (0, 1].

    Returns
    -------
    numpy.ndarray
        (N,) float64 weights with mean 1.
    """
    if groups is None:
        raise ValueError("reweighting needs group attributes, but the training pairs carry none")
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"reweighting: strength (alpha) must be a finite number >= 0, got {alpha}")
    if not 0 < floor <= 1:
        raise ValueError(f"reweighting: floor must be in (0, 1], got {floor}")
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
    """The :class:`TrainingHooks` of strategy ``name`` at ``strength``, and its penalty object (or None).

    ``reweighting`` gives ``sample_weights`` (:func:`group_weights` with alpha = strength);
    ``eodd`` a ``loss_hook`` (:class:`EqualizedOddsPenalty`, or :class:`DiceGapPenalty` for a
    segmentation task); ``adversarial`` a ``loss_hook`` and an ``on_batch_end`` adversary step
    (:class:`AdversarialPenalty`).  ``task_models`` maps task kind to its frozen diagnostic model.
    """
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
                                       reduce=p.reduce, momentum=p.momentum, penalty_floor=p.penalty_floor)
        else:
            if train.masks is None:
                raise ValueError("eodd on a segmentation task needs masks in the training pairs")
            pen = DiceGapPenalty(model, train.masks.float(), groups, strength, temperature=p.temperature,
                                 momentum=p.momentum, penalty_floor=p.penalty_floor)
        return TrainingHooks(loss_hook=pen), pen
    # adversarial
    import torch

    with torch.no_grad():
        n_feat = int(model.features(train.clean[:2].to(model.device)).shape[1])
    pen = AdversarialPenalty(model, groups, strength, n_feat, hidden=p.hidden, adv_lr=p.adv_lr,
                             objective=p.objective, seed=seed, momentum=p.momentum, adv_steps=p.adv_steps,
                             penalty_floor=p.penalty_floor,
                             device=model.device)
    if p.warmup_epochs:
        loss = pen.warm_up(train.clean, epochs=p.warmup_epochs, seed=seed)
        log.info("adversary warm-up on clean features: loss %s after %d epochs", loss, p.warmup_epochs)
    return TrainingHooks(loss_hook=pen, on_batch_end=pen.adversary_step), pen


def apply_mitigation(rec, name: str, strength: float, params: dict, train: PairSet, val: PairSet, *,
                     task_models: dict, cohort=None, seed: int = 0, checkpoint_dir=None) -> dict:
    """Fit ``rec`` with strategy ``name`` at ``strength``; return the training history.

    ``reweighting`` trains from scratch (``rec.fit``) with weighted sampling; ``eodd`` and
    ``adversarial`` fine-tune ``rec`` (``rec.finetune``, ``params["epochs"]`` epochs at
    ``params["lr"]``), which must already hold the standard reconstructor's weights, with the penalty
    as a loss hook.

    Parameters
    ----------
    rec:
        A trainable reconstructor (:class:`~reconaudit.recon.training.LearnedReconstructor`).
    name, strength, params:
        Strategy (one of :data:`MITIGATIONS`), its strength (alpha or lambda) and parameters
        (:class:`ReweightingParams`, :class:`EoddParams`, :class:`AdversarialParams`).
    train, val:
        Training pairs (with ``groups``, and ``targets`` or ``masks``) and validation pairs.
    task_models:
        Task kind -> frozen diagnostic model trained on clean images.
    cohort:
        The cohort, for error messages (attribute columns come from ``train.groups``).
    seed, checkpoint_dir:
        As for ``rec.fit``.

    Returns
    -------
    dict
        The reconstructor's training history plus ``mitigation``: name, strength and, for the
        penalties, the number of calls, the penalty's mean over the first and last tenth of the
        calls, and the adversary's final loss.
    """
    if not getattr(rec, "trainable", False):
        raise ValueError(f"mitigation {name!r} needs a trainable reconstructor; {rec.name!r} is not")
    if name != "reweighting" and not getattr(rec, "fitted", True):
        log.warning("mitigation %r fine-tunes %r, which has not been fitted: it starts from random weights",
                    name, rec.name)
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
        vals = np.asarray(pen.penalties, dtype=np.float64)
        k = max(1, len(vals) // 10)
        history["mitigation"].update(
            penalty_calls=pen.calls,
            last_penalty=pen.last_penalty,
            penalty_start=float(vals[:k].mean()) if len(vals) else None,
            penalty_end=float(vals[-k:].mean()) if len(vals) else None,
        )
        if isinstance(pen, AdversarialPenalty) and pen.adv_losses:
            history["mitigation"]["adversary_loss_end"] = float(np.mean(pen.adv_losses[-k:]))
    return history
