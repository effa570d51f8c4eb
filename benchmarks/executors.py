"""Wall time of the local executor (1 and 2 workers) and the Ray executor on a reduced quickstart grid.

Usage::

    python benchmarks/executors.py --scale 0.25 --levels 1

Each executor runs the same grid into a fresh temporary directory, in a fresh Python process (so no
cache or import carries over from one run to the next); the report is not built.  The grid is the
bundled ``quickstart`` config scaled down so the benchmark stays affordable on a shared 2-core
machine: ``n_studies`` / ``n_subjects`` and every ``epochs`` are multiplied by ``--scale`` (at least
1 epoch, at least 48 chest studies and 16 brain subjects), IR-SDE sampling steps likewise (at least
5), and only the last ``--levels`` levels of each degradation are kept (the last chest level is the
one with the mitigated cell).  Only the executor is timed: it computes every step of the plan into an
empty store; collecting the records afterwards is the same work for every executor.

Settings: ``local:1`` runs steps one after another in one process with torch on every core (its
default), ``local:1:1`` the same with torch on 1 thread; ``local:2`` runs independent steps in a
pool of 2 processes with 1 torch thread each; ``ray:2`` starts a local Ray instance with ``num_cpus=2`` (its start-up is timed separately) and
runs each step as a 1-CPU task, torch pinned to 1 thread.  Wall times are the medians of
``--repeats`` runs.  Writes ``benchmarks/results/executors.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

SETTINGS = ["local:1", "local:1:1", "local:2", "ray:2"]


def reduced_quickstart(scale: float, levels: int) -> dict:
    """The bundled quickstart config with fewer studies, fewer epochs and fewer levels."""
    from reconaudit.engine.config import bundled_config_path

    cfg = yaml.safe_load(bundled_config_path("quickstart").read_text())
    cfg = copy.deepcopy(cfg)
    cfg["name"] = f"quickstart-x{scale:g}"
    for c in cfg["cohorts"]:
        p = c["params"]
        if "n_studies" in p:
            p["n_studies"] = max(48, round(p["n_studies"] * scale))
        if "n_subjects" in p:
            p["n_subjects"] = max(16, round(p["n_subjects"] * scale))
        for t in c.get("tasks", {}).values():
            if "epochs" in t.get("params", {}):
                t["params"]["epochs"] = max(1, round(t["params"]["epochs"] * scale))
        for d in c["degradations"]:
            d["levels"] = d["levels"][-levels:]
    for r in cfg["reconstructors"]:
        p = r.get("params", {})
        if "epochs" in p:
            p["epochs"] = max(1, round(p["epochs"] * scale))
        if "steps" in p:
            p["steps"] = max(5, round(p["steps"] * scale))
    for m in cfg.get("mitigations", []):
        if m.get("levels") is not None:
            kept = {float(v) for c in cfg["cohorts"] for d in c["degradations"] for v in d["levels"]}
            m["levels"] = [v for v in m["levels"] if float(v) in kept] or None
            if m["levels"] is None:
                m["levels"] = [-1.0]  # no level left: the mitigation applies nowhere
    cfg["device"] = "cpu"
    return cfg


def one_run(config_path: str, executor: str, workers: int, out_dir: str, threads: int = 0) -> dict:
    """Plan the audit and let one executor compute every step in this process; return timings.

    Only the executor is timed (every step of the plan into an empty store); collecting the records
    and the report afterwards is the same work whichever executor ran the steps.
    """
    import torch

    from reconaudit.engine.config import load_config
    from reconaudit.engine.executors import ContextSpec, make_executor
    from reconaudit.engine.plan import build_plan
    from reconaudit.engine.store import open_store

    if threads:
        torch.set_num_threads(threads)
    cfg = load_config(config_path)
    init_s = 0.0
    if executor == "ray":
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=workers, object_store_memory=100 * 1024 * 1024, include_dashboard=False,
                 log_to_driver=False)
        init_s = time.perf_counter() - t0
    plan = build_plan(cfg)
    store = open_store(Path(out_dir) / "store")
    ex = make_executor(executor, workers,
                       resources={k: v.model_dump() for k, v in cfg.execution.resources.items()})
    t0 = time.perf_counter()
    s = ex.run(plan.ordered(), ContextSpec(store.url, device=cfg.device, mixed_precision=cfg.execution.mixed_precision),
               cfg.execution.retries)
    wall = time.perf_counter() - t0
    if executor == "ray":
        import ray

        ray.shutdown()
    if s.failed:
        raise RuntimeError(f"{executor}:{workers}: {len(s.failed)} steps failed, first: {s.failed[0].traceback}")
    return {"wall_s": wall, "ray_init_s": init_s, "steps": len(plan.steps), "cells": len(plan.cells),
            "computed": len(s.computed), "failed": len(s.failed), "step_s_sum": sum(s.seconds.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=0.25, help="multiplier of studies and epochs (quickstart = 1)")
    ap.add_argument("--levels", type=int, default=1, help="levels kept per degradation (the last ones)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--settings", nargs="+", default=SETTINGS,
                    help="executor:workers[:threads] (ray:2 = Ray with num_cpus=2; local:1:1 = serial, "
                         "torch on 1 thread)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "executors.json")
    ap.add_argument("--one", nargs=4, metavar=("CONFIG", "EXECUTOR", "WORKERS", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.one:
        with tempfile.TemporaryDirectory(prefix="reconaudit-bench-") as d:
            print(json.dumps(one_run(args.one[0], args.one[1], int(args.one[2]), d, int(args.one[3]))))
        return

    cfg = reduced_quickstart(args.scale, args.levels)
    rows = []
    with tempfile.TemporaryDirectory(prefix="reconaudit-bench-cfg-") as d:
        cfg_path = Path(d) / "config.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        for setting in args.settings:
            executor, workers, threads = (setting.split(":") + ["0"])[:3]
            runs = []
            for _ in range(args.repeats):
                env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
                proc = subprocess.run(
                    [sys.executable, __file__, "--one", str(cfg_path), executor, workers, threads],
                    env=env, capture_output=True, text=True, check=False,
                )
                if proc.returncode != 0:
                    raise SystemExit(f"{setting} failed:\n{proc.stderr[-4000:]}")
                runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            row = {"executor": executor, "workers": int(workers), "torch_threads": int(threads) or None,
                   "wall_s": statistics.median(r["wall_s"] for r in runs),
                   "ray_init_s": statistics.median(r["ray_init_s"] for r in runs),
                   "step_s_sum": statistics.median(r["step_s_sum"] for r in runs),
                   "steps": runs[0]["steps"], "cells": runs[0]["cells"],
                   "failed": max(r["failed"] for r in runs), "runs": runs}
            rows.append(row)
            print(f"{setting}: {row['wall_s']:.1f} s", file=sys.stderr)
    base = rows[0]["wall_s"]
    result = {
        "benchmark": "executors",
        "scale": args.scale,
        "levels": args.levels,
        "repeats": args.repeats,
        "config": cfg,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "load_avg_at_end": list(os.getloadavg())},
        "results": [{k: v for k, v in r.items() if k != "runs"} | {"speedup_vs_first": base / r["wall_s"]}
                    for r in rows],
        "runs": {s: r["runs"] for s, r in zip(args.settings, rows)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(markdown_table(result["results"]))


def markdown_table(results: list[dict]) -> str:
    """The Markdown table of ``results`` (rows of ``executors.json``)."""
    lines = ["| executor | workers / Ray CPUs | torch threads per step | wall time (s) | Ray start-up (s) | "
             "sum of step times (s) | relative to the first |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        threads = r.get("torch_threads") or ("1" if r["workers"] > 1 or r["executor"] == "ray" else "torch default")
        init = f"{r['ray_init_s']:.1f}" if r["executor"] == "ray" else "–"
        lines.append(f"| {r['executor']} | {r['workers']} | {threads} | {r['wall_s']:.1f} | {init} | "
                     f"{r['step_s_sum']:.1f} | {r['speedup_vs_first']:.2f}× |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
