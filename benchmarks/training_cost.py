"""Expected training and sampling cost of the paper configs' reconstructors, counted in FLOPs.

For every learned reconstructor of ``paper-xray`` and ``paper-mri`` (their own channels and
settings at 256x256) this counts the floating-point operations of one forward pass on one study
with ``torch.utils.flop_counter.FlopCounterMode`` (pix2pix: generator and two discriminator passes),
takes a training step as 3x a forward pass (forward + backward), and multiplies by the training
studies (60 % of the cohort) and ``epochs`` (the upper bound: early stopping may end sooner).
IR-SDE's reconstruction cost is ``T`` network passes per sample.  GPU time is then an estimate,
``FLOPs / sustained rate``, with the sustained rate an assumption (``--tflops``, default 40 TFLOP/s:
mixed precision on one A100/H100-class GPU reaches roughly 10-30 % of its tensor peak on these
small convolutional networks); it ignores data loading and validation.  Nothing here is measured
on a GPU::

    PYTHONPATH=src python benchmarks/training_cost.py --tflops 40

Writes ``benchmarks/results/training_cost.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from reconaudit.engine.config import load_config
from reconaudit.recon import make_reconstructor


def forward_flops(name: str, params: dict, size: int) -> float:
    """FLOPs of one forward pass of the reconstructor's networks on one (1, 1, size, size) study."""
    rec = make_reconstructor(name, **params)
    rec._ensure_built()
    mods = rec.modules
    x = torch.rand(1, 1, size, size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        if name == "irsde":
            mods["net"](x, x, torch.tensor([1]))
        else:
            y = mods["net"](x)
            if "disc" in mods:  # pix2pix: D on the real and on the fake pair
                mods["disc"](x, y)
                mods["disc"](x, y)
    return float(counter.get_total_flops())


def main() -> None:
    """Print the cost table for the paper configs."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="*", default=["paper-xray", "paper-mri"])
    ap.add_argument("--tflops", type=float, default=40.0, help="assumed sustained TFLOP/s of one GPU")
    ap.add_argument("--out", default="benchmarks/results/training_cost.json")
    args = ap.parse_args()
    rows = []
    for name in args.configs:
        cfg = load_config(name)
        for c in cfg.cohorts:
            size = int(c.params.get("size", 256))
            n = int(c.params.get("n_studies", 0)) or int(c.params["n_subjects"]) * int(c.params.get("slices_per_subject", 1))
            n_train, n_test = int(0.6 * n), int(0.2 * n)
            n_levels = sum(len(d.levels) for d in c.degradations)
            for r in cfg.reconstructors:
                if r.name in ("identity", "classical"):
                    continue
                fwd = forward_flops(r.name, r.params, size)
                epochs = int(r.params.get("epochs", 3))
                train = 3.0 * fwd * n_train * epochs
                passes = int(r.params.get("T", 100)) * int(r.samples) if r.name == "irsde" else 1
                recon = fwd * n_test * passes
                hours = lambda f: f / (args.tflops * 1e12) / 3600  # noqa: E731
                rows.append({
                    "config": name, "cohort": c.name, "model": r.name, "size": size, "gflops_forward": fwd / 1e9,
                    "train_studies": n_train, "epochs": epochs, "train_gpu_h_per_fit": hours(train),
                    "recon_gpu_h_per_fit": hours(recon), "fits_per_seed": n_levels,
                })
                print(f"{name} {r.name}: {fwd / 1e9:.1f} GFLOP/forward at {size}, {n_train} train studies x "
                      f"{epochs} epochs: ~{hours(train):.2f} GPU-h per fit, reconstruction ~{hours(recon):.3f} GPU-h "
                      f"({n_levels} fits per seed)", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"tflops": args.tflops, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
