r"""The fairness audit in depth, from the records table alone.

Seven analyses beyond the per-attribute gaps of :mod:`reconaudit.report.analysis`; every statistic
comes from :mod:`reconaudit.metrics` (this module arranges records into arrays and results into
tables and figures):

1. calibration per group on clean and processed inputs (:mod:`reconaudit.metrics.calibration`);
2. the operating-point audit at the clean model's clean-validation threshold
   (:mod:`reconaudit.metrics.operating_point`);
3. intersectional groups (``analysis.intersections``; by default the first pair of a cohort's
   attributes), guarded in patients (:mod:`reconaudit.metrics.intersections`);
4. the onset level of each bias change (:mod:`reconaudit.metrics.onset`);
5. the shortcut check: how well group membership is predicted from the frozen diagnostic model's
   penultimate features of clean versus processed images (:mod:`reconaudit.metrics.shortcut`;
   needs the ``feature:``/``clean_feature:`` record columns);
6. ranking of reconstructors with bootstrap rank intervals and the Friedman test
   (:mod:`reconaudit.metrics.ranking`);
7. equity-scaled and worst-case Dice (:mod:`reconaudit.metrics.segmentation_equity`) and the
   sample-size planner (:mod:`reconaudit.metrics.power`).

:func:`analyse_depth` returns a :class:`Depth` (numeric tables); :func:`write_depth` writes them as
CSV, Markdown and LaTeX through :mod:`reconaudit.report.tables`, draws the figures and returns the
sections the HTML report shows.  Bootstrap draws are seeded from ``analysis.seed`` and the cohort.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .. import metrics as M  # noqa: E402
from ..metrics.stats import COUNT_METRICS  # noqa: E402
from ..seeding import derive_seed  # noqa: E402
from .analysis import METRIC_NAMES, Analysis, level_text  # noqa: E402
from .figures import _RC, Figure, _main_seed, _save, _Styles, _t  # noqa: E402
from .tables import format_ci, to_latex, to_markdown  # noqa: E402

logger = logging.getLogger(__name__)

__all__ = ["Depth", "analyse_depth", "write_depth", "power_table", "DEPTH_TABLES"]

#: Tables of :class:`Depth`, in report order.
DEPTH_TABLES = ("calibration", "operating_point", "intersections", "intersection_groups", "onset", "shortcut",
                "ranking", "friedman", "segmentation_equity", "power")
_CELL = ["cohort", "level", "reconstructor", "arm", "mitigation", "mitigation_strength", "seed"]
_PRIMARY_FAIRNESS = {"classification": "equalized_odds_difference", "segmentation": "dice_gap"}


@dataclass
class Depth:
    """Numeric tables of the analyses in depth (see :data:`DEPTH_TABLES` and docs/report.md)."""

    tables: dict[str, pd.DataFrame]
    settings: dict = field(default_factory=dict)
    reliability: dict = field(default_factory=dict)  # (cohort, label, attribute, cell) -> curves


def _settings(meta: dict, analysis: Analysis) -> dict:
    a = dict(meta.get("analysis") or {})
    s = dict(analysis.settings)
    s["min_group_patients"] = int(a.get("min_group_patients", s.get("min_group_patients", s["min_group_size"])))
    s["depth_resamples"] = int(a.get("depth_resamples", min(s["n_resamples"], 400)))
    s["calibration_bins"] = int(a.get("calibration_bins", 10))
    s["calibration_strategy"] = str(a.get("calibration_strategy", "uniform"))
    s["power_effect"] = float(a.get("power_effect", 0.05))
    s["power"] = float(a.get("power", 0.8))
    inter = a.get("intersections")
    s["intersections"] = None if inter is None else [list(map(str, x)) for x in inter]
    return s


def _cell_keys(rows: pd.DataFrame) -> dict:
    first = rows.iloc[0]
    return {k: first[k] for k in _CELL}


def _threshold(rows: pd.DataFrame, label: str) -> np.ndarray:
    """The clean model's clean-validation threshold: ``clean_threshold:<label>``, else ``threshold:<label>``."""
    for col in (f"clean_threshold:{label}", f"threshold:{label}"):
        if col in rows:
            return rows[col].to_numpy(float)
    return np.full(len(rows), 0.5)


