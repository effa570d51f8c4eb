"""Time a patient-level bootstrap of AUROC and fairness gaps: reconaudit's vectorized engine vs a loop.

The vectorized run: ``reconaudit.metrics.bootstrap_metrics`` with ``n_resamples`` patient-level
resamples of AUROC, equalized-odds and equal-opportunity differences (plus demographic parity,
skewed error ratio, sensitivity, specificity, which come from the same counts) for three attributes,
with percentile and BCa intervals.  The baseline: the same resampling weights, and per resample
``fairlearn.metrics.equalized_odds_difference`` / ``equal_opportunity_difference`` per attribute and
``sklearn.metrics.roc_auc_score`` on the resampled rows (``--loop-mode weights``: passing the
resample weights as ``sample_weight`` instead); it is timed on a few resamples and extrapolated
linearly to ``n_resamples``.

Usage::

    python benchmarks/fairness.py --n-studies 100000 --n-resamples 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def make_cohort(n_studies: int, studies_per_patient: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_pat = max(1, int(n_studies / studies_per_patient))
    pid = np.sort(rng.integers(0, n_pat, n_studies))
    _, pid = np.unique(pid, return_inverse=True)
    n_pat = int(pid.max()) + 1
    attrs = {
        "sex": rng.choice(["F", "M"], n_pat, p=[0.45, 0.55])[pid],
        "age_band": rng.choice(["0-40", "40-60", "60-80", "80+"], n_pat, p=[0.2, 0.35, 0.35, 0.1])[pid],
        "race": rng.choice(["A", "B", "C", "D", "E"], n_pat, p=[0.6, 0.15, 0.12, 0.08, 0.05])[pid],
    }
    y = (rng.random(n_studies) < 0.3).astype(np.int8)
    score = 1 / (1 + np.exp(-rng.normal(-1 + 1.5 * y, 1.0)))
    score = np.round(score, 3)  # realistic ties
    return {"patient_ids": pid, "y": y, "score": score, "pred": (score >= 0.4).astype(np.int8), **attrs}


def run_vectorized(c: dict, n_resamples: int, seed: int, chunk_size: int) -> tuple[float, object]:
    from reconaudit.metrics import bootstrap_metrics

    t0 = time.perf_counter()
    res = bootstrap_metrics(
        c["y"],
        patient_ids=c["patient_ids"],
        sensitive_features={k: c[k] for k in ("sex", "age_band", "race")},
        y_pred=c["pred"],
        y_score=c["score"],
        n_resamples=n_resamples,
        seed=seed,
        chunk_size=chunk_size,
    )
    return time.perf_counter() - t0, res


def run_loop(c: dict, n_loop: int, seed: int, mode: str = "index") -> float:
    from fairlearn.metrics import equal_opportunity_difference, equalized_odds_difference
    from sklearn.metrics import roc_auc_score

    from reconaudit.metrics import bootstrap_weights

    w = bootstrap_weights(c["patient_ids"], n_loop, np.random.default_rng(seed))
    t0 = time.perf_counter()
    for b in range(n_loop):
        if mode == "weights":  # resample weights passed as sample_weight
            sw, idx = w[b], slice(None)
        else:  # the resampled rows themselves (each study repeated by its weight)
            sw, idx = None, np.repeat(np.arange(len(c["y"])), w[b])
        y, p = c["y"][idx], c["pred"][idx]
        roc_auc_score(y, c["score"][idx], sample_weight=sw)
        for k in ("sex", "age_band", "race"):
            equalized_odds_difference(y, p, sensitive_features=c[k][idx], sample_weight=sw)
            equal_opportunity_difference(y, p, sensitive_features=c[k][idx], sample_weight=sw)
    return (time.perf_counter() - t0) / n_loop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-studies", type=int, default=100_000)
    ap.add_argument("--n-resamples", type=int, default=1000)
    ap.add_argument("--studies-per-patient", type=float, default=4.0)
    ap.add_argument("--loop-resamples", type=int, default=3, help="resamples timed for the loop baseline")
    ap.add_argument(
        "--loop-mode",
        choices=["index", "weights"],
        default="index",
        help="baseline resamples by indexing rows (default) or by passing sample_weight",
    )
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fairness.json")
    args = ap.parse_args()

    c = make_cohort(args.n_studies, args.studies_per_patient, args.seed)
    n_pat = int(c["patient_ids"].max()) + 1
    t_vec, res = run_vectorized(c, args.n_resamples, args.seed, args.chunk_size)
    per_loop = run_loop(c, args.loop_resamples, args.seed, args.loop_mode)
    t_loop = per_loop * args.n_resamples
    tab = res.table
    keep = tab["metric"].isin(["auroc", "equalized_odds_difference", "equal_opportunity_difference"])
    out = {
        "n_studies": args.n_studies,
        "n_patients": n_pat,
        "n_resamples": args.n_resamples,
        "attributes": {k: int(len(np.unique(c[k]))) for k in ("sex", "age_band", "race")},
        "vectorized_seconds": round(t_vec, 3),
        "vectorized_includes": "percentile + BCa (jackknife over patients) intervals; AUROC, EOD, EOpp, DPD, SER, sens, spec",
        "loop_seconds_per_resample": round(per_loop, 4),
        "loop_resamples_timed": args.loop_resamples,
        "loop_mode": args.loop_mode,
        "loop_seconds_extrapolated": round(t_loop, 1),
        "loop_note": f"timed on {args.loop_resamples} resamples, extrapolated linearly to {args.n_resamples}",
        "speedup": round(t_loop / t_vec, 1),
        "threads": {
            k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
        },
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "numpy": np.__version__,
        "estimates": tab[keep][
            ["metric", "attribute", "estimate", "ci_low", "ci_high", "bca_low", "bca_high"]
        ]
        .round(4)
        .to_dict(orient="records"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(
        f"{args.n_studies} studies, {n_pat} patients, {args.n_resamples} patient-level resamples, 3 attributes\n"
        f"vectorized (reconaudit): {t_vec:.2f} s\n"
        f"loop (fairlearn + sklearn): {per_loop:.3f} s/resample x {args.n_resamples} = {t_loop:.0f} s "
        f"(extrapolated from {args.loop_resamples})\n"
        f"speedup: {t_loop / t_vec:.0f}x\nwritten: {args.out}"
    )


if __name__ == "__main__":
    main()
