"""Group values (sex, age band, race, site...): one normalisation for every loader.

Real tables spell one group many ways (``F``, ``f``, ``F ``, ``Female``), mark missing values with
words (``Unknown``, ``N/A``) and record impossible ages (CheXpert writes ``0`` for a missing age).
Every loader passes its group columns through :func:`normalise_groups` and its ages through
:func:`band_ages`, so the same value becomes the same group whichever loader read it:

1. trim surrounding whitespace and collapse inner runs of whitespace to one space;
2. compare case-folded (``str.casefold``): values equal up to case and spacing are one group;
3. map through the attribute's synonym map (keys compared case-folded; the default for ``sex``
   is :data:`SEX_SYNONYMS`: ``m``/``male`` → ``M``, ``f``/``female`` → ``F``, ``o``/``other`` → ``O``);
   a user map (``group_synonyms: {sex: {w: F}}``) is merged over the default;
4. missing markers (:data:`MISSING_TOKENS`, blank, NaN) become :data:`UNKNOWN`;
5. other values keep their most frequent original spelling (ties: the first in sorted order).

Ages: non-finite, ``<= 0`` or ``> 120`` years are impossible; they are reported (file, row, value)
and set to unknown, never banded as a real age.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"
MIN_AGE, MAX_AGE = 0.0, 120.0
MISSING_TOKENS = frozenset(
    {"", "unknown", "unk", "na", "n/a", "nan", "none", "null", "missing", "not reported", "not available",
     "unspecified", "?", "-"}
)
SEX_SYNONYMS: dict[str, str] = {
    "m": "M", "male": "M", "man": "M",
    "f": "F", "female": "F", "woman": "F",
    "o": "O", "other": "O",
    "u": UNKNOWN,
}
DEFAULT_SYNONYMS: dict[str, dict[str, str]] = {"sex": SEX_SYNONYMS}


class GroupOptions(BaseModel):
    """Group-value options shared by every loader (see ``docs/loaders.md``, "Group values")."""

    model_config = ConfigDict(extra="forbid")

    age_bands: list[float] = Field(default_factory=lambda: [40.0, 60.0, 80.0])
    group_synonyms: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="per attribute: {written value: group}, merged over the defaults"
    )
    unknown_groups: Literal["exclude", "keep"] = Field(
        "exclude", description="studies with an unknown group value: left out of gap metrics, or a group of their own"
    )


def _fold(s: str) -> str:
    return " ".join(s.split()).casefold()


def synonyms_for(attribute: str, user: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, str]:
    """The case-folded synonym map of ``attribute``: the default (sex) with the user's map merged over it."""
    out = {_fold(k): v for k, v in DEFAULT_SYNONYMS.get(attribute, {}).items()}
    out.update({_fold(str(k)): str(v) for k, v in (user or {}).get(attribute, {}).items()})
    return out


@dataclass
class GroupReport:
    """What normalisation did to a loader's group values: merged spellings and impossible ages.

    Nothing here drops a study: an impossible age becomes unknown and is listed.
    """

    merged: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    impossible_ages: list[dict] = field(default_factory=list)
    max_listed: int = 100

    def as_meta(self, table: pd.DataFrame, attributes: Sequence[str], policy: str) -> dict:
        """JSON summary: policy, unknown count per attribute, merges, impossible ages."""
        return {
            "unknown_groups": policy,
            "unknown": unknown_counts(table, attributes),
            "merged": self.merged,
            "impossible_ages": len(self.impossible_ages),
            "impossible_age_entries": self.impossible_ages[: self.max_listed],
        }

    def log(self, source: str) -> None:
        """One WARNING when ages were set to unknown."""
        if self.impossible_ages:
            first = "; ".join(f"{e['where']}: {e['value']!r}" for e in self.impossible_ages[:5])
            logger.warning("%s: %d impossible age(s) (<= %g or > %g) set to unknown. First: %s", source,
                           len(self.impossible_ages), MIN_AGE, MAX_AGE, first)

    def markdown(self, table: pd.DataFrame, attributes: Sequence[str], policy: str) -> str:
        """The data card's "Group values" section."""
        from ._io import md_escape

        lines = ["## Group values", "",
                 "Normalised as in docs/loaders.md (trim, case-fold, synonyms; missing markers → `unknown`).", ""]
        counts = unknown_counts(table, attributes)
        effect = ("left out of gap metrics (`unknown_groups: exclude`)" if policy == "exclude"
                  else "kept as a group of their own (`unknown_groups: keep`)")
        lines.append(f"Studies with an unknown value are {effect}:")
        lines += ["", "| attribute | unknown studies |", "| --- | --- |"]
        lines += [f"| {md_escape(a)} | {counts.get(a, 0)} |" for a in attributes]
        for attr, groups in self.merged.items():
            for canon, spellings in groups.items():
                if len(spellings) > 1:
                    lines.append(f"\n- {md_escape(attr)}: {', '.join(md_escape(repr(s)) for s in spellings)} → {md_escape(canon)}")
        if self.impossible_ages:
            lines += ["", f"{len(self.impossible_ages)} impossible age(s) (<= {MIN_AGE:g} or > {MAX_AGE:g} years) "
                      "set to unknown:", "", "| where | value |", "| --- | --- |"]
            lines += [f"| {md_escape(e['where'])} | {md_escape(e['value'])} |" for e in self.impossible_ages[:20]]
        return "\n".join(lines) + "\n"


