"""Cohorts: built-in synthetic cohorts and loaders for real dataset layouts.

>>> from reconaudit.cohorts import make_cohort
>>> cohort = make_cohort("chest-xray", n_studies=40, size=32)   # doctest: +SKIP

Every cohort is a :class:`~reconaudit.cohorts.base.Cohort`; ``COHORTS`` lists what is known, with
the module that builds it, its parameter model and a one-line description.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from reconaudit.cohorts.base import SPLITS, Cohort, CohortError, assign_splits_by_patient


@dataclass(frozen=True)
class CohortEntry:
    """A known cohort: where its builder lives and what it offers."""

    name: str
    module: str
    builder: str
    params_model: str
    kind: str  # "synthetic" or "loader"
    modality: str
    tasks: tuple[str, ...]
    group_attributes: str
    description: str

    def load_builder(self):
        mod = importlib.import_module(self.module)
        return getattr(mod, self.builder), getattr(mod, self.params_model)


COHORTS: dict[str, CohortEntry] = {
    e.name: e
    for e in [
        CohortEntry(
            "chest-xray", "reconaudit.cohorts.chest_xray", "generate_chest_xray", "ChestXrayParams",
            "synthetic", "xray", ("classification",), "sex, age_band, site",
            "synthetic chest radiographs (attenuation maps) with 5 findings and bias knobs",
        ),
        CohortEntry(
            "brain-glioma", "reconaudit.cohorts.brain_glioma", "generate_brain_glioma", "BrainGliomaParams",
            "synthetic", "mri", ("segmentation", "classification"), "sex, age_band",
            "MNI152 brain slices with gliomas grown by a Fisher-Kolmogorov model; masks, grade, type",
        ),
        CohortEntry(
            "chexpert", "reconaudit.cohorts.chexpert", "load_chexpert", "ChexpertParams",
            "loader", "xray", ("classification",), "sex, age_band (+ race)",
            "CheXpert CSV layout (14 findings, uncertain-label policy, optional demographics)",
        ),
        CohortEntry(
            "ucsf-pdgm", "reconaudit.cohorts.ucsf_pdgm", "load_ucsf_pdgm", "UcsfPdgmParams",
            "loader", "mri", ("segmentation", "classification"), "sex, age_band",
            "UCSF-PDGM NIfTI folders + metadata CSV (FLAIR, tumour segmentation, WHO grade)",
        ),
        CohortEntry(
            "fastmri", "reconaudit.cohorts.fastmri", "load_fastmri", "FastmriParams",
            "loader", "mri", ("classification",), "from an optional metadata CSV",
            "fastMRI single-coil HDF5 (measured k-space), optional labels and metadata CSVs",
        ),
        CohortEntry(
            "dicom", "reconaudit.cohorts.dicom", "load_dicom", "DicomParams",
            "loader", "xray|mri", ("classification",), "sex, age_band (from the DICOM headers)",
            "a folder of DICOM files (any names, recursive); patient, sex and age from the headers",
        ),
        CohortEntry(
            "manifest", "reconaudit.cohorts.manifest", "load_manifest", "ManifestParams",
            "loader", "xray|mri", ("classification", "segmentation"), "any columns you name",
            "generic CSV/Parquet manifest: image path, patient id, split, targets, group columns",
        ),
    ]
}


def _entry(name: str) -> CohortEntry:
    if name not in COHORTS:
        raise ValueError(f"unknown cohort {name!r}; known cohorts: {', '.join(COHORTS)}")
    return COHORTS[name]


def validate_cohort_params(name: str, params: dict) -> BaseModel:
    """Validate ``params`` for cohort ``name``; raise ValueError naming the bad key."""
    _, model = _entry(name).load_builder()
    try:
        return model.model_validate(params)
    except ValidationError as e:
        bad = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        allowed = ", ".join(model.model_fields)
        raise ValueError(f"cohort {name!r} params: {bad} (allowed keys: {allowed})") from None


def supported_tasks(name: str, params: dict) -> tuple[str, ...]:
    """The tasks cohort ``name`` offers with ``params``: the loader's ``supported_tasks(params)`` when it
    has one (e.g. fastMRI offers classification only with a labels CSV), else the registry's list."""
    entry = _entry(name)
    hook = getattr(importlib.import_module(entry.module), "supported_tasks", None)
    return tuple(hook(params)) if hook is not None else entry.tasks


def make_cohort(name: str, **params: object) -> Cohort:
    """Build or load the cohort ``name`` with ``params`` (validated by its parameter model)."""
    builder, _ = _entry(name).load_builder()
    validated = validate_cohort_params(name, dict(params))
    return builder(validated)


__all__ = [
    "COHORTS",
    "SPLITS",
    "Cohort",
    "CohortEntry",
    "CohortError",
    "assign_splits_by_patient",
    "make_cohort",
    "supported_tasks",
    "validate_cohort_params",
]
