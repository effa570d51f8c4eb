"""A small controlled experiment: reconstruction that amplifies a subgroup bias, and what mitigation buys.

The images (:func:`make_finding_images`) are 32x32 smooth random backgrounds; a positive study holds
a faint Gaussian disc (the finding) whose contrast is lower in the minority group (0.18 against
0.35), and the minority's background is slightly darker (the group is visible, as sex or age is in
a radiograph).  The degradation is additive Gaussian noise (the regime of a low-dose X-ray's photon
noise).  The diagnostic model is a frozen matched-filter detector (:class:`FindingDetector`) whose
threshold is chosen on clean validation images with balanced groups, so its equalized-odds
difference (EOD) on clean test images is about 0.  A U-Net trained on noisy/clean pairs in which
the minority is rare (10%) smooths faint structures away: after reconstruction the minority's
findings fall below the fixed threshold far more often than the majority's, the minority's TPR
drops and the EOD grows.  Each strategy of :func:`~reconaudit.mitigation.apply_mitigation` is then
applied to the same standard U-Net (fine-tuning) or trained from scratch (reweighting) and measured
on the same test images (50% minority) with :func:`reconaudit.metrics.equalized_odds_difference`
at the detector's fixed threshold.

``benchmarks/mitigation_effect.py`` runs it over several seeds; a fast version is a test.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from reconaudit.physics.base import Degraded
from reconaudit.recon.base import PairSet
from reconaudit.seeding import derive_seed, torch_generator
from reconaudit.tasks.base import DiagnosticModel

log = logging.getLogger(__name__)


@dataclass
class FindingImages:
    """Clean images, their noisy versions, targets (N, 1) and the group of each study."""

    clean: torch.Tensor
    noisy: torch.Tensor
    targets: np.ndarray
    group: np.ndarray

    def pairs(self) -> PairSet:
        """As reconstructor training pairs (group column ``group``, one label)."""
        n = len(self.group)
        return PairSet(
            degraded=Degraded(self.noisy), clean=self.clean, study_ids=[f"s{i:05d}" for i in range(n)],
            groups=pd.DataFrame({"group": self.group}), targets=self.targets,
        )


def make_finding_images(
    n: int,
    *,
    seed: int,
    size: int = 32,
    minority_share: float = 0.5,
    prevalence: float = 0.5,
    contrast: float = 0.35,
    minority_contrast: float = 0.18,
    radius: float = 2.5,
    jitter: float = 0.25,
    noise: float = 0.15,
    clean_noise: float = 0.03,
    minority_offset: float = -0.1,
) -> FindingImages:
    """Draw ``n`` studies of the finding cohort.

    A clean image is ``b + o [minority] + sum_k a_k exp(-|x - c_k|^2 / (2 w_k^2)) + y c_g exp(-|x - f|^2 /
    (2 r^2))``: base level ``b = 0.3``, a group offset ``o`` (``minority_offset``, so the group is visible),
    three background blobs (amplitudes in [0.05, 0.2], widths in [3, 8] px, centres anywhere), and, when
    the study is positive (``y = 1``, probability ``prevalence``), the finding of contrast ``c_g``
    (``contrast`` for the majority, ``minority_contrast`` for the minority) and radius ``r`` at a centre
    ``f`` drawn in the central half of the image; clipped to [0, 1].  The noisy image adds
    ``N(0, noise^2)`` per pixel.  Every draw comes from ``torch_generator(derive_seed(...seed))``.

    Returns
    -------
    FindingImages
        ``group`` holds ``"majority"`` / ``"minority"``; ``targets`` is float32 (N, 1).
    """
    if n < 1:
        raise ValueError(f"make_finding_images: n must be >= 1, got {n}")
    for name, v in (("minority_share", minority_share), ("prevalence", prevalence)):
        if not 0 <= v <= 1:
            raise ValueError(f"make_finding_images: {name} must be in [0, 1], got {v}")
    g = torch_generator(derive_seed("mitigation/finding-images", seed))
    minority = torch.rand(n, generator=g) < minority_share
    y = (torch.rand(n, generator=g) < prevalence).float()
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    centres = torch.rand(n, 3, 2, generator=g) * size
    widths = (0.25 + 0.2 * torch.rand(n, 3, generator=g)) * size
    amps = 0.03 + 0.07 * torch.rand(n, 3, generator=g)
    d2 = (yy - centres[..., 0, None, None]) ** 2 + (xx - centres[..., 1, None, None]) ** 2
    img = 0.3 + (amps[..., None, None] * torch.exp(-d2 / (2 * widths[..., None, None] ** 2))).sum(1)
    img = img + minority_offset * minority.float()[:, None, None]
    f = size / 2 + (torch.rand(n, 2, generator=g) - 0.5) * jitter * size
    fd2 = (yy - f[:, 0, None, None]) ** 2 + (xx - f[:, 1, None, None]) ** 2
    c = torch.where(minority, torch.tensor(minority_contrast), torch.tensor(contrast))
    img = img + (y * c)[:, None, None] * torch.exp(-fd2 / (2 * radius**2))
    img = img + clean_noise * torch.randn(img.shape, generator=g)
    clean = img.clamp(0, 1)[:, None].contiguous()
    noisy = clean + noise * torch.randn(clean.shape, generator=g)
    group = np.where(minority.numpy(), "minority", "majority")
    return FindingImages(clean, noisy.float(), y.numpy()[:, None].astype(np.float32), group)


class FindingDetector(DiagnosticModel):
    """A frozen, differentiable detector of the finding: a difference-of-Gaussians matched filter.

    The response map is ``r = x * (G_r - G_{2r})`` (a Gaussian of the finding's radius minus one twice
    as wide, reflect-padded, so smooth background and group offsets cancel); the logit is
    ``z = (max_{central window} r - c) / s`` with ``c`` and ``s`` set by :meth:`fit` from clean
    training images (the midpoint and spread of the positives' and negatives' peak responses); the
    threshold is chosen on clean validation images with the ``sens_eq_spec`` policy.  ``features``
    are (peak response, mean response, image mean, image std): the image mean reveals the group's
    offset, which is what an adversary can read.  Using a fixed filter instead of a trained CNN keeps
    the experiment free of classifier-training variance.
    """

    kind = "classification"

    def __init__(self, radius: float = 2.5, size: int = 32, window: float = 0.3) -> None:
        super().__init__("cpu")
        k = int(math.ceil(2.5 * 2 * radius)) * 2 + 1
        ax = torch.arange(k, dtype=torch.float32) - k // 2
        d2 = ax[:, None] ** 2 + ax[None, :] ** 2

        def gauss(sig: float) -> torch.Tensor:
            g = torch.exp(-d2 / (2 * sig**2))
            return g / g.sum()

        self.kernel = (gauss(radius) - gauss(2 * radius))[None, None]
        self.pad = k // 2
        lo, hi = int(size * (0.5 - window)), int(math.ceil(size * (0.5 + window)))
        self.window = (lo, hi)
        self.offset, self.scale = 0.0, 1.0
        self.thresholds = np.array([0.5])

    def _peak(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(torch.float32)
        xp = torch.nn.functional.pad(x - x.mean(dim=(-2, -1), keepdim=True), (self.pad,) * 4, mode="reflect")
        r = torch.nn.functional.conv2d(xp, self.kernel.to(x.device))
        lo, hi = self.window
        win = r[:, 0, lo:hi, lo:hi].flatten(1)
        return win.amax(1), r.flatten(1).mean(1)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1) logits ``(peak - c) / s``, differentiable with respect to ``images``."""
        peak, _ = self._peak(images)
        return ((peak - self.offset) / self.scale)[:, None]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 4): peak response, mean response, image mean and image std."""
        peak, mean_r = self._peak(images)
        flat = images.to(torch.float32).flatten(1)
        return torch.stack([peak / self.scale, mean_r / self.scale, flat.mean(1), flat.std(1)], 1)

    def predict(self, images: torch.Tensor) -> np.ndarray:
        """Probabilities ``sigmoid(z)``, (N, 1) float64."""
        with torch.no_grad():
            return torch.sigmoid(self.logits(torch.as_tensor(images))).double().numpy()

    def fit(self, images, targets, val_images, val_targets, *, seed: int = 0) -> dict:
        """Set ``c``, ``s`` from ``images`` and the threshold (``sens_eq_spec``) from the validation data."""
        from reconaudit.tasks import choose_thresholds

        with torch.no_grad():
            peak, _ = self._peak(torch.as_tensor(images))
        y = np.asarray(targets).reshape(-1) == 1
        p = peak.numpy()
        self.offset = float(0.5 * (p[y].mean() + p[~y].mean()))
        self.scale = float(max(0.5 * (p[y].mean() - p[~y].mean()), 1e-6)) / 4.0
        self.thresholds = choose_thresholds(np.asarray(val_targets, dtype=np.float64).reshape(-1, 1),
                                            self.predict(val_images), "sens_eq_spec")
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The fitted offset ``c`` and scale ``s``."""
        return {"offset": torch.tensor(self.offset, dtype=torch.float64),
                "scale": torch.tensor(self.scale, dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore from :meth:`state_dict`."""
        self.offset, self.scale = float(state["offset"]), float(state["scale"])


@dataclass
class ExperimentConfig:
    """Sizes and settings of :func:`run_mitigation_experiment` (defaults: the benchmark's).

    ``n_*`` are study counts (classifier training, reconstructor training, validation, test);
    ``minority_*`` the minority's share in the reconstructor's training/validation data and in the
    test set; ``noise``, ``clean_noise``, ``contrast``, ``minority_contrast`` as in
    :func:`make_finding_images`; ``classifier`` is ``"detector"`` (:class:`FindingDetector`) or
    ``"small-cnn"`` (a :class:`~reconaudit.tasks.Classifier` trained for ``classifier_epochs``);
    the U-Net has ``recon_channels`` and trains ``recon_epochs``; ``eodd`` / ``adversarial``
    fine-tune ``finetune_epochs`` at ``finetune_lr``.
    """

    n_classifier: int = 600
    n_train: int = 400
    n_val: int = 100
    n_test: int = 600
    minority_train: float = 0.1
    minority_test: float = 0.5
    noise: float = 0.15
    clean_noise: float = 0.03
    contrast: float = 0.35
    minority_contrast: float = 0.18
    classifier: str = "detector"
    classifier_epochs: int = 10
    size: int = 32
    recon_epochs: int = 8
    recon_channels: tuple[int, ...] = (8, 16, 32)
    finetune_epochs: int = 3
    finetune_lr: float = 5e-4
    batch_size: int = 32


STRATEGIES_DEFAULT: tuple[tuple[str, float], ...] = (
    ("none", math.nan), ("reweighting", 1.0), ("eodd", 0.0), ("eodd", 0.1), ("eodd", 1.0), ("eodd", 10.0),
    ("adversarial", 1.0),
)
"""The arms of the benchmark: standard, reweighting, plain fine-tuning (eodd at lambda 0), eodd at
lambda 0.1 / 1 / 10, adversarial at lambda 1."""


def _evaluate(classifier, images: torch.Tensor, data: FindingImages, clean: torch.Tensor | None) -> dict:
    from reconaudit.metrics import auroc, equalized_odds_difference, psnr

    prob = classifier.predict(images)[:, 0]
    thr = float(np.asarray(classifier.thresholds).reshape(-1)[0])
    pred = (prob >= thr).astype(np.int8)
    y = data.targets[:, 0].astype(np.int8)
    out = {
        "eod": float(equalized_odds_difference(y, pred, sensitive_features=data.group)),
        "auroc": float(auroc(y, prob)),
    }
    for grp in ("majority", "minority"):
        m = data.group == grp
        out[f"tpr_{grp}"] = float(pred[m & (y == 1)].mean())
        out[f"fpr_{grp}"] = float(pred[m & (y == 0)].mean())
    if clean is not None:
        out["psnr"] = float(np.mean(psnr(images.clamp(0, 1), clean)))
    return out


def run_mitigation_experiment(
    seed: int,
    strategies: tuple[tuple[str, float], ...] = STRATEGIES_DEFAULT,
    config: ExperimentConfig | None = None,
    params: dict[str, dict] | None = None,
) -> dict:
    """Run every arm of the experiment for one seed.

    Parameters
    ----------
    seed:
        Seeds the images, the classifier, the reconstructors and the adversary.
    strategies:
        ``(name, strength)`` pairs; ``("none", nan)`` is the standard U-Net.
    config:
        Sizes and training settings.
    params:
        Extra parameters per strategy name, merged over the defaults (fine-tuning epochs and lr from
        ``config``).

    Returns
    -------
    dict
        ``clean`` and ``noisy`` (the classifier on clean and on unreconstructed noisy test images) and
        ``arms``: one entry per strategy with ``strategy``, ``strength``, ``eod``, ``auroc``, ``psnr``
        and per-group TPR / FPR, all at the classifier's fixed threshold.
    """
    from reconaudit.mitigation.strategies import apply_mitigation
    from reconaudit.recon import make_reconstructor
    from reconaudit.tasks import make_task_model

    cfg = config or ExperimentConfig()
    kw = dict(noise=cfg.noise, clean_noise=cfg.clean_noise, contrast=cfg.contrast, minority_contrast=cfg.minority_contrast)
    cls_tr = make_finding_images(cfg.n_classifier, seed=derive_seed(seed, "cls-train"), **kw)
    cls_va = make_finding_images(cfg.n_val * 2, seed=derive_seed(seed, "cls-val"), **kw)
    train = make_finding_images(cfg.n_train, seed=derive_seed(seed, "train"), minority_share=cfg.minority_train, **kw)
    val = make_finding_images(cfg.n_val, seed=derive_seed(seed, "val"), minority_share=cfg.minority_train, **kw)
    test = make_finding_images(cfg.n_test, seed=derive_seed(seed, "test"), minority_share=cfg.minority_test, **kw)

    if cfg.classifier == "detector":
        clf = FindingDetector(size=cfg.size)
    else:
        clf = make_task_model("classification", "small-cnn", n_outputs=1, channels=(8, 16, 32),
                              epochs=cfg.classifier_epochs, batch_size=32)
    clf.fit(cls_tr.clean, cls_tr.targets, cls_va.clean, cls_va.targets, seed=seed)
    result: dict = {
        "seed": seed,
        "threshold": float(np.asarray(clf.thresholds).reshape(-1)[0]),
        "clean": _evaluate(clf, test.clean, test, None),
        "noisy": _evaluate(clf, test.noisy.clamp(0, 1), test, test.clean),
        "arms": [],
    }
    rec_params = dict(channels=cfg.recon_channels, epochs=cfg.recon_epochs, batch_size=cfg.batch_size,
                      patience=cfg.recon_epochs)
    tr_pairs, va_pairs = train.pairs(), val.pairs()
    standard = make_reconstructor("unet", **rec_params)
    standard.fit(tr_pairs, va_pairs, seed=seed)
    base_state = standard.state_dict()
    params = params or {}
    for name, strength in strategies:
        rec = make_reconstructor("unet", **rec_params)
        history: dict = {}
        if name == "none":
            rec.load_state_dict(base_state)
        else:
            p = dict(params.get(name, {}))
            if name != "reweighting":
                p = {"epochs": cfg.finetune_epochs, "lr": cfg.finetune_lr, **p}
                rec.load_state_dict(base_state)
            history = apply_mitigation(rec, name, float(strength), p, tr_pairs, va_pairs,
                                       task_models={"classification": clf}, seed=seed)
        out = _evaluate(clf, rec.reconstruct(Degraded(test.noisy)), test, test.clean)
        out.update(strategy=name, strength=float(strength), mitigation=history.get("mitigation"))
        result["arms"].append(out)
        log.info("seed %d %s %g: EOD %.3f AUROC %.3f PSNR %.2f", seed, name, strength, out["eod"],
                 out["auroc"], out["psnr"])
    return result
