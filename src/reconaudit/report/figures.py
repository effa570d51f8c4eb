"""The report's figures (matplotlib, Agg backend), each written as PNG and PDF.

1. task performance and PSNR against the degradation level, one line per reconstructor, with the
   clean-image baseline (the study's central figure);
2. the distribution of bias change (fairness metric on reconstructions minus on clean images)
   by group attribute;
3. fairness gaps with and without mitigation, and the trade-off of the mitigation strength
   :math:`\\lambda` (only when the run has mitigated cells);
4. example studies: clean, degraded, reconstructions, error maps, segmentation or saliency
   overlays, uncertainty of stochastic reconstructors (studies shown by anonymous index only);
5. per-group ROC curves on clean versus reconstructed images;
6. training curves: loss per epoch of every trained model (reconstructors and diagnostic models),
   from the histories in ``run.json`` (:func:`training_curves`).

Colours follow the Okabe-Ito palette (colour-blind safe), assigned to reconstructor names in
sorted order so any set of names works; line styles and markers repeat the distinction.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from sklearn.metrics import auc, roc_curve  # noqa: E402

from ..engine.records import BULK_PREFIXES, Records  # noqa: E402
from .analysis import MEAN_LABEL, METRIC_NAMES, Analysis, level_text  # noqa: E402

logger = logging.getLogger(__name__)

__all__ = ["Figure", "make_figures", "render_figures", "training_curves", "OKABE_ITO"]

#: Okabe-Ito colour-blind safe palette (yellow last: weak on white).
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_DIRECT = "direct"
_RC = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "figure.dpi": 100, "savefig.dpi": 130,
    "axes.spines.top": False, "axes.spines.right": False, "pdf.fonttype": 42,
}


@dataclass
class Figure:
    """One written figure: its files, a title and a caption saying how to read it."""

    key: str
    png: Path
    pdf: Path
    title: str
    caption: str


def _t(text: object) -> str:
    """User text for matplotlib: dollar signs would start mathtext, so escape them."""
    return str(text).replace("$", r"\$")


def _slug(text: str, i: int) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", str(text)).strip("-").lower()[:40]
    return f"{i}-{s}" if s else str(i)


class _Styles:
    """Colour / marker / line style per reconstructor name, stable across figures."""

    def __init__(self, names: list[str]):
        ordered = sorted({str(n) for n in names if str(n) != _DIRECT})
        self.style = {}
        for i, n in enumerate(ordered):
            self.style[n] = dict(color=OKABE_ITO[i % 7], marker=_MARKERS[i % len(_MARKERS)],
                                 linestyle="-" if i < 7 else "--")
        self.style[_DIRECT] = dict(color="#555555", marker="X", linestyle=":")

    def __call__(self, name: str) -> dict:
        return self.style.get(str(name), dict(color="#999999", marker="o", linestyle="-"))


def _save(fig: plt.Figure, out_dir: Path, stem: str) -> tuple[Path, Path]:
    png, pdf = out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"
    fig.savefig(png)
    fig.savefig(pdf, metadata={"CreationDate": None})  # no time stamp: the same report gives the same bytes
    plt.close(fig)
    return png, pdf


def _main_seed(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of the smallest training seed of each cohort (the seed every configuration has)."""
    if df.empty:
        return df
    m = df.groupby("cohort")["seed"].transform("min")
    return df[df["seed"] == m]


# --------------------------------------------------------------------------------------------
# 1. task performance and image quality against the level


