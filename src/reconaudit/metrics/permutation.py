r"""The paired permutation test for a change in a fairness gap (:func:`paired_permutation_test`)."""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from ..schema import COUNT_METRICS
from ._utils import as_1d, as_binary, check_same_length, group_codes
from .fairness import confusion_cells, fairness_from_counts, ser_from_group_means
from .resampling import _patient_codes
from .task import MetricUndefinedWarning

__all__ = ["PermutationResult", "paired_permutation_test"]


class PermutationResult(NamedTuple):
    """Observed change (recon - clean) of a metric, its two-sided permutation p-value, resamples used."""

    observed_change: float
    p_value: float
    n_permutations: int
    n_undefined: int


def _group_stat(metric: str, cells: np.ndarray, g: int, min_group_size: int, eodd_agg: str = "worst_case") -> np.ndarray:
    if metric in COUNT_METRICS:
        return fairness_from_counts(cells.reshape(len(cells), g, 4), min_group_size, eodd_agg=eodd_agg)[metric]
    sums, cnts = cells[:, :g], cells[:, g:]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(cnts >= max(min_group_size, 1), sums / cnts, np.nan)
    if metric in ("dice_gap", "value_gap"):
        return means.max(axis=1) - means.min(axis=1)
    if metric == "worst_group":
        return means.min(axis=1)
    if metric == "dice_skewed_error_ratio":
        return ser_from_group_means(means)
    raise ValueError(
        f"metric: expected one of {COUNT_METRICS + ('dice_gap', 'value_gap', 'worst_group', 'dice_skewed_error_ratio')}"
        f", got {metric!r}"
    )


def paired_permutation_test(
    clean: object,
    recon: object,
    *,
    sensitive_features: object,
    patient_ids: object,
    metric: str = "equalized_odds_difference",
    y_true: object | None = None,
    n_permutations: int = 1000,
    seed: int = 0,
    min_group_size: int = 1,
    chunk_size: int = 256,
    eodd_agg: str = "worst_case",
) -> PermutationResult:
    r"""Permutation p-value for "reconstruction changed the fairness metric".

    Null hypothesis: within each patient, the clean and reconstructed predictions are exchangeable.
    Each permutation swaps clean and recon for every study of a patient with probability 1/2
    (:math:`s_p \in \{0, 1\}`), all permutations at once on per-patient cell counts
    :math:`C^{c}_p, C^{r}_p`:

    .. math:: C^{c*} = \sum_p C^c_p + \sum_p s_p (C^r_p - C^c_p), \quad
              C^{r*} = \sum_p C^r_p - \sum_p s_p (C^r_p - C^c_p)

    :math:`T = m(C^{r}) - m(C^{c})`, and :math:`p = (1 + \#\{|T^*| \ge |T|\} + U) / (1 + B)`, the
    :math:`U` permutations where :math:`T^*` is undefined counted as extreme (against the statistic).

    Parameters
    ----------
    clean, recon : array, shape (N,)
        Binary predictions (with ``y_true``) for the count metrics
        (``equalized_odds_difference``, ``equal_opportunity_difference``,
        ``demographic_parity_difference``, ``skewed_error_ratio``), or per-study values (e.g. Dice)
        for ``dice_gap`` / ``value_gap`` / ``worst_group`` (group means).
    sensitive_features, patient_ids : array, shape (N,)
    metric : str
    y_true : array of 0/1, shape (N,), needed for the count metrics.
    n_permutations, seed, min_group_size, chunk_size : int
    eodd_agg : {"worst_case", "mean"}
        As in :func:`reconaudit.metrics.equalized_odds_difference` (``agg``).

    Returns
    -------
    PermutationResult
    """
    codes, labels = group_codes(sensitive_features)
    pcode, n_pat = _patient_codes(patient_ids)
    g = len(labels)
    arms = []
    if metric in COUNT_METRICS:
        if y_true is None:
            raise ValueError(f"y_true: needed for metric={metric!r}")
        y = as_binary(y_true, "y_true")
        for name, p in (("clean", clean), ("recon", recon)):
            pred = as_binary(p, name)
            check_same_length(y_true=y, **{name: pred}, sensitive_features=codes, patient_ids=pcode)
            cells = confusion_cells(y, pred, codes)
            arms.append(
                np.bincount(pcode * 4 * g + cells, minlength=n_pat * 4 * g)
                .reshape(n_pat, 4 * g)
                .astype(float)
            )
    else:
        for name, v in (("clean", clean), ("recon", recon)):
            val = as_1d(v, name, np.float64)
            check_same_length(**{name: val}, sensitive_features=codes, patient_ids=pcode)
            idx = pcode * g + codes
            sums = np.bincount(idx, weights=val, minlength=n_pat * g).reshape(n_pat, g)
            cnts = np.bincount(idx, minlength=n_pat * g).reshape(n_pat, g).astype(float)
            arms.append(np.concatenate([sums, cnts], axis=1))
    mc, mr = arms
    tc, tr, d = mc.sum(0), mr.sum(0), mr - mc
    obs = float(
        _group_stat(metric, tr[None], g, min_group_size, eodd_agg)[0]
        - _group_stat(metric, tc[None], g, min_group_size, eodd_agg)[0]
    )
    if np.isnan(obs):
        warnings.warn(
            f"paired_permutation_test: {metric} undefined on clean or recon; p = NaN",
            MetricUndefinedWarning,
            stacklevel=2,
        )
        return PermutationResult(obs, float("nan"), n_permutations, n_permutations)
    rng = np.random.default_rng(seed)
    stats_ = []
    for start in range(0, n_permutations, chunk_size):
        b = min(chunk_size, n_permutations - start)
        swap = rng.integers(0, 2, size=(b, n_pat)).astype(np.float64) @ d
        stats_.append(
            _group_stat(metric, tr - swap, g, min_group_size, eodd_agg)
            - _group_stat(metric, tc + swap, g, min_group_size, eodd_agg)
        )
    t = np.concatenate(stats_)
    ok = ~np.isnan(t)
    # undefined permutations count against the statistic, as in bootstrap_p_value
    p = (1 + np.sum(np.abs(t[ok]) >= abs(obs) - 1e-12) + np.sum(~ok)) / (1 + len(t))
    return PermutationResult(obs, float(p), n_permutations, int((~ok).sum()))
