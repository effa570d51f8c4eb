r"""Group fairness metrics, all derived from one per-group confusion-count array.

The engine is :func:`confusion_counts`: an array ``(..., G, 4)`` of (TP, FP, TN, FN) per group
(leading axes: e.g. bootstrap resamples).  Every classification fairness metric is a function of
those counts (:func:`fairness_from_counts`, batched, NaN where undefined); the public functions
follow fairlearn's calling convention (``sensitive_features`` keyword-only) and, when a metric is
undefined, return NaN and emit a :class:`FairnessUndefinedWarning` naming the group and reason.

Per-group rates, with :math:`n_g = TP_g + FP_g + TN_g + FN_g`:

.. math::
    TPR_g = \frac{TP_g}{TP_g + FN_g}, \quad FPR_g = \frac{FP_g}{FP_g + TN_g}, \quad
    SR_g = \frac{TP_g + FP_g}{n_g}, \quad ERR_g = \frac{FP_g + FN_g}{n_g}
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd

from ._auroc import SortedScores
from ._utils import as_1d, as_binary, check_same_length, group_codes
from .task import MetricUndefinedWarning

__all__ = [
    "FairnessUndefinedWarning",
    "CONFUSION_FIELDS",
    "confusion_counts",
    "group_rates",
    "fairness_from_counts",
    "equalized_odds_difference",
    "equal_opportunity_difference",
    "demographic_parity_difference",
    "skewed_error_ratio",
    "auroc_gap",
    "dice_gap",
    "worst_group",
    "by_group",
    "METRIC_NEEDS",
    "EODD_AGGS",
    "dice_skewed_error_ratio",
    "ser_from_group_means",
    "operating_point_flag",
    "group_support",
    "guard_reasons",
]

CONFUSION_FIELDS = ("TP", "FP", "TN", "FN")
TP, FP, TN, FN = 0, 1, 2, 3


class FairnessUndefinedWarning(MetricUndefinedWarning):
    """A fairness metric is undefined for some group (no positives, empty, below ``min_group_size``).

    The metric is returned as NaN; the message names the group(s) and the reason.
    """


def confusion_cells(y_true: np.ndarray, y_pred: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Flat cell index ``4 * group + {TP:0, FP:1, TN:2, FN:3}`` of each study."""
    cat = np.where(y_pred == 1, np.where(y_true == 1, TP, FP), np.where(y_true == 1, FN, TN))
    return 4 * codes + cat


