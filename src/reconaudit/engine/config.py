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

BUNDLED = ("quickstart", "paper-xray", "paper-mri", "mitigation", "generative")


class ConfigError(ValueError):
    """The config is invalid; the message names the key path, what was wrong and the allowed values."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DegradationConfig(_Strict):
    """One degradation of a cohort, swept over ``levels``."""

    name: str = Field(description="degradation name: lowdose-xray, kspace, masking")
    levels: list[float] = Field(min_length=1, description="severity levels (photons, acceleration, ratio)")
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the operator")


class TaskConfig(_Strict):
    """A diagnostic model of one kind for a cohort (trained on clean images)."""

    arch: str = "small-cnn"
    params: dict[str, Any] = Field(default_factory=dict)


class CohortConfig(_Strict):
    """A cohort of the audit: where its studies come from and what is done to them."""

    name: str = Field(description="cohort name, see `reconaudit cohorts`")
    params: dict[str, Any] = Field(default_factory=dict, description="generator or loader parameters")
    data_seed: int = 0
    tasks: dict[Literal["classification", "segmentation"], TaskConfig] = Field(
        default_factory=dict, description="diagnostic models; empty = every task the cohort supports"
    )
    degradations: list[DegradationConfig] = Field(min_length=1)


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

    name: Literal["reweighting", "eodd", "adversarial"]
    strengths: list[float] = Field(default_factory=lambda: [1.0], description="lambda values to sweep")
    params: dict[str, Any] = Field(default_factory=dict)
    reconstructors: list[str] | None = Field(default=None, description="reconstructor labels (default: all trainable)")
    cohorts: list[str] | None = None
    levels: list[float] | None = None


class DirectConfig(_Strict):
    """The no-reconstruction arm: a diagnostic model trained on the degraded inputs themselves."""

    enabled: bool = True
    input: Literal["image", "kspace"] = "image"


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
    min_group_size: int = Field(default=5, ge=1)
    seed: int = 0


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
    resources: dict[str, ResourceConfig] = Field(
        default_factory=dict, description="per step kind: fit_recon, task_model, ... (default 1 CPU)"
    )


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
            if r.display == "direct":
                raise ValueError("'direct' is reserved for the no-reconstruction arm; choose another label")
            seen.add(r.display)
        return self


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see README 'Config format')"
        elif e["type"] == "literal_error":
            msg = f"{msg}; got {e.get('input')!r}"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


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


def load_config(source: str | Path | dict) -> AuditConfig:
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

    validate_components(cfg, where)
    return cfg


def config_to_dict(cfg: AuditConfig) -> dict:
    """The resolved config as plain JSON-able data."""
    return cfg.model_dump(mode="json")
