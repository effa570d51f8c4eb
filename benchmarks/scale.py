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
``degrade``, for ``task_model``/``fit_recon``/``direct_model`` the train studies seen (at most
batches x batch size) plus the validation split (evaluated after training: thresholds, validation
loss), the test split for ``predict_clean``/``reconstruct``/``score``/``direct_score``.  A training
step's rows also give its training rate (studies trained on per second of the training batches) and
its validation rate (studies per second of the validation-loss passes) on their own: the first does
not depend on N, the second covers a split that grows with N.  ``fit_recon`` of a reconstructor that
does not train (identity, classical) reads no study: its studies/s is left out.
Writes ``benchmarks/results/scale.json`` and prints a Markdown table; with several sizes also a table
across them (:func:`across_sizes`: peak RSS at the largest N over the smallest, and the marginal
rate (N2 - N1) / (wall2 - wall1) between consecutive sizes, which leaves out a step's fixed start).

Manifest mode::

    python benchmarks/scale.py --manifest 20000 [--manifest-size 256] [--batches 20] [--shard 1024]

writes N grayscale 8-bit PNG files of 390x320 pixels (a smooth synthetic radiograph-like field, a
bright disc in the positive studies, mild noise; ``--manifest-seed``) and a manifest CSV in the
layout of docs/loaders.md (``path,patient_id,finding,sex,site``; two studies per patient, splits
assigned by patient), then runs the same plan on the ``manifest`` loader at ``--manifest-size``
(default 256): identity, classical and a U-Net (``max_batches`` = ``--batches``), one low-dose level,
the direct arm, each step in its own process.  Writing the files is timed but is not a step.
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


def audit_config(n: int, size: int, batches: int, shard: int, resamples: int,
                 reconstructors: list[str] | None = None) -> dict:
    """The benchmark's chest X-ray audit at ``n`` studies (``reconstructors``: a subset of identity,
    classical, unet; default all three)."""
    train = {"epochs": 1, "max_batches": batches, "batch_size": 32}
    cfg = {
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
    if reconstructors:
        cfg["reconstructors"] = [r for r in cfg["reconstructors"] if r["name"] in reconstructors]
    return cfg


def manifest_config(path: Path, n: int, size: int, batches: int, shard: int, resamples: int,
                    reconstructors: list[str] | None = None) -> dict:
    """The benchmark's audit of the manifest at ``path`` (``n`` PNG files) at ``size`` x ``size``."""
    cfg = audit_config(n, size, batches, shard, resamples, reconstructors)
    cfg["name"] = f"scale-manifest-{n}"
    cfg["cohorts"][0]["name"] = "manifest"
    cfg["cohorts"][0]["params"] = {"path": str(path), "target_columns": ["finding"],
                                   "group_columns": ["sex", "site"], "size": size}
    return cfg


def write_manifest_files(root: Path, n: int, seed: int = 0) -> Path:
    """N grayscale uint8 PNG files of 390x320 (W x H) under ``root/images`` and ``root/manifest.csv``.

    Each image is a smooth vertical-and-radial intensity field (a stand-in for a radiograph) with
    Gaussian noise (std 4 grey levels); a positive study (``finding`` = 1, about 30%) has a bright disc
    at a random place.  Two studies per patient; ``sex`` and ``site`` alternate by patient.
    """
    import numpy as np
    import pandas as pd
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = 320, 390
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot((yy - h / 2) / h, (xx - w / 2) / w)
    base = 60 + 120 * np.clip(1 - 1.6 * r, 0, 1) + 30 * yy / h
    rows = []
    for i in range(n):
        pid = i // 2
        finding = int(rng.random() < 0.3)
        img = base * rng.uniform(0.85, 1.15) + rng.normal(0, 4, size=(h, w))
        if finding:
            cy, cx, rad = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w, rng.uniform(12, 30)
            img += 40 * (np.hypot(yy - cy, xx - cx) < rad)
        rel = f"images/p{pid:06d}_s{i % 2}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="L").save(root / rel)
        rows.append({"path": rel, "patient_id": f"P{pid:06d}", "finding": finding,
                     "sex": "F" if pid % 2 else "M", "site": "AB"[(pid // 2) % 2]})
    path = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _child(run_dir: Path, what: str) -> None:
    """Run one step (``what`` = its id) or ``records`` in this process; print a JSON line."""
    import torch

    from reconaudit.engine.config import load_config
    from reconaudit.engine.plan import build_plan
    from reconaudit.engine.records import collect_records
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

        records, _ = collect_records(plan, store, run_dir)  # run_dir/records.parquet, cell by cell
        meta = {"analysis": cfg.analysis.model_dump(), "config": config_to_dict(cfg),
                "cohorts": cohort_meta(plan, store, cfg)}
        analyse(records, meta)
        extra = {"rows": records.n_rows}
    else:
        step = plan.steps[what]
        ctx = StepContext(store, device="cpu", threads=cfg.execution.threads, shard_studies=cfg.execution.shard_studies)
        phases = _time_training_phases()
        run_step(step, ctx)
        extra = {"phases": {k: v for k, v in phases.items() if v[0]}}
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB
    print(json.dumps({"what": what, "wall_s": wall, "peak_rss_gb": rss, **extra}))


def _time_training_phases() -> dict[str, list]:
    """Time the phases of a training step: ``{phase: [seconds, studies]}``, filled as the step runs.

    ``fit`` is the whole training call (the diagnostic models' ``train_network``, the reconstructors'
    ``run_training``), ``validate`` the validation-loss passes inside it; training alone is their
    difference.  A fixed number of batches trains in the same time at any N, while the validation
    pass grows with the validation split, so a training step's studies/s over its whole wall time
    mixes two rates whose weights change with N; these two are each comparable across N."""
    from reconaudit.recon import training as recon_training
    from reconaudit.tasks import loop, network

    phases: dict[str, list] = {"fit": [0.0, 0], "validate": [0.0, 0]}

    def timed(module, attr: str, phase: str, count) -> None:
        fn = getattr(module, attr)

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                phases[phase][0] += time.perf_counter() - t
                phases[phase][1] += count(a, k)

        setattr(module, attr, wrapper)

    timed(network, "train_network", "fit", lambda a, k: 0)
    timed(recon_training, "run_training", "fit", lambda a, k: 0)
    timed(loop, "evaluate_loss", "validate", lambda a, k: int(a[2].shape[0]))
    timed(recon_training, "_validation_loss", "validate", lambda a, k: len(a[1]))
    return phases


def _studies(kind: str, n: int, split: dict, batches: int, batch_size: dict) -> int:
    if kind in ("cohort", "degrade"):
        return n
    if kind in ("task_model", "fit_recon", "direct_model"):  # the batches trained on, then the validation split
        return min(split["train"], batches * batch_size.get(kind, 32)) + split.get("val", 0)
    return split["test"]


def run_size(n: int, args: argparse.Namespace, base: Path, *, manifest: bool = False) -> list[dict]:
    """Every step of the audit at ``n`` studies, each in a fresh process; one row per step.

    ``manifest``: the manifest-loader audit of ``n`` PNG files (written first) instead of the chest cohort."""
    from reconaudit.engine.config import load_config
    from reconaudit.engine.plan import build_plan
    from reconaudit.engine.run import input_digests

    run_dir = base / (f"manifest{n}" if manifest else f"n{n}")
    run_dir.mkdir(parents=True, exist_ok=True)
    if manifest:
        t0 = time.perf_counter()
        files = base / f"manifest{n}-files"  # outside the run directory, whose files are not inputs
        path = files / "manifest.csv"
        if not path.exists():
            write_manifest_files(files, n, args.manifest_seed)
        print(json.dumps({"n": n, "wrote_files_s": round(time.perf_counter() - t0, 1)}), flush=True)
        cfg_dict = manifest_config(path, n, args.manifest_size, args.batches, args.shard, args.resamples,
                                   args.reconstructors)
    else:
        cfg_dict = audit_config(n, args.size, args.batches, args.shard, args.resamples, args.reconstructors)
    (run_dir / "config.json").write_text(json.dumps(cfg_dict))
    cfg = load_config(cfg_dict)
    plan = build_plan(cfg, input_digests(cfg, run_dir))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    rows = []
    split = None
    todo = [s for s in plan.ordered() if not args.only or s.kind in args.only]
    for step in [*todo, *([] if args.only else [None])]:
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
        row = {"n": n, "cohort": "manifest" if manifest else "chest-xray", "step": label, "wall_s": round(res["wall_s"], 2),
               "peak_rss_gb": round(res["peak_rss_gb"], 3), "studies": studies,
               "studies_per_s": round(studies / max(res["wall_s"], 1e-9), 1)}
        ph = res.get("phases") or {}
        if "fit" in ph:  # a training step: the training batches and the validation passes on their own
            trained = min(split["train"], args.batches * {"fit_recon": 16}.get(kind, 32))
            val_s, val_n = ph.get("validate", [0.0, 0])
            row["train_studies_per_s"] = round(trained / max(ph["fit"][0] - val_s, 1e-9), 1)
            if val_n:
                row["validate_studies_per_s"] = round(val_n / max(val_s, 1e-9), 1)
        elif kind == "fit_recon":  # a reconstructor without training: the step opens the splits, reads no study
            row["studies"], row["studies_per_s"] = 0, None
        rows.append(row)
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
    ap.add_argument("--manifest", type=int, nargs="+", default=None, metavar="N",
                    help="instead of the chest cohort: audits of N PNG files through the manifest loader")
    ap.add_argument("--manifest-size", type=int, default=256, help="image side of the manifest audit")
    ap.add_argument("--manifest-seed", type=int, default=0)
    ap.add_argument("--reconstructors", nargs="+", default=None, choices=["identity", "classical", "unet"],
                    help="a subset of the reconstructors (default: all three)")
    ap.add_argument("--only", nargs="+", default=None, metavar="KIND",
                    help="run only the steps of these kinds (e.g. cohort degrade), in plan order, no records")
    ap.add_argument("--workdir", type=Path, default=None, help="where the stores go (default: a temporary directory)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    args = ap.parse_args()
    if args.step:
        _child(Path(args.step[0]), args.step[1])
        return
    base = args.workdir or Path(tempfile.mkdtemp(prefix="reconaudit-scale-"))
    rows = []
    runs = [(n, True) for n in args.manifest] if args.manifest else [(n, False) for n in args.sizes]
    for n, manifest in runs:
        rows.extend(run_size(n, args, base, manifest=manifest))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out), "workdir": str(base)},
                                        "rows": rows}, indent=2, default=str))
    print("\n| cohort | N | step | wall (s) | peak RSS (GB) | studies/s | training / validation studies/s |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        phases = (f"{r['train_studies_per_s']} / {r.get('validate_studies_per_s', '-')}"
                  if "train_studies_per_s" in r else "")
        print(f"| {r['cohort']} | {r['n']:,} | {r['step']} | {r['wall_s']} | {r['peak_rss_gb']} | "
              f"{'-' if r['studies_per_s'] is None else r['studies_per_s']} | {phases} |")
    if len({r["n"] for r in rows}) > 1:
        print(across_sizes(rows))


def across_sizes(rows: list[dict]) -> str:
    """A Markdown table comparing each step kind across the sizes run: peak RSS at the largest N over
    the smallest, and the marginal rate between consecutive sizes, (N2 - N1) / (wall2 - wall1)
    studies/s, which leaves out the step's fixed start (opening the store and table, building the
    networks), a few seconds that dominate the wall time of a small run."""
    by: dict[tuple, list[dict]] = {}
    for r in rows:
        by.setdefault((r["cohort"], r["step"]), []).append(r)
    out = ["| cohort | step | peak RSS largest / smallest N | marginal studies/s between consecutive N | ratio of the "
           "marginal rates | training studies/s at each N |", "| --- | --- | --- | --- | --- | --- |"]
    for (cohort, step), rs in by.items():
        rs = sorted(rs, key=lambda r: r["n"])
        if len(rs) < 2:
            continue
        rss = rs[-1]["peak_rss_gb"] / rs[0]["peak_rss_gb"]
        rates = []
        for a, b in zip(rs, rs[1:], strict=False):
            dn, dt = (b["studies"] or 0) - (a["studies"] or 0), b["wall_s"] - a["wall_s"]
            rates.append(dn / dt if dn > 0 and dt > 0 else None)
        shown = " / ".join("-" if v is None else f"{v:,.0f}" for v in rates)
        ok = [v for v in rates if v]
        ratio = f"{max(ok) / min(ok):.2f}" if len(ok) > 1 else "-"
        train = " / ".join(f"{r['train_studies_per_s']:,.0f}" for r in rs if "train_studies_per_s" in r)
        out.append(f"| {cohort} | {step} | {rss:.2f}x | {shown} | {ratio} | {train} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
