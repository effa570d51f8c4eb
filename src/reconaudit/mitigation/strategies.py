"""Mitigation strategies: one :class:`MitigationStrategy` subclass each, their parameters, and
:func:`apply_mitigation`, what the engine calls for a mitigated cell.

To add a strategy, subclass :class:`MitigationStrategy` (``name``, ``Params``, ``fine_tunes`` and
:meth:`~MitigationStrategy.hooks`) in one file and add one line to :data:`MITIGATIONS`; config
validation and the plan read everything else from the class.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from reconaudit.arrays import as_float_view, is_lazy
from reconaudit.mitigation.penalties import AdversarialPenalty, DiceGapPenalty, EqualizedOddsPenalty
from reconaudit.recon.base import PairSet, TrainingHooks
from reconaudit.validation import validate_params

log = logging.getLogger(__name__)


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


class MitigationStrategy(ABC):
    """A training-time strategy that changes how a reconstructor is fitted.

    Built as ``cls(params)`` (the config's ``mitigations[i].params``, validated by ``Params``);
    the engine's :func:`apply_mitigation` calls :meth:`hooks` and then :meth:`fit`.  A strategy
    with ``fine_tunes = True`` continues from the standard (unmitigated) reconstructor of the same
    cell, whose weights the engine loads first (the plan adds that fit as a dependency), for the
    ``epochs`` at ``lr`` of its ``Params`` (which then has these two fields); otherwise it trains
    from scratch.
    """

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]]
    fine_tunes: ClassVar[bool] = False

    def __init__(self, params: dict | None = None) -> None:
        self.params = validate_params(self.Params, dict(params or {}), where=self.name)

    @abstractmethod
    def hooks(self, train: PairSet, strength: float, *, task_models: dict,
              seed: int = 0) -> tuple[TrainingHooks, object | None]:
        """The :class:`TrainingHooks` at ``strength`` and the penalty object (or None) whose
        ``penalties`` / ``calls`` / ``last_penalty`` the history reports."""

    def fit(self, rec, train: PairSet, val: PairSet, hooks: TrainingHooks, *, seed: int = 0,
            checkpoint_dir=None) -> dict:
        """Fit ``rec`` with ``hooks``: ``rec.fit`` from scratch, or ``rec.finetune`` for
        ``epochs`` at ``lr`` of the params when the strategy fine-tunes."""
        if self.fine_tunes:
            return rec.finetune(train, val, epochs=self.params.epochs, lr=self.params.lr, seed=seed, hooks=hooks,
                                checkpoint_dir=checkpoint_dir)
        return rec.fit(train, val, seed=seed, hooks=hooks, checkpoint_dir=checkpoint_dir)


class Reweighting(MitigationStrategy):
    """``sample_weights`` from :func:`group_weights` with alpha = strength; trains from scratch."""

    name = "reweighting"
    Params = ReweightingParams

    def hooks(self, train, strength, *, task_models, seed=0):
        """Weighted sampling; no penalty."""
        p = self.params
        return TrainingHooks(sample_weights=group_weights(train.groups, p.attributes, alpha=strength,
                                                          floor=p.floor)), None


def _task_model(p, name: str, task_models: dict):
    task = p.task
    if task == "auto":
        task = "segmentation" if "segmentation" in task_models else "classification"
    if task not in task_models:
        raise ValueError(f"mitigation {name!r} needs a {task} model; the cohort has {list(task_models)}")
    return task, task_models[task]


class EqualizedOddsFineTune(MitigationStrategy):
    """A ``loss_hook``: :class:`EqualizedOddsPenalty`, or :class:`DiceGapPenalty` for a
    segmentation task; fine-tunes the standard reconstructor."""

    name = "eodd"
    Params = EoddParams
    fine_tunes = True

    def hooks(self, train, strength, *, task_models, seed=0):
        """The equalized-odds (or Dice-gap) penalty as a loss hook."""
        p = self.params
        groups = _attributes(p, train)
        task, model = _task_model(p, self.name, task_models)
        if task == "classification":
            if train.targets is None:
                raise ValueError("eodd on a classification task needs targets in the training pairs")
            pen = EqualizedOddsPenalty(model, train.targets, groups, strength, temperature=p.temperature,
                                       reduce=p.reduce, momentum=p.momentum, penalty_floor=p.penalty_floor)
        else:
            if train.masks is None:
                raise ValueError("eodd on a segmentation task needs masks in the training pairs")
            masks = as_float_view(train.masks) if is_lazy(train.masks) else train.masks.float()  # read per batch
            pen = DiceGapPenalty(model, masks, groups, strength, temperature=p.temperature,
                                 momentum=p.momentum, penalty_floor=p.penalty_floor)
        return TrainingHooks(loss_hook=pen), pen


class AdversarialFineTune(MitigationStrategy):
    """A ``loss_hook`` and an ``on_batch_end`` adversary step (:class:`AdversarialPenalty`);
    fine-tunes the standard reconstructor."""

    name = "adversarial"
    Params = AdversarialParams
    fine_tunes = True

    def hooks(self, train, strength, *, task_models, seed=0):
        """The adversary's penalty, after ``warmup_epochs`` of adversary-only training."""
        import torch

        p = self.params
        groups = _attributes(p, train)
        _, model = _task_model(p, self.name, task_models)
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


MITIGATIONS: dict[str, type[MitigationStrategy]] = {
    Reweighting.name: Reweighting,
    EqualizedOddsFineTune.name: EqualizedOddsFineTune,
    AdversarialFineTune.name: AdversarialFineTune,
}
"""Registry: config name -> strategy class (one line per strategy)."""


def make_mitigation(name: str, params: dict | None = None) -> MitigationStrategy:
    """The strategy registered as ``name`` with validated ``params``.

    Raises
    ------
    ValueError
        For an unknown ``name`` (the message lists the registered ones) or invalid params (the
        message names the key and the allowed keys).
    """
    if name not in MITIGATIONS:
        raise ValueError(f"unknown mitigation {name!r}; allowed: {', '.join(MITIGATIONS)}")
    return MITIGATIONS[name](params)


def validate_mitigation_params(name: str, params: dict) -> BaseModel:
    """Validate the params of strategy ``name``; ValueError names the bad key and the allowed ones."""
    return make_mitigation(name, params).params


def make_hooks(rec, name: str, strength: float, params: dict, train: PairSet, *, task_models: dict,
               seed: int = 0) -> tuple[TrainingHooks, object | None]:
    """The :class:`TrainingHooks` of strategy ``name`` at ``strength``, and its penalty object (or None).

    ``task_models`` maps task kind to its frozen diagnostic model; see each strategy's ``hooks``.
    """
    return make_mitigation(name, params).hooks(train, strength, task_models=task_models, seed=seed)


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
    strategy = make_mitigation(name, params)
    if strategy.fine_tunes and not getattr(rec, "fitted", True):
        log.warning("mitigation %r fine-tunes %r, which has not been fitted: it starts from random weights",
                    name, rec.name)
    hooks, pen = strategy.hooks(train, strength, task_models=task_models, seed=seed)
    history = dict(strategy.fit(rec, train, val, hooks, seed=seed, checkpoint_dir=checkpoint_dir))
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
