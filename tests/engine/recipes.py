"""The README's extension recipes, written from the documented base classes only.

One class per room: a cohort, a degradation, a reconstructor, a diagnostic model and a mitigation
strategy.  ``tests/engine/test_recipes.py`` registers each with its one line and runs them all
through one tiny audit.  Each is small enough that its result has a closed form.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict

from reconaudit.cohorts.base import CohortBuilder, CohortStream, assign_splits_by_patient
from reconaudit.mitigation.strategies import MitigationStrategy
from reconaudit.physics.base import Degradation, Degraded
from reconaudit.recon.base import Reconstructor, TrainingHooks
from reconaudit.seeding import torch_generator
from reconaudit.tasks.base import DiagnosticModel
from reconaudit.tasks.thresholds import choose_thresholds


# ---------------------------------------------------------------------------------- cohort
class BrightSpotParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_studies: int = 60
    size: int = 32
    seed: int = 0


class BrightSpotCohort(CohortBuilder):
    """Faint noise images; the positives (label ``spot``) carry a bright square in the centre."""

    name = "bright-spot"
    kind = "synthetic"
    modality = "xray"
    tasks = ("classification",)
    groups = "sex"
    description = "noise images with a bright spot in the positives"
    Params = BrightSpotParams

    @classmethod
    def stream(cls, params: BrightSpotParams) -> CohortStream:
        n, s = params.n_studies, params.size
        spot = torch.rand(n, generator=torch_generator(params.seed)) < 0.5
        ids = [f"spot-{i:03d}" for i in range(n)]
        table = pd.DataFrame({"study_id": ids, "patient_id": ids, "sex": np.where(np.arange(n) % 3 == 0, "F", "M"),
                              "spot": spot.numpy().astype(np.float64)})
        table["split"] = assign_splits_by_patient(table["patient_id"], seed=params.seed)

        def batches(chunk: int):                # studies [start, start + chunk), one seed per study
            for start in range(0, n, chunk):
                idx = range(start, min(start + chunk, n))
                images = torch.stack([0.3 + 0.1 * torch.rand(1, s, s, generator=torch_generator(params.seed + 1 + i))
                                      for i in idx])
                images[spot[start : start + len(idx)], :, s // 2 - 4 : s // 2 + 4, s // 2 - 4 : s // 2 + 4] += 0.4
                yield {"images": images}

        return CohortStream(n, batches, lambda: {
            "name": cls.name, "modality": "xray", "table": table, "labels": ["spot"], "group_attributes": ["sex"],
            "data_card": "# bright-spot\n\nA test cohort.\n"})


# ---------------------------------------------------------------------------------- degradation
class DimmedNoise(Degradation):                 # x = gain * y + sigma * n, n ~ N(0, 1) per study seed
    name, modality, level_name = "dimmed-noise", "any", "gain"

    def __init__(self, gain: float, sigma: float = 0.02):
        self.gain, self.sigma = float(gain), float(sigma)

    @property
    def level(self):
        return self.gain

    def __call__(self, images, seeds):
        noise = torch.stack([torch.randn(images.shape[1:], generator=torch_generator(int(s))) for s in seeds])
        return Degraded(self.gain * images + self.sigma * noise.to(images.device))


# ---------------------------------------------------------------------------------- reconstructor
class GainReconstructor(Reconstructor):
    r"""``y_hat = a x`` with :math:`a = \sum_i w_i \langle x_i, y_i\rangle / \sum_i w_i \langle x_i, x_i\rangle`
    (weighted least squares; ``w`` from a mitigation's ``sample_weights``, else 1)."""

    name = "gain"
    trainable = True
    seen_study_ids: list[str] = []  # what the engine passed to reconstruct, for the test

    def __init__(self, device="cpu", **params) -> None:
        super().__init__(device, **params)
        self.a = torch.ones(())

    def fit(self, train, val, *, seed=0, hooks: TrainingHooks | None = None, checkpoint_dir=None) -> dict:
        x, y = train.degraded.image.double().flatten(1), train.clean.double().flatten(1)
        w = torch.ones(len(x), dtype=torch.float64)
        if hooks is not None and hooks.sample_weights is not None:
            w = torch.as_tensor(hooks.sample_weights, dtype=torch.float64)
        self.a = ((w * (x * y).sum(1)).sum() / (w * (x * x).sum(1)).sum()).float()
        return {"gain": float(self.a)}

    def reconstruct(self, degraded, *, seeds=None, samples=1, study_ids=None) -> torch.Tensor:
        GainReconstructor.seen_study_ids.extend(study_ids or [])
        return (self.a * degraded.image).float().cpu()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"a": self.a.reshape(1)}

    def load_state_dict(self, state) -> None:
        self.a = state["a"].reshape(())


# ---------------------------------------------------------------------------------- diagnostic model
class MeanIntensityClassifier(DiagnosticModel):
    """``p = sigmoid((mean(x) - c) / s)`` per label, with c and s from the training images."""

    kind = "classification"

    def __init__(self, device="cpu", **params) -> None:
        super().__init__(device, **params)
        self.c, self.s = torch.zeros(()), torch.ones(())

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        z = (images.flatten(1).mean(1) - self.c) / self.s
        return z[:, None].expand(-1, int(self.params["n_outputs"]))

    def predict(self, images: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.sigmoid(self.logits(images.float())).double().numpy()

    def fit(self, images, targets, val_images, val_targets, *, seed=0) -> dict:
        m = images.flatten(1).mean(1)
        self.c, self.s = m.mean(), m.std()
        self.thresholds = choose_thresholds(np.asarray(val_targets), self.predict(val_images), "sens_eq_spec")
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"c": self.c.reshape(1), "s": self.s.reshape(1)}

    def load_state_dict(self, state) -> None:
        self.c, self.s = state["c"].reshape(()), state["s"].reshape(())


# ---------------------------------------------------------------------------------- mitigation
class UpweightParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attribute: str = "sex"
    value: str = "F"


class UpweightGroup(MitigationStrategy):
    """Sampling weight ``1 + strength`` for the studies of one group, 1 for the others."""

    name = "upweight-group"
    Params = UpweightParams

    def hooks(self, train, strength, *, task_models, seed=0):
        p = self.params
        w = 1.0 + strength * (train.groups[p.attribute].to_numpy() == p.value)
        return TrainingHooks(sample_weights=w.astype(np.float64)), None


# ---------------------------------------------------------------------------------- metric
def false_negative_rate_difference(y_true, y_pred, *, sensitive_features, min_group_size: int = 1) -> float:
    r"""False-negative-rate gap: :math:`\max_g FNR_g - \min_g FNR_g`, :math:`FNR_g = FN_g / (TP_g + FN_g)`."""
    from reconaudit.metrics import confusion_counts, group_rates

    fnr = 1.0 - group_rates(confusion_counts(y_true, y_pred, sensitive_features), min_group_size)["tpr"]
    return float(fnr.max() - fnr.min())
