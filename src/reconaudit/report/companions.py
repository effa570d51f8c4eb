"""The report's companion sections (issue 21), from the records alone.

1. **Three ways to diagnose**: reconstruct-then-diagnose (every reconstructor), the direct arm
   without alignment (``direct``) and with latent alignment (``direct-aligned``, k-MTR), per level
   and per group: the cohort's primary task metric (mean with the analysis' interval) and each
   group's mean Dice / AUROC;
2. **Isoline scores**: Dice and relative volume error of the segmentation against the
   concentration regions c > isoline (``isoline_dice:`` columns), per group with the widest gap;
3. **Regression (phenotypes)**: MAE, RMSE, R² and the MAE gap between groups on clean and processed
   inputs and their change (:func:`reconaudit.metrics.regression_summary`);
4. **Growth**: the error in measured growth of longitudinal series (:func:`reconaudit.metrics.series_growth`),
   its MAE per group and the gap.

Every statistic comes from :mod:`reconaudit.metrics` (``group_mean_summary``, ``regression_summary``,
``series_growth``, ``auroc``); this module arranges tables and draws the figure.  Sections whose
columns the records lack are left out.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .. import metrics as M  # noqa: E402
from ..engine.records import BULK_PREFIXES, Records  # noqa: E402
from ..schema import CLEAN_PRED, ISOLINE_DICE, ISOLINE_VOLUME_ERROR, PRED, REG_TARGET  # noqa: E402
from .analysis import MEAN_LABEL, METRIC_NAMES, Analysis  # noqa: E402
from .figures import _MARKERS, _RC, OKABE_ITO, Figure, _save  # noqa: E402

logger = logging.getLogger(__name__)

__all__ = ["ALIGNED", "companion_sections", "method_kind"]

ALIGNED = "direct-aligned"
#: At most this many bootstrap resamples per interval (as the analyses in depth).
RESAMPLES = 400
_CELL = ["cohort", "degradation", "level", "reconstructor", "arm", "mitigation", "mitigation_strength"]
KINDS = ("reconstruct-then-diagnose", "direct, unaligned", "direct, aligned")


def method_kind(reconstructor: str, arm: str) -> str:
    """Which of the three ways to diagnose a cell is (:data:`KINDS`)."""
    if arm != "direct":
        return KINDS[0]
    return KINDS[2] if reconstructor == ALIGNED else KINDS[1]


def _f(v: float, d: int = 3, signed: bool = False) -> str:
    if v is None or not np.isfinite(v):
        return "n/a"
    return f"{v:+.{d}f}" if signed else f"{v:.{d}f}"


def _ci(v: float, lo: float, hi: float, d: int = 3, signed: bool = False) -> str:
    s = _f(v, d, signed)
    if s != "n/a" and np.isfinite(lo) and np.isfinite(hi):
        s += f" [{_f(lo, d, signed)}, {_f(hi, d, signed)}]"
    return s


def _attrs(df: pd.DataFrame) -> list[str]:
    return [c.split(":", 1)[1] for c in df.columns if c.startswith("group:") and df[c].notna().any()]


# -------------------------------------------------------------------------------------------- 1
def _group_auroc(cell: pd.DataFrame, attr: str) -> dict[str, float]:
    labels = [c.split(":", 1)[1] for c in cell if c.startswith("score:") and cell[c].notna().any()]
    out = {}
    for g, sub in cell.groupby(f"group:{attr}"):
        vals = []
        for lb in labels:
            y, s = sub[f"target:{lb}"].to_numpy(float), sub[f"score:{lb}"].to_numpy(float)
            ok = np.isfinite(y)
            if len(np.unique(y[ok])) == 2:
                vals.append(float(M.auroc(y[ok], s[ok])))
        out[str(g)] = float(np.mean(vals)) if vals else np.nan
    return out


def _three_ways(df: pd.DataFrame, a: Analysis, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(formatted table, numeric per-group table) of every method at every level."""
    num, rows = [], []
    for cohort, sub in df.groupby("cohort", sort=True):
        info = a.cohorts.get(cohort)
        if info is None:
            continue
        metric, label = info["primary"]
        attrs = _attrs(sub)
        seg = metric.startswith("dice") and "dice" in sub
        summ = M.group_mean_summary(sub, ["dice"], attrs, by=_CELL, n_resamples=RESAMPLES, seed=seed) if seg else None
        task = a.task[(a.task["cohort"] == cohort) & (a.task["metric"] == metric) & (a.task["label"] == label)
                      & (a.task["mitigation"] == "none")]
        for key, cell in sub.groupby(_CELL, sort=True, dropna=False):
            rec, arm, level = key[3], key[4], key[2]
            t = task[(task["reconstructor"] == rec) & (task["arm"] == arm) & (task["level"] == level)]
            tr = t.iloc[0] if not t.empty else None
            row = {"cohort": cohort, "level": f"{level:g}", "way": method_kind(rec, arm), "method": rec,
                   f"{METRIC_NAMES.get(metric, metric)}" + (" (mean over labels)" if label == MEAN_LABEL else ""):
                   _ci(tr["recon"], tr["recon_ci_low"], tr["recon_ci_high"]) if tr is not None else "n/a",
                   "clean": _f(tr["clean"]) if tr is not None else "n/a"}
            for attr in attrs:
                if seg:
                    s = summ[(summ["attribute"] == attr)]
                    for k, v in zip(_CELL, key):
                        s = s[(s[k] == v) | (s[k].isna() & pd.isna(v))]
                    groups = {r["group"]: (r["value"], r["ci_low"], r["ci_high"]) for _, r in s.iterrows()}
                else:
                    groups = {g: (v, np.nan, np.nan) for g, v in _group_auroc(cell, attr).items()}
                    vals = [v[0] for v in groups.values() if np.isfinite(v[0])]
                    groups["(gap)"] = (max(vals) - min(vals) if len(vals) > 1 else np.nan, np.nan, np.nan)
                for g, (v, lo, hi) in groups.items():
                    name = f"{attr}: {g}" if g != "(gap)" else f"{attr} gap"
                    row[name] = _ci(v, lo, hi) if g == "(gap)" else _f(v)
                    num.append({"cohort": cohort, "level": level, "way": method_kind(rec, arm), "method": rec,
                                "attribute": attr, "group": g, "value": v, "ci_low": lo, "ci_high": hi})
            rows.append(row)
    return pd.DataFrame(rows), pd.DataFrame(num)


