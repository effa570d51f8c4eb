"""Expand a config into a grid of cells and a graph of content-addressed steps.

A *cell* is one point of the grid cohort × degradation × level × reconstructor × mitigation × seed
(plus the direct arm: cohort × degradation × level × seed).  Each cell is a chain of *steps*;
a step's key hashes its kind, a version and every input and setting it depends on (including the
keys of the steps it reads), so two cells that share a step (the same diagnostic model, the same
degraded data) share its key and compute it once, and changing one setting changes only the keys
of the steps downstream of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reconaudit.engine.config import AuditConfig, ReconstructorConfig
from reconaudit.engine.inputs import InputDigests, cohort_input_files
from reconaudit.engine.store import content_key

# Bump a version when a step's code changes what it writes: its artifacts are then recomputed.
# Version 2: keys hash the contents of the external files a step reads (``spec["inputs"]``).
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
}
STEP_KINDS = tuple(STEP_VERSIONS)
#: The ``task`` of the cells of a cohort audited without any diagnostic model (``tasks: none``).
NO_TASK = "none"


@dataclass(frozen=True)
class Step:
    """One unit of work: ``kind`` names the function, ``spec`` holds everything it reads."""

    kind: str
    key: str
    spec: dict = field(hash=False, compare=False)
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

    def add(self, kind: str, spec: dict, deps: list[str] | tuple[str, ...] = ()) -> str:
        key = content_key(kind, spec, STEP_VERSIONS[kind])
        step = Step(kind, key, spec, tuple(dict.fromkeys(deps)))
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


def build_plan(cfg: AuditConfig, digests: InputDigests | None = None) -> Plan:
    """Expand ``cfg`` into cells and steps (no work is done; no user code is called).

    ``digests`` supplies the content digests of the external files steps read (a fresh in-memory
    :class:`~reconaudit.engine.inputs.InputDigests` when omitted: the keys are the same, only the
    hashing is not cached).
    """
    from reconaudit.mitigation import MITIGATIONS

    digests = digests if digests is not None else InputDigests()
    b = _Builder()
    cells: list[Cell] = []
    ev = cfg.evaluation
    eval_spec = {
        "threshold_policy": ev.threshold_policy,
        "target_sensitivity": ev.target_sensitivity,
        "rechoose_on_test": ev.rechoose_on_test,
        "roi": ev.roi,
        "examples": ev.examples,
    }
    for cc in cfg.cohorts:
        cohort_id = b.add("cohort", {"name": cc.name, "params": cc.params, "data_seed": cc.data_seed,
                                     "inputs": digests.of_paths(cohort_input_files(cc.name, cc.params))})
        tasks = cohort_tasks(cc)
        task_inputs = {t: digests.of_params(tc["params"]) for t, tc in tasks.items()}
        # no diagnostic model: a reconstruction-quality audit (no task_model, predict_clean, direct arm)
        task_label = "+".join(sorted(tasks)) or NO_TASK
        for seed in cfg.seeds:
            task_ids = {
                t: b.add(
                    "task_model",
                    {
                        "cohort": _key(cohort_id),
                        "task": t,
                        "arch": tc["arch"],
                        "params": tc["params"],
                        "seed": seed,
                        "threshold_policy": ev.threshold_policy,
                        "target_sensitivity": ev.target_sensitivity,
                        "inputs": task_inputs[t],
                    },
                    [cohort_id],
                )
                for t, tc in sorted(tasks.items())
            }
            clean_id = None
            if tasks:
                clean_id = b.add(
                    "predict_clean",
                    {"cohort": _key(cohort_id), "task_models": {t: _key(s) for t, s in task_ids.items()},
                     "roi": ev.roi},
                    [cohort_id, *task_ids.values()],
                )
            for dc in cc.degradations:
                for level in dc.levels:
                    deg_id = b.add(
                        "degrade",
                        {
                            "cohort": _key(cohort_id),
                            "degradation": dc.name,
                            "level": float(level),
                            "params": dc.params,
                            "seed": seed,
                        },
                        [cohort_id],
                    )
                    common = {
                        "cohort_name": cc.name,
                        "task": task_label,
                        "degradation": dc.name,
                        "level": float(level),
                        "seed": seed,
                        "cohort": _key(cohort_id),
                        "degrade": _key(deg_id),
                        "task_models": {t: _key(s) for t, s in task_ids.items()},
                        "predict_clean": _key(clean_id) if clean_id else None,
                        "evaluation": eval_spec,
                    }
                    base_deps = [cohort_id, deg_id, *([clean_id] if clean_id else []), *task_ids.values()]
                    for rc in cfg.reconstructors:
                        fit_inputs, rec_inputs = _recon_inputs(rc, digests)
                        base_fit = b.add(
                            "fit_recon",
                            {
                                "cohort": _key(cohort_id),
                                "degrade": _key(deg_id),
                                "reconstructor": rc.name,
                                "params": rc.params,
                                "seed": seed,
                                "mitigation": None,
                                "inputs": fit_inputs,
                            },
                            [cohort_id, deg_id],
                        )
                        variants: list[tuple[str, float, str]] = [("none", float("nan"), base_fit)]
                        for mc in cfg.mitigations:
                            if not _applies(mc, cc.name, level, rc):
                                continue
                            for strength in mc.strengths:
                                fine_tune = MITIGATIONS[mc.name].fine_tunes
                                fit_deps = [cohort_id, deg_id, *task_ids.values()]
                                if fine_tune:
                                    fit_deps.append(base_fit)
                                fit_id = b.add(
                                    "fit_recon",
                                    {
                                        "cohort": _key(cohort_id),
                                        "degrade": _key(deg_id),
                                        "reconstructor": rc.name,
                                        "params": rc.params,
                                        "seed": seed,
                                        "mitigation": {
                                            "name": mc.name,
                                            "strength": float(strength),
                                            "params": mc.params,
                                            "base": _key(base_fit) if fine_tune else None,
                                            "task_models": {t: _key(s) for t, s in task_ids.items()},
                                        },
                                        "inputs": fit_inputs,
                                    },
                                    fit_deps,
                                )
                                variants.append((mc.name, float(strength), fit_id))
                        for mname, strength, fit_id in variants:
                            rec_id = b.add(
                                "reconstruct",
                                {
                                    "cohort": _key(cohort_id),
                                    "degrade": _key(deg_id),
                                    "fit": _key(fit_id),
                                    "reconstructor": rc.name,
                                    "params": rc.params,
                                    "samples": rc.samples,
                                    "seed": seed,
                                    "inputs": rec_inputs,
                                },
                                [cohort_id, deg_id, fit_id],
                            )
                            cell_spec = {
                                **common,
                                "reconstructor": rc.display,
                                "arm": "reconstruct",
                                "mitigation": mname,
                                "mitigation_strength": strength,
                                "reconstruct": _key(rec_id),
                            }
                            cell_id = content_key("cell", cell_spec)[:12]
                            score_id = b.add("score", {**cell_spec, "cell_id": cell_id}, [*base_deps, rec_id])
                            cells.append(
                                Cell(cell_id, cc.name, dc.name, float(level), rc.display, "reconstruct",
                                     mname, strength, seed, score_id, task_label)
                            )
                    if cfg.direct.enabled and tasks:
                        dm_ids = {
                            t: b.add(
                                "direct_model",
                                {
                                    "cohort": _key(cohort_id),
                                    "degrade": _key(deg_id),
                                    "task": t,
                                    "arch": tc["arch"],
                                    "params": tc["params"],
                                    "seed": seed,
                                    "input": cfg.direct.input,
                                    "threshold_policy": ev.threshold_policy,
                                    "target_sensitivity": ev.target_sensitivity,
                                    "inputs": task_inputs[t],
                                },
                                [cohort_id, deg_id],
                            )
                            for t, tc in sorted(tasks.items())
                        }
                        cell_spec = {
                            **common,
                            "reconstructor": "direct",
                            "arm": "direct",
                            "mitigation": "none",
                            "mitigation_strength": float("nan"),
                            "direct_models": {t: _key(s) for t, s in dm_ids.items()},
                            "input": cfg.direct.input,
                        }
                        cell_id = content_key("cell", cell_spec)[:12]
                        score_id = b.add(
                            "direct_score", {**cell_spec, "cell_id": cell_id}, [*base_deps, *dm_ids.values()]
                        )
                        cells.append(
                            Cell(cell_id, cc.name, dc.name, float(level), "direct", "direct", "none",
                                 float("nan"), seed, score_id, task_label)
                        )
    return Plan(cells=cells, steps=b.steps, digests=digests)
