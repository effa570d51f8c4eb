"""Expand a config into a grid of cells and a graph of content-addressed steps.

A *cell* is one point of the grid cohort × degradation × level × reconstructor × mitigation × seed
(plus the direct arm: cohort × degradation × level × seed).  Each cell is a chain of *steps*;
a step's key hashes its kind, a version and every input and setting it depends on (including the
keys of the steps it reads), so two cells that share a step (the same diagnostic model, the same
degraded data) share its key and compute it once, and changing one setting changes only the keys
of the steps downstream of it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from reconaudit.engine.config import AuditConfig, ReconstructorConfig
from reconaudit.engine.inputs import InputDigests, cohort_input_files
from reconaudit.engine.specs import EvaluationSpec, MitigationSpec, StepSpec, make_spec
from reconaudit.engine.store import content_key

# Bump a version when a step's code changes what it writes: its artifacts are then recomputed.
# Version 2: keys hash the contents of the external files a step reads (``spec.inputs``).
STEP_VERSIONS = {
    "cohort": 2,
    "task_model": 2,
    "predict_clean": 2,
    "degrade": 2,
    "fit_recon": 2,
    "reconstruct": 2,
    "score": 2,  # also: penultimate features (feature:<k>, clean_feature:<k>)
    "direct_model": 2,
    "direct_score": 2,
    "aligned_model": 1,
    "aligned_score": 1,
}
STEP_KINDS = tuple(STEP_VERSIONS)
#: The ``task`` of the cells of a cohort audited without any diagnostic model (``tasks: none``).
NO_TASK = "none"
#: The ``reconstructor`` of the aligned direct arm's cells (``direct.alignment: latent``).
ALIGNED = "direct-aligned"


@dataclass(frozen=True)
class Step:
    """One unit of work: ``kind`` names the function, ``spec`` (its typed
    :class:`~reconaudit.engine.specs.StepSpec`) holds everything it reads."""

    kind: str
    key: str
    spec: StepSpec = field(hash=False, compare=False)
    deps: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        """``kind/key``: the artifact this step writes."""
        return f"{self.kind}/{self.key}"


@dataclass
class Cell:
    """One point of the audit grid and the step whose artifact holds its records."""

    cell_id: str
    cohort: str
    degradation: str
    level: float
    reconstructor: str
    arm: str
    mitigation: str
    mitigation_strength: float
    seed: int
    final_step: str
    task: str = ""

    def as_dict(self) -> dict:
        return {
            "cell_id": self.cell_id,
            "cohort": self.cohort,
            "task": self.task,
            "degradation": self.degradation,
            "level": self.level,
            "reconstructor": self.reconstructor,
            "arm": self.arm,
            "mitigation": self.mitigation,
            "mitigation_strength": self.mitigation_strength,
            "seed": self.seed,
            "final_step": self.final_step,
        }


@dataclass
class Plan:
    """The cells of an audit and the deduplicated steps they need, in dependency order."""

    cells: list[Cell]
    steps: dict[str, Step]
    digests: InputDigests | None = None  # the external-file digests the keys were built from

    def ordered(self) -> list[Step]:
        """Steps in an order where every step comes after its dependencies (stable)."""
        out: list[Step] = []
        seen: set[str] = set()

        def visit(sid: str) -> None:
            if sid in seen:
                return
            seen.add(sid)
            for d in self.steps[sid].deps:
                visit(d)
            out.append(self.steps[sid])

        for sid in self.steps:
            visit(sid)
        return out

    def needed_for(self, step_ids: list[str]) -> set[str]:
        """Every step the given steps depend on, transitively, including themselves."""
        need: set[str] = set()
        stack = list(step_ids)
        while stack:
            s = stack.pop()
            if s in need:
                continue
            need.add(s)
            stack.extend(self.steps[s].deps)
        return need


class _Builder:
    def __init__(self) -> None:
        self.steps: dict[str, Step] = {}

    def add(self, kind: str, deps: list[str] | tuple[str, ...] = (), **fields) -> str:
        """Add the step of ``kind`` whose spec has ``fields`` (shared steps are added once)."""
        return self.add_spec(make_spec(kind, **fields), deps)

    def add_spec(self, spec: StepSpec, deps: list[str] | tuple[str, ...] = ()) -> str:
        key = content_key(spec.kind, spec.as_dict(), STEP_VERSIONS[spec.kind])
        step = Step(spec.kind, key, spec, tuple(dict.fromkeys(deps)))
        self.steps.setdefault(step.id, step)
        return step.id


def _key(step_id: str) -> str:
    return step_id.split("/", 1)[1]


def _applies(mitigation, cohort: str, level: float, recon: ReconstructorConfig) -> bool:
    if mitigation.cohorts is not None and cohort not in mitigation.cohorts:
        return False
    if mitigation.levels is not None and float(level) not in [float(v) for v in mitigation.levels]:
        return False
    if mitigation.reconstructors is not None:
        return recon.display in mitigation.reconstructors
    from reconaudit.recon import RECONSTRUCTORS

    cls = RECONSTRUCTORS.get(recon.name)
    return bool(cls is not None and cls.trainable)


def cohort_tasks(cohort_cfg) -> dict[str, dict]:
    """The diagnostic tasks of a cohort: none for ``tasks: none``, the config's, or (``tasks: {}``)
    every task the cohort supports with its params (:func:`reconaudit.cohorts.supported_tasks`)."""
    from reconaudit.cohorts import supported_tasks

    if cohort_cfg.recon_only:
        return {}
    if cohort_cfg.task_configs:
        return {k: v.model_dump() for k, v in cohort_cfg.task_configs.items()}
    supported = supported_tasks(cohort_cfg.name, cohort_cfg.params)
    return {t: {"arch": "small-cnn" if t == "classification" else "unet", "params": {}} for t in supported}


def _recon_inputs(rc: ReconstructorConfig, digests: InputDigests) -> tuple[dict, dict]:
    """External-file digests of a reconstructor for its ``fit_recon`` and ``reconstruct`` steps.

    A ``folder`` reconstructor's files are read when reconstructing; every other reconstructor's
    (weights, a plug-in's source) when it is built for fitting, and reach ``reconstruct`` through
    the fit's key.
    """
    found = digests.of_params(rc.params)
    return ({}, found) if rc.name == "folder" else (found, {})


@dataclass
class _Slice:
    """The steps one (cohort, seed, degradation, level) slice of the grid shares across its cells."""

    cc: object  # the CohortConfig
    seed: int
    degradation: str
    level: float
    cohort_id: str
    deg_id: str
    tasks: dict[str, dict]  # task -> {"arch", "params"}
    task_inputs: dict[str, dict]  # task -> external-file digests of its params
    task_ids: dict[str, str]  # task -> task_model step id
    clean_id: str | None  # the predict_clean step id (None without a task)
    evaluation: EvaluationSpec

    @property
    def task_label(self) -> str:
        """The records' ``task``: the cohort's tasks joined by ``+`` (``none`` without a task)."""
        return "+".join(sorted(self.tasks)) or NO_TASK

    @property
    def task_model_keys(self) -> dict[str, str]:
        return {t: _key(s) for t, s in self.task_ids.items()}

    def cell_fields(self) -> dict:
        """The spec fields every scoring step of the slice shares."""
        return {
            "cohort_name": self.cc.name,
            "task": self.task_label,
            "degradation": self.degradation,
            "level": self.level,
            "seed": self.seed,
            "cohort": _key(self.cohort_id),
            "degrade": _key(self.deg_id),
            "task_models": self.task_model_keys,
            "predict_clean": _key(self.clean_id) if self.clean_id else None,
            "evaluation": self.evaluation,
        }

    def score_deps(self) -> list[str]:
        return [self.cohort_id, self.deg_id, *([self.clean_id] if self.clean_id else []), *self.task_ids.values()]

    def cell(self, cell_id: str, reconstructor: str, arm: str, mitigation: str, strength: float,
             final_step: str) -> Cell:
        return Cell(cell_id, self.cc.name, self.degradation, self.level, reconstructor, arm, mitigation,
                    strength, self.seed, final_step, self.task_label)


def _evaluation_spec(cfg: AuditConfig) -> EvaluationSpec:
    ev = cfg.evaluation
    return EvaluationSpec(threshold_policy=ev.threshold_policy, target_sensitivity=ev.target_sensitivity,
                          rechoose_on_test=ev.rechoose_on_test, roi=ev.roi, examples=ev.examples)


def _cohort_step(b: _Builder, cc, digests: InputDigests) -> str:
    return b.add("cohort", name=cc.name, params=cc.params, data_seed=cc.data_seed,
                 inputs=digests.of_paths(cohort_input_files(cc.name, cc.params)))


def _task_model_steps(b: _Builder, cohort_id: str, tasks: dict, task_inputs: dict, seed: int,
                      ev: EvaluationSpec) -> dict[str, str]:
    """One diagnostic model per task, trained on clean images (shared by every cell of the seed)."""
    return {
        t: b.add("task_model", [cohort_id], cohort=_key(cohort_id), task=t, arch=tc["arch"], params=tc["params"],
                 seed=seed, threshold_policy=ev.threshold_policy, target_sensitivity=ev.target_sensitivity,
                 inputs=task_inputs[t])
        for t, tc in sorted(tasks.items())
    }


def _predict_clean_step(b: _Builder, cohort_id: str, task_ids: dict[str, str], ev: EvaluationSpec) -> str | None:
    if not task_ids:
        return None
    return b.add("predict_clean", [cohort_id, *task_ids.values()], cohort=_key(cohort_id),
                 task_models={t: _key(s) for t, s in task_ids.items()}, roi=ev.roi)


def _degrade_step(b: _Builder, cohort_id: str, dc, level: float, seed: int) -> str:
    return b.add("degrade", [cohort_id], cohort=_key(cohort_id), degradation=dc.name, level=level,
                 params=dc.params, seed=seed)


def _score_step(b: _Builder, kind: str, deps: list[str], **fields) -> tuple[str, str]:
    """A scoring step (``score`` or ``direct_score``) and its cell id, the key of its fields
    without ``cell_id``."""
    spec = make_spec(kind, **fields, cell_id="")
    cell_fields = spec.as_dict()
    del cell_fields["cell_id"]
    cell_id = content_key("cell", cell_fields)[:12]
    return cell_id, b.add_spec(dataclasses.replace(spec, cell_id=cell_id), deps)


def _mitigation_fits(b: _Builder, cfg: AuditConfig, sl: _Slice, rc: ReconstructorConfig, base_fit: str,
                     fit_inputs: dict) -> list[tuple[str, float, str]]:
    """``(mitigation, strength, fit step id)`` of every mitigation that applies to this cell."""
    from reconaudit.mitigation import MITIGATIONS

    out = []
    for mc in cfg.mitigations:
        if not _applies(mc, sl.cc.name, sl.level, rc):
            continue
        fine_tune = MITIGATIONS[mc.name].fine_tunes
        for strength in mc.strengths:
            mitigation = MitigationSpec(name=mc.name, strength=float(strength), params=mc.params,
                                        base=_key(base_fit) if fine_tune else None,
                                        task_models=sl.task_model_keys)
            deps = [sl.cohort_id, sl.deg_id, *sl.task_ids.values(), *([base_fit] if fine_tune else [])]
            fit_id = b.add("fit_recon", deps, cohort=_key(sl.cohort_id), degrade=_key(sl.deg_id),
                           reconstructor=rc.name, params=rc.params, seed=sl.seed, mitigation=mitigation,
                           inputs=fit_inputs)
            out.append((mc.name, float(strength), fit_id))
    return out


def _reconstructor_cells(b: _Builder, cfg: AuditConfig, sl: _Slice, rc: ReconstructorConfig,
                         digests: InputDigests) -> list[Cell]:
    """The cells of one reconstructor: unmitigated and each mitigation, fit -> reconstruct -> score."""
    fit_inputs, rec_inputs = _recon_inputs(rc, digests)
    base_fit = b.add("fit_recon", [sl.cohort_id, sl.deg_id], cohort=_key(sl.cohort_id), degrade=_key(sl.deg_id),
                     reconstructor=rc.name, params=rc.params, seed=sl.seed, mitigation=None, inputs=fit_inputs)
    variants = [("none", float("nan"), base_fit), *_mitigation_fits(b, cfg, sl, rc, base_fit, fit_inputs)]
    cells = []
    for mname, strength, fit_id in variants:
        rec_id = b.add("reconstruct", [sl.cohort_id, sl.deg_id, fit_id], cohort=_key(sl.cohort_id),
                       degrade=_key(sl.deg_id), fit=_key(fit_id), reconstructor=rc.name, params=rc.params,
                       samples=rc.samples, seed=sl.seed, inputs=rec_inputs)
        cell_id, score_id = _score_step(b, "score", [*sl.score_deps(), rec_id], **sl.cell_fields(),
                                        reconstructor=rc.display, arm="reconstruct", mitigation=mname,
                                        mitigation_strength=strength, reconstruct=_key(rec_id))
        cells.append(sl.cell(cell_id, rc.display, "reconstruct", mname, strength, score_id))
    return cells


def _direct_cell(b: _Builder, cfg: AuditConfig, sl: _Slice) -> Cell:
    """The no-reconstruction arm: diagnostic models trained on the degraded inputs, and their cell."""
    ev = sl.evaluation
    dm_ids = {
        t: b.add("direct_model", [sl.cohort_id, sl.deg_id], cohort=_key(sl.cohort_id), degrade=_key(sl.deg_id),
                 task=t, arch=tc["arch"], params=tc["params"], seed=sl.seed, input=cfg.direct.input,
                 threshold_policy=ev.threshold_policy, target_sensitivity=ev.target_sensitivity,
                 inputs=sl.task_inputs[t])
        for t, tc in sorted(sl.tasks.items())
    }
    nan = float("nan")
    cell_id, score_id = _score_step(b, "direct_score", [*sl.score_deps(), *dm_ids.values()], **sl.cell_fields(),
                                    reconstructor="direct", arm="direct", mitigation="none",
                                    mitigation_strength=nan, direct_models={t: _key(s) for t, s in dm_ids.items()},
                                    input=cfg.direct.input)
    return sl.cell(cell_id, "direct", "direct", "none", nan, score_id)


def _aligned_cell(b: _Builder, cfg: AuditConfig, sl: _Slice) -> Cell:
    """The aligned direct arm (``direct.alignment: latent``): per task a model trained on the degraded
    inputs with an alignment loss to the clean model's latent, and its cell (``direct-aligned``)."""
    ev, d = sl.evaluation, cfg.direct
    alignment = {"loss": d.alignment_loss, "weight": float(d.alignment_weight),
                 "temperature": float(d.alignment_temperature)}
    am_ids = {
        t: b.add("aligned_model", [sl.cohort_id, sl.deg_id, sl.task_ids[t]], cohort=_key(sl.cohort_id),
                 degrade=_key(sl.deg_id), task=t, arch=tc["arch"], params=tc["params"], seed=sl.seed,
                 input=d.input, teacher=_key(sl.task_ids[t]), alignment=alignment,
                 threshold_policy=ev.threshold_policy, target_sensitivity=ev.target_sensitivity,
                 inputs=sl.task_inputs[t])
        for t, tc in sorted(sl.tasks.items())
    }
    nan = float("nan")
    cell_id, score_id = _score_step(b, "aligned_score", [*sl.score_deps(), *am_ids.values()], **sl.cell_fields(),
                                    reconstructor=ALIGNED, arm="direct", mitigation="none",
                                    mitigation_strength=nan, direct_models={t: _key(s) for t, s in am_ids.items()},
                                    input=d.input)
    return sl.cell(cell_id, ALIGNED, "direct", "none", nan, score_id)


def build_plan(cfg: AuditConfig, digests: InputDigests | None = None) -> Plan:
    """Expand ``cfg`` into cells and steps (no work is done; no user code is called).

    ``digests`` supplies the content digests of the external files steps read (a fresh in-memory
    :class:`~reconaudit.engine.inputs.InputDigests` when omitted: the keys are the same, only the
    hashing is not cached).
    """
    digests = digests if digests is not None else InputDigests()
    b = _Builder()
    cells: list[Cell] = []
    ev = _evaluation_spec(cfg)
    for cc in cfg.cohorts:
        cohort_id = _cohort_step(b, cc, digests)
        # no diagnostic model: a reconstruction-quality audit (no task_model, predict_clean, direct arm)
        tasks = cohort_tasks(cc)
        task_inputs = {t: digests.of_params(tc["params"]) for t, tc in tasks.items()}
        for seed in cfg.seeds:
            task_ids = _task_model_steps(b, cohort_id, tasks, task_inputs, seed, ev)
            clean_id = _predict_clean_step(b, cohort_id, task_ids, ev)
            for dc in cc.degradations:
                for level in dc.levels:
                    deg_id = _degrade_step(b, cohort_id, dc, float(level), seed)
                    sl = _Slice(cc, seed, dc.name, float(level), cohort_id, deg_id, tasks, task_inputs, task_ids,
                                clean_id, ev)
                    for rc in cfg.reconstructors:
                        cells.extend(_reconstructor_cells(b, cfg, sl, rc, digests))
                    if cfg.direct.enabled and tasks:
                        cells.append(_direct_cell(b, cfg, sl))
                        if cfg.direct.alignment == "latent":
                            cells.append(_aligned_cell(b, cfg, sl))
    return Plan(cells=cells, steps=b.steps, digests=digests)
