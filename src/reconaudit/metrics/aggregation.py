r"""Aggregation across training seeds (:func:`aggregate_seeds`) and the change a reconstruction
caused in a metric (:func:`metric_change`)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from .task import MetricUndefinedWarning

__all__ = ["aggregate_seeds", "ChangeResult", "metric_change"]


def aggregate_seeds(
    df: pd.DataFrame,
    value_col: str,
    by: Sequence[str],
    *,
    seed_col: str = "seed",
    ci_low_col: str | None = "ci_low",
    ci_high_col: str | None = "ci_high",
) -> pd.DataFrame:
    r"""Aggregate a metric across training seeds, keeping seed and bootstrap variance apart.

    For each group of ``by``: ``seed_mean`` (mean over seeds), ``seed_std`` (sample standard
    deviation over seeds, ddof=1: training variance), ``n_seeds``, and ``bootstrap_half_width``
    (mean over seeds of :math:`(\text{ci\_high} - \text{ci\_low})/2`: sampling variance of the test
    set), when the interval columns are present.
    """
    missing = [c for c in [value_col, seed_col, *by] if c not in df.columns]
    if missing:
        raise ValueError(f"aggregate_seeds: columns {missing} not in the table (have {list(df.columns)})")
    d = df.copy()
    has_ci = ci_low_col in d.columns and ci_high_col in d.columns if ci_low_col and ci_high_col else False
    if has_ci:
        d["_hw"] = (d[ci_high_col] - d[ci_low_col]) / 2
    gb = d.groupby(list(by), sort=True, dropna=False)
    out = gb.agg(seed_mean=(value_col, "mean"), seed_std=(value_col, "std"), n_seeds=(seed_col, "nunique"))
    if has_ci:
        out["bootstrap_half_width"] = gb["_hw"].mean()
    return out.reset_index()


class ChangeResult(NamedTuple):
    """Change caused by reconstruction: ``difference`` = recon - clean, ``relative_percent``."""

    difference: np.ndarray | float
    relative_percent: np.ndarray | float


def metric_change(recon: object, clean: object) -> ChangeResult:
    r"""Change of a metric caused by reconstruction.

    .. math:: \Delta = m_{recon} - m_{clean}, \quad \Delta_\% = 100 \frac{m_{recon} - m_{clean}}{|m_{clean}|}

    The relative change is NaN (with a :class:`MetricUndefinedWarning` giving the reason) where the
    clean value is 0 or undefined.
    """
    r = np.asarray(recon, dtype=np.float64)
    c = np.asarray(clean, dtype=np.float64)
    diff = r - c
    bad = (c == 0) | np.isnan(c)
    if bad.any():
        why = "clean value is 0" if (c == 0).any() else "clean value is undefined (NaN)"
        warnings.warn(
            f"relative change undefined where {why}; returning NaN there",
            MetricUndefinedWarning,
            stacklevel=2,
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(bad, np.nan, 100 * diff / np.where(bad, 1.0, np.abs(c)))
    if diff.ndim == 0:
        return ChangeResult(float(diff), float(rel))
    return ChangeResult(diff, rel)
