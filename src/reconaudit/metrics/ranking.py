r"""Ranking methods with uncertainty: bootstrap rank intervals and the Friedman test.

For methods :math:`j = 1..M` with a metric :math:`\theta_j` and its paired bootstrap values
:math:`\theta^*_{bj}` (the same resampled patients for every method), the rank of method :math:`j`
in resample :math:`b` is :math:`r_{bj} = 1 + \#\{k : \theta^*_{bk} \text{ better than } \theta^*_{bj}\}`
(ties share the best rank; an undefined value ranks last).  Reported: the rank of the point
estimates, the percentile interval of :math:`r_{\cdot j}` and
:math:`P(\text{first}) = \frac1B\#\{b : r_{bj} = 1\}`.

The Friedman test (:func:`friedman_test`) compares methods across blocks (cells: cohort x level x
label): within each block the methods are ranked (average ranks for ties) and
:math:`\chi^2_F = \frac{12 N}{M(M+1)}\sum_j \bar R_j^2 - 3N(M+1)` (with the tie correction of
``scipy.stats.friedmanchisquare``, which computes it), on :math:`M - 1` degrees of freedom.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as sps

__all__ = ["bootstrap_ranks", "FriedmanResult", "friedman_test", "overlap_text"]


def _ranks(values: np.ndarray, higher_is_better: bool) -> np.ndarray:
    v = np.where(np.isnan(values), -np.inf if higher_is_better else np.inf, values)
    v = -v if higher_is_better else v
    return sps.rankdata(v, axis=1, method="min")


def bootstrap_ranks(
    estimates: Sequence[float],
    distributions: np.ndarray,
    methods: Sequence[str],
    *,
    higher_is_better: bool = True,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Rank, rank interval and share of resamples ranked first, per method (module docstring).

    ``distributions`` ``(B, M)``: paired bootstrap values, one column per method.

    Returns
    -------
    pandas.DataFrame
        ``method, estimate, rank, rank_ci_low, rank_ci_high, p_first``, sorted by rank.
    """
    est = np.asarray(estimates, dtype=np.float64)
    d = np.atleast_2d(np.asarray(distributions, dtype=np.float64))
    names = list(methods)
    if d.shape[1] != len(est) or len(names) != len(est):
        raise ValueError(f"distributions: expected (B, {len(est)}) for {len(names)} methods, got {d.shape}")
    r = _ranks(d, higher_is_better) if len(d) else np.empty((0, len(est)))
    alpha = 1 - confidence
    lo = np.floor(np.percentile(r, 100 * alpha / 2, axis=0)) if len(r) else np.full(len(est), np.nan)
    hi = np.ceil(np.percentile(r, 100 * (1 - alpha / 2), axis=0)) if len(r) else np.full(len(est), np.nan)
    out = pd.DataFrame({"method": names, "estimate": est, "rank": _ranks(est[None], higher_is_better)[0],
                        "rank_ci_low": lo.astype(int) if len(r) else lo,
                        "rank_ci_high": hi.astype(int) if len(r) else hi,
                        "p_first": (r == 1).mean(axis=0) if len(r) else np.full(len(est), np.nan)})
    return out.sort_values(["rank", "method"]).reset_index(drop=True)


def overlap_text(ranks: pd.DataFrame) -> str:
    """Plain words on a :func:`bootstrap_ranks` table: is the first method clearly first?"""
    if ranks.empty:
        return "nothing to rank"
    top = ranks.iloc[0]
    rivals = ranks.iloc[1:]
    tied = rivals[rivals["rank_ci_low"] <= top["rank_ci_high"]]["method"].tolist()
    share = f"first in {100 * top['p_first']:.0f}% of resamples"
    if not tied:
        return f"{top['method']} ranks first ({share}); its rank interval overlaps no other method's"
    return (f"{top['method']} ranks first ({share}), but its rank interval overlaps those of "
            + ", ".join(map(str, tied)) + ": the ranking between them is uncertain")


class FriedmanResult(NamedTuple):
    """Friedman chi-square statistic, p-value, number of blocks and methods used."""

    statistic: float
    p_value: float
    n_blocks: int
    n_methods: int


def friedman_test(table: pd.DataFrame | np.ndarray) -> FriedmanResult:
    """Friedman test over a ``(blocks, methods)`` table (blocks with a missing value are dropped).

    NaN when fewer than 3 methods or 2 complete blocks remain (``scipy.stats.friedmanchisquare``'s minimum).
    """
    a = np.asarray(table, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"table: expected a (blocks, methods) table, got shape {a.shape}")
    a = a[~np.isnan(a).any(axis=1)]
    n, m = a.shape
    if m < 3 or n < 2:
        return FriedmanResult(float("nan"), float("nan"), n, m)
    if np.all(a == a[:, :1]):
        return FriedmanResult(0.0, 1.0, n, m)
    res = sps.friedmanchisquare(*a.T)
    return FriedmanResult(float(res.statistic), float(res.pvalue), n, m)
