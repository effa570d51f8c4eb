"""Typed step specs: one frozen dataclass per step kind, with exactly the fields its step reads.

A step's content key is ``content_key(kind, spec.as_dict(), version)``; :meth:`StepSpec.as_dict`
is :func:`dataclasses.asdict` (nested specs become nested dicts, ``None`` stays ``None``), so the
key hashes the same JSON as the plain dict specs of earlier versions and existing stores stay
valid.  Fields that reference another step hold that step's key (``cohort``, ``degrade``, ``fit``,
``reconstruct``, ``predict_clean``, the ``task_models`` / ``direct_models`` maps of task to key).
Build a spec with :func:`make_spec`: a missing or unknown field is an error naming the step kind
and the field, raised when the plan is built rather than inside a worker.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar


class SpecError(TypeError):
    """A step spec was built with a missing or unknown field (a bug in the plan, not in the config)."""


@dataclass(frozen=True)
class StepSpec:
    """Base of every step spec; ``kind`` names the step function (``engine/steps.py``)."""

    kind: ClassVar[str] = ""

    def as_dict(self) -> dict[str, Any]:
        """The spec as the plain dict its content key hashes (nested specs as dicts)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CohortSpec(StepSpec):
    """Build or load a cohort: its registered ``name``, builder ``params``, ``data_seed`` and the
    digests of the external files it reads (``inputs``: path -> digest)."""

    kind: ClassVar[str] = "cohort"
    name: str
    params: dict
    data_seed: int
    inputs: dict


@dataclass(frozen=True)
class TaskModelSpec(StepSpec):
    """Train diagnostic model ``task``/``arch`` on the clean train split of cohort (key) ``cohort``;
    thresholds by ``threshold_policy`` (``target_sensitivity`` when the policy needs one)."""

    kind: ClassVar[str] = "task_model"
    cohort: str
    task: str
    arch: str
    params: dict
    seed: int
    threshold_policy: str
    target_sensitivity: float | None
    inputs: dict


@dataclass(frozen=True)
class PredictCleanSpec(StepSpec):
    """Apply the frozen ``task_models`` (task -> key) to the clean test images of ``cohort``."""

    kind: ClassVar[str] = "predict_clean"
    cohort: str
    task_models: dict
    roi: bool


@dataclass(frozen=True)
class DegradeSpec(StepSpec):
    """Degrade every study of ``cohort`` with ``degradation`` at ``level`` (per-study seeds)."""

    kind: ClassVar[str] = "degrade"
    cohort: str
    degradation: str
    level: float
    params: dict
    seed: int


@dataclass(frozen=True)
class MitigationSpec:
    """The mitigation of a ``fit_recon`` step: strategy ``name`` at ``strength`` with ``params``;
    ``base`` is the key of the unmitigated fit it fine-tunes (``None``: trained from scratch);
    ``task_models`` the frozen diagnostic models (task -> key) its penalties read."""

    name: str
    strength: float
    params: dict
    base: str | None
    task_models: dict


@dataclass(frozen=True)
class FitReconSpec(StepSpec):
    """Fit ``reconstructor`` with ``params`` on the (degraded ``degrade``, clean) train pairs of
    ``cohort``, optionally with a ``mitigation``."""

    kind: ClassVar[str] = "fit_recon"
    cohort: str
    degrade: str
    reconstructor: str
    params: dict
    seed: int
    mitigation: MitigationSpec | None
    inputs: dict


@dataclass(frozen=True)
class ReconstructSpec(StepSpec):
    """Reconstruct the degraded test studies with the fitted weights ``fit`` (``samples`` draws
    per study for a stochastic reconstructor)."""

    kind: ClassVar[str] = "reconstruct"
    cohort: str
    degrade: str
    fit: str
    reconstructor: str
    params: dict
    samples: int
    seed: int
    inputs: dict


@dataclass(frozen=True)
class EvaluationSpec:
    """The evaluation settings a scoring step reads (``evaluation`` in the config)."""

    threshold_policy: str
    target_sensitivity: float | None
    rechoose_on_test: bool
    roi: bool
    examples: int


