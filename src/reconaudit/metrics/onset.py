r"""Onset level: the mildest degradation level at which a change becomes significant.

Given the levels of one reconstructor, attribute and metric ordered from the mildest to the most
severe, their p-values for "the gap changed" and (optionally) the changes themselves, the onset is

.. math:: \ell^* = \min\{\ell : \tilde p_\ell < \alpha\ (\text{and } \operatorname{sign}\Delta_\ell = d)\}

with :math:`\tilde p` the p-values corrected across the levels (Holm by default, or already
corrected p-values with ``adjust=False``) and :math:`d` an optional direction (``"increase"``: the
gap widens).  With ``sustained=True`` the onset is the mildest level from which *every* more severe
level is significant too.  No such level: "none up to the most severe level".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .corrections import adjust_pvalues

__all__ = ["OnsetResult", "onset_level"]


class OnsetResult(NamedTuple):
    """``level`` (None when no level is significant), its position ``index``, corrected p-values, text."""

    level: float | None
    index: int | None
    p_adjusted: np.ndarray
    text: str


def onset_level(
    levels: Sequence[float],
    p_values: Sequence[float],
    *,
    changes: Sequence[float] | None = None,
    alpha: float = 0.05,
    method: str = "holm",
    adjust: bool = True,
    direction: str | None = None,
    sustained: bool = False,
    unit: str = "",
) -> OnsetResult:
    """Mildest significant level (module docstring); ``levels`` ordered mildest first."""
    lv = np.asarray(levels, dtype=np.float64)
    p = np.asarray(p_values, dtype=np.float64)
    if lv.shape != p.shape or lv.ndim != 1:
        raise ValueError(f"levels and p_values: expected two 1-D arrays of one length, got {lv.shape} and {p.shape}")
    if direction not in (None, "increase", "decrease"):
        raise ValueError(f"direction: expected None, 'increase' or 'decrease', got {direction!r}")
    padj = adjust_pvalues(p, method=method)["p_adjusted"].to_numpy() if adjust else p.copy()
    sig = padj < alpha
    if direction is not None:
        if changes is None:
            raise ValueError("changes: needed with a direction")
        ch = np.asarray(changes, dtype=np.float64)
        if ch.shape != lv.shape:
            raise ValueError(f"changes: expected {lv.shape}, got {ch.shape}")
        sig &= (ch > 0) if direction == "increase" else (ch < 0)
    if sustained:
        sig = np.flip(np.logical_and.accumulate(np.flip(sig)))
    idx = np.flatnonzero(sig)
    u = f" {unit}" if unit else ""
    if len(idx) == 0:
        return OnsetResult(None, None, padj, "none up to the most severe level")
    i = int(idx[0])
    return OnsetResult(float(lv[i]), i, padj, f"{lv[i]:g}{u}")
