"""The report's generative-trust section: region-aware quality, hallucination, fidelity vs perception.

Reads the records' ``region_*`` and ``gen_*`` columns (docs/records.md) and the task scores;
every statistic comes from :mod:`reconaudit.metrics` (``group_mean_summary`` for the
patient-level bootstrap intervals and group gaps, ``record_flips`` for hallucinated / erased
findings, ``spread_error_correlation``, ``auroc``); this module arranges and draws.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from reconaudit.metrics import (  # noqa: E402
    auroc,
    group_mean_summary,
    record_flips,
    record_sample_spread,
    spread_error_correlation,
)

from ..engine.records import Records  # noqa: E402
from .figures import _MARKERS, _RC, OKABE_ITO, Figure, _save  # noqa: E402

logger = logging.getLogger(__name__)

__all__ = ["GenerativeSection", "generative_section"]

_CELL = ["cohort", "degradation", "level", "reconstructor", "arm", "mitigation", "mitigation_strength"]
_ALL = "(all)"


@dataclass
class GenerativeSection:
    """Tables (one DataFrame per cohort, already formatted as text) and figures of the section."""

    region: dict[str, pd.DataFrame] = field(default_factory=dict)
    hallucination: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    groups: list[pd.DataFrame] = field(default_factory=list)
    """Every per-group mean, interval and gap behind the tables (written as ``generative-groups.csv``)."""

    @property
    def empty(self) -> bool:
        """True when the records carry none of the section's columns."""
        return not (self.region or self.hallucination or self.figures)


def _fmt(v: float, lo: float | None = None, hi: float | None = None, digits: int = 3) -> str:
    if v is None or not np.isfinite(v):
        return "n/a"
    s = f"{v:.{digits}g}"
    if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi):
        s += f" [{lo:.{digits}g}, {hi:.{digits}g}]"
    return s


def _main_rows(records: pd.DataFrame) -> pd.DataFrame:
    """Rows of the smallest training seed (the seed every configuration has), with ``group:(all)``."""
    df = records[records["seed"] == records["seed"].min()].copy()
    df[f"group:{_ALL}"] = _ALL
    return df


def _attrs(df: pd.DataFrame) -> list[str]:
    return [c.split(":", 1)[1] for c in df.columns if c.startswith("group:") and df[c].notna().any()]


def _summary(df: pd.DataFrame, columns: list[str], n_resamples: int, seed: int) -> pd.DataFrame:
    cols = [c for c in columns if c in df and df[c].notna().any()]
    if not cols:
        return pd.DataFrame()
    return group_mean_summary(df, cols, _attrs(df), by=_CELL, n_resamples=n_resamples, seed=seed)


def _pick(s: pd.DataFrame, key: tuple, col: str, attr: str, group: str) -> tuple[float, float, float]:
    if s.empty:
        return np.nan, np.nan, np.nan
    m = s[(s["column"] == col) & (s["attribute"] == attr) & (s["group"] == group)]
    for k, v in zip(_CELL, key):
        m = m[(m[k] == v) | (m[k].isna() & pd.isna(v))]
    if m.empty:
        return np.nan, np.nan, np.nan
    r = m.iloc[0]
    return float(r["value"]), float(r["ci_low"]), float(r["ci_high"])


def _widest_gap(s: pd.DataFrame, key: tuple, col: str, attrs: list[str]) -> str:
    best = None
    for a in attrs:
        if a == _ALL:
            continue
        v, lo, hi = _pick(s, key, col, a, "(gap)")
        if np.isfinite(v) and (best is None or v > best[1]):
            best = (a, v, lo, hi)
    return "n/a" if best is None else f"{best[0]}: {_fmt(best[1], best[2], best[3])}"


