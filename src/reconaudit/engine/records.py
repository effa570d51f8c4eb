"""Assemble the records table (one row per evaluated test study per cell) and the run metadata."""

from __future__ import annotations

import io
import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from reconaudit.engine.plan import Plan
from reconaudit.engine.store import ArtifactStore, atomic_write_bytes, atomic_write_text, file_digest
from reconaudit.schema import COLUMN_PREFIXES, RECORD_KEYS

log = logging.getLogger(__name__)

KEY_COLUMNS = list(RECORD_KEYS)


def _order_columns(df: pd.DataFrame) -> pd.DataFrame:
    first = [c for c in KEY_COLUMNS if c in df.columns]
    rest = [c for c in df.columns if c not in first]
    by_prefix = [c for p in COLUMN_PREFIXES for c in rest if c.startswith(p)]
    other = [c for c in rest if c not in by_prefix]
    return df[first + by_prefix + other]


def collect_records(plan: Plan, store: ArtifactStore, run_dir: Path) -> tuple[pd.DataFrame, list[dict]]:
    """Concatenate the records of every finished cell; copy example studies into ``run_dir/examples``.

    Returns the records table and the cell list (with ``examples`` paths) for ``run.json``.
    An example file in ``run_dir`` that differs from the store's checksum is copied again.
    Cells whose final step did not finish are listed with ``status = "missing"``.
    """
    parts = []
    cells = []
    ex_dir = run_dir / "examples"
    ex_dir.mkdir(parents=True, exist_ok=True)
    for cell in plan.cells:
        kind, key = cell.final_step.split("/", 1)
        entry = {**cell.as_dict(), "examples": None, "status": "done"}
        if not store.exists(kind, key):
            entry["status"] = "missing"
            cells.append(entry)
            continue
        d = store.path(kind, key)
        parts.append(pd.read_parquet(d / "records.parquet"))
        if (d / "examples.npz").exists():
            dest = ex_dir / f"{cell.cell_id}.npz"
            if not dest.exists() or file_digest(dest) != store.checksum(kind, key, "examples.npz"):
                if dest.exists():
                    log.warning("%s differs from the store's copy (damaged or edited): copied again", dest)
                tmp = dest.with_suffix(".npz.tmp")
                shutil.copyfile(d / "examples.npz", tmp)
                tmp.replace(dest)
            entry["examples"] = f"examples/{cell.cell_id}.npz"
            entry["examples_blake2b"] = store.checksum(kind, key, "examples.npz")
        cells.append(entry)
    records = pd.concat(parts, ignore_index=True, sort=False) if parts else pd.DataFrame(columns=KEY_COLUMNS)
    return _order_columns(records), cells


def check_examples(run_dir: Path, meta: dict, store: ArtifactStore | None = None) -> int:
    """Check every example file of ``run.json`` against its checksum before a report reads it.

    A file that differs is copied again from ``store`` when the cell's artifact is there, otherwise
    moved aside to ``*.npz.damaged`` (the report then leaves that cell's examples out, with a
    warning); returns how many files differed.
    """
    n = 0
    for c in meta.get("cells", []):
        rel, want = c.get("examples"), c.get("examples_blake2b")
        f = Path(run_dir) / rel if rel else None
        if f is None or want is None or not f.is_file() or file_digest(f) == want:
            continue
        n += 1
        kind, key = str(c.get("final_step", "/")).split("/", 1)
        if store is not None and store.verified(kind, key) and store.checksum(kind, key, "examples.npz") == want:
            shutil.copyfile(store.path(kind, key) / "examples.npz", f.with_suffix(".npz.tmp"))
            f.with_suffix(".npz.tmp").replace(f)
            log.warning("%s differs from its checksum in run.json: copied again from the store", f)
        else:
            f.replace(f.with_suffix(".npz.damaged"))
            log.warning("%s differs from its checksum in run.json and the store has no copy: moved to %s; "
                        "the report leaves its examples out (run the audit again to restore them)", f,
                        f.with_suffix(".npz.damaged"))
    return n