@dataclass(frozen=True)
class _CellRecordsSpec(StepSpec):
    """The fields every records step shares: its record key columns first (``cohort_name`` is the
    cohort's name, ``cohort`` its artifact key), then the clean models and the evaluation settings."""

    cohort_name: str
    task: str
    degradation: str
    level: float
    seed: int
    cohort: str
    degrade: str
    task_models: dict
    predict_clean: str | None
    evaluation: EvaluationSpec
    reconstructor: str
    arm: str
    mitigation: str
    mitigation_strength: float


@dataclass(frozen=True)
class ScoreSpec(_CellRecordsSpec):
    """Records of one reconstruct-then-diagnose cell (the fields of :class:`_CellRecordsSpec`, then
    the ``reconstruct`` artifact and the cell id)."""

    kind: ClassVar[str] = "score"
    reconstruct: str
    cell_id: str


@dataclass(frozen=True)
class DirectModelSpec(StepSpec):
    """The no-reconstruction arm's model: ``task``/``arch`` trained on the degraded ``input``
    representation (``image`` or k-space channels) of ``degrade``."""

    kind: ClassVar[str] = "direct_model"
    cohort: str
    degrade: str
    task: str
    arch: str
    params: dict
    seed: int
    input: str
    threshold_policy: str
    target_sensitivity: float | None
    inputs: dict


@dataclass(frozen=True)
class DirectScoreSpec(_CellRecordsSpec):
    """Records of one direct-arm cell: ``direct_models`` (task -> key) applied to the degraded
    ``input``; ``task_models`` are the clean models (clean baseline, example figure)."""

    kind: ClassVar[str] = "direct_score"
    #: the step kind of the models ``direct_models`` names (not a field: not in the key)
    model_kind: ClassVar[str] = "direct_model"
    direct_models: dict
    input: str
    cell_id: str


@dataclass(frozen=True)
class AlignedModelSpec(DirectModelSpec):
    """The aligned direct arm's model (k-MTR): the fields of :class:`DirectModelSpec`, trained with its
    task loss plus an ``alignment`` loss (``loss``, ``weight``, ``temperature``) to the latent of the
    frozen clean model ``teacher`` (a ``task_model`` key) on the clean images.  (A key hashes the spec
    as a dict with sorted keys, so field order does not enter it.)"""

    kind: ClassVar[str] = "aligned_model"
    teacher: str
    alignment: dict


@dataclass(frozen=True)
class AlignedScoreSpec(DirectScoreSpec):
    """Records of one aligned direct-arm cell: the fields of :class:`DirectScoreSpec`, with
    ``direct_models`` naming ``aligned_model`` steps."""

    kind: ClassVar[str] = "aligned_score"
    model_kind: ClassVar[str] = "aligned_model"


#: The spec class of every step kind.
SPECS: dict[str, type[StepSpec]] = {
    cls.kind: cls
    for cls in (CohortSpec, TaskModelSpec, PredictCleanSpec, DegradeSpec, FitReconSpec, ReconstructSpec,
                ScoreSpec, DirectModelSpec, DirectScoreSpec, AlignedModelSpec, AlignedScoreSpec)
}


def field_names(kind: str) -> tuple[str, ...]:
    """The fields of step kind ``kind``'s spec, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(SPECS[kind]))


def make_spec(kind: str, **fields: Any) -> StepSpec:
    """The typed spec of a step of ``kind``; a missing or unknown field raises :class:`SpecError`
    naming the kind and the field (and the fields the kind has)."""
    if kind not in SPECS:
        raise SpecError(f"unknown step kind {kind!r}; step kinds: {', '.join(SPECS)}")
    names = field_names(kind)
    unknown = [k for k in fields if k not in names]
    missing = [k for k in names if k not in fields]
    if unknown or missing:
        what = "; ".join(
            [f"unknown field {k!r}" for k in unknown] + [f"missing field {k!r}" for k in missing]
        )
        raise SpecError(f"step kind {kind!r}: {what}; its fields are: {', '.join(names)}")
    return SPECS[kind](**fields)