def _label_arrays(rows: pd.DataFrame, label: str) -> dict | None:
    need = [f"target:{label}", f"score:{label}", f"clean_score:{label}"]
    if any(c not in rows for c in need):
        return None
    y = rows[f"target:{label}"].to_numpy(float)
    keep = np.isfinite(y) & rows[need[1]].notna().to_numpy() & rows[need[2]].notna().to_numpy()
    if keep.sum() == 0 or len(np.unique(y[keep])) < 2:
        return None
    return {"keep": keep, "y": y[keep].astype(np.int8), "sc": rows[need[2]].to_numpy(float)[keep],
            "sr": rows[need[1]].to_numpy(float)[keep], "t": _threshold(rows, label)[keep],
            "pid": rows["patient_id"].to_numpy()[keep]}


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# --------------------------------------------------------------------------------------------
# per-cell analyses


def _calibration_cell(rows, keys, labels, attrs, s, seed, reliability) -> list[pd.DataFrame]:
    out = []
    for label in labels:
        arr = _label_arrays(rows, label)
        if arr is None:
            continue
        for a in attrs:
            g = rows[f"group:{a}"].to_numpy()[arr["keep"]]
            t = _quiet(M.calibration_by_group, arr["y"], arr["sr"], y_prob_clean=arr["sc"], sensitive_features=g,
                       patient_ids=arr["pid"], n_bins=s["calibration_bins"], strategy=s["calibration_strategy"],
                       n_resamples=s["depth_resamples"], seed=seed, min_group_patients=s["min_group_patients"])
            out.append(t.assign(**keys, label=label, attribute=a))
            curves = {}
            for grp in np.unique(g):
                m = g == grp
                for arm, sc in (("clean", arr["sc"]), ("recon", arr["sr"])):
                    curves[(str(grp), arm)] = M.reliability_curve(arr["y"][m], sc[m], n_bins=s["calibration_bins"],
                                                                  strategy=s["calibration_strategy"])
            reliability[(keys["cohort"], label, a, keys["level"], keys["reconstructor"], keys["arm"],
                         keys["mitigation"], keys["seed"])] = curves
    return out


def _operating_cell(rows, keys, labels, attrs, s, seed) -> list[pd.DataFrame]:
    out = []
    for label in labels:
        arr = _label_arrays(rows, label)
        if arr is None:
            continue
        for a in attrs:
            g = rows[f"group:{a}"].to_numpy()[arr["keep"]]
            t = _quiet(M.operating_point_audit, arr["y"], arr["sc"], arr["sr"], arr["t"], sensitive_features=g,
                       patient_ids=arr["pid"], n_resamples=s["depth_resamples"], seed=seed,
                       min_group_patients=s["min_group_patients"])
            out.append(t.assign(**keys, label=label, attribute=a))
    return out


def _intersections_for(attrs: list[str], s: dict) -> list[list[str]]:
    if s["intersections"] is None:
        return [attrs[:2]] if len(attrs) >= 2 else []
    return [x for x in s["intersections"] if all(a in attrs for a in x)]


