"""Diagnostic models: trained once on clean images, frozen, then applied to reconstructions.

- :class:`Classifier` (multi-label, masked BCE; ``arch`` ``"small-cnn"`` or ``"densenet"``),
- :class:`Segmenter` (2-D MONAI U-Net, Dice + BCE or Dice + L1; ``arch`` ``"small-cnn"`` or ``"unet"``),
- the user's own model (``arch="plugin"``, ``target="package.module:factory"``),
- operating thresholds (:mod:`reconaudit.tasks.thresholds`),
- inputs of the no-reconstruction arm (:mod:`reconaudit.tasks.direct`).

Build one with :func:`make_task_model`; see docs/tasks.md.
"""

from __future__ import annotations

import torch

from reconaudit.tasks.base import DiagnosticModel
from reconaudit.tasks.classification import Classifier, SmallCNN, masked_bce_with_logits
from reconaudit.tasks.direct import DIRECT_IN_CHANNELS, direct_inputs, kspace_channels, make_direct_model
from reconaudit.tasks.params import TaskConfigError
from reconaudit.tasks.plugins import PluginClassifier, PluginSegmenter
from reconaudit.tasks.regression import Regressor
from reconaudit.tasks.segmentation import Segmenter
from reconaudit.tasks.thresholds import (
    THRESHOLD_POLICIES,
    apply_thresholds,
    choose_threshold,
    choose_thresholds,
)

TASK_MODELS: dict[str, dict[str, type[DiagnosticModel]]] = {
    "classification": {"small-cnn": Classifier, "densenet": Classifier, "plugin": PluginClassifier},
    "segmentation": {"small-cnn": Segmenter, "unet": Segmenter, "plugin": PluginSegmenter},
    "regression": {"small-cnn": Regressor},
}
"""Registry: kind -> arch -> class.  ``"small-cnn"`` is the CPU default of both kinds (for
segmentation a small U-Net)."""


def make_task_model(
    kind: str,
    arch: str = "small-cnn",
    device: str | torch.device = "cpu",
    in_channels: int = 1,
    n_outputs: int | None = None,
    **params: object,
) -> DiagnosticModel:
    """Build a diagnostic model from its configuration.

    Parameters
    ----------
    kind:
        ``"classification"``, ``"segmentation"`` or ``"regression"`` (continuous phenotypes,
        :class:`~reconaudit.tasks.regression.Regressor`).
    arch:
        Classification: ``"small-cnn"`` (default), ``"densenet"``, ``"plugin"``; segmentation:
        ``"small-cnn"`` (a small U-Net, default), ``"unet"``, ``"plugin"``.
    device:
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    in_channels:
        1 for images, 2 for k-space channels (:func:`direct_inputs`).
    n_outputs:
        Number of labels (required for classification); 1 for segmentation (default).
    **params:
        Training, threshold and architecture parameters, validated with pydantic (unknown keys and
        bad values raise :class:`TaskConfigError` naming the key and what is allowed): ``epochs`` (5),
        ``batch_size`` (16), ``eval_batch_size`` (64), ``lr`` (1e-3), ``weight_decay`` (0),
        ``patience`` (3), ``augment`` (False); classification: ``threshold_policy``
        (``"sens_eq_spec"``), ``threshold_target``, ``pos_weight``, ``label_names``; plus the
        arch's own (see :class:`~reconaudit.tasks.classification.SmallCNNParams`,
        :class:`~reconaudit.tasks.classification.DenseNetParams`,
        :class:`~reconaudit.tasks.segmentation.UNetParams`,
        :class:`~reconaudit.tasks.plugins.PluginFields`).

    Returns
    -------
    DiagnosticModel
        Untrained (or, for a plug-in, as given) and frozen; call ``fit`` next.
    """
    if kind not in TASK_MODELS:
        raise TaskConfigError(f"unknown task kind {kind!r}; allowed: {', '.join(TASK_MODELS)}")
    archs = TASK_MODELS[kind]
    if arch not in archs:
        raise TaskConfigError(f"{kind}: unknown arch {arch!r}; allowed: {', '.join(archs)}")
    if n_outputs is None:
        if kind in ("classification", "regression"):
            raise TaskConfigError(f"{kind}: n_outputs (the number of labels or targets) is required")
        n_outputs = 1
    cls = archs[arch]
    return cls(device, arch=arch, in_channels=in_channels, n_outputs=n_outputs, **params)  # type: ignore[call-arg]


__all__ = [
    "DIRECT_IN_CHANNELS",
    "THRESHOLD_POLICIES",
    "TASK_MODELS",
    "Classifier",
    "DiagnosticModel",
    "PluginClassifier",
    "PluginSegmenter",
    "Regressor",
    "Segmenter",
    "SmallCNN",
    "TaskConfigError",
    "apply_thresholds",
    "choose_threshold",
    "choose_thresholds",
    "direct_inputs",
    "kspace_channels",
    "make_direct_model",
    "make_task_model",
    "masked_bce_with_logits",
]
