"""Generate the chest X-ray cohort: draw, render in chunks, assemble the :class:`Cohort`."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from reconaudit.arrays import DEFAULT_SHARD_STUDIES
from reconaudit.cohorts.base import Cohort, CohortBuilder, CohortStream, collect_stream, write_stream
from reconaudit.cohorts.chest_xray.anatomy import draw_batch, render
from reconaudit.cohorts.chest_xray.card import _data_card
from reconaudit.cohorts.chest_xray.draws import _draw_cohort, _resolve
from reconaudit.cohorts.chest_xray.params import (
    LABELS,
    ChestXrayParams,
)
from reconaudit.progress import task

logger = logging.getLogger(__name__)


def chest_xray_table(params: ChestXrayParams | None = None, **overrides: Any) -> pd.DataFrame:
    """The study table of :func:`generate_chest_xray` (groups, splits, labels) without rendering images.

    Identical, row for row, to ``generate_chest_xray(params, **overrides).table``; cheap enough to
    study the label model (prevalence per group, co-occurrence, label noise) on many studies.
    """
    return _draw_cohort(_resolve(params, overrides))[1]


def generate_chest_xray(params: ChestXrayParams | None = None, **overrides: Any) -> Cohort:
    """Generate the synthetic chest X-ray cohort.

    Parameters
    ----------
    params:
        Full parameter set; ``None`` uses the defaults.
    **overrides:
        Fields of :class:`ChestXrayParams` that replace those of ``params`` (validated; an unknown
        key raises :class:`pydantic.ValidationError` naming it).  ``bias="none"`` given here still
        neutralises every knob that ``params`` did not set explicitly.

    Returns
    -------
    Cohort
        ``name="chest-xray"``, ``modality="xray"``, images (N, 1, H, W) float32 in [0, 1] (attenuation,
        so ``I ~ Poisson(photons exp(-mu_scale image))`` applies), a table with ``study_id``,
        ``patient_id``, ``split`` (by patient), ``sex``, ``age_band``, ``site``, ``age``, ``visit``,
        ``cardiothoracic_ratio``, the size of a present finding (``effusion_height``, ``nodule_radius``,
        ``pneumothorax_fraction`` in half-widths of the thorax frame; NaN when absent), the observed labels (float 1/0) and ``true_<label>`` columns, body
        masks as ``roi_masks``, the regions of the present findings as ``lesion_masks`` (see
        :func:`~reconaudit.cohorts.chest_xray.anatomy.render`), a generated data card and ``meta`` = the parameters.  Same
        parameters, same bits.

    Notes
    -----
    Finding k of a study is present when ``z_k < Phi^-1(p_k)`` with ``z = sqrt(rho) z_patient +
    sqrt(1 - rho) e``, ``z_patient, e ~ N(0, R_s)``, ``R_s = (1 - s) I + s R`` (Gaussian copula: the
    marginal prevalence is exactly ``p_k``).  The observed label is 0 with probability ``q_g`` (the
    group's miss rate) when the finding is present.  Rendering is batched over studies in chunks of
    ``min(256, 2**22 / size**2)``.
    """
    return collect_stream(chest_xray_stream(_resolve(params, overrides)))


def chest_xray_stream(params: ChestXrayParams) -> CohortStream:
    """:func:`generate_chest_xray`'s cohort as a :class:`~reconaudit.cohorts.base.CohortStream`.

    The draws (one table row and 640 bytes of rendering parameters per study) are made first;
    images, body and finding masks are then rendered in chunks of ``min(256, 2**22 / size**2)``
    studies (whatever chunk is asked for: the rendering chunk is part of the cohort's definition),
    so written through a :class:`~reconaudit.cohorts.base.CohortWriter` at most one shard and one
    chunk are in memory.
    """
    draws, table = _draw_cohort(params)
    size, n = params.size, len(table)

    def batches(_chunk: int):
        chunk = int(max(1, min(256, 2**22 // (size * size))))
        with task("chest-xray: rendering studies", total=n) as bar:
            for start in range(0, n, chunk):
                img, body, finding = render(draw_batch(draws, slice(start, start + chunk)), size)
                yield {"images": img, "roi_masks": body, "lesion_masks": finding}
                bar.advance(len(img))

    def finish() -> dict:
        logger.info("chest-xray: %d studies of %d patients at %dx%d", n, table["patient_id"].nunique(), size, size)
        return {"name": "chest-xray", "modality": "xray", "table": table, "labels": list(LABELS),
                "group_attributes": ["sex", "age_band", "site"], "data_card": _data_card(params, table),
                "meta": params.model_dump(mode="json"), "regression": list(params.regression_columns)}

    return CohortStream(n, batches, finish)


def write_chest_xray(params: ChestXrayParams, directory, *, shard_studies: int = DEFAULT_SHARD_STUDIES) -> None:
    """Write :func:`generate_chest_xray`'s cohort to ``directory`` shard by shard (:func:`chest_xray_stream`)."""
    write_stream(chest_xray_stream(params), directory, shard_studies=shard_studies)


def supported_tasks(params: dict) -> tuple[str, ...]:
    """Classification, and regression when ``regression_columns`` names phenotypes."""
    return ("classification", "regression") if (params or {}).get("regression_columns") else ("classification",)


class ChestXrayCohort(CohortBuilder):
    """The ``chest-xray`` cohort (:func:`generate_chest_xray`)."""

    name = "chest-xray"
    kind = "synthetic"
    modality = "xray"
    tasks = ("classification", "regression")
    groups = "sex, age_band, site"
    description = "synthetic chest radiographs (attenuation maps) with 5 findings and bias knobs"
    Params = ChestXrayParams

    @classmethod
    def stream(cls, params: ChestXrayParams) -> CohortStream:
        """:func:`chest_xray_stream`: rendered and written shard by shard."""
        return chest_xray_stream(params)