def _intersection_cell(rows, keys, labels, attrs, task, s, seed) -> tuple[list[dict], list[pd.DataFrame]]:
    fair_rows, guards = [], []
    for combo in _intersections_for(attrs, s):
        name = M.intersection_name(combo)
        groups = M.intersect_groups({a: rows[f"group:{a}"].to_numpy() for a in combo}, combo)
        guard = M.group_guard(groups, rows["patient_id"].to_numpy(), s["min_group_patients"])
        guards.append(guard.assign(cohort=keys["cohort"], intersection=name))
        ok_groups = set(guard.loc[guard["estimable"], "group"])
        est = np.isin(groups, list(ok_groups))
        if len(ok_groups) < 2:
            continue
        jobs = []
        if "classification" in task:
            for label in labels:
                arr = _label_arrays(rows, label)
                if arr is None:
                    continue
                sel = est[arr["keep"]]
                jobs.append((label, dict(y_true=arr["y"][sel], patient_ids=arr["pid"][sel],
                                         sensitive_features={name: groups[arr["keep"]][sel]},
                                         y_pred=(arr["sr"] >= arr["t"])[sel].astype(np.int8),
                                         y_pred_clean=(arr["sc"] >= arr["t"])[sel].astype(np.int8)),
                             COUNT_METRICS))
        if "segmentation" in task and "dice" in rows and "clean_dice" in rows:
            d, cd = rows["dice"].to_numpy(float), rows["clean_dice"].to_numpy(float)
            sel = est & np.isfinite(d) & np.isfinite(cd)
            jobs.append(("", dict(y_true=np.zeros(int(sel.sum())), patient_ids=rows["patient_id"].to_numpy()[sel],
                                  sensitive_features={name: groups[sel]}, values=d[sel], values_clean=cd[sel]),
                         ("dice_gap", "worst_group_dice")))
        for label, kw, metrics in jobs:
            res = _quiet(M.bootstrap_metrics, **kw, n_resamples=s["depth_resamples"], seed=seed, bca=False,
                         min_group_size=1)
            idx = {(r["metric"], r["arm"]): r for r in res.table[res.table["attribute"] == name].to_dict("records")}
            for metric in metrics:
                row = dict(keys, intersection=name, label=label, metric=metric,
                           groups_estimable=len(ok_groups), groups_not_estimable=int((~guard["estimable"]).sum()))
                for arm in ("clean", "recon", "change"):
                    r = idx.get((metric, arm))
                    row[arm] = r["estimate"] if r else np.nan
                    row[f"{arm}_ci_low"] = r["ci_low"] if r else np.nan
                    row[f"{arm}_ci_high"] = r["ci_high"] if r else np.nan
                    if arm == "change":
                        row["p_value"] = r["p_value"] if r else np.nan
                fair_rows.append(row)
    return fair_rows, guards


def _equity_cell(rows, keys, attrs, s, seed) -> list[pd.DataFrame]:
    if "dice" not in rows or "clean_dice" not in rows:
        return []
    d, cd = rows["dice"].to_numpy(float), rows["clean_dice"].to_numpy(float)
    ok = np.isfinite(d) & np.isfinite(cd)
    if not ok.any():
        return []
    out = []
    for a in attrs:
        t = _quiet(M.segmentation_equity, d[ok], values_clean=cd[ok], sensitive_features=rows[f"group:{a}"].to_numpy()[ok],
                   patient_ids=rows["patient_id"].to_numpy()[ok], n_resamples=s["depth_resamples"], seed=seed,
                   min_group_patients=s["min_group_patients"])
        out.append(t.assign(**keys, attribute=a))
    return out


# --------------------------------------------------------------------------------------------
# across cells


def _onset_table(a: Analysis) -> pd.DataFrame:
    f = _main_seed(a.fairness[a.fairness["mitigation"] == "none"])
    rows = []
    for (cohort, rec, arm, attr, label, metric), g in f.groupby(
            ["cohort", "reconstructor", "arm", "attribute", "label", "metric"], sort=True):
        info = a.cohorts[cohort]
        order = {lv: i for i, lv in enumerate(info["levels"])}
        g = g.assign(_o=g["level"].map(order)).sort_values("_o")
        p = g["p_adjusted"].to_numpy(float)
        res = M.onset_level(g["level"].to_numpy(float), np.where(np.isnan(p), 1.0, p), adjust=False,
                            alpha=a.settings["alpha"], unit=info["level_name"] or "")
        row = dict(cohort=cohort, reconstructor=rec, arm=arm, attribute=attr, label=label, metric=metric,
                   onset_level=res.level, onset=res.text if res.level is None else level_text(res.level, info["level_name"]),
                   n_levels=len(g), change=np.nan, change_ci_low=np.nan, change_ci_high=np.nan, p_adjusted=np.nan)
        if res.index is not None:
            r = g.iloc[res.index]
            row.update(change=r["change"], change_ci_low=r["change_ci_low"], change_ci_high=r["change_ci_high"],
                       p_adjusted=r["p_adjusted"])
        rows.append(row)
    return pd.DataFrame(rows)


