"""Summary tables of an :class:`~reconaudit.report.analysis.Analysis` as CSV, Markdown and LaTeX.

CSV files hold the full numeric tables (every estimate, interval bound and p-value at full
precision) for further analysis; Markdown and LaTeX (booktabs) hold the same content formatted
for a paper: an estimate with its 95 % interval as ``0.81 [0.78, 0.84]``, changes signed, and a
``*`` after a change that is significant after the multiple-comparison correction.  No table
holds a study or patient identifier.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .analysis import MEAN_LABEL, METRIC_NAMES, Analysis

__all__ = ["write_tables", "formatted_tables", "format_ci", "to_markdown", "to_latex", "DIGITS"]

#: Decimals per metric in formatted tables.
DIGITS = {"psnr": 1, "ssim": 3, "nmse": 4, "hd95": 2, "skewed_error_ratio": 2, "uncertainty": 4}
_DEFAULT_DIGITS = 3


def _digits(metric: str) -> int:
    return DIGITS.get(metric, _DEFAULT_DIGITS)


def format_ci(value: float, low: float, high: float, digits: int = 3, signed: bool = False) -> str:
    """``"0.81 [0.78, 0.84]"``; ``"n/a"`` when the value is undefined; the interval omitted if undefined."""
    if value is None or not np.isfinite(value):
        return "n/a"
    v = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return v
    return f"{v} [{low:.{digits}f}, {high:.{digits}f}]"


def row_ci(r, column: str, digits: int = 3, signed: bool = False) -> str:
    """:func:`format_ci` of ``r[column]`` with its interval columns ``<column>_ci_low`` / ``_ci_high``."""
    return format_ci(r[column], r[f"{column}_ci_low"], r[f"{column}_ci_high"], digits, signed)


def arm_columns(r, digits: int = 3, change: str = "change") -> dict:
    """The ``clean``, ``processed`` and ``change`` (named ``change``) cells of a long-table row with
    ``clean``/``recon``/``change`` columns and intervals; the change starred when ``r["significant"]``."""
    return {"clean": row_ci(r, "clean", digits), "processed": row_ci(r, "recon", digits),
            change: row_ci(r, "change", digits, signed=True) + ("*" if r.get("significant", False) else "")}


def _p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _share(r: pd.Series) -> str:
    """Undefined bootstrap resamples: ``"3 / 1000 (0.3%)"``; ``""`` without a bootstrap."""
    n, b = r.get("n_undefined"), r.get("n_resamples")
    if b is None or not np.isfinite(b) or not b:
        return ""
    return f"{int(n)} / {int(b)} ({100 * n / b:.1f}%)"


def _note(r: pd.Series) -> str:
    """Why a value is n/a or not estimable, the operating-point flag, and the interval method used."""
    parts = [str(r["reason"]) if r.get("reason") else ""]
    if r.get("operating_point_flag"):
        parts.append(f"operating point: {r['operating_point_flag']}")
    if str(r.get("ci_method", "")).startswith("percentile (BCa"):
        parts.append("interval: percentile (BCa undefined)")
    if r.get("estimable") is not None and not bool(r["estimable"]) and "not estimable" not in parts[0]:
        parts.insert(0, "not estimable")
    return " | ".join(p for p in parts if p)


def _strength(x: float) -> str:
    return "" if x is None or not np.isfinite(x) else f"{x:g}"


def _mitigation(row: pd.Series) -> str:
    if row["mitigation"] == "none":
        return "none"
    s = _strength(row["mitigation_strength"])
    return f"{row['mitigation']} (λ={s})" if s else str(row["mitigation"])


def _level(row: pd.Series) -> str:
    return f"{row['level']:g}"


def _summary(a: Analysis) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(numeric, formatted) summary: one row per cell."""
    num_rows, fmt_rows = [], []
    f = a.fairness
    comp = a.competence.set_index("cell_id")["note"] if not a.competence.empty else pd.Series(dtype=str)
    for _, c in a.cells.iterrows():
        info = a.cohorts[c["cohort"]]
        metric, label = info["primary"]
        t = a.task[(a.task["cell_id"] == c["cell_id"]) & (a.task["metric"] == metric) & (a.task["label"] == label)]
        tr = t.iloc[0] if not t.empty else None
        fc = f[f["cell_id"] == c["cell_id"]]
        n_tests = int(fc["p_adjusted"].notna().sum())
        n_sig_worse = int((fc["significant"] & fc["bias_increased"]).sum())
        tname = "mean AUROC" if label == MEAN_LABEL else METRIC_NAMES[metric]
        is_direct = c["arm"] == "direct"
        q = "input_psnr" if is_direct else "psnr"
        s = "input_ssim" if is_direct else "ssim"
        num_rows.append({
            "cohort": c["cohort"], "level": c["level"], "reconstructor": c["reconstructor"], "arm": c["arm"],
            "mitigation": c["mitigation"], "mitigation_strength": c["mitigation_strength"], "seed": c["seed"],
            "psnr": c[q], "psnr_ci_low": c[f"{q}_ci_low"], "psnr_ci_high": c[f"{q}_ci_high"],
            "ssim": c[s], "ssim_ci_low": c[f"{s}_ci_low"], "ssim_ci_high": c[f"{s}_ci_high"],
            "task_metric": tname,
            **({k: tr[k] for k in ("clean", "recon", "recon_ci_low", "recon_ci_high", "change", "change_ci_low",
                                   "change_ci_high", "p_adjusted", "significant")} if tr is not None else {}),
            "fairness_tests": n_tests, "significant_bias_increases": n_sig_worse,
            "below_baseline": bool(comp.get(c["cell_id"], "")),
        })
        d = _digits(metric)
        sig = tr is not None and bool(tr["significant"])
        fmt_rows.append({
            "cohort": c["cohort"], "level": _level(c), "reconstructor": c["reconstructor"],
            "mitigation": _mitigation(c), "seed": str(c["seed"]),
            "PSNR (dB)": format_ci(c[q], c[f"{q}_ci_low"], c[f"{q}_ci_high"], 1) + (" (input)" if is_direct else ""),
            "SSIM": format_ci(c[s], c[f"{s}_ci_low"], c[f"{s}_ci_high"], 3) + (" (input)" if is_direct else ""),
            "task metric": tname,
            "processed": format_ci(tr["recon"], tr["recon_ci_low"], tr["recon_ci_high"], d) if tr is not None else "n/a",
            "change vs clean": (format_ci(tr["change"], tr["change_ci_low"], tr["change_ci_high"], d, signed=True)
                                + ("*" if sig else "")) if tr is not None else "n/a",
            "significant bias increases": f"{n_sig_worse} / {n_tests}",
            "note": comp.get(c["cell_id"], ""),
            "_significant": sig or n_sig_worse > 0,
        })
    return pd.DataFrame(num_rows), pd.DataFrame(fmt_rows)