def unknown_counts(table: pd.DataFrame, attributes: Sequence[str]) -> dict[str, int]:
    """Number of studies whose value of each attribute is :data:`UNKNOWN`."""
    return {a: int((table[a].astype(str) == UNKNOWN).sum()) for a in attributes if a in table}


def normalise_groups(
    values: Sequence | pd.Series | np.ndarray,
    attribute: str,
    synonyms: Mapping[str, Mapping[str, str]] | None = None,
    report: GroupReport | None = None,
) -> np.ndarray:
    """Normalise one group column (steps 1-5 of the module docstring); returns an object array of str.

    ``synonyms`` is the user's ``group_synonyms`` (per attribute); merges of several spellings into
    one group are recorded in ``report.merged[attribute]``.
    """
    s = pd.Series(values, dtype=object).reset_index(drop=True)
    raw = s.map(lambda v: "" if v is None or (isinstance(v, float) and not np.isfinite(v)) or v is pd.NA
                else " ".join(str(v).split()))
    syn = synonyms_for(attribute, synonyms)
    folded = raw.map(_fold)

    def canonical_key(f: str) -> str:
        if f in syn:
            return "=" + syn[f]
        if f in MISSING_TOKENS:
            return "=" + UNKNOWN
        return f

    keys = folded.map(canonical_key)
    names: dict[str, str] = {}
    spellings: dict[str, list[str]] = {}
    for key, sub in raw.groupby(keys, sort=True):
        if key.startswith("="):
            names[key] = key[1:]
        else:
            c = Counter(sub.tolist())
            names[key] = sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        spellings.setdefault(names[key], []).extend(sorted(set(sub.tolist())))
    if report is not None:
        merged = {k: sorted(set(v)) for k, v in spellings.items() if len(set(v)) > 1 or (v and v[0] != k)}
        if merged:
            report.merged.setdefault(attribute, {}).update(merged)
    return keys.map(names).to_numpy(dtype=object)


def clean_ages(
    ages: np.ndarray, report: GroupReport | None = None, *, where: Sequence[str] | None = None
) -> np.ndarray:
    """Ages in years with impossible values (``<= 0``, ``> 120``, non-finite) set to NaN and reported.

    ``where[i]`` names study ``i`` in the report (file and row).
    """
    a = np.array(ages, dtype=np.float64, copy=True)
    present = ~np.isnan(a)
    bad = present & (~np.isfinite(a) | (a <= MIN_AGE) | (a > MAX_AGE))
    if report is not None:
        for i in np.flatnonzero(bad):
            report.impossible_ages.append({"where": where[i] if where is not None else f"row {int(i)}",
                                           "value": float(a[i])})
    a[bad] = np.nan
    return a


def band_ages(
    ages: np.ndarray, edges: Sequence[float], report: GroupReport | None = None, *, where: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(cleaned ages, age bands): :func:`clean_ages`, then left-closed bands of ``edges``; NaN → unknown."""
    from ._io import age_bands

    a = clean_ages(ages, report, where=where)
    return a, age_bands(a, edges)


def group_summary(
    table: pd.DataFrame, attributes: Sequence[str], options: GroupOptions, report: GroupReport, source: str
) -> tuple[dict, str]:
    """(``meta["groups"]``, the data card section) of a loaded cohort; logs impossible ages once."""
    report.log(source)
    return (report.as_meta(table, attributes, options.unknown_groups),
            report.markdown(table, attributes, options.unknown_groups))
