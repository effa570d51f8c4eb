"""The audit config: a YAML file validated by pydantic before any work starts.

A typo in a key, a wrong type or an unknown name fails at load time with a message that names the
key path (e.g. ``reconstructors.1.name``) and the allowed values.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from reconaudit.arrays import DEFAULT_SHARD_STUDIES

BUNDLED = ("quickstart", "paper-xray", "paper-mri", "mitigation", "multicoil", "generative", "companions")


class ConfigError(ValueError):
    """The config is invalid; the message names the key path, what was wrong and the allowed values."""


def _no_duplicates(values: list, what: str) -> list:
    """``values`` unchanged, or a ValueError naming the repeated value (a repeated grid entry would
    count every study twice in the tables)."""
    seen: set = set()
    for v in values:
        key = float(v) if isinstance(v, int | float) else v
        if key in seen:
            shown = f"{v:g}" if isinstance(v, float) else repr(v)
            raise ValueError(f"{what} {shown} is listed twice; each {what} may appear once (a repeat would count "
                             "every study twice)")
        seen.add(key)
    return values


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DegradationConfig(_Strict):
    """One degradation of a cohort, swept over ``levels``."""

    name: str = Field(description="degradation name: lowdose-xray, kspace, masking")
    levels: list[float] = Field(min_length=1, description="severity levels (photons, acceleration, ratio)")
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the operator")

    @field_validator("levels")
    @classmethod
    def _unique_levels(cls, v: list[float]) -> list[float]:
        return _no_duplicates(v, "level")


class TaskConfig(_Strict):
    """A diagnostic model of one kind for a cohort (trained on clean images)."""

    arch: str = "small-cnn"
    params: dict[str, Any] = Field(default_factory=dict)


class CohortConfig(_Strict):
    """A cohort of the audit: where its studies come from and what is done to them."""

    name: str = Field(description="cohort name, see `reconaudit cohorts`")
    params: dict[str, Any] = Field(default_factory=dict, description="generator or loader parameters")
    data_seed: int = 0
    tasks: dict[Literal["classification", "segmentation", "regression"], TaskConfig] | Literal["none"] = Field(
        default_factory=dict,
        description="diagnostic models; {} = every task the cohort supports; none (or []) = no diagnostic "
        "model: a reconstruction-quality audit; a list of task names = those tasks with default models",
    )
    degradations: list[DegradationConfig] = Field(min_length=1)

    @field_validator("tasks", mode="before")
    @classmethod
    def _task_list(cls, v: Any) -> Any:
        """``[]`` or ``null`` → ``"none"``; ``[classification, ...]`` → those tasks with default models."""
        if v is None:
            return "none"
        if isinstance(v, list | tuple):
            if not v:
                return "none"
            default = {"classification": "small-cnn", "segmentation": "unet", "regression": "small-cnn"}
            return {t: {"arch": default.get(t, "small-cnn")} if isinstance(t, str) else t for t in v}
        return v

    @property
    def recon_only(self) -> bool:
        """True when the config asks for no diagnostic model (``tasks: none``)."""
        return self.tasks == "none"

    @property
    def task_configs(self) -> dict[str, TaskConfig]:
        """The configured diagnostic models (empty for ``tasks: none`` and for "every task")."""
        return {} if self.tasks == "none" else dict(self.tasks)


class ReconstructorConfig(_Strict):
    """A reconstructor to compare, with its hyperparameters."""

    name: str
    label: str | None = Field(default=None, description="display name (default: name)")
    params: dict[str, Any] = Field(default_factory=dict)
    samples: int = Field(default=1, ge=1, description="reconstructions per study (stochastic models)")

    @property
    def display(self) -> str:
        return self.label or self.name


class MitigationConfig(_Strict):
    """A bias-mitigation strategy applied while fitting some reconstructors."""

    name: str = Field(description="a strategy of reconaudit.mitigation.MITIGATIONS (checked by validate_components)")
    strengths: list[float] = Field(default_factory=lambda: [1.0], min_length=1, description="lambda values to sweep")
    params: dict[str, Any] = Field(default_factory=dict)
    reconstructors: list[str] | None = Field(default=None, description="reconstructor labels (default: all trainable)")
    cohorts: list[str] | None = None
    levels: list[float] | None = None

    @field_validator("strengths")
    @classmethod
    def _unique_strengths(cls, v: list[float]) -> list[float]:
        return _no_duplicates(v, "strength")


class DirectConfig(_Strict):
    """The no-reconstruction arm: a diagnostic model trained on the degraded inputs themselves."""

    enabled: bool = True
    input: Literal["image", "kspace"] = "image"
    alignment: Literal["none", "latent"] = Field(
        default="none",
        description="latent: also train the direct model with an alignment loss to the frozen clean model's "
        "latent (k-MTR), reported as reconstructor 'direct-aligned' beside the unaligned 'direct'",
    )
    alignment_loss: Literal["cosine", "mse", "infonce"] = Field(
        default="cosine", description="cosine or mse distillation, or the contrastive InfoNCE of k-MTR")
    alignment_weight: float = Field(default=1.0, gt=0, description="lambda of the alignment term")
    alignment_temperature: float = Field(default=0.1, gt=0, description="InfoNCE temperature tau")


class EvaluationConfig(_Strict):
    """How diagnostic models are applied and what is kept for figures."""

    threshold_policy: Literal["sens_eq_spec", "youden", "target_sensitivity"] = "sens_eq_spec"
    target_sensitivity: float | None = None
    rechoose_on_test: bool = Field(
        default=False, description="re-choose thresholds on each test set (hides calibration shifts)"
    )
    roi: bool = Field(default=False, description="image quality within the body/brain mask")
    examples: int = Field(default=4, ge=0, description="example studies kept per cell for the report")
    batch_size: int = Field(default=64, ge=1)


class AnalysisConfig(_Strict):
    """Statistics of the report."""

    n_resamples: int = Field(default=1000, ge=10)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    correction: Literal["holm", "bh"] = "holm"
    ci: Literal["percentile", "bca"] = "percentile"
    min_group_size: int = Field(default=5, ge=1, description="studies per group (a study-count guard)")
    min_group_patients: int = Field(
        default=5, ge=1, description="patients per group; a group metric with a smaller group is not estimable"
    )
    min_group_positives: int = Field(
        default=2, ge=1,
        description="patients with a positive (and with a negative) study per group, for TPR/FPR/AUROC metrics",
    )
    max_undefined_share: float = Field(
        default=0.01, ge=0, le=1,
        description="above this share of undefined bootstrap resamples a change is not estimable (no p-value)",
    )
    definitions: Literal["package", "study"] = Field(
        default="package",
        description="metric definitions: 'package' (EODD = max of the TPR and FPR gaps, thresholds fixed on "
        "clean validation data) or 'study' (EODD = their mean, thresholds chosen per label on each arm's "
        "test set, segmentation SER = (1 - min Dice)/(1 - max Dice)); see docs/metrics.md",
    )
    seed: int = 0
    # the fairness audit in depth (docs/report.md)
    intersections: list[list[str]] | None = Field(
        default=None, description="attribute combinations, e.g. [[sex, age_band]]; default: a cohort's first two")
    calibration_bins: int = Field(default=10, ge=2)
    calibration_strategy: Literal["uniform", "quantile"] = "uniform"
    power_effect: float = Field(default=0.05, gt=0, description="bias change the sample-size planner plans for")

    @field_validator("intersections")
    @classmethod
    def _two_or_more(cls, v: list[list[str]] | None) -> list[list[str]] | None:
        for i, combo in enumerate(v or []):
            if len(combo) < 2 or len(set(combo)) != len(combo):
                raise ValueError(f"analysis.intersections[{i}]: expected two or more distinct group attributes, "
                                 f"got {combo}")
        return v


class ResourceConfig(_Strict):
    """Resources a step asks a cluster for."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory_gb: float | None = None


