r"""The vectorized patient-level paired bootstrap of task and fairness metrics
(:func:`bootstrap_metrics`), with percentile and BCa intervals, p-values and patient-level group guards.

Every statistic is a function of weighted sufficient statistics:

- confusion counts per group, ``(B, G, 4)`` = patient-count matrix ``(B, P)`` @ per-patient
  cell counts ``(P, 4G)`` (one matrix product per chunk for all attributes and both arms);
- AUROC: scores sorted once, resample weights applied as cumulative sums (ties count 1/2);
- group means of a per-study value (e.g. Dice): weighted sums and counts per group.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import progress
from ..schema import COUNT_METRICS
from ._auroc import SortedScores, jackknife_auroc
from ._utils import as_1d, as_binary, check_same_length, group_codes
from .fairness import (
    METRIC_NEEDS,
    confusion_cells,
    fairness_from_counts,
    group_support,
    guard_reasons,
    ser_from_group_means,
)
from .intervals import bca_interval, bootstrap_p_value, percentile_interval
from .resampling import _patient_codes, _patient_draw_counts
from .task import MetricUndefinedWarning

logger = logging.getLogger(__name__)

__all__ = ["BootstrapResult", "bootstrap_metrics"]

_POOLED = "__pooled__"


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