def _fig_performance(a: Analysis, styles: _Styles, out_dir: Path) -> Figure | None:
    cohorts = list(a.cohorts)
    if not cohorts:
        return None
    task = _main_seed(a.task[a.task["mitigation"] == "none"])
    cells = _main_seed(a.cells[a.cells["mitigation"] == "none"])
    qual = "psnr" if cells["psnr"].notna().any() or cells["input_psnr"].notna().any() else "ssim"
    fig, axes = plt.subplots(len(cohorts), 2, figsize=(9.5, 3.1 * len(cohorts) + 0.4), squeeze=False)
    handles: dict[str, Line2D] = {}
    for row, cohort in enumerate(cohorts):
        info = a.cohorts[cohort]
        levels = info["levels"]
        xpos = {lv: i for i, lv in enumerate(levels)}
        metric, label = info["primary"]
        t = task[(task["cohort"] == cohort) & (task["metric"] == metric) & (task["label"] == label)]
        c = cells[cells["cohort"] == cohort]
        ax_t, ax_q = axes[row]
        for rec, d in t.groupby("reconstructor"):
            d = d.sort_values("level", key=lambda s: s.map(xpos))
            st = styles(rec)
            x = d["level"].map(xpos).to_numpy(float)
            y = d["recon"].to_numpy(float)
            err = np.vstack([y - d["recon_ci_low"].to_numpy(float), d["recon_ci_high"].to_numpy(float) - y])
            h = ax_t.errorbar(x, y, yerr=np.nan_to_num(np.abs(err)), capsize=2.5, lw=1.6, ms=5,
                              label=_t(rec), **st)
            name = "degraded input (direct, no reconstruction)" if rec == _DIRECT else str(rec)
            handles.setdefault(name, h.lines[0])
        if not t.empty:
            cl = t.iloc[0]
            ax_t.axhline(cl["clean"], color="#222222", lw=1.1, ls="--", zorder=0)
            ax_t.axhspan(cl["clean_ci_low"], cl["clean_ci_high"], color="#bbbbbb", alpha=0.35, lw=0, zorder=0)
            handles.setdefault("clean images", Line2D([], [], color="#222222", ls="--", lw=1.1))
        mname = "mean AUROC over labels" if label == MEAN_LABEL else METRIC_NAMES.get(metric, metric)
        ax_t.set_ylabel(mname)
        lo = 0.5 if metric == "auroc" else 0.0
        ymin = np.nanmin(np.r_[t["recon_ci_low"].to_numpy(float), lo]) if not t.empty else lo
        ax_t.set_ylim(min(lo, ymin - 0.02), 1.0)
        for rec, d in c[c["arm"] != "direct"].groupby("reconstructor"):
            d = d.sort_values("level", key=lambda s: s.map(xpos))
            st = styles(rec)
            x = d["level"].map(xpos).to_numpy(float)
            y = d[qual].to_numpy(float)
            err = np.vstack([y - d[f"{qual}_ci_low"].to_numpy(float), d[f"{qual}_ci_high"].to_numpy(float) - y])
            ax_q.errorbar(x, y, yerr=np.nan_to_num(np.abs(err)), capsize=2.5, lw=1.6, ms=5, **st)
        inp = c.groupby("level")[f"input_{qual}"].mean()
        if inp.notna().any():
            xs = [xpos[lv] for lv in inp.index if lv in xpos]
            ax_q.plot(xs, [inp[lv] for lv in inp.index if lv in xpos], lw=1.4, **styles(_DIRECT))
        ax_q.set_ylabel(METRIC_NAMES[qual])
        for ax in (ax_t, ax_q):
            ax.set_xticks(range(len(levels)), [f"{lv:g}" for lv in levels])
            ax.set_xlim(-0.3, len(levels) - 0.7)
            ax.set_xlabel(f"{_t(info['level_name'] or 'level')} (more severe to the right)")
            ax.grid(axis="y", color="#e5e5e5", lw=0.6)
        ax_t.set_title(f"{_t(cohort)}: task performance", loc="left")
        ax_q.set_title(f"{_t(cohort)}: image quality", loc="left")
    # the same image-quality range in every row, so cohorts compare at a glance
    ql = [ax.get_ylim() for ax in axes[:, 1]]
    for ax in axes[:, 1]:
        ax.set_ylim(min(q[0] for q in ql), max(q[1] for q in ql))
    handles.setdefault("degraded input (direct, no reconstruction)", Line2D([], [], **styles(_DIRECT)))
    handles = {k: handles[k] for k in sorted(handles, key=lambda k: (k.startswith(("clean", "degraded")), k))}
    ncol = min(4, len(handles))
    fig.legend(list(handles.values()), [_t(k) for k in handles], loc="lower center", ncol=ncol, frameon=False)
    fig.tight_layout(rect=(0, 0.035 * int(np.ceil(len(handles) / ncol)) / max(1, len(cohorts)) * 2, 1, 1))
    png, pdf = _save(fig, out_dir, "fig1_performance_vs_level")
    return Figure(
        "performance", png, pdf, "Task performance and image quality against the degradation level",
        "Each row is a cohort. Left: task performance on the processed images (mean AUROC over labels for "
        "classification, mean Dice for segmentation) for each reconstructor and for diagnosing the degraded input "
        "directly; the dashed horizontal line and grey band are the performance on clean images with its 95% "
        "bootstrap interval. Right: PSNR of each reconstruction against the clean image, and of the degraded "
        "input itself (dotted). Severity grows to the right; error bars are patient-level 95% bootstrap "
        "intervals; unmitigated reconstructors, first training seed. A reconstructor whose PSNR rises while "
        "its task line falls away from the clean baseline is improving the picture, not the diagnosis.",
    )


# --------------------------------------------------------------------------------------------
# 2. bias change distribution


