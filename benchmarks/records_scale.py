"""Peak memory and wall time of writing and reading a run's records at millions of rows.

Usage::

    python benchmarks/records_scale.py --rows 1000000 10000000 [--cells 100] [--analyse-rows 0]

For each total, ``--cells`` cells of chest-X-ray-like records (5 labels: target, score, clean score,
threshold; 3 group attributes; 6 image-quality columns; keys: about 45 columns) are written as
per-cell files, then, each in its own fresh process (peak RSS is the process's own, including
~0.3 GB of Python and the libraries):

- ``merge``: :func:`reconaudit.engine.records.merge_cell_records` into one ``records.parquet``;
- ``read per cell``: what the analysis reads: :func:`reconaudit.report.analysis.cohort_summaries`
  (a column-pruned scan) and every cell through :class:`reconaudit.engine.records.Records`;
- ``read whole`` (only up to 2,000,000 rows): ``pandas.read_parquet`` of the whole file, the way
  the analysis read it before, for comparison;
- ``analyse`` (``--analyse-rows N``, 0: skip): the full analysis (``--resamples``) of the first
  N rows' cells.

Writes ``benchmarks/results/records_scale.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

LABELS = ["atelectasis", "cardiomegaly", "consolidation", "edema", "effusion"]


def write_cells(root: Path, rows: int, cells: int, seed: int = 0) -> list[Path]:
    import numpy as np
    import pandas as pd

    root.mkdir(parents=True, exist_ok=True)
    per = rows // cells
    files = []
    for c in range(cells):
        f = root / f"cell{c:04d}.parquet"
        files.append(f)
        if f.exists():
            continue
        rng = np.random.default_rng([seed, c])
        n = per
        df = pd.DataFrame({
            "cell_id": f"cell{c:04d}", "cohort": "chest-xray", "task": "classification",
            "degradation": "lowdose-xray", "level": float([1000, 3000, 10000][c % 3]),
            "reconstructor": ["identity", "classical", "unet"][(c // 3) % 3], "arm": "reconstruct",
            "mitigation": "none", "mitigation_strength": 0.0, "seed": c // 9,
            "study_id": [f"s{i}" for i in range(n)], "patient_id": [f"p{i // 2}" for i in range(n)],
            "study_index": np.arange(n),
        })
        for a, vals in (("sex", ["F", "M"]), ("age", ["<40", "40-60", ">60"]), ("site", ["a", "b", "c", "d"])):
            df[f"group:{a}"] = rng.choice(vals, n)
        for lb in LABELS:
            y = (rng.random(n) < 0.3).astype(float)
            df[f"target:{lb}"] = y
            df[f"clean_score:{lb}"] = np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1)
            df[f"score:{lb}"] = np.clip(df[f"clean_score:{lb}"] + rng.normal(0, 0.05, n), 0, 1)
            df[f"threshold:{lb}"] = 0.5
        for m in ("psnr", "ssim", "nmse"):
            df[m] = rng.random(n)
            df[f"input_{m}"] = rng.random(n)
        df.to_parquet(f, index=False)
    return files


def _child(what: str, base: Path, args: list[str]) -> dict:
    t0 = time.perf_counter()
    extra: dict = {}
    if what == "merge":
        from reconaudit.engine.records import merge_cell_records

        files = sorted((base / "cells").glob("cell*.parquet"))
        merge_cell_records(files, base / "records.parquet")
    elif what == "read-cells":
        from reconaudit.engine.records import BULK_PREFIXES, Records
        from reconaudit.report.analysis import cohort_summaries

        rec = Records(base / "records.parquet")
        info = cohort_summaries(rec, {})
        n = 0
        for _, rows in rec.cells(exclude=BULK_PREFIXES):
            n += len(rows)
        extra = {"rows": n, "levels": info["chest-xray"]["levels"]}
    elif what == "read-whole":
        import pandas as pd

        import reconaudit.report.analysis  # noqa: F401 - the same imports as read-cells

        extra = {"rows": len(pd.read_parquet(base / "records.parquet"))}
    elif what == "analyse":
        import pyarrow.parquet as pq

        from reconaudit.report import analyse

        limit, resamples = int(args[0]), int(args[1])
        t = pq.read_table(base / "records.parquet").slice(0, limit).to_pandas()
        meta = {"cohorts": {"chest-xray": {"labels": LABELS, "group_attributes": ["sex", "age", "site"],
                                           "level_name": "photons"}},
                "analysis": {"n_resamples": resamples}}
        t0 = time.perf_counter()
        a = analyse(t, meta)
        extra = {"rows": len(t), "task_rows": len(a.task)}
    wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 2), "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3),
            **extra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--cells", type=int, default=100)
    ap.add_argument("--analyse-rows", type=int, default=0)
    ap.add_argument("--resamples", type=int, default=200)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "records_scale.json")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], Path(args.child[1]), args.child[2:])))
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="reconaudit-records-"))
    out = []
    for rows in args.rows:
        base = work / f"rows{rows}"
        t0 = time.perf_counter()
        write_cells(base / "cells", rows, args.cells)
        print(json.dumps({"rows": rows, "wrote_cells_s": round(time.perf_counter() - t0, 1)}), flush=True)
        steps = ["merge", "read-cells", *(["read-whole"] if rows <= 2_000_000 else [])]
        for what in steps + (["analyse"] if args.analyse_rows else []):
            extra = [str(args.analyse_rows), str(args.resamples)] if what == "analyse" else []
            res = subprocess.run([sys.executable, __file__, "--child", what, str(base), *extra], check=True,
                                 capture_output=True, text=True)
            row = {"rows": rows, "cells": args.cells, "step": what, **json.loads(res.stdout.strip().splitlines()[-1])}
            out.append(row)
            print(json.dumps(row), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out), "workdir": str(work)},
                                        "rows": out}, indent=2, default=str))
    print("\n| record rows | step | wall (s) | peak RSS (GB) |\n| --- | --- | --- | --- |")
    for r in out:
        print(f"| {r['rows']:,} | {r['step']} | {r['wall_s']} | {r['peak_rss_gb']} |")


if __name__ == "__main__":
    main()
