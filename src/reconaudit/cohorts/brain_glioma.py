"""Synthetic brain MRI glioma cohort: tumours grown by a reaction-diffusion model in real anatomy.

Each subject (= patient) is built in four steps, all batched over subjects in torch:

1. **Anatomy.** The MNI152 (ICBM 2009a, 2 mm) grey/white matter probability maps and brain mask that
   nilearn bundles (no download) are warped by a per-subject smooth map from subject to template
   space: global scale :math:`s` (head size, set by sex), an in-plane rotation, a low-frequency random
   displacement :math:`u(q) = \\sum_m a_m \\sin(\\omega_m \\cdot q + \\phi_m)` and, with age, atrophy:
   the lateral ventricles expand by a radial Gaussian warp around their centre and grey matter
   fraction shrinks (:math:`GM' = GM (1 - g\\,a)`, the rest becomes CSF) with atrophy
   :math:`a = \\mathrm{clip}((\\mathrm{age} - 30) / 55, 0, 1)`.
2. **Growth.** A seed in white matter (WM probability > 0.9) grows by
   :math:`\\partial_t c = \\nabla\\cdot(D \\nabla c) + \\rho c (1 - c)` (see
   :mod:`reconaudit.cohorts.tumor_growth`) on a thin axial slab of 2 mm voxels around the seed
   (``slab`` slices, 3-D 7-point stencil, zero flux on the slab faces, so the slab behaves like an
   axial section of a tumour that is long in z), with :math:`D = D_w` in white matter, :math:`D_w/10` in
   grey matter and 0 in CSF and outside the brain. :math:`D_w, \\rho` are drawn per grade (log-uniform);
   a smooth random log-normal factor (sd ``diffusivity_heterogeneity``) makes the tissue
   heterogeneous, so tumours are irregular. Growth stops when the visible region
   (:math:`c >` ``mask_threshold``) covers :math:`\\pi R^2` per slab plane for a drawn radius R (the
   growth time, reported in ``growth_days``, follows from that), at most
   :math:`4 R / (2\\sqrt{D_w \\rho}) + 10 / \\rho` days.
3. **Slices.** ``slices_per_subject`` axial planes of the slab, ``slice_gap`` voxels apart and centred
   on the seed (so every slice passes through the tumour), are resampled to ``size`` x ``size`` over a
   ``fov_mm`` field of view (radiological display: anterior up, patient right on the image left).
4. **Contrast.** Intensities are mixed from tissue fractions and the tumour density: FLAIR/T2
   hyperintense oedema where :math:`c >` ``mask_threshold``, a core above ``core_threshold``, a
   necrotic centre for glioblastoma above ``necrosis_threshold`` and calcified foci for
   oligodendroglioma; then a smooth bias field, group-dependent blur and Rician noise.

Targets: the segmentation mask is the visible abnormality :math:`c >` ``mask_threshold`` inside the
brain; ``high_grade`` is :math:`2\\sqrt{D_w \\rho} >` ``grade_speed_threshold`` (fast, infiltrative
growth); tumour ``type`` (glioblastoma / astrocytoma / oligodendroglioma) is drawn given the grade and
exposed as one-hot label columns. Observed labels carry group-dependent label noise, drawn per
patient so that a patient's slices agree; ``true_<label>`` columns hold the truth.
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from reconaudit.arrays import DEFAULT_SHARD_STUDIES
from reconaudit.cohorts import _io
from reconaudit.cohorts.base import (
    Cohort,
    CohortBuilder,
    CohortStream,
    assign_splits_by_patient,
    collect_stream,
    write_stream,
)
from reconaudit.cohorts.tumor_growth import grow_tumor
from reconaudit.progress import task
from reconaudit.seeding import derive_seed, torch_generator

__all__ = [
    "AGE_BANDS",
    "LABELS",
    "TUMOR_TYPES",
    "BrainGliomaParams",
    "brain_glioma_stream",
    "generate_brain_glioma",
    "generation_chunk",
    "load_mni152_tissue",
    "sample_subjects",
    "write_brain_glioma",
]

logger = logging.getLogger(__name__)

SEXES = ("F", "M")
AGE_BANDS: dict[str, tuple[int, int]] = {"18-44": (18, 45), "45-64": (45, 65), "65-85": (65, 86)}
TUMOR_TYPES = ("glioblastoma", "astrocytoma", "oligodendroglioma")
TYPE_LABELS = [f"type_{t}" for t in TUMOR_TYPES]
LABELS = ["high_grade", *TYPE_LABELS]
GROUP_VALUES = {"sex": SEXES, "age_band": tuple(AGE_BANDS)}
#: Ground-truth phenotypes a config may expose as regression targets (``regression_columns``).
PHENOTYPES: dict[str, str] = {
    "tumor_area_cm2": "visible abnormality (c > mask_threshold, in the brain) in the slice, cm^2",
    "tumor_volume_ml": "visible abnormality in the subject's PDE slab at that time, ml",
    "infiltration_mm": "infiltration margin: equivalent radius of c > 0.01 minus that of the visible region, mm",
}
#: The concentration of the infiltration margin of ``infiltration_mm``.
INFILTRATION_ISOLINE = 0.01

# tissue/tumour intensities per contrast: csf, gm, wm, oedema, core, necrosis, calcification
CONTRASTS: dict[str, dict[str, float]] = {
    "flair": dict(csf=0.07, gm=0.52, wm=0.40, edema=0.86, core=0.70, necrosis=0.36, calcification=0.18),
    "t1": dict(csf=0.12, gm=0.46, wm=0.70, edema=0.40, core=0.32, necrosis=0.16, calcification=0.22),
    "t2": dict(csf=0.92, gm=0.55, wm=0.38, edema=0.80, core=0.70, necrosis=0.90, calcification=0.12),
}

_GRID_MM = 2.0  # PDE grid spacing = template resolution
_TEMPLATE_OFFSET = (-98.0, -134.0, -72.0)  # MNI mm of voxel (0, 0, 0) of nilearn's 2 mm template
_FOV_CENTER_MM = (0.0, -17.0)  # centre of the brain's axial extent in MNI mm
_VENTRICLE_CENTER_MM = (0.0, -8.0, 14.0)
_VENTRICLE_SIGMA_MM = (16.0, 28.0, 14.0)
_SEED_BOX_MM = ((-55.0, 55.0), (-80.0, 45.0))
_N_MODES = 4
_N_HET = 6
_NOISE_GRID = 64  # texture noise drawn on a fixed physical grid, independent of ``size``


def _check_group_keys(d: dict[str, float], name: str) -> dict[str, float]:
    for key in d:
        attr, sep, value = key.partition("=")
        if not sep or attr not in GROUP_VALUES or value not in GROUP_VALUES[attr]:
            allowed = [f"{a}={v}" for a, vs in GROUP_VALUES.items() for v in vs]
            raise ValueError(f"{name}: key {key!r} is not a group; use one of {allowed}")
    return d


class BrainGliomaParams(BaseModel):
    """Every knob of the synthetic glioma cohort (unknown keys are rejected).

    Group-dependent knobs are keyed ``"attribute=value"`` (``"sex=F"``, ``"age_band=65-85"``);
    ``bias=False`` switches all of them off at once (equal group shares, equal prevalence, no
    group-specific label noise, equal image quality), leaving the anatomy effects of age and sex.
    """

    model_config = ConfigDict(extra="forbid")

    # --- size and layout
    n_subjects: int = Field(60, ge=1, description="number of subjects (= patients)")
    slices_per_subject: int = Field(3, ge=1, le=8, description="axial slices (studies) per subject")
    slice_gap: int = Field(2, ge=1, le=4, description="distance between a subject's slices, in 2 mm voxels")
    size: int = Field(64, ge=16, le=512, description="output image side (pixels)")
    fov_mm: float = Field(220.0, gt=100, le=300, description="square field of view (mm)")
    contrast: str = Field("flair", description="'flair', 't1' or 't2'")
    split_fractions: tuple[float, float, float] = Field(
        (0.6, 0.2, 0.2), description="train/val/test, by patient"
    )
    seed: int = Field(0, description="seed of every random draw")

    # --- bias knobs
    bias: bool = Field(True, description="False: switch every group-dependent knob below off")
    sex_shares: dict[str, float] = Field(
        default_factory=lambda: {"F": 0.4, "M": 0.6}, description="share of each sex (bias off: equal)"
    )
    age_band_shares: dict[str, float] = Field(
        default_factory=lambda: {"18-44": 0.25, "45-64": 0.40, "65-85": 0.35},
        description="share of each age band (bias off: equal)",
    )
    high_grade_prevalence: float = Field(
        0.5, gt=0, lt=1, description="P(high grade) for a subject matching no key of high_grade_odds_ratio"
    )
    high_grade_odds_ratio: dict[str, float] = Field(
        default_factory=lambda: {"age_band=65-85": 2.5, "age_band=18-44": 0.4},
        description="odds ratio of high grade per group, multiplied over matching keys (bias off: 1)",
    )
    label_noise: float = Field(
        0.0, ge=0, le=0.5, description="probability that observed labels are wrong, all"
    )
    label_noise_by_group: dict[str, float] = Field(
        default_factory=lambda: {"sex=F": 0.12},
        description="label-flip probability per group (largest matching key wins over label_noise; bias off: none)",
    )
    noise_sigma: float = Field(0.015, ge=0, le=0.5, description="Rician noise sigma (image scale 0-1), all")
    noise_sigma_by_group: dict[str, float] = Field(
        default_factory=lambda: {"age_band=65-85": 0.04},
        description="noise sigma per group (largest matching key wins; bias off: noise_sigma)",
    )
    blur_mm: float = Field(0.0, ge=0, le=10, description="Gaussian blur sigma (mm), all")
    blur_mm_by_group: dict[str, float] = Field(
        default_factory=lambda: {"age_band=65-85": 1.5},
        description="blur sigma per group, e.g. motion (largest matching key wins; bias off: blur_mm)",
    )

    # --- anatomy
    head_scale_by_sex: dict[str, float] = Field(
        default_factory=lambda: {"F": 0.95, "M": 1.03}, description="mean linear head scale per sex"
    )
    head_scale_sd: float = Field(0.03, ge=0, le=0.2, description="sd of the individual (log) head scale")
    deformation_mm: float = Field(3.0, ge=0, le=10, description="amplitude of each random displacement mode")
    rotation_deg: float = Field(4.0, ge=0, le=30, description="sd of the in-plane head rotation")
    ventricle_expansion: float = Field(
        0.35, ge=0, le=0.5, description="ventricle warp strength at full atrophy"
    )
    gm_loss: float = Field(0.3, ge=0, le=0.8, description="grey-matter fraction lost at full atrophy")

    # --- growth
    rho_high: tuple[float, float] = Field((0.06, 0.15), description="proliferation (1/day), high grade")
    d_white_high: tuple[float, float] = Field((0.4, 1.2), description="white-matter D (mm^2/day), high grade")
    rho_low: tuple[float, float] = Field((0.005, 0.012), description="proliferation (1/day), low grade")
    d_white_low: tuple[float, float] = Field((0.02, 0.06), description="white-matter D (mm^2/day), low grade")
    grey_white_ratio: float = Field(0.1, gt=0, le=1, description="D in grey matter / D in white matter")
    grade_speed_threshold: float = Field(
        0.12, gt=0, description="high grade iff front speed 2 sqrt(D_w rho) (mm/day) exceeds this"
    )
    tumor_radius_mm: tuple[float, float] = Field((14.0, 30.0), description="range of the visible radius")
    type_given_high_grade: dict[str, float] = Field(
        default_factory=lambda: {"glioblastoma": 0.7, "astrocytoma": 0.2, "oligodendroglioma": 0.1}
    )
    type_given_low_grade: dict[str, float] = Field(
        default_factory=lambda: {"glioblastoma": 0.0, "astrocytoma": 0.6, "oligodendroglioma": 0.4}
    )
    seed_level_mm: tuple[float, float] = Field((2.0, 40.0), description="MNI z range of the tumour seed")
    mask_threshold: float = Field(0.16, gt=0, lt=1, description="density of visible (FLAIR) abnormality")
    core_threshold: float = Field(0.5, gt=0, lt=1, description="density of the tumour core")
    necrosis_threshold: float = Field(0.75, gt=0, lt=1, description="density of glioblastoma necrosis")
    diffusivity_heterogeneity: float = Field(0.5, ge=0, le=2, description="sd of the smooth log-D factor")
    window_voxels: int = Field(50, ge=16, le=96, description="in-plane side of the PDE window (2 mm voxels)")

    # --- companions (issue 21): phenotypes, the concentration field, longitudinal series
    regression_columns: list[str] = Field(
        default_factory=list,
        description=f"ground-truth phenotypes exposed as regression targets, any of {list(PHENOTYPES)}",
    )
    isolines: list[float] = Field(
        default_factory=list,
        description="concentration isolines scored by Dice and volume error (keeps the concentration field)",
    )
    time_points: list[float] = Field(
        default_factory=list,
        description="longitudinal series: fractions in (0, 1] of each subject's growth time, one study per "
        "time point and slice (ids <patient>-t<k>-s<j>)",
    )

    @field_validator("regression_columns")
    @classmethod
    def _phenotypes(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if c not in PHENOTYPES]
        if bad or len(set(v)) != len(v):
            raise ValueError(f"regression_columns: unknown or repeated phenotype {bad or v}; allowed: {list(PHENOTYPES)}")
        return v

    @field_validator("isolines", "time_points")
    @classmethod
    def _unit_interval(cls, v: list[float], info) -> list[float]:
        lo_open = info.field_name == "time_points"
        for x in v:
            if not (0 < x <= 1 if lo_open else 0 < x < 1):
                raise ValueError(f"{info.field_name}: values must lie in {'(0, 1]' if lo_open else '(0, 1)'}, got {x}")
        if len(set(v)) != len(v) or list(v) != sorted(v):
            raise ValueError(f"{info.field_name}: values must be increasing and distinct, got {v}")
        return v

    @field_validator("contrast")
    @classmethod
    def _contrast(cls, v: str) -> str:
        if v not in CONTRASTS:
            raise ValueError(f"contrast {v!r} unknown; use one of {sorted(CONTRASTS)}")
        return v

    @field_validator(
        "high_grade_odds_ratio", "label_noise_by_group", "noise_sigma_by_group", "blur_mm_by_group"
    )
    @classmethod
    def _group_keys(cls, v: dict[str, float], info) -> dict[str, float]:
        _check_group_keys(v, info.field_name)
        if any(x < 0 for x in v.values()):
            raise ValueError(f"{info.field_name}: values must be non-negative, got {v}")
        return v

    @field_validator("sex_shares", "age_band_shares", "type_given_high_grade", "type_given_low_grade")
    @classmethod
    def _shares(cls, v: dict[str, float], info) -> dict[str, float]:
        want = {
            "sex_shares": SEXES,
            "age_band_shares": tuple(AGE_BANDS),
            "type_given_high_grade": TUMOR_TYPES,
            "type_given_low_grade": TUMOR_TYPES,
        }[info.field_name]
        if set(v) != set(want) or any(x < 0 for x in v.values()) or abs(sum(v.values()) - 1) > 1e-6:
            raise ValueError(
                f"{info.field_name}: need non-negative shares for exactly {list(want)} summing to 1, got {v}"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> BrainGliomaParams:
        if abs(sum(self.split_fractions) - 1) > 1e-6 or min(self.split_fractions) < 0:
            raise ValueError(
                f"split_fractions must be three non-negative numbers summing to 1, got {self.split_fractions}"
            )
        for name in (
            "rho_high",
            "d_white_high",
            "rho_low",
            "d_white_low",
            "tumor_radius_mm",
            "seed_level_mm",
        ):
            lo, hi = getattr(self, name)
            if not (lo <= hi) or (name != "seed_level_mm" and lo <= 0):
                raise ValueError(f"{name}: need 0 < low <= high, got {(lo, hi)}")
        v_low_max = 2 * math.sqrt(self.rho_low[1] * self.d_white_low[1])
        v_high_min = 2 * math.sqrt(self.rho_high[0] * self.d_white_high[0])
        if not v_low_max < self.grade_speed_threshold < v_high_min:
            raise ValueError(
                "grade_speed_threshold must separate the grades: low-grade speeds reach "
                f"{v_low_max:.3g} mm/day, high-grade speeds start at {v_high_min:.3g}, threshold is "
                f"{self.grade_speed_threshold}; change rho_*/d_white_* or the threshold"
            )
        if not self.mask_threshold < self.core_threshold < self.necrosis_threshold:
            raise ValueError("need mask_threshold < core_threshold < necrosis_threshold")
        if self.tumor_radius_mm[1] + 12 > self.window_voxels * _GRID_MM / 2:
            raise ValueError(
                f"window_voxels={self.window_voxels} too small for tumor_radius_mm up to {self.tumor_radius_mm[1]}; "
                f"raise window_voxels to at least {math.ceil((self.tumor_radius_mm[1] + 12) / _GRID_MM * 2)}"
            )
        return self


# ---------------------------------------------------------------------------------------------- template
@functools.lru_cache(maxsize=1)
def load_mni152_tissue() -> torch.Tensor:
    """Grey matter, white matter and brain mask of the MNI152 2009a template at 2 mm, as (1, 3, Z, Y, X).

    Read from the files bundled with nilearn (``load_mni152_gm_template``, ``load_mni152_wm_template``,
    ``load_mni152_brain_mask`` with ``resolution=2``); nothing is downloaded. Voxel (0, 0, 0) lies at
    MNI (-98, -134, -72) mm.
    """
    from nilearn import datasets

    vols = [
        datasets.load_mni152_gm_template(resolution=2),
        datasets.load_mni152_wm_template(resolution=2),
        datasets.load_mni152_brain_mask(resolution=2),
    ]
    aff = vols[0].affine
    if not np.allclose(np.diag(aff)[:3], 2.0) or not np.allclose(aff[:3, 3], _TEMPLATE_OFFSET):
        raise RuntimeError(f"unexpected MNI152 template affine from nilearn: {aff.tolist()}")
    arr = np.stack([np.asarray(v.get_fdata(), dtype=np.float32) for v in vols])  # (3, X, Y, Z)
    arr = np.clip(arr, 0.0, 1.0).transpose(0, 3, 2, 1)  # (3, Z, Y, X)
    return torch.from_numpy(np.ascontiguousarray(arr))[None]


def _sample_template(vol: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of ``vol`` (1, C, Z, Y, X) at MNI points ``q`` (..., 3) in mm -> (C, ...)."""
    dims = torch.tensor([vol.shape[4], vol.shape[3], vol.shape[2]], dtype=q.dtype)  # x, y, z sizes
    idx = (q - torch.tensor(_TEMPLATE_OFFSET, dtype=q.dtype)) / _GRID_MM
    g = (2 * idx / (dims - 1) - 1).reshape(1, 1, 1, -1, 3)
    out = F.grid_sample(vol, g, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.reshape(vol.shape[1], *q.shape[:-1])


# ---------------------------------------------------------------------------------------------- subjects
def _group_value(row: dict, table: dict[str, float], default: float) -> float:
    vals = [v for k, v in table.items() if row[k.partition("=")[0]] == k.partition("=")[2]]
    return max([default, *vals])


def _pick(rng: np.random.Generator, shares: dict[str, float], keys: tuple[str, ...]) -> str:
    cum = np.cumsum([shares[k] for k in keys])
    return keys[min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(keys) - 1)]