def _region_tables(df: pd.DataFrame, n_resamples: int, seed: int, groups: list,
                   any_lesion: bool = True) -> dict[str, pd.DataFrame]:
    """Region-quality table per cohort of ``df``; ``any_lesion``: whether any cohort of the run has a
    lesion PSNR (when none has, there is no table)."""
    rec = df[df["arm"] == "reconstruct"]
    cols = ["psnr", "region_psnr:lesion", "region_psnr:tissue", "region_psnr:background", "region_ssim:lesion",
            "region_nmse:lesion"]
    if "region_psnr:lesion" not in rec or not any_lesion:
        return {}
    out = {}
    for cohort, sub in rec.groupby("cohort", sort=True):
        s = _summary(sub, cols, n_resamples, seed)
        if s.empty:
            continue
        groups.append(s)
        attrs = _attrs(sub)
        rows = []
        for key, _ in sub.groupby(_CELL, sort=True, dropna=False):
            row = dict(zip(["degradation", "level", "reconstructor", "mitigation"],
                           [key[1], f"{key[2]:g}", key[3], key[5]]))
            for c, name in zip(cols, ["PSNR (whole)", "PSNR lesion", "PSNR tissue", "PSNR background",
                                      "SSIM lesion", "NMSE lesion"]):
                row[name] = _fmt(*_pick(s, key, c, _ALL, _ALL))
            row["lesion PSNR: widest group gap"] = _widest_gap(s, key, "region_psnr:lesion", attrs)
            rows.append(row)
        out[str(cohort)] = pd.DataFrame(rows)
    return out


def _hallucination_tables(df: pd.DataFrame, n_resamples: int, seed: int, groups: list) -> dict[str, pd.DataFrame]:
    out = {}
    for cohort, sub in df.groupby("cohort", sort=True):
        sub = sub.copy()
        has_cls = any(c.startswith("score:") for c in sub if sub[c].notna().any())
        if has_cls:
            flips = record_flips(sub)
            sub["_hallucinated"] = flips["hallucinated:any"]
            sub["_erased"] = flips["erased:any"]
            spread = record_sample_spread(sub)
            if "spread:mean" in spread:
                sub["_spread"] = spread["spread:mean"]
                labels = [c.split(":", 1)[1] for c in spread.columns if c != "spread:mean"]
                err = np.nanmean(np.stack([np.abs(sub[f"score:{lb}"] - sub[f"clean_score:{lb}"]) for lb in labels]), 0)
                sub["_score_error"] = err
        seg = "gen_clean_seg_volume" in sub and sub["gen_clean_seg_volume"].notna().any()
        if seg:
            sub["_fp_on_empty"] = np.where(sub["gen_clean_seg_volume"] == 0, sub["gen_seg_volume"], np.nan)
        cols = [c for c in ("_hallucinated", "_erased", "_fp_on_empty", "gen_fp_volume") if c in sub]
        s = _summary(sub, cols, n_resamples, seed)
        groups.append(s.replace({"column": {"_hallucinated": "hallucinated finding", "_erased": "erased finding",
                                            "_fp_on_empty": "FP volume, clean has none"}}))
        attrs = _attrs(sub)
        rows = []
        for key, cell in sub.groupby(_CELL, sort=True, dropna=False):
            row = dict(zip(["degradation", "level", "reconstructor", "arm"], [key[1], f"{key[2]:g}", key[3], key[4]]))
            if has_cls:
                row["hallucinated finding (share)"] = _fmt(*_pick(s, key, "_hallucinated", _ALL, _ALL))
                row["erased finding (share)"] = _fmt(*_pick(s, key, "_erased", _ALL, _ALL))
                row["hallucinated: widest group gap"] = _widest_gap(s, key, "_hallucinated", attrs)
            if seg:
                row["FP volume, clean has none (px)"] = _fmt(*_pick(s, key, "_fp_on_empty", _ALL, _ALL))
                row["FP volume outside truth (px)"] = _fmt(*_pick(s, key, "gen_fp_volume", _ALL, _ALL))
            for c, name in (("gen_hallucination_fraction", "map: added (share of body)"),
                            ("gen_erasure_fraction", "map: erased (share of body)")):
                if c in cell:
                    row[name] = _fmt(float(cell[c].mean()))
            if "_spread" in cell and cell["_spread"].notna().any():
                row["diagnosis spread over samples"] = _fmt(float(cell["_spread"].mean()))
                row["spread-error Spearman"] = _fmt(spread_error_correlation(cell["_spread"], cell["_score_error"]))
            if "gen_uncertainty_error_corr" in cell and cell["gen_uncertainty_error_corr"].notna().any():
                row["uncertainty-error r (pixels)"] = _fmt(float(cell["gen_uncertainty_error_corr"].mean()))
                cov = [(float(c.split(":", 1)[1]), float(cell[c].mean())) for c in cell if c.startswith("gen_coverage:")]
                if cov:
                    row["coverage at 0.9"] = _fmt(dict(cov).get(0.9, np.nan))
                    row["calibration error"] = _fmt(float(np.mean([abs(v - p) for p, v in cov])))
            rows.append(row)
        t = pd.DataFrame(rows)
        t = t.loc[:, ~(t == "n/a").all()] if not t.empty else t
        if not t.empty and len(t.columns) > 4:
            out[str(cohort)] = t.fillna("")
    return out


