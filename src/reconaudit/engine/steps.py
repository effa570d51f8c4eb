"""The step functions: each reads the artifacts it depends on and writes one artifact.

Every function has the signature ``fn(spec, ctx, out_dir)``: ``spec`` is the step's typed spec
(:mod:`reconaudit.engine.specs`: everything that went into its key), ``ctx`` the :class:`StepContext` (store, device), ``out_dir``
the private directory the store commits when the function returns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from reconaudit.arrays import (
    DEFAULT_SHARD_STUDIES,
    ArrayWriter,
    LazyStudies,
    as_tensor,
    is_lazy,
    open_arrays,
    shard_ranges,
    view,
)
from reconaudit.cohorts.base import Cohort
from reconaudit.engine.companions import companion_columns, step_aligned_model
from reconaudit.engine.generative import pixel_chunk
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


@dataclass(kw_only=True)
class StepSettings:
    """How steps compute, apart from where artifacts live (``execution`` and ``device`` of the config).

    The fields are shared by :class:`StepContext` and the executors' picklable
    :class:`~reconaudit.engine.executors.ContextSpec`, so a new setting is declared once.
    """

    device: str = "cpu"
    mixed_precision: bool = False
    #: torch threads of every step (``execution.threads``); None keeps the executor's setting
    threads: int | None = None
    #: studies per shard of the study store and of every streaming step (``execution.shard_studies``)
    shard_studies: int = DEFAULT_SHARD_STUDIES
    #: parallel shard tasks a reconstruct step is split into on Ray (``execution.shard_tasks``)
    shard_tasks: int = 1
    #: studies per compute batch of every streaming step (``execution.batch_studies``); None keeps
    #: each step's own (degrade 256, reconstruct 32, predict and features 64)
    batch_studies: int | None = None

    def settings(self) -> dict:
        """The settings as a dict of keyword arguments (every field of :class:`StepSettings`)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(StepSettings)}

    def batch(self, default: int) -> int:
        """The compute batch of a streaming step whose own batch is ``default``."""
        return int(self.batch_studies or default)


@dataclass
class StepContext(StepSettings):
    """What a step needs besides its spec: where artifacts live (``store``) and how to compute
    (the keyword-only :class:`StepSettings`)."""

    store: ArtifactStore


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


#: The study-array directories (zarr) of the degrade and reconstruct artifacts.
DEGRADED, RECON = "degraded.zarr", "recon.zarr"


def load_degraded(ctx: StepContext, key: str) -> Degraded:
    """The degraded studies of every split, aligned with the cohort's rows.

    ``image``, ``kspace`` and ``mask`` are lazy arrays of the study store
    (:class:`~reconaudit.arrays.StudyArray`): ``deg.subset(idx)`` reads those studies; use
    :func:`degraded_view` for a split without reading it.  An artifact written before the study
    store (``degraded.safetensors``) is read into memory.
    """
    d = ctx.store.path("degrade", key)
    info = json.loads((d / "info.json").read_text())
    if (d / "degraded.safetensors").exists():
        return Degraded.from_tensors(load_file(str(d / "degraded.safetensors")), info)
    a = open_arrays(d / DEGRADED)
    return Degraded(a["image"], a.get("kspace"), a.get("mask"), info)


def degraded_view(deg: Degraded, idx) -> Degraded:
    """The studies at ``idx`` of ``deg``: lazy views of lazy arrays (nothing read), else a subset."""
    if not is_lazy(deg.image):
        return deg.subset(idx)
    mask = deg.mask
    if mask is not None and not (mask.shape[0] == 1 and deg.image.shape[0] != 1):
        mask = view(mask, idx)
    return Degraded(view(deg.image, idx), view(deg.kspace, idx), mask, dict(deg.info))