def _task_fmt(a: Analysis) -> pd.DataFrame:
    rows = []
    for _, r in a.task.iterrows():
        d = _digits(r["metric"])
        rows.append({
            "cohort": r["cohort"], "level": _level(r), "reconstructor": r["reconstructor"],
            "mitigation": _mitigation(r), "seed": str(r["seed"]),
            "label": r["label"] or "", "metric": METRIC_NAMES.get(r["metric"], r["metric"]),
            **arm_columns(r, d),
            "p": _p(r["p_value"]), "p (adj.)": _p(r["p_adjusted"]), "test": r["test"],
            "undefined": _share(r), "threshold": r["threshold_policy"], "note": _note(r),
            "_significant": bool(r["significant"]),
        })
    return pd.DataFrame(rows)


def _fairness_fmt(a: Analysis) -> pd.DataFrame:
    rows = []
    for _, r in a.fairness.iterrows():
        d = _digits(r["metric"])
        rel = r["change_rel_pct"]
        rows.append({
            "cohort": r["cohort"], "level": _level(r), "reconstructor": r["reconstructor"],
            "mitigation": _mitigation(r), "seed": str(r["seed"]), "attribute": r["attribute"],
            "label": r["label"] or "", "metric": METRIC_NAMES.get(r["metric"], r["metric"]),
            "groups (n)": r["groups"],
            **arm_columns(r, d, "bias change"),
            "change %": "n/a" if not np.isfinite(rel) else f"{rel:+.0f}%",
            "p": _p(r["p_value"]), "p (adj.)": _p(r["p_adjusted"]), "p (perm.)": _p(r["p_permutation"]),
            "worst group": r["worst_group_recon"] or "",
            "undefined": _share(r), "definition": r["definition"], "threshold": r["threshold_policy"],
            "note": _note(r),
            "_significant": bool(r["significant"]),
        })
    return pd.DataFrame(rows)


def _seeds_fmt(a: Analysis) -> pd.DataFrame:
    rows = []
    for _, r in a.seeds.iterrows():
        d = _digits(r["metric"])
        rows.append({
            "cohort": r["cohort"], "level": _level(r), "reconstructor": r["reconstructor"],
            "mitigation": _mitigation(r), "what": r["source"], "metric": METRIC_NAMES.get(r["metric"], r["metric"]),
            "label": r["label"] or "", "attribute": r["attribute"] or "", "seeds": str(int(r["n_seeds"])),
            "mean ± std over seeds": "n/a" if not np.isfinite(r["seed_mean"])
            else f"{r['seed_mean']:.{d}f} ± " + ("n/a (a seed undefined)" if not np.isfinite(r["seed_std"])
                                                else f"{r['seed_std']:.{d}f}"),
            "bootstrap half-width": "n/a" if not np.isfinite(r["bootstrap_half_width"])
            else f"{r['bootstrap_half_width']:.{d}f}",
        })
    return pd.DataFrame(rows)


