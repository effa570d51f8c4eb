"""Multi-coil MRI: throughput of the forward operator and CG-SENSE, and image quality of RSS, CG-SENSE, VarNet.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/multicoil.py --n 8 --size 256 --coils 8 16 \\
        --quality-size 64 --subjects 40 --varnet-epochs 5

Speed: ``--n`` random phantoms at ``--size`` (256 x 256), simulated with ``--coils`` coils
(birdcage maps, phase, per-coil SNR 40) at R = 4; studies/s of the forward operator
(``KspaceUndersampling(coils=C)``: sensitivities, phase, FFT per coil, noise, mask, RSS) and of
CG-SENSE (map estimation + 30 conjugate-gradient iterations), best of ``--repeats`` runs, wall and
process CPU time.

Quality: the synthetic ``brain-glioma`` cohort at ``--quality-size`` with 8 coils (SNR 40, phase
1 rad, centre fraction 0.1), random Cartesian masks at R = 4 and 8; mean PSNR / SSIM on the test
split of the coil-combined zero-filled image (RSS), CG-SENSE and a VarNet trained on the train
split for ``--varnet-epochs`` epochs. Prints a Markdown table and writes
``benchmarks/results/multicoil.json``.
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

from reconaudit.metrics import psnr, ssim
from reconaudit.physics import KspaceUndersampling
from reconaudit.recon import PairSet, make_reconstructor


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random phantoms in [0, 1] inside an ellipse, (n, 1, size, size)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    head = ((yy / 0.8) ** 2 + (xx / 0.65) ** 2 < 1).float()
    img = torch.zeros(n, size, size)
    for _ in range(6):
        c = torch.rand(n, 2, generator=g) * 1.0 - 0.5
        s = torch.rand(n, 1, 1, generator=g) * 0.2 + 0.05
        img += torch.exp(-((yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2) / (2 * s**2))
    img = (0.3 + img / img.amax(dim=(1, 2), keepdim=True)) * head
    return (img / img.amax(dim=(1, 2), keepdim=True)).unsqueeze(1)


def _time(fn, repeats: int) -> tuple[float, float]:
    """Best wall-clock and process CPU seconds over ``repeats`` runs."""
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best, best_cpu


def speed(n: int, size: int, coils: list[int], repeats: int) -> list[dict]:
    """Studies/s of the forward operator and of CG-SENSE at ``size`` for each coil count."""
    imgs = _images(n, size)
    seeds = list(range(n))
    sense = make_reconstructor("sense", iterations=30, tol=1e-12)  # a fixed 30 iterations
    rows = []
    for c in coils:
        op = KspaceUndersampling(4, center_fraction=0.08, coils=c, snr=40.0, phase=1.0)
        d = op(imgs, seeds)
        fw, fc = _time(lambda op=op: op(imgs, seeds), repeats)
        sw, sc = _time(lambda d=d: sense.reconstruct(d), repeats)
        rows.append({"coils": c, "size": size, "n": n,
                     "forward_studies_per_s": n / fw, "forward_cpu_s_per_study": fc / n,
                     "sense_studies_per_s": n / sw, "sense_cpu_s_per_study": sc / n})
    return rows


def quality(size: int, subjects: int, varnet_epochs: int, accelerations: list[float]) -> list[dict]:
    """Mean test PSNR / SSIM of RSS, CG-SENSE and VarNet on the synthetic brain cohort."""
    from reconaudit.cohorts.brain_glioma import generate_brain_glioma

    cohort = generate_brain_glioma(n_subjects=subjects, slices_per_subject=3, size=size, seed=0)
    ids = cohort.table["study_id"].astype(str).tolist()
    from reconaudit.seeding import study_seeds

    rows = []
    for r in accelerations:
        op = KspaceUndersampling(r, center_fraction=0.1, coils=8, snr=40.0, phase=1.0)
        d = op(cohort.images, study_seeds(f"bench/multicoil/{r}", 0, ids))
        tr, va, te = (cohort.indices(s) for s in ("train", "val", "test"))
        clean = cohort.images
        varnet = make_reconstructor("varnet", epochs=varnet_epochs, cascades=3, batch_size=8, lr=3e-3,
                                    features=(8, 16, 32, 32, 64, 8), sens_features=(4, 8, 16, 16, 32, 4))
        t0 = time.perf_counter()
        varnet.fit(PairSet(d.subset(tr), clean[tr]), PairSet(d.subset(va), clean[va]), seed=0)
        fit_s = time.perf_counter() - t0
        test = d.subset(te)
        ref = clean[te].numpy()
        outs = {
            "rss": test.image,
            "cg-sense": make_reconstructor("sense").reconstruct(test),
            "varnet": varnet.reconstruct(test),
        }
        for name, x in outs.items():
            a = x.clamp(0, 1).numpy()
            rows.append({"acceleration": r, "reconstructor": name, "n_test": len(te),
                         "psnr": float(np.mean(psnr(a, ref))), "ssim": float(np.mean(ssim(a, ref))),
                         **({"fit_s": fit_s} if name == "varnet" else {})})
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="studies per timed batch")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--coils", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quality-size", type=int, default=64)
    ap.add_argument("--subjects", type=int, default=40)
    ap.add_argument("--varnet-epochs", type=int, default=5)
    ap.add_argument("--accelerations", type=float, nargs="+", default=[4.0, 8.0])
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "multicoil.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                    "omp": os.environ.get("OMP_NUM_THREADS")},
        "speed": speed(args.n, args.size, args.coils, args.repeats),
        "quality": [] if args.skip_quality else quality(args.quality_size, args.subjects, args.varnet_epochs,
                                                         args.accelerations),
    }
    print("| coils | size | forward studies/s | CG-SENSE studies/s |\n|---|---|---|---|")
    for row in result["speed"]:
        print(f"| {row['coils']} | {row['size']} | {row['forward_studies_per_s']:.2f} | {row['sense_studies_per_s']:.2f} |")
    if result["quality"]:
        print("\n| R | reconstructor | PSNR (dB) | SSIM |\n|---|---|---|---|")
        for row in result["quality"]:
            print(f"| {row['acceleration']:g} | {row['reconstructor']} | {row['psnr']:.2f} | {row['ssim']:.3f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