def confusion_counts(
    y_true: object, y_pred: object, groups: object, weights: object | None = None
) -> np.ndarray:
    """Per-group confusion counts ``(G, 4)`` = (TP, FP, TN, FN), or ``(B, G, 4)`` for weights ``(B, n)``.

    One weighted ``bincount`` over the flat cell index (group, outcome); groups are the sorted
    unique values of ``groups``.
    """
    y = as_binary(y_true, "y_true")
    p = as_binary(y_pred, "y_pred")
    codes, labels = group_codes(groups, "groups")
    check_same_length(y_true=y, y_pred=p, groups=codes)
    cells = confusion_cells(y, p, codes)
    ncell = 4 * len(labels)
    if weights is None:
        return np.bincount(cells, minlength=ncell).reshape(len(labels), 4).astype(np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 1:
        return np.bincount(cells, weights=w, minlength=ncell).reshape(len(labels), 4)
    if w.shape[1] != len(y):
        raise ValueError(f"weights: expected shape (B, {len(y)}), got {w.shape}")
    flat = (np.arange(len(w))[:, None] * ncell + cells[None, :]).ravel()
    return np.bincount(flat, weights=w.ravel(), minlength=len(w) * ncell).reshape(len(w), len(labels), 4)


def group_rates(counts: np.ndarray, min_group_size: float = 1) -> dict[str, np.ndarray]:
    """TPR, FPR, selection rate and error rate per group (NaN where undefined), shape ``(..., G)``.

    A group with fewer than ``min_group_size`` studies (or none) has every rate NaN.
    """
    c = np.asarray(counts, dtype=np.float64)
    n = c.sum(axis=-1)
    pos = c[..., TP] + c[..., FN]
    neg = c[..., FP] + c[..., TN]
    small = n < max(min_group_size, 1)

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            r = a / b
        return np.where((b > 0) & ~small, r, np.nan)

    return {
        "tpr": ratio(c[..., TP], pos),
        "fpr": ratio(c[..., FP], neg),
        "selection_rate": ratio(c[..., TP] + c[..., FP], n),
        "error_rate": ratio(c[..., FP] + c[..., FN], n),
        "n": n,
    }


def _spread(r: np.ndarray) -> np.ndarray:
    """max - min over the group axis; NaN if any group is NaN."""
    return r.max(axis=-1) - r.min(axis=-1)


EODD_AGGS = ("worst_case", "mean")


def _check_agg(agg: str) -> None:
    if agg not in EODD_AGGS:
        raise ValueError(f"agg: expected 'worst_case' (package) or 'mean' (study), got {agg!r}")


def fairness_from_counts(
    counts: np.ndarray, min_group_size: float = 1, *, eodd_agg: str = "worst_case"
) -> dict[str, np.ndarray]:
    r"""All count-based fairness metrics from confusion counts ``(..., G, 4)``, batched; NaN where undefined.

    - ``equalized_odds_difference`` :math:`= \max(\max_g TPR_g - \min_g TPR_g,\ \max_g FPR_g - \min_g FPR_g)`
      (``eodd_agg="worst_case"``, the package's definition) or their mean (``eodd_agg="mean"``, the
      study's), as fairlearn's ``agg``
    - ``equal_opportunity_difference`` :math:`= \max_g TPR_g - \min_g TPR_g`
    - ``demographic_parity_difference`` :math:`= \max_g SR_g - \min_g SR_g`
    - ``skewed_error_ratio`` :math:`= \max_g ERR_g / \min_g ERR_g` (undefined when :math:`\min_g ERR_g = 0`)
    - ``sensitivity``, ``specificity`` over all groups pooled.
    """
    _check_agg(eodd_agg)
    r = group_rates(counts, min_group_size)
    tpr_gap, fpr_gap = _spread(r["tpr"]), _spread(r["fpr"])
    err = r["error_rate"]
    emin, emax = err.min(axis=-1), err.max(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ser = np.where(emin > 0, emax / np.where(emin > 0, emin, 1.0), np.nan)
    total = np.asarray(counts, dtype=np.float64).sum(axis=-2)
    pooled = group_rates(total[..., None, :], 1)
    return {
        "equalized_odds_difference": (
            np.maximum(tpr_gap, fpr_gap) if eodd_agg == "worst_case" else (tpr_gap + fpr_gap) / 2
        ),
        "equal_opportunity_difference": tpr_gap,
        "demographic_parity_difference": _spread(r["selection_rate"]),
        "skewed_error_ratio": ser,
        "sensitivity": pooled["tpr"][..., 0],
        "specificity": 1 - pooled["fpr"][..., 0],
    }


def _reasons(
    counts: np.ndarray, labels: np.ndarray, min_group_size: float, need: tuple[str, ...]
) -> list[str]:
    reasons = []
    for g, lab in enumerate(labels.tolist()):
        n = counts[g].sum()
        if n == 0:
            reasons.append(f"group {lab!r} is empty")
        elif n < min_group_size:
            reasons.append(f"group {lab!r} has {int(n)} studies < min_group_size={min_group_size}")
        else:
            if "pos" in need and counts[g, TP] + counts[g, FN] == 0:
                reasons.append(f"group {lab!r} has no positives (TPR undefined)")
            if "neg" in need and counts[g, FP] + counts[g, TN] == 0:
                reasons.append(f"group {lab!r} has no negatives (FPR undefined)")
    return reasons


def _warn(metric: str, reasons: list[str], stacklevel: int = 3) -> None:
    warnings.warn(
        f"{metric} undefined, returning NaN: " + "; ".join(reasons),
        FairnessUndefinedWarning,
        stacklevel=stacklevel,
    )


def _count_metric(
    name: str,
    y_true: object,
    y_pred: object,
    sensitive_features: object,
    min_group_size: float,
    need: tuple[str, ...],
    eodd_agg: str = "worst_case",
) -> float:
    y = as_binary(y_true, "y_true")
    p = as_binary(y_pred, "y_pred")
    codes, labels = group_codes(sensitive_features)
    check_same_length(y_true=y, y_pred=p, sensitive_features=codes)
    counts = np.bincount(confusion_cells(y, p, codes), minlength=4 * len(labels)).reshape(-1, 4).astype(float)
    value = float(fairness_from_counts(counts, min_group_size, eodd_agg=eodd_agg)[name])
    if np.isnan(value):
        reasons = _reasons(counts, labels, min_group_size, need)
        if name == "skewed_error_ratio" and not reasons:
            err = group_rates(counts)["error_rate"]
            reasons = [
                f"group {labels.tolist()[g]!r} has error rate 0 (ratio divides by it)"
                for g in np.flatnonzero(err == 0)
            ]
        if len(labels) < 2:
            reasons.append(f"only {len(labels)} group present")
        _warn(name, reasons, stacklevel=4)
    return value


def equalized_odds_difference(
    y_true: object, y_pred: object, *, sensitive_features: object, min_group_size: int = 1,
    agg: str = "worst_case",
) -> float:
    r"""Equalized-odds difference (fairlearn's ``method="between_groups"``).

    .. math:: \mathrm{EOD} = \max\left(\max_g TPR_g - \min_g TPR_g,\ \max_g FPR_g - \min_g FPR_g\right)

    with ``agg="worst_case"`` (the package's definition), or the mean of the two gaps with
    ``agg="mean"`` (the study's definition; fairlearn's ``agg="mean"``).

    Parameters
    ----------
    y_true, y_pred : array of 0/1, shape (N,)
        Targets and thresholded predictions.
    sensitive_features : array, shape (N,)
        Group of each study (any number of groups).
    min_group_size : int
        Groups with fewer studies make the metric undefined.
    agg : {"worst_case", "mean"}
        How the TPR and FPR gaps combine.

    Returns
    -------
    float
        NaN with a :class:`FairnessUndefinedWarning` when a group has no positives, no negatives,
        or fewer than ``min_group_size`` studies.
    """
    return _count_metric(
        "equalized_odds_difference", y_true, y_pred, sensitive_features, min_group_size, ("pos", "neg"), agg
    )


def equal_opportunity_difference(
    y_true: object, y_pred: object, *, sensitive_features: object, min_group_size: int = 1
) -> float:
    r"""Equal-opportunity difference: the true-positive-rate gap.

    .. math:: \mathrm{EOpp} = \max_g TPR_g - \min_g TPR_g

    NaN with a :class:`FairnessUndefinedWarning` when a group has no positives or is too small.
    """
    return _count_metric(
        "equal_opportunity_difference", y_true, y_pred, sensitive_features, min_group_size, ("pos",)
    )


def demographic_parity_difference(
    y_true: object, y_pred: object, *, sensitive_features: object, min_group_size: int = 1
) -> float:
    r"""Demographic-parity difference: the selection-rate gap.

    .. math:: \mathrm{DPD} = \max_g SR_g - \min_g SR_g, \quad SR_g = \frac{TP_g + FP_g}{n_g}

    NaN with a :class:`FairnessUndefinedWarning` when a group is below ``min_group_size``.
    """
    return _count_metric(
        "demographic_parity_difference", y_true, y_pred, sensitive_features, min_group_size, ()
    )


def skewed_error_ratio(
    y_true: object, y_pred: object, *, sensitive_features: object, min_group_size: int = 1
) -> float:
    r"""Skewed error ratio: the largest group error rate over the smallest.

    .. math:: \mathrm{SER} = \frac{\max_g ERR_g}{\min_g ERR_g}, \quad ERR_g = \frac{FP_g + FN_g}{n_g}

    NaN with a :class:`FairnessUndefinedWarning` when a group has zero errors or is too small.
    """
    return _count_metric("skewed_error_ratio", y_true, y_pred, sensitive_features, min_group_size, ())


def group_aurocs(
    y_true: np.ndarray,
    y_score: np.ndarray,
    codes: np.ndarray,
    n_groups: int,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """AUROC per group, ``(G,)`` or ``(B, G)`` for weights ``(B, n)``, from a single sort of the scores."""
    ss = SortedScores(y_true, y_score)
    w = np.ones((1, len(y_true))) if weights is None else np.atleast_2d(weights)
    w = w[:, ss.order]
    gs = codes[ss.order]
    out = np.stack([ss.auroc(w * (gs == g)) for g in range(n_groups)], axis=-1)
    return out[0] if weights is None else out


def auroc_gap(
    y_true: object, y_score: object, *, sensitive_features: object, min_group_size: int = 1
) -> float:
    r"""AUROC gap: the largest minus the smallest group AUROC.

    .. math:: \Delta_{AUROC} = \max_g \mathrm{AUROC}_g - \min_g \mathrm{AUROC}_g

    NaN with a :class:`FairnessUndefinedWarning` when a group lacks positives or negatives or is too small.
    """
    y = as_binary(y_true, "y_true")
    s = as_1d(y_score, "y_score", np.float64)
    codes, labels = group_codes(sensitive_features)
    check_same_length(y_true=y, y_score=s, sensitive_features=codes)
    a = group_aurocs(y, s, codes, len(labels))
    n = np.bincount(codes, minlength=len(labels))
    a = np.where(n >= min_group_size, a, np.nan)
    if np.isnan(a).any() or len(labels) < 2:
        counts = np.bincount(confusion_cells(y, y, codes), minlength=4 * len(labels)).reshape(-1, 4)
        reasons = _reasons(counts, labels, min_group_size, ("pos", "neg"))
        if len(labels) < 2:
            reasons.append(f"only {len(labels)} group present")
        _warn("auroc_gap", reasons)
        return float("nan")
    return float(a.max() - a.min())


def by_group(
    values: object,
    *,
    sensitive_features: object,
    agg: Callable[..., float] = np.mean,
    y_true: object | None = None,
    min_group_size: int = 1,
) -> dict[object, float]:
    """``agg`` of the values within each group: ``agg(values_g)``, or ``agg(y_true_g, values_g)``
    when ``y_true`` is given (scikit-learn metric signature, e.g. ``roc_auc_score``).

    Groups below ``min_group_size`` map to NaN.
    """
    v = as_1d(values, "values")
    codes, labels = group_codes(sensitive_features)
    check_same_length(values=v, sensitive_features=codes)
    yt = None if y_true is None else as_1d(y_true, "y_true")
    out: dict[object, float] = {}
    for g, lab in enumerate(labels.tolist()):  # loop over groups (a handful)
        sel = codes == g
        if sel.sum() < max(min_group_size, 1):
            out[lab] = float("nan")
            continue
        out[lab] = float(agg(v[sel]) if yt is None else agg(yt[sel], v[sel]))
    return out


def worst_group(
    values: object,
    *,
    sensitive_features: object,
    agg: Callable[..., float] = np.mean,
    y_true: object | None = None,
    higher_is_better: bool = True,
    min_group_size: int = 1,
) -> float:
    r"""Worst-group performance: :math:`\min_g \mathrm{agg}(\text{values}_g)` (``max`` when lower is better).

    See :func:`by_group` for ``agg`` and ``y_true``.  NaN with a :class:`FairnessUndefinedWarning`
    when any group's value is undefined (too small, or ``agg`` returned NaN).
    """
    res = by_group(
        values, sensitive_features=sensitive_features, agg=agg, y_true=y_true, min_group_size=min_group_size
    )
    bad = [k for k, v in res.items() if np.isnan(v)]
    if bad:
        _warn(
            "worst_group",
            [f"group {k!r} is undefined (fewer than {min_group_size} studies or agg gave NaN)" for k in bad],
        )
        return float("nan")
    vals = np.array(list(res.values()))
    return float(vals.min() if higher_is_better else vals.max())


def dice_gap(dice: object, *, sensitive_features: object, min_group_size: int = 1) -> float:
    r"""Dice gap: the largest minus the smallest group mean Dice.

    .. math:: \Delta_{Dice} = \max_g \overline{D}_g - \min_g \overline{D}_g

    NaN with a :class:`FairnessUndefinedWarning` when a group is too small.
    """
    d = as_1d(dice, "dice", np.float64)
    if np.isnan(d).any():
        raise ValueError("dice: contains NaN; Dice is defined for every study (empty-empty = 1)")
    res = by_group(d, sensitive_features=sensitive_features, min_group_size=min_group_size)
    bad = [k for k, v in res.items() if np.isnan(v)]
    if bad or len(res) < 2:
        _warn(
            "dice_gap",
            [f"group {k!r} has fewer than {min_group_size} studies" for k in bad] or ["fewer than 2 groups"],
        )
        return float("nan")
    vals = np.array(list(res.values()))
    return float(vals.max() - vals.min())


def dice_skewed_error_ratio(dice: object, *, sensitive_features: object, min_group_size: int = 1) -> float:
    r"""Skewed error ratio of a segmentation (the study's definition), errors as :math:`1 - \overline{D}_g`.

    .. math:: \mathrm{SER}_{Dice} = \frac{1 - \min_g \overline{D}_g}{1 - \max_g \overline{D}_g}

    NaN with a :class:`FairnessUndefinedWarning` when a group is too small or the best group's mean
    Dice is 1 (no error to divide by).
    """
    d = as_1d(dice, "dice", np.float64)
    res = by_group(d, sensitive_features=sensitive_features, min_group_size=min_group_size)
    value = float(ser_from_group_means(np.array(list(res.values()))[None])[0]) if len(res) > 1 else np.nan
    if np.isnan(value):
        _warn("dice_skewed_error_ratio", ["a group is too small, fewer than 2 groups, or the best mean Dice is 1"])
    return value


def ser_from_group_means(means: np.ndarray) -> np.ndarray:
    r""":math:`(1 - \min_g m_g) / (1 - \max_g m_g)` over the last axis, batched; NaN where max is 1 or any m is NaN."""
    lo, hi = means.min(axis=-1), means.max(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(hi < 1, (1 - lo) / np.where(hi < 1, 1 - hi, 1.0), np.nan)


#: What each group metric needs in every group beyond ``min_group_patients`` patients: patients with
#: a positive study (``"pos"``: TPR, AUROC) and with a negative study (``"neg"``: FPR, AUROC).
METRIC_NEEDS: dict[str, tuple[str, ...]] = {
    "equalized_odds_difference": ("pos", "neg"),
    "equal_opportunity_difference": ("pos",),
    "demographic_parity_difference": (),
    "skewed_error_ratio": (),
    "auroc_gap": ("pos", "neg"),
    "worst_group_auroc": ("pos", "neg"),
}


def group_support(
    y_true: object | None, *, sensitive_features: object, patient_ids: object
) -> pd.DataFrame:
    """Per-group support counted in studies and in **patients**.

    Returns
    -------
    pandas.DataFrame
        Indexed by the sorted group values, columns ``studies``, ``patients``, ``positive_patients``
        (patients with at least one positive study in the group) and ``negative_patients``.  Without
        ``y_true`` the last two are 0.
    """
    codes, labels = group_codes(sensitive_features)
    pid = as_1d(patient_ids, "patient_ids")
    check_same_length(sensitive_features=codes, patient_ids=pid)
    y = np.zeros(len(codes), np.int8) if y_true is None else as_binary(y_true, "y_true")
    check_same_length(sensitive_features=codes, y_true=y)
    df = pd.DataFrame({"g": codes, "p": pid, "pos": y == 1, "neg": y == 0})
    out = pd.DataFrame(
        {
            "studies": np.bincount(codes, minlength=len(labels)),
            "patients": df.groupby("g")["p"].nunique().reindex(range(len(labels)), fill_value=0).to_numpy(),
            "positive_patients": df[df["pos"]].groupby("g")["p"].nunique()
            .reindex(range(len(labels)), fill_value=0).to_numpy() if y_true is not None else 0,
            "negative_patients": df[df["neg"]].groupby("g")["p"].nunique()
            .reindex(range(len(labels)), fill_value=0).to_numpy() if y_true is not None else 0,
        },
        index=pd.Index(labels.tolist(), name="group"),
    )
    return out


def guard_reasons(
    support: pd.DataFrame,
    need: tuple[str, ...] = (),
    *,
    min_group_patients: int = 1,
    min_group_positives: int = 1,
    min_group_size: int = 1,
) -> list[str]:
    """Why a group metric is **not estimable** under the patient-level guards (empty when it is).

    A group metric is estimable only when every group has at least ``min_group_size`` studies and
    ``min_group_patients`` patients and, for the needs of the metric (:data:`METRIC_NEEDS`), at least ``min_group_positives``
    patients with a positive study (``"pos"``) and as many with a negative one (``"neg"``).  Counting
    patients, not studies, keeps one patient with 24 slices from passing as a group of 24.
    """
    out = []
    for lab, r in support.iterrows():
        if r["studies"] < min_group_size:
            out.append(f"group {lab!r}: {int(r['studies'])} studies < min_group_size={min_group_size} "
                       "(not estimable)")
            continue
        if r["patients"] < min_group_patients:
            out.append(f"group {lab!r}: {int(r['patients'])} patient(s) ({int(r['studies'])} studies) "
                       f"< min_group_patients={min_group_patients} (not estimable)")
            continue
        if "pos" in need and r["positive_patients"] < min_group_positives:
            out.append(f"group {lab!r}: {int(r['positive_patients'])} patient(s) with a positive study "
                       f"< min_group_positives={min_group_positives} (not estimable)")
        if "neg" in need and r["negative_patients"] < min_group_positives:
            out.append(f"group {lab!r}: {int(r['negative_patients'])} patient(s) with a negative study "
                       f"< min_group_positives={min_group_positives} (not estimable)")
    return out


def operating_point_flag(
    y_true: object, pred_clean: object, pred_recon: object, *, sensitive_features: object | None = None
) -> str:
    """Say where processing pushed an operating point to a corner, so that a gap "closes" by itself.

    A fixed threshold can make a rate gap vanish without any fairness: when a reconstruction moves
    every score below the threshold, sensitivity is 0 and specificity 1 in every group and every
    TPR/FPR gap is 0.  Returns ``""`` when nothing is degenerate; otherwise one clause per finding:
    nothing (or everything) called positive after processing, or a group whose sensitivity or
    specificity is 0 or 1 after processing but was not that on clean images.
    """
    y = as_binary(y_true, "y_true")
    pc, pr = as_binary(pred_clean, "pred_clean"), as_binary(pred_recon, "pred_recon")
    g = np.zeros(len(y), dtype=np.int64) if sensitive_features is None else sensitive_features
    codes, labels = group_codes(g)
    check_same_length(y_true=y, pred_clean=pc, pred_recon=pr, sensitive_features=codes)
    if pr.sum() == 0 and pc.sum() > 0:
        return "nothing called positive after processing: gaps at this threshold are closed by the operating point"
    if pr.sum() == len(pr) and pc.sum() < len(pc):
        return "everything called positive after processing: gaps at this threshold are closed by the operating point"
    rc = group_rates(np.bincount(confusion_cells(y, pc, codes), minlength=4 * len(labels)).reshape(-1, 4))
    rr = group_rates(np.bincount(confusion_cells(y, pr, codes), minlength=4 * len(labels)).reshape(-1, 4))
    out = []
    who = "" if sensitive_features is None else "group {!r}: "
    for i, lab in enumerate(labels.tolist()):
        for name, c, r in (("sensitivity", rc["tpr"][i], rr["tpr"][i]),
                           ("specificity", 1 - rc["fpr"][i], 1 - rr["fpr"][i])):
            if np.isfinite(r) and r in (0.0, 1.0) and c != r:
                out.append(f"{who.format(lab)}{name} {r:.2f} after processing (clean {c:.2f})")
    return "; ".join(out)