def write_records(records: pd.DataFrame, run_dir: Path) -> Path:
    """Write ``records.parquet`` atomically."""
    buf = io.BytesIO()
    records.to_parquet(buf, index=False)
    path = run_dir / "records.parquet"
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_run_meta(meta: dict, run_dir: Path) -> Path:
    """Write ``run.json`` atomically."""
    path = run_dir / "run.json"
    atomic_write_text(path, json.dumps(meta, indent=2, default=str, allow_nan=True))
    return path


def plain_summary(records: pd.DataFrame, meta: dict) -> pd.DataFrame:
    """One row per cell: mean PSNR, mean AUROC (clean and on the input), mean Dice, and the
    equalized-odds difference of the first group attribute at the fixed thresholds.

    This is the engine's own minimal summary; the report room adds intervals and tests.
    """
    from reconaudit.metrics import auroc, equalized_odds_difference

    rows = []
    keys = ["cohort", "degradation", "level", "reconstructor", "arm", "mitigation", "mitigation_strength", "seed"]
    for cell_id, g in records.groupby("cell_id", sort=False):
        cinfo = meta["cohorts"][g["cohort"].iloc[0]]
        row = {k: g[k].iloc[0] for k in keys}
        row["cell_id"] = cell_id
        row["n_studies"] = len(g)
        row["psnr"] = float(g["psnr"].mean()) if g["psnr"].notna().any() else np.nan
        row["input_psnr"] = float(g["input_psnr"].mean())
        labels = [lb for lb in cinfo["labels"] if f"score:{lb}" in g and g[f"score:{lb}"].notna().any()]
        if labels:
            au, au_clean, eodd = [], [], []
            attr = cinfo["group_attributes"][0] if cinfo["group_attributes"] else None
            for lb in labels:
                y = g[f"target:{lb}"].to_numpy()
                ok = ~np.isnan(y)
                if ok.sum() == 0 or len(np.unique(y[ok])) < 2:
                    continue
                au.append(auroc(y[ok], g[f"score:{lb}"].to_numpy()[ok]))
                au_clean.append(auroc(y[ok], g[f"clean_score:{lb}"].to_numpy()[ok]))
                if attr is not None:
                    pred = (g[f"score:{lb}"].to_numpy()[ok] >= g[f"threshold:{lb}"].to_numpy()[ok]).astype(int)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        eodd.append(
                            equalized_odds_difference(y[ok].astype(int), pred,
                                                      sensitive_features=g[f"group:{attr}"].to_numpy()[ok])
                        )
            row["auroc"] = float(np.nanmean(au)) if au else np.nan
            row["clean_auroc"] = float(np.nanmean(au_clean)) if au_clean else np.nan
            row["delta_auroc"] = row["auroc"] - row["clean_auroc"]
            if attr is not None:
                row[f"eodd:{attr}"] = float(np.nanmean(eodd)) if eodd and not np.all(np.isnan(eodd)) else np.nan
        if "dice" in g:
            row["dice"] = float(g["dice"].mean())
            row["clean_dice"] = float(g["clean_dice"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def write_plain_summary(records: pd.DataFrame, meta: dict, run_dir: Path) -> list[Path]:
    """``summary.csv`` and ``summary.md`` in ``run_dir``."""
    df = plain_summary(records, meta)
    csv = run_dir / "summary.csv"
    md = run_dir / "summary.md"
    atomic_write_text(csv, df.to_csv(index=False))
    atomic_write_text(md, _markdown(df))
    return [csv, md]


def _markdown(df: pd.DataFrame) -> str:
    if df.empty:
        return "(no finished cells)\n"
    cols = [c for c in df.columns if c != "cell_id"]

    from reconaudit.report.markdown import markdown_text

    def fmt(v: object) -> str:
        if isinstance(v, float | np.floating):
            return "n/a" if np.isnan(v) else f"{v:.4g}"
        return markdown_text(v)

    lines = ["| " + " | ".join(markdown_text(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(fmt(r[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"
