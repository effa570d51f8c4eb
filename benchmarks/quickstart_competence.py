"""Are the quickstart's learned reconstructors better than doing nothing?

Trains each learned reconstructor of the quickstart config (or of ``--config``) on the config's
cohorts and levels, exactly as the audit does (train/val/test splits of the cohort, per-study
degradation seeds), and prints the test PSNR / SSIM of identity and of each model, with the
training wall time.  Much faster than a full audit (no diagnostic models, no statistics), so it is
the loop to tune reconstructor settings in::

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/quickstart_competence.py \
        --cohorts brain-glioma --models irsde --set irsde.epochs=8

``--set model.key=value`` overrides a reconstructor parameter (value parsed as YAML).
Writes ``benchmarks/results/quickstart_competence.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from reconaudit.cohorts import make_cohort
from reconaudit.engine.config import load_config
from reconaudit.metrics import psnr, ssim
from reconaudit.physics import make_degradation
from reconaudit.physics.base import Degraded
from reconaudit.recon import PairSet, make_reconstructor
from reconaudit.seeding import study_seeds


def pairs(cohort, deg: Degraded, split: str) -> PairSet:
    """The (degraded, clean) pairs of one split."""
    idx = cohort.indices(split)
    return PairSet(deg.subset(idx), cohort.images[torch.as_tensor(idx)])


def main() -> None:
    """Parse arguments, fit and evaluate, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="quickstart")
    ap.add_argument("--cohorts", nargs="*", default=None)
    ap.add_argument("--levels", nargs="*", type=float, default=None)
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--set", nargs="*", default=[], dest="overrides")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/quickstart_competence.json")
    args = ap.parse_args()
    cfg = load_config(args.config)
    overrides: dict[str, dict] = {}
    for item in args.overrides:
        key, value = item.split("=", 1)
        model, param = key.split(".", 1)
        overrides.setdefault(model, {})[param] = yaml.safe_load(value)
    recs = [r for r in cfg.reconstructors if r.name not in ("identity", "classical")]
    if args.models:
        recs = [r for r in recs if r.name in args.models]
    rows = []
    for c in cfg.cohorts:
        if args.cohorts and c.name not in args.cohorts:
            continue
        cohort = make_cohort(c.name, **c.params)
        ids = cohort.table["study_id"].astype(str).tolist()
        te = torch.as_tensor(cohort.indices("test"))
        clean_te = cohort.images[te].numpy()
        for d in c.degradations:
            for level in d.levels:
                if args.levels and float(level) not in args.levels:
                    continue
                op = make_degradation(d.name, level, **d.params)
                seeds = study_seeds(f"degrade/{d.name}/{level}", args.seed, ids)
                deg = op(cohort.images, seeds, **({"kspace": cohort.kspace} if cohort.kspace is not None
                                                  and getattr(op, "accepts_kspace", False) else {}))
                test = deg.subset(te.tolist())
                base = test.image.clamp(0, 1).numpy()
                row = {"cohort": c.name, "level": level,
                       "identity_psnr": float(np.mean(psnr(base, clean_te))),
                       "identity_ssim": float(np.mean(ssim(base, clean_te)))}
                for r in recs:
                    params = {**r.params, **overrides.get(r.name, {})}
                    rec = make_reconstructor(r.name, **params)
                    t0 = time.perf_counter()
                    hist = rec.fit(pairs(cohort, deg, "train"), pairs(cohort, deg, "val"), seed=args.seed)
                    t1 = time.perf_counter()
                    k = int(getattr(r, "samples", 1) or 1)
                    out = rec.reconstruct(test, seeds=list(range(len(te))), samples=k)
                    if k > 1:
                        out = out.clamp(0, 1).mean(1)
                    t2 = time.perf_counter()
                    x = out.clamp(0, 1).numpy()
                    row[f"{r.name}_psnr"] = float(np.mean(psnr(x, clean_te)))
                    row[f"{r.name}_ssim"] = float(np.mean(ssim(x, clean_te)))
                    row[f"{r.name}_fit_s"] = round(t1 - t0, 1)
                    row[f"{r.name}_recon_s"] = round(t2 - t1, 1)
                    row[f"{r.name}_best_epoch"] = hist.get("best_epoch")
                    print(f"{c.name} {level:g} {r.name}: psnr {row[f'{r.name}_psnr']:.2f} "
                          f"(identity {row['identity_psnr']:.2f}) ssim {row[f'{r.name}_ssim']:.3f} "
                          f"(identity {row['identity_ssim']:.3f}) fit {t1 - t0:.0f}s recon {t2 - t1:.0f}s "
                          f"best epoch {hist.get('best_epoch')}/{hist.get('epochs_run')}", flush=True)
                rows.append(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"overrides": overrides, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