def load_recon(ctx: StepContext, key: str) -> dict:
    """The reconstruct artifact ``key``: ``mean`` (and ``samples``, ``std`` for K > 1), lazy arrays."""
    d = ctx.store.path("reconstruct", key)
    if (d / "recon.safetensors").exists():  # written before the study store
        return load_file(str(d / "recon.safetensors"))
    return open_arrays(d / RECON)


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
    return cohort.masks  # uint8; a segmentation model reads them as float32 (lazily for a stored cohort)


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
    """PSNR, SSIM and NMSE of each study of ``x`` against ``ref`` (within ``roi``),
    :func:`~reconaudit.engine.generative.pixel_chunk` studies at a time (each is computed study by
    study, so the chunk changes no number)."""
    n, chunk = len(x), pixel_chunk(tuple(x.shape))
    if n <= chunk:
        return _image_quality_block(x, ref, roi)
    parts = [_image_quality_block(x[i : i + chunk], ref[i : i + chunk], None if roi is None else roi[i : i + chunk])
             for i in range(0, n, chunk)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _image_quality_block(x: torch.Tensor, ref: torch.Tensor, roi: torch.Tensor | None) -> dict[str, np.ndarray]:
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
    from reconaudit.cohorts import write_cohort

    write_cohort(spec.name, out, shard_studies=ctx.shard_studies,
                 **cohort_params(spec.name, spec.params, spec.data_seed))


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
    _train_task_model(spec, ctx, out, cohort, cohort.images, 1)


def _train_task_model(spec: TaskModelSpec | DirectModelSpec, ctx: StepContext, out: Path, cohort: Cohort,
                      x, in_channels: int) -> None:
    """Train ``spec.task`` / ``spec.arch`` on the train split of ``x`` (studies of ``cohort``, read per
    batch; a user's model that does not read lazily gets tensors), its thresholds on the validation
    split, and save ``model.safetensors`` and ``info.json`` (the spec, channels, outputs, history)."""
    task = spec.task
    targets = _task_targets(cohort, task)
    n_out = _task_n_outputs(cohort, task)
    _seed_all(spec.seed)
    model = _make_task(task, spec.arch, spec.params, ctx, in_channels, n_out, spec.threshold_policy,
                       spec.target_sensitivity, cohort.labels)
    tr, va = cohort.indices("train"), cohort.indices("val")
    if not getattr(model, "reads_lazily", False):
        x, targets = as_tensor(x), as_tensor(targets)
    history = model.fit(view(x, tr), view(targets, tr), view(x, va), view(targets, va), seed=spec.seed)
    model.save(out / "model.safetensors")
    _json(out / "info.json", {**spec.as_dict(), "in_channels": in_channels, "n_outputs": n_out, "history": history,
                              "thresholds": model.thresholds})


def step_predict_clean(spec: PredictCleanSpec, ctx: StepContext, out: Path) -> None:
    """Apply the frozen diagnostic models to the clean test images (shared by every cell)."""
    cohort = load_cohort(ctx, spec.cohort)
    te = cohort.indices("test")
    models = {task: load_task_model(ctx, "task_model", key)[0] for task, key in spec.task_models.items()}
    parts = []
    for a, b in shard_ranges(len(te), ctx.shard_studies):  # one shard of test images in memory at a time
        rows = te[a:b]
        table = pd.DataFrame({"study_id": cohort.table["study_id"].to_numpy()[rows]})
        images = cohort.images[rows]
        for task, model in models.items():
            prob = _predict_batched(model, images, ctx.batch(64))
            if task == "regression":
                for j, name in enumerate(cohort.regression):
                    table[f"clean_pred:{name}"] = prob[:, j].astype(np.float64)
            elif task == "classification":
                for j, label in enumerate(cohort.labels):
                    table[f"clean_score:{label}"] = prob[:, j].astype(np.float64)
            else:
                _, d, h = _seg_scores(prob, float(model.thresholds[0]), cohort.masks[rows])
                table["clean_dice"] = d
                table["clean_hd95"] = h
        parts.append(table)
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"study_id": pd.Series([], dtype=object)})
    table.to_parquet(out / "clean.parquet", index=False, row_group_size=ctx.shard_studies)


def step_degrade(spec: DegradeSpec, ctx: StepContext, out: Path) -> None:
    """Degrade every study of the cohort with a per-study seed, shard by shard (batched).

    The arrays of ``degraded.zarr`` are created from the first study's result, then each shard of
    ``ctx.shard_studies`` studies is read, degraded in batches and written (:func:`degrade_shard`).
    With ``ctx.shard_tasks > 1`` inside a Ray worker the shards run as parallel Ray tasks writing
    their own shards of the same arrays, as reconstruct does; the step finishes only when every shard
    has, and the numbers are those of one worker (seeds are per study, batches fall at the same
    studies in every shard).
    """
    cohort = load_cohort(ctx, spec.cohort)
    n = len(cohort.table)
    shards = list(shard_ranges(n, ctx.shard_studies))
    writer = ArrayWriter(out / DEGRADED, n, ctx.shard_studies)
    op = _degradation(spec)
    if n:
        _create_degraded_arrays(spec, ctx, cohort, op, writer)
    from reconaudit import progress

    if _split_on_ray(ctx, shards):
        infos = [i for part in _ray_shards(spec, ctx, out / DEGRADED, shards) for i in part]
    else:
        infos = []
        with progress.task(f"degrade {cohort.name} {spec.degradation}={spec.level:g}", n) as t:
            for s0, s1 in shards:
                infos.extend(degrade_shard(spec, ctx, writer, s0, s1, cohort=cohort, op=op))
                t.advance(s1 - s0)
    info = {k: v for k, v in infos[0][0].items() if isinstance(v, int | float | str | bool)} if infos else {}
    for k in list(info):
        vals = [i.get(k) for i, _ in infos]
        if all(isinstance(v, int | float) for v in vals):
            info[k] = float(np.average(vals, weights=[m for _, m in infos]))
    _json(out / "info.json", {**info, "level_name": getattr(op, "level_name", "level")})