class ExecutionConfig(_Strict):
    """Where and how steps run."""

    executor: Literal["local", "ray"] = "local"
    workers: int = Field(default=1, ge=1)
    retries: int = Field(default=1, ge=0, description="extra attempts for a failing step")
    address: str | None = Field(default=None, description="Ray cluster address (ray executor)")
    store: str | None = Field(default=None, description="artifact store path or fsspec URL (default OUT/store)")
    mixed_precision: bool = False
    threads: int | None = Field(
        default=None, ge=1,
        description="torch threads of every step, whatever the executor or machine (CPU results depend on the "
                    "thread count in the last digits); default: the executor's share of the cores",
    )
    resources: dict[str, ResourceConfig] = Field(
        default_factory=dict, description="per step kind: fit_recon, task_model, ... (default 1 CPU)"
    )
    shard_studies: int = Field(
        default=DEFAULT_SHARD_STUDIES, ge=1,
        description="studies per shard of the on-disk study store and per batch of every streaming step "
                    "(degrade, predict, reconstruct, score): peak memory grows with it, not with the cohort. "
                    "Results do not depend on it, so it is not part of any step's key",
    )
    batch_studies: int | None = Field(
        default=None, ge=1,
        description="studies per compute batch of every streaming step; default each step's own (degrade 256, "
                    "reconstruct 32, predict 64). shard_studies must be a multiple of it (of 256 when unset) so "
                    "that batches fall at the same studies whatever the shard size: CPU results of a network "
                    "depend on its batch in the last digits",
    )
    shard_tasks: int = Field(
        default=1, ge=1,
        description="on Ray, split each degrade, reconstruct and score step into parallel shard tasks, at most "
                    "this many at a time (results identical to one worker; the step commits when every shard has)",
    )


    @model_validator(mode="after")
    def _shards_hold_whole_batches(self) -> ExecutionConfig:
        unit = self.batch_studies or 256
        if self.shard_studies % unit:
            what = "execution.batch_studies" if self.batch_studies else "the largest step batch (set batch_studies to change it)"
            raise ValueError(f"execution.shard_studies ({self.shard_studies}) must be a multiple of {what} ({unit}), "
                             f"so that compute batches fall at the same studies whatever the shard size")
        return self


