"""The score step's generative-trust columns: region quality, hallucination, uncertainty, perception.

One function, :func:`generative_columns`, called by the score step after the task scores; it
returns new record columns (prefixes ``region_`` and ``gen_``, documented in docs/records.md)
computed from the clean test images, the reconstruction and the frozen clean diagnostic models.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from reconaudit.cohorts.base import Cohort
from reconaudit.physics.base import Degraded

log = logging.getLogger(__name__)

#: Gaussian std (pixels) of the local scale of the hallucination map.
SCALE_WINDOW = 6.0
#: Nominal levels of the ``gen_coverage:<level>`` columns.
COVERAGE_LEVELS: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95)
#: Pixels per call of the score step's per-pixel measures (image quality, region quality,
#: hallucination maps, coverage): their float64 intermediates (SSIM's local moments, smoothed error
#: maps) take ~120 bytes per pixel, so a shard is measured :func:`pixel_chunk` studies at a time
#: (64 at 64x64, 4 at 256x256).  Every measure is computed study by study, so the chunk changes no number.
PIXEL_BUDGET = 64 * 64 * 64


def pixel_chunk(shape: tuple[int, ...]) -> int:
    """Studies per call of the per-pixel measures for studies of ``shape`` (N, C, H, W): :data:`PIXEL_BUDGET`
    pixels, at least one study."""
    per_study = 1
    for d in tuple(shape)[1:]:
        per_study *= int(d)
    return max(1, PIXEL_BUDGET // max(per_study, 1))


def observed_pixels(degraded: Degraded) -> np.ndarray | None:
    """The image-domain observation mask of an inpainting degradation, else None (every pixel)."""
    if degraded.mask is not None and degraded.kspace is None:
        return degraded.mask.expand_as(degraded.image).numpy()
    return None


def generative_columns(
    cohort: Cohort, te: np.ndarray, clean_imgs: torch.Tensor, recon: dict | None, deg_test: Degraded,
    clean_models: dict, seg_pred: np.ndarray | None, *, features: dict[str, list] | None = None,
    batch_size: int | None = None,
) -> dict[str, np.ndarray | float]:
    """Record columns for one cell (see docs/records.md); empty for the direct arm's image columns.

    Parameters
    ----------
    cohort, te : the cohort and its test rows
    clean_imgs : (N, 1, H, W) clean test images
    recon : the reconstruct artifact (``mean``, and ``samples`` / ``std`` for K > 1), or None (direct arm)
    deg_test : the degraded test studies
    clean_models : task -> frozen diagnostic model trained on clean images
    seg_pred : binary segmentation of the evaluated inputs (N, 1, H, W), or None
    features : when given (a shard of the test set), the penultimate features of the clean images and
        reconstructions are appended to ``features["clean"]`` and ``features["recon"]``, for the
        caller to compute ``gen_frechet`` over every shard
    batch_size : when given, networks see batches of this many studies (``execution.batch_studies``);
        else each model's own batching over ``clean_imgs``
    """
    from reconaudit.metrics import feature_distance, frechet_distance
    from reconaudit.tasks.features import penultimate_features

    ti = torch.as_tensor(te)
    cols: dict[str, np.ndarray | float] = {}
    body = cohort.roi_masks[ti] if cohort.roi_masks is not None else None
    lesion_all = cohort.lesion_masks if cohort.lesion_masks is not None else cohort.masks
    if seg_pred is not None:
        truth = cohort.masks[ti].numpy() != 0
        seg_model = clean_models["segmentation"]
        step = batch_size or max(1, len(clean_imgs))
        clean_prob = np.concatenate([np.asarray(seg_model.predict(clean_imgs[i : i + step]))
                                     for i in range(0, len(clean_imgs), step)]) if len(clean_imgs) else \
            np.asarray(seg_model.predict(clean_imgs))
        clean_pred = clean_prob >= float(seg_model.thresholds[0])
        pred = np.asarray(seg_pred) != 0
        cols["gen_seg_volume"] = pred.reshape(len(pred), -1).sum(1).astype(np.float64)
        cols["gen_clean_seg_volume"] = clean_pred.reshape(len(pred), -1).sum(1).astype(np.float64)
        cols["gen_fp_volume"] = (pred & ~truth).reshape(len(pred), -1).sum(1).astype(np.float64)
        cols["gen_fp_volume_clean"] = (pred & ~clean_pred).reshape(len(pred), -1).sum(1).astype(np.float64)
    if recon is None:
        return cols
    mean = recon["mean"]
    lesion = lesion_all[ti] if lesion_all is not None else None
    observed = observed_pixels(deg_test)
    chunk = pixel_chunk(tuple(mean.shape))
    pixel_cols: list[dict[str, np.ndarray]] = []
    for a in range(0, max(len(mean), 1), chunk):  # per-pixel maps of `chunk` studies at a time (study by study)
        sl = slice(a, a + chunk)
        pixel_cols.append(_pixel_columns(
            mean[sl], clean_imgs[sl], None if lesion is None else lesion[sl], None if body is None else body[sl],
            deg_test.image[sl], None if observed is None else observed[sl],
            None if "std" not in recon else (recon["std"][sl], int(recon["samples"].shape[1]))))
    if pixel_cols:
        cols.update({c: np.concatenate([p[c] for p in pixel_cols]) for c in pixel_cols[0]})
    feat_model = clean_models.get("classification") or next(iter(clean_models.values()), None)
    if feat_model is not None:
        try:
            kw = {} if batch_size is None else {"batch_size": int(batch_size)}
            f_clean = penultimate_features(feat_model, clean_imgs, **kw)
            f_rec = penultimate_features(feat_model, mean, **kw)
        except NotImplementedError:  # a plug-in model without features(): no perceptual distance
            log.info("the diagnostic model exposes no features; gen_feature_distance and gen_frechet left out")
            return cols
        cols["gen_feature_distance"] = feature_distance(f_rec, f_clean)
        if features is not None:
            features["clean"].append(np.asarray(f_clean))
            features["recon"].append(np.asarray(f_rec))
        cols["gen_frechet"] = frechet_distance(f_rec, f_clean) if len(f_rec) >= 2 else float("nan")
    return cols



def _pixel_columns(mean: torch.Tensor, clean: torch.Tensor, lesion: torch.Tensor | None, body: torch.Tensor | None,
                   degraded: torch.Tensor, observed: np.ndarray | None,
                   uncertainty: tuple[torch.Tensor, int] | None) -> dict[str, np.ndarray]:
    """The per-study columns of :func:`generative_columns` computed from per-pixel maps, for one chunk
    of studies: ``region_*`` (with ``lesion``), hallucination and erasure fractions, and with
    ``uncertainty`` = (std, K) the uncertainty-error correlation and the coverage of each level."""
    from reconaudit.metrics import hallucination_map, pixel_correlation, region_quality, uncertainty_coverage

    cols: dict[str, np.ndarray] = {}
    if lesion is not None:
        for name, v in region_quality(mean.clamp(0, 1), clean, lesion, body).items():
            metric, region = name.split(":")
            cols[f"region_{metric}:{region}"] = v
    _, hall, erased = hallucination_map(mean.numpy(), clean.numpy(), degraded=degraded.numpy(),
                                        observed=observed, scale_window=SCALE_WINDOW)
    m = np.ones(hall.shape, dtype=bool) if body is None else body[:, 0].numpy()
    n = np.maximum(m.reshape(len(m), -1).sum(1), 1)
    cols["gen_hallucination_fraction"] = (hall & m).reshape(len(m), -1).sum(1) / n
    cols["gen_erasure_fraction"] = (erased & m).reshape(len(m), -1).sum(1) / n
    if uncertainty is not None:
        std_t, k = uncertainty
        err = (mean - clean).numpy()
        std = std_t.numpy()
        bm = None if body is None else body.numpy()
        cols["gen_uncertainty_error_corr"] = pixel_correlation(std, np.abs(err), mask=bm)
        cov = uncertainty_coverage(err, std, samples=k, levels=COVERAGE_LEVELS, mask=bm)
        for j, p in enumerate(COVERAGE_LEVELS):
            cols[f"gen_coverage:{p:g}"] = cov[:, j]
    return cols