def _degradation(spec: DegradeSpec):
    from reconaudit.physics import make_degradation

    return make_degradation(spec.degradation, spec.level, **spec.params)


def _degrade_batch(spec: DegradeSpec, ctx: StepContext, op, ids: list[str], images: torch.Tensor,
                   kspace: torch.Tensor | None) -> Degraded:
    """Studies ``ids`` (their ``images``, and ``kspace`` when the degradation takes it) degraded by
    ``op`` with their per-study seeds; the physics runs on ``ctx.device``, the result is on the CPU."""
    seeds = study_seeds(f"degrade/{spec.degradation}/{spec.level}", spec.seed, ids)
    kw = {} if kspace is None else {"kspace": kspace.to(ctx.device)}
    return op(images.to(ctx.device), seeds, **kw).to("cpu")


def _takes_kspace(cohort: Cohort, op) -> bool:
    return cohort.kspace is not None and getattr(op, "accepts_kspace", False)


def _create_degraded_arrays(spec: DegradeSpec, ctx: StepContext, cohort: Cohort, op, writer: ArrayWriter) -> None:
    """Create ``image`` (and ``kspace``, ``mask`` when the degradation gives them) with the per-study
    shape and dtype of the first study's result."""
    probe = _degrade_batch(spec, ctx, op, cohort.table["study_id"].iloc[0:1].astype(str).tolist(), cohort.images[0:1],
                           cohort.kspace[0:1] if _takes_kspace(cohort, op) else None)
    for name, t in (("image", probe.image), ("kspace", probe.kspace), ("mask", probe.mask)):
        if t is not None:
            writer.create(name, tuple(int(v) for v in t.shape[1:]), t.dtype)


def degrade_shard(spec: DegradeSpec, ctx: StepContext, writer: ArrayWriter, s0: int, s1: int, *,
                  cohort: Cohort | None = None, op=None) -> list[tuple[dict, int]]:
    """Degrade studies ``s0:s1`` (a shard) in batches of ``ctx.batch(256)`` and write them into
    ``writer``'s arrays (created beforehand); return each batch's ``(info, studies)``."""
    cohort = cohort if cohort is not None else load_cohort(ctx, spec.cohort)
    op = op if op is not None else _degradation(spec)
    bs = ctx.batch(256)
    ids = cohort.table["study_id"].iloc[s0:s1].astype(str).tolist()
    shard_imgs = cohort.images[s0:s1]
    shard_k = cohort.kspace[s0:s1] if _takes_kspace(cohort, op) else None
    parts, infos = [], []
    for i in range(0, s1 - s0, bs):
        part = _degrade_batch(spec, ctx, op, ids[i : i + bs], shard_imgs[i : i + bs],
                              None if shard_k is None else shard_k[i : i + bs])
        parts.append(part)
        infos.append((part.info, len(part)))
    if parts:
        whole = Degraded.concat(parts)  # a mask shared by a batch is stored per study
        for name, t in (("image", whole.image), ("kspace", whole.kspace), ("mask", whole.mask)):
            if t is not None:
                writer.write(name, s0, t.contiguous())
    return infos


def _pairset(cohort: Cohort, deg: Degraded, split: str):
    from reconaudit.recon.base import PairSet

    idx = cohort.indices(split)
    sub = cohort.table.iloc[idx].reset_index(drop=True)
    return PairSet(  # lazy views of a stored cohort and degraded set: training reads them batch by batch
        degraded=degraded_view(deg, idx),
        clean=view(cohort.images, idx),
        study_ids=sub["study_id"].astype(str).tolist(),
        groups=sub[cohort.group_attributes].astype(str),
        targets=cohort.targets()[idx] if cohort.labels else None,
        masks=view(cohort.masks, idx),
    )


