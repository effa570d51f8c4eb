"""The step functions: each reads the artifacts it depends on and writes one artifact.

Every function has the signature ``fn(spec, ctx, out_dir)``: ``spec`` is the step's typed spec
(:mod:`reconaudit.engine.specs`: everything that went into its key), ``ctx`` the :class:`StepContext` (store, device), ``out_dir``
the private directory the store commits when the function returns.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from reconaudit.cohorts.base import Cohort
from reconaudit.engine.companions import companion_columns, step_aligned_model
from reconaudit.engine.plan import Step
from reconaudit.engine.specs import (
    CohortSpec,
    DegradeSpec,
    DirectModelSpec,
    DirectScoreSpec,
    FitReconSpec,
    PredictCleanSpec,
    ReconstructSpec,
    ScoreSpec,
    TaskModelSpec,
)
from reconaudit.engine.store import ArtifactStore
from reconaudit.physics.base import Degraded
from reconaudit.seeding import derive_seed, study_seeds

log = logging.getLogger(__name__)


@dataclass
class StepContext:
    """What a step needs besides its spec: where artifacts live and where to compute."""

    store: ArtifactStore
    device: str = "cpu"
    mixed_precision: bool = False
    #: torch threads of every step (``execution.threads``); None keeps the executor's setting
    threads: int | None = None


# ---------------------------------------------------------------------------------------- helpers
def _json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, default=_jsonable))


def _jsonable(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    return str(o)


@functools.lru_cache(maxsize=8)
def _load_cohort_cached(path: str) -> Cohort:
    return Cohort.load(path)


def load_cohort(ctx: StepContext, key: str) -> Cohort:
    """The cohort artifact ``key`` (cached per process)."""
    return _load_cohort_cached(str(ctx.store.path("cohort", key)))


def load_degraded(ctx: StepContext, key: str) -> Degraded:
    """The degraded studies of every split, aligned with the cohort's rows."""
    d = ctx.store.path("degrade", key)
    info = json.loads((d / "info.json").read_text())
    return Degraded.from_tensors(load_file(str(d / "degraded.safetensors")), info)


def _task_n_outputs(cohort: Cohort, task: str) -> int:
    if task == "regression":
        return len(cohort.regression)
    return len(cohort.labels) if task == "classification" else 1


def task_data_problem(cohort: Cohort, task: str) -> str | None:
    """Why ``cohort`` cannot serve diagnostic ``task`` (no labels, no masks), or ``None``."""
    if task == "classification" and not cohort.labels:
        return (f"cohort {cohort.name!r} has no classification labels; give the loader its labels (e.g. "
                f"fastMRI labels_csv) or set tasks: none for a reconstruction-quality audit")
    if task == "segmentation" and cohort.masks is None:
        return f"cohort {cohort.name!r} has no segmentation masks; remove the segmentation task"
    if task == "regression" and not cohort.regression:
        return (f"cohort {cohort.name!r} has no regression targets; give its params regression_columns "
                f"(e.g. brain-glioma: [tumor_area_cm2, infiltration_mm]) or remove the regression task")
    return None


def _task_targets(cohort: Cohort, task: str) -> np.ndarray | torch.Tensor:
    from reconaudit.cohorts.base import CohortError

    problem = task_data_problem(cohort, task)
    if problem:
        raise CohortError(problem)
    if task == "classification":
        return cohort.targets()
    if task == "regression":
        return cohort.regression_targets()
    return cohort.masks.float()


def _make_task(task: str, arch: str, params: dict, ctx: StepContext, in_channels: int, n_outputs: int,
               threshold_policy: str | None, target_sensitivity: float | None, labels: list[str] | None = None):
    from reconaudit.tasks import make_task_model

    p = dict(params)
    if task == "classification":
        p.setdefault("threshold_policy", threshold_policy or "sens_eq_spec")
        if target_sensitivity is not None:
            p.setdefault("threshold_target", target_sensitivity)
        if labels and arch != "plugin":
            p.setdefault("label_names", list(labels))
    return make_task_model(task, arch=arch, device=ctx.device, in_channels=in_channels, n_outputs=n_outputs, **p)


