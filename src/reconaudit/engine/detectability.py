"""Low-dose detectability: a channelized Hotelling observer on reconstructed signal-present/absent pairs.

The classical task-based image-quality figure of CT: a nodule of known size is inserted at a known
place into clean chest X-ray backgrounds; signal-present and signal-absent images are degraded
at each dose (independent noise), reconstructed by every reconstructor, cropped around the
signal location and read by a Laguerre-Gauss CHO (:func:`reconaudit.metrics.channelized_hotelling`),
which reports AUC and :math:`d'` per dose and reconstructor.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from reconaudit.cohorts.base import Cohort
from reconaudit.metrics import channelized_hotelling, laguerre_gauss_channels
from reconaudit.seeding import study_seeds

log = logging.getLogger(__name__)

__all__ = ["gaussian_signal", "detectability_study"]


def gaussian_signal(shape: tuple[int, int], center: tuple[float, float], sigma: float, amplitude: float) -> torch.Tensor:
    r"""A Gaussian nodule :math:`a \exp(-\lVert p - c \rVert^2 / 2\sigma^2)` (H, W), float32.

    ``center`` is (row, column) in pixels, ``sigma`` in pixels, ``amplitude`` in image units.
    """
    h, w = int(shape[0]), int(shape[1])
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    d2 = (yy - center[0]) ** 2 + (xx - center[1]) ** 2
    return (amplitude * torch.exp(-d2 / (2 * sigma**2))).float()


def detectability_study(
    cohort: Cohort,
    doses: Sequence[float],
    reconstructors: Sequence[tuple[str, dict]],
    *,
    degradation_params: dict | None = None,
    center: tuple[float, float] | None = None,
    sigma: float = 1.5,
    amplitude: float = 0.06,
    roi: int = 24,
    n_channels: int = 5,
    repeats: int = 4,
    seed: int = 0,
    device: str = "cpu",
) -> pd.DataFrame:
    """CHO AUC and d' of a known nodule per dose and reconstructor on one X-ray cohort.

    Reconstructors are fitted per dose on the cohort's train / val pairs (degraded, clean).  The
    observer's images are the test split's clean backgrounds, each once with the nodule
    (:func:`gaussian_signal` at ``center``, default: the middle of the image's left lung field,
    row 0.45 H, column 0.3 W) and once without, degraded with independent noise (study seeds
    derived from ``seed``, the study id and the arm), reconstructed, and cropped to ``roi`` x
    ``roi`` pixels around the signal.  Laguerre-Gauss channels of width
    :math:`a = \\sqrt{2\\pi}\\,\\sigma` hold the nodule in their first channel; half the pairs train
    the observer, the other half test it.  Each background is used ``repeats`` times with
    independent noise (more pairs, the same anatomical variability).

    Parameters
    ----------
    cohort : Cohort
        An X-ray cohort (e.g. the synthetic chest cohort).
    doses : sequence of float
        Photon counts of ``lowdose-xray``.
    reconstructors : sequence of (name, params)
        Built with :func:`reconaudit.recon.make_reconstructor`.
    degradation_params : dict, optional
        Extra ``lowdose-xray`` parameters (e.g. ``{"model": "projection"}``).

    Returns
    -------
    DataFrame
        ``dose``, ``reconstructor``, ``auc``, ``d_prime``, ``n_pairs`` (one row per dose and
        reconstructor; ``reconstructor="clean"`` once for the noise-free images).
    """
    from reconaudit.engine.steps import _pairset
    from reconaudit.physics import make_degradation
    from reconaudit.recon import make_reconstructor

    if cohort.modality != "xray":
        raise ValueError(f"detectability_study needs an X-ray cohort, got {cohort.name!r} ({cohort.modality})")
    te = cohort.indices("test")
    if len(te) < 8:
        raise ValueError(f"cohort {cohort.name!r} has {len(te)} test studies; the observer needs at least 8")
    if int(repeats) < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    bg = cohort.images[torch.as_tensor(te)].repeat(int(repeats), 1, 1, 1)
    h, w = bg.shape[-2:]
    c = (0.45 * h, 0.3 * w) if center is None else center
    sig = gaussian_signal((h, w), c, sigma, amplitude)
    present, absent = (bg + sig).clamp(0, 1), bg
    r0 = int(round(c[0])) - roi // 2
    c0 = int(round(c[1])) - roi // 2
    if r0 < 0 or c0 < 0 or r0 + roi > h or c0 + roi > w:
        raise ValueError(f"an roi of {roi} px around {c} leaves the {h}x{w} image; choose a smaller roi or another center")
    crop_c = (c[0] - r0, c[1] - c0)
    channels = laguerre_gauss_channels((roi, roi), n_channels, width=float(np.sqrt(2 * np.pi) * sigma), center=crop_c)

    def crop(x: torch.Tensor) -> np.ndarray:
        return x[:, 0, r0 : r0 + roi, c0 : c0 + roi].double().numpy()

    def read(p: torch.Tensor, a: torch.Tensor) -> tuple[float, float]:
        res = channelized_hotelling(crop(p), crop(a), channels, seed=seed)
        return res.auc, res.d_prime

    rows = [dict(zip(("dose", "reconstructor", "auc", "d_prime"), (np.inf, "clean", *read(present, absent))))]
    ids = [f"{sid}/{r}" for r in range(int(repeats)) for sid in cohort.table["study_id"].astype(str).to_numpy()[te]]
    for dose in doses:
        op = make_degradation("lowdose-xray", float(dose), **(degradation_params or {}))
        full = op(cohort.images, study_seeds(f"detectability/{dose}", seed, cohort.table["study_id"].astype(str).tolist()))
        train, val = _pairset(cohort, full, "train"), _pairset(cohort, full, "val")
        d_p = op(present, study_seeds(f"detectability/{dose}/present", seed, ids))
        d_a = op(absent, study_seeds(f"detectability/{dose}/absent", seed, ids))
        for name, params in reconstructors:
            rec = make_reconstructor(name, device=device, **dict(params))
            rec.fit(train, val, seed=seed)
            with torch.no_grad():
                x_p = rec.reconstruct(d_p.to(device), seeds=study_seeds("cho/p", seed, ids)).float().cpu().clamp(0, 1)
                x_a = rec.reconstruct(d_a.to(device), seeds=study_seeds("cho/a", seed, ids)).float().cpu().clamp(0, 1)
            auc, d = read(x_p, x_a)
            rows.append({"dose": float(dose), "reconstructor": name, "auc": auc, "d_prime": d})
            log.info("detectability: dose %g, %s: AUC %.3f, d' %.2f", dose, name, auc, d)
    out = pd.DataFrame(rows)
    out["n_pairs"] = len(bg)
    return out