def _reads_lazily(rec) -> bool:
    """Whether a reconstructor's ``fit`` takes lazy arrays: it says so, or it is the base's no-op."""
    from reconaudit.recon.base import Reconstructor

    return bool(getattr(rec, "reads_lazily", False)) or type(rec).fit is Reconstructor.fit


def _in_memory(pairs):
    """A :class:`PairSet` with every lazy array read (for a user's ``fit`` that expects tensors)."""
    d = pairs.degraded
    mask = d.mask
    if mask is not None and is_lazy(mask):
        mask = mask.load()
    deg = Degraded(as_tensor(d.image), as_tensor(d.kspace), mask, dict(d.info))
    return dataclasses.replace(pairs, degraded=deg, clean=as_tensor(pairs.clean), masks=as_tensor(pairs.masks))


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
    if not _reads_lazily(rec):
        train, val = _in_memory(train), _in_memory(val)
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
    """Reconstruct the test studies (K samples each for stochastic reconstructors), shard by shard.

    Each shard of ``ctx.shard_studies`` test studies is read, reconstructed in batches of 32 and
    written to ``recon.zarr`` (``mean``; ``samples`` and ``std`` when K > 1).  With
    ``ctx.shard_tasks > 1`` inside a Ray worker the shards run as parallel Ray tasks writing their
    own shards of the same arrays; the step (and so its artifact) finishes only when every shard has.
    """
    cohort = load_cohort(ctx, spec.cohort)
    te = cohort.indices("test")
    shards = list(shard_ranges(len(te), ctx.shard_studies))
    tails = _recon_tails(spec, ctx, cohort, te)
    writer = ArrayWriter(out / RECON, len(te), ctx.shard_studies)
    for name, tail in tails.items():
        writer.create(name, tail, torch.float32)
    from reconaudit import progress

    if _split_on_ray(ctx, shards):
        for _ in _ray_shards(spec, ctx, out / RECON, shards):
            pass
        return
    with progress.task(f"reconstruct {spec.reconstructor}", len(te)) as t:
        rec = _loaded_recon(spec, ctx)
        for a, b in shards:
            reconstruct_shard(spec, ctx, writer, a, b, rec=rec)
            t.advance(b - a)


def _loaded_recon(spec: ReconstructSpec, ctx: StepContext):
    rec = _make_recon(spec.reconstructor, spec.params, ctx)
    rec.load(ctx.store.path("fit_recon", spec.fit) / "weights.safetensors")
    return rec


def _recon_tails(spec: ReconstructSpec, ctx: StepContext, cohort: Cohort, te: np.ndarray) -> dict:
    """The per-study shapes of the reconstruct arrays (the image's; samples add the K axis)."""
    tail = tuple(int(v) for v in cohort.images.shape[1:])
    k = int(spec.samples)
    return {"samples": (k, *tail), "mean": tail, "std": tail} if k > 1 else {"mean": tail}


def reconstruct_shard(spec: ReconstructSpec, ctx: StepContext, writer: ArrayWriter, a: int, b: int, *,
                      rec=None) -> None:
    """Reconstruct test studies ``a:b`` (a shard) in batches of 32 and write them into ``writer``'s arrays.

    Seeds are per study (``study_seeds``), so a shard gives the same numbers whichever worker runs it.
    """
    cohort = load_cohort(ctx, spec.cohort)
    deg = load_degraded(ctx, spec.degrade)
    te = cohort.indices("test")
    rows = te[a:b]
    part_all = degraded_view(deg, rows)
    ids = cohort.table["study_id"].astype(str).to_numpy()[rows].tolist()
    rec = rec if rec is not None else _loaded_recon(spec, ctx)
    k = int(spec.samples)
    seeds = study_seeds(f"reconstruct/{spec.reconstructor}", spec.seed, ids)
    bs = ctx.batch(32)
    outs = []
    with torch.no_grad():
        for i in range(0, len(ids), bs):
            part = part_all.subset(list(range(i, min(i + bs, len(ids)))))
            r = rec.reconstruct(part.to(ctx.device), seeds=seeds[i : i + bs], samples=k, study_ids=ids[i : i + bs])
            outs.append(r.detach().float().cpu())
    r = torch.cat(outs, 0) if outs else torch.zeros((0,))
    want = (k, *part_all.image.shape[1:]) if k > 1 else tuple(part_all.image.shape[1:])
    if len(ids) and tuple(r.shape[1:]) != want:
        raise ValueError(f"reconstructor {spec.reconstructor!r} returned studies of shape {tuple(r.shape[1:])}; "
                         f"expected {want} (the degraded image's shape{', K samples first' if k > 1 else ''})")
    if k > 1:
        writer.write("samples", a, r.clamp(0, 1).contiguous())
        writer.write("mean", a, r.clamp(0, 1).mean(1).contiguous())
        writer.write("std", a, r.clamp(0, 1).std(1, unbiased=True).contiguous())
    else:
        writer.write("mean", a, r.clamp(0, 1).contiguous())


