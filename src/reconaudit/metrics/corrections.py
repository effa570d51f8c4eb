"""Multiple-comparison corrections: Holm (family-wise error) and Benjamini-Hochberg (false discovery rate)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["holm", "benjamini_hochberg", "adjust_pvalues"]


def _over_family(p: Sequence[float] | np.ndarray, adjust_sorted) -> np.ndarray:
    """Apply ``adjust_sorted(sorted p-values) -> adjusted`` to the non-NaN entries of ``p``, in place of
    each; NaN entries are left out of the family and stay NaN."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    if len(q) == 0:
        return out
    order = np.argsort(q, kind="stable")
    res = np.empty(len(q))
    res[order] = adjust_sorted(q[order])
    out[ok] = res
    return out


def holm(p: Sequence[float] | np.ndarray) -> np.ndarray:
    r"""Holm step-down adjusted p-values (family-wise error rate).

    With :math:`p_{(1)} \le \dots \le p_{(m)}`:
    :math:`\tilde p_{(i)} = \max_{j \le i} \min(1, (m - j + 1)\, p_{(j)})`.  NaN entries are left out
    of the family and stay NaN.
    """
    def step_down(q: np.ndarray) -> np.ndarray:
        m = len(q)
        return np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * q))

    return _over_family(p, step_down)


def benjamini_hochberg(p: Sequence[float] | np.ndarray) -> np.ndarray:
    r"""Benjamini-Hochberg adjusted p-values (false discovery rate).

    :math:`\tilde p_{(i)} = \min_{j \ge i} \min(1, \frac{m}{j} p_{(j)})`.  NaN entries are left out
    of the family and stay NaN.
    """
    def step_up(q: np.ndarray) -> np.ndarray:
        raw = q * len(q) / np.arange(1, len(q) + 1)
        return np.minimum(1.0, np.minimum.accumulate(raw[::-1])[::-1])

    return _over_family(p, step_up)


def adjust_pvalues(
    p: Sequence[float] | np.ndarray,
    *,
    comparisons: Sequence[str] | None = None,
    method: str = "holm",
    family: str = "all comparisons",
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Adjust a family of p-values and state the family.

    Returns
    -------
    pandas.DataFrame
        Columns ``comparison, p, p_adjusted, method, family, family_size, significant``
        (``significant``: ``p_adjusted < alpha``); ``family_size`` counts the non-NaN p-values.
    """
    p = np.asarray(p, dtype=np.float64)
    if comparisons is None:
        comparisons = [f"comparison {i}" for i in range(len(p))]
    if len(comparisons) != len(p):
        raise ValueError(f"comparisons: expected {len(p)} names (one per p-value), got {len(comparisons)}")
    if method == "holm":
        adj = holm(p)
    elif method in ("bh", "fdr_bh", "benjamini_hochberg"):
        adj, method = benjamini_hochberg(p), "benjamini_hochberg"
    else:
        raise ValueError(f"method: expected 'holm' or 'bh', got {method!r}")
    return pd.DataFrame(
        {
            "comparison": list(comparisons),
            "p": p,
            "p_adjusted": adj,
            "method": method,
            "family": family,
            "family_size": int((~np.isnan(p)).sum()),
            "significant": adj < alpha,
        }
    )
