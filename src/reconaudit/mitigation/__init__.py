"""Bias mitigation during reconstruction training.

Three strategies wrap a reconstructor's fitting through :class:`~reconaudit.recon.base.TrainingHooks`:

- ``reweighting`` (:func:`group_weights`): sample training studies with weights that equalise the
  joint groups of the chosen attributes (inverse group frequency with a floor), trained from scratch;
- ``eodd`` (:class:`EqualizedOddsPenalty`): fine-tune a trained reconstructor with an equalized-odds
  penalty computed by the frozen downstream classifier on the reconstruction (for segmentation
  tasks the Dice gap between groups, :class:`DiceGapPenalty`);
- ``adversarial`` (:class:`AdversarialPenalty`): an adversary predicts the group from the
  classifier's features of the reconstruction; the reconstructor is trained to defeat it.

:func:`apply_mitigation` is what the engine calls for a mitigated cell; each strategy is a
:class:`MitigationStrategy` registered by one line in :data:`MITIGATIONS`.
:mod:`reconaudit.mitigation.experiment` holds a small controlled experiment (a cohort where
reconstruction amplifies a subgroup bias) used by ``benchmarks/mitigation_effect.py``.
See docs/mitigation.md for the formulas and measured effects.
"""

from reconaudit.mitigation.penalties import (
    AdversarialPenalty,
    DiceGapPenalty,
    EqualizedOddsPenalty,
    RunningMean,
    soft_dice,
    soft_dice_gap,
    soft_equalized_odds,
)
from reconaudit.mitigation.strategies import (
    MITIGATIONS,
    AdversarialFineTune,
    AdversarialParams,
    EoddParams,
    EqualizedOddsFineTune,
    MitigationStrategy,
    Reweighting,
    ReweightingParams,
    apply_mitigation,
    group_weights,
    make_mitigation,
    validate_mitigation_params,
)

__all__ = [
    "MITIGATIONS",
    "AdversarialFineTune",
    "AdversarialParams",
    "AdversarialPenalty",
    "DiceGapPenalty",
    "EoddParams",
    "EqualizedOddsFineTune",
    "EqualizedOddsPenalty",
    "MitigationStrategy",
    "Reweighting",
    "ReweightingParams",
    "RunningMean",
    "apply_mitigation",
    "group_weights",
    "make_mitigation",
    "soft_dice",
    "soft_dice_gap",
    "soft_equalized_odds",
    "validate_mitigation_params",
]
