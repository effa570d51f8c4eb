"""Compatibility names: the diagnostic models' training machinery now lives in three modules.

- :mod:`reconaudit.tasks.loop`: the training loop (:func:`train_network`, :func:`evaluate_loss`,
  :func:`random_shift`, :func:`seeded_rng`),
- :mod:`reconaudit.tasks.params`: :class:`TrainParams`, :func:`validate_params`,
  :class:`TaskConfigError`,
- :mod:`reconaudit.tasks.network`: :class:`NetworkDiagnosticModel` and its helpers.
"""

from reconaudit.tasks.loop import LossFn, evaluate_loss, random_shift, seeded_rng, train_network
from reconaudit.tasks.network import NetworkDiagnosticModel, as_float_tensor, hooked_output, pooled
from reconaudit.tasks.params import TaskConfigError, TrainParams, validate_params

__all__ = [
    "LossFn",
    "NetworkDiagnosticModel",
    "TaskConfigError",
    "TrainParams",
    "as_float_tensor",
    "evaluate_loss",
    "hooked_output",
    "pooled",
    "random_shift",
    "seeded_rng",
    "train_network",
    "validate_params",
]
