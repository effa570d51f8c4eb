r"""Shortcut check: how well patient group membership can be predicted from an image representation.

A reconstructor that makes sex or age band *more* predictable from its output than from the clean
image has written group information into the image: a shortcut a downstream model can learn.

The probe (:func:`probe_scores`) is a logistic regression (standardised features, L2, ``C=1``) on
the frozen diagnostic model's penultimate features, fitted and evaluated by
``StratifiedGroupKFold`` cross-validation with patients kept within one fold, so every study gets an
out-of-fold probability for each group.  Its AUROC (:func:`probe_auroc`) is the AUROC of the
second group's probability for two groups, and the macro one-vs-rest mean
:math:`\frac1G\sum_g \mathrm{AUROC}(s_g, [g_i = g])` for more.  :func:`shortcut_probe` compares the
clean and processed representations of the same studies: AUROC on each, the change (processed -
clean), patient-level paired bootstrap intervals of the out-of-fold scores (the probe is fitted once,
not per resample), and ``more_predictable`` when the change's interval lies above 0.

:func:`reconaudit.tasks.shortcut.cnn_probe_scores` gives the same out-of-fold scores from a small
CNN trained on the images themselves.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from ._utils import check_same_length, group_codes, to_numpy
from .intervals import column_intervals, column_p_values
from .resampling import bootstrap_statistic, weighted_auroc

__all__ = ["probe_folds", "probe_scores", "probe_auroc", "shortcut_probe"]


def probe_folds(groups: object, patient_ids: object, n_splits: int = 5, seed: int = 0) -> np.ndarray:
    """Fold index per study: stratified by group, every patient within one fold (``StratifiedGroupKFold``)."""
    from sklearn.model_selection import StratifiedGroupKFold

    codes, labels = group_codes(groups, "groups")
    pcodes, pl = group_codes(patient_ids, "patient_ids")
    check_same_length(groups=codes, patient_ids=pcodes)
    if len(labels) < 2:
        raise ValueError(f"groups: the probe needs at least two groups, got {list(labels)}")
    k = int(min(n_splits, len(pl)))
    if k < 2:
        raise ValueError(f"patient_ids: the probe needs at least two patients, got {len(pl)}")
    fold = np.empty(len(codes), np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a group rarer than n_splits
        for f, (_, test) in enumerate(StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(
                np.zeros(len(codes)), codes, pcodes)):
            fold[test] = f
    return fold


def probe_scores(features: object, groups: object, patient_ids: object, *, n_splits: int = 5, seed: int = 0,
                 folds: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold group probabilities ``(n, G)`` of the logistic probe, and the group labels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = to_numpy(features, "features", np.float64)
    if x.ndim != 2:
        raise ValueError(f"features: expected (n_studies, n_features), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features: contains NaN or infinite values")
    codes, labels = group_codes(groups, "groups")
    check_same_length(features=x, groups=codes)
    fold = probe_folds(codes, patient_ids, n_splits, seed) if folds is None else np.asarray(folds)
    out = np.full((len(x), len(labels)), np.nan)
    for f in np.unique(fold):
        tr, te = fold != f, fold == f
        present = np.unique(codes[tr])
        if len(present) < 2:
            out[np.ix_(te, present)] = 1.0
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        model.fit(x[tr], codes[tr])
        out[np.ix_(te, model.classes_)] = model.predict_proba(x[te])
    return np.nan_to_num(out, nan=0.0), labels


def probe_auroc(scores: np.ndarray, groups: object, *, weights: np.ndarray | None = None) -> float | np.ndarray:
    """AUROC of probe scores ``(n, G)``: binary for two groups, macro one-vs-rest for more (module docstring)."""
    codes, labels = group_codes(groups, "groups")
    s = np.asarray(scores, dtype=np.float64)
    check_same_length(scores=s, groups=codes)
    w = np.ones((1, len(codes))) if weights is None else np.atleast_2d(np.asarray(weights, dtype=np.float64))
    targets = [1] if len(labels) == 2 else range(len(labels))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        au = np.nanmean(np.stack([weighted_auroc((codes == g).astype(np.int8), s[:, g], w) for g in targets]), axis=0)
    return float(au[0]) if weights is None else au


def shortcut_probe(
    features_clean: object,
    features: object,
    *,
    sensitive_features: object,
    patient_ids: object,
    n_splits: int = 5,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    scores: tuple[np.ndarray, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Probe AUROC on clean and processed features of the same studies, and its change (module docstring).

    ``scores`` (optional) are precomputed out-of-fold ``(clean, processed)`` scores, e.g. from the CNN
    probe; then the features are not used.

    Returns
    -------
    pandas.DataFrame
        Rows ``arm`` = ``clean``, ``recon``, ``change`` with ``estimate, ci_low, ci_high, p_value``
        (change) and ``more_predictable`` (the change's interval above 0), ``n_groups``.
    """
    codes, labels = group_codes(sensitive_features)
    if scores is None:
        folds = probe_folds(codes, patient_ids, n_splits, seed)
        sc, _ = probe_scores(features_clean, codes, patient_ids, folds=folds)
        sr, _ = probe_scores(features, codes, patient_ids, folds=folds)
    else:
        sc, sr = (np.asarray(v, dtype=np.float64) for v in scores)

    def stat(w: np.ndarray) -> np.ndarray:
        c, r = probe_auroc(sc, codes, weights=w), probe_auroc(sr, codes, weights=w)
        return np.stack([c, r, r - c], axis=1)

    point, dist = bootstrap_statistic(stat, patient_ids, n_resamples=n_resamples, seed=seed)
    lo, hi = column_intervals(dist, confidence)
    p = column_p_values(dist)
    out = pd.DataFrame({"arm": ["clean", "recon", "change"], "estimate": point, "ci_low": lo, "ci_high": hi,
                        "p_value": [np.nan, np.nan, p[2]]})
    out["more_predictable"] = [False, False, bool(lo[2] > 0)]
    out["n_groups"] = len(labels)
    return out
