"""Benchmark the synthetic chest X-ray cohort generator: studies/s at several image sizes.

Usage: ``python benchmarks/cohorts_chest.py --studies 1000 --studies-256 200 --sizes 64 256 --threads 2``

Each size is timed ``--repeats`` times (best run reported); the label model alone
(:func:`chest_xray_table`, no pixels) is timed too, so the rendering share is visible.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from reconaudit.cohorts.chest_xray import chest_xray_table, generate_chest_xray


def _best(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--studies", type=int, default=1000, help="studies at sizes up to 64 px")
    ap.add_argument("--studies-256", type=int, default=200, help="studies at sizes above 64 px")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cohorts_chest.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    generate_chest_xray(n_studies=4, size=32)  # warm-up (imports, allocator)

    dt_tab, _ = _best(lambda: chest_xray_table(n_studies=args.studies), args.repeats)
    rows = []
    for size in args.sizes:
        n = args.studies if size <= 64 else args.studies_256
        dt, c = _best(
            lambda n=n, size=size: generate_chest_xray(n_studies=n, size=size, seed=0), args.repeats
        )
        row = {
            "size": size,
            "studies": n,
            "patients": int(c.table["patient_id"].nunique()),
            "seconds": round(dt, 3),
            "studies_per_s": round(n / dt, 1),
            "megabytes": round(c.images.numel() * 4 / 2**20, 1),
        }
        rows.append(row)
        print(json.dumps(row))
    result = {
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "label_model_only": {"studies": args.studies, "seconds": round(dt_tab, 3)},
        "runs": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"label model alone: {args.studies} studies in {dt_tab:.2f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