def _task_value(cell: pd.DataFrame) -> tuple[float, str]:
    labels = [c.split(":", 1)[1] for c in cell if c.startswith("score:") and cell[c].notna().any()]
    if labels:
        y = cell[[f"target:{lb}" for lb in labels]].to_numpy(float)
        s = cell[[f"score:{lb}" for lb in labels]].to_numpy(float)
        ok = [j for j in range(len(labels)) if len(np.unique(y[~np.isnan(y[:, j]), j])) == 2]
        if ok:
            return float(np.mean([auroc(y[:, j], s[:, j]) for j in ok])), "mean AUROC"
    if "dice" in cell and cell["dice"].notna().any():
        return float(cell["dice"].mean()), "mean Dice"
    return np.nan, ""


def _scale(setter, values: list[float]) -> None:
    """Log axis when the positive values span more than a factor 20, else linear."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if len(v) and (v > 0).all() and v.max() / v.min() > 20:
        setter("log")


def _plane_points(df: pd.DataFrame) -> tuple[list, set, bool]:
    """The fidelity-perception points of ``df`` (main-seed rows of one cohort or more): panels
    ``((cohort, degradation), points)``, the reconstructor names, whether any Fréchet distance is set."""
    rec = df[(df["arm"] == "reconstruct") & (df["mitigation"] == "none")]
    if "gen_frechet" not in rec:
        return [], set(), False
    panels = []
    for cohort, degr in sorted(rec.groupby(["cohort", "degradation"]).groups):
        sub = rec[(rec["cohort"] == cohort) & (rec["degradation"] == degr)]
        pts = []
        for (name, level), cell in sub.groupby(["reconstructor", "level"]):
            v, metric = _task_value(cell)
            pts.append((name, level, float(cell["nmse"].mean()), float(cell["gen_frechet"].iloc[0]), v, metric))
        panels.append(((cohort, degr), pts))
    return panels, set(rec["reconstructor"].astype(str).unique()), bool(rec["gen_frechet"].notna().any())


def _fig_plane(points: list, names: set, out_dir: Path) -> list[Figure]:
    """Draw the panels of :func:`_plane_points` (collected over the cohorts, in panel order)."""
    if not points:
        return []
    names = sorted(names)
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(1, len(points), figsize=(4.6 * len(points), 3.8), squeeze=False)
        for ax, ((cohort, degr), pts) in zip(axes[0], points):
            vals = np.array([p[4] for p in pts], dtype=float)
            lo, hi = (np.nanmin(vals), np.nanmax(vals)) if np.isfinite(vals).any() else (0.0, 1.0)
            sc = None
            for name, level, x, y, v, _ in pts:
                i = names.index(str(name))
                sc = ax.scatter([x], [y], c=[v if np.isfinite(v) else lo], cmap="viridis", vmin=lo, vmax=max(hi, lo + 1e-9),
                                marker=_MARKERS[i % len(_MARKERS)], s=60, edgecolors=OKABE_ITO[i % len(OKABE_ITO)],
                                linewidths=1.2)
                ax.annotate(f"{level:g}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
            for i, name in enumerate(names):  # dashed line through each reconstructor's levels
                line = sorted((p for p in pts if p[0] == name), key=lambda p: p[1])
                if len(line) > 1:
                    ax.plot([p[2] for p in line], [p[3] for p in line], ls=":", lw=0.8, color=OKABE_ITO[i % len(OKABE_ITO)])
            _scale(ax.set_xscale, [p[2] for p in pts])
            _scale(ax.set_yscale, [p[3] for p in pts])
            for axis in ("x", "y"):
                if getattr(ax, f"get_{axis}scale")() == "linear":
                    ax.ticklabel_format(axis=axis, style="sci", scilimits=(-2, 3), useOffset=False)
            ax.set_xlabel("distortion: NMSE (lower is better)")
            ax.set_ylabel("task-feature Fréchet distance")
            ax.set_title(f"{cohort} · {degr}")
            if sc is not None:
                cb = fig.colorbar(sc, ax=ax, fraction=0.05)
                cb.set_label(pts[0][5] or "task metric")
        handles = [plt.Line2D([], [], ls="", marker=_MARKERS[i % len(_MARKERS)], color="0.6",
                              markeredgecolor=OKABE_ITO[i % len(OKABE_ITO)], label=n) for i, n in enumerate(names)]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(names), 6), frameon=False)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        png, pdf = _save(fig, out_dir, "fidelity-perception")
    caption = ("Every reconstructor (marker) at every level (number) in the fidelity-perception plane: distortion (NMSE of the "
               "reconstruction against the clean image) against the Fréchet distance between the features that the frozen "
               "diagnostic model extracts from reconstructions and from clean images (task-aware perception: how far the "
               "reconstructions look from clean ones to the model that reads them). Colour: the task metric. Lower left is "
               "better on both; a reconstructor low on the perception axis but far right looks right to the model while "
               "departing from the truth, the signature of hallucination.")
    return [Figure("fidelity-perception", png, pdf, "Fidelity against task-aware perception", caption)]


def generative_section(records: Records | pd.DataFrame, meta: dict, out_dir: Path | str) -> GenerativeSection:
    """Build the section from the records; write its tables (CSV) and figure into ``out_dir``.

    Parameters
    ----------
    records : Records or DataFrame
        The records; read one cohort's main-seed rows at a time, without the feature columns.
    meta : dict
        ``run.json`` (the ``analysis.n_resamples`` and ``analysis.seed`` settings are used).
    out_dir : path
        The report directory (``tables/`` and ``figures/`` are written there).
    """
    out = Path(out_dir)
    rec = Records.of(records)
    if rec.empty or not rec.with_prefix("gen_", "region_"):
        return GenerativeSection()
    settings = ((meta.get("config") or {}).get("analysis") or {})
    n_res, seed = int(settings.get("n_resamples", 1000)), int(settings.get("seed", 0))
    firsts = rec.first_rows(["cohort", "seed", "arm"])
    seed0 = firsts["seed"].min()
    any_lesion = "region_psnr:lesion" in rec and any(
        part.loc[(part["seed"] == seed0) & (part["arm"] == "reconstruct"), "region_psnr:lesion"].notna().any()
        for part in rec.scan(["seed", "arm", "region_psnr:lesion"]))
    cols = [c for c in rec.columns if not c.startswith(("feature:", "clean_feature:"))]
    region, halluc, g_region, g_halluc, points, names = {}, {}, [], [], [], set()
    for cohort in sorted(firsts.loc[firsts["seed"] == seed0, "cohort"].astype(str).unique()):
        df = _main_rows(rec.select(cols, where={"seed": seed0, "cohort": cohort}))  # one cohort at a time
        region.update(_region_tables(df, n_res, seed, g_region, any_lesion))
        halluc.update(_hallucination_tables(df, n_res, seed, g_halluc))
        pts, nm, frechet = _plane_points(df)
        if frechet or pts:
            points.append((pts, frechet))
        names |= nm
        del df
    groups = g_region + g_halluc
    sec = GenerativeSection(region, halluc, groups=groups)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for kind, tables in (("region-quality", sec.region), ("hallucination", sec.hallucination)):
        for cohort, t in tables.items():
            t.to_csv(out / "tables" / f"{kind}-{cohort}.csv", index=False)
    if any(not g.empty for g in groups):
        pd.concat([g for g in groups if not g.empty], ignore_index=True).to_csv(
            out / "tables" / "generative-groups.csv", index=False)
    panels = [p for pts, _ in points for p in pts] if any(f for _, f in points) else []
    sec.figures = _fig_plane(panels, names, out / "figures")
    return sec