def _loguniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    lo, hi = lo_hi
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def sample_subjects(params: BrainGliomaParams | None = None, **overrides) -> pd.DataFrame:
    """Draw every per-subject quantity (groups, grade, type, growth and anatomy parameters, labels).

    Cheap (no images); :func:`generate_brain_glioma` uses the same draws, and this lets one check
    prevalence knobs on many subjects. Subject ``i`` is drawn from its own generator seeded by
    ``derive_seed("brain-glioma/subject", seed, patient_id)``, so it does not depend on ``n_subjects``.
    The anatomy and seed draws (``seed_u``, ``modes_*``, ``het_*``) are list columns here; the
    generator keeps them as float32 arrays (about 1 KB a subject).

    High-grade probability: :math:`\\mathrm{logit}\\,p = \\mathrm{logit}\\,p_0 + \\sum_k \\log OR_k`
    over the keys of ``high_grade_odds_ratio`` the subject matches.
    """
    table, draws = _draw_subjects(_resolve(params, overrides))
    cols = list(table.columns)
    at = cols.index("blur_mm") + 1  # where the draws stood among the columns
    out = table[cols[:at]].copy()
    for name, a in draws.items():
        out[name] = pd.Series(list(a.tolist()), dtype=object)
    for c in cols[at:]:
        out[c] = table[c]
    return out