def _split_on_ray(ctx: StepContext, shards: list) -> bool:
    """Whether a streaming step runs its ``shards`` as Ray shard tasks (:func:`_ray_shards`): asked
    for (``execution.shard_tasks`` > 1), more than one shard, and inside a Ray worker."""
    return ctx.shard_tasks > 1 and len(shards) > 1 and _in_ray_worker()


def _in_ray_worker() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


def _shard_task(spec: ReconstructSpec | DegradeSpec | ScoreSpec | DirectScoreSpec, ctx_args: dict, path: str,
                a: int, b: int) -> tuple[int, str, object]:
    """One Ray shard task of a reconstruct, degrade or score step (:func:`reconstruct_shard`,
    :func:`degrade_shard` write their shard of the arrays at ``path``; :func:`score_shard` returns
    its records, examples and features); returns the number of studies, the worker (host:pid) that
    computed them and what the shard function returned."""
    import os
    import socket

    from reconaudit.engine.store import open_store

    ctx = StepContext(open_store(ctx_args["store"]), **{**ctx_args["settings"], "shard_tasks": 1})
    torch.use_deterministic_algorithms(True, warn_only=True)
    if ctx.threads:
        torch.set_num_threads(ctx.threads)
    if isinstance(spec, ScoreSpec | DirectScoreSpec):
        features: dict[str, list] = {"clean": [], "recon": []}
        part, ex = score_shard(spec, ctx, _score_inputs(spec, ctx), a, b, features)
        result: object = (part, ex, features)
    else:
        writer = ArrayWriter(path, int(b - a), ctx.shard_studies, mode="r+")
        shard = degrade_shard if isinstance(spec, DegradeSpec) else reconstruct_shard
        result = shard(spec, ctx, writer, a, b)
    return b - a, f"{socket.gethostname()}:{os.getpid()}", result


def _ray_shards(spec: ReconstructSpec | DegradeSpec | ScoreSpec | DirectScoreSpec, ctx: StepContext, path: Path,
                shards: list[tuple[int, int]]) -> Iterator:
    """Run ``shards`` as Ray tasks (at most ``ctx.shard_tasks`` at a time); every one must succeed.
    Yields what each shard's function returned, in shard order; a shard that finishes early waits
    until those before it are yielded, and no new shard starts while ``shard_tasks`` results wait
    or run, so at most that many results are held.

    The arrays live in the step's private directory, so this needs a store that every worker sees
    as a filesystem path (a local or shared directory).
    """
    import ray

    task = ray.remote(num_cpus=1, num_gpus=1 if str(ctx.device).startswith("cuda") else 0, max_retries=0)(_shard_task)
    ctx_args = {"store": ctx.store.url, "settings": ctx.settings()}
    pending, done, workers, waiting = list(enumerate(shards)), 0, set(), {}
    running: dict = {}
    following = 0  # the next shard to yield
    while pending or running or waiting:
        while pending and len(running) + len(waiting) < ctx.shard_tasks:
            i, (a, b) = pending.pop(0)
            running[task.remote(spec, ctx_args, str(path), a, b)] = i
        if running:
            ready, _ = ray.wait(list(running), num_returns=1)
            i = running.pop(ready[0])
            n, where, waiting[i] = ray.get(ready[0])  # a failed shard raises: the step fails, nothing is committed
            done += int(n)
            workers.add(where)
        while following in waiting:
            yield waiting.pop(following)
            following += 1
    what = {DegradeSpec: lambda: f"degrade {spec.degradation}={spec.level:g}",
            ReconstructSpec: lambda: f"reconstruct {spec.reconstructor}"}.get(type(spec), lambda: f"score {spec.cell_id}")()
    log.info("%s: %d studies in %d shard tasks on %d workers", what, done, len(shards), len(workers))


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


