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
from ..engine.records import BULK_PREFIXES, Records  # noqa: E402
from ..schema import COUNT_METRICS, RECORD_KEYS  # noqa: E402
from ..seeding import derive_seed  # noqa: E402
from .analysis import METRIC_NAMES, Analysis, level_text  # noqa: E402
from .figures import _RC, Figure, _main_seed, _save, _Styles, _t  # noqa: E402
from .tables import _level, _mitigation, arm_columns, format_ci, row_ci, to_latex, to_markdown  # noqa: E402

logger = logging.getLogger(__name__)

__all__ = ["Depth", "analyse_depth", "write_depth", "power_table", "DEPTH_TABLES"]

#: Tables of :class:`Depth`, in report order.
DEPTH_TABLES = ("calibration", "operating_point", "intersections", "intersection_groups", "onset", "shortcut",
                "ranking", "friedman", "segmentation_equity", "power")
#: At most this many bootstrap resamples per interval of the analyses in depth (bounds the report's cost).
DEPTH_RESAMPLES = 400
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
    s["depth_resamples"] = min(s["n_resamples"], DEPTH_RESAMPLES)
    s["calibration_bins"] = int(a.get("calibration_bins", 10))
    s["calibration_strategy"] = str(a.get("calibration_strategy", "uniform"))
    s["power_effect"] = float(a.get("power_effect", 0.05))
    s["power"] = float(a.get("power", 0.8))
    inter = a.get("intersections")
    s["intersections"] = None if inter is None else [list(map(str, x)) for x in inter]
    return s


def _method(r) -> str:
    """A cell's method name: the reconstructor, marked when it is the direct (no-reconstruction) arm."""
    return str(r["reconstructor"]) + (" (direct)" if r["arm"] == "direct" and r["reconstructor"] != "direct" else "")


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


def _label_groups(rows: pd.DataFrame, labels, attrs):
    """``(label, attribute, arrays, groups)`` for every label with usable arrays (:func:`_label_arrays`)
    and every attribute: ``groups`` is the attribute's value of each kept study."""
    for label in labels:
        arr = _label_arrays(rows, label)
        if arr is None:
            continue
        for a in attrs:
            yield label, a, arr, rows[f"group:{a}"].to_numpy()[arr["keep"]]


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# --------------------------------------------------------------------------------------------
# per-cell analyses


