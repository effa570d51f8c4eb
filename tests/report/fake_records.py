"""A small but realistic fake audit run (records.parquet, run.json, examples/) for the report tests.

The run follows docs/records.md: two cohorts (a chest X-ray classification cohort with three labels
and a brain MRI segmentation cohort), three degradation levels each, reconstructors ``identity``,
``unet`` and a stochastic ``diffusion`` (with per-sample scores), the ``direct`` arm, mitigated
``unet`` cells (``eodd`` at two strengths and ``reweighting``), a second training seed for one
configuration, and two group attributes with two and three groups.  Scores degrade with the
severity of the level, more for one group than the others, so the fairness gaps move.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

XRAY = "chest-xray"
MRI = "brain-mri"
XRAY_LEVELS = (100000.0, 10000.0, 3000.0)
MRI_LEVELS = (2.0, 4.0, 8.0)
XRAY_LABELS = ("effusion", "cardiomegaly", "nodule")
RECONSTRUCTORS = ("identity", "unet", "diffusion")
N_SAMPLES = 3
#: Group names that are markup, to test that the report escapes them.
EVIL_SEX = ("<script>alert(1)</script>", "<b>F</b>")


def _cell_id(*parts: object) -> str:
    return hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=6).hexdigest()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _studies(rng: np.random.Generator, n_patients: int, per_patient: int, cohort: str, groups: dict) -> pd.DataFrame:
    """Test studies: ``per_patient`` studies (slices) per patient, group values drawn per patient."""
    rows = []
    k = 0
    pgroups = {a: rng.choice(np.array(v, dtype=object), size=n_patients) for a, v in groups.items()}
    for p in range(n_patients):
        for _ in range(per_patient):
            row = {"study_id": f"{cohort}-S{k:05d}", "patient_id": f"{cohort}-P{p:04d}", "study_index": k}
            for a in groups:
                row[f"group:{a}"] = str(pgroups[a][p])
            rows.append(row)
            k += 1
    return pd.DataFrame(rows)


def _severity(levels: tuple[float, ...], level: float) -> float:
    """0 for the mildest level, 1 for the most severe (by position in ``levels``)."""
    return levels.index(level) / (len(levels) - 1)


def _examples(rng: np.random.Generator, out: Path, cell_id: str, task: str, severity: float,
              stochastic: bool, direct: bool, size: int = 32, k: int = 3) -> str:
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    clean = np.stack([
        np.clip(0.2 + 0.6 * np.exp(-((xx - 0.5 - 0.1 * i) ** 2 + (yy - 0.5) ** 2) / 0.08), 0, 1)
        for i in range(k)
    ]).astype(np.float32)
    noise = (0.03 + 0.2 * severity) * rng.standard_normal(clean.shape)
    degraded = np.clip(clean + noise, 0, 1).astype(np.float32)
    if direct:
        recon = degraded.copy()
    else:
        recon = np.clip(clean + 0.3 * noise, 0, 1).astype(np.float32)
    arrays: dict[str, np.ndarray] = {
        "study_index": np.arange(k, dtype=np.int64), "clean": clean, "degraded": degraded, "recon": recon,
    }
    if stochastic:
        arrays["uncertainty"] = np.abs(0.3 * noise).astype(np.float32)
    if task == "segmentation":
        seg_true = (clean > 0.5).astype(np.uint8)
        arrays["seg_true"] = seg_true
        arrays["seg_clean"] = seg_true.copy()
        arrays["seg_recon"] = (recon > 0.5).astype(np.uint8)
    else:
        arrays["saliency_clean"] = ((clean - clean.min()) / np.ptp(clean)).astype(np.float32)
        sal = np.abs(recon - clean) + clean
        arrays["saliency_recon"] = ((sal - sal.min()) / np.ptp(sal)).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / f"{cell_id}.npz", **arrays)
    return f"examples/{cell_id}.npz"


def _cells_for(cohort: str, task: str, degradation: str, levels: tuple[float, ...]) -> list[dict]:
    cells = []
    for level in levels:
        for rec in RECONSTRUCTORS:
            cells.append(dict(reconstructor=rec, arm="reconstruct", mitigation="none",
                              mitigation_strength=np.nan, seed=0, level=level))
        cells.append(dict(reconstructor="direct", arm="direct", mitigation="none",
                          mitigation_strength=np.nan, seed=0, level=level))
    worst = levels[-1]
    for mit, lam in (("eodd", 0.1), ("eodd", 10.0), ("reweighting", np.nan)):
        cells.append(dict(reconstructor="unet", arm="reconstruct", mitigation=mit,
                          mitigation_strength=lam, seed=0, level=worst))
    cells.append(dict(reconstructor="unet", arm="reconstruct", mitigation="none",
                      mitigation_strength=np.nan, seed=1, level=worst))
    for c in cells:
        c.update(cohort=cohort, task=task, degradation=degradation)
        c["cell_id"] = _cell_id(cohort, task, degradation, c["level"], c["reconstructor"], c["arm"],
                                c["mitigation"], c["mitigation_strength"], c["seed"])
    return cells


def _quality(rng: np.random.Generator, n: int, severity: float, rec: str, direct: bool) -> dict:
    input_psnr = 34.0 - 12.0 * severity + rng.normal(0, 0.8, n)
    gain = {"identity": 0.0, "unet": 6.0, "diffusion": 5.0}.get(rec, 4.0)
    psnr = np.full(n, np.nan) if direct else input_psnr + gain * (0.4 + severity) + rng.normal(0, 0.5, n)
    def ssim_of(p):
        return np.clip(1 - np.exp(-(p - 10) / 10), 0, 1)
    def nmse_of(p):
        return 10 ** (-p / 10) * 4
    return {
        "psnr": psnr, "ssim": ssim_of(psnr), "nmse": nmse_of(psnr),
        "input_psnr": input_psnr, "input_ssim": ssim_of(input_psnr), "input_nmse": nmse_of(input_psnr),
    }


def make_fake_run(
    run_dir: Path,
    *,
    n_patients: int = 36,
    seed: int = 0,
    sex_groups: tuple[str, ...] = ("F", "M"),
    age_groups: tuple[str, ...] = ("<40", "40-65", ">65"),
    n_resamples: int = 200,
    correction: str = "holm",
    with_mitigation: bool = True,
    failures: list[dict] | None = None,
) -> Path:
    """Write ``records.parquet``, ``run.json`` and ``examples/*.npz`` into ``run_dir``; return it.

    Group names can be replaced (e.g. with markup) to test escaping; ``with_mitigation=False``
    drops the mitigated cells.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    groups = {"sex": list(sex_groups), "age_band": list(age_groups)}
    disadvantaged = sex_groups[0]
    frames = []
    all_cells = []

    # ---- classification cohort ------------------------------------------------------------
    st = _studies(rng, n_patients, 2, XRAY, groups)
    n = len(st)
    targets = {lab: (rng.random(n) < 0.35 + 0.1 * i).astype(float) for i, lab in enumerate(XRAY_LABELS)}
    targets[XRAY_LABELS[-1]][rng.random(n) < 0.08] = np.nan  # some missing targets
    clean_logit = {}
    for s in (0, 1):
        srng = np.random.default_rng(seed + 100 + s)
        clean_logit[s] = {
            lab: 2.2 * (np.nan_to_num(targets[lab]) * 2 - 1) + srng.normal(0, 1.2, n) for lab in XRAY_LABELS
        }
    cells = _cells_for(XRAY, "classification", "lowdose-xray", XRAY_LEVELS)
    if not with_mitigation:
        cells = [c for c in cells if c["mitigation"] == "none"]
    is_dis = (st["group:sex"] == disadvantaged).to_numpy()
    for c in cells:
        sev = _severity(XRAY_LEVELS, c["level"])
        crng = np.random.default_rng(int(c["cell_id"], 16) % (2**32))
        direct = c["arm"] == "direct"
        rec = c["reconstructor"]
        damage = sev * {"identity": 1.6, "unet": 0.9, "diffusion": 1.0, "direct": 1.8}[rec]
        if c["mitigation"] != "none":
            damage *= 0.7
        df = st.copy()
        for k, v in c.items():
            df[k] = v
        for lab in XRAY_LABELS:
            cl = clean_logit[c["seed"]][lab]
            shrink = 1.0 - 0.45 * damage * np.where(is_dis, 1.0 if c["mitigation"] == "none" else 0.5, 0.35)
            logit = cl * shrink + crng.normal(0, 0.3 + damage, n)
            df[f"target:{lab}"] = targets[lab]
            df[f"clean_score:{lab}"] = _sigmoid(cl)
            df[f"score:{lab}"] = _sigmoid(logit)
            # the direct model has its own operating point; the clean model's is recorded apart
            df[f"threshold:{lab}"] = 0.35 if direct else 0.5
            df[f"clean_threshold:{lab}"] = 0.5
            if rec == "diffusion":
                for k in range(N_SAMPLES):
                    df[f"sample_score:{lab}:{k}"] = _sigmoid(logit + crng.normal(0, 0.3, n))
        for key, val in _quality(crng, n, sev, rec, direct).items():
            df[key] = val
        df["uncertainty"] = 0.02 + 0.05 * sev if rec == "diffusion" else np.nan
        df["samples"] = N_SAMPLES if rec == "diffusion" else 1
        c["examples"] = (
            _examples(crng, run_dir / "examples", c["cell_id"], "classification", sev, rec == "diffusion", direct)
            if c["mitigation"] == "none" and c["seed"] == 0 else None
        )
        frames.append(df)
    all_cells += cells

    # ---- segmentation cohort --------------------------------------------------------------
    st = _studies(rng, n_patients // 2, 3, MRI, groups)
    n = len(st)
    is_dis = (st["group:sex"] == disadvantaged).to_numpy()
    clean_dice = {s: np.clip(0.85 + np.random.default_rng(seed + 200 + s).normal(0, 0.06, n), 0, 1) for s in (0, 1)}
    cells = _cells_for(MRI, "segmentation", "kspace", MRI_LEVELS)
    if not with_mitigation:
        cells = [c for c in cells if c["mitigation"] == "none"]
    for c in cells:
        sev = _severity(MRI_LEVELS, c["level"])
        crng = np.random.default_rng(int(c["cell_id"], 16) % (2**32))
        direct = c["arm"] == "direct"
        rec = c["reconstructor"]
        damage = sev * {"identity": 0.3, "unet": 0.12, "diffusion": 0.15, "direct": 0.35}[rec]
        if c["mitigation"] != "none":
            damage *= 0.8
        df = st.copy()
        for k, v in c.items():
            df[k] = v
        cd = clean_dice[c["seed"]]
        df["clean_dice"] = cd
        df["dice"] = np.clip(cd - damage * np.where(is_dis, 1.5, 0.7) + crng.normal(0, 0.03, n), 0, 1)
        df["clean_hd95"] = 2.0 + crng.gamma(2.0, 0.5, n)
        df["hd95"] = df["clean_hd95"] + 10 * damage
        for key, val in _quality(crng, n, sev, rec, direct).items():
            df[key] = val
        df["uncertainty"] = 0.02 + 0.05 * sev if rec == "diffusion" else np.nan
        df["samples"] = N_SAMPLES if rec == "diffusion" else 1
        c["examples"] = (
            _examples(crng, run_dir / "examples", c["cell_id"], "segmentation", sev, rec == "diffusion", direct)
            if c["mitigation"] == "none" and c["seed"] == 0 else None
        )
        frames.append(df)
    all_cells += cells

    records = pd.concat(frames, ignore_index=True)
    records["level"] = records["level"].astype(float)
    records["mitigation_strength"] = records["mitigation_strength"].astype(float)
    records["seed"] = records["seed"].astype(int)
    records["samples"] = records["samples"].astype(int)
    records.to_parquet(run_dir / "records.parquet", index=False)

    config = {
        "name": "fake-audit",
        "cohorts": [{"name": XRAY, "kind": "synthetic-xray"}, {"name": MRI, "kind": "synthetic-mri"}],
        "reconstructors": list(RECONSTRUCTORS),
        "analysis": {"n_resamples": n_resamples, "correction": correction},
    }
    data_card = (
        "# Synthetic cohort\n\nA **fake** cohort for tests. Groups: {groups}.\n\n"
        "- prevalence 35 %\n- <i>markup</i> stays text\n\n"
        "| group | n |\n| --- | --- |\n| {g0} | 10 |\n| {g1} | 12 |\n"
    )
    meta = {
        "name": "fake-audit",
        "config": config,
        "config_yaml": "name: fake-audit\nreconstructors: [identity, unet, diffusion]\n",
        "versions": {"reconaudit": "0.1.0", "numpy": np.__version__, "pandas": pd.__version__},
        "created": "2026-01-01T00:00:00+00:00",
        "cohorts": {
            XRAY: {"modality": "xray", "tasks": ["classification"], "labels": list(XRAY_LABELS),
                   "group_attributes": ["sex", "age_band"], "level_name": "photons",
                   "data_card": data_card.format(groups=", ".join(sex_groups), g0=sex_groups[0], g1=sex_groups[1])},
            MRI: {"modality": "mri", "tasks": ["segmentation"], "labels": [],
                  "group_attributes": ["sex", "age_band"], "level_name": "acceleration",
                  "data_card": data_card.format(groups=", ".join(age_groups), g0=age_groups[0], g1=age_groups[1])},
        },
        "cells": [
            {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in c.items()} for c in all_cells
        ],
        "analysis": {"n_resamples": n_resamples, "alpha": 0.05, "correction": correction,
                     "min_group_size": 5, "seed": 7, "ci": "percentile",
                     # a fake of 20 patients is below the default guards; they are tested on their own
                     "min_group_patients": 2, "min_group_positives": 1, "max_undefined_share": 0.25},
        "failures": failures or [],
    }
    (run_dir / "run.json").write_text(json.dumps(meta, indent=2))
    return run_dir
