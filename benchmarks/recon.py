"""Throughput of every reconstructor and IR-SDE's quality against its number of sampling steps.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/recon.py --sizes 64 256 --n 32 --n-large 4

Prints a table and writes ``benchmarks/results/recon.json``.  Training throughput is studies per
second over one epoch of ``fit`` (validation included), by wall clock and per CPU-second of the
process (the latter less sensitive to other load on a shared machine); reconstruction throughput is studies per second
of ``reconstruct`` (IR-SDE: the reverse SDE with all ``T`` steps).  The IR-SDE steps curve fits at the
smallest size for ``--irsde-epochs`` epochs on noisy smooth phantoms and reports the validation PSNR
with ``T``, ``T/2``, ``T/5`` and ``T/10`` steps (``sde`` and ``ode`` samplers).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from reconaudit.physics.base import Degraded
from reconaudit.recon import PairSet, make_reconstructor


def phantoms(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth images in [0, 1]: a sum of 3 Gaussian blobs on a disc."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    c = torch.rand(n, 3, 2, generator=g) * 1.2 - 0.6
    w = torch.rand(n, 3, generator=g) * 0.3 + 0.2
    a = torch.rand(n, 3, generator=g) * 0.5 + 0.3
    d2 = (yy - c[..., 0, None, None]) ** 2 + (xx - c[..., 1, None, None]) ** 2
    img = (a[..., None, None] * torch.exp(-d2 / (2 * w[..., None, None] ** 2))).sum(1)
    disc = ((yy**2 + xx**2) < 0.85).float()
    img = (0.15 + img) * disc
    return (img / img.amax(dim=(-2, -1), keepdim=True) * 0.9).unsqueeze(1)


def problem(n: int, size: int, seed: int = 0, sigma: float = 0.1) -> tuple[PairSet, PairSet]:
    """Noisy smooth phantoms split 3:1 into train and validation pairs."""
    clean = phantoms(n, size, seed)
    g = torch.Generator().manual_seed(seed + 1)
    deg = Degraded(clean + sigma * torch.randn(clean.shape, generator=g))
    k = max(1, n // 4)
    ids = [f"s{i}" for i in range(n)]
    return (
        PairSet(deg.subset(range(n - k)), clean[: n - k], ids[: n - k]),
        PairSet(deg.subset(range(n - k, n)), clean[n - k:], ids[n - k:]),
    )


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean PSNR (peak 1) over studies."""
    mse = ((x.reshape(ref.shape) - ref) ** 2).mean(dim=(1, 2, 3))
    return float((10 * torch.log10(1.0 / mse)).mean())


MODELS = {
    "identity": {},
    "classical": {},
    "unet": {"epochs": 1},
    "pix2pix": {"epochs": 1},
    "irsde": {"epochs": 1},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--n", type=int, default=32, help="studies at sizes <= 64")
    ap.add_argument("--n-large", type=int, default=4, help="studies at sizes > 64")
    ap.add_argument("--irsde-epochs", type=int, default=10)
    ap.add_argument("--irsde-n", type=int, default=32, help="studies (3/4 train, 1/4 validation) of the steps curve")
    ap.add_argument("--irsde-throughput-steps", type=int, default=None,
                    help="sampling steps for the IR-SDE throughput rows (default: T)")
    ap.add_argument("--irsde-prediction", default="noise", choices=["x0", "noise"],
                    help="IR-SDE parameterisation for the throughput rows")
    ap.add_argument("--curve-predictions", nargs="+", default=["x0", "noise"], choices=["x0", "noise"])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "recon.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    import monai.networks.nets  # noqa: F401  (import once, outside the timings)

    rows = []
    for size in args.sizes:
        n = args.n if size <= 64 else args.n_large
        train, val = problem(n, size)
        for name, params in MODELS.items():
            if name == "irsde" and args.irsde_throughput_steps:
                params = {**params, "steps": args.irsde_throughput_steps}
            if name == "irsde":
                params = {**params, "prediction": args.irsde_prediction}
            rec = make_reconstructor(name, **params)
            t0, c0 = time.perf_counter(), time.process_time()
            rec.fit(train, val, seed=0)
            t_fit, c_fit = time.perf_counter() - t0, time.process_time() - c0
            t0, c0 = time.perf_counter(), time.process_time()
            out = rec.reconstruct(val.degraded, seeds=list(range(len(val))))
            t_rec, c_rec = time.perf_counter() - t0, time.process_time() - c0
            row = {
                "model": name, "size": size, "n_train": len(train), "n_val": len(val),
                "train_studies_per_s": (len(train) / t_fit) if rec.trainable else None,
                "recon_studies_per_s": len(val) / t_rec,
                "train_studies_per_cpu_s": (len(train) / c_fit) if rec.trainable else None,
                "recon_studies_per_cpu_s": len(val) / max(c_rec, 1e-9),
                "steps": getattr(rec, "steps", None),
                "prediction": getattr(getattr(rec, "hp", None), "prediction", None),
                "psnr_val": psnr(out, val.clean), "psnr_identity": psnr(val.degraded.image, val.clean),
            }
            rows.append(row)
            write(args.out, rows, None)
            print(f"{size:4d} {name:10s} train {row['train_studies_per_s'] or float('nan'):8.2f} st/s "
                  f"({row['train_studies_per_cpu_s'] or float('nan'):8.2f} st/cpu-s)  "
                  f"recon {row['recon_studies_per_s']:8.2f} st/s ({row['recon_studies_per_cpu_s']:8.2f} st/cpu-s)  "
                  f"PSNR {row['psnr_val']:.2f}", flush=True)
    # IR-SDE quality against sampling steps, after a short fit at the smallest size
    size = min(args.sizes)
    train, val = problem(args.irsde_n, size, seed=3)
    curve = []
    for prediction in args.curve_predictions:
        rec = make_reconstructor("irsde", epochs=args.irsde_epochs, lr=2e-3, prediction=prediction, patience=100)
        rec.fit(train, val, seed=0)
        T = rec.hp.T
        for steps in sorted({T, T // 2, T // 5, T // 10}, reverse=True):
            for sampler in ("sde", "ode"):
                rec.steps, rec.sampler = steps, sampler
                t0 = time.perf_counter()
                out = rec.reconstruct(val.degraded, seeds=list(range(len(val))))
                dt = time.perf_counter() - t0
                curve.append({"prediction": prediction, "steps": steps, "sampler": sampler,
                              "psnr": psnr(out, val.clean), "recon_studies_per_s": len(val) / dt})
                print(f"irsde {prediction:5s} {sampler} steps {steps:4d}: PSNR {curve[-1]['psnr']:.2f} "
                      f"({curve[-1]['recon_studies_per_s']:.2f} st/s)", flush=True)
                write(args.out, rows, {"size": size, "n_train": len(train), "epochs": args.irsde_epochs,
                                       "psnr_identity": psnr(val.degraded.image, val.clean), "curve": curve})
    print(f"wrote {args.out}")


def write(out: Path, rows: list[dict], curve: dict | None) -> None:
    """Write what has been measured so far to ``out`` (JSON)."""
    result = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cuda": torch.cuda.is_available()},
        "throughput": rows,
        "irsde_steps": curve,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