def _style(rec: str, kind: str, recs: list[str]) -> dict:
    """Line style of a method: reconstructors in greys with their own marker, the direct arms in colour."""
    if kind == KINDS[1]:
        return dict(color=OKABE_ITO[1], lw=2.2, ls="--", marker="o")
    if kind == KINDS[2]:
        return dict(color=OKABE_ITO[0], lw=2.4, ls="-", marker="o")
    i = recs.index(rec) if rec in recs else 0
    return dict(color=str(0.15 + 0.55 * i / max(len(recs) - 1, 1)), lw=1.1, ls="-", marker=_MARKERS[(i + 1) % len(_MARKERS)],
                ms=4)


def _label(rec: str, kind: str) -> str:
    return {KINDS[1]: "direct on k-space / degraded input", KINDS[2]: "direct, latent-aligned"}.get(kind, rec)


def _fig_three_ways(df: pd.DataFrame, a: Analysis, num: pd.DataFrame, reg: pd.DataFrame, out_dir: Path) -> Figure | None:
    cohorts = [c for c in sorted(df["cohort"].unique()) if c in a.cohorts]
    if not cohorts:
        return None
    recs = sorted(df.loc[df["arm"] != "direct", "reconstructor"].astype(str).unique())
    target = None
    if not reg.empty:
        target = list(dict.fromkeys(reg["target"]))[0]  # the cohort's first regression target
    ncol = 2 if target is not None else 1
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(2 * len(cohorts), ncol, figsize=(5.2 * ncol, 7.2 * len(cohorts)), squeeze=False)
        for j, cohort in enumerate(cohorts):
            info = a.cohorts[cohort]
            metric, label = info["primary"]
            levels = list(info["levels"])
            xpos = {lv: i for i, lv in enumerate(levels)}
            t = a.task[(a.task["cohort"] == cohort) & (a.task["metric"] == metric) & (a.task["label"] == label)
                       & (a.task["mitigation"] == "none") & (a.task["seed"] == a.task["seed"].min())]
            ax, axg = axes[2 * j, 0], axes[2 * j + 1, 0]
            for (rec, arm), d in t.groupby(["reconstructor", "arm"]):
                kind = method_kind(rec, arm)
                st = _style(rec, kind, recs)
                d = d.sort_values("level", key=lambda s: s.map(xpos))
                x = d["level"].map(xpos).to_numpy(float)
                y = d["recon"].to_numpy(float)
                err = np.vstack([y - d["recon_ci_low"].to_numpy(float), d["recon_ci_high"].to_numpy(float) - y])
                ax.errorbar(x, y, yerr=np.nan_to_num(np.abs(err)), capsize=2, label=_label(rec, kind), **st)
                g = num[(num["cohort"] == cohort) & (num["method"] == rec) & (num["group"] != "(gap)")]
                if not g.empty:
                    worst = g.groupby("level")["value"].min()
                    axg.plot([xpos[lv] for lv in worst.index if lv in xpos],
                             [worst[lv] for lv in worst.index if lv in xpos], **st)
            if not t.empty:
                ax.axhline(t.iloc[0]["clean"], color="#222222", ls=":", lw=1.0, label="clean images")
            mname = METRIC_NAMES.get(metric, metric) + (" (mean over labels)" if label == MEAN_LABEL else "")
            panels = [(ax, mname), (axg, f"worst group: {mname}")]
            if target is not None:
                ar, arg = axes[2 * j, 1], axes[2 * j + 1, 1]
                rc = reg[(reg["cohort"] == cohort) & (reg["target"] == target)]
                for (rec, way), d in rc.groupby(["method", "way"]):
                    st = _style(rec, way, recs)
                    m = d[(d["metric"] == "mae") & (d["arm"] == "recon")].copy()
                    m["lv"] = m["level"].astype(float)
                    m = m.sort_values("lv", key=lambda s: s.map(xpos))
                    x = m["lv"].map(xpos).to_numpy(float)
                    y = m["estimate"].to_numpy(float)
                    err = np.vstack([y - m["ci_low"].to_numpy(float), m["ci_high"].to_numpy(float) - y])
                    ar.errorbar(x, y, yerr=np.nan_to_num(np.abs(err)), capsize=2, **st)
                    gap = d[(d["metric"] == "mae_gap") & (d["arm"] == "recon")].copy()
                    if not gap.empty:
                        gap["lv"] = gap["level"].astype(float)
                        wide = gap.groupby("lv")["estimate"].max()
                        arg.plot([xpos[lv] for lv in wide.index if lv in xpos],
                                 [wide[lv] for lv in wide.index if lv in xpos], **st)
                clean = rc[(rc["metric"] == "mae") & (rc["arm"] == "clean")]
                if not clean.empty:
                    ar.axhline(float(clean["estimate"].iloc[0]), color="#222222", ls=":", lw=1.0)
                panels += [(ar, f"MAE: {target}"), (arg, f"MAE gap (widest attribute): {target}")]
            for axx, ylab in panels:
                axx.set_xticks(range(len(levels)), [f"{lv:g}" for lv in levels])
                axx.set_xlabel(f"{info['level_name'] or 'level'} (more severe to the right)")
                axx.set_ylabel(ylab)
                axx.set_title(cohort, fontsize=9)
            ax.legend(fontsize=7, frameon=False)
        fig.tight_layout()
        png, pdf = _save(fig, out_dir, "three-ways")
    caption = ("The three ways to diagnose at each level: reconstruct then diagnose with the frozen clean-image model (greys, "
               "one line per reconstructor), a model trained on the degraded input without alignment (orange, dashed) and "
               "one trained with an alignment loss to the clean model's latent (blue; k-MTR). Left: the primary task "
               "metric with its patient-level bootstrap interval (dotted: clean images), and below it its value in the worst "
               "group (the lowest group mean over every group attribute)" + (
                   "; right: the MAE of the first regression target with its interval (dotted: clean images), and below "
                   "it the MAE gap between groups for the attribute with the widest gap." if target is not None else "."))
    return Figure("three-ways", png, pdf, "Three ways to diagnose: reconstruct, direct, direct aligned", caption)


