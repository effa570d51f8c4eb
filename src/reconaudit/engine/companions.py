"""Steps and record columns of the companion analyses (issue 21): the aligned direct arm (k-MTR),
infiltration-aware isoline scores and longitudinal series (TumorFlow-style growth).

- :func:`step_aligned_model`: the ``aligned_model`` step, a direct-arm diagnostic model trained on
  the degraded inputs with an alignment loss to the frozen clean model's latent
  (:func:`reconaudit.tasks.alignment.fit_aligned`); its artifact has the layout of a
  ``direct_model`` (``model.safetensors``, ``info.json``), so the direct arm's scoring reads it.
- :func:`companion_columns`: per-study record columns written by every scoring step when the
  cohort carries what they need (nothing otherwise, so existing records are unchanged):
  ``isoline_dice:<c>`` / ``isoline_volume_error:<c>`` (and ``clean_`` ones for the clean model on
  clean images) when the cohort keeps its concentration field, and ``series_id``, ``time_index``,
  ``growth_days``, ``pixel_area_mm2``, ``true_seg_volume`` when it holds longitudinal series.

The step functions import the helpers of :mod:`reconaudit.engine.steps` when they run (that module
registers them), so there is no import cycle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from reconaudit.schema import ISOLINE_DICE, ISOLINE_VOLUME_ERROR, isoline_name

__all__ = ["companion_columns", "isoline_scores", "step_aligned_model", "teacher_latents"]


def teacher_latents(model, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Penultimate features ``(N, F)`` of a frozen diagnostic model on ``images``, in batches, no gradient
    (the raw features, not the projection the records keep)."""
    with torch.no_grad():
        parts = [model.features(images[i : i + batch_size]).detach().float().cpu()
                 for i in range(0, len(images), batch_size)]
    return torch.cat(parts).flatten(1) if parts else torch.zeros((0, 0))


def step_aligned_model(spec, ctx, out: Path) -> None:
    """The aligned direct arm: a model of the clean model's kind and arch on the degraded inputs, trained
    with its task loss plus an alignment loss to the clean model's latent of the clean image."""
    from reconaudit.arrays import as_tensor, is_lazy
    from reconaudit.engine.steps import (
        DirectInputs,
        _json,
        _make_task,
        _seed_all,
        _task_n_outputs,
        _task_targets,
        load_cohort,
        load_degraded,
        load_task_model,
    )
    from reconaudit.tasks.alignment import fit_aligned, latent_distance
    from reconaudit.tasks.direct import direct_inputs

    cohort = load_cohort(ctx, spec.cohort)
    deg = load_degraded(ctx, spec.degrade)
    # the aligned fit holds its inputs in memory (it is not streamed like the other steps)
    x = as_tensor(DirectInputs(deg, spec.input)) if is_lazy(deg.image) else direct_inputs(deg.image, deg.kspace,
                                                                                           spec.input)
    teacher, _ = load_task_model(ctx, "task_model", spec.teacher)
    tr, va = cohort.indices("train"), cohort.indices("val")
    t_tr = teacher_latents(teacher, cohort.images[tr])
    t_va = teacher_latents(teacher, cohort.images[va])
    n_out = _task_n_outputs(cohort, spec.task)
    _seed_all(spec.seed)
    model = _make_task(spec.task, spec.arch, spec.params, ctx, int(x.shape[1]), n_out, spec.threshold_policy,
                       spec.target_sensitivity, cohort.labels)
    probe = teacher_latents(model, x[tr[:1]])
    if probe.shape[1] != t_tr.shape[1]:
        raise ValueError(f"direct.alignment: the {spec.task} model's latent has {probe.shape[1]} features but the "
                         f"clean model's has {t_tr.shape[1]}; alignment needs the same architecture")
    targets = as_tensor(_task_targets(cohort, spec.task))
    if isinstance(targets, torch.Tensor) and not targets.is_floating_point():
        targets = targets.float()  # stored masks are uint8
    a = spec.alignment
    history = fit_aligned(model, x[tr], targets[tr], x[va], targets[va], t_tr, t_va, seed=spec.seed,
                          loss=a["loss"], weight=float(a["weight"]), temperature=float(a["temperature"]))
    history["val_latent_distance"] = float(latent_distance(teacher_latents(model, x[va]), t_va).mean())
    model.save(out / "model.safetensors")
    _json(out / "info.json", {**spec.as_dict(), "in_channels": int(x.shape[1]), "n_outputs": n_out,
                              "history": history, "thresholds": model.thresholds})


