r"""Latent alignment for the direct arm (k-MTR): a k-space (or degraded-image) encoder whose latent
is pulled towards the latent of the frozen clean-image diagnostic model.

The student is a diagnostic model of the same kind and architecture as the clean one, fed the
degraded input (``direct_inputs``: the degraded image or the k-space channels).  Its penultimate
features :math:`z_i = f_\theta(x_i)` (the ``features`` of :mod:`reconaudit.tasks`) are aligned with
the teacher's features :math:`t_i = g(y_i)` of the clean image :math:`y_i` (the teacher is frozen,
so :math:`t_i` is computed once), while its own heads learn the task:

.. math::

    \mathcal{L} = \mathcal{L}_{task}(h_\theta(x), \text{targets}) + \lambda\, \mathcal{L}_{align}(z, t),

with :math:`\lambda` = ``weight`` and :math:`\mathcal{L}_{align}` one of :func:`alignment_loss`'s
``cosine``, ``mse`` (distillation) or ``infonce`` (contrastive, as in k-MTR).  Training is the
shared loop of :func:`reconaudit.tasks.loop.train_network` (Adam, early stopping on the validation
value of the same combined loss), then thresholds are chosen on the degraded validation inputs.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from reconaudit.tasks.loop import train_network
from reconaudit.tasks.network import NetworkDiagnosticModel, as_float_tensor
from reconaudit.tasks.params import TaskConfigError

AlignmentLoss = Literal["cosine", "mse", "infonce"]
ALIGNMENT_LOSSES: tuple[str, ...] = ("cosine", "mse", "infonce")

__all__ = ["ALIGNMENT_LOSSES", "alignment_loss", "fit_aligned", "latent_distance"]


def alignment_loss(student: torch.Tensor, teacher: torch.Tensor, kind: AlignmentLoss = "cosine",
                   temperature: float = 0.1) -> torch.Tensor:
    r"""Alignment loss between student latents ``(N, F)`` and teacher latents ``(N, F)``.

    - ``cosine``: :math:`\frac1N \sum_i \big(1 - \cos(z_i, t_i)\big)`, zero when every pair points the same way;
    - ``mse``: :math:`\frac{1}{NF} \sum_i \lVert z_i - t_i \rVert^2` (feature distillation), zero when equal;
    - ``infonce``: :math:`-\frac1N \sum_i \log \frac{\exp(s_{ii}/\tau)}{\sum_j \exp(s_{ij}/\tau)}` with
      :math:`s_{ij} = \cos(z_i, t_j)` and :math:`\tau` = ``temperature``: the matching clean latent
      against the other studies of the batch (a batch of one gives 0).

    Gradients flow to ``student``; ``teacher`` is treated as a constant (detached).
    """
    if student.ndim != 2 or teacher.shape != student.shape:
        raise ValueError(f"alignment_loss: student and teacher latents must both be (N, F), got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    t = teacher.detach().to(student.dtype)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student, t, dim=1, eps=1e-8)).mean()
    if kind == "mse":
        return F.mse_loss(student, t)
    if kind == "infonce":
        if not temperature > 0:
            raise ValueError(f"alignment_loss: temperature must be positive, got {temperature!r}")
        sim = F.normalize(student, dim=1, eps=1e-8) @ F.normalize(t, dim=1, eps=1e-8).T / temperature
        return F.cross_entropy(sim, torch.arange(len(sim), device=sim.device))
    raise ValueError(f"alignment_loss: kind must be one of {ALIGNMENT_LOSSES}, got {kind!r}")


def latent_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-study cosine distance :math:`1 - \\cos(z_i, t_i)` ``(N,)`` between two latent batches."""
    return 1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=1, eps=1e-8)


class _WithLatent(nn.Module):
    """Training wrapper: the model's logits and its penultimate features from one forward pass."""

    def __init__(self, model: NetworkDiagnosticModel) -> None:
        super().__init__()
        self.net = model.net
        self._model = [model]  # not a submodule: its net is already registered above

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._model[0].logits_and_features(x)


def fit_aligned(model: NetworkDiagnosticModel, images, targets, val_images, val_targets, teacher_latent,
                val_teacher_latent, *, seed: int = 0, loss: AlignmentLoss = "cosine", weight: float = 1.0,
                temperature: float = 0.1) -> dict:
    """Train ``model`` on degraded ``images`` with its task loss plus ``weight`` times the alignment loss
    of its features to ``teacher_latent`` ``(N, F)`` (the frozen clean model's features of the clean
    images, row for row), then choose its thresholds on ``val_images`` and freeze it.

    Returns the history of :func:`~reconaudit.tasks.loop.train_network` (losses are the combined
    loss) with ``alignment`` = the settings used.
    """
    if loss not in ALIGNMENT_LOSSES:
        raise TaskConfigError(f"direct.alignment_loss: expected one of {', '.join(ALIGNMENT_LOSSES)}, got {loss!r}")
    if not weight > 0:
        raise TaskConfigError(f"direct.alignment_weight: must be positive, got {weight!r}")
    if model.config.augment:
        raise TaskConfigError("alignment: the direct model's params.augment must be false (the clean latents "
                              "belong to the unshifted images)")
    x = model._prepare_images(images, "images")
    vx = model._prepare_images(val_images, "val_images")
    y = model._prepare_targets(targets, x.shape[0], x, "targets")
    vy = model._prepare_targets(val_targets, vx.shape[0], vx, "val_targets")
    t, vt = as_float_tensor(teacher_latent, "teacher_latent"), as_float_tensor(val_teacher_latent, "val_teacher_latent")
    if t.ndim != 2 or len(t) != len(x) or vt.ndim != 2 or len(vt) != len(vx):
        raise ValueError(f"teacher latents must be (N, F) with one row per study: got {tuple(t.shape)} for "
                         f"{len(x)} studies and {tuple(vt.shape)} for {len(vx)} validation studies")
    if model.reinit_on_fit:
        model.net = model._build(seed)
    n_task = int(y[0].numel())
    shape = tuple(y.shape[1:])
    task_loss = model._make_loss(y)

    def combined(out: tuple[torch.Tensor, torch.Tensor], packed: torch.Tensor) -> torch.Tensor:
        logits, feats = out
        yt = packed[:, :n_task].reshape(len(packed), *shape)
        return task_loss(logits, yt) + weight * alignment_loss(feats, packed[:, n_task:], loss, temperature)

    pack = torch.cat([y.reshape(len(y), -1), t], 1)
    vpack = torch.cat([vy.reshape(len(vy), -1), vt], 1)
    wrapper = _WithLatent(model)
    model._unfreeze(model.net)
    try:
        history = train_network(wrapper, combined, x, pack, vx, vpack, seed=seed, device=model.device,
                                description=f"training aligned {model.kind} model ({model.arch})",
                                **model._train_settings())
    finally:
        model._freeze(model.net)
    model._after_fit(vx, val_targets)
    history["alignment"] = {"loss": loss, "weight": float(weight), "temperature": float(temperature)}
    return history
