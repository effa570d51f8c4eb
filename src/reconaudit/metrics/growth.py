r"""Measured tumour growth of longitudinal series, from the records of one cell.

A series is one subject's slice at several growth times (``series_id``, ``time_index``).  Its growth
is the change in lesion area between the first and the last time point,

.. math:: \Delta A = a\,\big(|M_{t_{last}}| - |M_{t_{first}}|\big)\ \mathrm{mm}^2,

with :math:`a` the pixel area (``pixel_area_mm2``) and :math:`|M|` the segmented pixels: the true
masks (``true_seg_volume``), the diagnostic model's segmentation of the processed input
(``gen_seg_volume``) and of the clean image (``gen_clean_seg_volume``).  The growth error of an arm is
measured minus true growth; :func:`reconaudit.metrics.regression.regression_summary` of
(true, measured, clean-measured) growth gives its MAE per group, the group gap and its change.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["series_growth"]

_NEEDED = ("series_id", "time_index", "patient_id")


def series_growth(records: pd.DataFrame, *, truth: str = "true_seg_volume", measured: str = "gen_seg_volume",
                  clean: str = "gen_clean_seg_volume") -> pd.DataFrame:
    """Growth per series (first to last time point) of one cell's records, in mm².

    Returns one row per series with at least two time points: ``series_id``, ``patient_id``, the
    ``group:`` columns, ``days`` (``growth_days`` change, when recorded), ``true_growth``,
    ``measured_growth`` and ``clean_growth`` (NaN where the column is missing).
    """
    missing = [c for c in _NEEDED if c not in records]
    if missing:
        raise KeyError(f"records lack the columns {missing}; growth needs a cohort with longitudinal series "
                       "(brain-glioma params.time_points)")
    area = records["pixel_area_mm2"].to_numpy(float) if "pixel_area_mm2" in records else np.ones(len(records))
    df = records.assign(_area=area).sort_values(["series_id", "time_index"], kind="stable")
    first = df.groupby("series_id", sort=True).head(1).set_index("series_id")
    last = df.groupby("series_id", sort=True).tail(1).set_index("series_id")
    n_t = df.groupby("series_id", sort=True)["time_index"].nunique()
    keep = n_t[n_t >= 2].index
    first, last = first.loc[keep], last.loc[keep]
    out = pd.DataFrame({"series_id": keep.astype(str), "patient_id": last["patient_id"].astype(str).to_numpy()})
    for c in records.columns:
        if c.startswith("group:"):
            out[c] = last[c].to_numpy()
    if "growth_days" in records:
        out["days"] = last["growth_days"].to_numpy(float) - first["growth_days"].to_numpy(float)
    for name, col in (("true_growth", truth), ("measured_growth", measured), ("clean_growth", clean)):
        if col in records:
            out[name] = (last[col].to_numpy(float) * last["_area"].to_numpy(float)
                         - first[col].to_numpy(float) * first["_area"].to_numpy(float))
        else:
            out[name] = np.nan
    return out.reset_index(drop=True)
