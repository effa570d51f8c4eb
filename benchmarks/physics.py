"""Throughput of the physics operators (studies per second) and the sinogram model vs scikit-image.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/physics.py --n 32 --size 256 --threads 2

Prints a table and writes ``benchmarks/results/physics.json``. The sinogram model's Radon / FBP
operators are built once per geometry and cached; their build time is reported as ``setup_s`` and
excluded from the throughput. The scikit-image baseline runs the same simulation one study at a
time (``radon`` -> bowtie Poisson noise -> ``iradon(filter_name="hann")`` -> min-max).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from reconaudit.physics import KspaceUndersampling, LowDoseXray, RandomMasking, bowtie_profile


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random phantoms in [0, 1] (sum of Gaussian blobs), (n, 1, size, size)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    img = torch.zeros(n, size, size)
    for _ in range(6):
        c = torch.rand(n, 2, generator=g) * 1.2 - 0.6
        s = torch.rand(n, 1, 1, generator=g) * 0.3 + 0.1
        a = torch.rand(n, 1, 1, generator=g)
        img += a * torch.exp(-((yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2) / (2 * s**2))
    img = img / img.amax(dim=(1, 2), keepdim=True)
    return img.unsqueeze(1)


def _time(fn, repeats: int) -> tuple[float, float]:
    """Best wall-clock and process CPU seconds over ``repeats`` runs (CPU time is robust to a busy machine)."""
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best, best_cpu


def _skimage_sinogram(images: np.ndarray, photons: float, n_angles: int, seeds: list[int]) -> np.ndarray:
    """The sinogram model, one study at a time with scikit-image (the reference implementation)."""
    from skimage.transform import iradon, radon

    theta = np.linspace(0.0, 180.0, n_angles, endpoint=False)
    out = np.empty_like(images)
    for i, (img, seed) in enumerate(zip(images, seeds)):
        rng = np.random.default_rng(seed)
        sino = np.clip(radon(img, theta, circle=False), 0, None)
        w = bowtie_profile(sino.shape[0]).numpy().astype(np.float64)[:, None]
        smax = sino.max()
        noisy = rng.poisson(photons * w * sino / smax) * smax / (photons * w)
        rec = iradon(noisy, theta, circle=False, filter_name="hann", output_size=img.shape[0])
        out[i] = (rec - rec.min()) / (rec.max() - rec.min())
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="studies per batch (default 32)")
    ap.add_argument("--size", type=int, default=256, help="image side (default 256)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats, best kept (default 3)")
    ap.add_argument("--skimage-n", type=int, default=8, help="studies for the scikit-image loop (default 8)")
    ap.add_argument("--photons", type=float, default=10000.0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "physics.json")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    x = _images(args.n, args.size).to(dev)
    seeds = list(range(args.n))
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    ops = {
        "lowdose-xray projection": LowDoseXray(args.photons),
        "lowdose-xray sinogram (256 angles)": LowDoseXray(args.photons, model="sinogram"),
        "kspace random 4x": KspaceUndersampling(4, pattern="random"),
        "kspace equispaced 8x": KspaceUndersampling(8, pattern="equispaced"),
        "kspace gaussian 8x": KspaceUndersampling(8, pattern="gaussian"),
        "kspace radial 8x": KspaceUndersampling(8, pattern="radial"),
        "masking 0.5": RandomMasking(0.5, patch=16),
    }
    rows = []
    for name, op in ops.items():
        t0 = time.perf_counter()
        op(x[:1], seeds[:1])  # builds and caches the geometry
        sync()
        setup = time.perf_counter() - t0

        def run(op=op) -> None:
            op(x, seeds)
            sync()

        t, cpu = _time(run, args.repeats)
        rows.append(
            {"operator": name, "studies_per_s": args.n / t, "batch_s": t, "cpu_s_per_study": cpu / args.n, "setup_s": setup}
        )

    k = min(args.skimage_n, args.n)
    xs = x[:k, 0].double().cpu().numpy()
    t_sk, cpu_sk = _time(lambda: _skimage_sinogram(xs, args.photons, 256, seeds[:k]), 1)
    sk_rate = k / t_sk
    rows.append(
        {
            "operator": "scikit-image loop, sinogram model",
            "studies_per_s": sk_rate,
            "batch_s": t_sk,
            "cpu_s_per_study": cpu_sk / k,
            "setup_s": 0.0,
        }
    )
    sino = next(r for r in rows if r["operator"].startswith("lowdose-xray sinogram"))
    speedup = sino["studies_per_s"] / sk_rate
    speedup_cpu = (cpu_sk / k) / sino["cpu_s_per_study"]

    result = {
        "config": {
            "n": args.n,
            "size": args.size,
            "threads": args.threads,
            "repeats": args.repeats,
            "skimage_n": k,
            "photons": args.photons,
            "device": str(dev),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "results": rows,
        "sinogram_speedup_vs_skimage": speedup,
        "sinogram_speedup_vs_skimage_cpu_time": speedup_cpu,
    }
    print(f"{'operator':40s} {'studies/s':>10s} {'batch s':>9s} {'CPU ms/study':>13s} {'setup s':>8s}")
    for r in rows:
        print(
            f"{r['operator']:40s} {r['studies_per_s']:10.1f} {r['batch_s']:9.3f} "
            f"{1000 * r['cpu_s_per_study']:13.1f} {r['setup_s']:8.2f}"
        )
    print(f"sinogram model speed-up over the scikit-image loop: {speedup:.1f}x wall-clock, {speedup_cpu:.1f}x CPU time")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