class AuditConfig(_Strict):
    """The whole audit."""

    name: str = "audit"
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    device: str = "auto"
    cohorts: list[CohortConfig] = Field(min_length=1)
    reconstructors: list[ReconstructorConfig] = Field(min_length=1)
    mitigations: list[MitigationConfig] = Field(default_factory=list)
    direct: DirectConfig = Field(default_factory=DirectConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        return _no_duplicates(v, "seed")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu") and not v.startswith("cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {v!r}")
        return v

    @model_validator(mode="after")
    def _unique_labels(self) -> AuditConfig:
        seen: set[str] = set()
        for r in self.reconstructors:
            if r.display in seen:
                raise ValueError(f"reconstructor label {r.display!r} is used twice; give one a distinct `label`")
            if r.display in ("direct", "direct-aligned"):
                raise ValueError(f"{r.display!r} is reserved for the no-reconstruction arm; choose another label")
            seen.add(r.display)
        return self


def _format_validation_error(err: ValidationError, source: str) -> str:
    from reconaudit.validation import error_lines

    lines = error_lines(err, noun="key", allowed=list(AuditConfig.model_fields),
                        unknown_hint="check the spelling; see README 'Config format'")
    return "\n".join([f"invalid config {source}:", *(f"  {line}" for line in lines)])


def bundled_config_path(name: str) -> Path:
    """Path of a config shipped with the package (``quickstart``, ``paper-xray``, ...)."""
    res = resources.files("reconaudit") / "configs" / f"{name}.yaml"
    return Path(str(res))


def resolve_config_source(source: str | Path) -> Path:
    """A config file path, or the name of a bundled config."""
    p = Path(source)
    if p.exists():
        return p
    if str(source) in BUNDLED or bundled_config_path(str(source)).exists():
        path = bundled_config_path(str(source))
        if path.exists():
            return path
    raise ConfigError(f"config {str(source)!r} is neither a file nor a bundled config (bundled: {', '.join(BUNDLED)})")


def load_config(source: str | Path | dict, *, build_plugins: bool = True) -> AuditConfig:
    """Load and validate a config from a YAML file, a bundled name, or a dict.

    Validation goes two levels deep: the schema here, then every named component (cohort,
    degradation, reconstructor, task model, mitigation) checks its name and parameters, so nothing
    starts before the whole config is known to be valid.
    """
    if isinstance(source, dict):
        raw, where = source, "<dict>"
    else:
        path = resolve_config_source(source)
        where = str(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"config {where} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"config {where}: the top level must be a mapping of keys, got {type(raw).__name__}")
    try:
        cfg = AuditConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, where)) from None
    from reconaudit.engine.validate import validate_components

    validate_components(cfg, where, build_plugins=build_plugins)
    return cfg


def config_to_dict(cfg: AuditConfig) -> dict:
    """The resolved config as plain JSON-able data."""
    return cfg.model_dump(mode="json")