def _fig_bias_change(a: Analysis, styles: _Styles, out_dir: Path) -> Figure | None:
    f = a.fairness[(a.fairness["mitigation"] == "none") & a.fairness["change"].notna()]
    if f.empty:
        return None
    metrics = [m for m in METRIC_NAMES if m in set(f["metric"])]
    ncol = min(4, len(metrics))
    nrow = int(np.ceil(len(metrics) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.6 * ncol + 0.6, 2.8 * nrow + 0.5), squeeze=False)
    rng = np.random.default_rng(0)
    recs = sorted(f["reconstructor"].astype(str).unique())
    for k, metric in enumerate(metrics):
        ax = axes[k // ncol, k % ncol]
        d = f[f["metric"] == metric]
        attrs = sorted(d["attribute"].astype(str).unique())
        data = [d.loc[d["attribute"] == at, "change"].to_numpy(float) for at in attrs]
        ax.boxplot(data, positions=range(len(attrs)), widths=0.55, showfliers=False,
                   medianprops=dict(color="#222222"), boxprops=dict(color="#777777"),
                   whiskerprops=dict(color="#777777"), capprops=dict(color="#777777"))
        for i, at in enumerate(attrs):
            dd = d[d["attribute"] == at]
            for rec, g in dd.groupby("reconstructor"):
                st = styles(rec)
                x = i + rng.uniform(-0.2, 0.2, len(g))
                sig = g["significant"].to_numpy(bool)
                ax.scatter(x[~sig], g["change"].to_numpy(float)[~sig], s=14, color=st["color"], marker=st["marker"],
                           alpha=0.75, lw=0)
                ax.scatter(x[sig], g["change"].to_numpy(float)[sig], s=30, facecolor=st["color"],
                           marker=st["marker"], edgecolor="black", lw=0.8)
        ax.axhline(0, color="#222222", lw=0.8)
        ax.set_xticks(range(len(attrs)), [_t(x) for x in attrs])
        ax.set_title(METRIC_NAMES[metric], loc="left")
        ax.set_ylabel("change (recon − clean)" if k % ncol == 0 else "")
        ax.grid(axis="y", color="#e5e5e5", lw=0.6)
    for k in range(len(metrics), nrow * ncol):
        axes[k // ncol, k % ncol].axis("off")
    handles = [Line2D([], [], ls="", marker=styles(r)["marker"], color=styles(r)["color"], label=_t(r)) for r in recs]
    handles.append(Line2D([], [], ls="", marker="o", markerfacecolor="white", markeredgecolor="black",
                          label="significant (corrected)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    png, pdf = _save(fig, out_dir, "fig2_bias_change")
    return Figure(
        "bias_change", png, pdf, "Bias change by group attribute",
        "Each point is the change of one fairness metric from clean to processed images (recon − clean) for one "
        "cell (cohort, level, reconstructor) and label, grouped by the group attribute; boxes show the quartiles "
        "and median over points. For the gap metrics (equalized-odds, equal-opportunity, demographic-parity "
        "differences, AUROC and Dice gaps, skewed error ratio) a point above zero means the reconstruction "
        "widened the disparity; for worst-group AUROC/Dice a point below zero means the worst-off group lost. "
        "Outlined points are significant after the multiple-comparison correction. Unmitigated cells only.",
    )


# --------------------------------------------------------------------------------------------
# 3. mitigation


def _variant(row: pd.Series) -> str:
    if row["mitigation"] == "none":
        return "no mitigation"
    lam = row["mitigation_strength"]
    return f"{row['mitigation']}" + ("" if not np.isfinite(lam) else f" (λ={lam:g})")


def _mitigation_frames(a: Analysis) -> list[tuple[str, str, pd.DataFrame]]:
    """(cohort, metric, rows) of the mitigated configurations and their unmitigated counterparts."""
    out = []
    f = a.fairness
    mit = f[f["mitigation"] != "none"]
    for cohort in a.cohorts:
        m = mit[mit["cohort"] == cohort]
        if m.empty:
            continue
        metric = "equalized_odds_difference" if a.cohorts[cohort]["task"] == "classification" else "dice_gap"
        m = m[m["metric"] == metric]
        keys = m[["reconstructor", "level", "seed", "degradation"]].drop_duplicates()
        base = f[(f["cohort"] == cohort) & (f["mitigation"] == "none") & (f["metric"] == metric)].merge(
            keys, on=["reconstructor", "level", "seed", "degradation"])
        out.append((cohort, metric, pd.concat([base, m], ignore_index=True)))
    return out


def _fig_mitigation(a: Analysis, out_dir: Path) -> list[Figure]:
    frames = _mitigation_frames(a)
    if not frames:
        return []
    figs = []
    ncol = max(len(a.cohorts[c]["group_attributes"]) for c, _, _ in frames)
    fig, axes = plt.subplots(len(frames), ncol, figsize=(3.4 * ncol + 0.6, 3.0 * len(frames) + 0.6),
                             squeeze=False)
    legend: dict[str, object] = {}
    for row, (cohort, metric, d) in enumerate(frames):
        d = _main_seed(d).copy()
        d["variant"] = d.apply(_variant, axis=1)
        order = ["no mitigation"] + sorted(v for v in d["variant"].unique() if v != "no mitigation")
        level = d["level"].iloc[0]
        rec = d["reconstructor"].iloc[0]
        d = d[(d["level"] == level) & (d["reconstructor"] == rec)]
        labels = list(d["label"].unique())
        attrs = a.cohorts[cohort]["group_attributes"]
        for k in range(len(attrs), ncol):
            axes[row, k].axis("off")
        for k, attr in enumerate(attrs):
            ax = axes[row, k]
            da = d[d["attribute"] == attr]
            bars = ["clean images", *order]
            width = 0.8 / len(bars)
            for j, bar in enumerate(bars):
                xs, ys, lo, hi = [], [], [], []
                for i, lab in enumerate(labels):
                    r = da[(da["label"] == lab) & (da["variant"] == (bar if bar != "clean images" else "no mitigation"))]
                    if r.empty:
                        continue
                    r = r.iloc[0]
                    col = "clean" if bar == "clean images" else "recon"
                    xs.append(i + (j - (len(bars) - 1) / 2) * width)
                    ys.append(r[col])
                    lo.append(r[col] - r[f"{col}_ci_low"])
                    hi.append(r[f"{col}_ci_high"] - r[col])
                if not xs:
                    continue
                color = "#BBBBBB" if j == 0 else OKABE_ITO[(j - 1) % 7]
                h = ax.bar(xs, ys, width=width * 0.92, color=color,
                           yerr=np.nan_to_num(np.abs(np.vstack([lo, hi]))), capsize=2,
                           error_kw=dict(lw=0.8, ecolor="#333333"))
                legend.setdefault(bar, h)
            ax.set_xticks(range(len(labels)), [_t(x) if x else "all studies" for x in labels],
                          rotation=30, ha="right", rotation_mode="anchor")
            ax.set_title(_t(f"{cohort}: {attr}"), loc="left")
            ax.set_ylabel(METRIC_NAMES[metric] if k == 0 else "")
            ax.grid(axis="y", color="#e5e5e5", lw=0.6)
            ax.set_ylim(bottom=0)
        axes[row, 0].annotate(_t(f"{rec} at {level_text(level, a.cohorts[cohort]['level_name'])}"),
                              (0, 1.13), xycoords="axes fraction", fontsize=8, color="#555555")
    fig.legend(list(legend.values()), [_t(k) for k in legend], loc="lower center",
               ncol=min(5, len(legend)), frameon=False)
    fig.tight_layout(rect=(0, 0.06 * (1 + (len(legend) > 5)) / len(frames) * 1.5, 1, 1))
    png, pdf = _save(fig, out_dir, "fig3_mitigation")
    figs.append(Figure(
        "mitigation", png, pdf, "Fairness gap with and without mitigation",
        "The fairness gap (equalized-odds difference per label for classification, Dice gap for segmentation) "
        "across each group attribute: on clean images (grey), after the reconstructor trained without "
        "mitigation, and after each mitigated training (strength λ where the method has one), at the level "
        "where mitigation was run. Lower is fairer. Error bars: patient-level 95% bootstrap intervals.",
    ))
    sweep = _fig_lambda_sweep(a, frames, out_dir)
    if sweep is not None:
        figs.append(sweep)
    return figs


def _fig_lambda_sweep(a: Analysis, frames, out_dir: Path) -> Figure | None:
    panels = []
    for cohort, metric, d in frames:
        d = _main_seed(d)
        for mit, dm in d[d["mitigation"] != "none"].groupby("mitigation"):
            lams = dm["mitigation_strength"].dropna().unique()
            if len(lams) >= 2:
                panels.append((cohort, metric, mit, d, dm))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    task = a.task
    for ax, (cohort, metric, mit, d, dm) in zip(axes[0], panels):
        pm, plabel = a.cohorts[cohort]["primary"]
        rec, level = dm["reconstructor"].iloc[0], dm["level"].iloc[0]
        perf = task[(task["cohort"] == cohort) & (task["metric"] == pm) & (task["label"] == plabel)
                    & (task["reconstructor"] == rec) & (task["level"] == level)]
        perf = _main_seed(perf)
        for i, attr in enumerate(a.cohorts[cohort]["group_attributes"]):
            pts = []
            base = d[(d["mitigation"] == "none") & (d["attribute"] == attr) & (d["reconstructor"] == rec)
                     & (d["level"] == level)]
            bp = perf[perf["mitigation"] == "none"]
            if not base.empty and not bp.empty:
                pts.append((np.nan, bp["recon"].iloc[0], base["recon"].mean()))
            for lam in sorted(dm["mitigation_strength"].dropna().unique()):
                r = dm[(dm["attribute"] == attr) & (dm["mitigation_strength"] == lam)]
                p = perf[(perf["mitigation"] == mit) & (perf["mitigation_strength"] == lam)]
                if not r.empty and not p.empty:
                    pts.append((lam, p["recon"].iloc[0], r["recon"].mean()))
            if not pts:
                continue
            color = OKABE_ITO[i % 7]
            xs = [p[1] for p in pts]
            ys = [p[2] for p in pts]
            ax.plot(xs, ys, color=color, marker=_MARKERS[i], lw=1.3, label=_t(attr))
            for lam, x, y in pts:
                txt = "none" if not np.isfinite(lam) else f"log₁₀λ={np.log10(lam):.1f}" if lam > 0 else "λ=0"
                ax.annotate(txt, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
        ax.set_xlabel(("mean AUROC" if plabel == MEAN_LABEL else METRIC_NAMES[pm]) + " (higher is better)")
        ax.set_ylabel(METRIC_NAMES[metric] + (" (mean over labels)" if plabel == MEAN_LABEL else "")
                      + "\n(lower is fairer)")
        ax.set_title(_t(f"{cohort}: {mit}, {rec}"), loc="left")
        ax.grid(color="#e5e5e5", lw=0.6)
        ax.legend(frameon=False, title="attribute")
    fig.tight_layout()
    png, pdf = _save(fig, out_dir, "fig3b_lambda_sweep")
    return Figure(
        "lambda_sweep", png, pdf, "Mitigation strength: fairness against task performance",
        "One point per mitigation strength λ (annotated with log10 λ; 'none' is the same reconstructor trained "
        "without mitigation), one line per group attribute. Moving down means a smaller fairness gap, moving "
        "right means better task performance; the best trade-offs lie towards the lower right.",
    )


# --------------------------------------------------------------------------------------------
# 4. example studies


def _load_examples(run_dir: Path, meta: dict, cohort: str, level: float) -> list[tuple[dict, dict]]:
    out = []
    cells = [c for c in meta.get("cells", []) if c.get("cohort") == cohort and c.get("examples")
             and c.get("mitigation", "none") == "none"]
    seeds = [int(c.get("seed", 0)) for c in cells]
    for c in cells:
        if c.get("level") is None or not np.isclose(float(c["level"]), level) or int(c.get("seed", 0)) != min(seeds):
            continue
        path = (run_dir / c["examples"]).resolve()
        if not path.is_relative_to(run_dir.resolve()) or not path.exists():
            logger.warning("examples file %s of cell %s is missing or outside the run; skipped", c["examples"],
                           c.get("cell_id"))
            continue
        with np.load(path, allow_pickle=False) as z:
            out.append((c, {k: z[k] for k in z.files}))
    return out


def _overlay(ax, img: np.ndarray, seg: np.ndarray | None, sal: np.ndarray | None) -> None:
    ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    if sal is not None:
        ax.imshow(np.clip(sal, 0, 1), cmap="inferno", alpha=0.45, vmin=0, vmax=1, interpolation="nearest")
    if seg is not None and np.any(seg):
        ax.contour(seg.astype(float), levels=[0.5], colors=["#56B4E9"], linewidths=1.0)


def _fig_examples(a: Analysis, meta: dict, run_dir: Path, out_dir: Path) -> list[Figure]:
    figs = []
    for ci, (cohort, info) in enumerate(a.cohorts.items()):
        level = info["levels"][-1]
        ex = _load_examples(run_dir, meta, cohort, level)
        recs = sorted([(c, z) for c, z in ex if c.get("arm") != "direct"], key=lambda t: str(t[0]["reconstructor"]))
        direct = [(c, z) for c, z in ex if c.get("arm") == "direct"]
        if not recs and not direct:
            continue
        ref = (recs or direct)[0][1]
        seg_task = "seg_true" in ref
        stochastic = any("uncertainty" in z for _, z in recs)
        idx_common = set(ref["study_index"].tolist())
        for _, z in ex:
            idx_common &= set(z["study_index"].tolist())
        studies = sorted(idx_common)[:2]
        if not studies:
            continue
        ncol = 2 + len(recs)
        kinds = ["image", "error", "overlay"] + (["uncertainty"] if stochastic else [])
        nrow = len(kinds) * len(studies)
        fig, axes = plt.subplots(nrow, ncol, figsize=(1.55 * ncol + 0.9, 1.6 * nrow + 0.3), squeeze=False)
        err_max = 0.0
        for si in studies:
            k = int(np.flatnonzero(ref["study_index"] == si)[0])
            err_max = max(err_max, float(np.abs(ref["degraded"][k] - ref["clean"][k]).max()))
        err_max = max(err_max, 1e-6)
        unc_max = max([float(z["uncertainty"].max()) for _, z in recs if "uncertainty" in z] + [1e-6])
        err_im = unc_im = None
        for s_i, si in enumerate(studies):
            def pick(z, key, si=si):
                if key not in z:
                    return None
                return z[key][int(np.flatnonzero(z["study_index"] == si)[0])]
            clean = pick(ref, "clean")
            cols = [("clean", clean, pick(ref, "seg_clean" if seg_task else "saliency_clean"), None),
                    ("degraded", pick(ref, "degraded"),
                     pick(direct[0][1], "seg_recon" if seg_task else "saliency_recon") if direct else None, None)]
            for c, z in recs:
                cols.append((str(c["reconstructor"]), pick(z, "recon"),
                             pick(z, "seg_recon" if seg_task else "saliency_recon"), pick(z, "uncertainty")))
            for r_i, kind in enumerate(kinds):
                row = s_i * len(kinds) + r_i
                for j, (name, img, ov, unc) in enumerate(cols):
                    ax = axes[row, j]
                    ax.set_xticks([])
                    ax.set_yticks([])
                    for sp in ax.spines.values():
                        sp.set_visible(False)
                    if kind == "image":
                        ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                        if s_i == 0:
                            ax.set_title(_t(name), fontsize=8)
                    elif kind == "error":
                        if j == 0:
                            ax.text(0.5, 0.5, "reference", ha="center", va="center", fontsize=7, color="#777777",
                                    transform=ax.transAxes)
                        else:
                            err_im = ax.imshow(np.abs(img - clean), cmap="magma", vmin=0, vmax=err_max,
                                               interpolation="nearest")
                    elif kind == "overlay":
                        if ov is None and not (seg_task and j == 0):
                            ax.text(0.5, 0.5, "n/a", ha="center", va="center", fontsize=7, color="#777777",
                                    transform=ax.transAxes)
                        else:
                            _overlay(ax, img, ov if seg_task else None, None if seg_task else ov)
                            if seg_task and j == 0 and pick(ref, "seg_true") is not None:
                                ax.contour(pick(ref, "seg_true").astype(float), levels=[0.5], colors=["#E69F00"],
                                           linewidths=0.8, linestyles="dashed")
                    elif kind == "uncertainty":
                        if unc is None:
                            ax.text(0.5, 0.5, "deterministic" if j >= 2 else "", ha="center", va="center",
                                    fontsize=7, color="#777777", transform=ax.transAxes)
                        else:
                            unc_im = ax.imshow(unc, cmap="viridis", vmin=0, vmax=unc_max, interpolation="nearest")
                    if j == 0:
                        what = {"image": "image", "error": "|error|",
                                "overlay": "segmentation" if seg_task else "saliency",
                                "uncertainty": "uncertainty (std)"}[kind]
                        ax.set_ylabel(f"study #{int(si)}\n{what}", fontsize=7)
        fig.suptitle(_t(f"{cohort} at {level_text(level, info['level_name'])}"), x=0.01, ha="left", fontsize=10)
        fig.tight_layout(rect=(0, 0, 0.9, 0.97))
        if err_im is not None:
            cax = fig.add_axes((0.915, 0.55, 0.012, 0.3))
            fig.colorbar(err_im, cax=cax).set_label("|error|", fontsize=7)
        if unc_im is not None:
            cax = fig.add_axes((0.915, 0.12, 0.012, 0.3))
            fig.colorbar(unc_im, cax=cax).set_label("std", fontsize=7)
        png, pdf = _save(fig, out_dir, f"fig4_examples_{_slug(cohort, ci)}")
        overlay = ("the segmenter's mask (blue contour; on the clean image the reference mask is dashed orange)"
                   if seg_task else "the classifier's Grad-CAM saliency (warm colours = more attention)")
        figs.append(Figure(
            f"examples_{ci}", png, pdf, f"Example studies: {cohort}",
            f"Studies of cohort {cohort} (shown by anonymous test index only) at the most severe level. Columns: "
            "the clean image, the degraded input, and each reconstructor's output. Rows per study: the image; the "
            "absolute error against the clean image (one colour scale for the figure); " + overlay +
            " on each image" + ("; and, for stochastic reconstructors, the pixel-wise standard deviation across "
                                "samples" if stochastic else "") + ".",
        ))
    return figs


# --------------------------------------------------------------------------------------------
# 5. per-group ROC curves


def _group_counts(records: Records, attrs: list[str]) -> dict[str, int]:
    """Distinct non-missing values of each ``group:<attr>`` column over every record row."""
    seen: dict[str, set] = {a: set() for a in attrs}
    for part in records.scan([f"group:{a}" for a in attrs]):
        for a in attrs:
            seen[a] |= set(part[f"group:{a}"].dropna().unique().tolist())
    return {a: len(v) for a, v in seen.items()}


def _fig_roc(a: Analysis, records: Records, out_dir: Path) -> list[Figure]:
    figs = []
    for ci, (cohort, info) in enumerate(a.cohorts.items()):
        if info["task"] != "classification" or not info["labels"] or not info["group_attributes"]:
            continue
        level = info["levels"][-1]
        cells = _main_seed(a.cells[(a.cells["cohort"] == cohort) & (a.cells["mitigation"] == "none")
                                   & (a.cells["arm"] == "reconstruct") & (a.cells["level"] == level)])
        if cells.empty:
            continue
        best = cells.sort_values("psnr", ascending=False).iloc[0]
        rows = records.cell(best["cell_id"], exclude=BULK_PREFIXES)
        labels, attrs = info["labels"][:4], info["group_attributes"][:3]
        n_groups = max(_group_counts(records, attrs).values())
        fig, axes = plt.subplots(len(labels), len(attrs),
                                 figsize=(3.4 * len(attrs) + 0.4, (3.0 + 0.2 * n_groups) * len(labels)),
                                 squeeze=False)
        for i, lab in enumerate(labels):
            keep = rows[f"target:{lab}"].notna()
            r = rows[keep]
            y = r[f"target:{lab}"].to_numpy(int)
            for j, attr in enumerate(attrs):
                ax = axes[i, j]
                g = r[f"group:{attr}"].astype(str).to_numpy()
                for k, grp in enumerate(sorted(set(g))):
                    m = g == grp
                    if y[m].min(initial=1) == y[m].max(initial=0):
                        continue
                    color = OKABE_ITO[k % 7]
                    areas = []
                    for arm, col, ls in (("clean", f"clean_score:{lab}", "--"), ("recon", f"score:{lab}", "-")):
                        fpr, tpr, _ = roc_curve(y[m], r[col].to_numpy(float)[m])
                        areas.append(auc(fpr, tpr))
                        ax.plot(fpr, tpr, color=color, ls=ls, lw=1.5 if arm == "recon" else 1.0,
                                label=_t(f"{grp}: {areas[0]:.2f} → {areas[1]:.2f}") if arm == "recon" else None)
                ax.plot([0, 1], [0, 1], color="#cccccc", lw=0.7)
                ax.set_xlim(0, 1)
                ax.set_ylim(0, 1.01)
                ax.set_aspect("equal")
                ax.set_title(_t(f"{lab} by {attr}"), loc="left")
                ax.set_xlabel("1 − specificity")
                ax.set_ylabel("sensitivity")
                ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(0.0, -0.2), title="AUROC clean → recon",
                          fontsize=7, title_fontsize=7, alignment="left")
        fig.text(0.01, 0.005, "solid: reconstructed images   dashed: clean images", fontsize=8, color="#444444")
        fig.suptitle(_t(f"{cohort}: {best['reconstructor']} at {level_text(level, info['level_name'])}"),
                     x=0.01, ha="left", fontsize=10)
        fig.tight_layout(rect=(0, 0.02, 1, 0.98))
        # the per-panel legends sit below the axes, outside what tight_layout accounts for
        fig.subplots_adjust(hspace=0.5 + 0.05 * n_groups)
        png, pdf = _save(fig, out_dir, f"fig5_roc_{_slug(cohort, ci)}")
        figs.append(Figure(
            f"roc_{ci}", png, pdf, f"ROC curves per group: {cohort}",
            f"ROC curves of each label (rows) within each group (colours) of each attribute (columns), on the clean "
            f"images (dashed) and on the reconstructions of {best['reconstructor']} (solid, the reconstructor "
            "with the highest PSNR at the most severe level). A solid curve falling below its dashed twin means "
            "the reconstruction cost that group discrimination; curves of different groups drifting apart mean "
            "the reconstruction opened a gap.",
        ))
    return figs


# --------------------------------------------------------------------------------------------
# 6. training curves


def training_curves(meta: dict) -> pd.DataFrame:
    """The loss per epoch of every trained model in ``meta["training"]`` as a tidy table.

    Columns: ``panel`` (the model: ``"reconstructor: unet"``, ``"diagnostic model: segmentation"``),
    ``series`` (cohort, level, mitigation and seed), ``split`` (``"train"``/``"val"``), ``epoch``
    (1-based) and ``loss``, exactly the values saved by each model's ``fit``; figure 6 plots these rows.
    """
    rows = []
    for h in meta.get("training") or []:
        panel = f"{h['kind']}: {h['model']}"
        parts = [str(h["cohort"])]
        if h.get("level") is not None:
            parts.append(f"{h['level']:g}")
        if h.get("mitigation", "none") != "none":
            parts.append(str(h["mitigation"]))
        parts.append(f"seed {h['seed']}")
        series = ", ".join(parts)
        for split in ("train", "val"):
            for e, v in enumerate(h.get(f"{split}_loss") or [], start=1):
                rows.append({"panel": panel, "series": series, "split": split, "epoch": e,
                             "loss": np.nan if v is None else float(v)})
    return pd.DataFrame(rows, columns=["panel", "series", "split", "epoch", "loss"])


def _fig_training(meta: dict, out_dir: Path) -> Figure | None:
    curves = training_curves(meta)
    if curves.empty:
        return None
    curves.to_csv(out_dir / "training_curves.csv", index=False)
    panels = list(dict.fromkeys(curves["panel"]))
    ncol = min(3, len(panels))
    nrow = int(np.ceil(len(panels) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.0 * ncol, 3.0 * nrow), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        c = curves[curves["panel"] == panel]
        for i, series in enumerate(dict.fromkeys(c["series"])):
            colour = OKABE_ITO[i % 7]
            for split, ls in (("train", "--"), ("val", "-")):
                d = c[(c["series"] == series) & (c["split"] == split)]
                if not d.empty:
                    ax.plot(d["epoch"], d["loss"], linestyle=ls, color=colour, marker=".",
                            label=_t(series) if split == "val" else None)
        if (c["loss"].dropna() > 0).all() and c["loss"].notna().any():
            ax.set_yscale("log")
        ax.set_title(_t(panel))
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend(fontsize=6, loc="upper right", frameon=False)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    png, pdf = _save(fig, out_dir, "training_curves")
    return Figure("training", png, pdf, "Training curves",
                  "Loss per epoch of every trained model: solid lines the validation loss (the one early stopping "
                  "watches), dashed the training loss, one colour per cohort and level. A curve still falling at "
                  "its last epoch means the model was stopped before it converged. Losses are each model's own "
                  "(pix2pix: generator loss in training, L1 in validation; diagnostic models: their task loss), so "
                  "compare shapes, not heights, across panels. Values: figures/training_curves.csv.")


# --------------------------------------------------------------------------------------------


def render_figures(records: Records | pd.DataFrame, meta: dict, analysis: Analysis, run_dir: Path | str,
                   out_dir: Path | str) -> list[Figure]:
    """Draw every figure the run supports; return them with titles and captions.

    Parameters
    ----------
    records : Records or pandas.DataFrame
        The records (only figure 5 reads study rows: one cell's scores, targets, groups).
    meta : dict
        ``run.json`` (cells with their ``examples`` files).
    analysis : Analysis
        The result of :func:`reconaudit.report.analysis.analyse` on the same records.
    run_dir : path
        The run directory (``examples/*.npz`` are read from it).
    out_dir : path
        Where PNG and PDF files are written (created if needed).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_dir = Path(run_dir)
    styles = _Styles(analysis.cells["reconstructor"].astype(str).unique().tolist())
    figs: list[Figure] = []
    with plt.rc_context(_RC):
        for fn in (lambda: _fig_performance(analysis, styles, out), lambda: _fig_bias_change(analysis, styles, out)):
            f = fn()
            if f is not None:
                figs.append(f)
        figs += _fig_mitigation(analysis, out)
        figs += _fig_examples(analysis, meta, run_dir, out)
        figs += _fig_roc(analysis, Records.of(records), out)
        f = _fig_training(meta, out)
        if f is not None:
            figs.append(f)
    return figs


def make_figures(records: pd.DataFrame, meta: dict, analysis: Analysis, run_dir: Path | str,
                 out_dir: Path | str) -> list[Path]:
    """Draw every figure the run supports into ``out_dir``; return the PNG and PDF paths.

    See :func:`render_figures` for the parameters.
    """
    paths: list[Path] = []
    for f in render_figures(records, meta, analysis, run_dir, out_dir):
        paths += [f.png, f.pdf]
    return paths
