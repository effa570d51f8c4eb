"""Random draws of the chest X-ray cohort: patients, studies (labels and rendering parameters), the table."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import ndtri

from reconaudit.cohorts.base import assign_splits_by_patient
from reconaudit.cohorts.chest_xray.anatomy import RenderDraw, stack_draws
from reconaudit.cohorts.chest_xray.params import (
    _AGE_RANGE,
    _HEART_TILT,
    AGE_BANDS,
    LABELS,
    LATENT_CORRELATION,
    SITE_PROFILES,
    SITES,
    ChestXrayParams,
)
from reconaudit.seeding import derive_seed


def _effective_prevalence(params: ChestXrayParams, sex: str, band: str, site: str) -> np.ndarray:
    groups = {"sex": sex, "age_band": band, "site": site}
    mult = 1.0
    for attr, per in params.prevalence_ratio.items():
        mult *= per.get(groups[attr], 1.0)
    out = np.empty(len(LABELS))
    for i, k in enumerate(LABELS):
        out[i] = params.prevalence[k] * mult * params.age_prevalence_ratio.get(k, {}).get(band, 1.0)
    return np.clip(out, 0.0, 0.98)


def _miss_probability(params: ChestXrayParams, groups: dict[str, str]) -> float:
    keep = 1.0
    for attr, per in params.label_miss_rate.items():
        keep *= 1.0 - per.get(groups[attr], 0.0)
    return 1.0 - keep


def _quality(params: ChestXrayParams, groups: dict[str, str]) -> tuple[float, float]:
    blur2, contrast = 0.0, 1.0
    for attr, per in params.quality.items():
        q = per.get(groups[attr])
        if q is not None:
            blur2 += q.blur**2
            contrast *= q.contrast
    return blur2, contrast


def _lung_point(rng: np.random.Generator, pat: dict[str, Any], side: int, pad: float) -> tuple[float, float]:
    """A point inside hemithorax ``side`` (canonical x, y), ``pad`` away from its borders."""
    m, lw = pat["mediastinum"][side], pat["thorax_half"]
    for _ in range(50):
        u = rng.uniform(0.15, 0.85)
        yv = rng.uniform(-0.55, 0.35)
        lat = lw * (1.0 - 0.25 * ((yv - 0.15) / 0.9) ** 2)
        xs = m + u * (lat - m)
        top = pat["apex"] + 0.9 * (u - 0.35) ** 2
        bot = pat["diaphragm"][side] + 0.1 * u**2 - pat["dome"][side] * math.sin(math.pi * u)
        if top + pad < yv < bot - pad and xs < lat - pad:
            break
    return (-xs if side == 0 else xs), yv


def _draw_patient(params: ChestXrayParams, pid: str, n_visits: int, chol: np.ndarray) -> dict[str, Any]:
    rng = np.random.default_rng(derive_seed("cohort/chest-xray/patient", params.seed, pid))
    sex = "F" if rng.random() < params.female_share else "M"
    band = AGE_BANDS[rng.choice(3, p=[params.age_band_shares[b] for b in AGE_BANDS])]
    site = SITES[rng.choice(3, p=[params.site_shares[s] for s in SITES])]
    lo, hi = _AGE_RANGE[band]
    age0 = int(rng.integers(lo, hi + 1))
    band_i = AGE_BANDS.index(band)
    pat: dict[str, Any] = {
        "patient_id": pid,
        "sex": sex,
        "age_band": band,
        "site": site,
        "age0": age0,
        "n_visits": n_visits,
        "z": chol @ rng.standard_normal(len(LABELS)),
        "scale": rng.normal(0.96 if sex == "M" else 0.89, 0.03),
        "thorax_half": rng.normal(0.74, 0.02),
        "apex": rng.normal(-0.74, 0.02),
        "mediastinum": np.array([rng.normal(0.09, 0.01), rng.normal(0.11, 0.01)]),
        "dome": rng.uniform(0.09, 0.15, size=2),
        "dia_level": rng.normal(0.40, 0.03),
        "ctr_normal": 0.497 - 0.1 * rng.beta(1.2, 2.0),
        "ctr_large": 0.503 + 0.1 * rng.beta(1.0, 2.5),
        "heart_aspect": rng.uniform(0.62, 0.9),
        "bone_density": (1.0, 0.85, 0.7)[band_i] * rng.normal(1.0, 0.06),
        "aorta_r": 0.065 * (1.0 + 0.15 * band_i) * rng.uniform(0.85, 1.15),
        "breast": rng.uniform(0.6, 1.25) if sex == "F" else 0.0,
        "rib_spacing": rng.uniform(0.125, 0.145),
        "rib_y0": rng.uniform(-0.84, -0.78),
        "rib_curv": rng.uniform(0.35, 0.55),
        "spine_phase": rng.uniform(0, 0.13),
        "marking_phase": rng.uniform(0, 2 * math.pi, size=2),
        "marking_amp": rng.uniform(0.8, 1.2),
        "marking_noise": rng.standard_normal((2, 8, 8)),
        # finding geometry (used on the visits where the finding is present)
        "effusion_side": int(rng.choice(3, p=[0.4, 0.3, 0.3])),  # right, left, both
        "effusion_h": math.exp(rng.uniform(math.log(0.02), math.log(0.25))),
        "effusion_op": rng.uniform(0.4, 0.95),
        "n_nodules": 1 if rng.random() < 0.75 else 2,
        "nodule_r": np.exp(rng.uniform(math.log(0.025), math.log(0.12), size=2)),
        "nodule_amp": rng.uniform(0.12, 0.3, size=2),
        "nodule_side": rng.integers(0, 2, size=2),
        "cons_side": int(rng.integers(0, 2)),
        "cons_rx": rng.uniform(0.12, 0.26),
        "cons_ry": rng.uniform(0.12, 0.3),
        "cons_op": rng.uniform(0.45, 0.9),
        "cons_noise": rng.standard_normal((10, 10)),
        "ptx_side": int(rng.integers(0, 2)),
        "ptx_w": math.exp(rng.uniform(math.log(0.04), math.log(0.22))),
        "ptx_line": rng.uniform(0.5, 1.0),
    }
    pat["diaphragm"] = np.array([pat["dia_level"] - 0.04, pat["dia_level"]])
    pat["nodule_xy"] = [_lung_point(rng, pat, int(pat["nodule_side"][k]), 0.08) for k in range(2)]
    cx, cy = _lung_point(rng, pat, pat["cons_side"], 0.1)
    pat["cons_xy"] = (abs(cx), cy)
    pat["prev"] = _effective_prevalence(params, sex, band, site)
    pat["miss"] = _miss_probability(params, {"sex": sex, "age_band": band, "site": site})
    pat["quality"] = _quality(params, {"sex": sex, "age_band": band, "site": site})
    return pat


@dataclass(frozen=True)
class StudyDraw:
    """One drawn study: its true and observed findings (in :data:`LABELS` order), age, CTR and
    the parameters of its image."""

    truth: np.ndarray
    observed: np.ndarray
    age: int
    ctr: float
    render: RenderDraw


def _draw_study(params: ChestXrayParams, pat: dict[str, Any], visit: int, sid: str, chol: np.ndarray) -> StudyDraw:
    rng = np.random.default_rng(derive_seed("cohort/chest-xray/study", params.seed, sid))
    rho = params.follow_up_persistence
    z = math.sqrt(rho) * pat["z"] + math.sqrt(1.0 - rho) * (chol @ rng.standard_normal(len(LABELS)))
    truth = (z < ndtri(np.clip(pat["prev"], 1e-12, 1 - 1e-12))) & (pat["prev"] > 0)
    observed = truth & ~(rng.random(len(LABELS)) < pat["miss"])
    lo, hi = _AGE_RANGE[pat["age_band"]]
    age = int(min(hi, pat["age0"] + visit * rng.integers(0, 3)))
    cm, eff, nod, cons, ptx = (bool(v) for v in truth)

    ctr = pat["ctr_large"] if cm else pat["ctr_normal"]
    ctr = float(np.clip(ctr + rng.normal(0, 0.004), 0.502 if cm else 0.35, 0.7 if cm else 0.498))
    dia = pat["diaphragm"] + rng.normal(0, 0.015)
    # horizontal half-extent of the tilted ellipse sqrt(a^2 cos^2 + b^2 sin^2) = CTR * thorax half-width
    k = pat["heart_aspect"]
    heart_a = (
        ctr * pat["thorax_half"] / math.sqrt(math.cos(_HEART_TILT) ** 2 + (k * math.sin(_HEART_TILT)) ** 2)
    )
    heart_b = heart_a * k
    site = SITE_PROFILES[pat["site"]]
    blur2, contrast = pat["quality"]
    eff_side = pat["effusion_side"]
    eff_on = np.array([eff and eff_side in (0, 2), eff and eff_side in (1, 2)], dtype=float)
    cons_on = np.zeros(2)
    cons_on[pat["cons_side"]] = float(cons)
    ptx_on = np.zeros(2)
    ptx_on[pat["ptx_side"]] = float(ptx)
    nod_amp = pat["nodule_amp"] * float(nod) * np.array([1.0, float(pat["n_nodules"] == 2)])
    cons_noise = pat["cons_noise"] * 0.8 + 0.6 * rng.standard_normal((10, 10))
    grow = 1.0 + 0.05 * visit
    return StudyDraw(
        truth=truth,
        observed=observed,
        age=age,
        ctr=ctr,
        render=RenderDraw(
            scale=pat["scale"] * rng.normal(1.0, 0.01),
            rotation=rng.normal(0.0, 0.025),
            shift_x=rng.normal(0.0, 0.025),
            shift_y=rng.normal(0.02, 0.025),
            thorax_half=pat["thorax_half"],
            apex=pat["apex"],
            mediastinum=pat["mediastinum"],
            dome=pat["dome"],
            diaphragm=dia,
            heart_a=heart_a,
            heart_b=heart_b,
            heart_x=ctr * pat["thorax_half"] * 0.3,
            heart_y=dia[1] - 0.5 * heart_b,
            aorta_r=pat["aorta_r"],
            bone_density=pat["bone_density"],
            breast=pat["breast"],
            rib_spacing=pat["rib_spacing"],
            rib_y0=pat["rib_y0"] + dia[1] - pat["dia_level"],
            rib_curv=pat["rib_curv"],
            spine_phase=pat["spine_phase"],
            marking_phase=pat["marking_phase"] + rng.normal(0, 0.05, size=2),
            marking_amp=pat["marking_amp"],
            marking_noise=pat["marking_noise"],
            effusion_on=eff_on,
            effusion_h=np.full(2, pat["effusion_h"] * rng.uniform(0.85, 1.15)),
            effusion_op=np.full(2, pat["effusion_op"]),
            cons_on=cons_on,
            cons_x=np.full(2, pat["cons_xy"][0]),
            cons_y=np.full(2, pat["cons_xy"][1]),
            cons_rx=np.full(2, pat["cons_rx"]),
            cons_ry=np.full(2, pat["cons_ry"]),
            cons_op=np.full(2, pat["cons_op"]),
            consolidation_noise=cons_noise,
            ptx_on=ptx_on,
            ptx_w=np.full(2, pat["ptx_w"] * rng.uniform(0.85, 1.15)),
            ptx_line=np.full(2, pat["ptx_line"]),
            nodule_x=np.array([pat["nodule_xy"][0][0], pat["nodule_xy"][1][0]]),
            nodule_y=np.array([pat["nodule_xy"][0][1], pat["nodule_xy"][1][1]]),
            nodule_r=pat["nodule_r"] * grow,
            nodule_amp=nod_amp,
            gain=site["gain"] * rng.normal(1.0, 0.02),
            offset=site["offset"],
            gamma=site["gamma"] * rng.normal(1.0, 0.02),
            contrast=contrast,
            blur=math.sqrt(site["blur"] ** 2 + blur2),
        ),
    )



def _resolve(params: ChestXrayParams | None, overrides: dict[str, Any]) -> ChestXrayParams:
    if params is None:
        return ChestXrayParams(**overrides)
    if overrides:
        return ChestXrayParams.model_validate({**params.model_dump(exclude_unset=True), **overrides})
    return params


def _draw_cohort(params: ChestXrayParams) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Draw every patient and study (no pixels): the rendering parameters as float32 columns
    (:func:`~reconaudit.cohorts.chest_xray.anatomy.stack_draws`, stacked every :data:`_STACK`
    studies so the per-study objects never accumulate) and the study table."""
    s = params.co_occurrence_strength
    chol = np.linalg.cholesky((1.0 - s) * np.eye(len(LABELS)) + s * LATENT_CORRELATION)

    master = np.random.default_rng(derive_seed("cohort/chest-xray/visits", params.seed))
    lo, hi = params.studies_per_patient
    visits: list[int] = []
    while sum(visits) < params.n_studies:
        visits.append(int(master.integers(lo, hi + 1)))
    visits[-1] -= sum(visits) - params.n_studies
    width = max(5, len(str(len(visits))))

    pending: list[RenderDraw] = []
    parts: list[dict[str, np.ndarray]] = []
    cols: dict[str, list] = {c: [] for c in _TABLE_COLUMNS}
    for i, nv in enumerate(visits):
        pid = f"CXR-P{i:0{width}d}"
        pat = _draw_patient(params, pid, nv, chol)
        for j in range(nv):
            sid = f"{pid}-S{j}"
            st = _draw_study(params, pat, j, sid, chol)
            pending.append(st.render)
            if len(pending) == _STACK:
                parts.append(stack_draws(pending))
                pending = []
            for name, value in (("study_id", sid), ("patient_id", pid), ("sex", pat["sex"]),
                                ("age_band", pat["age_band"]), ("site", pat["site"]), ("age", st.age),
                                ("visit", j), ("cardiothoracic_ratio", st.ctr),
                                ("effusion_height", st.render.effusion_h[0] if st.truth[1] else np.nan),
                                ("nodule_radius", float(st.render.nodule_r[0]) if st.truth[2] else np.nan),
                                ("pneumothorax_fraction", st.render.ptx_w[0] if st.truth[4] else np.nan)):
                cols[name].append(value)
            for k, obs, true in zip(LABELS, st.observed, st.truth):
                cols[k].append(float(obs))
                cols[f"true_{k}"].append(float(true))
    if pending or not parts:
        parts.append(stack_draws(pending) if pending else {f.name: np.zeros((0,), np.float32)
                                                              for f in fields(RenderDraw)})
    draws = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    table = pd.DataFrame(cols)
    split = assign_splits_by_patient(table["patient_id"].to_numpy(), params.split_fractions, params.seed)
    table.insert(2, "split", split.astype(str))
    table["age"] = table["age"].astype(int)
    return draws, table


#: Studies whose draws are stacked into columns at a time by :func:`_draw_cohort`.
_STACK = 1024
#: The study table's columns, in order.
_TABLE_COLUMNS = ("study_id", "patient_id", "sex", "age_band", "site", "age", "visit", "cardiothoracic_ratio",
                  "effusion_height", "nodule_radius", "pneumothorax_fraction", *LABELS,
                  *(f"true_{k}" for k in LABELS))