def isoline_scores(pred: np.ndarray, concentration: np.ndarray, isolines, roi: np.ndarray | None = None) -> dict:
    r"""Dice and relative volume error of a segmentation against concentration isolines.

    For each isoline :math:`c^*`, the true region is :math:`T = \{c > c^*\}` (within ``roi`` when
    given, as the cohort's own mask is); per study

    .. math:: D = \frac{2|P \cap T|}{|P| + |T|}, \qquad e_V = \frac{|P| - |T|}{|T|}

    (:func:`reconaudit.metrics.dice`: 1 when both are empty; :math:`e_V` NaN when :math:`T` is empty).

    Returns ``{isoline: (dice (N,), volume_error (N,))}``.
    """
    from reconaudit.metrics import dice

    p = np.asarray(pred) != 0
    c = np.asarray(concentration, dtype=np.float32)
    out = {}
    for iso in isolines:
        truth = c > float(iso)
        if roi is not None:
            truth &= np.asarray(roi, dtype=bool)
        tv = truth.reshape(len(truth), -1).sum(1).astype(np.float64)
        pv = p.reshape(len(p), -1).sum(1).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            err = np.where(tv > 0, (pv - tv) / np.where(tv > 0, tv, 1.0), np.nan)
        out[float(iso)] = (np.asarray(dice(p, truth), dtype=np.float64), err)
    return out


def companion_columns(cohort, te: np.ndarray, clean_imgs: torch.Tensor, clean_models: dict,
                      seg_pred: np.ndarray | None) -> dict[str, np.ndarray | float]:
    """Record columns of the isoline scores and the longitudinal series (see the module docstring);
    empty when the cohort has neither."""
    cols: dict[str, np.ndarray | float] = {}
    ti = torch.as_tensor(te)
    isolines = list(cohort.meta.get("isolines") or [])
    if cohort.concentration is not None and isolines and seg_pred is not None:
        conc = cohort.concentration[ti].numpy()
        roi = cohort.roi_masks[ti].numpy() if cohort.roi_masks is not None else None
        clean_model = clean_models.get("segmentation")
        arms = [("", seg_pred)]
        if clean_model is not None:
            from reconaudit.engine.steps import _predict_batched

            prob = _predict_batched(clean_model, clean_imgs)
            arms.append(("clean_", (prob >= float(clean_model.thresholds[0])).astype(np.uint8)))
        for prefix, pred in arms:
            for iso, (d, e) in isoline_scores(pred, conc, isolines, roi).items():
                cols[f"{prefix}{ISOLINE_DICE}{isoline_name(iso)}"] = d
                cols[f"{prefix}{ISOLINE_VOLUME_ERROR}{isoline_name(iso)}"] = e
    tab = cohort.table
    if "time_index" in tab.columns and "series_id" in tab.columns:
        sub = tab.iloc[te]
        cols["series_id"] = sub["series_id"].astype(str).to_numpy()
        cols["time_index"] = sub["time_index"].to_numpy(dtype=np.int64)
        cols["growth_days"] = sub["growth_days"].to_numpy(dtype=np.float64)
        if cohort.masks is not None:
            cols["true_seg_volume"] = cohort.masks[ti].flatten(1).sum(1).numpy().astype(np.float64)
        fov, size = cohort.meta.get("fov_mm"), cohort.meta.get("size")
        cols["pixel_area_mm2"] = float((fov / size) ** 2) if fov and size else 1.0
    return cols
