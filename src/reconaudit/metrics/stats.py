r"""Statistics: vectorized patient-level bootstrap (percentile and BCa intervals, p-values, group
guards), paired permutation tests for a change in a fairness gap, and aggregation across training
seeds.  DeLong's tests live in :mod:`.delong` and the multiple-comparison corrections in
:mod:`.corrections`; both are re-exported here and from :mod:`reconaudit.metrics`.

The bootstrap resamples *patients* with replacement; a study's weight in a resample is the number
of times its patient was drawn.  Clean and reconstructed predictions of a study always share the
weight (paired).  Every statistic is a function of weighted sufficient statistics:

- confusion counts per group, ``(B, G, 4)`` = patient-count matrix ``(B, P)`` @ per-patient
  cell counts ``(P, 4G)`` (one matrix product per chunk for all attributes and both arms);
- AUROC: scores sorted once, resample weights applied as cumulative sums (ties count 1/2);
- group means of a per-study value (e.g. Dice): weighted sums and counts per group.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as sps

from .. import progress
from ..schema import COUNT_METRICS  # the records schema's metric family
from ._auroc import SortedScores, jackknife_auroc
from ._utils import as_1d, as_binary, check_same_length, group_codes
from .corrections import adjust_pvalues, benjamini_hochberg, holm
from .delong import DeLongResult, clustered_delong_test, delong_test, placement_values
from .fairness import (
    METRIC_NEEDS,
    confusion_cells,
    confusion_counts,
    fairness_from_counts,
    group_support,
    guard_reasons,
    ser_from_group_means,
)
from .task import MetricUndefinedWarning

logger = logging.getLogger(__name__)

__all__ = [
    "bootstrap_weights",
    "iter_bootstrap_weights",
    "weighted_confusion_counts",
    "weighted_auroc",
    "percentile_interval",
    "bootstrap_p_value",
    "floor_p_value",
    "two_stage_resamples",
    "needs_second_stage",
    "bca_interval",
    "BootstrapResult",
    "bootstrap_metrics",
    "DeLongResult",
    "placement_values",
    "delong_test",
    "clustered_delong_test",
    "PermutationResult",
    "paired_permutation_test",
    "holm",
    "benjamini_hochberg",
    "adjust_pvalues",
    "aggregate_seeds",
    "ChangeResult",
    "metric_change",
    "COUNT_METRICS",
]

_POOLED = "__pooled__"


# --------------------------------------------------------------------------------------------
# resampling weights


def _patient_codes(patient_ids: object) -> tuple[np.ndarray, int]:
    codes, labels = group_codes(patient_ids, "patient_ids")
    return codes, len(labels)


def _patient_draw_counts(n_patients: int, b: int, rng: np.random.Generator) -> np.ndarray:
    """``(b, P)`` counts: how often each patient was drawn in each of ``b`` resamples of size P."""
    draws = rng.integers(0, n_patients, size=(b, n_patients), dtype=np.int64)
    draws += (np.arange(b, dtype=np.int64) * n_patients)[:, None]
    flat = draws.ravel()
    return np.bincount(flat, minlength=b * n_patients).reshape(b, n_patients).astype(np.int32)


def iter_bootstrap_weights(
    patient_ids: object, n_resamples: int, rng: np.random.Generator, chunk_size: int = 64
) -> Iterator[np.ndarray]:
    """Yield patient-level bootstrap weights in chunks ``(<= chunk_size, n_studies)`` (int32).

    Each resample draws P patients with replacement out of the P patients; a study's weight is the
    number of times its patient was drawn.  Same ``rng`` state and ``chunk_size`` give the same weights.
    """
    codes, n_pat = _patient_codes(patient_ids)
    for start in range(0, n_resamples, chunk_size):
        b = min(chunk_size, n_resamples - start)
        yield _patient_draw_counts(n_pat, b, rng)[:, codes]


def bootstrap_weights(patient_ids: object, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Patient-level bootstrap weights ``(n_resamples, n_studies)`` (int32); see :func:`iter_bootstrap_weights`."""
    return np.concatenate(list(iter_bootstrap_weights(patient_ids, n_resamples, rng, chunk_size=n_resamples)))


