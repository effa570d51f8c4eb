"""Benchmark the brain-glioma cohort generator: subjects/s and studies/s at several image sizes.

Usage: ``python benchmarks/cohorts_brain.py --studies 1000 --sizes 64 256``
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from reconaudit.cohorts.brain_glioma import generate_brain_glioma, load_mni152_tissue


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--studies", type=int, default=1000, help="studies per size (64 px)")
    ap.add_argument("--studies-256", type=int, default=150, help="studies at sizes above 64")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--slices", type=int, default=3, help="slices per subject")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cohorts_brain.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    load_mni152_tissue()
    load_s = time.perf_counter() - t0
    rows = []
    for size in args.sizes:
        n_studies = args.studies if size <= 64 else args.studies_256
        n_sub = max(1, n_studies // args.slices)
        t0, c0 = time.perf_counter(), time.process_time()
        c = generate_brain_glioma(n_subjects=n_sub, slices_per_subject=args.slices, size=size, seed=0)
        dt = time.perf_counter() - t0
        cpu = time.process_time() - c0
        row = {
            "size": size,
            "subjects": n_sub,
            "studies": len(c),
            "seconds": round(dt, 3),
            "cpu_seconds": round(cpu, 3),
            "subjects_per_s": round(n_sub / dt, 2),
            "studies_per_s": round(len(c) / dt, 2),
            "mean_tumor_fraction": round(float(c.table["tumor_fraction"].mean()), 4),
        }
        rows.append(row)
        print(json.dumps(row))
    result = {
        "threads": args.threads,
        "load_average_1min": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
        "template_load_s": round(load_s, 3),
        "runs": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"template load {load_s:.2f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