def load_task_model(ctx: StepContext, kind: str, key: str):
    """A frozen diagnostic model artifact (``task_model`` or ``direct_model``)."""
    d = ctx.store.path(kind, key)
    info = json.loads((d / "info.json").read_text())
    model = _make_task(info["task"], info["arch"], info["params"], ctx, info["in_channels"], info["n_outputs"],
                       info.get("threshold_policy"), info.get("target_sensitivity"))
    model.load(d / "model.safetensors")
    return model, info


def _predict_batched(model, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    outs = [np.asarray(model.predict(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    return np.concatenate(outs, 0) if outs else np.zeros((0,))


#: Penultimate features wider than this are stored through a fixed random projection (shortcut probe).
FEATURE_COLUMNS = 64


def _features_batched(model, images: torch.Tensor, batch_size: int = 64) -> np.ndarray | None:
    """Penultimate features ``(N, F)`` of a diagnostic model for the shortcut probe; None when it has none.

    More than :data:`FEATURE_COLUMNS` features are projected onto that many with a fixed Gaussian
    matrix (seed 0, scaled by 1/sqrt(k): distances kept in expectation, Johnson-Lindenstrauss).
    """
    if not hasattr(model, "features"):
        return None
    try:
        with torch.no_grad():
            f = torch.cat([model.features(images[i : i + batch_size]).detach().float().cpu()
                           for i in range(0, len(images), batch_size)]).flatten(1).numpy()
    except (NotImplementedError, RuntimeError, TypeError, AttributeError) as exc:
        log.info("no penultimate features for the shortcut probe (%s)", exc)
        return None
    if f.shape[1] > FEATURE_COLUMNS:
        proj = np.random.default_rng(0).standard_normal((f.shape[1], FEATURE_COLUMNS)) / np.sqrt(FEATURE_COLUMNS)
        f = f @ proj
    return f.astype(np.float32)


def _seg_scores(prob: np.ndarray, threshold: float, truth: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from reconaudit.metrics import dice, hd95

    pred = (prob >= threshold).astype(np.uint8)
    t = truth.numpy().astype(np.uint8)
    return pred, np.asarray(dice(pred, t), dtype=np.float64), np.asarray(hd95(pred, t), dtype=np.float64)


def _image_quality(x: torch.Tensor, ref: torch.Tensor, roi: torch.Tensor | None) -> dict[str, np.ndarray]:
    from reconaudit.metrics import nmse, psnr, ssim

    a = x.clamp(0, 1).numpy()
    r = ref.numpy()
    m = roi.numpy().astype(bool) if roi is not None else None
    kw = {} if m is None else {"mask": m}
    return {
        "psnr": np.asarray(psnr(a, r, **kw), dtype=np.float64),
        "ssim": np.asarray(ssim(a, r, **kw), dtype=np.float64),
        "nmse": np.asarray(nmse(a, r, **kw), dtype=np.float64),
    }


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


# ---------------------------------------------------------------------------------------- steps
def step_cohort(spec: CohortSpec, ctx: StepContext, out: Path) -> None:
    """Build or load a cohort (generator or loader) and store it."""
    from reconaudit.cohorts import make_cohort

    cohort = make_cohort(spec.name, **cohort_params(spec.name, spec.params, spec.data_seed))
    cohort.save(out)


def cohort_params(name: str, params: dict, data_seed: int) -> dict:
    """A cohort's builder parameters: the config's, with ``seed`` = ``data_seed`` unless given."""
    from reconaudit.cohorts import COHORTS

    out = dict(params)
    model = COHORTS[name].Params
    if "seed" in model.model_fields and "seed" not in out:
        out["seed"] = data_seed
    return out


def step_task_model(spec: TaskModelSpec, ctx: StepContext, out: Path) -> None:
    """Train a diagnostic model on the clean train split; thresholds on clean validation data."""
    cohort = load_cohort(ctx, spec.cohort)
    task = spec.task
    targets = _task_targets(cohort, task)
    n_out = _task_n_outputs(cohort, task)
    _seed_all(spec.seed)
    model = _make_task(task, spec.arch, spec.params, ctx, 1, n_out, spec.threshold_policy, spec.target_sensitivity,
                       cohort.labels)
    tr, va = cohort.indices("train"), cohort.indices("val")
    history = model.fit(
        cohort.images[tr], targets[tr], cohort.images[va], targets[va], seed=spec.seed
    )
    model.save(out / "model.safetensors")
    _json(
        out / "info.json",
        {**spec.as_dict(), "in_channels": 1, "n_outputs": n_out, "history": history, "thresholds": model.thresholds},
    )


def step_predict_clean(spec: PredictCleanSpec, ctx: StepContext, out: Path) -> None:
    """Apply the frozen diagnostic models to the clean test images (shared by every cell)."""
    cohort = load_cohort(ctx, spec.cohort)
    te = cohort.indices("test")
    table = pd.DataFrame({"study_id": cohort.table["study_id"].to_numpy()[te]})
    images = cohort.images[te]
    for task, key in spec.task_models.items():
        model, _ = load_task_model(ctx, "task_model", key)
        prob = _predict_batched(model, images)
        if task == "regression":
            for j, name in enumerate(cohort.regression):
                table[f"clean_pred:{name}"] = prob[:, j].astype(np.float64)
        elif task == "classification":
            for j, label in enumerate(cohort.labels):
                table[f"clean_score:{label}"] = prob[:, j].astype(np.float64)
        else:
            _, d, h = _seg_scores(prob, float(model.thresholds[0]), cohort.masks[te])
            table["clean_dice"] = d
            table["clean_hd95"] = h
    table.to_parquet(out / "clean.parquet", index=False)


def step_degrade(spec: DegradeSpec, ctx: StepContext, out: Path) -> None:
    """Degrade every study of the cohort with a per-study seed (batched)."""
    from reconaudit.physics import make_degradation

    cohort = load_cohort(ctx, spec.cohort)
    op = make_degradation(spec.degradation, spec.level, **spec.params)
    ids = cohort.table["study_id"].astype(str).tolist()
    seeds = study_seeds(f"degrade/{spec.degradation}/{spec.level}", spec.seed, ids)
    parts = []
    bs = 256
    from reconaudit import progress

    with progress.task(f"degrade {cohort.name} {spec.degradation}={spec.level:g}", len(ids)) as t:
        for i in range(0, len(ids), bs):
            imgs = cohort.images[i : i + bs].to(ctx.device)  # the physics runs where the step runs
            kw = {}
            if cohort.kspace is not None and getattr(op, "accepts_kspace", False):
                kw["kspace"] = cohort.kspace[i : i + bs].to(ctx.device)
            parts.append(op(imgs, seeds[i : i + bs], **kw).to("cpu"))
            t.advance(len(imgs))
    deg = Degraded.concat(parts)
    info = {k: v for k, v in parts[0].info.items() if isinstance(v, int | float | str | bool)}
    for k in list(info):
        vals = [p.info.get(k) for p in parts]
        if all(isinstance(v, int | float) for v in vals):
            info[k] = float(np.average(vals, weights=[len(p) for p in parts]))
    save_file(deg.tensors(), str(out / "degraded.safetensors"))
    _json(out / "info.json", {**info, "level_name": getattr(op, "level_name", "level")})


def _pairset(cohort: Cohort, deg: Degraded, split: str):
    from reconaudit.recon.base import PairSet

    idx = cohort.indices(split)
    sub = cohort.table.iloc[idx].reset_index(drop=True)
    return PairSet(
        degraded=deg.subset(idx),
        clean=cohort.images[torch.as_tensor(idx)],
        study_ids=sub["study_id"].astype(str).tolist(),
        groups=sub[cohort.group_attributes].astype(str),
        targets=cohort.targets()[idx] if cohort.labels else None,
        masks=cohort.masks[torch.as_tensor(idx)] if cohort.masks is not None else None,
    )


def _make_recon(name: str, params: dict, ctx: StepContext):
    from reconaudit.recon import make_reconstructor

    return make_reconstructor(name, device=ctx.device, **params)


def step_fit_recon(spec: FitReconSpec, ctx: StepContext, out: Path, *, key: str = "") -> None:
    """Fit a reconstructor on (degraded, clean) train pairs, optionally with a mitigation."""
    cohort = load_cohort(ctx, spec.cohort)
    deg = load_degraded(ctx, spec.degrade)
    train, val = _pairset(cohort, deg, "train"), _pairset(cohort, deg, "val")
    _seed_all(spec.seed)
    rec = _make_recon(spec.reconstructor, spec.params, ctx)
    ckpt = ctx.store.checkpoint_dir("fit_recon", key) if rec.trainable else None
    mit = spec.mitigation
    if mit is None:
        history = rec.fit(train, val, seed=spec.seed, checkpoint_dir=ckpt)
    else:
        from reconaudit.mitigation import apply_mitigation

        if mit.base:
            rec.load(ctx.store.path("fit_recon", mit.base) / "weights.safetensors")
        task_models = {t: load_task_model(ctx, "task_model", k)[0] for t, k in mit.task_models.items()}
        history = apply_mitigation(
            rec, mit.name, mit.strength, mit.params, train, val,
            task_models=task_models, cohort=cohort, seed=spec.seed, checkpoint_dir=ckpt,
        )
    rec.save(out / "weights.safetensors")
    _json(out / "info.json", {**spec.as_dict(), "history": history})


def step_reconstruct(spec: ReconstructSpec, ctx: StepContext, out: Path) -> None:
    """Reconstruct the test studies (K samples each for stochastic reconstructors)."""
    cohort = load_cohort(ctx, spec.cohort)
    deg = load_degraded(ctx, spec.degrade)
    te = cohort.indices("test")
    test = deg.subset(te)
    ids = cohort.table["study_id"].astype(str).to_numpy()[te].tolist()
    rec = _make_recon(spec.reconstructor, spec.params, ctx)
    rec.load(ctx.store.path("fit_recon", spec.fit) / "weights.safetensors")
    k = int(spec.samples)
    seeds = study_seeds(f"reconstruct/{spec.reconstructor}", spec.seed, ids)
    bs = 32
    outs = []
    from reconaudit import progress

    with torch.no_grad(), progress.task(f"reconstruct {spec.reconstructor}", len(ids)) as t:
        for i in range(0, len(ids), bs):
            part = test.subset(list(range(i, min(i + bs, len(ids)))))
            r = rec.reconstruct(part.to(ctx.device), seeds=seeds[i : i + bs], samples=k, study_ids=ids[i : i + bs])
            outs.append(r.detach().float().cpu())
            t.advance(len(part))
    r = torch.cat(outs, 0)
    tensors: dict[str, torch.Tensor] = {}
    if k > 1:
        tensors["samples"] = r.clamp(0, 1).contiguous()
        tensors["mean"] = r.clamp(0, 1).mean(1).contiguous()
        tensors["std"] = r.clamp(0, 1).std(1, unbiased=True).contiguous()
    else:
        tensors["mean"] = r.clamp(0, 1).contiguous()
    save_file(tensors, str(out / "recon.safetensors"))


def _saliency(model, images: torch.Tensor, label_idx: np.ndarray) -> np.ndarray:
    """Gradient × input saliency of each study's chosen label, normalised to [0, 1] per study."""
    x = images.clone().requires_grad_(True)
    logits = model.logits(x)
    sel = logits[torch.arange(len(x)), torch.as_tensor(label_idx)]
    (g,) = torch.autograd.grad(sel.sum(), x)
    s = (g * x).abs().detach()[:, 0]
    s = torch.nn.functional.avg_pool2d(s[:, None], 3, 1, 1)[:, 0]
    mx = s.flatten(1).max(1).values.clamp_min(1e-12)
    return (s / mx[:, None, None]).numpy().astype(np.float32)


def _base_rows(cohort: Cohort, spec: ScoreSpec | DirectScoreSpec) -> tuple[pd.DataFrame, np.ndarray]:
    te = cohort.indices("test")
    sub = cohort.table.iloc[te].reset_index(drop=True)
    df = pd.DataFrame(
        {
            "cell_id": spec.cell_id,
            "cohort": spec.cohort_name,
            "task": spec.task,
            "degradation": spec.degradation,
            "level": float(spec.level),
            "reconstructor": spec.reconstructor,
            "arm": spec.arm,
            "mitigation": spec.mitigation,
            "mitigation_strength": float(spec.mitigation_strength),
            "seed": int(spec.seed),
            "study_id": sub["study_id"].astype(str),
            "patient_id": sub["patient_id"].astype(str),
            "study_index": np.arange(len(sub), dtype=np.int64),
        }
    )
    for g in cohort.group_attributes:
        df[f"group:{g}"] = sub[g].astype(str).to_numpy()
    if "classification" in str(spec.task).split("+"):
        for j, label in enumerate(cohort.labels):
            df[f"target:{label}"] = cohort.targets()[te, j].astype(np.float64)
    return df, te


def _score_common(
    spec: ScoreSpec | DirectScoreSpec, ctx: StepContext, out: Path, cohort: Cohort, te: np.ndarray, df: pd.DataFrame,
    inputs: torch.Tensor, models: dict, recon: dict | None, deg_test: Degraded, clean_models: dict,
) -> pd.DataFrame:
    """Apply diagnostic ``models`` to ``inputs``; add scores, Dice, image quality; write examples.

    ``clean_models`` are the frozen models trained on clean images (the same as ``models`` for the
    reconstruct arm); the example figure shows their saliency and segmentation on the clean image.
    """
    from reconaudit.tasks import choose_threshold

    ev = spec.evaluation
    clean = None  # a reconstruction-quality audit (tasks: none) has no clean predictions
    if spec.predict_clean:
        clean = pd.read_parquet(ctx.store.path("predict_clean", spec.predict_clean) / "clean.parquet")
        if list(clean["study_id"]) != list(df["study_id"]):
            raise RuntimeError("clean predictions and test studies are not aligned (corrupt store?)")
    roi = cohort.roi_masks[torch.as_tensor(te)] if (ev.roi and cohort.roi_masks is not None) else None
    clean_imgs = cohort.images[torch.as_tensor(te)]
    k = int(recon["samples"].shape[1]) if recon is not None and "samples" in recon else 1
    examples: dict[str, np.ndarray] = {}
    n_ex = min(int(ev.examples), len(te))
    ex_idx = np.arange(n_ex)
    seg_pred_ex = seg_pred = None
    for task, model in models.items():
        prob = _predict_batched(model, inputs)
        if task == "regression":  # continuous phenotypes: truth, clean-image and processed predictions
            truth = cohort.regression_targets()[te]
            for j, name in enumerate(cohort.regression):
                df[f"reg_target:{name}"] = truth[:, j].astype(np.float64)
                df[f"clean_pred:{name}"] = clean[f"clean_pred:{name}"].to_numpy()
                df[f"pred:{name}"] = prob[:, j].astype(np.float64)
            continue
        if task == "classification":
            for j, label in enumerate(cohort.labels):
                df[f"clean_score:{label}"] = clean[f"clean_score:{label}"].to_numpy()
                df[f"score:{label}"] = prob[:, j].astype(np.float64)
                thr = float(model.thresholds[j])
                # the clean baseline is judged at the clean model's own operating point, in every arm
                clean_thr = float(clean_models["classification"].thresholds[j])
                if ev.rechoose_on_test:
                    y_test = df[f"target:{label}"].to_numpy()
                    thr = float(choose_threshold(y_test, prob[:, j], ev.threshold_policy,
                                                 ev.target_sensitivity))
                    clean_thr = float(choose_threshold(y_test, df[f"clean_score:{label}"].to_numpy(),
                                                       ev.threshold_policy, ev.target_sensitivity))
                df[f"threshold:{label}"] = thr
                df[f"clean_threshold:{label}"] = clean_thr
            feats = _features_batched(model, inputs)
            clean_feats = _features_batched(clean_models["classification"], clean_imgs)
            if feats is not None and clean_feats is not None:
                df = pd.concat([df, pd.DataFrame(feats, columns=[f"feature:{i}" for i in range(feats.shape[1])]),
                                pd.DataFrame(clean_feats, columns=[f"clean_feature:{i}" for i in
                                                                   range(clean_feats.shape[1])])], axis=1)
            if k > 1:
                for s in range(k):
                    ps = _predict_batched(model, recon["samples"][:, s])
                    for j, label in enumerate(cohort.labels):
                        df[f"sample_score:{label}:{s}"] = ps[:, j].astype(np.float64)
            if n_ex:
                pick = np.nan_to_num(df[[f"target:{lb}" for lb in cohort.labels]].to_numpy()[ex_idx], nan=0.0)
                label_idx = np.where(pick.any(1), pick.argmax(1), prob[ex_idx].argmax(1))
                clean_model = clean_models["classification"]
                examples["saliency_clean"] = _saliency(clean_model, clean_imgs[ex_idx], label_idx)
                if inputs.shape[1] == 1:  # saliency of k-space channels is not an image
                    examples["saliency_recon"] = _saliency(model, inputs[ex_idx], label_idx)
                examples["saliency_label"] = np.array([cohort.labels[i] for i in label_idx])
        else:
            pred, d, h = _seg_scores(prob, float(model.thresholds[0]), cohort.masks[torch.as_tensor(te)])
            df["clean_dice"] = clean["clean_dice"].to_numpy()
            df["clean_hd95"] = clean["clean_hd95"].to_numpy()
            df["dice"] = d
            df["hd95"] = h
            seg_pred, seg_pred_ex = pred, pred[ex_idx, 0]
    iq_in = _image_quality(deg_test.image, clean_imgs, roi)
    for m, v in iq_in.items():
        df[f"input_{m}"] = v
    if recon is not None:
        for m, v in _image_quality(recon["mean"], clean_imgs, roi).items():
            df[m] = v
        df["uncertainty"] = recon["std"].flatten(1).mean(1).numpy() if "std" in recon else np.nan
    else:
        for m in ("psnr", "ssim", "nmse", "uncertainty"):
            df[m] = np.nan
    df["samples"] = k
    from reconaudit.engine.generative import generative_columns  # region_* and gen_* columns

    for c, v in generative_columns(cohort, te, clean_imgs, recon, deg_test, clean_models, seg_pred).items():
        df[c] = v
    for c, v in companion_columns(cohort, te, clean_imgs, clean_models, seg_pred).items():  # isolines, series
        df[c] = v
    if n_ex:
        examples["study_index"] = df["study_index"].to_numpy()[ex_idx]
        examples["clean"] = clean_imgs[ex_idx, 0].numpy()
        examples["degraded"] = deg_test.image[ex_idx, 0].clamp(0, 1).numpy()
        if recon is not None:
            examples["recon"] = recon["mean"][ex_idx, 0].numpy()
            if "std" in recon:
                examples["uncertainty"] = recon["std"][ex_idx, 0].numpy()
        if cohort.masks is not None and seg_pred_ex is not None:
            examples["seg_true"] = cohort.masks[torch.as_tensor(te)][ex_idx, 0].numpy()
            examples["seg_recon"] = seg_pred_ex
            clean_model = clean_models.get("segmentation")
            if clean_model is not None:
                cp = _predict_batched(clean_model, clean_imgs[ex_idx])
                examples["seg_clean"] = (cp >= float(clean_model.thresholds[0])).astype(np.uint8)[:, 0]
        np.savez_compressed(out / "examples.npz", **examples)
    return df


def step_score(spec: ScoreSpec, ctx: StepContext, out: Path) -> None:
    """Records of one reconstruct-then-diagnose cell: one row per test study."""
    cohort = load_cohort(ctx, spec.cohort)
    deg = load_degraded(ctx, spec.degrade)
    df, te = _base_rows(cohort, spec)
    recon = load_file(str(ctx.store.path("reconstruct", spec.reconstruct) / "recon.safetensors"))
    models = {t: load_task_model(ctx, "task_model", k)[0] for t, k in spec.task_models.items()}
    df = _score_common(spec, ctx, out, cohort, te, df, recon["mean"], models, recon, deg.subset(te), models)
    df.to_parquet(out / "records.parquet", index=False)


def step_direct_model(spec: DirectModelSpec, ctx: StepContext, out: Path) -> None:
    """The no-reconstruction arm: a diagnostic model trained on the degraded inputs themselves."""
    from reconaudit.tasks.direct import direct_inputs

    cohort = load_cohort(ctx, spec.cohort)
    deg = load_degraded(ctx, spec.degrade)
    task = spec.task
    x = direct_inputs(deg.image, deg.kspace, spec.input)
    n_out = _task_n_outputs(cohort, task)
    _seed_all(spec.seed)
    model = _make_task(task, spec.arch, spec.params, ctx, int(x.shape[1]), n_out, spec.threshold_policy,
                       spec.target_sensitivity, cohort.labels)
    tr, va = cohort.indices("train"), cohort.indices("val")
    targets = _task_targets(cohort, task)
    history = model.fit(x[tr], targets[tr], x[va], targets[va], seed=spec.seed)
    model.save(out / "model.safetensors")
    _json(
        out / "info.json",
        {**spec.as_dict(), "in_channels": int(x.shape[1]), "n_outputs": n_out, "history": history,
         "thresholds": model.thresholds},
    )


def step_direct_score(spec: DirectScoreSpec, ctx: StepContext, out: Path) -> None:
    """Records of the direct arm: the direct model applied to the degraded test inputs."""
    from reconaudit.tasks.direct import direct_inputs

    cohort = load_cohort(ctx, spec.cohort)
    deg = load_degraded(ctx, spec.degrade)
    df, te = _base_rows(cohort, spec)
    test = deg.subset(te)
    x = direct_inputs(test.image, test.kspace, spec.input)
    models = {t: load_task_model(ctx, spec.model_kind, k)[0] for t, k in spec.direct_models.items()}
    clean_models = {t: load_task_model(ctx, "task_model", k)[0] for t, k in spec.task_models.items()}
    df = _score_common(spec, ctx, out, cohort, te, df, x, models, None, test, clean_models)
    df.to_parquet(out / "records.parquet", index=False)


STEP_FUNCS = {
    "cohort": step_cohort,
    "task_model": step_task_model,
    "predict_clean": step_predict_clean,
    "degrade": step_degrade,
    "fit_recon": step_fit_recon,
    "reconstruct": step_reconstruct,
    "score": step_score,
    "direct_model": step_direct_model,
    "direct_score": step_direct_score,
    "aligned_model": step_aligned_model,
    "aligned_score": step_direct_score,  # the direct arm's records, from the aligned models
}


def run_step(step: Step, ctx: StepContext) -> bool:
    """Run ``step`` unless its artifact exists and verifies; return True when it computed something.

    The step runs under the store's per-step lock (a second worker waits, then finds the artifact);
    a failed attempt sets the step's checkpoints aside, so a retry starts afresh.
    """
    if ctx.store.verified(step.kind, step.key):
        return False
    with ctx.store.step_lock(step.kind, step.key):  # a worker sharing the store may be computing it
        if ctx.store.verified(step.kind, step.key):
            return False
        try:
            _run_step_body(step, ctx)
        except Exception as e:
            ctx.store.discard_checkpoint(step.kind, step.key, f"{type(e).__name__}: {e}")
            raise
    ctx.store.clear_checkpoint(step.kind, step.key)
    return True


def _run_step_body(step: Step, ctx: StepContext) -> None:
    fn = STEP_FUNCS[step.kind]
    torch.use_deterministic_algorithms(True, warn_only=True)
    _seed_all(derive_seed(step.kind, step.key) % (2**31))
    from reconaudit.devices import gpu_monitor

    amp = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        if ctx.mixed_precision and str(ctx.device).startswith("cuda")
        else contextlib.nullcontext()
    )
    threads = torch.get_num_threads()
    if ctx.threads:  # fixed per step, so every executor and machine computes with the same reductions
        torch.set_num_threads(ctx.threads)
    try:
        with gpu_monitor(ctx.device, step.id), amp, ctx.store.writer(step.kind, step.key) as out:
            if step.kind == "fit_recon":
                step_fit_recon(step.spec, ctx, out, key=step.key)
            else:
                fn(step.spec, ctx, out)
    finally:
        torch.set_num_threads(threads)

