"""Time `reconaudit report` with the fairness audit in depth, and the share the depth analyses take.

Runs on a copy of an audit run (``--run RUN_DIR``: its records.parquet, run.json and examples/), or,
without one, on fake records (tests/report/fake_records.py) sized like the quickstart.  Times the
three parts of ``build_report`` separately: the analysis and tables, the figures, and the analyses
in depth (tables, figures); writes ``benchmarks/results/report_depth.json``.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/report_depth.py --run runs/quickstart
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=None, help="an audit run directory (default: fake records)")
    ap.add_argument("--patients", type=int, default=60, help="fake records: test patients per cohort")
    ap.add_argument("--keep", type=Path, default=None, help="build the copy (and its report) here instead of a temp dir")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "report_depth.json")
    args = ap.parse_args()
    from reconaudit.report.analysis import analyse
    from reconaudit.report.depth import analyse_depth, write_depth
    from reconaudit.report.figures import render_figures
    from reconaudit.report.html import load_run, render_html
    from reconaudit.report.tables import write_tables

    with tempfile.TemporaryDirectory() as tmp:
        run = (args.keep if args.keep is not None else Path(tmp)) / "run"
        shutil.rmtree(run, ignore_errors=True)
        if args.run is not None:
            run.mkdir(parents=True)
            for name in ("records.parquet", "run.json"):
                shutil.copy(args.run / name, run / name)
            if (args.run / "examples").exists():
                shutil.copytree(args.run / "examples", run / "examples")
            source = str(args.run)
        else:
            sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "report"))
            from fake_records import make_fake_run

            run.parent.mkdir(parents=True, exist_ok=True)
            make_fake_run(run, n_patients=args.patients, n_resamples=1000)
            source = f"fake records, {args.patients} patients per cohort"
        out = run / "report"
        t0, c0 = time.perf_counter(), time.process_time()
        records, meta = load_run(run)
        a = analyse(records, meta)
        write_tables(a, out / "tables")
        t1, c1 = time.perf_counter(), time.process_time()
        figures = render_figures(records, meta, a, run, out / "figures")
        t2, c2 = time.perf_counter(), time.process_time()
        depth = write_depth(analyse_depth(records, meta, a), a, out / "tables", out / "figures")
        t3, c3 = time.perf_counter(), time.process_time()
        render_html(a, meta, figures, out / "report.html", depth=depth)
        t4, c4 = time.perf_counter(), time.process_time()
    res = {
        "source": source, "n_records": len(records), "n_cells": int(records["cell_id"].nunique()),
        "n_resamples": a.settings["n_resamples"], "analysis_s": t1 - t0, "figures_s": t2 - t1,
        "depth_s": t3 - t2, "html_s": t4 - t3, "total_s": t4 - t0, "depth_share": (t3 - t2) / (t4 - t0),
        # CPU seconds of this process: the figures to compare on a shared machine (wall time moves with load)
        "analysis_cpu_s": c1 - c0, "figures_cpu_s": c2 - c1, "depth_cpu_s": c3 - c2, "html_cpu_s": c4 - c3,
        "total_cpu_s": c4 - c0,
        "cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "python": platform.python_version(),
        "load_average_1min": os.getloadavg()[0],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