def weighted_confusion_counts(y_true: object, y_pred: object, groups: object, weights: object) -> np.ndarray:
    """Confusion counts ``(B, G, 4)`` = (TP, FP, TN, FN) per resample and group, one weighted bincount.

    :math:`C_{bgk} = \\sum_i w_{bi} [g_i = g][\\text{outcome}_i = k]`.
    """
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    return confusion_counts(y_true, y_pred, groups, w)


def weighted_auroc(y_true: object, y_score: object, weights: object, chunk_size: int = 64) -> np.ndarray:
    r"""AUROC for each row of ``weights`` ``(B, n)``: scores sorted once, weights as cumulative sums.

    .. math:: \mathrm{AUROC}_b = \frac{\sum_{i:y_i=1}\sum_{j:y_j=0} w_{bi} w_{bj}
              \left([s_i > s_j] + \tfrac12 [s_i = s_j]\right)}{\sum_{i:y_i=1} w_{bi} \sum_{j:y_j=0} w_{bj}}

    Equal to ``sklearn.metrics.roc_auc_score(y_true, y_score, sample_weight=weights[b])``.
    """
    y = as_binary(y_true, "y_true")
    s = as_1d(y_score, "y_score", np.float64)
    check_same_length(y_true=y, y_score=s)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if w.shape[1] != len(y):
        raise ValueError(f"weights: expected shape (B, {len(y)}), got {w.shape}")
    ss = SortedScores(y, s)
    return np.concatenate(
        [ss.auroc(w[i : i + chunk_size][:, ss.order]) for i in range(0, len(w), chunk_size)]
    )


# --------------------------------------------------------------------------------------------
# intervals


