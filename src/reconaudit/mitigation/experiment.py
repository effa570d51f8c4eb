"""A small controlled experiment: reconstruction that amplifies a subgroup bias, and what mitigation buys.

The images (:func:`make_finding_images`) are 32x32 smooth random backgrounds; a positive study holds
a faint Gaussian disc (the finding) whose contrast is lower in the minority group.  The degradation is
additive Gaussian noise (the regime of a low-dose X-ray's photon noise).  A classifier is trained on
clean images with balanced groups and its operating threshold chosen on clean validation images, so
its equalized-odds difference (EOD) on clean test images is small.  A U-Net trained on noisy/clean
pairs where the minority is rare learns to smooth faint structures away: after reconstruction the
minority's faint findings fall below the fixed threshold more often than the majority's, the
minority's TPR drops and the EOD grows.  Each strategy of :func:`~reconaudit.mitigation.apply_mitigation`
is then applied to the same standard U-Net (fine-tuning) or trained from scratch (reweighting) and
measured on the same test images with :func:`reconaudit.metrics.equalized_odds_difference` at the
classifier's fixed threshold.

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
    widths = (0.12 + 0.18 * torch.rand(n, 3, generator=g)) * size
    amps = 0.05 + 0.1 * torch.rand(n, 3, generator=g)
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


@dataclass
class ExperimentConfig:
    """Sizes and settings of :func:`run_mitigation_experiment` (defaults: the benchmark's)."""

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
    classifier_epochs: int = 10
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
