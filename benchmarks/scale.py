"""Peak memory, wall time and studies/s of every step kind of a chest X-ray audit at several cohort sizes.

Usage::

    python benchmarks/scale.py --sizes 2000 20000 [--size 64] [--batches 200] [--shard 1024]

For each N the audit is the synthetic ``chest-xray`` cohort of N studies at ``--size`` x ``--size``,
one low-dose level (1,000 photons), the reconstructors identity, classical and a U-Net, and the direct
arm; every trained model (the classifier, the U-Net, the direct classifier) trains one epoch of at
most ``--batches`` mini-batches, so training streams over the store in a time that does not grow with
N.  Every step of the plan runs in its own fresh Python process (``--step`` below), so its peak RSS
(``ru_maxrss``, which includes the ~0.3-0.4 GB of Python, torch and the libraries) is its own; wall
time is measured inside the process, without the imports.  The records are then collected and the
analysis computes its bootstrap intervals (``--resamples``, default 1,000) in one more process.

``studies/s`` divides the studies a step touches by its wall time: the cohort's N for ``cohort`` and
``degrade``, the train split for ``task_model``/``fit_recon``/``direct_model`` (studies seen: at most
batches x batch size), the test split for ``predict_clean``/``reconstruct``/``score``/``direct_score``.
Writes ``benchmarks/results/scale.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]  # this checkout's package, whatever is installed


def audit_config(n: int, size: int, batches: int, shard: int, resamples: int) -> dict:
    """The benchmark's chest X-ray audit at ``n`` studies."""
    train = {"epochs": 1, "max_batches": batches, "batch_size": 32}
    return {
        "name": f"scale-{n}",
        "seeds": [0],
        "device": "cpu",
        "cohorts": [{
            "name": "chest-xray",
            "params": {"n_studies": n, "size": size},
            "tasks": {"classification": {"arch": "small-cnn", "params": dict(train)}},
            "degradations": [{"name": "lowdose-xray", "levels": [1000], "params": {"model": "projection"}}],
        }],
        "reconstructors": [{"name": "identity"}, {"name": "classical"},
                           {"name": "unet", "params": {"epochs": 1, "max_batches": batches, "batch_size": 16}}],
        "direct": {"enabled": True, "input": "image"},
        "evaluation": {"examples": 4},
        "analysis": {"n_resamples": resamples},
        "execution": {"shard_studies": shard, "threads": 1},
    }


def _child(run_dir: Path, what: str) -> None:
    """Run one step (``what`` = its id) or ``records`` in this process; print a JSON line."""
    import torch

    from reconaudit.engine.config import load_config
    from reconaudit.engine.plan import build_plan
    from reconaudit.engine.records import collect_records, write_records
    from reconaudit.engine.run import input_digests, store_for
    from reconaudit.engine.steps import StepContext, run_step

    cfg = load_config(json.loads((run_dir / "config.json").read_text()))
    torch.set_num_threads(cfg.execution.threads or 1)
    plan = build_plan(cfg, input_digests(cfg, run_dir))
    store = store_for(cfg, run_dir)
    t0 = time.perf_counter()
    if what == "records":
        from reconaudit.engine.config import config_to_dict
        from reconaudit.engine.run import cohort_meta
        from reconaudit.report.analysis import analyse

        records, _ = collect_records(plan, store, run_dir)
        write_records(records, run_dir)
        meta = {"analysis": cfg.analysis.model_dump(), "config": config_to_dict(cfg),
                "cohorts": cohort_meta(plan, store, cfg)}
        analyse(records, meta)
        extra = {"rows": len(records)}
    else:
        step = plan.steps[what]
        ctx = StepContext(store, device="cpu", threads=cfg.execution.threads, shard_studies=cfg.execution.shard_studies)
        run_step(step, ctx)
        extra = {}
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB
    print(json.dumps({"what": what, "wall_s": wall, "peak_rss_gb": rss, **extra}))


def _studies(kind: str, n: int, split: dict, batches: int, batch_size: dict) -> int:
    if kind in ("cohort", "degrade"):
        return n
    if kind in ("task_model", "fit_recon", "direct_model"):
        return min(split["train"], batches * batch_size.get(kind, 32))
    return split["test"]


def run_size(n: int, args: argparse.Namespace, base: Path) -> list[dict]:
    """Every step of the audit at ``n`` studies, each in a fresh process; one row per step."""
    from reconaudit.engine.config import load_config
    from reconaudit.engine.plan import build_plan
    from reconaudit.engine.run import input_digests

    run_dir = base / f"n{n}"
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_dict = audit_config(n, args.size, args.batches, args.shard, args.resamples)
    (run_dir / "config.json").write_text(json.dumps(cfg_dict))
    cfg = load_config(cfg_dict)
    plan = build_plan(cfg, input_digests(cfg, run_dir))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    rows = []
    split = None
    for step in [*plan.ordered(), None]:
        what = "records" if step is None else step.id
        out = subprocess.run([sys.executable, __file__, "--step", str(run_dir), what], env=env, check=True,
                             capture_output=True, text=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        kind = "records+analysis" if step is None else step.kind
        if split is None and step is not None and step.kind == "cohort":
            import pandas as pd

            t = pd.read_parquet(run_dir / "store" / "cohort" / step.key / "table.parquet", columns=["split"])
            split = t["split"].value_counts().to_dict()
        label = kind if step is None else f"{kind} ({step.spec.reconstructor})" if kind in (
            "fit_recon", "reconstruct") else kind
        if kind == "score":
            label = f"score ({step.spec.reconstructor})"
        studies = res.get("rows") or _studies(kind, n, split, args.batches, {"fit_recon": 16})
        rows.append({"n": n, "step": label, "wall_s": round(res["wall_s"], 2),
                     "peak_rss_gb": round(res["peak_rss_gb"], 3), "studies": studies,
                     "studies_per_s": round(studies / max(res["wall_s"], 1e-9), 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--step", nargs=2, metavar=("RUN_DIR", "STEP"), help=argparse.SUPPRESS)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000, 100000])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--shard", type=int, default=1024)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--workdir", type=Path, default=None, help="where the stores go (default: a temporary directory)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    args = ap.parse_args()
    if args.step:
        _child(Path(args.step[0]), args.step[1])
        return
    base = args.workdir or Path(tempfile.mkdtemp(prefix="reconaudit-scale-"))
    rows = []
    for n in args.sizes:
        rows.extend(run_size(n, args, base))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out), "workdir": str(base)},
                                        "rows": rows}, indent=2, default=str))
    print("\n| N | step | wall (s) | peak RSS (GB) | studies/s |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['n']:,} | {r['step']} | {r['wall_s']} | {r['peak_rss_gb']} | {r['studies_per_s']} |")


if __name__ == "__main__":
    main()
