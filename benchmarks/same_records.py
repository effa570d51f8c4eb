"""Whether two runs' records are the same bit for bit, and which report tables differ.

Usage::

    python benchmarks/same_records.py RUN_A RUN_B

Compares ``RUN_A/records.parquet`` with ``RUN_B/records.parquet``: the same columns in the same
order, the same rows in the same order, and every value the same bits (floats compared through
their integer bit patterns, so a NaN equals a NaN of the same payload and -0.0 differs from 0.0;
objects by value).  How the file is cut into row groups does not matter.  Then lists the CSV tables
under ``report/tables`` whose contents differ, with the columns that differ and how many values.
Exits 1 when the records differ.

Used to check that a change of the code leaves an audit's records as they were: run the same
config (same ``execution.threads``) with the code before and after, then compare.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd


def differing_columns(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    """The columns of ``a`` whose values are not bit for bit those of ``b`` (same names assumed)."""
    bad = []
    for c in a.columns:
        x, y = a[c].to_numpy(), b[c].to_numpy()
        if x.dtype != y.dtype or x.shape != y.shape:
            bad.append(c)
        elif x.dtype.kind in "fc":
            u = {2: np.uint16, 4: np.uint32, 8: np.uint64, 16: np.uint64}[x.dtype.itemsize]
            if not np.array_equal(np.ascontiguousarray(x).view(u), np.ascontiguousarray(y).view(u)):
                bad.append(c)
        elif x.dtype == object:
            same = all(p is q or p == q or (isinstance(p, float) and isinstance(q, float) and np.isnan(p) and np.isnan(q))
                       for p, q in zip(x, y, strict=True))
            if not same:
                bad.append(c)
        elif not np.array_equal(x, y):
            bad.append(c)
    return bad


def compare(run_a: Path, run_b: Path) -> bool:
    a = pd.read_parquet(run_a / "records.parquet")
    b = pd.read_parquet(run_b / "records.parquet")
    print(f"records: {a.shape[0]:,} x {a.shape[1]} and {b.shape[0]:,} x {b.shape[1]}")
    if list(a.columns) != list(b.columns):
        only_a, only_b = sorted(set(a.columns) - set(b.columns)), sorted(set(b.columns) - set(a.columns))
        print(f"  columns differ (only in A: {only_a[:10]}, only in B: {only_b[:10]}, or their order)")
        return False
    if a.shape != b.shape:
        print("  the number of rows differs")
        return False
    bad = differing_columns(a, b)
    print("  every column bit for bit the same" if not bad else f"  {len(bad)} columns differ: {bad[:20]}")
    ta, tb = run_a / "report" / "tables", run_b / "report" / "tables"
    if ta.is_dir() and tb.is_dir():
        names = sorted({p.name for p in ta.glob("*.csv")} | {p.name for p in tb.glob("*.csv")})
        changed = []
        for name in names:
            pa, pb = ta / name, tb / name
            if not (pa.exists() and pb.exists()):
                changed.append(f"{name} (in one run only)")
            elif pa.read_bytes() != pb.read_bytes():
                x, y = pd.read_csv(pa), pd.read_csv(pb)
                if x.shape != y.shape or list(x.columns) != list(y.columns):
                    changed.append(f"{name} (shape or columns)")
                    continue
                cols = {c: int((~((x[c] == y[c]) | (x[c].isna() & y[c].isna()))).sum()) for c in x.columns}
                changed.append(f"{name}: " + ", ".join(f"{c} ({n} values)" for c, n in cols.items() if n))
        print(f"report tables: {len(names)}, {len(names) - len(changed)} byte-identical"
              + "".join(f"\n  {c}" for c in changed))
    return not bad


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(0 if compare(Path(sys.argv[1]), Path(sys.argv[2])) else 1)
