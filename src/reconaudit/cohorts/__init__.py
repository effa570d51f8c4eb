"""Cohorts: built-in synthetic cohorts and loaders for real dataset layouts.

>>> from reconaudit.cohorts import make_cohort
>>> cohort = make_cohort("chest-xray", n_studies=40, size=32)   # doctest: +SKIP

Every cohort is a :class:`~reconaudit.cohorts.base.Cohort`; :data:`COHORTS` maps config names to
:class:`~reconaudit.cohorts.base.CohortBuilder` classes, each declaring its modality, tasks,
group attributes, description and parameter model.  To add a cohort: one module with a
``CohortBuilder`` subclass, one line here.
"""

from __future__ import annotations

import importlib

from reconaudit.arrays import DEFAULT_SHARD_STUDIES
from reconaudit.cohorts.base import SPLITS, Cohort, CohortBuilder, CohortError, assign_splits_by_patient
from reconaudit.cohorts.brain_glioma import BrainGliomaCohort
from reconaudit.cohorts.chest_xray import ChestXrayCohort
from reconaudit.cohorts.chexpert import ChexpertCohort
from reconaudit.cohorts.dicom import DicomCohort
from reconaudit.cohorts.fastmri import FastmriCohort
from reconaudit.cohorts.manifest import ManifestCohort
from reconaudit.cohorts.ucsf_pdgm import UcsfPdgmCohort
from reconaudit.validation import validate_params

COHORTS: dict[str, type[CohortBuilder]] = {
    ChestXrayCohort.name: ChestXrayCohort,
    BrainGliomaCohort.name: BrainGliomaCohort,
    ChexpertCohort.name: ChexpertCohort,
    UcsfPdgmCohort.name: UcsfPdgmCohort,
    FastmriCohort.name: FastmriCohort,
    DicomCohort.name: DicomCohort,
    ManifestCohort.name: ManifestCohort,
}
"""Registry: config name -> :class:`CohortBuilder` (one line per cohort)."""


def _builder(name: str) -> type[CohortBuilder]:
    if name not in COHORTS:
        raise ValueError(f"unknown cohort {name!r}; known cohorts: {', '.join(COHORTS)}")
    return COHORTS[name]


def validate_cohort_params(name: str, params: dict):
    """Validate ``params`` for cohort ``name``; raise ValueError naming the bad key."""
    return validate_params(_builder(name).Params, params, where=f"cohort {name!r} params")


def supported_tasks(name: str, params: dict) -> tuple[str, ...]:
    """The tasks cohort ``name`` offers with ``params``: the loader's ``supported_tasks(params)`` when it
    has one (e.g. fastMRI offers classification only with a labels CSV), else the registry's list."""
    entry = _builder(name)
    hook = getattr(importlib.import_module(entry.__module__), "supported_tasks", None)
    return tuple(hook(params)) if hook is not None else entry.tasks


def make_cohort(name: str, **params: object) -> Cohort:
    """Build or load the cohort ``name`` with ``params`` (validated by its parameter model)."""
    return _builder(name).build(validate_cohort_params(name, dict(params)))


def write_cohort(name: str, directory, *, shard_studies: int = DEFAULT_SHARD_STUDIES, **params: object) -> None:
    """Write the cohort ``name`` with ``params`` to ``directory`` shard by shard (``CohortBuilder.write``);
    :meth:`Cohort.load` reads it back lazily."""
    _builder(name).write(validate_cohort_params(name, dict(params)), directory, shard_studies=shard_studies)


__all__ = [
    "COHORTS",
    "SPLITS",
    "Cohort",
    "CohortBuilder",
    "CohortError",
    "assign_splits_by_patient",
    "make_cohort",
    "write_cohort",
    "supported_tasks",
    "validate_cohort_params",
]