def _aligned(cr: pd.DataFrame, cell_ids: list[str]) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The cohort's study table (by ``study_index``) and each cell's rows in that order."""
    base = cr.drop_duplicates("study_index").sort_values("study_index")[["study_index", "patient_id"]]
    cells = {}
    for cid in cell_ids:
        rows = cr[cr["cell_id"] == cid].drop_duplicates("study_index").set_index("study_index")
        cells[cid] = rows.reindex(base["study_index"].to_numpy())
    return base, cells


def _rank_stats(cells: dict[str, pd.DataFrame], task: str, labels: list[str], attrs: list[str],
                min_group: int) -> dict:
    """``criterion -> stat(W)`` giving (b, methods) per criterion, methods in ``cells`` order."""
    def task_stat(w: np.ndarray) -> np.ndarray:
        cols = []
        for rows in cells.values():
            if task == "classification":
                vals = []
                for lb in labels:
                    arr = _label_arrays(rows, lb)
                    if arr is not None:
                        vals.append(M.weighted_auroc(arr["y"], arr["sr"], w[:, arr["keep"]]))
                cols.append(np.nanmean(np.stack(vals), axis=0) if vals else np.full(len(w), np.nan))
            else:
                d = rows["dice"].to_numpy(float)
                ok = np.isfinite(d)
                cols.append((w[:, ok] @ d[ok]) / w[:, ok].sum(1))
        return np.stack(cols, axis=1)

    def fair_stat(w: np.ndarray) -> np.ndarray:
        cols = []
        for rows in cells.values():
            vals = []
            for a in attrs:
                g_all = rows[f"group:{a}"].astype(str).to_numpy()
                if task == "classification":
                    for lb in labels:
                        arr = _label_arrays(rows, lb)
                        if arr is None:
                            continue
                        g = g_all[arr["keep"]]
                        ww = w[:, arr["keep"]]
                        m = {}
                        for arm, sc in (("clean", arr["sc"]), ("recon", arr["sr"])):
                            cnt = M.weighted_confusion_counts(arr["y"], (sc >= arr["t"]).astype(np.int8), g, ww)
                            m[arm] = M.fairness_from_counts(cnt, min_group)["equalized_odds_difference"]
                        vals.append(m["recon"] - m["clean"])
                else:
                    d, cd = rows["dice"].to_numpy(float), rows["clean_dice"].to_numpy(float)
                    ok = np.isfinite(d) & np.isfinite(cd)
                    codes, lab = pd.factorize(g_all[ok])
                    oh = np.eye(len(lab))[codes]
                    cnt = w[:, ok] @ oh
                    with np.errstate(invalid="ignore", divide="ignore"):
                        gr = np.where(cnt >= min_group, (w[:, ok] @ (oh * d[ok, None])) / cnt, np.nan)
                        gc = np.where(cnt >= min_group, (w[:, ok] @ (oh * cd[ok, None])) / cnt, np.nan)
                    vals.append((gr.max(1) - gr.min(1)) - (gc.max(1) - gc.min(1)))
            cols.append(np.nanmean(np.stack(vals), axis=0) if vals else np.full(len(w), np.nan))
        return np.stack(cols, axis=1)

    return {"task": (task_stat, True), "fairness": (fair_stat, False)}


def _ranking_tables(records: pd.DataFrame, a: Analysis, s: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    rank_rows, fried_rows = [], []
    cells = _main_seed(a.cells[a.cells["mitigation"] == "none"])
    for cohort, info in a.cohorts.items():
        cr = records[records["cohort"] == cohort]
        task = info["task"]
        crit_names = {"task": "mean AUROC" if task == "classification" else "mean Dice",
                      "fairness": ("equalized-odds difference change" if task == "classification"
                                   else "Dice gap change")}
        for level in info["levels"]:
            cl = cells[(cells["cohort"] == cohort) & (cells["level"] == level)]
            if len(cl) < 2:
                continue
            names = [f"{r}" if arm == "reconstruct" else f"{r} ({arm})" for r, arm in zip(cl["reconstructor"], cl["arm"])]
            base, aligned = _aligned(cr, cl["cell_id"].tolist())
            if any(rows["patient_id"].isna().any() for rows in aligned.values()):
                logger.warning("ranking: cells of %s at level %g cover different studies; skipped", cohort, level)
                continue
            seed = derive_seed("report/depth/ranking", s["seed"], cohort, level) % (2**32)
            for crit, (stat, higher) in _rank_stats(aligned, task, info["labels"], info["group_attributes"],
                                                    s["min_group_size"]).items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    point, dist = M.bootstrap_statistic(stat, base["patient_id"].to_numpy(),
                                                                  n_resamples=s["depth_resamples"], seed=seed)
                r = M.bootstrap_ranks(point, dist, names, higher_is_better=higher)
                words = M.overlap_text(r)
                rank_rows.append(r.assign(cohort=cohort, level=level, criterion=crit_names[crit], summary=words))
    # Friedman across cells: blocks = level x label (task) or level x label x attribute (fairness)
    t = _main_seed(a.task[a.task["mitigation"] == "none"])
    f = _main_seed(a.fairness[a.fairness["mitigation"] == "none"])
    for cohort, info in a.cohorts.items():
        metric = "auroc" if info["task"] == "classification" else "dice"
        tt = t[(t["cohort"] == cohort) & (t["metric"] == metric) & (t["label"] != "(mean)")]
        ff = f[(f["cohort"] == cohort) & (f["metric"] == _PRIMARY_FAIRNESS[info["task"]])]
        for crit, df, col, blocks in (("task: " + METRIC_NAMES[metric], tt, "recon", ["level", "label"]),
                                      ("bias change: " + METRIC_NAMES[_PRIMARY_FAIRNESS[info["task"]]], ff, "change",
                                       ["level", "label", "attribute"])):
            if df.empty:
                continue
            piv = df.assign(method=df["reconstructor"] + np.where(df["arm"] == "direct", " (direct)", "")).pivot_table(
                index=blocks, columns="method", values=col, aggfunc="mean")
            res = M.friedman_test(piv.to_numpy() if "task" in crit else -piv.to_numpy())
            fried_rows.append(dict(cohort=cohort, criterion=crit, statistic=res.statistic, p_value=res.p_value,
                                   n_blocks=res.n_blocks, n_methods=res.n_methods,
                                   methods=", ".join(map(str, piv.columns))))
    rank = pd.concat(rank_rows, ignore_index=True) if rank_rows else pd.DataFrame(
        columns=["cohort", "level", "criterion", "method", "estimate", "rank", "rank_ci_low", "rank_ci_high",
                 "p_first", "summary"])
    first = ["cohort", "level", "criterion"]
    rank = rank[first + [c for c in rank.columns if c not in first]]
    return rank, pd.DataFrame(fried_rows, columns=["cohort", "criterion", "statistic", "p_value", "n_blocks",
                                                   "n_methods", "methods"])


def _feature_columns(rows: pd.DataFrame) -> tuple[list[str], list[str]]:
    rec = sorted((c for c in rows.columns if c.startswith("feature:")), key=lambda c: int(c.split(":")[1]))
    cln = [f"clean_{c}" for c in rec]
    return (rec, cln) if rec and all(c in rows for c in cln) else ([], [])


def shortcut_table(records: pd.DataFrame, s: dict) -> pd.DataFrame:
    """Shortcut probe per cell and attribute from the ``feature:<k>`` / ``clean_feature:<k>`` record columns.

    Empty when the records carry no features (runs made before the score step saved them).
    """
    rows = []
    for _, cr in records.groupby("cell_id", sort=True):
        rec, cln = _feature_columns(cr)
        if not rec:
            continue
        ok = cr[rec + cln].notna().all(axis=1).to_numpy()
        keys = _cell_keys(cr)
        for a in [c.split(":", 1)[1] for c in cr.columns if c.startswith("group:")]:
            g = cr[f"group:{a}"].to_numpy()[ok]
            if len(np.unique(g)) < 2:
                continue
            seed = derive_seed("report/depth/shortcut", s["seed"], keys["cohort"], int(keys["seed"])) % (2**32)
            t = _quiet(M.shortcut_probe, cr[cln].to_numpy(float)[ok], cr[rec].to_numpy(float)[ok],
                       sensitive_features=g, patient_ids=cr["patient_id"].to_numpy()[ok],
                       n_resamples=s["depth_resamples"], seed=seed)
            rows.append(t.assign(**keys, attribute=a, probe="logistic on penultimate features"))
    if not rows:
        return pd.DataFrame(columns=[*_CELL, "attribute", "probe", "arm", "estimate", "ci_low", "ci_high",
                                     "p_value", "more_predictable", "n_groups"])
    df = pd.concat(rows, ignore_index=True)
    lead = [*_CELL, "attribute", "probe"]
    return df[lead + [c for c in df.columns if c not in lead]]


def power_table(analysis: Analysis, effect: float, *, power: float = 0.8, alpha: float | None = None) -> pd.DataFrame:
    """Test patients needed to detect a bias change of ``effect`` (:func:`reconaudit.metrics.required_patients`).

    One row per cohort x reconstructor x attribute x label of the cohort's primary fairness metric
    (equalized-odds difference, Dice gap) at the most severe level (main seed, no mitigation); the
    standard error is read from the change's 95 % bootstrap interval.
    """
    a = analysis
    alpha = a.settings["alpha"] if alpha is None else alpha
    f = _main_seed(a.fairness[a.fairness["mitigation"] == "none"])
    npat = a.cells.set_index("cell_id")["n_patients"]
    rows = []
    for cohort, info in a.cohorts.items():
        worst = info["levels"][-1] if info["levels"] else None
        ff = f[(f["cohort"] == cohort) & (f["level"] == worst) & (f["metric"] == _PRIMARY_FAIRNESS[info["task"]])]
        for r in ff.itertuples():
            se = M.se_from_interval(r.change_ci_low, r.change_ci_high)
            n0 = int(npat.get(r.cell_id, 0))
            need = M.required_patients(se, n0, effect, alpha=alpha, power=power) if n0 else np.nan
            rows.append(dict(cohort=cohort, level=worst, reconstructor=r.reconstructor, arm=r.arm,
                             attribute=r.attribute, label=r.label, metric=r.metric, observed_change=r.change,
                             standard_error=se, n_patients=n0, effect=effect, power=power, alpha=alpha,
                             required_patients=need,
                             power_now=M.power_at(n0, se * np.sqrt(n0), effect, alpha) if n0 else np.nan))
    return pd.DataFrame(rows)


def analyse_depth(records: pd.DataFrame, meta: dict, analysis: Analysis) -> Depth:
    """Run the seven analyses in depth on a run's records (see the module docstring)."""
    from .analysis import _validate

    a = analysis
    s = _settings(meta, a)
    r = _validate(records)
    cal, op, inter, guards, eq = [], [], [], [], []
    reliability: dict = {}
    for cell_id, rows in r.groupby("cell_id", sort=True):
        keys = _cell_keys(rows)
        info = a.cohorts[str(keys["cohort"])]
        seed = derive_seed("report/depth", s["seed"], keys["cohort"], int(keys["seed"])) % (2**32)
        tasks = str(rows["task"].iloc[0]).split("+")
        attrs = info["group_attributes"]
        if "classification" in tasks and info["labels"]:
            cal += _calibration_cell(rows, keys, info["labels"], attrs, s, seed, reliability)
            op += _operating_cell(rows, keys, info["labels"], attrs, s, seed)
        fr, gd = _intersection_cell(rows, keys, info["labels"], attrs, tasks, s, seed)
        inter += fr
        guards += gd
        if "segmentation" in tasks:
            eq += _equity_cell(rows, keys, attrs, s, seed)
    first = [*_CELL, "label", "attribute"]

    def cat(parts, lead):
        if not parts:
            return pd.DataFrame(columns=lead)
        df = pd.concat(parts, ignore_index=True)
        return df[[c for c in lead if c in df] + [c for c in df.columns if c not in lead]]

    inter_df = pd.DataFrame(inter)
    if not inter_df.empty:
        adj = M.adjust_pvalues(inter_df["p_value"].to_numpy(float), method=s["correction"], alpha=s["alpha"])
        inter_df["p_adjusted"] = adj["p_adjusted"].to_numpy()
        inter_df["significant"] = adj["significant"].to_numpy()
    gdf = cat(guards, ["cohort", "intersection"])
    if not gdf.empty:
        gdf = gdf.drop_duplicates(["cohort", "intersection", "group"]).reset_index(drop=True)
    rank, fried = _ranking_tables(r, a, s)
    tables = {
        "calibration": cat(cal, first), "operating_point": cat(op, first), "intersections": inter_df,
        "intersection_groups": gdf, "onset": _onset_table(a), "shortcut": shortcut_table(r, s),
        "ranking": rank, "friedman": fried, "segmentation_equity": cat(eq, [*_CELL, "attribute"]),
        "power": power_table(a, s["power_effect"], power=s["power"]),
    }
    return Depth(tables=tables, settings=s, reliability=reliability)