def _calibration_cell(rows, keys, labels, attrs, s, seed, reliability) -> list[pd.DataFrame]:
    out = []
    for label, a, arr, g in _label_groups(rows, labels, attrs):
        t = _quiet(M.calibration_by_group, arr["y"], arr["sr"], y_prob_clean=arr["sc"], sensitive_features=g,
                   patient_ids=arr["pid"], n_bins=s["calibration_bins"], strategy=s["calibration_strategy"],
                   n_resamples=s["depth_resamples"], seed=seed, min_group_patients=s["min_group_patients"])
        out.append(t.rename(columns={"arm": "input"}).assign(**keys, label=label, attribute=a))
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
    for label, a, arr, g in _label_groups(rows, labels, attrs):
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
        out.append(t.rename(columns={"arm": "input"}).assign(**keys, attribute=a))
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
        p = np.where(np.isnan(p) | g["change"].isna().to_numpy(), 1.0, p)  # an undefined change is no onset
        res = M.onset_level(g["level"].to_numpy(float), p, adjust=False,
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


def _cohort_studies(records: Records, cohort: str) -> pd.DataFrame:
    """The cohort's study table (``study_index``, ``patient_id`` of its first row), by ``study_index``;
    read a row group at a time, keeping one row per study."""
    seen = []
    for part in records.scan(["cohort", "study_index", "patient_id"]):
        part = part[part["cohort"] == cohort]
        if len(part):
            seen.append(part.drop_duplicates("study_index")[["study_index", "patient_id"]])
            seen = [pd.concat(seen).drop_duplicates("study_index")]
    base = seen[0] if seen else pd.DataFrame(columns=["study_index", "patient_id"])
    return base.sort_values("study_index")


def _aligned(records: Records, base: pd.DataFrame, cell_ids: list[str]) -> dict[str, pd.DataFrame]:
    """Each cell's rows (validated) in the order of the cohort's study table ``base``."""
    from .analysis import _validate

    cells = {}
    for cid in cell_ids:
        rows = _validate(records.cell(cid, exclude=BULK_PREFIXES)).drop_duplicates("study_index")
        cells[cid] = rows.set_index("study_index").reindex(base["study_index"].to_numpy())
    return cells


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


def _ranking_tables(records: Records, a: Analysis, s: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    rank_rows, fried_rows = [], []
    cells = _main_seed(a.cells[a.cells["mitigation"] == "none"])
    for cohort, info in a.cohorts.items():
        if info["task"] not in _PRIMARY_FAIRNESS:  # a reconstruction-quality audit: no task
            continue
        base = None
        task = info["task"]
        crit_names = {"task": "mean AUROC" if task == "classification" else "mean Dice",
                      "fairness": ("equalized-odds difference change" if task == "classification"
                                   else "Dice gap change")}
        for level in info["levels"]:
            cl = cells[(cells["cohort"] == cohort) & (cells["level"] == level)]
            if len(cl) < 2:
                continue
            names = [_method(r) for r in cl.to_dict("records")]
            if base is None:
                base = _cohort_studies(records, cohort)
            aligned = _aligned(records, base, cl["cell_id"].tolist())
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
        if info["task"] not in _PRIMARY_FAIRNESS:  # a reconstruction-quality audit: no task
            continue
        metric = "auroc" if info["task"] == "classification" else "dice"
        tt = t[(t["cohort"] == cohort) & (t["metric"] == metric) & (t["label"] != "(mean)")]
        ff = f[(f["cohort"] == cohort) & (f["metric"] == _PRIMARY_FAIRNESS[info["task"]])]
        for crit, df, col, blocks in (("task: " + METRIC_NAMES[metric], tt, "recon", ["level", "label"]),
                                      ("bias change: " + METRIC_NAMES[_PRIMARY_FAIRNESS[info["task"]]], ff, "change",
                                       ["level", "label", "attribute"])):
            if df.empty:
                continue
            piv = df.assign(method=[_method(r) for r in df.to_dict("records")]).pivot_table(
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


def shortcut_table(records: Records | pd.DataFrame, s: dict) -> pd.DataFrame:
    """Shortcut probe per cell and attribute from the ``feature:<k>`` / ``clean_feature:<k>`` record columns.

    Empty when the records carry no features (runs made before the score step saved them).  Reads
    one cell at a time: its keys, groups, patients and features.
    """
    from .analysis import _validate

    records = Records.of(records)
    rows = []
    feats = records.with_prefix("feature:", "clean_feature:")
    cells = records.cells([*RECORD_KEYS, *records.with_prefix("group:"), *feats]) if feats else []
    for _, cr in cells:
        cr = _validate(cr)
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
            rows.append(t.rename(columns={"arm": "input"}).assign(**keys, attribute=a, probe="logistic on penultimate features"))
    if not rows:
        return pd.DataFrame(columns=[*_CELL, "attribute", "probe", "input", "estimate", "ci_low", "ci_high",
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
        if info["task"] not in _PRIMARY_FAIRNESS:  # a reconstruction-quality audit: no task
            continue
        worst = info["levels"][-1] if info["levels"] else None
        ff = f[(f["cohort"] == cohort) & (f["level"] == worst) & (f["metric"] == _PRIMARY_FAIRNESS[info["task"]])]
        for r in ff.itertuples():
            se = M.se_from_interval(r.change_ci_low, r.change_ci_high) if np.isfinite(r.change) else np.nan
            n0 = int(npat.get(r.cell_id, 0))
            need = M.required_patients(se, n0, effect, alpha=alpha, power=power) if n0 else np.nan
            rows.append(dict(cohort=cohort, level=worst, reconstructor=r.reconstructor, arm=r.arm,
                             attribute=r.attribute, label=r.label, metric=r.metric, observed_change=r.change,
                             standard_error=se, n_patients=n0, effect=effect, power=power, alpha=alpha,
                             required_patients=need,
                             power_now=M.power_at(n0, se * np.sqrt(n0), effect, alpha) if n0 else np.nan))
    return pd.DataFrame(rows)


def analyse_depth(records: Records | pd.DataFrame, meta: dict, analysis: Analysis) -> Depth:
    """Run the seven analyses in depth on a run's records (see the module docstring), one cell at a
    time (the ranking: the methods of one cohort and level at a time)."""
    from .analysis import _check_records, _validate

    a = analysis
    s = _settings(meta, a)
    r = Records.of(records)
    _check_records(r)
    cal, op, inter, guards, eq = [], [], [], [], []
    reliability: dict = {}
    for _, rows in r.cells(exclude=BULK_PREFIXES):
        rows = _validate(rows)
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
    asked = s["intersections"] or []
    found = {g["intersection"].iloc[0] for g in guards if len(g)}
    for combo in asked:
        if M.intersection_name(combo) not in found:
            logger.warning("analysis.intersections: %s matches no cohort's group attributes", combo)
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


# --------------------------------------------------------------------------------------------
# formatted tables


def _f(x: float, d: int = 3, signed: bool = False) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    return f"{x:+.{d}f}" if signed else f"{x:.{d}f}"


def _ci(r: dict | None, d: int = 3, signed: bool = False) -> str:
    return format_ci(r["estimate"], r["ci_low"], r["ci_high"], d, signed) if r is not None else "n/a"


def _est(r) -> str:
    return format_ci(r["estimate"], r["ci_low"], r["ci_high"], 3) if r is not None else "n/a"


def _cell_fmt(r) -> dict:
    return {"cohort": r["cohort"], "level": _level(r), "reconstructor": _method(r), "mitigation": _mitigation(r),
            "seed": str(r["seed"])}


def _pivot_arms(df: pd.DataFrame, keys: list[str], item: str) -> dict:
    """``(key values..., item) -> {input: row}`` for a long table with an ``input`` (clean/recon/change) column."""
    out: dict = {}
    for r in df.to_dict("records"):
        key = tuple(None if isinstance(r[k], float) and np.isnan(r[k]) else r[k] for k in [*keys, item])
        out.setdefault(key, {})[r["input"]] = r
    return out


def _calibration_fmt(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    keys = [*_CELL, "label", "attribute", "group"]
    piv = _pivot_arms(df, keys, "metric")
    for k, m in piv.items():
        if k[-1] not in ("ece", "ece_gap"):
            continue
        anyr = next(iter(m.values()))
        slope = piv.get((*k[:-1], "slope"), {})
        ch = m.get("change")
        sig = ch is not None and bool(ch.get("significant", False))
        rows.append({**_cell_fmt(anyr), "label": anyr["label"], "attribute": anyr["attribute"],
                     "group": anyr["group"], "patients": str(anyr["n_patients"]),
                     "ECE clean": _est(m.get("clean")), "ECE processed": _est(m.get("recon")),
                     "ECE change": (_ci(ch, signed=True) if ch else "n/a") + ("*" if sig else ""),
                     "slope clean": _f(slope["clean"]["estimate"], 2) if "clean" in slope else "",
                     "slope processed": _f(slope["recon"]["estimate"], 2) if "recon" in slope else "",
                     "note": "" if anyr["estimable"] else "not estimable (too few patients)",
                     "_significant": sig})
    return pd.DataFrame(rows)


def _operating_fmt(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    by: dict = {}
    keys = [*_CELL, "label", "attribute", "group"]
    for r in df.to_dict("records"):
        key = tuple(None if isinstance(r[k], float) and np.isnan(r[k]) else r[k] for k in keys)
        by.setdefault(key, {})[r["quantity"]] = r
    for q in by.values():
        first = q["sensitivity_clean"]
        rows.append({**_cell_fmt(first), "label": first["label"], "attribute": first["attribute"],
                     "group": first["group"], "patients (pos/neg)": f"{first['n_patients']} "
                     f"({first['n_positive']}/{first['n_negative']})",
                     "threshold": _f(q["restoring_threshold"]["clean_threshold"], 3),
                     "Se clean": _est(q["sensitivity_clean"]), "Se processed": _est(q["sensitivity_recon"]),
                     "Se change": _ci(q["sensitivity_change"], signed=True),
                     "Sp clean": _est(q["specificity_clean"]), "Sp processed": _est(q["specificity_recon"]),
                     "Sp change": _ci(q["specificity_change"], signed=True),
                     "decision flips": _est(q["flip_rate"]),
                     "threshold restoring Se": _f(q["restoring_threshold"]["estimate"], 3),
                     "note": "" if first["estimable"] else "not estimable (too few patients)"})
    return pd.DataFrame(rows)


def _stat_fmt(df: pd.DataFrame, lead: list[str]) -> pd.DataFrame:
    rows = []
    for r in df.to_dict("records"):
        sig = bool(r.get("significant", False))
        rows.append({**_cell_fmt(r), **{k: str(r[k]) for k in lead},
                     "metric": METRIC_NAMES.get(r["metric"], r["metric"]),
                     **arm_columns(r, 3),
                     "p (adj.)": _f(r.get("p_adjusted", np.nan), 3), "_significant": sig})
    return pd.DataFrame(rows)


def _long_fmt(df: pd.DataFrame, lead: list[str], item: str, names: dict | None = None) -> pd.DataFrame:
    rows = []
    for k, m in _pivot_arms(df, [*_CELL, *lead], item).items():
        anyr = next(iter(m.values()))
        ch = m.get("change")
        flag = bool(ch.get("more_predictable", False)) if ch else False
        row = {**_cell_fmt(anyr), **{c: str(anyr[c]) for c in lead},
               item: (names or {}).get(k[-1], k[-1]), "clean": _est(m.get("clean")), "processed": _est(m.get("recon")),
               "change": _ci(ch, signed=True) if ch else "n/a",
               "p": _f(ch["p_value"], 3) if ch else "n/a"}
        if "more_predictable" in anyr:
            row["flag"] = "more predictable: shortcut" if flag else ""
        if "worst_group" in anyr:
            row["worst group (processed)"] = str(m["recon"]["worst_group"]) if "recon" in m else ""
        row["_significant"] = flag
        rows.append(row)
    return pd.DataFrame(rows)


def formatted_depth(d: Depth) -> dict[str, pd.DataFrame]:
    """The formatted (string) tables of :class:`Depth`, with a ``_significant`` column where meaningful."""
    t = d.tables
    inter_groups = t["intersection_groups"].copy()
    if not inter_groups.empty:
        inter_groups["estimable"] = np.where(inter_groups["estimable"], "yes",
                                             f"not estimable (< {d.settings['min_group_patients']} patients)")
    onset = pd.DataFrame([{
        "cohort": r["cohort"], "reconstructor": _method(r),
        "attribute": r["attribute"], "label": r["label"], "metric": METRIC_NAMES.get(r["metric"], r["metric"]),
        "onset level": r["onset"],
        "change at onset": row_ci(r, "change", 3, signed=True),
        "p (adj.)": _f(r["p_adjusted"], 3), "_significant": r["onset_level"] is not None and np.isfinite(r["onset_level"]),
    } for r in t["onset"].to_dict("records")])
    ranking = pd.DataFrame([{
        "cohort": r["cohort"], "level": f"{r['level']:g}", "criterion": r["criterion"], "method": r["method"],
        "estimate": _f(r["estimate"], 3, signed="change" in r["criterion"]), "rank": str(int(r["rank"])),
        "rank interval": f"[{int(r['rank_ci_low'])}, {int(r['rank_ci_high'])}]" if np.isfinite(r["rank_ci_low"]) else "n/a",
        "P(first)": f"{100 * r['p_first']:.0f}%", "in words": r["summary"] if r["rank"] == 1 else "",
    } for r in t["ranking"].to_dict("records")])
    fried = pd.DataFrame([{
        "cohort": r["cohort"], "criterion": r["criterion"], "Friedman χ²": _f(r["statistic"], 2),
        "p": _f(r["p_value"], 3), "blocks": str(r["n_blocks"]), "methods": r["methods"],
    } for r in t["friedman"].to_dict("records")])
    power = pd.DataFrame([{
        "cohort": r["cohort"], "level": f"{r['level']:g}",
        "reconstructor": _method(r),
        "attribute": r["attribute"], "label": r["label"], "metric": METRIC_NAMES.get(r["metric"], r["metric"]),
        "observed change": _f(r["observed_change"], 3, True), "SE": _f(r["standard_error"], 3),
        "patients now": str(r["n_patients"]), "power now": _f(r["power_now"], 2),
        f"patients for Δ={r['effect']:g} at {100 * r['power']:.0f}% power":
            "n/a" if not np.isfinite(r["required_patients"]) else f"{int(r['required_patients'])}",
    } for r in t["power"].to_dict("records")])
    return {
        "calibration": _calibration_fmt(t["calibration"]),
        "operating_point": _operating_fmt(t["operating_point"]),
        "intersections": _stat_fmt(t["intersections"], ["intersection", "label"]) if not t["intersections"].empty
        else pd.DataFrame(),
        "intersection_groups": inter_groups,
        "onset": onset,
        "shortcut": _long_fmt(t["shortcut"], ["attribute"], "probe"),
        "ranking": ranking, "friedman": fried,
        "segmentation_equity": _long_fmt(t["segmentation_equity"], ["attribute"], "metric",
                                         {"mean": "mean Dice", "equity_scaled": "equity-scaled Dice",
                                          "worst_group_mean": "worst-group mean Dice",
                                          "worst_group_tail": "worst-group 10th-percentile Dice"}),
        "power": power,
    }


# --------------------------------------------------------------------------------------------
# figures


def _reference_cells(a: Analysis, cohort: str) -> pd.DataFrame:
    """Main-seed, unmitigated cells of a cohort at its most severe level."""
    c = _main_seed(a.cells[(a.cells["cohort"] == cohort) & (a.cells["mitigation"] == "none")])
    lv = a.cohorts[cohort]["levels"][-1] if a.cohorts[cohort]["levels"] else None
    return c[c["level"] == lv]


def _fig_reliability(d: Depth, a: Analysis, out_dir: Path) -> Figure | None:
    cls = [c for c, i in a.cohorts.items() if i["task"] == "classification" and i["labels"] and i["group_attributes"]]
    if not cls or not d.reliability:
        return None
    cohort = cls[0]
    info = a.cohorts[cohort]
    label, attr = info["labels"][0], info["group_attributes"][0]
    cells = _reference_cells(a, cohort)
    keys = [(cohort, label, attr, r["level"], r["reconstructor"], r["arm"], r["mitigation"], r["seed"])
            for r in cells.to_dict("records")]
    keys = [k for k in keys if k in d.reliability]
    if not keys:
        return None
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(1, len(keys), figsize=(2.6 * len(keys) + 0.6, 3.0), squeeze=False, sharey=True)
        for ax, k in zip(axes[0], keys):
            curves = d.reliability[k]
            groups = sorted({g for g, _ in curves})
            ax.plot([0, 1], [0, 1], color="#999999", lw=0.8, ls=":")
            for i, g in enumerate(groups):
                col = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00")[i % 5]
                for arm, ls in (("clean", "--"), ("recon", "-")):
                    c = curves.get((g, arm))
                    if c is None or c.empty:
                        continue
                    ax.plot(c["mean_predicted"], c["observed_rate"], ls=ls, marker="o", ms=2.5, color=col,
                            label=f"{_t(g)} ({'clean' if arm == 'clean' else 'processed'})")
            ax.set_title(_t(k[4] + (" (direct)" if k[5] == "direct" and k[4] != "direct" else "")))
            ax.set_xlabel("mean predicted probability")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
        axes[0][0].set_ylabel("observed rate")
        h, lab = axes[0][0].get_legend_handles_labels()
        fig.legend(h, lab, loc="lower center", ncol=min(len(lab), 4), frameon=False, bbox_to_anchor=(0.5, 0.0))
        fig.suptitle(_t(f"{cohort}: reliability of '{label}' by {attr} at "
                        f"{level_text(keys[0][3], info['level_name'])}"))
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        png, pdf = _save(fig, out_dir, "depth-reliability")
    return Figure("depth-reliability", png, pdf, "Reliability by group, clean vs processed",
                  f"Observed positive rate against the mean predicted probability per bin "
                  f"({d.settings['calibration_strategy']} bins, {d.settings['calibration_bins']}), per group of {attr}, "
                  "on clean (dashed) and processed (solid) inputs, at the most severe level; the dotted diagonal is "
                  "perfect calibration. ECE, slope and intercept with intervals are in the calibration table.")


def _fig_operating(d: Depth, a: Analysis, styles: _Styles, out_dir: Path) -> Figure | None:
    op = d.tables["operating_point"]
    if op.empty:
        return None
    cohort = str(op["cohort"].iloc[0])
    info = a.cohorts[cohort]
    label, attr = info["labels"][0], info["group_attributes"][0]
    cells = _reference_cells(a, cohort)
    sub = op[(op["cohort"] == cohort) & (op["label"] == label) & (op["attribute"] == attr)
             & (op["level"] == (info["levels"][-1] if info["levels"] else None))
             & (op["mitigation"] == "none") & (op["seed"] == cells["seed"].min()) & (op["group"] != "(all)")]
    if sub.empty:
        return None
    groups = sorted(sub["group"].unique())
    methods = [(r["reconstructor"], r["arm"]) for r in cells.to_dict("records")]
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.2))
        width = 0.8 / max(len(methods), 1)
        for ax, q, title in ((axes[0], "sensitivity_change", "sensitivity change (processed − clean)"),
                             (axes[1], "flip_rate", "share of decisions flipped")):
            for j, (rec, arm) in enumerate(methods):
                m = sub[(sub["reconstructor"] == rec) & (sub["arm"] == arm) & (sub["quantity"] == q)]
                m = m.set_index("group").reindex(groups)
                x = np.arange(len(groups)) + (j - (len(methods) - 1) / 2) * width
                est = m["estimate"].to_numpy(float)
                err = np.abs(np.stack([est - m["ci_low"].to_numpy(float), m["ci_high"].to_numpy(float) - est]))
                st = styles(rec)
                ax.bar(x, est, width * 0.9, color=st["color"], label=_t(rec if arm != "direct" or rec == "direct"
                                                                         else f"{rec} (direct)"))
                ax.errorbar(x, est, yerr=np.nan_to_num(err), fmt="none", ecolor="#333333", lw=0.8, capsize=2)
            ax.axhline(0, color="#555555", lw=0.8)
            ax.set_xticks(np.arange(len(groups)), [_t(g) for g in groups], rotation=20)
            ax.set_title(title)
        axes[0].legend(frameon=False, fontsize=7)
        fig.suptitle(_t(f"{cohort}: '{label}' at the clean threshold, by {attr}, "
                        f"{level_text(info['levels'][-1], info['level_name'])}"))
        fig.tight_layout()
        png, pdf = _save(fig, out_dir, "depth-operating-point")
    return Figure("depth-operating-point", png, pdf, "Operating point at the clean threshold",
                  "Left: change in sensitivity per group when the clean model's clean-validation threshold is applied to "
                  "processed inputs; right: share of studies whose decision flips. Bars: estimates; whiskers: 95% "
                  "patient-level bootstrap intervals. The threshold that restores each group's clean sensitivity is "
                  "in the operating-point table.")


def _fig_onset(d: Depth, a: Analysis, styles: _Styles, out_dir: Path) -> Figure | None:
    f = _main_seed(a.fairness[a.fairness["mitigation"] == "none"])
    cohorts = [c for c in a.cohorts if a.cohorts[c]["group_attributes"] and a.cohorts[c]["levels"]]
    if f.empty or not cohorts:
        return None
    onset = d.tables["onset"]
    with plt.rc_context(_RC):
        ncol = max(len(a.cohorts[c]["group_attributes"]) for c in cohorts)
        fig, axes = plt.subplots(len(cohorts), ncol, figsize=(4.2 * ncol + 0.4, 2.9 * len(cohorts) + 0.5),
                                 squeeze=False)
        for i, cohort in enumerate(cohorts):
            info = a.cohorts[cohort]
            metric = _PRIMARY_FAIRNESS[info["task"]]
            label = info["labels"][0] if info["task"] == "classification" and info["labels"] else ""
            xpos = {lv: k for k, lv in enumerate(info["levels"])}
            for j in range(ncol):
                ax = axes[i][j]
                if j >= len(info["group_attributes"]):
                    ax.axis("off")
                    continue
                attr = info["group_attributes"][j]
                sub = f[(f["cohort"] == cohort) & (f["metric"] == metric) & (f["attribute"] == attr)
                        & (f["label"] == label)]
                methods = sub[["reconstructor", "arm"]].drop_duplicates().to_records(index=False)
                for k, (rec, arm) in enumerate(methods):
                    m = sub[(sub["reconstructor"] == rec) & (sub["arm"] == arm)].copy()
                    m["x"] = m["level"].map(xpos) + (k - (len(methods) - 1) / 2) * 0.06
                    m = m.sort_values("x")
                    st = styles(rec)
                    est = m["change"].to_numpy(float)
                    err = np.abs(np.stack([est - m["change_ci_low"].to_numpy(float),
                                           m["change_ci_high"].to_numpy(float) - est]))
                    ax.errorbar(m["x"], est, yerr=np.nan_to_num(err), color=st["color"], marker=st["marker"], ms=4,
                                lw=1.2, capsize=2, label=_t(rec if arm != "direct" or rec == "direct" else f"{rec} (direct)"))
                    on = onset[(onset["cohort"] == cohort) & (onset["reconstructor"] == rec) & (onset["arm"] == arm)
                               & (onset["attribute"] == attr) & (onset["label"] == label) & (onset["metric"] == metric)]
                    if not on.empty and on["onset_level"].notna().iloc[0]:
                        lv = float(on["onset_level"].iloc[0])
                        row = m[m["level"] == lv]
                        ax.plot(row["x"], row["change"], marker="*", ms=12, color=st["color"], mec="black", mew=0.6,
                                ls="none")
                ax.axhline(0, color="#555555", lw=0.8)
                ax.set_xticks(range(len(info["levels"])), [f"{lv:g}" for lv in info["levels"]])
                ax.set_xlabel(f"{info['level_name'] or 'level'} (mildest → most severe)")
                ax.set_ylabel(f"Δ {METRIC_NAMES[metric]}")
                ax.set_title(_t(f"{cohort}: {attr}" + (f", {label}" if label else "")))
            axes[i][0].legend(frameon=False, fontsize=7)
        fig.tight_layout()
        png, pdf = _save(fig, out_dir, "depth-onset")
    return Figure("depth-onset", png, pdf, "Dose/acceleration response of the bias change, with onset",
                  "Change in the primary fairness gap (processed − clean; equalized-odds difference for "
                  "classification, Dice gap for segmentation) against the degradation level, with 95% intervals; a "
                  "star marks the onset level, the mildest level at which the change is significant after the "
                  "fairness-family correction.")


def _fig_ranking(d: Depth, a: Analysis, out_dir: Path) -> Figure | None:
    r = d.tables["ranking"]
    if r.empty:
        return None
    panels = r[["cohort", "criterion"]].drop_duplicates().to_records(index=False)
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 0.8, 3.0), squeeze=False,
                                 layout="constrained")
        for ax, (cohort, crit) in zip(axes[0], panels):
            sub = r[(r["cohort"] == cohort) & (r["criterion"] == crit)]
            piv = sub.pivot_table(index="method", columns="level", values="p_first", aggfunc="mean")
            piv = piv[[lv for lv in a.cohorts[cohort]["levels"] if lv in piv.columns]]  # mildest first
            im = ax.imshow(piv.to_numpy(), vmin=0, vmax=1, cmap="Blues", aspect="auto")
            ax.set_yticks(range(len(piv.index)), [_t(m) for m in piv.index])
            ax.set_xticks(range(len(piv.columns)), [f"{c:g}" for c in piv.columns])
            for (yy, xx), v in np.ndenumerate(piv.to_numpy()):
                if np.isfinite(v):
                    ax.text(xx, yy, f"{100 * v:.0f}%", ha="center", va="center", fontsize=7,
                            color="white" if v > 0.6 else "black")
            ax.set_title(_t(f"{cohort}\n{crit}"))
            ax.set_xlabel(f"{a.cohorts[cohort]['level_name'] or 'level'} (mildest first)")
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="share ranked first")
        png, pdf = _save(fig, out_dir, "depth-ranking")
    return Figure("depth-ranking", png, pdf, "Ranking with uncertainty",
                  "Share of patient-level bootstrap resamples in which each method ranks first, per cohort, criterion "
                  "and level (task: higher is better; bias change: lower is better). Rank intervals and the Friedman "
                  "test across cells are in the ranking tables.")


# --------------------------------------------------------------------------------------------
# writing and the report sections

_DEFS = {
    "calibration": ("Calibration by group",
                    "ECE = Σ_m (n_m/n) |ȳ_m − p̄_m| over {bins} {strategy} bins of the predicted probability; "
                    "calibration slope b and intercept a from the logistic recalibration logit P(y=1) = a + b·logit(p) "
                    "(a = 0, b = 1 when calibrated; b < 1: over-confident); ECE gap = max_g ECE_g − min_g ECE_g and its "
                    "change processed − clean. Patient-level paired bootstrap 95% intervals; * marks an ECE-gap change "
                    "significant after {correction} correction within the calibration family."),
    "operating_point": ("Operating point at the clean threshold",
                        "At the clean model's threshold t chosen on clean validation data: Se_g = #(y=1, s≥t)/#(y=1), "
                        "Sp_g = #(y=0, s<t)/#(y=0) per group on clean and processed inputs and their change; decision "
                        "flips = share of studies with [s_clean ≥ t] ≠ [s_processed ≥ t]; the restoring threshold is the "
                        "largest t* with Se_g^processed(t*) ≥ Se_g^clean(t)."),
    "intersections": ("Intersectional groups",
                      "Groups formed by joining attributes (analysis.intersections; by default the first two group "
                      "attributes). A group with fewer than {minp} patients is not estimable and is listed, not "
                      "silently dropped; the fairness metrics are computed over the estimable groups, p-values "
                      "corrected by {correction} within the intersection family."),
    "onset": ("Onset level",
              "For each reconstructor, attribute, label and metric, with levels ordered from the mildest to the most "
              "severe: the mildest level at which the bias change is significant after the fairness-family "
              "correction (p adj. < α), or 'none up to the most severe level'."),
    "shortcut": ("Shortcut check",
                 "AUROC of a logistic probe predicting the group from the frozen diagnostic model's penultimate "
                 "features, with patient-grouped 5-fold cross-validation, on clean and on processed images of the "
                 "same studies (macro one-vs-rest for more than two groups); a processed AUROC whose change interval "
                 "lies above 0 is flagged: the reconstructor makes the group more predictable."),
    "ranking": ("Ranking with uncertainty",
                "Per cohort and level, methods ranked by task performance (mean AUROC over labels, mean Dice; higher "
                "is better) and by bias change (mean over attributes and labels of the change in equalized-odds "
                "difference or Dice gap; lower is better) on the same resampled patients; rank interval = 95% "
                "percentile interval of the bootstrap ranks, P(first) = share of resamples ranked first. Friedman "
                "test across cells (blocks: level × label [× attribute])."),
    "segmentation_equity": ("Equity-scaled and worst-case segmentation",
                            "Equity-scaled Dice = mean Dice / (1 + sd_g of the group mean Dice) (population sd); "
                            "worst-group mean Dice = min_g mean Dice_g; worst-group 10th-percentile Dice = min_g "
                            "Q_0.1(Dice_g); on clean and processed inputs with their change and patient-level intervals."),
    "power": ("Sample-size planner",
              "Test patients needed to detect a bias change of Δ = {effect:g} with {power:.0f}% power (two-sided "
              "α = {alpha:g}): n = ⌈((z_(1−α/2) + z_power) σ / Δ)²⌉ with σ = SE·√N, SE from the observed 95% interval "
              "of the change at the most severe level (N patients now). Also `reconaudit power RUN_DIR --effect Δ`."),
}
_FILE_TABLES = {"calibration": ["calibration"], "operating_point": ["operating_point"],
                "intersections": ["intersections", "intersection_groups"], "onset": ["onset"],
                "shortcut": ["shortcut"], "ranking": ["ranking", "friedman"],
                "segmentation_equity": ["segmentation_equity"], "power": ["power"]}


def _definition(key: str, s: dict) -> tuple[str, str]:
    title, text = _DEFS[key]
    return title, text.format(bins=s["calibration_bins"], strategy="equal-width" if s["calibration_strategy"] ==
                              "uniform" else "equal-mass", correction="Holm" if s["correction"] == "holm" else
                              "Benjamini-Hochberg", minp=s["min_group_patients"], effect=s["power_effect"],
                              power=100 * s["power"], alpha=s["alpha"])


def _mark_calibration_significance(d: Depth) -> None:
    cal = d.tables["calibration"]
    if cal.empty:
        return
    fam = (cal["metric"] == "ece_gap") & (cal["input"] == "change")
    adj = M.adjust_pvalues(cal.loc[fam, "p_value"].to_numpy(float), method=d.settings["correction"],
                           alpha=d.settings["alpha"])
    cal["p_adjusted"] = np.nan
    cal["significant"] = False
    cal.loc[fam, "p_adjusted"] = adj["p_adjusted"].to_numpy()
    cal.loc[fam, "significant"] = adj["significant"].to_numpy()


def write_depth(d: Depth, a: Analysis, tables_dir: Path | str, figures_dir: Path | str) -> list[dict]:
    """Write the tables (CSV numeric; Markdown and LaTeX formatted) and figures; return the report sections.

    Each section: ``id``, ``title``, ``definition``, ``tables`` (list of ``(title, formatted DataFrame)``),
    ``figures`` (list of :class:`~reconaudit.report.figures.Figure`), ``empty`` (a sentence when there is
    nothing to show).
    """
    tdir, fdir = Path(tables_dir), Path(figures_dir)
    tdir.mkdir(parents=True, exist_ok=True)
    fdir.mkdir(parents=True, exist_ok=True)
    _mark_calibration_significance(d)
    fmt = formatted_depth(d)
    for name, df in d.tables.items():
        df.to_csv(tdir / f"depth_{name}.csv", index=False)
        (tdir / f"depth_{name}.md").write_text(to_markdown(fmt[name]) if not fmt[name].empty else "(none)\n",
                                               encoding="utf-8")
        title = _DEFS.get(name, (name.replace("_", " "), ""))[0]
        (tdir / f"depth_{name}.tex").write_text(
            to_latex(fmt[name], caption=title, label=f"tab:depth-{name}") if not fmt[name].empty else "",
            encoding="utf-8")
    styles = _Styles(list(a.cells["reconstructor"].unique()))
    figs = {"calibration": _fig_reliability(d, a, fdir), "operating_point": _fig_operating(d, a, styles, fdir),
            "onset": _fig_onset(d, a, styles, fdir), "ranking": _fig_ranking(d, a, fdir)}
    empty = {
        "calibration": "No classification cell: calibration needs scores and targets.",
        "operating_point": "No classification cell: the operating point needs scores, targets and thresholds.",
        "intersections": "No cohort has two group attributes (or analysis.intersections names none).",
        "onset": "No fairness metric to follow across levels.",
        "shortcut": "The records carry no penultimate features (feature:<k> / clean_feature:<k> columns, saved by "
                    "the score step of classification cells); rerun the audit's score steps to add them. "
                    "The probe is also usable on its own: reconaudit.metrics.shortcut_probe and "
                    "reconaudit.tasks.shortcut.cnn_probe_scores.",
        "ranking": "Fewer than two methods per cohort and level.",
        "segmentation_equity": "No segmentation cell.",
        "power": "No fairness change to plan for.",
    }
    sections = []
    for key, names in _FILE_TABLES.items():
        title, text = _definition(key, d.settings)
        tabs = [(_DEFS.get(n, (n.replace("_", " ").replace("intersection groups", "groups"), ""))[0]
                 if n == key else {"intersection_groups": "Intersectional groups and their sizes",
                                   "friedman": "Friedman test across cells"}[n], fmt[n])
                for n in names if not fmt[n].empty]
        sections.append({"id": f"depth-{key.replace('_', '-')}", "title": title, "definition": text, "tables": tabs,
                         "figures": [figs[key]] if figs.get(key) is not None else [],
                         "empty": "" if tabs else empty[key]})
    return sections