def formatted_tables(analysis: Analysis) -> dict[str, pd.DataFrame]:
    """The formatted (string) tables: ``summary``, ``task``, ``fairness``, ``seeds``, ``families``.

    A boolean column ``_significant`` (not written to files) marks rows with a significant result.
    """
    _, summary = _summary(analysis)
    fam = analysis.families.rename(columns={"n_tests": "tests", "method": "correction"})
    return {
        "summary": summary, "task": _task_fmt(analysis), "fairness": _fairness_fmt(analysis),
        "seeds": _seeds_fmt(analysis), "families": fam.astype(str),
    }


def _visible(df: pd.DataFrame) -> pd.DataFrame:
    return df[[c for c in df.columns if not c.startswith("_")]]


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown pipe table (cells escaped by :func:`~reconaudit.report.markdown.markdown_text`)."""
    from .markdown import markdown_text as cell

    df = _visible(df)

    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |",
             "| " + " | ".join("---" for _ in df.columns) + " |"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "±": r"$\pm$", "λ": r"$\lambda$", "−": "-",
}


def _latex_escape(x: object) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(x))


def to_latex(df: pd.DataFrame, caption: str = "", label: str = "") -> str:
    """A booktabs ``table`` with a ``tabular`` (all text escaped for LaTeX)."""
    df = _visible(df)
    align = "".join("l" if i < 1 or not _numeric_looking(df[c]) else "r" for i, c in enumerate(df.columns))
    out = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{align}}}", r"\toprule",
           " & ".join(_latex_escape(c) for c in df.columns) + r" \\", r"\midrule"]
    out += [" & ".join(_latex_escape(x) for x in row) + r" \\" for row in df.itertuples(index=False)]
    out += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        out.append(rf"\caption{{{_latex_escape(caption)}}}")
    if label:
        out.append(rf"\label{{{_latex_escape(label)}}}")
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def _numeric_looking(col: pd.Series) -> bool:
    s = col.astype(str).str.strip()
    return bool(len(s)) and bool(s.str.match(r"^[+\-−]?(\d|n/a|<)").mean() > 0.8)


_CAPTIONS = {
    "summary": "Per cell: image quality and task performance on the processed images with patient-level 95% "
               "bootstrap intervals; change against clean images (* significant after correction); fairness "
               "metrics whose disparity grew significantly, out of those tested.",
    "task": "Task performance on clean and processed images and its change (processed - clean), 95% intervals.",
    "fairness": "Fairness metrics on clean and processed images and the bias change, 95% intervals; "
                "p-values adjusted within the fairness family.",
    "seeds": "Configurations trained with several seeds: mean and standard deviation across seeds, next to "
             "the mean bootstrap half-width.",
    "families": "Multiple-comparison families.",
}


def write_tables(analysis: Analysis, out_dir: Path | str) -> list[Path]:
    """Write the tables as CSV (numeric), Markdown and LaTeX (formatted) into ``out_dir``.

    Files: ``summary``, ``task``, ``fairness``, ``seeds``, ``families`` and ``cells`` (image
    quality per cell, CSV only) and ``headlines`` (CSV, Markdown), each with the extensions written.

    Returns
    -------
    list of pathlib.Path
        Every file written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    a = analysis
    numeric_summary, _ = _summary(a)
    fmt = formatted_tables(a)
    numeric = {"summary": numeric_summary, "task": a.task, "fairness": a.fairness, "seeds": a.seeds,
               "families": a.families}
    paths: list[Path] = []
    for name, df in numeric.items():
        p = out / f"{name}.csv"
        df.to_csv(p, index=False)
        paths.append(p)
        p = out / f"{name}.md"
        p.write_text(to_markdown(fmt[name]), encoding="utf-8")
        paths.append(p)
        p = out / f"{name}.tex"
        p.write_text(to_latex(fmt[name], caption=_CAPTIONS[name], label=f"tab:{name}"), encoding="utf-8")
        paths.append(p)
    p = out / "cells.csv"
    a.cells.to_csv(p, index=False)
    paths.append(p)
    p = out / "headlines.csv"
    a.headlines.to_csv(p, index=False)
    paths.append(p)
    p = out / "headlines.md"
    from .markdown import markdown_text

    p.write_text("\n".join(f"- **{markdown_text(c)}**: {markdown_text(s)}"
                           for c, s in zip(a.headlines["cohort"], a.headlines["sentence"])) + "\n", encoding="utf-8")
    paths.append(p)
    return paths