def percentile_interval(dist: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the defined (non-NaN) bootstrap values."""
    d = np.asarray(dist, dtype=np.float64)
    d = d[~np.isnan(d)]
    if len(d) == 0:
        return float("nan"), float("nan")
    alpha = 1 - confidence
    lo, hi = np.percentile(d, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def bootstrap_p_value(dist: np.ndarray) -> float:
    r"""Two-sided bootstrap p-value of a change, undefined resamples counted **against** the statistic.

    With :math:`B` resamples of which :math:`U` are undefined (NaN: a group drew no positive, ...):

    .. math:: p = \min\left(1,\ \frac{2}{B}\min\left(\#\{\Delta^*_b \le 0\} + U,\
              \#\{\Delta^*_b \ge 0\} + U\right)\right)

    An undefined resample cannot support the sign of the change, so it counts on both sides (as a
    resample-by-resample fairlearn computation would when it scores such a resample at 0).  Without
    undefined resamples this is the usual :math:`2\min(P^*(\Delta^* \le 0), P^*(\Delta^* \ge 0))`;
    with them :math:`p \ge 2U/B`, so a statistic undefined in 48 % of resamples is never significant.
    NaN when every resample is undefined.
    """
    d = np.asarray(dist, dtype=np.float64)
    b = len(d)
    bad = np.isnan(d)
    u = int(bad.sum())
    if b == 0 or u == b:
        return float("nan")
    ok = d[~bad]
    return float(min(1.0, 2 * min(np.sum(ok <= 0) + u, np.sum(ok >= 0) + u) / b))


def floor_p_value(p: object, n_resamples: object) -> np.ndarray:
    r"""A Monte Carlo p-value from :math:`B` resamples cannot be below :math:`1/(B+1)`: :math:`\max(p, 1/(B+1))`.

    NaN stays NaN; broadcasts over arrays.
    """
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(p), np.nan, np.maximum(p, 1.0 / (np.asarray(n_resamples, dtype=np.float64) + 1)))


def two_stage_resamples(n_tests: int, alpha: float, cap: int = 100_000) -> int:
    r"""Resamples of the second stage of a two-stage bootstrap test: :math:`B_2 = \lceil 4m/\alpha \rceil` (at most ``cap``).

    The smallest of :math:`m` p-values must reach :math:`\alpha/m` under Holm; a bootstrap p-value
    :math:`2\min(P^*(\Delta^* \le 0), P^*(\Delta^* \ge 0))` from :math:`B` resamples cannot resolve values below
    about :math:`2/B`, so changes with at most two first-stage resamples on the far side of zero
    (:func:`needs_second_stage`) are bootstrapped again with :math:`B_2` resamples.
    """
    return int(min(cap, math.ceil(4 * max(n_tests, 1) / alpha)))


def needs_second_stage(p: float, n_resamples: int) -> bool:
    """True when a first-stage bootstrap p-value has at most two resamples on the far side of zero."""
    return bool(np.isfinite(p) and p * n_resamples / 2 <= 2)


def bca_interval(
    dist: np.ndarray, estimate: float, jackknife: np.ndarray, confidence: float = 0.95
) -> tuple[float, float]:
    r"""Bias-corrected and accelerated (BCa) interval (Efron 1987).

    .. math:: z_0 = \Phi^{-1}\!\left(\frac{\#\{\theta^*_b < \hat\theta\} + \tfrac12\#\{\theta^*_b = \hat\theta\}}{B}\right),
              \quad a = \frac{\sum_j (\bar\theta_{(\cdot)} - \theta_{(j)})^3}
                             {6 \left(\sum_j (\bar\theta_{(\cdot)} - \theta_{(j)})^2\right)^{3/2}}

    with :math:`\theta_{(j)}` the leave-one-patient-out (jackknife) estimates; the interval is the
    :math:`\Phi(z_0 + \frac{z_0 + z_q}{1 - a(z_0 + z_q)})` percentiles of the bootstrap values,
    :math:`q \in \{\alpha/2, 1 - \alpha/2\}`.  NaN when the estimate or a jackknife value is undefined.
    """
    d = np.asarray(dist, dtype=np.float64)
    d = d[~np.isnan(d)]
    jack = np.asarray(jackknife, dtype=np.float64)
    if len(d) == 0 or not np.isfinite(estimate) or not np.isfinite(jack).all():
        return float("nan"), float("nan")
    p0 = (np.sum(d < estimate) + 0.5 * np.sum(d == estimate)) / len(d)
    if p0 <= 0 or p0 >= 1:
        return float("nan"), float("nan")
    z0 = sps.norm.ppf(p0)
    diff = jack.mean() - jack
    ss = float((diff**2).sum())
    a = float((diff**3).sum()) / (6 * ss**1.5) if ss > 0 else 0.0
    alpha = 1 - confidence
    zq = sps.norm.ppf([alpha / 2, 1 - alpha / 2])
    q = sps.norm.cdf(z0 + (z0 + zq) / (1 - a * (z0 + zq)))
    lo, hi = np.percentile(d, 100 * q)
    return float(lo), float(hi)


# --------------------------------------------------------------------------------------------
# the bootstrap


@dataclass
class BootstrapResult:
    """Point estimates, percentile and BCa intervals and resample distributions of many metrics.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per (metric, attribute, arm) with columns ``metric, attribute, arm, estimate,
        ci_low, ci_high, bca_low, bca_high, p_value, n_undefined``.  ``arm`` is ``clean``,
        ``recon``, ``change`` (recon - clean) or ``relative_change`` (percent of |clean|).
        ``p_value`` (change rows) is the two-sided bootstrap p-value
        :math:`\\min(1, 2\\min(P^*(\\Delta^* \\le 0), P^*(\\Delta^* \\ge 0)))`.
    distributions : dict
        ``(metric, attribute, arm) -> (n_resamples,)`` bootstrap values (NaN where undefined).
    """

    table: pd.DataFrame
    distributions: dict[tuple[str, str, str], np.ndarray]
    n_resamples: int
    confidence: float
    seed: int
    n_patients: int
    n_studies: int
    meta: dict = field(default_factory=dict)


class _Design:
    """Per-patient sufficient statistics of every requested metric, laid out as matrix columns."""

    def __init__(self, y, pcode, n_pat, attrs, preds, scores, values, values_name, min_group_size, auroc_gap,
                 blocked=None, eodd_agg="worst_case"):
        self.y, self.pcode, self.n_pat = y, pcode, n_pat
        self.eodd_agg = eodd_agg
        #: (metric, attribute) -> arms: not estimable under the patient guards, NaN in every resample
        self.blocked: dict[tuple[str, str], list[str]] = blocked or {}
        self.attrs, self.min_group_size, self.values_name = attrs, min_group_size, values_name
        blocks, cols, start = [], {}, 0
        for arm, pred in preds.items():
            for name, (codes, labels) in attrs.items():
                g = len(labels)
                cells = confusion_cells(y, pred, codes)
                blk = np.bincount(pcode * 4 * g + cells, minlength=n_pat * 4 * g).reshape(n_pat, 4 * g)
                blocks.append(blk.astype(np.float64))
                cols[("conf", arm, name)] = slice(start, start + 4 * g)
                start += 4 * g
        for arm, val in values.items():
            for name, (codes, labels) in attrs.items():
                g = len(labels)
                idx = pcode * g + codes
                sums = np.bincount(idx, weights=val, minlength=n_pat * g).reshape(n_pat, g)
                cnts = np.bincount(idx, minlength=n_pat * g).reshape(n_pat, g).astype(np.float64)
                blocks.append(np.concatenate([sums, cnts], axis=1))
                cols[("val", arm, name)] = slice(start, start + 2 * g)
                start += 2 * g
        self.pm = np.concatenate(blocks, axis=1) if blocks else np.zeros((n_pat, 0))
        self.cols = cols
        self.sorted = {arm: SortedScores(y, s) for arm, s in scores.items()}
        self.scores = scores
        self.auroc_gap = auroc_gap
        self.group_sorted = {
            (arm, name): codes[ss.order]
            for arm, ss in self.sorted.items()
            for name, (codes, _) in attrs.items()
        }
        # sparse (segments x patients) matrices: segment sums of a resample = A @ draw counts
        self.seg_mats = {arm: ss.segment_matrix(pcode, n_pat) for arm, ss in self.sorted.items()}
        self.group_seg_mats = {
            (arm, name): [ss.segment_matrix(pcode, n_pat, codes == g) for g in range(len(labels))]
            for arm, ss in self.sorted.items()
            for name, (codes, labels) in attrs.items()
            if auroc_gap and name != _POOLED
        }

    def auc_for_counts(self, cnt: np.ndarray) -> dict:
        """AUROC (and per-group AUROC gaps) for patient draw counts ``(b, P)``."""
        out = {}
        ct = np.ascontiguousarray(cnt.T, dtype=np.int32)
        for arm, ss in self.sorted.items():
            out[("auroc", "all", arm)] = ss.auroc_from_segments((self.seg_mats[arm] @ ct).T)
            for name in self.attrs:
                if (arm, name) not in self.group_seg_mats or ("auroc_gap", name) in self.blocked:
                    continue
                ga = np.stack(
                    [ss.auroc_from_segments((a @ ct).T) for a in self.group_seg_mats[(arm, name)]], axis=1
                )
                out[("auroc_gap", name, arm)] = ga.max(axis=1) - ga.min(axis=1)
                out[("worst_group_auroc", name, arm)] = ga.min(axis=1)
        return out

    def metrics(self, lin: np.ndarray, auc: dict) -> dict[tuple[str, str, str], np.ndarray]:
        out: dict[tuple[str, str, str], np.ndarray] = {}
        for (kind, arm, name), sl in self.cols.items():
            g = len(self.attrs[name][1])
            blk = lin[:, sl]
            if kind == "conf":
                fm = fairness_from_counts(blk.reshape(len(blk), g, 4), self.min_group_size, eodd_agg=self.eodd_agg)
                if name != _POOLED:
                    for m in COUNT_METRICS:
                        out[(m, name, arm)] = fm[m]
                out[("sensitivity", "all", arm)] = fm["sensitivity"]
                out[("specificity", "all", arm)] = fm["specificity"]
            else:
                sums, cnts = blk[:, :g], blk[:, g:]
                with np.errstate(invalid="ignore", divide="ignore"):
                    means = np.where(cnts >= max(self.min_group_size, 1), sums / cnts, np.nan)
                    overall = sums.sum(1) / cnts.sum(1)
                vn = self.values_name
                if name != _POOLED:
                    out[(f"{vn}_gap", name, arm)] = means.max(axis=1) - means.min(axis=1)
                    out[(f"worst_group_{vn}", name, arm)] = means.min(axis=1)
                    if vn == "dice":
                        out[("dice_skewed_error_ratio", name, arm)] = ser_from_group_means(means)
                out[(f"mean_{vn}", "all", arm)] = overall
        for key, val in auc.items():
            out[key] = val
        for (metric, name), arms in self.blocked.items():
            for arm in arms:
                out[(metric, name, arm)] = np.full(len(lin), np.nan)
        return out

    def auc_for_weights(self, w: np.ndarray) -> dict:
        """AUROC (and per-group AUROC gaps) for study weights ``(b, n)``."""
        out = {}
        for arm, ss in self.sorted.items():
            ws = w[:, ss.order]
            out[("auroc", "all", arm)] = ss.auroc(ws)
            if self.auroc_gap:
                for name, (_, labels) in self.attrs.items():
                    if name == _POOLED or ("auroc_gap", name) in self.blocked:
                        continue
                    gs = self.group_sorted[(arm, name)]
                    ga = np.stack([ss.auroc(ws * (gs == g)) for g in range(len(labels))], axis=1)
                    out[("auroc_gap", name, arm)] = ga.max(axis=1) - ga.min(axis=1)
                    out[("worst_group_auroc", name, arm)] = ga.min(axis=1)
        return out

    def auc_jackknife(self) -> dict:
        out = {}
        for arm, s in self.scores.items():
            out[("auroc", "all", arm)] = jackknife_auroc(self.y, s, self.pcode, self.n_pat)
            if self.auroc_gap:
                for name, (codes, labels) in self.attrs.items():
                    if name == _POOLED or ("auroc_gap", name) in self.blocked:
                        continue
                    ga = np.stack(
                        [
                            jackknife_auroc(
                                self.y[codes == g], s[codes == g], self.pcode[codes == g], self.n_pat
                            )
                            for g in range(len(labels))
                        ],
                        axis=1,
                    )
                    out[("auroc_gap", name, arm)] = ga.max(axis=1) - ga.min(axis=1)
                    out[("worst_group_auroc", name, arm)] = ga.min(axis=1)
        return out


def _with_changes(m: dict[tuple[str, str, str], np.ndarray]) -> dict[tuple[str, str, str], np.ndarray]:
    out = dict(m)
    for (metric, attr, arm), rec in m.items():
        if arm != "recon" or (metric, attr, "clean") not in m:
            continue
        cl = m[(metric, attr, "clean")]
        out[(metric, attr, "change")] = rec - cl
        with np.errstate(invalid="ignore", divide="ignore"):
            out[(metric, attr, "relative_change")] = np.where(cl != 0, 100 * (rec - cl) / np.abs(cl), np.nan)
    return out


def _as_attrs(sensitive_features: object | Mapping[str, object] | None, n: int) -> dict:
    if sensitive_features is None:
        sf: Mapping[str, object] = {_POOLED: np.zeros(n, dtype=np.int64)}
    elif isinstance(sensitive_features, Mapping):
        sf = sensitive_features
    elif isinstance(sensitive_features, pd.DataFrame):
        sf = {c: sensitive_features[c].to_numpy() for c in sensitive_features.columns}
    else:
        sf = {"group": sensitive_features}
    attrs = {}
    for name, v in sf.items():
        codes, labels = group_codes(v, f"sensitive_features[{name!r}]")
        check_same_length(y_true=np.empty(n), **{f"sensitive_features[{name!r}]": codes})
        attrs[str(name)] = (codes, labels)
    return attrs


def bootstrap_metrics(
    y_true: object,
    *,
    patient_ids: object,
    sensitive_features: object | Mapping[str, object] | None = None,
    y_pred: object | None = None,
    y_pred_clean: object | None = None,
    y_score: object | None = None,
    y_score_clean: object | None = None,
    values: object | None = None,
    values_clean: object | None = None,
    values_name: str = "dice",
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    min_group_size: int = 1,
    min_group_patients: int = 1,
    min_group_positives: int = 1,
    auroc_gap: bool = False,
    bca: bool = True,
    chunk_size: int = 64,
    eodd_agg: str = "worst_case",
) -> BootstrapResult:
    r"""Patient-level paired bootstrap of task and fairness metrics, with percentile and BCa intervals.

    For every attribute in ``sensitive_features`` (an array, a mapping name -> array, or a DataFrame):
    equalized-odds, equal-opportunity, demographic-parity differences and the skewed error ratio
    (from ``y_pred``), the AUROC gap and the worst-group AUROC :math:`\min_g \mathrm{AUROC}_g` (from
    ``y_score``, when ``auroc_gap=True``), and the gap and
    worst group of the mean of ``values`` (e.g. Dice).  Overall: AUROC, sensitivity, specificity,
    mean of ``values``.  Each is given for ``recon`` (``y_pred``/``y_score``/``values``), for
    ``clean`` (the ``*_clean`` arguments) when given, and then as ``change`` = recon - clean and
    ``relative_change`` = 100 (recon - clean) / |clean| (NaN where clean is 0 or undefined).

    Resamples draw patients with replacement (all resamples at once, in chunks of ``chunk_size``),
    the same weights for clean and recon (paired).  BCa uses the leave-one-patient-out jackknife.
    Same inputs and ``seed`` give the same intervals.

    Guards: ``min_group_size`` (studies), ``min_group_patients`` and ``min_group_positives`` are
    checked once, on the data (:func:`reconaudit.metrics.guard_reasons`): a group metric with a group below them
    (patients; patients with a positive / negative study where the metric needs them, see
    :data:`reconaudit.metrics.METRIC_NEEDS`) is **not estimable**: NaN estimate and distribution in
    every arm, the reasons in ``meta["not_estimable"][(metric, attribute)]``.  The AUROC gap obeys
    every guard like the count metrics.  ``p_value`` follows :func:`bootstrap_p_value` (undefined
    resamples counted against the statistic).  ``eodd_agg`` combines the TPR and FPR gaps of the
    equalized-odds difference: ``"worst_case"`` (max, the package's definition) or ``"mean"`` (the
    study's).  With ``values_name="dice"`` the Dice skewed error ratio
    :math:`(1 - \min_g \overline{D}_g)/(1 - \max_g \overline{D}_g)` is reported as well.

    Returns
    -------
    BootstrapResult
    """
    y = as_binary(y_true, "y_true")
    n = len(y)
    pcode, n_pat = _patient_codes(patient_ids)
    check_same_length(y_true=y, patient_ids=pcode)
    attrs = _as_attrs(sensitive_features, n)
    preds, scores, vals = {}, {}, {}
    for arm, p, s, v in (
        ("clean", y_pred_clean, y_score_clean, values_clean),
        ("recon", y_pred, y_score, values),
    ):
        if p is not None:
            preds[arm] = as_binary(p, "y_pred" if arm == "recon" else "y_pred_clean")
            check_same_length(y_true=y, y_pred=preds[arm])
        if s is not None:
            scores[arm] = as_1d(s, "y_score" if arm == "recon" else "y_score_clean", np.float64)
            check_same_length(y_true=y, y_score=scores[arm])
        if v is not None:
            vals[arm] = as_1d(v, "values" if arm == "recon" else "values_clean", np.float64)
            check_same_length(y_true=y, values=vals[arm])
            if np.isnan(vals[arm]).any():
                raise ValueError(
                    f"{'values' if arm == 'recon' else 'values_clean'}: contains NaN; drop those studies"
                )
    if not (preds or scores or vals):
        raise ValueError("bootstrap_metrics: give at least one of y_pred, y_score, values")
    blocked, not_estimable = _guards(y, pcode, attrs, preds, scores, vals, values_name, auroc_gap,
                                     min_group_size, min_group_patients, min_group_positives)
    # the guards hold on the data; within a resample a group is undefined only where a rate has no
    # denominator (no positive drawn, ...), which bootstrap_p_value counts against the statistic
    design = _Design(y, pcode, n_pat, attrs, preds, scores, vals, values_name, 1, auroc_gap, blocked, eodd_agg)

    ones = np.ones((1, n))
    point = _with_changes(design.metrics(design.pm.sum(axis=0, keepdims=True), design.auc_for_weights(ones)))
    rng = np.random.default_rng(seed)
    chunks: dict[tuple[str, str, str], list[np.ndarray]] = {k: [] for k in point}
    with progress.task("bootstrap", n_resamples) as t:
        for start in range(0, n_resamples, chunk_size):
            b = min(chunk_size, n_resamples - start)
            cnt = _patient_draw_counts(n_pat, b, rng)
            lin = cnt.astype(np.float64) @ design.pm
            auc = design.auc_for_counts(cnt) if design.sorted else {}
            for k, v in _with_changes(design.metrics(lin, auc)).items():
                chunks[k].append(v)
            t.advance(b)
    dists = {k: np.concatenate(v) for k, v in chunks.items()}
    jack = None
    if bca:
        jl = design.pm.sum(axis=0, keepdims=True) - design.pm
        jack = _with_changes(design.metrics(jl, design.auc_jackknife()))
    rows = []
    for key, est in point.items():
        e, d = float(est[0]), dists[key]
        lo, hi = percentile_interval(d, confidence)
        blo, bhi = bca_interval(d, e, jack[key], confidence) if jack is not None else (np.nan, np.nan)
        pval = bootstrap_p_value(d) if key[2] == "change" else np.nan
        rows.append(
            dict(
                metric=key[0],
                attribute=key[1],
                arm=key[2],
                estimate=e,
                ci_low=lo,
                ci_high=hi,
                bca_low=blo,
                bca_high=bhi,
                p_value=pval,
                n_undefined=int(np.isnan(d).sum()),
            )
        )
    table = pd.DataFrame(rows).drop_duplicates(subset=["metric", "attribute", "arm"])
    arm_order = {"clean": 0, "recon": 1, "change": 2, "relative_change": 3}
    table = table.sort_values(
        ["metric", "attribute", "arm"], key=lambda c: c.map(arm_order) if c.name == "arm" else c
    )
    table = table.reset_index(drop=True)
    undefined = table[np.isnan(table["estimate"]) & table["arm"].isin(["clean", "recon"])]
    if len(undefined):
        warnings.warn(
            "bootstrap_metrics: undefined point estimates (a group without positives/negatives, or below "
            f"min_group_size={min_group_size}): "
            + ", ".join(f"{r.metric}[{r.attribute}, {r.arm}]" for r in undefined.itertuples()),
            MetricUndefinedWarning,
            stacklevel=2,
        )
    return BootstrapResult(table, dists, n_resamples, confidence, seed, n_pat, n,
                           {"chunk_size": chunk_size, "not_estimable": not_estimable})


def _guards(y, pcode, attrs, preds, scores, vals, values_name, auroc_gap, min_size, min_patients, min_positives):
    """(metric, attribute) pairs not estimable under the patient-level guards, with their reasons."""
    blocked: dict[tuple[str, str], list[str]] = {}
    reasons: dict[tuple[str, str], list[str]] = {}
    families = []
    if preds:
        families += [(m, list(preds)) for m in COUNT_METRICS]
    if scores and auroc_gap:
        families += [("auroc_gap", list(scores)), ("worst_group_auroc", list(scores))]
    if vals:
        families += [(f"{values_name}_gap", list(vals)), (f"worst_group_{values_name}", list(vals))]
        if values_name == "dice":
            families.append(("dice_skewed_error_ratio", list(vals)))
    for name, (codes, labels) in attrs.items():
        if name == _POOLED:
            continue
        support = group_support(y, sensitive_features=labels[codes], patient_ids=pcode)
        for metric, arms in families:
            why = guard_reasons(support, METRIC_NEEDS.get(metric, ()), min_group_patients=min_patients,
                                min_group_positives=min_positives, min_group_size=min_size)
            if why:
                blocked[(metric, name)] = arms
                reasons[(metric, name)] = why
    return blocked, reasons


# --------------------------------------------------------------------------------------------
# paired permutation test


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


# --------------------------------------------------------------------------------------------
# seeds and changes


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