# -------------------------------------------------------------------------------------------- 2
def _isolines(df: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    isos = [c[len(ISOLINE_DICE):] for c in df.columns if c.startswith(ISOLINE_DICE)]
    if not isos:
        return pd.DataFrame(), pd.DataFrame()
    cols = [f"{p}{i}" for i in isos for p in (ISOLINE_DICE, ISOLINE_VOLUME_ERROR, f"clean_{ISOLINE_DICE}")]
    rows, summaries = [], []
    for cohort, sub in df.groupby("cohort", sort=True):
        have = [c for c in cols if c in sub and sub[c].notna().any()]
        if not have:
            continue
        attrs = _attrs(sub)
        s = M.group_mean_summary(sub.assign(**{"group:(all)": "(all)"}), have, ["(all)", *attrs], by=_CELL,
                                 n_resamples=RESAMPLES, seed=seed)
        summaries.append(s)
        for key, _ in sub.groupby(_CELL, sort=True, dropna=False):
            sk = s
            for k, v in zip(_CELL, key):
                sk = sk[(sk[k] == v) | (sk[k].isna() & pd.isna(v))]

            def pick(col, attr="(all)", group="(all)", sk=sk):
                r = sk[(sk["column"] == col) & (sk["attribute"] == attr) & (sk["group"] == group)]
                return (np.nan, np.nan, np.nan) if r.empty else tuple(r.iloc[0][["value", "ci_low", "ci_high"]])

            for iso in isos:
                row = {"cohort": cohort, "level": f"{key[2]:g}", "way": method_kind(key[3], key[4]), "method": key[3],
                       "isoline c >": iso, "clean-image Dice": _f(pick(f"clean_{ISOLINE_DICE}{iso}")[0]),
                       "Dice": _ci(*pick(f"{ISOLINE_DICE}{iso}")),
                       "volume error": _ci(*pick(f"{ISOLINE_VOLUME_ERROR}{iso}"), signed=True)}
                best = None
                for attr in attrs:
                    v = pick(f"{ISOLINE_DICE}{iso}", attr, "(gap)")
                    if np.isfinite(v[0]) and (best is None or v[0] > best[1][0]):
                        best = (attr, v)
                row["Dice: widest group gap"] = "n/a" if best is None else f"{best[0]}: {_ci(*best[1])}"
                rows.append(row)
    return pd.DataFrame(rows), (pd.concat(summaries, ignore_index=True) if summaries else pd.DataFrame())


# -------------------------------------------------------------------------------------------- 3, 4
def _summary_rows(summ: pd.DataFrame, base: dict, attrs: list[str], d: int = 3) -> dict:
    def g(metric, attr, arm):
        r = summ[(summ["metric"] == metric) & (summ["attribute"] == attr) & (summ["arm"] == arm)]
        return r.iloc[0] if not r.empty else None

    row = dict(base)
    for metric, name in (("mae", "MAE"), ("rmse", "RMSE"), ("r2", "R²")):
        c, r, ch = g(metric, "all", "clean"), g(metric, "all", "recon"), g(metric, "all", "change")
        row[f"{name} clean"] = _f(c["estimate"], d) if c is not None else "n/a"
        row[name] = _ci(r["estimate"], r["ci_low"], r["ci_high"], d) if r is not None else "n/a"
        if metric == "mae":
            row["MAE change"] = (_ci(ch["estimate"], ch["ci_low"], ch["ci_high"], d, signed=True)
                                 + f" (p = {ch['p_value']:.3g})") if ch is not None else "n/a"
    for attr in attrs:
        c, r, ch = g("mae_gap", attr, "clean"), g("mae_gap", attr, "recon"), g("mae_gap", attr, "change")
        row[f"MAE gap {attr}"] = (f"{_f(c['estimate'], d) if c is not None else 'n/a'} -> "
                                  f"{_ci(r['estimate'], r['ci_low'], r['ci_high'], d) if r is not None else 'n/a'}")
        row[f"gap change {attr}"] = _ci(ch["estimate"], ch["ci_low"], ch["ci_high"], d, signed=True) if ch is not None else "n/a"
    return row


def _regression(df: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    targets = [c[len(REG_TARGET):] for c in df.columns if c.startswith(REG_TARGET)]
    rows, full = [], []
    for key, cell in df.groupby(_CELL, sort=True, dropna=False):
        attrs = _attrs(cell)
        for t in targets:
            if f"{PRED}{t}" not in cell or cell[f"{PRED}{t}"].isna().all():
                continue
            summ = M.regression_summary(
                cell[f"{REG_TARGET}{t}"].to_numpy(float), cell[f"{PRED}{t}"].to_numpy(float),
                cell[f"{CLEAN_PRED}{t}"].to_numpy(float) if f"{CLEAN_PRED}{t}" in cell else None,
                patient_ids=cell["patient_id"].to_numpy(), n_resamples=RESAMPLES, seed=seed,
                sensitive_features={a: cell[f"group:{a}"].astype(str).to_numpy() for a in attrs})
            base = {"cohort": key[0], "level": f"{key[2]:g}", "way": method_kind(key[3], key[4]), "method": key[3],
                    "target": t}
            full.append(summ.assign(**base))
            rows.append(_summary_rows(summ, base, attrs))
    return pd.DataFrame(rows), (pd.concat(full, ignore_index=True) if full else pd.DataFrame())


def _growth(df: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    if "series_id" not in df or "gen_seg_volume" not in df:
        return pd.DataFrame(), pd.DataFrame()
    rows, full = [], []
    for key, cell in df.groupby(_CELL, sort=True, dropna=False):
        g = M.series_growth(cell)
        if g.empty or g["measured_growth"].isna().all():
            continue
        attrs = [c.split(":", 1)[1] for c in g.columns if c.startswith("group:")]
        summ = M.regression_summary(g["true_growth"].to_numpy(float), g["measured_growth"].to_numpy(float),
                                    g["clean_growth"].to_numpy(float), patient_ids=g["patient_id"].to_numpy(),
                                    n_resamples=RESAMPLES, seed=seed,
                                    sensitive_features={a: g[f"group:{a}"].astype(str).to_numpy() for a in attrs})
        base = {"cohort": key[0], "level": f"{key[2]:g}", "way": method_kind(key[3], key[4]), "method": key[3],
                "series": len(g), "mean true growth (mm²)": _f(float(g["true_growth"].mean()), 1)}
        full.append(summ.assign(**base))
        row = _summary_rows(summ, base, attrs, d=1)
        rows.append({k: v for k, v in row.items() if not k.startswith(("RMSE", "R²"))})
    return pd.DataFrame(rows), (pd.concat(full, ignore_index=True) if full else pd.DataFrame())


# -------------------------------------------------------------------------------------------- sections
def companion_sections(records: Records | pd.DataFrame, meta: dict, analysis: Analysis, tables_dir: Path | str,
                       figures_dir: Path | str) -> list[dict]:
    """The companion sections (dicts with ``id``, ``title``, ``definition``, ``empty``, ``figures``,
    ``tables`` = [(title, DataFrame)]), their tables written to ``tables_dir`` as CSV; empty when the
    records carry none of their columns (then nothing is read; otherwise the unmitigated rows of the
    smallest seed, without the :data:`~reconaudit.engine.records.BULK_PREFIXES` columns)."""
    tables_dir, figures_dir = Path(tables_dir), Path(figures_dir)
    tables_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    rec = Records.of(records)
    if rec.empty:
        return []
    seed = int(((meta.get("config") or {}).get("analysis") or {}).get("seed", 0))
    firsts = rec.first_rows(["seed", "reconstructor"])
    if not ((firsts["reconstructor"] == ALIGNED).any() or rec.with_prefix(ISOLINE_DICE, REG_TARGET)
            or ("series_id" in rec and "gen_seg_volume" in rec)):
        return []  # none of the sections has data: nothing is read
    cols = [c for c in rec.columns if not c.startswith(BULK_PREFIXES)]
    df = rec.select(cols, where={"seed": firsts["seed"].min(), "mitigation": "none"}).copy()
    secs = []
    reg_table, reg_full = _regression(df, seed)
    if (df["reconstructor"] == ALIGNED).any():
        t, num = _three_ways(df, analysis, seed)
        num.to_csv(tables_dir / "three-ways-groups.csv", index=False)
        t.to_csv(tables_dir / "three-ways.csv", index=False)
        fig = _fig_three_ways(df, analysis, num, reg_full, figures_dir)
        secs.append({"id": "three-ways", "title": "Three ways to diagnose", "empty": "",
                     "definition": "Reconstruct then diagnose with the frozen model trained on clean images; diagnose the "
                     "degraded input (image or k-space channels) with a model trained on it; the same with an alignment "
                     "loss pulling its penultimate features towards the clean model's features of the clean image "
                     "(direct.alignment_loss: cosine 1 - cos(z, t), mse |z - t|² / F, or InfoNCE over the batch). Group "
                     "values are group means of the per-study Dice with patient-level bootstrap intervals (segmentation) "
                     "or the group's mean AUROC over labels (classification); the gap is the largest minus the smallest.",
                     "figures": [fig] if fig else [], "tables": [("Three ways to diagnose, per level and group", t)]})
    _add_table_section(secs, tables_dir, *_isolines(df, seed), "isolines.csv", "isolines-groups.csv", "isolines",
                       "Infiltration: Dice at concentration isolines",
                       "The segmentation (trained on the visible abnormality) against the true region c > "
                     "isoline of the tumour concentration the generator grew: Dice 2|P∩T|/(|P|+|T|) and relative volume "
                     "error (|P| - |T|)/|T|. Low isolines are the infiltration beyond the visible border; a reconstructor "
                     "that lowers Dice there more than at the core hides infiltration.",
                       "Isoline Dice and volume error")
    _add_table_section(secs, tables_dir, reg_table, reg_full, "regression.csv", "regression-bootstrap.csv",
                       "regression",
                       "Regression of phenotypes",
                       "MAE = mean |ŷ - y|, RMSE = sqrt(mean (ŷ - y)²), R² = 1 - SS_res/SS_tot, on clean "
                     "images (the clean model) and on the processed input; the MAE gap is the largest minus the smallest "
                     "group MAE (clean -> processed) and its change; patient-level paired bootstrap 95% intervals.",
                       "Regression per target")
    _add_table_section(secs, tables_dir, *_growth(df, seed), "growth.csv", "growth-bootstrap.csv", "growth",
                       "Measured growth over time",
                       "Per series (a subject's slice at its first and last time point) the measured growth "
                     "is the change in segmented area (mm²), the truth the change in the true mask's area; the table gives "
                     "the MAE of measured against true growth on clean images and on the processed input, its change and "
                     "the group gap of that error.",
                       "Growth error per method")
    return secs


def _add_table_section(secs: list, tables_dir, table, full, csv_name: str, full_name: str, sec_id: str, title: str,
                       definition: str, caption: str) -> None:
    """Append a one-table section (and write its table and full bootstrap CSVs) when ``table`` has rows."""
    if table.empty:
        return
    table.to_csv(tables_dir / csv_name, index=False)
    full.to_csv(tables_dir / full_name, index=False)
    secs.append({"id": sec_id, "title": title, "empty": "", "definition": definition, "figures": [],
                 "tables": [(caption, table)]})
