r"""The audit's analysis, recomputed from the records table alone.

:func:`analyse` turns ``records.parquet`` (one row per test study per cell, see docs/records.md)
and the run description ``run.json`` into an :class:`Analysis`: tidy tables of image quality,
task performance and fairness on clean and on reconstructed images, their change
(:math:`\Delta = m_{recon} - m_{clean}`, "bias change" for a fairness gap) with patient-level paired
bootstrap intervals, p-values corrected for multiple comparisons across a stated family, training-seed
spread kept apart from the bootstrap intervals, and one plain-words headline per cohort.

All statistics come from :mod:`reconaudit.metrics`; this module only arranges the records into
the arrays those functions take and the results into tables.  Every random draw is seeded from
``meta["analysis"]["seed"]``, the cohort and the cell's training seed, so the same records give
the same tables, and the clean-image bootstrap of a cohort is the same in every cell.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as sps

from .. import metrics as M
from .. import progress
from ..engine.records import BULK_PREFIXES, Records
from ..metrics import registry as metric_registry
from ..metrics.competence import competence
from ..schema import (  # noqa: F401 - the records schema, re-exported
    CELL_KEYS,
    CLASSIFICATION_FAIRNESS,
    CONFIG_KEYS,
    COUNT_METRICS,
    FAIRNESS_METRICS,
    GAP_METRICS,
    QUALITY_METRICS,
    SEGMENTATION_FAIRNESS,
)
from ..seeding import derive_seed

logger = logging.getLogger(__name__)

__all__ = [
    "Analysis",
    "analyse",
    "KEY_COLUMNS",
    "CONFIG_COLUMNS",
    "MEAN_LABEL",
    "FAIRNESS_METRICS",
    "METRIC_NAMES",
    "severity_order",
    "level_text",
    "primary_task_metric",
]

#: The records schema (key columns, metric families) lives in reconaudit.schema.
KEY_COLUMNS, CONFIG_COLUMNS, QUALITY, _COUNT_METRICS = CELL_KEYS, CONFIG_KEYS, QUALITY_METRICS, COUNT_METRICS
#: ``label`` of the rows averaging AUROC over a cohort's labels.
MEAN_LABEL = "(mean)"
#: The group value of a study whose attribute is missing (``reconaudit.cohorts.groups.UNKNOWN``).
UNKNOWN_GROUP = "unknown"

METRIC_NAMES = {
    "psnr": "PSNR (dB)", "ssim": "SSIM", "nmse": "NMSE",
    "auroc": "AUROC", "sensitivity": "sensitivity", "specificity": "specificity",
    "dice": "Dice", "dice_patient": "Dice (patient median slice)", "hd95": "HD95 (px)",
    "equalized_odds_difference": "equalized-odds difference",
    "equal_opportunity_difference": "equal-opportunity difference",
    "demographic_parity_difference": "demographic-parity difference",
    "skewed_error_ratio": "skewed error ratio",
    "auroc_gap": "AUROC gap", "worst_group_auroc": "worst-group AUROC",
    "dice_gap": "Dice gap", "worst_group_dice": "worst-group Dice",
    "dice_skewed_error_ratio": "skewed error ratio (1 - Dice)",
}

#: The task family's AUROC test: DeLong with studies clustered in patients (Obuchowski's variance).
DELONG_TEST = "DeLong (patient-clustered)"
_STAT_COLUMNS = (
    "clean", "clean_ci_low", "clean_ci_high", "recon", "recon_ci_low", "recon_ci_high",
    "change", "change_ci_low", "change_ci_high", "change_rel_pct",
)


@dataclass
class Analysis:
    """Tables of one audit run, all recomputed from the records.

    Attributes
    ----------
    cells : pandas.DataFrame
        One row per cell: the cell keys (:data:`KEY_COLUMNS`), ``severity`` (0 for the mildest level of
        the cohort), ``n_studies``, ``n_patients``,
        ``samples``, and for ``q`` in PSNR/SSIM/NMSE the mean on the reconstruction ``q`` with its
        bootstrap interval ``q_ci_low``/``q_ci_high``, on the degraded input ``input_q`` (same
        interval columns), and the mean ``uncertainty`` of stochastic reconstructors.
    task : pandas.DataFrame
        One row per cell x label x metric (``auroc``, ``sensitivity``, ``specificity`` per label and
        ``auroc`` for label :data:`MEAN_LABEL`; ``dice``, ``dice_patient``, ``hd95`` for segmentation,
        label ``""``): ``clean``, ``recon``, ``change`` = recon - clean, each with ``*_ci_low`` /
        ``*_ci_high``, ``change_rel_pct``, ``p_value`` and its ``test``, ``p_adjusted``,
        ``significant``, ``ci_method``, ``n``.
    fairness : pandas.DataFrame
        One row per cell x group attribute x label x fairness metric (see
        :data:`FAIRNESS_METRICS`), the same statistic columns, ``groups`` (group sizes),
        ``worst_group_clean``/``worst_group_recon`` (for worst-group metrics), ``higher_is_worse``,
        ``bias_increased``, ``n_resamples`` (of the bootstrap behind ``p_value``), ``p_permutation``
        (paired permutation test, for reference) and ``reason`` (why a value is NaN; empty when defined).
    seeds : pandas.DataFrame
        Configurations run with several training seeds: per metric, the mean and standard deviation
        across seeds (training variance) next to the mean bootstrap half-width (test-set sampling).
    families : pandas.DataFrame
        The multiple-comparison families: ``family``, ``description``, ``n_tests``, ``method``, ``alpha``.
    headlines : pandas.DataFrame
        ``cohort``, ``sentence``: the findings in plain words, built from the tables above.
    competence : pandas.DataFrame
        Reconstructed cells against the no-reconstruction baseline
        (:func:`reconaudit.metrics.competence.competence`): ``below_baseline`` and its ``note``.
    settings : dict
        The analysis settings used (``n_resamples``, ``alpha``, ``correction``, ``min_group_size``,
        ``seed``, ``ci``).
    definitions : pandas.DataFrame
        ``metric``, ``formula``, ``definition``: each metric's formula under the definitions in force
        (``settings["definitions"]``: ``package`` or ``study``) and the threshold policy.
    cohorts : dict
        Per cohort: ``task``, ``labels``, ``group_attributes``, ``level_name``, ``levels`` ordered from
        the mildest to the most severe, and ``primary`` = (metric, label) of its task performance.
    """

    cells: pd.DataFrame
    task: pd.DataFrame
    fairness: pd.DataFrame
    seeds: pd.DataFrame
    families: pd.DataFrame
    headlines: pd.DataFrame
    settings: dict = field(default_factory=dict)
    cohorts: dict = field(default_factory=dict)
    definitions: pd.DataFrame = field(default_factory=pd.DataFrame)
    competence: pd.DataFrame = field(default_factory=pd.DataFrame)


# --------------------------------------------------------------------------------------------
# settings and validation


def _settings(meta: dict) -> dict:
    a = dict(meta.get("analysis") or {})
    s = {
        "n_resamples": int(a.get("n_resamples", 1000)),
        "alpha": float(a.get("alpha", 0.05)),
        "correction": str(a.get("correction", "holm")).lower(),
        "min_group_size": int(a.get("min_group_size", 5)),
        "min_group_patients": int(a.get("min_group_patients", 5)),
        "min_group_positives": int(a.get("min_group_positives", 2)),
        "max_undefined_share": float(a.get("max_undefined_share", 0.01)),
        "definitions": str(a.get("definitions", "package")).lower(),
        "seed": int(a.get("seed", 0)),
        "ci": str(a.get("ci", "percentile")).lower(),
    }
    if s["correction"] not in ("holm", "bh"):
        raise ValueError(f"run.json analysis.correction: expected 'holm' or 'bh', got {s['correction']!r}")
    if s["ci"] not in ("percentile", "bca"):
        raise ValueError(f"run.json analysis.ci: expected 'percentile' or 'bca', got {s['ci']!r}")
    if s["definitions"] not in ("package", "study"):
        raise ValueError(f"run.json analysis.definitions: expected 'package' or 'study', got {s['definitions']!r}")
    ev = dict((meta.get("config") or {}).get("evaluation") or {})
    s["threshold_policy"] = str(ev.get("threshold_policy", "sens_eq_spec"))
    s["target_sensitivity"] = ev.get("target_sensitivity")
    if s["definitions"] == "study":
        s["threshold_text"] = f"{s['threshold_policy']}, chosen per label on each arm's whole test set (study)"
    elif ev.get("rechoose_on_test"):
        s["threshold_text"] = f"{s['threshold_policy']}, re-chosen on each arm's test scores (rechoose_on_test)"
    else:
        s["threshold_text"] = (f"{s['threshold_policy']}, fixed on clean validation data (each arm's own "
                               "model; clean scores at the clean model's)")
    if s["n_resamples"] < 10:
        raise ValueError(f"run.json analysis.n_resamples: expected at least 10, got {s['n_resamples']}")
    return s


def _check_records(records: Records) -> None:
    missing = [c for c in (*KEY_COLUMNS, "patient_id", "study_index") if c not in records.columns]
    if missing:
        raise ValueError(
            f"records.parquet: missing columns {missing}; the records table must follow docs/records.md"
        )
    if records.empty:
        raise ValueError("records.parquet: has no rows; did the audit evaluate any cell?")


def _validate(records: pd.DataFrame) -> pd.DataFrame:
    """The records (a whole table or one cell's rows) with typed keys and group values as text
    (a missing group value is ``"missing"``)."""
    _check_records(Records(records))
    r = records.copy()
    r["level"] = r["level"].astype(float)
    r["mitigation_strength"] = pd.to_numeric(r["mitigation_strength"], errors="coerce").astype(float)
    r["seed"] = r["seed"].astype(int)
    for c in r.columns:
        if c.startswith("group:"):
            r[c] = r[c].astype(object).where(r[c].notna(), "missing").astype(str)
    return r


def _cohort_scan(records: Records) -> dict[str, dict]:
    """Per cohort, from a column-pruned scan of the records: the labels with a target, the task
    counts, the levels and the per-level sum / count of ``input_psnr`` (for :func:`severity_order`)."""
    targets = records.with_prefix("target:")
    psnr = "input_psnr" in records
    cols = ["cohort", "task", "level", *(["input_psnr"] if psnr else []), *targets]
    out: dict[str, dict] = {}
    for part in records.scan(cols):
        part = part.assign(level=part["level"].astype(float))
        for cohort, g in part.groupby("cohort", sort=True):
            o = out.setdefault(str(cohort), {"targets": set(), "tasks": {}, "levels": {}, "psnr_any": False})
            o["targets"] |= {c.split(":", 1)[1] for c in targets if g[c].notna().any()}
            for t, n in g["task"].value_counts().items():
                o["tasks"][t] = o["tasks"].get(t, 0) + int(n)
            if psnr:
                o["psnr_any"] |= bool(g["input_psnr"].notna().any())
                agg = g.groupby("level")["input_psnr"].agg(["sum", "count"])
            else:
                agg = pd.DataFrame({"sum": 0.0, "count": 0}, index=g["level"].dropna().unique())
            for lv, row in agg.iterrows():
                tot = o["levels"].setdefault(float(lv), [0.0, 0])
                tot[0] += float(row["sum"])
                tot[1] += int(row["count"])
    return out


def _labels(records: pd.DataFrame) -> list[str]:
    return [c.split(":", 1)[1] for c in records.columns if c.startswith("target:")]


def _attributes(records: pd.DataFrame) -> list[str]:
    return [c.split(":", 1)[1] for c in records.columns if c.startswith("group:")]


def severity_order(cohort_records: pd.DataFrame, level_name: str | None = None) -> list[float]:
    """Levels of a cohort ordered from the mildest to the most severe degradation.

    Severity is read from the data: the mean PSNR of the degraded input falls as the degradation
    grows.  Without ``input_psnr`` the unit decides: fewer photons, or a larger acceleration or
    masking ratio, is more severe.
    """
    levels = cohort_records["level"].dropna().unique().tolist()
    means = None
    if "input_psnr" in cohort_records and cohort_records["input_psnr"].notna().any():
        means = cohort_records.groupby("level")["input_psnr"].mean()
    return _severity(levels, means, level_name)


def _severity(levels: list, means: pd.Series | None, level_name: str | None) -> list[float]:
    """:func:`severity_order` from the levels and, when the records have ``input_psnr``, its mean per level."""
    levels = sorted(levels)
    if means is not None and means.notna().all() and means.nunique() > 1:
        return [float(v) for v in means.sort_values(ascending=False).index]
    if level_name == "photons":
        return [float(v) for v in levels[::-1]]
    return [float(v) for v in levels]


def primary_task_metric(task: str) -> tuple[str, str]:
    """(metric, label) that summarises a cohort's task performance: mean AUROC, or mean Dice."""
    return ("auroc", MEAN_LABEL) if task == "classification" else ("dice", "")


# --------------------------------------------------------------------------------------------
# small helpers around reconaudit.metrics


def _quiet(fn, *args, **kwargs):
    """Call ``fn``; return ``(value, reasons)`` with the metric warnings it raised as reasons."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = fn(*args, **kwargs)
    reasons = [str(w.message) for w in caught if issubclass(w.category, M.MetricUndefinedWarning)]
    return value, reasons


def _boot_index(table: pd.DataFrame) -> dict[tuple[str, str, str], dict]:
    """The rows of a bootstrap table keyed by (metric, attribute, arm)."""
    return {(r["metric"], r["attribute"], r["arm"]): r for r in table.to_dict("records")}


def _stats_from_boot(index: dict, metric: str, attribute: str, ci: str) -> dict:
    """Clean / recon / change estimates and intervals of one metric from an indexed bootstrap table."""
    out: dict[str, float] = {c: np.nan for c in _STAT_COLUMNS}
    out["p_value"] = np.nan
    out["n_undefined"], out["ci_method"] = 0, ci
    for arm in ("clean", "recon", "change"):
        r = index.get((metric, attribute, arm))
        if r is None:
            continue
        out["n_undefined"] = max(out["n_undefined"], int(r["n_undefined"]))
        lo, hi = r["ci_low"], r["ci_high"]
        if ci == "bca":
            if np.isfinite(r["bca_low"]) and np.isfinite(r["bca_high"]):
                lo, hi = r["bca_low"], r["bca_high"]
            elif np.isfinite(lo):
                out["ci_method"] = "percentile (BCa undefined)"
        out[arm], out[f"{arm}_ci_low"], out[f"{arm}_ci_high"] = float(r["estimate"]), float(lo), float(hi)
        if arm == "change":
            out["p_value"] = float(r["p_value"])
    r = index.get((metric, attribute, "relative_change"))
    if r is not None:
        out["change_rel_pct"] = float(r["estimate"])
    return out


def _stats_from_dists(clean: float, recon: float, dc: np.ndarray, dr: np.ndarray) -> dict:
    """Statistic columns from point estimates and paired bootstrap distributions (percentile CIs)."""
    change, _ = _quiet(M.metric_change, recon, clean)
    rel = float(change.relative_percent) if np.isfinite(clean) and clean != 0 else np.nan
    dd = dr - dc
    out = {"clean": clean, "recon": recon, "change": float(change.difference), "change_rel_pct": rel}
    for name, d in (("clean", dc), ("recon", dr), ("change", dd)):
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = M.percentile_interval(d)
    out["p_value"] = M.bootstrap_p_value(dd)
    out["n_undefined"], out["ci_method"] = int(np.isnan(dd).sum()), "percentile"
    return out


def _thresholds(rows: pd.DataFrame, label: str, keep: np.ndarray, keys: dict) -> tuple[np.ndarray, np.ndarray]:
    """(threshold of the processed scores, threshold of the clean scores) of one label in one cell.

    The clean scores are always called at the clean model's own threshold (``clean_threshold:``);
    records written before that column existed fall back to ``threshold:`` (the same model in the
    reconstruct arm; in the direct arm the direct model's, with a warning in the log).
    """
    n = int(keep.sum())
    thr = rows[f"threshold:{label}"].to_numpy(float)[keep] if f"threshold:{label}" in rows else np.full(n, 0.5)
    if f"clean_threshold:{label}" in rows:
        return thr, rows[f"clean_threshold:{label}"].to_numpy(float)[keep]
    if keys.get("arm") == "direct":
        logger.warning("records: cell %s has no clean_threshold:%s column; the clean baseline of the direct arm "
                       "uses the direct model's threshold (re-run the audit to record the clean one)",
                       keys.get("cell_id"), label)
    return thr, thr


def _group_sizes(groups: np.ndarray, patient_ids: np.ndarray | None = None) -> str:
    """``group: studies`` per group, with the patients when they differ from the studies."""
    if patient_ids is None:
        vals, counts = np.unique(groups, return_counts=True)
        return ", ".join(f"{v}: {c}" for v, c in zip(vals, counts))
    sup = M.group_support(None, sensitive_features=groups, patient_ids=patient_ids)
    return ", ".join(f"{v}: {r.studies}" + ("" if r.studies == r.patients else f" ({r.patients} patients)")
                     for v, r in zip(sup.index, sup.itertuples()))


def _eodd_agg(s: dict) -> str:
    """How the equalized-odds difference combines its TPR and FPR gaps under the definitions in force."""
    return "mean" if s["definitions"] == "study" else "worst_case"


def _guard_kwargs(s: dict) -> dict:
    """The group guards of the settings, as keyword arguments of the metrics functions."""
    return {"min_group_size": s["min_group_size"], "min_group_patients": s["min_group_patients"],
            "min_group_positives": s["min_group_positives"]}


def _guard_reason(res: M.BootstrapResult, metric: str, attribute: str) -> list[str]:
    return list(res.meta.get("not_estimable", {}).get((metric, attribute), []))


# --------------------------------------------------------------------------------------------
# per cell


def _cell_quality(rows: pd.DataFrame, keys: dict, s: dict, seed: int) -> dict:
    pid = rows["patient_id"].to_numpy()
    out = dict(keys)
    out["n_studies"] = len(rows)
    out["n_patients"] = int(rows["patient_id"].nunique())
    out["samples"] = int(rows["samples"].max()) if "samples" in rows else 1
    for q in QUALITY:
        for col in (q, f"input_{q}"):
            out[col] = out[f"{col}_ci_low"] = out[f"{col}_ci_high"] = np.nan
        rec = rows[q].to_numpy(float) if q in rows else np.full(len(rows), np.nan)
        inp = rows[f"input_{q}"].to_numpy(float) if f"input_{q}" in rows else np.full(len(rows), np.nan)
        has_rec, has_inp = np.isfinite(rec).any(), np.isfinite(inp).any()
        if not (has_rec or has_inp):
            continue
        # one paired bootstrap for both: "recon" = the reconstruction, "clean" = the degraded input
        ok = (np.isfinite(rec) | ~has_rec) & (np.isfinite(inp) | ~has_inp)
        res, _ = _quiet(
            M.bootstrap_metrics, np.zeros(int(ok.sum())), patient_ids=pid[ok],
            values=(rec if has_rec else inp)[ok], values_clean=inp[ok] if has_rec and has_inp else None,
            values_name=q, n_resamples=s["n_resamples"], seed=seed, bca=s["ci"] == "bca",
        )
        st = _stats_from_boot(_boot_index(res.table), f"mean_{q}", "all", s["ci"])
        for col, arm, present in ((q, "recon", has_rec), (f"input_{q}", "clean" if has_rec else "recon", has_inp)):
            if present:
                out[col], out[f"{col}_ci_low"], out[f"{col}_ci_high"] = (
                    st[arm], st[f"{arm}_ci_low"], st[f"{arm}_ci_high"])
    unc = rows["uncertainty"].to_numpy(float) if "uncertainty" in rows else np.array([np.nan])
    out["uncertainty"] = float(np.nanmean(unc)) if np.isfinite(unc).any() else np.nan
    return out


def _resampled_aurocs(patient_ids: np.ndarray, keep: np.ndarray, y: np.ndarray, scores: tuple, n_resamples: int,
                      seed: int) -> list[np.ndarray]:
    """AUROC of each of ``scores`` (the studies ``keep``) under the cell's patient-level resamples
    (every study of the cell drawn by patient, ``default_rng(seed)``), 64 resamples at a time: the
    values of the whole weight matrix, in memory bounded by 64 x studies."""
    rng = np.random.default_rng(seed)
    out: list[list] = [[] for _ in scores]
    for w in M.iter_bootstrap_weights(patient_ids, n_resamples, rng, 64):
        wk = w[:, keep]
        for o, sc in zip(out, scores):
            o.append(M.weighted_auroc(y, sc, wk))
    return [np.concatenate(o) if o else np.empty(0) for o in out]


def _classification_cell(rows, keys, labels, attrs, s, seed) -> tuple[list[dict], list[dict]]:
    task_rows: list[dict] = []
    fair_rows: list[dict] = []
    pid_all = rows["patient_id"].to_numpy()
    ones = np.ones((1, len(rows)))
    mean_parts: dict[str, list] = {"clean": [], "recon": [], "dc": [], "dr": []}
    for label in labels:
        if f"score:{label}" not in rows or f"clean_score:{label}" not in rows:
            continue
        y_all = rows[f"target:{label}"].to_numpy(float)
        keep = np.isfinite(y_all) & rows[f"score:{label}"].notna().to_numpy() & rows[f"clean_score:{label}"].notna().to_numpy()
        y = y_all[keep].astype(np.int8)
        sc = rows[f"clean_score:{label}"].to_numpy(float)[keep]
        sr = rows[f"score:{label}"].to_numpy(float)[keep]
        if s["definitions"] == "study" and len(y) and y.min() != y.max():
            # the study's operating point: one threshold per label and arm, chosen on that arm's test set
            thr = np.full(len(y), M.choose_threshold(y, sr, s["threshold_policy"], s["target_sensitivity"], label=label))
            clean_thr = np.full(len(y), M.choose_threshold(y, sc, s["threshold_policy"], s["target_sensitivity"],
                                                           label=label))
        else:
            thr, clean_thr = _thresholds(rows, label, keep, keys)
        pc, pr = (sc >= clean_thr).astype(np.int8), (sr >= thr).astype(np.int8)
        pid = pid_all[keep]
        groups = {a: rows[f"group:{a}"].to_numpy()[keep] for a in attrs}
        base = dict(keys, label=label, n=int(keep.sum()))
        if len(y) == 0 or y.min() == y.max():
            reason = f"label {label!r}: {'no studies with a target' if len(y) == 0 else 'only one class present'}"
            for metric in ("auroc", "sensitivity", "specificity"):
                task_rows.append(dict(base, metric=metric, **{c: np.nan for c in _STAT_COLUMNS}, p_value=np.nan,
                                      test="", ci_method=s["ci"], reason=reason))
            for a in attrs:
                for metric in CLASSIFICATION_FAIRNESS:
                    fair_rows.append(dict(base, attribute=a, metric=metric, groups=_group_sizes(groups[a]),
                                          **{c: np.nan for c in _STAT_COLUMNS}, p_value=np.nan, test="",
                                          worst_group_clean="", worst_group_recon="", reason=reason))
            continue
        res, _ = _quiet(
            M.bootstrap_metrics, y, patient_ids=pid, sensitive_features=groups, y_pred=pr, y_pred_clean=pc,
            y_score=sr, y_score_clean=sc, n_resamples=s["n_resamples"], seed=seed,
            **_guard_kwargs(s), auroc_gap=True, bca=s["ci"] == "bca", eodd_agg=_eodd_agg(s),
        )
        t = _boot_index(res.table)
        refine = dict(y_true=y, patient_ids=pid, sensitive_features=groups, y_pred=pr, y_pred_clean=pc, seed=seed,
                      **_guard_kwargs(s), eodd_agg=_eodd_agg(s))
        # --- task performance of this label
        st = _stats_from_boot(t, "auroc", "all", s["ci"])
        dl = M.clustered_delong_test(y, sr, sc, patient_ids=pid)
        task_rows.append(dict(base, metric="auroc", **st, test=DELONG_TEST, reason=""))
        task_rows[-1]["p_value"] = dl.p_value
        for metric in ("sensitivity", "specificity"):
            st = _stats_from_boot(t, metric, "all", s["ci"])
            task_rows.append(dict(base, metric=metric, **st, test="paired bootstrap", reason="",
                                  threshold_policy=s["threshold_text"],
                                  operating_point_flag=M.operating_point_flag(y, pc, pr)))
        mean_parts["clean"].append(float(M.weighted_auroc(y, sc, ones[:, keep])[0]))
        mean_parts["recon"].append(float(M.weighted_auroc(y, sr, ones[:, keep])[0]))
        dc, dr = _resampled_aurocs(pid_all, keep, y, (sc, sr), s["n_resamples"], seed)
        mean_parts["dc"].append(dc)
        mean_parts["dr"].append(dr)
        # --- fairness of this label, per attribute
        for a in attrs:
            g = groups[a]
            fbase = dict(base, attribute=a, groups=_group_sizes(g, pid))
            flag = M.operating_point_flag(y, pc, pr, sensitive_features=g)
            for metric in _COUNT_METRICS + ("auroc_gap",):
                st = _stats_from_boot(t, metric, a, s["ci"])
                entry = metric_registry.FAIRNESS_METRICS[metric]
                reasons = _guard_reason(res, metric, a)
                for arm, pred, score in (("clean", pc, sc), ("recon", pr, sr)):
                    arg = score if entry.input == "score" else pred
                    val, why = _quiet(entry.fn, y, arg, sensitive_features=g, min_group_size=s["min_group_size"],
                                      **({"agg": _eodd_agg(s)} if metric == "equalized_odds_difference" else {}))
                    if why:
                        reasons.append(f"{arm}: " + "; ".join(why))
                perm = None
                if metric in _COUNT_METRICS and np.isfinite(st["clean"]) and np.isfinite(st["recon"]):
                    perm = dict(clean=pc, recon=pr, sensitive_features=g, patient_ids=pid, metric=metric,
                                y_true=y, seed=seed, min_group_size=s["min_group_size"], eodd_agg=_eodd_agg(s))
                thresholded = metric in _COUNT_METRICS
                fair_rows.append(dict(fbase, metric=metric, **st, test="paired bootstrap", worst_group_clean="",
                                      worst_group_recon="", reason=" | ".join(reasons), _perm=perm,
                                      threshold_policy=s["threshold_text"] if thresholded else "threshold-free",
                                      operating_point_flag=flag if thresholded else "",
                                      _refine=(refine, metric, a) if metric in _COUNT_METRICS else None))
            fair_rows.append(_worst_group_auroc(fbase, y, sc, sr, g, res, t, s))
    if mean_parts["clean"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resamples stay NaN
            dc = np.nanmean(np.stack(mean_parts["dc"]), axis=0)
            dr = np.nanmean(np.stack(mean_parts["dr"]), axis=0)
            mc, mr = float(np.nanmean(mean_parts["clean"])), float(np.nanmean(mean_parts["recon"]))
        st = _stats_from_dists(mc, mr, dc, dr)
        task_rows.append(dict(keys, label=MEAN_LABEL, n=len(rows), metric="auroc", **st, test="paired bootstrap",
                              reason=""))
    return task_rows, fair_rows


def _excluding_unknown(
    cell_fn, rows: pd.DataFrame, attrs: list[str], policy: str, before: tuple, after: tuple
) -> tuple[list[dict], list[dict]]:
    """A cell's (task rows, fairness rows) under the cohort's ``unknown_groups`` policy.

    ``cell_fn(rows, *before, attrs, *after)`` computes the statistics.  With ``"exclude"`` the fairness rows of an
    attribute that has studies of group ``unknown`` come from the cell's studies with a known value
    of that attribute (task performance still uses every study); with ``"keep"`` ``unknown`` is a
    group like any other.
    """
    task, fair = cell_fn(rows, *before, attrs, *after)
    if policy != "exclude":
        return task, fair
    for a in attrs:
        known = (rows[f"group:{a}"].astype(str) != UNKNOWN_GROUP).to_numpy()
        if known.all():
            continue
        fair = [r for r in fair if r.get("attribute") != a]
        if known.any():
            fair += [r for r in cell_fn(rows[known], *before, [a], *after)[1] if r.get("attribute") == a]
    return task, fair


def _worst_group_auroc(fbase: dict, y, sc, sr, g, res: M.BootstrapResult, t: dict, s: dict) -> dict:
    """Worst-group AUROC row: the statistics from the cell's bootstrap, the worst group's name from the data."""
    st = _stats_from_boot(t, "worst_group_auroc", fbase["attribute"], s["ci"])
    reasons = _guard_reason(res, "worst_group_auroc", fbase["attribute"])
    worst = {}
    for arm, score in (("clean", sc), ("recon", sr)):
        by, why = _quiet(M.by_group, score, y_true=y, agg=_auroc_or_nan, sensitive_features=g,
                         min_group_size=s["min_group_size"])
        if not reasons and any(not np.isfinite(v) for v in by.values()):
            reasons.append(f"{arm}: a group has no positive or no negative study (AUROC undefined)")
        finite = {k: v for k, v in by.items() if np.isfinite(v)}
        worst[arm] = str(min(finite, key=finite.get)) if finite and np.isfinite(st[arm]) else ""
    return dict(fbase, metric="worst_group_auroc", **st, test="paired bootstrap",
                worst_group_clean=worst["clean"], worst_group_recon=worst["recon"], reason=" | ".join(reasons))


def _auroc_or_nan(y: np.ndarray, score: np.ndarray) -> float:
    y = np.asarray(y)
    if len(y) == 0 or y.min() == y.max():
        return float("nan")
    return float(M.weighted_auroc(y, score, np.ones((1, len(y))))[0])


def _wilcoxon(diff: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired per-patient differences (1 when all are zero)."""
    diff = diff[np.isfinite(diff)]
    if len(diff) == 0 or not np.any(diff != 0):
        return 1.0
    return float(sps.wilcoxon(diff, zero_method="zsplit").pvalue)


def _segmentation_cell(rows, keys, attrs, s, seed) -> tuple[list[dict], list[dict]]:
    task_rows: list[dict] = []
    fair_rows: list[dict] = []
    if "dice" not in rows or "clean_dice" not in rows:
        return task_rows, fair_rows
    keep = rows["dice"].notna().to_numpy() & rows["clean_dice"].notna().to_numpy()
    r = rows[keep]
    dr, dc = r["dice"].to_numpy(float), r["clean_dice"].to_numpy(float)
    pid = r["patient_id"].to_numpy()
    groups = {a: r[f"group:{a}"].to_numpy() for a in attrs}
    base = dict(keys, label="", n=len(r))
    if len(r) == 0:
        return task_rows, fair_rows
    res, _ = _quiet(
        M.bootstrap_metrics, np.zeros(len(r)), patient_ids=pid, sensitive_features=groups, values=dr,
        values_clean=dc, values_name="dice", n_resamples=s["n_resamples"], seed=seed,
        **_guard_kwargs(s), bca=s["ci"] == "bca",
    )
    t = _boot_index(res.table)
    refine = dict(y_true=np.zeros(len(r)), patient_ids=pid, sensitive_features=groups, values=dr, values_clean=dc,
                  values_name="dice", seed=seed, **_guard_kwargs(s))
    st = _stats_from_boot(t, "mean_dice", "all", s["ci"])
    st["p_value"] = _wilcoxon(M.patient_level(dr, pid, agg="mean").to_numpy()
                              - M.patient_level(dc, pid, agg="mean").to_numpy())
    task_rows.append(dict(base, metric="dice", **st, test="Wilcoxon signed-rank (patient means)",
                          reason=""))
    # patient-level: the median slice Dice of each patient, then the mean over patients
    pr = M.patient_level(dr, pid, agg="median")
    pc = M.patient_level(dc, pid, agg="median")
    res_p, _ = _quiet(
        M.bootstrap_metrics, np.zeros(len(pr)), patient_ids=pr.index.to_numpy(), values=pr.to_numpy(),
        values_clean=pc.to_numpy(), values_name="dice", n_resamples=s["n_resamples"], seed=seed,
        bca=s["ci"] == "bca",
    )
    st = _stats_from_boot(_boot_index(res_p.table), "mean_dice", "all", s["ci"])
    st["p_value"] = _wilcoxon(pr.to_numpy() - pc.to_numpy())
    task_rows.append(dict(keys, label="", n=len(pr), metric="dice_patient", **st,
                          test="Wilcoxon signed-rank (patient medians)", reason=""))
    if "hd95" in r and "clean_hd95" in r:
        hr, hc = r["hd95"].to_numpy(float), r["clean_hd95"].to_numpy(float)
        ok = np.isfinite(hr) & np.isfinite(hc)
        if ok.any():
            res_h, _ = _quiet(
                M.bootstrap_metrics, np.zeros(int(ok.sum())), patient_ids=pid[ok], values=hr[ok],
                values_clean=hc[ok], values_name="hd95", n_resamples=s["n_resamples"], seed=seed,
                bca=s["ci"] == "bca",
            )
            task_rows.append(dict(keys, label="", n=int(ok.sum()), metric="hd95",
                                  **_stats_from_boot(_boot_index(res_h.table), "mean_hd95", "all", s["ci"]),
                                  test="paired bootstrap",
                                  reason="" if ok.all() else f"{int((~ok).sum())} studies without a boundary to measure "
                                  "(both masks empty) left out"))
    for a in attrs:
        g = groups[a]
        fbase = dict(base, attribute=a, groups=_group_sizes(g, pid))
        seg_metrics = [("dice_gap", "dice_gap"), ("worst_group_dice", "worst_group_dice")]
        if s["definitions"] == "study":
            seg_metrics.append(("dice_skewed_error_ratio", "dice_skewed_error_ratio"))
        for metric, boot_name in seg_metrics:
            st = _stats_from_boot(t, boot_name, a, s["ci"])
            reasons, worst = _guard_reason(res, boot_name, a), {}
            for arm, v in (("clean", dc), ("recon", dr)):
                seg_fns = metric_registry.SEGMENTATION_FAIRNESS_METRICS
                if metric in seg_fns:
                    _, why = _quiet(seg_fns[metric].fn, v, sensitive_features=g, min_group_size=s["min_group_size"])
                else:
                    _, why = _quiet(M.worst_group, v, sensitive_features=g, min_group_size=s["min_group_size"])
                if why:
                    reasons.append(f"{arm}: " + "; ".join(why))
                by, _ = _quiet(M.by_group, v, sensitive_features=g, min_group_size=s["min_group_size"])
                finite = {k: x for k, x in by.items() if np.isfinite(x)}
                worst[arm] = str(min(finite, key=finite.get)) if finite and len(finite) == len(by) else ""
            perm = None
            if np.isfinite(st["clean"]) and np.isfinite(st["recon"]):
                perm = dict(clean=dc, recon=dr, sensitive_features=g, patient_ids=pid,
                            metric="worst_group" if metric == "worst_group_dice" else metric, seed=seed,
                            min_group_size=s["min_group_size"])
            fair_rows.append(dict(fbase, metric=metric, **st, test="paired bootstrap", _perm=perm,
                                  _refine=(refine, boot_name, a),
                                  worst_group_clean=worst["clean"] if metric == "worst_group_dice" else "",
                                  worst_group_recon=worst["recon"] if metric == "worst_group_dice" else "",
                                  reason=" | ".join(reasons)))
    return task_rows, fair_rows


# --------------------------------------------------------------------------------------------
# corrections, seeds, headlines


def _correct(df: pd.DataFrame, family: str, description: str, s: dict) -> tuple[pd.DataFrame, dict]:
    df = df.copy()
    if df.empty:
        df["p_adjusted"], df["significant"] = pd.Series(dtype=float), pd.Series(dtype=bool)
        return df, {"family": family, "description": description.format(n=0), "n_tests": 0,
                    "method": s["correction"], "alpha": s["alpha"]}
    adj = M.adjust_pvalues(df["p_value"].to_numpy(float), method=s["correction"], family=family,
                           alpha=s["alpha"])
    df["p_adjusted"] = adj["p_adjusted"].to_numpy()
    df["significant"] = adj["significant"].to_numpy(bool) & df["p_adjusted"].notna().to_numpy()
    n = int(adj["family_size"].iloc[0])
    method = "Holm" if s["correction"] == "holm" else "Benjamini-Hochberg"
    return df, {"family": family, "description": description.format(n=n), "n_tests": n,
                "method": method, "alpha": s["alpha"]}


def _seed_table(cells: pd.DataFrame, task: pd.DataFrame, fairness: pd.DataFrame) -> pd.DataFrame:
    """Mean and std across training seeds for configurations that were run with several seeds."""
    cfg = list(CONFIG_COLUMNS)
    nseeds = cells.groupby(cfg, dropna=False)["seed"].nunique()
    multi = nseeds[nseeds > 1].reset_index()[cfg]
    if multi.empty:
        return pd.DataFrame(columns=[*cfg, "source", "metric", "label", "attribute", "n_seeds", "seed_mean",
                                     "seed_std", "bootstrap_half_width"])
    parts = []

    def pick(df: pd.DataFrame) -> pd.DataFrame:
        return df.merge(multi, on=cfg, how="inner")

    q = pick(cells)
    for metric in QUALITY:
        if q[metric].notna().any():
            d = q.rename(columns={f"{metric}_ci_low": "ci_low", f"{metric}_ci_high": "ci_high"})
            agg = M.aggregate_seeds(d, metric, cfg)
            agg["source"], agg["metric"], agg["label"], agg["attribute"] = "quality", metric, "", ""
            parts.append(agg)
    t = pick(task)
    if not t.empty:
        for value, ci in (("recon", "recon"), ("change", "change")):
            d = t.rename(columns={f"{ci}_ci_low": "ci_low", f"{ci}_ci_high": "ci_high"})
            agg = M.aggregate_seeds(d, value, [*cfg, "metric", "label"])
            agg["source"], agg["attribute"] = f"task:{value}", ""
            parts.append(agg)
    f = pick(fairness)
    if not f.empty:
        for value in ("recon", "change"):
            d = f.rename(columns={f"{value}_ci_low": "ci_low", f"{value}_ci_high": "ci_high"})
            agg = M.aggregate_seeds(d, value, [*cfg, "metric", "label", "attribute"])
            agg["source"] = f"fairness:{value}"
            parts.append(agg)
    out = pd.concat(parts, ignore_index=True)
    cols = [*cfg, "source", "metric", "label", "attribute", "n_seeds", "seed_mean", "seed_std",
            "bootstrap_half_width"]
    return out[cols]


_SEGMENTER_POLICY = "segmenter threshold fixed on clean validation data"


def _fill_policy(df: pd.DataFrame, s: dict) -> pd.DataFrame:
    """Threshold policy of the rows that set none: the classifier's, the segmenter's or threshold-free (AUROC)."""
    seg = df["metric"].isin(["dice", "dice_patient", "hd95", *SEGMENTATION_FAIRNESS])
    thresholded = df["metric"].isin([*_COUNT_METRICS, "sensitivity", "specificity"])
    default = np.where(seg, _SEGMENTER_POLICY, np.where(thresholded, s["threshold_text"], "threshold-free"))
    pol, flag = df["threshold_policy"].astype(object), df["operating_point_flag"].astype(object)
    df["threshold_policy"] = pol.where(pol.notna(), pd.Series(default, index=df.index))
    df["operating_point_flag"] = flag.where(flag.notna(), "").astype(str)
    return df


#: Per metric: (formula, under "package", under "study") in plain text; None where both agree.
DEFINITIONS: dict[str, tuple[str, str | None]] = {
    "auroc": ("Mann-Whitney AUROC, ties 1/2; change tested by DeLong with studies clustered in patients", None),
    "sensitivity": ("TP / (TP + FN) at the operating threshold", None),
    "specificity": ("TN / (TN + FP) at the operating threshold", None),
    "dice": ("2|A∩B| / (|A| + |B|), 1 when both masks are empty; mean over studies", None),
    "dice_patient": ("mean over patients of the median slice Dice", None),
    "hd95": ("max of the two directed 95th-percentile boundary distances (px); a missed or a false lesion "
             "counts as the image diagonal (worst case); slices with both masks empty are left out", None),
    "equalized_odds_difference": ("max(TPR gap, FPR gap), gaps = max_g − min_g (package)",
                                  "mean(TPR gap, FPR gap) (study)"),
    "equal_opportunity_difference": ("max_g TPR_g − min_g TPR_g", None),
    "demographic_parity_difference": ("max_g SR_g − min_g SR_g, SR = (TP + FP) / n", None),
    "skewed_error_ratio": ("max_g ERR_g / min_g ERR_g, ERR = (FP + FN) / n", None),
    "auroc_gap": ("max_g AUROC_g − min_g AUROC_g", None),
    "worst_group_auroc": ("min_g AUROC_g", None),
    "dice_gap": ("max_g mean Dice_g − min_g mean Dice_g", None),
    "worst_group_dice": ("min_g mean Dice_g", None),
    "dice_skewed_error_ratio": ("(1 − min_g mean Dice_g) / (1 − max_g mean Dice_g) (study)", None),
}


def metric_definition(metric: str, definitions: str = "package") -> str:
    """The formula of ``metric`` under the definitions in force (``"package"`` or ``"study"``)."""
    package, study = DEFINITIONS.get(metric, (metric, None))
    return study if definitions == "study" and study else package


def definitions_table(s: dict) -> pd.DataFrame:
    """One row per metric: its name, the formula in force and which definition that is."""
    rows = []
    for metric, (_package, study) in DEFINITIONS.items():
        if metric == "dice_skewed_error_ratio" and s["definitions"] != "study":
            continue
        rows.append({"metric": METRIC_NAMES.get(metric, metric), "formula": metric_definition(metric, s["definitions"]),
                     "definition": s["definitions"] if study or metric == "dice_skewed_error_ratio" else "both"})
    rows.append({"metric": "operating threshold", "formula": s["threshold_text"], "definition": s["definitions"]})
    rows.append({"metric": "change / bias change", "formula": "Δ = m_processed − m_clean; "
                 "Δ% = 100 Δ / |m_clean| (NaN where m_clean = 0)", "definition": "both"})
    return pd.DataFrame(rows, columns=["metric", "formula", "definition"])


def _mark_not_estimable(df: pd.DataFrame, s: dict) -> pd.DataFrame:
    r"""``undefined_share`` (= ``n_undefined / n_resamples``) and ``estimable``; blank what is not estimable.

    A row is **not estimable** when its estimate is undefined (a group guard or a missing class) or
    when more than ``max_undefined_share`` of the bootstrap resamples behind its change are
    undefined.  Its p-value and change interval are set to NaN, so that it stays outside the
    multiple-comparison family, and ``reason`` says why.
    """
    df = df.copy()
    df["n_undefined"] = pd.to_numeric(df["n_undefined"], errors="coerce").fillna(0).astype(int)
    with np.errstate(invalid="ignore", divide="ignore"):
        df["undefined_share"] = df["n_undefined"] / df["n_resamples"]
    undefined = df["clean"].isna() | df["recon"].isna()
    too_many = df["undefined_share"] > s["max_undefined_share"]
    df["estimable"] = ~(undefined | too_many)
    for i in np.flatnonzero((too_many & ~undefined).to_numpy()):
        why = (f"{df['undefined_share'].iat[i]:.1%} of resamples undefined > max_undefined_share="
               f"{s['max_undefined_share']:g} (not estimable)")
        prev = df["reason"].iat[i]
        df.iat[i, df.columns.get_loc("reason")] = f"{prev} | {why}" if prev else why
    df.loc[~df["estimable"], ["p_value", "change_ci_low", "change_ci_high"]] = np.nan
    if "p_permutation" in df:
        df.loc[~df["estimable"], "p_permutation"] = np.nan
    return df


def _floor_bootstrap_p(df: pd.DataFrame, s: dict) -> None:
    """A bootstrap of B resamples cannot show p below 1/(B+1): floor its p-values there (in place)."""
    m = (df["test"] == "paired bootstrap") & df["p_value"].notna()
    df.loc[m, "p_value"] = M.floor_p_value(df.loc[m, "p_value"].to_numpy(float), s["n_resamples"])


def _permutation_tests(fair: pd.DataFrame, fair_rows: list[dict], s: dict) -> pd.DataFrame:
    """``p_permutation``: the paired permutation test (:func:`reconaudit.metrics.paired_permutation_test`).

    Its null hypothesis is that clean and processed predictions are exchangeable within each
    patient (reconstruction changed nothing for anyone); it is reported next to the bootstrap p-value
    for the count-based gaps and the Dice gap / worst-group Dice, with ``n_resamples`` permutations.
    """
    fair = fair.copy()
    fair["p_permutation"] = np.nan
    for i, r in enumerate(fair_rows):
        if r.get("_perm") is not None:
            res, _ = _quiet(M.paired_permutation_test, **r["_perm"], n_permutations=s["n_resamples"])
            fair.at[i, "p_permutation"] = res.p_value
    return fair


_REFINE_ENTRIES = 4_000_000


def _refine_chunk(patient_ids: np.ndarray) -> int:
    """Resamples per chunk of the second-stage bootstrap: 2,048, or fewer so that a chunk's draw
    counts stay near 4 million entries (64 at least): memory bounded by the chunk, not by the
    patients times 2,048 (0.5 GB at 10,000 patients).  Cells of up to 1,953 patients keep 2,048."""
    n_pat = len(pd.unique(np.asarray(patient_ids)))
    return int(max(64, min(2048, _REFINE_ENTRIES // max(n_pat, 1))))


def _refine_bootstrap(fair: pd.DataFrame, fair_rows: list[dict], s: dict) -> pd.DataFrame:
    r"""Re-run the bootstrap of extreme fairness changes with enough resamples to pass a correction.

    A bootstrap p-value :math:`2\min(P^*(\Delta^* \le 0), P^*(\Delta^* \ge 0))` from :math:`B`
    resamples cannot resolve values below about :math:`1/B`, while the smallest of :math:`m` tests
    must reach :math:`\alpha/m` under Holm.  Changes with at most two resamples on the far side of
    zero are bootstrapped again (confusion-count gaps and Dice gaps: cheap without AUROC) with
    :math:`B_2 = \lceil 4m/\alpha \rceil` resamples (at most 100,000), a two-stage Monte Carlo test;
    every p-value is then floored at :math:`1/(B+1)` of the bootstrap that produced it.
    """
    fair = fair.copy()
    b1 = s["n_resamples"]
    fair["n_resamples"] = np.where(fair["p_value"].notna(), b1, np.nan)
    m = int(fair["p_value"].notna().sum())
    b2 = M.two_stage_resamples(m, s["alpha"])
    if b2 > b1:
        todo: dict[int, tuple[dict, list[tuple[int, str, str]]]] = {}
        for i, r in enumerate(fair_rows):
            spec = r.get("_refine")
            p = fair.at[i, "p_value"]
            if spec is None or not M.needs_second_stage(p, b1):
                continue
            kwargs, metric, attribute = spec
            todo.setdefault(id(kwargs), (kwargs, []))[1].append((i, metric, attribute))
        for kwargs, rows in todo.values():
            res, _ = _quiet(M.bootstrap_metrics, **kwargs, n_resamples=b2, bca=False,
                            chunk_size=_refine_chunk(kwargs["patient_ids"]))
            idx = _boot_index(res.table)
            for i, metric, attribute in rows:
                r = idx.get((metric, attribute, "change"))
                if r is not None and np.isfinite(r["p_value"]):
                    fair.at[i, "p_value"] = float(r["p_value"])
                    fair.at[i, "n_resamples"] = b2
                    fair.at[i, "n_undefined"] = int(r["n_undefined"])
    ok = fair["p_value"].notna()
    fair.loc[ok, "p_value"] = M.floor_p_value(fair.loc[ok, "p_value"].to_numpy(float),
                                              fair.loc[ok, "n_resamples"].to_numpy(float))
    return fair


def _fmt(x: float, digits: int = 2) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    return f"{x:.{digits}f}"


def level_text(level: float, unit: str | None) -> str:
    """A degradation level in words: ``3000 photons``, ``8x acceleration``, ``ratio 0.5``."""
    v = f"{level:g}" if abs(level) < 1e7 else f"{level:.3g}"
    if unit == "photons":
        return f"{v} photons"
    if unit == "acceleration":
        return f"{v}x acceleration"
    return f"{unit} {v}" if unit else f"level {v}"


def _ci_text(row: pd.Series, col: str = "change", digits: int = 2) -> str:
    return f"{row[col]:+.{digits}f} [{_fmt(row[f'{col}_ci_low'], digits)}, {_fmt(row[f'{col}_ci_high'], digits)}]"


def _headlines(a: Analysis) -> pd.DataFrame:
    rows = []
    cells, task, fair = a.cells, a.task, a.fairness
    for cohort, info in a.cohorts.items():
        sentences = []
        levels = info["levels"]
        unit = info["level_name"] or "level"
        mild, severe = levels[0], levels[-1]
        c = cells[(cells["cohort"] == cohort) & (cells["mitigation"] == "none")]
        seed0 = int(c["seed"].min()) if not c.empty else 0
        c = c[c["seed"] == seed0]
        rec = c[c["arm"] == "reconstruct"]
        metric, label = info["primary"]
        mname = ("mean AUROC" if label == MEAN_LABEL else METRIC_NAMES[metric])
        at_severe = rec[rec["level"] == severe]
        best = None
        if not at_severe.empty and at_severe["psnr"].notna().any():
            best = str(at_severe.sort_values("psnr", ascending=False).iloc[0]["reconstructor"])
        elif not at_severe.empty:
            best = str(at_severe.iloc[0]["reconstructor"])
        if best is not None:
            p = rec[rec["reconstructor"] == best].set_index("level")["psnr"]
            t = task[(task["cohort"] == cohort) & (task["reconstructor"] == best) & (task["metric"] == metric)
                     & (task["label"] == label) & (task["level"] == severe) & (task["mitigation"] == "none")
                     & (task["seed"] == seed0)]
            part = ""
            if len(levels) > 1 and mild in p.index and severe in p.index and np.isfinite(p[mild]) and np.isfinite(p[severe]):
                d = p[severe] - p[mild]
                part = (f"PSNR {'fell' if d < 0 else 'rose'} {abs(d):.1f} dB from {level_text(mild, unit)} to "
                        f"{level_text(severe, unit)} ({best}, the reconstructor with the highest PSNR at "
                        f"{level_text(severe, unit)})")
            elif severe in p.index and np.isfinite(p[severe]):
                part = f"PSNR was {p[severe]:.1f} dB at {level_text(severe, unit)} ({best})"
            if not t.empty:
                tr = t.iloc[0]
                digits = 3 if metric in ("auroc", "dice", "dice_patient") else 2
                part2 = (f"{mname} changed by {_ci_text(tr, digits=digits)} from clean images "
                         f"({_fmt(tr['clean'], digits)} to {_fmt(tr['recon'], digits)}) at {level_text(severe, unit)}")
                part = f"{part} while {part2}" if part else part2[0].upper() + part2[1:]
            if part:
                sentences.append(part + ".")
        d = task[(task["cohort"] == cohort) & (task["arm"] == "direct") & (task["metric"] == metric)
                 & (task["label"] == label) & (task["level"] == severe) & (task["seed"] == seed0)]
        if not d.empty and best is not None:
            dr = d.iloc[0]
            b = task[(task["cohort"] == cohort) & (task["reconstructor"] == best) & (task["metric"] == metric)
                     & (task["label"] == label) & (task["level"] == severe) & (task["mitigation"] == "none")
                     & (task["seed"] == seed0)]
            if not b.empty:
                sentences.append(
                    f"Diagnosing the degraded input directly gave {mname} {_fmt(dr['recon'], 3)} "
                    f"[{_fmt(dr['recon_ci_low'], 3)}, {_fmt(dr['recon_ci_high'], 3)}], against "
                    f"{_fmt(b.iloc[0]['recon'], 3)} after {best} reconstruction."
                )
        tested = fair[(fair["cohort"] == cohort) & fair["p_adjusted"].notna()]
        # the largest change quoted is never a not-estimable row or a gap an operating point closed
        f = tested[tested["estimable"] & (tested["operating_point_flag"] == "")]
        fam = a.families[a.families["family"] == "fairness"]
        method = fam.iloc[0]["method"] if not fam.empty else a.settings["correction"]
        if not tested.empty:
            sig = tested[tested["significant"]]
            gaps = f[f["significant"] & f["higher_is_worse"] & (f["change"] > 0)]
            text = (f"{len(sig)} of {len(tested)} fairness changes tested in this cohort were significant after "
                    f"{method} correction (family: all fairness changes in the run)")
            n_flag = int((tested["operating_point_flag"] != "").sum())
            if n_flag:
                text += (f"; {n_flag} of them sit at an operating point pushed to a corner (a group's "
                         "sensitivity or specificity 0 or 1 after processing) and are not quoted")
            n_ne = int((~fair.loc[fair["cohort"] == cohort, "estimable"]).sum())
            if n_ne:
                text += f"; {n_ne} fairness rows were not estimable (group guards or undefined resamples)"
            ratios = ["skewed_error_ratio", "dice_skewed_error_ratio"]  # not on the scale of the differences
            gaps = gaps[~gaps["metric"].isin(ratios)]
            pool = gaps if not gaps.empty else f[f["higher_is_worse"] & ~f["metric"].isin(ratios)]
            if not pool.empty and pool["change"].notna().any():
                top = pool.loc[pool["change"].idxmax()]
                what = METRIC_NAMES[top["metric"]]
                lab = f", label {top['label']}" if top["label"] else ""
                mit = "" if top["mitigation"] == "none" else f", {top['mitigation']} mitigation"
                kind = "the largest significant increase" if not gaps.empty else "the largest increase (not significant)"
                text += (f"; {kind} was the {what} across {top['attribute']}{lab} with {top['reconstructor']}"
                         f"{mit} at {level_text(top['level'], unit)}: {_fmt(top['clean'])} on clean images, "
                         f"{_fmt(top['recon'])} "
                         f"{'on the degraded input' if top['arm'] == 'direct' else 'after reconstruction'} "
                         f"({_ci_text(top)})")
            sentences.append(text + ".")
        mit = fair[(fair["cohort"] == cohort) & (fair["mitigation"] != "none")]
        if not mit.empty:
            fm = "equalized_odds_difference" if info["task"] == "classification" else "dice_gap"
            m = mit[mit["metric"] == fm]
            base = fair[(fair["cohort"] == cohort) & (fair["mitigation"] == "none") & (fair["metric"] == fm)]
            on = ["level", "reconstructor", "seed", "attribute", "label", "degradation"]
            j = m.merge(base[[*on, "recon"]].rename(columns={"recon": "unmitigated"}), on=on, how="inner")
            if not j.empty:
                j = j.assign(delta=j["recon"] - j["unmitigated"])
                g = j.groupby(["mitigation", "mitigation_strength"], dropna=False)["delta"].mean().reset_index()
                g = g[g["delta"].notna()]
                if not g.empty:
                    bestm = g.loc[g["delta"].idxmin()]
                    lam = "" if not np.isfinite(bestm["mitigation_strength"]) else f" (lambda={bestm['mitigation_strength']:g})"
                    sentences.append(
                        f"Of the mitigations tried, {bestm['mitigation']}{lam} changed the {METRIC_NAMES[fm]} most "
                        f"favourably: by {bestm['delta']:+.3f} on average against the same reconstructor without "
                        f"mitigation."
                    )
        sd = a.seeds[(a.seeds["cohort"] == cohort) & (a.seeds["source"] == "task:recon")
                     & (a.seeds["metric"] == metric) & (a.seeds["label"] == label)] if not a.seeds.empty else a.seeds
        if sd is not None and not sd.empty:
            r0 = sd.iloc[0]
            sentences.append(
                f"Across {int(r0['n_seeds'])} training seeds, {r0['reconstructor']} at {level_text(r0['level'], unit)} "
                f"gave {mname} {_fmt(r0['seed_mean'], 3)} ± {_fmt(r0['seed_std'], 3)} (seed std), against a "
                f"bootstrap half-width of {_fmt(r0['bootstrap_half_width'], 3)}."
            )
        rows.append({"cohort": cohort, "sentence": " ".join(sentences) if sentences else "No cells were evaluated."})
    return pd.DataFrame(rows, columns=["cohort", "sentence"])


def _with_competence(headlines: pd.DataFrame, comp: pd.DataFrame, cohorts: dict) -> pd.DataFrame:
    """Append to each cohort's headline the reconstructors that are below the no-reconstruction baseline."""
    out = headlines.copy()
    for i, row in out.iterrows():
        bad = comp[(comp["cohort"] == row["cohort"]) & comp["below_baseline"]] if not comp.empty else comp
        if bad.empty:
            continue
        parts = []
        for _, b in bad.iterrows():
            mit = "" if b["mitigation"] == "none" else f" ({b['mitigation']})"
            unit = cohorts.get(row["cohort"], {}).get("level_name") or "level"
            parts.append(f"{b['reconstructor']}{mit} at {level_text(b['level'], unit)} ({b['below_metrics']})")
        out.loc[i, "sentence"] = (f"{row['sentence']} Below the no-reconstruction baseline: "
                                  f"{'; '.join(parts)}; findings about these reflect an undertrained model.")
    return out


# --------------------------------------------------------------------------------------------


def cohort_summaries(records: Records | pd.DataFrame, cohort_meta: dict) -> dict[str, dict]:
    """What the analysis needs to know of each cohort before its cells: task, labels, group
    attributes, levels from mildest to most severe, primary metric, unknown-group policy.

    ``cohort_meta``: ``run.json``'s ``cohorts`` (labels, group attributes, level name); a label or
    attribute it names that the records lack is left out.  Reads a few columns of the records a
    row group at a time.
    """
    rec = Records.of(records)
    scans = _cohort_scan(rec)
    cohorts: dict[str, dict] = {}
    for cohort, sc in sorted(scans.items()):
        cm = cohort_meta.get(cohort, {})
        present_labels = [c.split(":", 1)[1] for c in rec.with_prefix("target:") if c.split(":", 1)[1] in sc["targets"]]
        labels = [lab for lab in cm.get("labels", present_labels) if lab in present_labels] or present_labels
        all_attrs = [c.split(":", 1)[1] for c in rec.with_prefix("group:")]
        attrs = [a for a in cm.get("group_attributes", all_attrs) if f"group:{a}" in rec] or all_attrs
        counts = pd.Series(sc["tasks"])
        task = str(sorted(counts.index[counts == counts.max()])[0])  # the mode, ties to the first in order
        # a cohort audited for several tasks ("classification+segmentation") is summarised by its
        # segmentation task (Dice) and still gets every classification statistic
        tasks = [t for t in task.split("+") if t != "regression"] or ["none"]
        task = "segmentation" if "segmentation" in tasks else tasks[0]
        lv = sc["levels"]
        means = None
        if sc["psnr_any"]:
            means = pd.Series({k: (v[0] / v[1] if v[1] else np.nan) for k, v in sorted(lv.items())})
        cohorts[str(cohort)] = {
            "task": task, "labels": labels, "group_attributes": attrs,
            "level_name": cm.get("level_name", ""), "modality": cm.get("modality", ""),
            "levels": _severity(list(lv), means, cm.get("level_name")), "primary": primary_task_metric(task),
            "unknown_groups": cm.get("unknown_groups", "keep"),
        }
    return cohorts


def analyse(records: Records | pd.DataFrame, meta: dict) -> Analysis:
    """Analyse an audit run from its records and run description, one cell at a time.

    Parameters
    ----------
    records : Records or pandas.DataFrame
        ``records.parquet`` (see docs/records.md): one row per test study per cell, as a lazy
        :class:`~reconaudit.engine.records.Records` (memory: one cell, without the
        :data:`~reconaudit.engine.records.BULK_PREFIXES` columns) or as the table.
    meta : dict
        ``run.json``: ``cohorts`` (labels, group attributes, level name) and ``analysis`` settings
        (``n_resamples``, ``alpha``, ``correction`` ``"holm"``/``"bh"``, ``min_group_size``, ``seed``,
        ``ci`` ``"percentile"``/``"bca"``).

    Returns
    -------
    Analysis
        See :class:`Analysis`.  For every cell and metric :math:`m`: :math:`m_{clean}`,
        :math:`m_{recon}`, :math:`\\Delta = m_{recon} - m_{clean}` and
        :math:`\\Delta_\\% = 100\\,\\Delta / |m_{clean}|`, each with a 95 % patient-level paired
        bootstrap interval (:func:`reconaudit.metrics.bootstrap_metrics`); p-values from DeLong's test
        with studies clustered in patients (AUROC per label, :func:`reconaudit.metrics.clustered_delong_test`), the Wilcoxon signed-rank test over patients (Dice) or the paired
        bootstrap (fairness changes, refined for extreme ones; the paired permutation test is reported
        next to it as ``p_permutation``), adjusted by Holm or Benjamini-Hochberg within each stated
        family.
    """
    s = _settings(meta)
    rec = Records.of(records)
    _check_records(rec)
    cohort_meta = meta.get("cohorts") or {}
    cell_rows, task_rows, fair_rows = [], [], []
    cohorts = cohort_summaries(rec, cohort_meta)
    with progress.task("analysis", len(rec.cell_ids)) as bar:
        for cell_id, rows in rec.cells(exclude=BULK_PREFIXES):
            rows = _validate(rows)
            first = rows.iloc[0]
            keys = {k: first[k] for k in KEY_COLUMNS}
            keys["level"], keys["seed"] = float(keys["level"]), int(keys["seed"])
            keys["mitigation_strength"] = float(keys["mitigation_strength"])
            info = cohorts[str(keys["cohort"])]
            seed = derive_seed("report/bootstrap", s["seed"], keys["cohort"], keys["seed"]) % (2**32)
            cell_rows.append(_cell_quality(rows, keys, s, seed))
            # "none": a reconstruction-quality audit (tasks: none), image quality only
            cell_tasks = [] if keys["task"] == "none" else str(keys["task"]).split("+")
            # regression (phenotypes) is analysed by report/companions.py (MAE, RMSE, R2, group gaps)
            unknown = [t for t in cell_tasks if t not in ("classification", "segmentation", "regression")]
            if unknown:
                raise ValueError(f"records.parquet: cell {cell_id!r} has task {keys['task']!r}; expected "
                                 "'classification', 'segmentation', 'regression' joined by '+', or 'none'")
            attrs, policy = info["group_attributes"], info["unknown_groups"]
            if "classification" in cell_tasks and info["labels"]:
                t, f = _excluding_unknown(_classification_cell, rows, attrs, policy, (keys, info["labels"]), (s, seed))
                task_rows += t
                fair_rows += f
            if "segmentation" in cell_tasks:
                t, f = _excluding_unknown(_segmentation_cell, rows, attrs, policy, (keys,), (s, seed))
                task_rows += t
                fair_rows += f
            bar.advance(1)
    cells = pd.DataFrame(cell_rows)
    task_cols = [*KEY_COLUMNS, "label", "metric", "n", *_STAT_COLUMNS, "p_value", "test", "ci_method",
                 "n_undefined", "threshold_policy", "operating_point_flag", "reason"]
    task = _fill_policy(pd.DataFrame(task_rows, columns=task_cols), s)
    fair_cols = [*KEY_COLUMNS, "attribute", "label", "metric", "groups", "n", *_STAT_COLUMNS, "p_value", "test",
                 "ci_method", "n_undefined", "threshold_policy", "operating_point_flag", "worst_group_clean",
                 "worst_group_recon", "reason"]
    fair = pd.DataFrame(fair_rows, columns=fair_cols)
    fair = _fill_policy(fair, s)
    fair["definition"] = [metric_definition(m, s["definitions"]) for m in fair["metric"]]
    task["definition"] = [metric_definition(m, s["definitions"]) for m in task["metric"]]
    fair = _permutation_tests(fair, fair_rows, s)
    fair = _refine_bootstrap(fair, fair_rows, s)
    _floor_bootstrap_p(task, s)
    task["n_resamples"] = np.where(task["test"] != "", s["n_resamples"], np.nan)
    task, fair = _mark_not_estimable(task, s), _mark_not_estimable(fair, s)
    fair["higher_is_worse"] = fair["metric"].isin(GAP_METRICS)
    fair["bias_increased"] = np.where(fair["higher_is_worse"], fair["change"] > 0, fair["change"] < 0)
    fair.loc[fair["change"].isna(), "bias_increased"] = False
    fair["reason"] = np.where(~fair["estimable"], fair["reason"], "")

    families = []
    tests = (task["metric"].isin(["auroc", "dice"])) & (task["label"] != MEAN_LABEL)
    tt, fam = _correct(task[tests], "task", "changes from clean to processed images in AUROC per label "
                       "(DeLong, clustered by patient) and in mean Dice (Wilcoxon signed-rank over the patients' mean Dice), every "
                       "cell of this run: {n} tests", s)
    families.append(fam)
    task = task.join(tt[["p_adjusted", "significant"]])
    task["significant"] = task["significant"].astype("boolean").fillna(False).astype(bool)
    ft, fam = _correct(fair, "fairness", "all fairness-metric changes (bias changes) in this run, every cell x "
                       "group attribute x label x metric with a defined p-value: {n} tests", s)
    families.append(fam)
    fair = ft
    rank = {(c, lv): i for c, info in cohorts.items() for i, lv in enumerate(info["levels"])}
    for df in (cells, task, fair):
        df["severity"] = [rank.get((c, float(lv)), -1) for c, lv in zip(df["cohort"], df["level"])]
    sort_keys = ["cohort", "task", "degradation", "severity", "reconstructor", "arm", "mitigation",
                 "mitigation_strength", "seed"]
    cells = cells.sort_values(sort_keys).reset_index(drop=True)
    task = task.sort_values([*sort_keys, "label", "metric"]).reset_index(drop=True)
    fair = fair.sort_values([*sort_keys, "attribute", "label", "metric"]).reset_index(drop=True)
    a = Analysis(cells=cells, task=task, fairness=fair, seeds=_seed_table(cells, task, fair),
                 families=pd.DataFrame(families), headlines=pd.DataFrame(columns=["cohort", "sentence"]),
                 settings=s, cohorts=cohorts, definitions=definitions_table(s))
    a.competence = competence(cells, task, primary={c: info["primary"] for c, info in cohorts.items()})
    a.headlines = _with_competence(_headlines(a), a.competence, cohorts)
    logger.info("analysis: %d cells, %d task rows, %d fairness rows", len(cells), len(task), len(fair))
    return a