def _score_shard(
    spec: ScoreSpec | DirectScoreSpec, cohort: Cohort, te: np.ndarray, df: pd.DataFrame, clean: pd.DataFrame | None,
    inputs: torch.Tensor, models: dict, recon: dict | None, deg_test: Degraded, clean_models: dict, n_ex: int,
    features: dict[str, list], batch_studies: int | None,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """One shard of :func:`_score_common`: the rows ``df`` of test rows ``te`` (cohort positions).

    ``clean`` holds the shard's clean predictions, ``inputs``, ``recon`` and ``deg_test`` the shard's
    studies in memory; ``n_ex`` of its first studies are example studies.  Returns the shard's records
    (thresholds at the models' clean-validation values) and examples; the penultimate features of the
    clean images and reconstructions are appended to ``features`` for the set-level Fréchet distance.
    Networks see batches of ``batch_studies`` (default 64) counted from the shard's start.
    """
    bs = batch_studies or 64
    ev = spec.evaluation
    roi = cohort.roi_masks[te] if (ev.roi and cohort.roi_masks is not None) else None
    clean_imgs = cohort.images[te]
    k = int(recon["samples"].shape[1]) if recon is not None and "samples" in recon else 1
    examples: dict[str, np.ndarray] = {}
    ex_idx = np.arange(n_ex)
    seg_pred_ex = seg_pred = None
    for task, model in models.items():
        prob = _predict_batched(model, inputs, bs)
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
                # (rechoose_on_test: both are chosen again on the whole test set by _score_common)
                df[f"threshold:{label}"] = thr
                df[f"clean_threshold:{label}"] = clean_thr
            feats = _features_batched(model, inputs, bs)
            clean_feats = _features_batched(clean_models["classification"], clean_imgs, bs)
            if feats is not None and clean_feats is not None:
                df = pd.concat([df, pd.DataFrame(feats, columns=[f"feature:{i}" for i in range(feats.shape[1])]),
                                pd.DataFrame(clean_feats, columns=[f"clean_feature:{i}" for i in
                                                                   range(clean_feats.shape[1])])], axis=1)
            if k > 1:
                for s in range(k):
                    ps = _predict_batched(model, recon["samples"][:, s], bs)
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
            pred, d, h = _seg_scores(prob, float(model.thresholds[0]), cohort.masks[te])
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

    for c, v in generative_columns(cohort, te, clean_imgs, recon, deg_test, clean_models, seg_pred,
                                   features=features, batch_size=batch_studies).items():
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
            examples["seg_true"] = cohort.masks[te][ex_idx, 0].numpy()
            examples["seg_recon"] = seg_pred_ex
            clean_model = clean_models.get("segmentation")
            if clean_model is not None:
                cp = _predict_batched(clean_model, clean_imgs[ex_idx])
                examples["seg_clean"] = (cp >= float(clean_model.thresholds[0])).astype(np.uint8)[:, 0]
    return df, examples


@dataclass
class _ScoreInputs:
    """What a score or direct-score step reads before its shards: the cohort, the test rows ``te``
    (cohort positions) and their base records ``df``, the clean predictions, the inputs of test
    studies ``a:b`` (``inputs(a, b)``; ``None``: the reconstruction's mean), the models, the
    reconstruction and the degraded test studies (lazy where stored)."""

    cohort: Cohort
    te: np.ndarray
    df: pd.DataFrame
    clean: pd.DataFrame | None
    inputs: object
    models: dict
    recon: dict | None
    deg_test: Degraded
    clean_models: dict


def _score_inputs(spec: ScoreSpec | DirectScoreSpec, ctx: StepContext) -> _ScoreInputs:
    """Open what a score (``ScoreSpec``) or direct-score step scores; nothing of the test set is read."""
    from reconaudit.tasks.direct import direct_inputs

    cohort = load_cohort(ctx, spec.cohort)
    deg = load_degraded(ctx, spec.degrade)
    df, te = _base_rows(cohort, spec)
    test = degraded_view(deg, te)
    clean = None  # a reconstruction-quality audit (tasks: none) has no clean predictions
    if spec.predict_clean:
        clean = pd.read_parquet(ctx.store.path("predict_clean", spec.predict_clean) / "clean.parquet")
        if list(clean["study_id"]) != list(df["study_id"]):
            raise RuntimeError("clean predictions and test studies are not aligned (corrupt store?)")
    clean_models = {t: load_task_model(ctx, "task_model", k)[0] for t, k in spec.task_models.items()}
    if isinstance(spec, ScoreSpec):
        return _ScoreInputs(cohort, te, df, clean, None, clean_models, load_recon(ctx, spec.reconstruct), test,
                            clean_models)

    def inputs(a: int, b: int) -> torch.Tensor:
        part = test.subset(list(range(a, b)))
        return direct_inputs(part.image, part.kspace, spec.input)

    models = {t: load_task_model(ctx, spec.model_kind, k)[0] for t, k in spec.direct_models.items()}
    return _ScoreInputs(cohort, te, df, clean, inputs, models, None, test, clean_models)


def score_shard(spec: ScoreSpec | DirectScoreSpec, ctx: StepContext, s: _ScoreInputs, a: int, b: int,
                features: dict[str, list]) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The records and examples of test studies ``a:b`` (a shard; see :func:`_score_shard`); the
    shard's penultimate features are appended to ``features``."""
    rec_s = None if s.recon is None else {name: arr[a:b] for name, arr in s.recon.items()}
    n_ex = min(int(spec.evaluation.examples), len(s.te))
    return _score_shard(
        spec, s.cohort, s.te[a:b], s.df.iloc[a:b].reset_index(drop=True),
        None if s.clean is None else s.clean.iloc[a:b].reset_index(drop=True),
        rec_s["mean"] if s.inputs is None else s.inputs(a, b), s.models, rec_s,
        s.deg_test.subset(list(range(a, b))), s.clean_models, int(np.clip(n_ex - a, 0, b - a)), features,
        ctx.batch_studies,
    )


def _score_common(spec: ScoreSpec | DirectScoreSpec, ctx: StepContext, out: Path, s: _ScoreInputs) -> None:
    """Apply the diagnostic models to the inputs of :class:`_ScoreInputs`; write the records (scores,
    Dice, image quality) shard by shard (:class:`RecordsWriter`, one row group per shard) and the
    examples.

    ``s.clean_models`` are the frozen models trained on clean images (the same as ``s.models`` for the
    reconstruct arm); the example figure shows their saliency and segmentation on the clean image.
    The test set is scored in shards of ``ctx.shard_studies`` studies (:func:`score_shard`), so only
    one shard of images and records is in memory; with ``ctx.shard_tasks > 1`` inside a Ray worker the
    shards run as parallel Ray tasks and their records are written here in shard order as they
    arrive (at most ``shard_tasks`` shards held).  What needs the whole test set (thresholds chosen on
    it with ``rechoose_on_test``, ``gen_frechet``) is computed from the shards' scores and features
    afterwards and set in the written file (:func:`set_record_columns`).
    """
    from reconaudit.metrics import frechet_distance
    from reconaudit.tasks import choose_threshold

    ev, cohort = spec.evaluation, s.cohort
    features: dict[str, list] = {"clean": [], "recon": []}
    rechoose = ev.rechoose_on_test and "classification" in s.models
    kept: list[pd.DataFrame] = []  # the columns the thresholds are chosen again from (rechoose_on_test)
    ex_parts = []
    path = out / "records.parquet"
    shards = list(shard_ranges(len(s.te), ctx.shard_studies))
    if _split_on_ray(ctx, shards):
        results = _ray_shards(spec, ctx, out, shards)
    else:
        results = ((*score_shard(spec, ctx, s, a, b, features), None) for a, b in shards)
    with RecordsWriter(path) as writer:
        for part, ex, feats in results:
            if feats is not None:  # a shard task's features, gathered in shard order
                for name, fs in feats.items():
                    features[name].extend(fs)
            writer.append(part)
            if rechoose:
                kept.append(part[[c for lb in cohort.labels for c in (f"target:{lb}", f"score:{lb}",
                                                                     f"clean_score:{lb}")]])
            del part
            if ex:
                ex_parts.append(ex)
        if writer.rows == 0:
            writer.append(s.df)
    constants: dict[str, float] = {}
    if "gen_frechet" in writer.columns and features["clean"]:
        f_rec, f_clean = np.concatenate(features["recon"]), np.concatenate(features["clean"])
        constants["gen_frechet"] = frechet_distance(f_rec, f_clean) if len(f_rec) >= 2 else float("nan")
    if rechoose and kept:
        cols = pd.concat(kept, ignore_index=True)
        for label in cohort.labels:
            y_test = cols[f"target:{label}"].to_numpy()
            constants[f"threshold:{label}"] = float(choose_threshold(
                y_test, cols[f"score:{label}"].to_numpy(), ev.threshold_policy, ev.target_sensitivity))
            constants[f"clean_threshold:{label}"] = float(choose_threshold(
                y_test, cols[f"clean_score:{label}"].to_numpy(), ev.threshold_policy, ev.target_sensitivity))
    if constants:
        set_record_columns(path, constants)
    if ex_parts:
        examples = {key: np.concatenate([e[key] for e in ex_parts if key in e]) for key in ex_parts[0]}
        np.savez_compressed(out / "examples.npz", **examples)


class RecordsWriter:
    """Writes a step's records to one Parquet file shard by shard (one row group per appended shard),
    so a scoring step holds one shard's records, not the test split's.

    The first shard fixes the schema; a later shard whose columns or types differ is an error naming
    them (never a silent cast).  ``rows`` and ``columns`` say what was written.
    """

    def __init__(self, path: Path) -> None:
        self.path, self.rows, self.columns = Path(path), 0, []
        self._writer = None
        self._schema = None

    def __enter__(self) -> RecordsWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self._writer is not None:
            self._writer.close()

    def append(self, df: pd.DataFrame) -> None:
        """Write ``df`` as the next row group."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(df, preserve_index=False)
        if self._writer is None:
            self._schema, self.columns = table.schema, list(df.columns)
            self._writer = pq.ParquetWriter(self.path, self._schema)
        elif not table.schema.equals(self._schema, check_metadata=False):
            if list(df.columns) != self.columns:
                raise RuntimeError(f"{self.path}: records of rows {self.rows}.. have columns {list(df.columns)}, "
                                   f"the first shard's were {self.columns}")
            try:
                table = table.cast(self._schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError) as exc:
                diff = [f.name for f, g in zip(table.schema, self._schema) if f.type != g.type]
                raise RuntimeError(f"{self.path}: records of rows {self.rows}.. differ in type from the first "
                                   f"shard's in columns {diff} ({exc})") from exc
        self._writer.write_table(table.replace_schema_metadata(self._schema.metadata))
        self.rows += len(df)


def set_record_columns(path: Path, values: dict[str, float]) -> None:
    """Set each column of ``values`` to its constant in every row of the records file ``path``
    (added when absent), row group by row group, through a temporary file replaced atomically."""
    import pyarrow.parquet as pq

    tmp = path.with_suffix(".parquet.tmp")
    src = pq.ParquetFile(path)
    with RecordsWriter(tmp) as writer:
        for i in range(src.num_row_groups):
            part = src.read_row_group(i).to_pandas()
            for c, v in values.items():
                part[c] = v
            writer.append(part)
    src.close()
    tmp.replace(path)


def step_score(spec: ScoreSpec, ctx: StepContext, out: Path) -> None:
    """Records of one reconstruct-then-diagnose cell: one row per test study."""
    _score_common(spec, ctx, out, _score_inputs(spec, ctx))


def step_direct_model(spec: DirectModelSpec, ctx: StepContext, out: Path) -> None:
    """The no-reconstruction arm: a diagnostic model trained on the degraded inputs themselves."""
    from reconaudit.tasks.direct import direct_inputs

    cohort = load_cohort(ctx, spec.cohort)
    deg = load_degraded(ctx, spec.degrade)
    x = DirectInputs(deg, spec.input) if is_lazy(deg.image) else direct_inputs(deg.image, deg.kspace, spec.input)
    _train_task_model(spec, ctx, out, cohort, x, int(x.shape[1]))


def step_direct_score(spec: DirectScoreSpec, ctx: StepContext, out: Path) -> None:
    """Records of the direct arm: the direct model applied to the degraded test inputs."""
    _score_common(spec, ctx, out, _score_inputs(spec, ctx))


class DirectInputs(LazyStudies):
    """The direct arm's inputs (:func:`~reconaudit.tasks.direct.direct_inputs`) of a lazily stored
    degraded set, computed batch by batch as a diagnostic model reads them (study by study, so the
    numbers are those of the whole set at once)."""

    def __init__(self, deg: Degraded, mode: str) -> None:
        from reconaudit.tasks.direct import direct_inputs

        self.deg, self.mode = deg, mode
        probe = direct_inputs(deg.subset([0]).image, deg.subset([0]).kspace, mode) if len(deg) else None
        tail = tuple(probe.shape[1:]) if probe is not None else tuple(deg.image.shape[1:])
        self.shape = (len(deg), *tail)
        self.dtype = torch.float32

    def take(self, idx) -> DirectInputs:
        """A view of the studies at ``idx`` (nothing is read)."""
        return DirectInputs(degraded_view(self.deg, idx), self.mode)

    def __getitem__(self, idx) -> torch.Tensor:
        from reconaudit.tasks.direct import direct_inputs

        if isinstance(idx, slice):
            idx = list(range(len(self))[idx])  # the slice's positions only (a batch, not the split)
        part = self.deg.subset(idx)
        return direct_inputs(part.image, part.kspace, self.mode)


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