#: The per-subject array draws of :func:`_draw_subjects`, in the order they are drawn.
DRAWS = ("seed_u", "modes_k", "modes_wavelength", "modes_phase", "modes_amp", "het_k", "het_wavelength", "het_phase")


def _draw_subjects(p: BrainGliomaParams) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The draws of :func:`sample_subjects`: one table row of scalars per subject and the arrays of
    :data:`DRAWS` stacked over subjects (float64, ``(n_subjects, ...)``)."""
    sex_shares = p.sex_shares if p.bias else {s: 1 / len(SEXES) for s in SEXES}
    age_shares = p.age_band_shares if p.bias else {a: 1 / len(AGE_BANDS) for a in AGE_BANDS}
    odds = p.high_grade_odds_ratio if p.bias else {}
    rows = []
    draws: dict[str, list[np.ndarray]] = {name: [] for name in DRAWS}
    for i in range(p.n_subjects):
        pid = f"bg{i:05d}"
        rng = np.random.default_rng(derive_seed("brain-glioma/subject", p.seed, pid))
        sex = _pick(rng, sex_shares, SEXES)
        band = _pick(rng, age_shares, tuple(AGE_BANDS))
        lo, hi = AGE_BANDS[band]
        age = int(rng.integers(lo, hi))
        row = {"patient_id": pid, "sex": sex, "age_band": band, "age": age}
        logit = math.log(p.high_grade_prevalence / (1 - p.high_grade_prevalence))
        for k, v in odds.items():
            a, _, val = k.partition("=")
            if row[a] == val:
                logit += math.log(max(v, 1e-12))
        p_high = 1 / (1 + math.exp(-logit))
        high = bool(rng.random() < p_high)
        rho = _loguniform(rng, p.rho_high if high else p.rho_low)
        d_white = _loguniform(rng, p.d_white_high if high else p.d_white_low)
        tprobs = p.type_given_high_grade if high else p.type_given_low_grade
        ttype = TUMOR_TYPES[int(rng.choice(len(TUMOR_TYPES), p=[tprobs[t] for t in TUMOR_TYPES]))]
        speed = 2 * math.sqrt(d_white * rho)
        radius = float(rng.uniform(*p.tumor_radius_mm))
        atrophy = float(np.clip((age - 30) / 55 * rng.uniform(0.7, 1.3), 0, 1))
        noise_p = _group_value(row, p.label_noise_by_group, p.label_noise) if p.bias else p.label_noise
        flip_grade = bool(rng.random() < noise_p)
        flip_type = bool(rng.random() < noise_p)
        other = [t for t in TUMOR_TYPES if t != ttype]
        obs_type = other[int(rng.integers(len(other)))] if flip_type else ttype
        true_high = speed > p.grade_speed_threshold
        row.update(
            p_high_grade=p_high,
            true_high_grade=float(true_high),
            high_grade=float(true_high != flip_grade),
            type=ttype,
            observed_type=obs_type,
            rho=rho,
            d_white=d_white,
            front_speed=speed,
            radius_mm=radius,
            max_growth_days=4 * radius / speed + 10 / rho,
            atrophy=atrophy,
            head_scale=p.head_scale_by_sex[sex] * math.exp(p.head_scale_sd * rng.standard_normal()),
            rotation_deg=p.rotation_deg * float(rng.standard_normal()),
            label_noise=noise_p,
            noise_sigma=_group_value(row, p.noise_sigma_by_group, p.noise_sigma) if p.bias else p.noise_sigma,
            blur_mm=_group_value(row, p.blur_mm_by_group, p.blur_mm) if p.bias else p.blur_mm,
        )
        # the array draws, in this order, after the scalars (the generator's stream of numbers)
        draws["seed_u"].append(rng.random((64, 3)))
        draws["modes_k"].append(rng.standard_normal((_N_MODES, 3)))
        draws["modes_wavelength"].append(rng.uniform(60, 200, _N_MODES))
        draws["modes_phase"].append(rng.uniform(0, 2 * math.pi, (_N_MODES, 3)))
        draws["modes_amp"].append(p.deformation_mm * rng.standard_normal((_N_MODES, 3)) / math.sqrt(_N_MODES))
        draws["het_k"].append(rng.standard_normal((_N_HET, 3)))
        draws["het_wavelength"].append(rng.uniform(12, 40, _N_HET))
        draws["het_phase"].append(rng.uniform(0, 2 * math.pi, _N_HET))
        for t in TUMOR_TYPES:
            row[f"true_type_{t}"] = float(ttype == t)
            row[f"type_{t}"] = float(obs_type == t)
        rows.append(row)
    return pd.DataFrame(rows), {name: np.stack(v) for name, v in draws.items()}


def _resolve(params: BrainGliomaParams | None, overrides: dict) -> BrainGliomaParams:
    if params is None:
        return BrainGliomaParams(**overrides)
    if overrides:
        return BrainGliomaParams(**{**params.model_dump(), **overrides})
    return params


# ---------------------------------------------------------------------------------------------- geometry
class _Warp:
    """Subject -> template map for a batch of subjects (see module docstring, step 1): their table rows
    and their array draws (:data:`DRAWS`, rows aligned with ``sub``)."""

    def __init__(self, sub: pd.DataFrame, draws: dict[str, np.ndarray], p: BrainGliomaParams):
        b = len(sub)
        self.scale = torch.tensor(sub["head_scale"].to_numpy(), dtype=torch.float32).view(b, 1, 1)
        th = torch.tensor(np.deg2rad(sub["rotation_deg"].to_numpy()), dtype=torch.float32)
        self.cos, self.sin = torch.cos(th).view(b, 1), torch.sin(th).view(b, 1)
        k = torch.tensor(draws["modes_k"], dtype=torch.float32)  # (B, M, 3)
        wl = torch.tensor(draws["modes_wavelength"], dtype=torch.float32)
        self.omega = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-6) * (2 * math.pi / wl)[..., None]
        self.phase = torch.tensor(draws["modes_phase"], dtype=torch.float32)
        self.amp = torch.tensor(draws["modes_amp"], dtype=torch.float32)
        self.vent = torch.tensor(sub["atrophy"].to_numpy() * p.ventricle_expansion, dtype=torch.float32).view(
            b, 1, 1
        )

    def __call__(self, pts: torch.Tensor) -> torch.Tensor:
        """Map subject points (B, P, 3) in mm to template (MNI) mm."""
        x, y, z = pts.unbind(-1)
        q = torch.stack([self.cos * x + self.sin * y, -self.sin * x + self.cos * y, z], dim=-1) / self.scale
        arg = torch.einsum("bpc,bmc->bpm", q, self.omega)  # (B, P, M)
        u = torch.einsum("bpmc,bmc->bpc", torch.sin(arg[..., None] + self.phase[:, None]), self.amp)
        q = q + u
        vc = torch.tensor(_VENTRICLE_CENTER_MM)
        r = (q - vc) / torch.tensor(_VENTRICLE_SIGMA_MM)
        g = torch.exp(-0.5 * (r * r).sum(-1, keepdim=True))
        return q - self.vent * g * (q - vc)


def _tissue(vol: torch.Tensor, q: torch.Tensor, atrophy: torch.Tensor, gm_loss: float):
    """GM, WM, CSF fractions and brain mask at template points ``q`` (B, P, 3), with GM atrophy."""
    gm, wm, mask = _sample_template(vol, q)
    gm = gm * (1 - gm_loss * atrophy.view(-1, 1))
    csf = (mask - gm - wm).clamp_min(0)
    return gm, wm, csf, mask


# ---------------------------------------------------------------------------------------------- main
def generate_brain_glioma(params: BrainGliomaParams | None = None, **overrides) -> Cohort:
    """Generate the synthetic glioma cohort (see module docstring for the model).

    Parameters
    ----------
    params:
        All knobs; ``None`` takes the defaults.
    **overrides:
        Field values replacing those of ``params`` (validated; a misspelt name raises
        ``pydantic.ValidationError``).

    Returns
    -------
    Cohort
        ``name="brain-glioma"``, ``modality="mri"``, images (N, 1, size, size) in [0, 1] with
        N = n_subjects * slices_per_subject, masks (visible abnormality), roi_masks (brain),
        labels ``LABELS``, group attributes ``["sex", "age_band"]``, splits by patient.
        :func:`write_brain_glioma` writes the same cohort to a directory shard by shard
        (:func:`brain_glioma_stream`).
    """
    return collect_stream(brain_glioma_stream(_resolve(params, overrides)))


#: Work budget of one generation batch: ``subjects * (slices * size**2 + 8 * window_voxels**2)``.
GENERATION_BUDGET = 1_500_000


def generation_chunk(p: BrainGliomaParams) -> int:
    """Subjects grown and rendered together: ``max(1, GENERATION_BUDGET // (slices_per_subject * size**2
    + 8 * window_voxels**2))``.  Fixed by the parameters (the batched torch kernels round a subject's
    numbers slightly differently in batches of other sizes), whatever chunk a reader asks for."""
    return max(1, int(GENERATION_BUDGET // (p.slices_per_subject * p.size * p.size + p.window_voxels**2 * 8)))


def brain_glioma_stream(params: BrainGliomaParams) -> CohortStream:
    """:func:`generate_brain_glioma`'s cohort as a :class:`~reconaudit.cohorts.base.CohortStream`.

    Every subject is drawn first (one table row and about 1 KB of float32 anatomy and seed draws a
    subject); tumours are then grown and slices rendered :func:`generation_chunk` subjects at a time
    (fixed: part of the cohort's definition), and each study's mask and brain pixel counts (and
    phenotypes) are kept for the table, so written through a
    :class:`~reconaudit.cohorts.base.CohortWriter` at most one generation batch and one shard of
    images, masks and concentration are in memory.
    """
    p = params
    sub, draws = _draw_subjects(p)
    draws = {name: a.astype(np.float32) for name, a in draws.items()}  # what the torch code reads: same bits
    n_sub, s_per = len(sub), p.slices_per_subject
    n_t = len(p.time_points) or 1  # studies per slice: one per time point of a longitudinal series
    seen: dict[str, list[np.ndarray]] = {k: [] for k in ("days", "levels", "tumor_px", "brain_px", "inf_px", "vml")}

    def generated():
        vol = load_mni152_tissue()
        chunk = generation_chunk(p)
        with task("brain-glioma: growing tumours", total=n_sub) as bar:
            for start in range(0, n_sub, chunk):
                part = sub.iloc[start : start + chunk].reset_index(drop=True)
                d = {name: a[start : start + chunk] for name, a in draws.items()}
                img, msk, roi, lev, dd, conc, vml = _generate_chunk(part, d, p, vol)
                seen["days"].append(dd)
                seen["levels"].append(lev)
                seen["tumor_px"].append(msk.flatten(1).sum(1).double().numpy())
                seen["brain_px"].append(roi.flatten(1).sum(1).double().numpy())
                if p.regression_columns:
                    seen["inf_px"].append(((conc > INFILTRATION_ISOLINE) & roi).flatten(1).sum(1).double().numpy())
                    seen["vml"].append(vml)
                unit = {"images": img, "masks": msk, "roi_masks": roi, "concentration": conc if p.isolines else None}
                del img, msk, roi, conc  # released before the next batch is grown
                yield unit
                del unit
                bar.advance(len(part))

    def batches(chunk: int):
        yield from _io.rebatch(generated(), chunk)

    def finish() -> dict:
        got = {k: np.concatenate(v) if v else np.zeros(0) for k, v in seen.items()}
        tab = _table(p, sub, got)
        return {"name": "brain-glioma", "modality": "mri", "table": tab, "labels": list(LABELS),
                "group_attributes": ["sex", "age_band"], "data_card": _data_card(p, tab),
                "meta": p.model_dump(mode="json"), "regression": list(p.regression_columns)}

    return CohortStream(n_sub * s_per * n_t, batches, finish)


def write_brain_glioma(params: BrainGliomaParams, directory, *, shard_studies: int = DEFAULT_SHARD_STUDIES) -> None:
    """Write :func:`generate_brain_glioma`'s cohort to ``directory`` shard by shard (:func:`brain_glioma_stream`)."""
    write_stream(brain_glioma_stream(params), directory, shard_studies=shard_studies)


def _table(p: BrainGliomaParams, sub: pd.DataFrame, got: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per study (per time point of a series) from the subjects' rows and what the generation
    batches counted per study (``got``: growth days per subject; slice level, mask and brain pixels,
    infiltration pixels and slab volume per study)."""
    n_sub, s_per = len(sub), p.slices_per_subject
    n_t = len(p.time_points) or 1
    sub = sub.copy()
    sub["growth_days"] = got["days"]
    study_sub = np.repeat(np.arange(n_sub), s_per * n_t)
    tab = sub.iloc[study_sub].reset_index(drop=True)
    slice_idx = np.tile(np.arange(s_per), n_sub * n_t)
    if p.time_points:
        t_idx = np.tile(np.repeat(np.arange(n_t), s_per), n_sub)
        tab.insert(0, "study_id", [f"{pid}-t{k}-s{j}" for pid, k, j in zip(tab["patient_id"], t_idx, slice_idx)])
        tab["series_id"] = [f"{pid}-s{j}" for pid, j in zip(tab["patient_id"], slice_idx)]
        tab["time_index"] = t_idx
        tab["growth_days"] = tab["growth_days"].to_numpy() * np.asarray(p.time_points)[t_idx]
    else:
        tab.insert(0, "study_id", [f"{pid}-s{j}" for pid, j in zip(tab["patient_id"], slice_idx)])
    tab["slice_index"] = slice_idx
    tab["slice_z_mm"] = got["levels"]
    tab["split"] = assign_splits_by_patient(tab["patient_id"].to_numpy(), p.split_fractions, p.seed)
    tumor_px, brain_px = got["tumor_px"], got["brain_px"]
    tab["tumor_px"] = tumor_px.astype(np.int64)
    tab["tumor_fraction"] = tumor_px / np.maximum(brain_px, 1.0)
    if p.regression_columns:
        tab = _add_phenotypes(tab, p, tumor_px, got["inf_px"], got["vml"])
    tab = tab.rename(columns={"type": "true_type"})
    cols = ["study_id", "patient_id", "split", "sex", "age_band", "age", "slice_index", "slice_z_mm", *LABELS]
    cols += [f"true_{lab}" for lab in LABELS]
    return tab[cols + [c for c in tab.columns if c not in cols]]


def _add_phenotypes(tab: pd.DataFrame, p: BrainGliomaParams, tumor_px: np.ndarray, infiltration_px: np.ndarray,
                    volume_ml: np.ndarray) -> pd.DataFrame:
    """The ground-truth phenotypes of :data:`PHENOTYPES` asked for by ``regression_columns``, per study.

    With pixel area :math:`a = (\\mathrm{fov}/\\mathrm{size})^2` mm²: ``tumor_area_cm2`` = :math:`a |M| / 100` for
    the visible mask :math:`M` (``tumor_px`` = :math:`|M|`); ``infiltration_mm`` = :math:`\\sqrt{a |I| / \\pi} -
    \\sqrt{a |M| / \\pi}` with :math:`I = \\{c > 0.01\\}` in the brain (``infiltration_px`` = :math:`|I|`: the
    equivalent-radius margin the eye cannot see); ``tumor_volume_ml`` = :math:`8\\,\\mathrm{mm}^3 \\cdot
    |\\{c > \\text{mask\\_threshold}\\}| / 1000` over the subject's PDE slab at the study's time.
    """
    area = (p.fov_mm / p.size) ** 2
    vis = tumor_px * area
    inf = infiltration_px * area
    values = {
        "tumor_area_cm2": vis / 100.0,
        "infiltration_mm": np.sqrt(np.maximum(inf, vis) / math.pi) - np.sqrt(vis / math.pi),
        "tumor_volume_ml": volume_ml,
    }
    for name in p.regression_columns:
        tab[name] = values[name].astype(np.float64)
    return tab


def _generate_chunk(sub: pd.DataFrame, draws: dict[str, np.ndarray], p: BrainGliomaParams, vol: torch.Tensor):
    b, s_per, size, w = len(sub), p.slices_per_subject, p.size, p.window_voxels
    warp = _Warp(sub, draws, p)
    atrophy = torch.tensor(sub["atrophy"].to_numpy(), dtype=torch.float32)

    # --- seed: first of 64 candidate points per subject lying in white matter (WM > 0.9)
    u = torch.tensor(draws["seed_u"], dtype=torch.float32)  # (B, 64, 3)
    lo = torch.tensor([_SEED_BOX_MM[0][0], _SEED_BOX_MM[1][0], p.seed_level_mm[0]])
    hi = torch.tensor([_SEED_BOX_MM[0][1], _SEED_BOX_MM[1][1], p.seed_level_mm[1]])
    cand = lo + u * (hi - lo)
    cand = torch.cat([cand[..., :2] * warp.scale, cand[..., 2:]], dim=-1)  # scale in-plane with the head
    cand[..., 2] = torch.round(cand[..., 2] / _GRID_MM) * _GRID_MM
    _, wm_c, _, _ = _tissue(vol, warp(cand), atrophy, p.gm_loss)
    ok = wm_c > 0.9
    first = torch.where(ok.any(1), ok.float().argmax(1), wm_c.argmax(1))
    seed = cand[torch.arange(b), first]  # (B, 3)

    # --- PDE slab around the seed
    span = (s_per - 1) * p.slice_gap
    margin = 2
    k = span + 1 + 2 * margin
    off_k = (torch.arange(k, dtype=torch.float32) - (margin + span // 2)) * _GRID_MM
    off_w = (torch.arange(w, dtype=torch.float32) - w // 2) * _GRID_MM
    zz, yy, xx = torch.meshgrid(off_k, off_w, off_w, indexing="ij")
    offs = torch.stack([xx, yy, zz], dim=-1).reshape(1, -1, 3)
    gm, wm, _, mask = _tissue(vol, warp(seed[:, None] + offs), atrophy, p.gm_loss)
    tissue = gm + wm
    domain = (tissue >= 0.5) & (mask > 0.5)
    d_white = torch.tensor(sub["d_white"].to_numpy(), dtype=torch.float32).view(b, 1)
    het = _heterogeneity(draws, warp(seed[:, None] + offs))
    dif = d_white * (wm + p.grey_white_ratio * gm) / tissue.clamp_min(1e-6) * domain
    dif = dif * torch.exp(p.diffusivity_heterogeneity * het)
    r2 = (offs * offs).sum(-1)
    c0 = 0.8 * torch.exp(-r2 / (2 * 3.0**2)).expand(b, -1) * domain
    shape = (b, k, w, w)
    radius = torch.tensor(sub["radius_mm"].to_numpy())
    c, days = grow_tumor(
        dif.reshape(shape),
        torch.tensor(sub["rho"].to_numpy()),
        c0.reshape(shape),
        torch.tensor(sub["max_growth_days"].to_numpy()),
        spacing_mm=_GRID_MM,
        domain=domain.reshape(shape),
        stop_volume=k * math.pi * radius**2 / _GRID_MM**2,
        stop_threshold=p.mask_threshold,
        return_time=True,
    )
    planes = margin + torch.arange(s_per) * p.slice_gap  # slab planes of the output slices
    levels = seed[:, 2:3] + off_k[planes].view(1, -1)  # (B, S) mm
    # a longitudinal series: the same subject grown for a fraction f of its growth time (f = 1: c itself)
    states = [("", c)]
    if p.time_points:
        states = [(f"-t{i}", c if f == 1.0 else grow_tumor(
            dif.reshape(shape), torch.tensor(sub["rho"].to_numpy()), c0.reshape(shape), days * f,
            spacing_mm=_GRID_MM, domain=domain.reshape(shape))) for i, f in enumerate(p.time_points)]

    # --- output pixel grid (subject mm): row 0 anterior, column 0 patient right (+x)
    pix = (torch.arange(size, dtype=torch.float32) + 0.5) * (p.fov_mm / size) - p.fov_mm / 2
    cx = _FOV_CENTER_MM[0] * warp.scale.view(b, 1, 1)
    cy = _FOV_CENTER_MM[1] * warp.scale.view(b, 1, 1)
    gx = (cx - pix.view(1, 1, size)).expand(b, size, size)
    gy = (cy - pix.view(1, size, 1)).expand(b, size, size)
    pts = torch.stack(
        [
            gx[:, None].expand(b, s_per, size, size),
            gy[:, None].expand(b, s_per, size, size),
            levels.view(b, s_per, 1, 1).expand(b, s_per, size, size),
        ],
        dim=-1,
    ).reshape(b, -1, 3)
    gm_o, wm_o, csf_o, mask_o = _tissue(vol, warp(pts), atrophy, p.gm_loss)
    shp = (b * s_per, 1, size, size)
    gm_o, wm_o, csf_o, mask_o = (t.reshape(shp) for t in (gm_o, wm_o, csf_o, mask_o))
    # tumour density at the pixels: bilinear in the slab plane
    ix = (gx - seed[:, 0].view(b, 1, 1)) / _GRID_MM + w // 2
    iy = (gy - seed[:, 1].view(b, 1, 1)) / _GRID_MM + w // 2
    grid = torch.stack([2 * ix / (w - 1) - 1, 2 * iy / (w - 1) - 1], dim=-1)  # (B, size, size, 2)
    grid = grid[:, None].expand(b, s_per, size, size, 2).reshape(b * s_per, size, size, 2)
    roi = mask_o > 0.5
    outs = []
    for tag, c_t in states:
        c_img = F.grid_sample(
            c_t[:, planes].reshape(b * s_per, 1, w, w), grid, mode="bilinear", padding_mode="zeros",
            align_corners=True,
        )
        seg = (c_img > p.mask_threshold) & roi
        img = _synthesize(p, sub, gm_o, wm_o, csf_o, mask_o, c_img, roi, tag)
        vml = (c_t > p.mask_threshold).flatten(1).sum(1).double() * _GRID_MM**3 / 1000.0
        outs.append((img, seg.to(torch.uint8), c_img.clamp(0, 1).to(torch.float32), vml.repeat_interleave(s_per)))
    n_t = len(states)

    def subject_major(ts: list[torch.Tensor]) -> torch.Tensor:  # (T, B*S, ...) -> (B*T*S, ...)
        x = torch.stack(ts).reshape(n_t, b, s_per, *ts[0].shape[1:]).transpose(0, 1)
        return x.reshape(b * n_t * s_per, *ts[0].shape[1:]).contiguous()

    img, seg, conc, vml = (subject_major([o[i] for o in outs]) for i in range(4))
    roi_all = subject_major([roi] * n_t) if n_t > 1 else roi
    lev = levels[:, None].expand(b, n_t, s_per).reshape(-1).numpy().astype(np.float64)
    return img, seg, roi_all, lev, days.numpy(), conc, vml.numpy()


def _heterogeneity(draws: dict[str, np.ndarray], q: torch.Tensor) -> torch.Tensor:
    """Unit-variance smooth field :math:`\\sqrt{2/M} \\sum_m \\cos(\\omega_m \\cdot q + \\phi_m)` at template points."""
    k = torch.tensor(draws["het_k"], dtype=torch.float32)  # (B, M, 3)
    wl = torch.tensor(draws["het_wavelength"], dtype=torch.float32)
    ph = torch.tensor(draws["het_phase"], dtype=torch.float32)
    omega = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-6) * (2 * math.pi / wl)[..., None]
    arg = torch.einsum("bpc,bmc->bpm", q, omega) + ph[:, None]
    return math.sqrt(2 / k.shape[1]) * torch.cos(arg).sum(-1)


def _smooth_noise(gen: torch.Generator, n: int, size: int) -> torch.Tensor:
    """``n`` smooth unit-variance fields drawn on a fixed 64 x 64 grid and resized to ``size``."""
    z = torch.randn(n, 1, _NOISE_GRID // 4, _NOISE_GRID // 4, generator=gen)
    z = F.interpolate(z, size=(size, size), mode="bicubic", align_corners=False)
    return z / z.flatten(1).std(1).clamp_min(1e-6).view(n, 1, 1, 1)


def _synthesize(p, sub, gm, wm, csf, mask, c, roi, tag: str = "") -> torch.Tensor:
    """Mix tissue and tumour intensities, then bias field, blur and Rician noise (batched); a study's
    random fields are seeded by its id (``<patient><tag>-s<slice>``, ``tag`` the time point of a series)."""
    n, size, s_per = gm.shape[0], p.size, p.slices_per_subject
    it = CONTRASTS[p.contrast]
    tot = (gm + wm + csf).clamp_min(1e-6)
    base = (it["gm"] * gm + it["wm"] * wm + it["csf"] * csf) / tot * mask.clamp(0, 1)

    # per-study random fields, each from its own generator (study = subject, slice)
    tex = torch.empty(n, 2, size, size)
    fine = torch.empty(n, 1, _NOISE_GRID, _NOISE_GRID)
    bias_coef = torch.empty(n, 3)
    noise = torch.empty(n, 2, size, size)
    for i in range(n):
        pid = sub["patient_id"].iloc[i // s_per]
        gen = torch_generator(derive_seed("brain-glioma/study", p.seed, f"{pid}{tag}-s{i % s_per}"))
        tex[i] = _smooth_noise(gen, 2, size)[:, 0]
        fine[i] = torch.randn(1, _NOISE_GRID, _NOISE_GRID, generator=gen)
        bias_coef[i] = 0.08 * torch.randn(3, generator=gen)
        noise[i] = torch.randn(2, size, size, generator=gen)

    is_gbm = torch.tensor((sub["type"] == "glioblastoma").to_numpy(), dtype=torch.float32).repeat_interleave(
        s_per
    )
    is_oligo = torch.tensor((sub["type"] == "oligodendroglioma").to_numpy(), dtype=torch.float32)
    is_oligo = is_oligo.repeat_interleave(s_per)
    v = lambda t: t.view(n, 1, 1, 1)  # noqa: E731

    w_edema = torch.sigmoid((c - p.mask_threshold) / 0.02)
    w_core = torch.sigmoid((c - p.core_threshold) / 0.05)
    w_nec = torch.sigmoid((c - p.necrosis_threshold) / 0.01) * v(is_gbm)
    # calcified foci: sparse ~3 mm dots of a fine random field inside the core (oligodendroglioma)
    dots = F.interpolate((fine > 2.3).float(), size=(size, size), mode="bilinear", align_corners=False)
    calc = (dots * w_core).clamp(0, 1) * v(is_oligo)
    het = 1 + 0.06 * tex[:, 1:2]
    img = base * (1 - w_edema) + it["edema"] * het * w_edema
    img = img * (1 - w_core) + it["core"] * het * w_core
    img = img * (1 - w_nec) + it["necrosis"] * (1 + 0.1 * tex[:, 1:2]) * w_nec
    img = img * (1 - calc) + it["calcification"] * calc
    img = img * (1 + 0.03 * tex[:, :1]) * mask.clamp(0, 1) * roi

    # smooth multiplicative bias field exp(a x + b y + c x y), x, y in [-1, 1]
    t = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    field = torch.exp(
        bias_coef[:, 0].view(n, 1, 1) * xx
        + bias_coef[:, 1].view(n, 1, 1) * yy
        + bias_coef[:, 2].view(n, 1, 1) * xx * yy
    )
    img = img * field[:, None]

    # Gaussian blur in Fourier space: H(f) = exp(-2 pi^2 sigma^2 |f|^2), sigma in pixels
    blur = torch.tensor(sub["blur_mm"].to_numpy(), dtype=torch.float32).repeat_interleave(s_per) / (
        p.fov_mm / size
    )
    if bool((blur > 0).any()):
        f = torch.fft.fftfreq(size)
        f2 = f.view(-1, 1) ** 2 + f.view(1, -1) ** 2
        h = torch.exp(-2 * math.pi**2 * blur.view(n, 1, 1, 1) ** 2 * f2)
        img = torch.fft.ifft2(torch.fft.fft2(img) * h).real

    # Rician noise: |I + sigma (n1 + i n2)|
    sigma = torch.tensor(sub["noise_sigma"].to_numpy(), dtype=torch.float32).repeat_interleave(s_per)
    sg = v(sigma)
    img = torch.sqrt((img + sg * noise[:, :1]) ** 2 + (sg * noise[:, 1:]) ** 2)
    return img.clamp(0, 1).to(torch.float32).contiguous()


# ---------------------------------------------------------------------------------------------- card
def _data_card(p: BrainGliomaParams, tab: pd.DataFrame) -> str:
    pat = tab.drop_duplicates("patient_id")
    lines = [
        "# brain-glioma (synthetic)",
        "",
        f"{len(tab)} axial {p.contrast.upper()} slices ({p.size} x {p.size}, FOV {p.fov_mm:g} mm) from "
        f"{len(pat)} subjects, {p.slices_per_subject} slices each ({p.slice_gap * _GRID_MM:g} mm apart); "
        f"seed {p.seed}. Anatomy: MNI152 2009a (nilearn, 2 mm) warped per subject; tumours grown by "
        "Fisher-Kolmogorov reaction-diffusion (D white/grey ratio "
        f"{1 / p.grey_white_ratio:g}, zero flux into CSF).",
        "",
        f"Splits (patients): {pat['split'].value_counts().to_dict()}",
        "",
        "## Prevalence per group (patients)",
        "",
        "| attribute | group | patients | true high grade | observed high grade | glioblastoma |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for attr in ("sex", "age_band"):
        for g, d in pat.groupby(attr):
            lines.append(
                f"| {attr} | {g} | {len(d)} | {d['true_high_grade'].mean():.2f} | {d['high_grade'].mean():.2f} | "
                f"{d['true_type_glioblastoma'].mean():.2f} |"
            )
    frac = tab["tumor_fraction"]
    lines += [
        "",
        "## Tumour masks",
        "",
        f"Visible abnormality (c > {p.mask_threshold}) as a fraction of the brain: mean {frac.mean():.3f}, "
        f"median {frac.median():.3f}, min {frac.min():.3f}, max {frac.max():.3f}; "
        f"mean {tab['tumor_px'].mean():.0f} px; empty masks: {(tab['tumor_px'] == 0).sum()}.",
        "",
        "## Bias mechanisms",
        "",
    ]
    if not p.bias:
        lines.append(
            "All group-dependent knobs are off (`bias=False`): equal shares, prevalence, noise and quality."
        )
    else:
        lines += [
            f"- group shares: sex {p.sex_shares}, age band {p.age_band_shares}",
            f"- high-grade prevalence: base {p.high_grade_prevalence}, odds ratios {p.high_grade_odds_ratio}",
            f"- label noise (flip probability): all {p.label_noise}, per group {p.label_noise_by_group}",
            f"- image quality: noise sigma {p.noise_sigma} (per group {p.noise_sigma_by_group}), "
            f"blur {p.blur_mm} mm (per group {p.blur_mm_by_group})",
        ]
    lines += [
        f"- anatomy (not a bias knob): head scale by sex {p.head_scale_by_sex}, atrophy with age "
        f"(ventricle expansion {p.ventricle_expansion}, grey-matter loss {p.gm_loss})",
    ]
    return "\n".join(lines) + "\n"


def supported_tasks(params: dict) -> tuple[str, ...]:
    """The tasks of a brain-glioma config: segmentation and classification, and regression when
    ``regression_columns`` names phenotypes (so a default task list stays what it was)."""
    base = ("segmentation", "classification")
    return (*base, "regression") if (params or {}).get("regression_columns") else base


class BrainGliomaCohort(CohortBuilder):
    """The ``brain-glioma`` cohort (:func:`generate_brain_glioma`)."""

    name = "brain-glioma"
    kind = "synthetic"
    modality = "mri"
    tasks = ("segmentation", "classification", "regression")
    groups = "sex, age_band"
    description = "MNI152 brain slices with gliomas grown by a Fisher-Kolmogorov model; masks, grade, type"
    Params = BrainGliomaParams

    @classmethod
    def stream(cls, params: BrainGliomaParams) -> CohortStream:
        """:func:`brain_glioma_stream`: grown and written shard by shard."""
        return brain_glioma_stream(params)

