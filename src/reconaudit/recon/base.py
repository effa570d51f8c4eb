"""The reconstructor interface: fit on (degraded, clean) pairs, reconstruct a batch, save, load."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import torch

from reconaudit.physics.base import Degraded


@dataclass
class PairSet:
    """Training or validation pairs for a reconstructor.

    ``degraded`` and ``clean`` are aligned study by study.  ``groups`` (group attribute columns),
    ``targets`` (classification targets, float (N, L) with NaN for missing) and ``masks``
    (segmentation targets) are carried so that mitigation strategies can see them; plain
    reconstructors ignore them.
    """

    degraded: Degraded
    clean: torch.Tensor
    study_ids: list[str] = field(default_factory=list)
    groups: pd.DataFrame | None = None
    targets: np.ndarray | None = None
    masks: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.clean.shape[0])


LossHook = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``hook(base_loss, recon, idx) -> total_loss``.

``base_loss`` is the reconstructor's own (generator) loss on the batch, ``recon`` a differentiable
estimate of the clean image for the batch (B, 1, H, W) in image units, ``idx`` the positions of
the batch's studies in the training :class:`PairSet` (LongTensor).  Mitigation strategies use it to
add a fairness penalty.
"""


@dataclass
class TrainingHooks:
    """What a mitigation strategy may change in a reconstructor's training.

    Attributes
    ----------
    sample_weights:
        One non-negative weight per training study: batches are drawn with
        ``torch.utils.data.WeightedRandomSampler`` (with replacement, one epoch = N draws).
    loss_hook:
        See :data:`LossHook`.
    on_batch_end:
        Called after each optimiser step with the batch positions (e.g. to step an adversary).
    """

    sample_weights: np.ndarray | None = None
    loss_hook: LossHook | None = None
    on_batch_end: Callable[[torch.Tensor], None] | None = None


class Reconstructor(ABC):
    """Base class for every reconstructor.

    The engine builds one as ``cls(device=..., **params)`` and calls, in this order, :meth:`fit`
    (``fit_recon`` step), :meth:`save`, then in the ``reconstruct`` step :meth:`load` and
    :meth:`reconstruct` on batches of test studies.  Subclasses set ``name`` (config name),
    ``trainable`` and ``stochastic`` and implement :meth:`reconstruct` (the one abstract method);
    trainable ones override :meth:`fit`, :meth:`state_dict` and :meth:`load_state_dict`, and for
    the fine-tuning mitigations ``finetune(train, val, *, epochs, lr, seed, hooks, checkpoint_dir)``.
    """

    name: ClassVar[str] = "base"
    trainable: ClassVar[bool] = False
    stochastic: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        """Refuse, when the class is defined, a ``reconstruct`` the engine could not call."""
        super().__init_subclass__(**kwargs)
        import inspect

        params = inspect.signature(cls.reconstruct).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        missing = [k for k in ("seeds", "samples", "study_ids") if k not in params and not takes_any]
        if missing:
            raise TypeError(
                f"{cls.__name__}.reconstruct must accept the keywords the engine passes: add "
                f"{', '.join(f'{k}=...' for k in missing)} (signature: reconstruct(degraded, *, seeds=None, "
                f"samples=1, study_ids=None))"
            )

    #: ``fit`` accepts a :class:`PairSet` of lazy arrays of the study store (:mod:`reconaudit.arrays`)
    #: and reads it in batches; when False (a user's reconstructor that overrides ``fit``) the engine
    #: gives it in-memory tensors of the split
    reads_lazily: ClassVar[bool] = False

    def __init__(self, device: str | torch.device = "cpu", **params: object) -> None:
        self.device = torch.device(device)
        self.params = dict(params)

    # ------------------------------------------------------------------ training
    def fit(
        self,
        train: PairSet,
        val: PairSet,
        *,
        seed: int = 0,
        hooks: TrainingHooks | None = None,
        checkpoint_dir: str | Path | None = None,
    ) -> dict:
        """Fit on ``train`` with early stopping on ``val``; return a history dict.

        Non-trainable reconstructors do nothing.  When called on an already fitted model, training
        continues from the current weights (fine-tuning).
        """
        return {}

    # ------------------------------------------------------------------ inference
    @abstractmethod
    def reconstruct(
        self,
        degraded: Degraded,
        *,
        seeds: Sequence[int] | None = None,
        samples: int = 1,
        study_ids: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Reconstruct a batch; the engine passes all three keywords.

        ``seeds`` holds one integer per study (a stochastic reconstructor draws sample k of study
        i from a generator seeded by ``seeds[i]`` and ``k``), ``study_ids`` one id per study (a
        reconstructor that looks results up, such as ``folder``, needs it; others ignore it).
        Returns float32 (N, 1, H, W) when ``samples == 1``, else (N, samples, 1, H, W).
        """

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that define the fitted model (empty for non-trainable ones)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore from :meth:`state_dict`."""
        return None

    def save(self, path: str | Path) -> None:
        """Save weights as safetensors."""
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        if not state:
            state = {"__empty__": torch.zeros(1)}
        save_file(state, str(path))

    def load(self, path: str | Path) -> None:
        """Load weights saved by :meth:`save`."""
        from safetensors.torch import load_file

        state = load_file(str(path))
        state.pop("__empty__", None)
        self.load_state_dict(state)
