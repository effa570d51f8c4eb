"""Intersectional groups (e.g. sex x age band) with minimum-size guards counted in patients.

:func:`intersect_groups` joins several group attributes into one (``"F × <40"``);
:func:`group_guard` counts studies and distinct patients per group and marks a group *estimable*
when it has at least ``min_patients`` patients.  Groups below the guard are listed (not silently
dropped) so that a report can say which intersections it could not estimate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ._utils import as_1d, check_same_length, group_codes
from .resampling import patients_per_group

__all__ = ["INTERSECTION_SEPARATOR", "intersection_name", "intersect_groups", "group_guard"]

#: Separator of attribute values (and names) in an intersectional group.
INTERSECTION_SEPARATOR = " × "


def intersection_name(attributes: Sequence[str]) -> str:
    """``"sex × age_band"`` for ``["sex", "age_band"]``."""
    return INTERSECTION_SEPARATOR.join(map(str, attributes))


def intersect_groups(columns: Mapping[str, object] | pd.DataFrame, attributes: Sequence[str]) -> np.ndarray:
    """One group label per study joining the values of ``attributes``: ``"F × <40"``.

    Raises
    ------
    ValueError
        When fewer than two attributes are given, or one is not among ``columns``.
    """
    attrs = list(attributes)
    if len(attrs) < 2 or len(set(attrs)) != len(attrs):
        raise ValueError(f"attributes: expected two or more distinct attribute names, got {attrs}")
    missing = [a for a in attrs if a not in columns]
    if missing:
        have = list(columns.columns) if isinstance(columns, pd.DataFrame) else list(columns)
        raise ValueError(f"attributes: {missing} not among the group attributes {have}")
    vals = [as_1d(np.asarray(columns[a], dtype=object), f"columns[{a!r}]").astype(str) for a in attrs]
    check_same_length(**{a: v for a, v in zip(attrs, vals)})
    out = vals[0].astype(object)
    for v in vals[1:]:
        out = out + INTERSECTION_SEPARATOR + v.astype(object)
    return out.astype(str)


def group_guard(groups: object, patient_ids: object, min_patients: int) -> pd.DataFrame:
    """Per group: ``group, n_studies, n_patients, estimable`` (``n_patients >= min_patients``)."""
    codes, labels = group_codes(groups, "groups")
    pcodes, _ = group_codes(patient_ids, "patient_ids")
    check_same_length(groups=codes, patient_ids=pcodes)
    npat = patients_per_group(codes, pcodes, len(labels))
    return pd.DataFrame({"group": [str(v) for v in labels],
                         "n_studies": np.bincount(codes, minlength=len(labels)).astype(int),
                         "n_patients": npat.astype(int), "estimable": npat >= min_patients})
