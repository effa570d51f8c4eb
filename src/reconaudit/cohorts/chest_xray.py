"""The built-in synthetic chest X-ray cohort (``chest-xray``).

Each study is a posteroanterior chest radiograph drawn as an *attenuation map* in [0, 1]: the
value of a pixel is the (scaled) line integral of attenuation along the ray through it, so bright
means dense (bone, heart, fluid) and dark means air (lungs, pneumothorax), as a radiograph is
displayed.  The low-dose model of ``physics/`` then applies directly,
``I ~ Poisson(photons * exp(-mu_scale * image))``.

Anatomy (canonical coordinates x, y in [-1, 1], y pointing down, the patient's right on the image
left) is built from soft-edged analytic shapes, every edge a logistic ``sigma(d / e)`` of a signed
distance ``d`` with width ``e`` of about one pixel:

* body outline with neck and shoulders; soft-tissue thickness of an elliptic cross-section,
  ``t(x) = 0.22 + 0.23 * sqrt(1 - (x / b(y))**2)``;
* two lungs (less attenuation: ``- depth * lung``) bounded by apex, lateral chest wall, mediastinum
  and hemidiaphragm domes (the right one higher), with vascular markings radiating from the hila;
* heart (an ellipse whose width is the cardiothoracic ratio CTR times the thorax width), aortic
  knob, trachea, spine with vertebral bodies, posterior and anterior ribs, clavicles;
* breast soft-tissue shadows over the lower lung fields (F), smaller thorax (F), lower bone
  density with age, a larger aortic knob with age.

Findings (multi-label):

* ``cardiomegaly``: CTR > 0.5 (CTR ~ 0.503 + 0.1 Beta(1, 2.5) when present, 0.497 - 0.1 Beta(1.2, 2)
  when absent: many cases lie close to the 0.5 cut);
* ``effusion``: basal opacity replacing lung lucency below a fluid surface that rises laterally
  (meniscus), ``y_f(u) = y_cp - h * (1 + 0.8 u**2)``, unilateral or bilateral, h log-uniform in
  [0.02, 0.25] (a blunted costophrenic angle up to a third of the hemithorax);
* ``nodule``: one or two spherical opacities (nodule or mass), radius log-uniform in
  [0.025, 0.12] of the half-width, so the small ones are the hard cases;
* ``consolidation``: a patchy lobar opacity (thresholded smooth noise in an elliptic envelope);
* ``pneumothorax``: the lung collapsed towards its medial base by a fraction w; the rim between
  the chest wall and the visceral pleural line is darker and lacks lung markings, and the pleural
  line is a thin bright curve.

Co-occurrence comes from a Gaussian copula (a small latent model): each study has a latent vector
``z ~ N(0, R)`` over the five findings and finding k is present when ``z_k < Phi^-1(p_k)``, where
``p_k`` is its prevalence for the study's groups.  The marginal prevalence is therefore exactly
``p_k`` while the correlation matrix :data:`LATENT_CORRELATION` couples findings (effusion with
cardiomegaly, consolidation with effusion, ...).  Follow-up studies of one patient share their
latent: ``z_study = sqrt(rho) z_patient + sqrt(1 - rho) e_study`` (both ``N(0, R)``), so findings
persist across visits with persistence ``rho`` and the marginal law is unchanged.  A follow-up keeps
the patient's anatomy and finding geometry and changes only pose (shift, rotation, scale), depth of
inspiration, effusion and pneumothorax size (+-15%) and nodule size (+5% per visit).

Seeding: patient draws use ``derive_seed("cohort/chest-xray/patient", seed, patient_id)`` and study
draws ``derive_seed("cohort/chest-xray/study", seed, study_id)``, so a study's image depends on its
own parameters only, never on the batch it is rendered in (rendering is batched in chunks of
``min(256, 2**22 / size**2)`` studies with per-study Gaussian detector blur applied in Fourier space,
``H(f) = exp(-2 pi^2 sigma^2 |f|^2)``).

Group attributes: ``sex`` (F/M), ``age_band`` ("18-40", "40-65", "65+") and ``site`` (A/B/C: each
site has its own exposure, contrast and detector blur, :data:`SITE_PROFILES`).

Bias knobs (fields of :class:`ChestXrayParams`): group shares, prevalence per group, label noise
(under-diagnosis) per group and image quality per group.  ``bias="none"`` switches every knob to its
neutral value unless the knob is given explicitly, so one injected bias can be studied alone.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, field_validator, model_validator
from scipy.special import ndtri

from reconaudit.cohorts.base import Cohort, assign_splits_by_patient
from reconaudit.progress import task
from reconaudit.seeding import derive_seed

logger = logging.getLogger(__name__)

__all__ = [
    "AGE_BANDS",
    "ChestXrayParams",
    "GROUP_VALUES",
    "LABELS",
    "LATENT_CORRELATION",
    "NEUTRAL_BIAS",
    "QualityShift",
    "SITE_PROFILES",
    "chest_xray_table",
    "generate_chest_xray",
]

LABELS: tuple[str, ...] = ("cardiomegaly", "effusion", "nodule", "consolidation", "pneumothorax")
SEXES: tuple[str, ...] = ("F", "M")
AGE_BANDS: tuple[str, ...] = ("18-40", "40-65", "65+")
SITES: tuple[str, ...] = ("A", "B", "C")
GROUP_VALUES: dict[str, tuple[str, ...]] = {"sex": SEXES, "age_band": AGE_BANDS, "site": SITES}
_AGE_RANGE = {"18-40": (18, 39), "40-65": (40, 64), "65+": (65, 90)}

#: Correlation of the latent Gaussian over (cardiomegaly, effusion, nodule, consolidation,
#: pneumothorax).  Effusion goes with cardiomegaly (heart failure) and with consolidation
#: (parapneumonic effusion); nodules weakly with consolidation; pneumothorax slightly against effusion.
LATENT_CORRELATION = np.array(
    [
        [1.00, 0.55, 0.00, 0.15, 0.00],
        [0.55, 1.00, 0.10, 0.45, -0.10],
        [0.00, 0.10, 1.00, 0.10, 0.00],
        [0.15, 0.45, 0.10, 1.00, 0.05],
        [0.00, -0.10, 0.00, 0.05, 1.00],
    ]
)

#: Acquisition sites: display gain and offset, gamma (contrast) and detector blur (Gaussian sigma in
#: pixels at 64x64, scaled with the image size).  ``image = clip(gain * a + offset) ** gamma``.
SITE_PROFILES: dict[str, dict[str, float]] = {
    "A": {"gain": 1.00, "offset": 0.00, "gamma": 1.00, "blur": 0.25},
    "B": {"gain": 1.06, "offset": 0.02, "gamma": 0.85, "blur": 0.5},
    "C": {"gain": 0.95, "offset": 0.00, "gamma": 1.15, "blur": 0.35},
}

_ATT_SCALE = 0.72
_HEART_TILT = 0.45  # radians: long axis of the heart runs down towards the image right  # attenuation sum that maps to 1.0 before the site's display curve


class QualityShift(BaseModel, extra="forbid"):
    """Image-quality change applied to one group's images.

    The study image ``I`` becomes ``m + contrast * (I - m)`` (``m`` its mean), then is blurred by an
    extra Gaussian of standard deviation ``blur`` (pixels at 64x64, scaled with the size), added in
    quadrature to the site's detector blur.
    """

    blur: float = Field(0.0, ge=0.0, le=5.0, description="extra Gaussian blur sigma, pixels at 64x64")
    contrast: float = Field(1.0, gt=0.0, le=1.0, description="contrast multiplier in (0, 1]")


_BIAS_KNOBS = (
    "female_share",
    "age_band_shares",
    "site_shares",
    "prevalence_ratio",
    "age_prevalence_ratio",
    "label_miss_rate",
    "quality",
)

#: Neutral values of every bias knob (what ``bias="none"`` sets): equal group shares, equal
#: prevalence in every group, no label noise, the same image quality for everyone.
NEUTRAL_BIAS: dict[str, Any] = {
    "female_share": 0.5,
    "age_band_shares": {b: 1.0 / 3.0 for b in AGE_BANDS},
    "site_shares": {s: 1.0 / 3.0 for s in SITES},
    "prevalence_ratio": {},
    "age_prevalence_ratio": {},
    "label_miss_rate": {},
    "quality": {},
}


def _check_group_map(name: str, value: dict[str, dict[str, Any]]) -> None:
    for attr, per_value in value.items():
        if attr not in GROUP_VALUES:
            raise ValueError(f"{name}: unknown group attribute {attr!r}; allowed: {sorted(GROUP_VALUES)}")
        for v in per_value:
            if v not in GROUP_VALUES[attr]:
                raise ValueError(f"{name}[{attr!r}]: unknown value {v!r}; allowed: {GROUP_VALUES[attr]}")


def _check_shares(name: str, shares: dict[str, float], allowed: tuple[str, ...]) -> dict[str, float]:
    if set(shares) != set(allowed):
        raise ValueError(f"{name}: needs exactly the keys {allowed}, got {sorted(shares)}")
    if any(s < 0 for s in shares.values()) or abs(sum(shares.values()) - 1.0) > 1e-6:
        raise ValueError(f"{name}: shares must be non-negative and sum to 1, got {shares}")
    return {k: float(shares[k]) for k in allowed}


class ChestXrayParams(BaseModel, extra="forbid"):
    """Parameters of the synthetic chest X-ray cohort, bias knobs included.

    Bias knobs (``female_share``, ``age_band_shares``, ``site_shares``, ``prevalence_ratio``,
    ``age_prevalence_ratio``, ``label_miss_rate``, ``quality``) have mildly biased defaults
    (``bias="default"``): women are 40% of the cohort and 15% of their findings are missed in the
    label (documented under-diagnosis), 65+ images are slightly blurrier and flatter, sites are
    unbalanced, cardiomegaly and effusion are more common with age.  ``bias="none"`` sets every knob
    that is not given explicitly to its neutral value (:data:`NEUTRAL_BIAS`): equal shares, equal
    prevalence in every group, no label noise, equal image quality.  Giving one knob together with
    ``bias="none"`` therefore injects exactly that one bias.

    The prevalence of finding k for a study in groups g is
    ``p_k = prevalence[k] * prod_a prevalence_ratio[a][g_a] * age_prevalence_ratio[k][g_age]``
    (missing entries are 1), clipped to [0, 0.98].  A present finding is missed in the observed
    label with probability ``1 - prod_a (1 - label_miss_rate[a][g_a])``.
    """

    n_studies: int = Field(300, ge=1, description="number of studies")
    size: int = Field(64, ge=16, le=1024, description="image side length in pixels")
    seed: int = Field(0, description="seed of every draw")
    studies_per_patient: tuple[int, int] = Field(
        (1, 3), description="inclusive range of studies (baseline + follow-ups) per patient, drawn uniformly"
    )
    split_fractions: tuple[float, float, float] = Field(
        (0.6, 0.2, 0.2), description="train/val/test by patient"
    )
    prevalence: dict[str, float] = Field(
        default_factory=lambda: {
            "cardiomegaly": 0.2,
            "effusion": 0.18,
            "nodule": 0.18,
            "consolidation": 0.18,
            "pneumothorax": 0.12,
        },
        description="prevalence of each finding in the reference group (all multipliers 1)",
    )
    co_occurrence_strength: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="latent correlation R_s = (1 - s) I + s R; 0 makes findings independent",
    )
    follow_up_persistence: float = Field(
        0.7, ge=0.0, le=1.0, description="rho: share of a study's latent that is the patient's"
    )
    bias: Literal["default", "none"] = Field(
        "default", description="'none': every bias knob not given explicitly takes its neutral value"
    )
    female_share: float = Field(0.4, ge=0.0, le=1.0, description="share of female patients")
    age_band_shares: dict[str, float] = Field(
        default_factory=lambda: {"18-40": 0.3, "40-65": 0.4, "65+": 0.3}, description="share of each age band"
    )
    site_shares: dict[str, float] = Field(
        default_factory=lambda: {"A": 0.5, "B": 0.3, "C": 0.2}, description="share of each acquisition site"
    )
    prevalence_ratio: dict[str, dict[str, float]] = Field(
        default_factory=lambda: {"sex": {"F": 1.0, "M": 1.0}},
        description="attribute -> value -> multiplier of every finding's prevalence",
    )
    age_prevalence_ratio: dict[str, dict[str, float]] = Field(
        default_factory=lambda: {
            "cardiomegaly": {"18-40": 0.5, "40-65": 1.0, "65+": 1.6},
            "effusion": {"18-40": 0.6, "40-65": 1.0, "65+": 1.5},
        },
        description="finding -> age band -> prevalence multiplier (the physiological age trend)",
    )
    label_miss_rate: dict[str, dict[str, float]] = Field(
        default_factory=lambda: {"sex": {"F": 0.15}},
        description="attribute -> value -> probability that a present finding is labelled 0",
    )
    quality: dict[str, dict[str, QualityShift]] = Field(
        default_factory=lambda: {"age_band": {"65+": QualityShift(blur=0.4, contrast=0.9)}},
        description="attribute -> value -> extra blur / lower contrast for that group's images",
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_bias_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("bias") == "none":
            data = dict(data)
            for knob in _BIAS_KNOBS:
                if knob not in data:
                    data[knob] = NEUTRAL_BIAS[knob]
        return data

    @field_validator("studies_per_patient")
    @classmethod
    def _check_spp(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1]:
            raise ValueError(f"studies_per_patient must be (lo, hi) with 1 <= lo <= hi, got {v}")
        return v

    @field_validator("split_fractions")
    @classmethod
    def _check_fractions(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) < 0 or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"split_fractions must be non-negative and sum to 1, got {v}")
        return v

    @field_validator("prevalence")
    @classmethod
    def _check_prevalence(cls, v: dict[str, float]) -> dict[str, float]:
        if set(v) != set(LABELS):
            raise ValueError(f"prevalence needs exactly the findings {LABELS}, got {sorted(v)}")
        for k, p in v.items():
            if not 0.0 <= p <= 0.98:
                raise ValueError(f"prevalence[{k!r}] must lie in [0, 0.98], got {p}")
        return {k: float(v[k]) for k in LABELS}

    @field_validator("age_band_shares")
    @classmethod
    def _check_age_shares(cls, v: dict[str, float]) -> dict[str, float]:
        return _check_shares("age_band_shares", v, AGE_BANDS)

    @field_validator("site_shares")
    @classmethod
    def _check_site_shares(cls, v: dict[str, float]) -> dict[str, float]:
        return _check_shares("site_shares", v, SITES)

    @field_validator("prevalence_ratio")
    @classmethod
    def _check_ratio(cls, v: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        _check_group_map("prevalence_ratio", v)
        for attr, per in v.items():
            for g, r in per.items():
                if r < 0:
                    raise ValueError(f"prevalence_ratio[{attr!r}][{g!r}] must be >= 0, got {r}")
        return v

    @field_validator("age_prevalence_ratio")
    @classmethod
    def _check_age_ratio(cls, v: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for k, per in v.items():
            if k not in LABELS:
                raise ValueError(f"age_prevalence_ratio: unknown finding {k!r}; allowed: {LABELS}")
            for b, r in per.items():
                if b not in AGE_BANDS or r < 0:
                    raise ValueError(
                        f"age_prevalence_ratio[{k!r}]: need age bands {AGE_BANDS} -> ratio >= 0, got {b!r}: {r}"
                    )
        return v

    @field_validator("label_miss_rate")
    @classmethod
    def _check_miss(cls, v: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        _check_group_map("label_miss_rate", v)
        for attr, per in v.items():
            for g, r in per.items():
                if not 0.0 <= r <= 1.0:
                    raise ValueError(f"label_miss_rate[{attr!r}][{g!r}] must lie in [0, 1], got {r}")
        return v

    @field_validator("quality")
    @classmethod
    def _check_quality(cls, v: dict[str, dict[str, QualityShift]]) -> dict[str, dict[str, QualityShift]]:
        _check_group_map("quality", v)
        return v

    # ----------------------------------------------------------------- derived
    def active_biases(self) -> list[str]:
        """Human-readable list of the bias mechanisms that differ from neutral, with their strengths."""
        out: list[str] = []
        if abs(self.female_share - 0.5) > 1e-9:
            out.append(f"group share: female_share = {self.female_share:g} (neutral 0.5)")
        for name, shares in (("age_band_shares", self.age_band_shares), ("site_shares", self.site_shares)):
            if any(abs(s - 1.0 / 3.0) > 1e-6 for s in shares.values()):
                out.append(f"group share: {name} = " + ", ".join(f"{k}: {s:g}" for k, s in shares.items()))
        for attr, per in self.prevalence_ratio.items():
            for g, r in per.items():
                if abs(r - 1.0) > 1e-9:
                    out.append(f"prevalence: x{r:g} for every finding in {attr}={g}")
        for k, per in self.age_prevalence_ratio.items():
            if any(abs(r - 1.0) > 1e-9 for r in per.values()):
                out.append(
                    f"prevalence (age trend): {k} " + ", ".join(f"{b}: x{r:g}" for b, r in per.items())
                )
        for attr, per in self.label_miss_rate.items():
            for g, r in per.items():
                if r > 0:
                    out.append(f"label noise: {r:.0%} of present findings labelled 0 in {attr}={g}")
        for attr, per in self.quality.items():
            for g, q in per.items():
                if q.blur > 0 or q.contrast < 1:
                    out.append(
                        f"image quality: {attr}={g} extra blur {q.blur:g} px@64, contrast x{q.contrast:g}"
                    )
        return out


# ============================================================================ drawing
_F32 = torch.float32


def _sig(d: torch.Tensor, e: float | torch.Tensor) -> torch.Tensor:
    """Soft inside indicator ``sigma(d / e)`` of a signed distance ``d`` (positive inside)."""
    return torch.sigmoid(d / e)


def _smoothstep(a: float, b: float, x: torch.Tensor) -> torch.Tensor:
    t = ((x - a) / (b - a)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _lung_geometry(
    xs: torch.Tensor, y: torch.Tensor, p: dict[str, torch.Tensor], e: float, margin: float = 0.0
):
    """Soft lung mask and lateral coordinate ``u`` for one hemithorax (``xs``: distance from midline).

    Borders: medial ``xs = m``; lateral chest wall ``xs = Lw (1 - 0.25 ((y - 0.15) / 0.9)^2)``; apex
    ``y = y_apex + 0.9 (u - 0.35)^2``; hemidiaphragm ``y = y_dia + 0.1 u^2 - dome sin(pi u)``.
    ``margin`` shrinks the mask by that distance on every side.
    """
    m = p["mediastinum"] + 0.05 * _smoothstep(-0.55, 0.1, y)
    lw = p["thorax_half"]
    lat = lw * (1.0 - 0.25 * ((y - 0.15) / 0.9) ** 2)
    u = ((xs - m) / (lat - m)).clamp(-0.2, 1.2)
    uc = u.clamp(0.0, 1.0)
    y_top = p["apex"] + 0.9 * (u - 0.35) ** 2
    y_bot = p["diaphragm"] + 0.1 * uc**2 - p["dome"] * torch.sin(math.pi * uc)
    mask = (
        _sig(xs - m - margin, e)
        * _sig(lat - xs - margin, e)
        * _sig(y - y_top - margin, e)
        * _sig(y_bot - y - margin, e)
    )
    return mask, u


def _gaussian_blur_fft(img: torch.Tensor, sigma_px: torch.Tensor) -> torch.Tensor:
    """Blur each image with its own Gaussian, ``H(f) = exp(-2 pi^2 sigma^2 |f|^2)``, reflect-padded."""
    b, _, h, w = img.shape
    # a padding that depends on the size only, so a study's pixels never depend on its batch
    pad = min(int(math.ceil(20.0 * h / 64.0)), h - 1, w - 1)
    x = F.pad(img, (pad, pad, pad, pad), mode="reflect") if pad > 0 else img
    hh, ww = x.shape[-2:]
    fy = torch.fft.fftfreq(hh, dtype=_F32).view(1, 1, hh, 1)
    fx = torch.fft.rfftfreq(ww, dtype=_F32).view(1, 1, 1, ww // 2 + 1)
    s2 = (sigma_px.to(_F32) ** 2).view(b, 1, 1, 1)
    tf = torch.exp(-2.0 * math.pi**2 * s2 * (fx**2 + fy**2))
    out = torch.fft.irfft2(torch.fft.rfft2(x) * tf, s=(hh, ww))
    return out[..., pad : pad + h, pad : pad + w]


def _render(p: dict[str, torch.Tensor], size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render a batch of studies from their parameter tensors; returns (images, body masks, finding regions).

    The finding region of a study is the union of where its present findings are drawn: each
    nodule's disc of radius ``2 sigma`` of its Gaussian, and the pixels where the effusion,
    consolidation (over the lung) or pneumothorax gap reach half their full opacity.
    Cardiomegaly changes the heart's size rather than adding an opacity, so it has no region.

    Every entry of ``p`` is a tensor with the batch as first dimension (shape (B,) or (B, 2) per
    hemithorax, side 0 = image left = patient's right), or a low-resolution noise field.
    """
    b = p["scale"].shape[0]
    lin = (torch.arange(size, dtype=_F32) + 0.5) / size * 2.0 - 1.0
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")

    def col(name: str) -> torch.Tensor:  # (B,) -> (B,1,1,1)
        return p[name].to(_F32).view(b, 1, 1, 1)

    def side(name: str) -> torch.Tensor:  # (B,2) -> (B,2,1,1)
        return p[name].to(_F32).view(b, 2, 1, 1)

    # per-study pose: canonical coordinates of every pixel
    s, th = col("scale"), col("rotation")
    dx, dy = xx.view(1, 1, size, size) - col("shift_x"), yy.view(1, 1, size, size) - col("shift_y")
    cos, sin = torch.cos(th), torch.sin(th)
    x = (dx * cos + dy * sin) / s
    y = (-dx * sin + dy * cos) / s
    e = 0.7 * (2.0 / size)  # edge width in canonical units (about one pixel)
    e_px = 2.0 / size

    # ------------------------------------------------------------------ body and soft tissue
    half = 0.26 + 0.68 * _smoothstep(-0.98, -0.62, y)
    body = _sig(half - x.abs(), e) * _sig(y + 1.05, e)
    tissue = body * (0.22 + 0.23 * torch.sqrt((1.0 - (x / half) ** 2).clamp(min=0.0)))

    # ------------------------------------------------------------------ hemithoraces (B,2,H,W)
    sign = torch.tensor([-1.0, 1.0], dtype=_F32).view(1, 2, 1, 1)
    xs = x * sign  # distance from midline towards each side
    ps = {
        "mediastinum": side("mediastinum"),
        "thorax_half": col("thorax_half"),
        "apex": col("apex"),
        "diaphragm": side("diaphragm"),
        "dome": side("dome"),
    }
    lung, u = _lung_geometry(xs, y, ps, e)
    depth = (
        0.34
        * (0.78 + 0.22 * torch.sin(math.pi * u.clamp(0.0, 1.0)))
        * (0.85 + 0.15 * _smoothstep(-0.75, -0.2, y))
    )

    # heart, aortic knob (occlude the lungs)
    a_h, b_h = col("heart_a"), col("heart_b")
    xh, yh = col("heart_x"), col("heart_y")
    ct, st_ = math.cos(_HEART_TILT), math.sin(_HEART_TILT)
    hx_, hy_ = (x - xh) * ct + (y - yh) * st_, -(x - xh) * st_ + (y - yh) * ct
    rh = torch.sqrt((hx_ / a_h) ** 2 + (hy_ / b_h) ** 2)
    heart = _sig((1.0 - rh) * torch.minimum(a_h, b_h), e)
    ra = col("aorta_r")
    rk = torch.sqrt((x - 0.1 - 0.6 * ra) ** 2 + ((y + 0.33) / 0.8) ** 2)
    aorta = _sig(ra - rk, e)
    occl = (1.0 - heart) * (1.0 - aorta)

    # effusion: fluid below y_f(u) = y_cp - h (1 + 0.8 u^2), soft with the amount of fluid
    h_eff = side("effusion_h")
    uc = u.clamp(0.0, 1.0)
    y_f = ps["diaphragm"] + 0.08 - h_eff * (1.0 + 0.8 * uc**2)
    effusion = side("effusion_on") * side("effusion_op") * _sig(y - y_f, e + 0.12 * h_eff)

    # consolidation: thresholded smooth noise inside an elliptic envelope, one hemithorax
    noise_c = F.interpolate(
        p["consolidation_noise"].to(_F32), size=(size, size), mode="bicubic", align_corners=False
    )
    rc = torch.sqrt(
        ((xs - side("cons_x")) / side("cons_rx")) ** 2 + ((y - side("cons_y")) / side("cons_ry")) ** 2
    )
    envelope = _sig((1.0 - rc) * 0.25, 0.03)
    consolidation = side("cons_on") * side("cons_op") * envelope * torch.sigmoid((noise_c + 0.25) / 0.18)

    # pneumothorax: lung collapsed towards its medial base by fraction w
    w = side("ptx_w")
    ptx_on = side("ptx_on")
    cx = ps["mediastinum"] + 0.05
    cy = ps["diaphragm"] - 0.05
    xs_c = cx + (xs - cx) / (1.0 - w)
    y_c = cy + (y - cy) / (1.0 - w)
    lung_c, _ = _lung_geometry(xs_c, y_c, ps, e * 0.8)
    lung_inner, _ = _lung_geometry(xs, y, ps, e, margin=3.0 * e)
    gap = ptx_on * lung * (1.0 - lung_c)
    pleural = ptx_on * 4.0 * lung_c * (1.0 - lung_c) * lung_inner * side("ptx_line")

    # vascular markings radiating from the hila: (1/2 + 1/2 cos(n theta + phase))^6 exp(-r / 0.45)
    noise_m = F.interpolate(
        p["marking_noise"].to(_F32), size=(size, size), mode="bicubic", align_corners=False
    )
    hx, hy = xs - (ps["mediastinum"] + 0.1), y + 0.12
    r_hil = torch.sqrt(hx**2 + hy**2)
    theta = torch.atan2(hy, hx)
    stripes = (0.5 + 0.5 * torch.cos(13.0 * theta + side("marking_phase") + 2.5 * noise_m)) ** 6
    markings = 0.08 * stripes * torch.exp(-r_hil / 0.45) + 0.06 * torch.exp(-((r_hil / 0.12) ** 2))
    aerated = lung * (1.0 - effusion) * (1.0 - consolidation)
    markings = markings * aerated * (1.0 - gap) * col("marking_amp")

    reduction = depth * aerated + 0.06 * gap
    reduction = (reduction.sum(1, keepdim=True) - markings.sum(1, keepdim=True)) * occl
    pleural = pleural.sum(1, keepdim=True) * 0.11

    # ------------------------------------------------------------------ bones (scaled by density)
    dens = col("bone_density")
    xa = x.abs()
    vert = 0.65 + 0.35 * torch.cos(2.0 * math.pi * (y - col("spine_phase")) / 0.13) ** 2
    spine = 0.13 * _sig(0.085 - xa, e) * vert * _sig(y + 0.95, e)
    sp = col("rib_spacing")
    ur = (y - col("rib_y0") - col("rib_curv") * (xs - 0.12).clamp(min=0.0) ** 1.6) / sp
    tr = torch.remainder(ur, 1.0) - 0.5
    rib_band = _sig(0.2 - tr.abs(), e / sp)
    rib_extent = (
        _sig(ur, 0.05) * _sig(9.0 - ur, 0.05) * _sig(xs - 0.06, e) * _sig(ps["thorax_half"] + 0.07 - xs, e)
    )
    # ribs read fainter where they overlie mediastinum and abdomen than over aerated lung
    ribs = (rib_band * rib_extent * (0.45 + 0.55 * lung)).sum(1, keepdim=True)
    ua = (y - col("rib_y0") - 0.12 + 0.35 * (xs - 0.1)) / (1.1 * sp)
    ta = torch.remainder(ua, 1.0) - 0.5
    ant = _sig(0.15 - ta.abs(), e / sp) * _sig(ua, 0.05) * _sig(6.0 - ua, 0.05)
    ant = (ant * _sig(xs - 0.1, e) * _sig(ps["thorax_half"] - 0.05 - xs, e) * _sig(0.75 - xs, 0.05)).sum(
        1, keepdim=True
    )
    # clavicles: segment from (0.07, -0.74) to (0.62, -0.86) on each side
    ax, ay, bx, by = 0.07, -0.74, 0.62, -0.86
    t = (((xs - ax) * (bx - ax) + (y - ay) * (by - ay)) / ((bx - ax) ** 2 + (by - ay) ** 2)).clamp(0.0, 1.0)
    dcl = torch.sqrt((xs - ax - t * (bx - ax)) ** 2 + (y - ay - t * (by - ay)) ** 2)
    clav = _sig(0.035 - dcl, e).sum(1, keepdim=True)
    bones = dens * (spine + 0.085 * ribs + 0.04 * ant + 0.12 * clav) * body

    # ------------------------------------------------------------------ other soft tissue
    trachea = 0.09 * _sig(0.035 - (x - 0.01).abs(), e) * _sig(-0.3 - y, 0.03) * _sig(y + 1.0, e)
    bc_y = ps["diaphragm"] - 0.08
    rb = torch.sqrt(((xs - 0.46) / 0.36) ** 2 + ((y - bc_y) / 0.3) ** 2)
    breast = col("breast") * 0.075 * (1.0 - rb**2).clamp(min=0.0) * _sig(y - bc_y + 0.12, 0.06)
    breast = (breast * _sig(0.05 + 1.0 - rb, e)).sum(1, keepdim=True)

    # nodules: Gaussian of sigma = max(r / 1.5, 0.6 px) carrying the mass of a sphere of radius r
    nod = torch.zeros_like(x)
    nod_region = torch.zeros_like(x, dtype=torch.bool)
    for k in range(p["nodule_x"].shape[1]):
        r = p["nodule_r"][:, k].to(_F32).view(b, 1, 1, 1)
        sg = torch.clamp(r / 1.5, min=0.6 * e_px / s)
        amp = p["nodule_amp"][:, k].to(_F32).view(b, 1, 1, 1) * (r / 1.5) ** 2 / sg**2
        d2 = (x - p["nodule_x"][:, k].to(_F32).view(b, 1, 1, 1)) ** 2 + (
            y - p["nodule_y"][:, k].to(_F32).view(b, 1, 1, 1)
        ) ** 2
        nod = nod + amp * torch.exp(-d2 / (2.0 * sg**2))
        nod_region |= (amp > 0) & (d2 <= (2.0 * sg) ** 2)

    att = tissue - reduction + bones + 0.06 * heart * body + breast + nod + pleural - trachea * body
    att = att.clamp(min=0.0) / _ATT_SCALE

    # ------------------------------------------------------------------ display and detector
    img = (col("gain") * att + col("offset")).clamp(0.0, 1.0) ** col("gamma")
    mean = img.mean(dim=(2, 3), keepdim=True)
    img = mean + col("contrast") * (img - mean)
    img = _gaussian_blur_fft(img, p["blur"].to(_F32) * size / 64.0)
    # effusion and consolidation are visible only over the lung; half of each one's full opacity
    full_eff = side("effusion_on") * side("effusion_op")
    full_cons = side("cons_on") * side("cons_op")
    opaque = ((effusion * lung > 0.5 * full_eff) & (full_eff > 0)) | ((consolidation * lung > 0.5 * full_cons) & (full_cons > 0))
    finding = nod_region | opaque.any(1, keepdim=True) | (gap.amax(1, keepdim=True) > 0.5)
    return img.clamp(0.0, 1.0).contiguous(), (body > 0.5), (finding & (body > 0.5)).contiguous()


# ============================================================================ parameter draws
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


def _draw_study(params: ChestXrayParams, pat: dict[str, Any], visit: int, sid: str, chol: np.ndarray) -> dict:
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
    return {
        "truth": truth,
        "observed": observed,
        "age": age,
        "ctr": ctr,
        "scale": pat["scale"] * rng.normal(1.0, 0.01),
        "rotation": rng.normal(0.0, 0.025),
        "shift_x": rng.normal(0.0, 0.025),
        "shift_y": rng.normal(0.02, 0.025),
        "thorax_half": pat["thorax_half"],
        "apex": pat["apex"],
        "mediastinum": pat["mediastinum"],
        "dome": pat["dome"],
        "diaphragm": dia,
        "heart_a": heart_a,
        "heart_b": heart_b,
        "heart_x": ctr * pat["thorax_half"] * 0.3,
        "heart_y": dia[1] - 0.5 * heart_b,
        "aorta_r": pat["aorta_r"],
        "bone_density": pat["bone_density"],
        "breast": pat["breast"],
        "rib_spacing": pat["rib_spacing"],
        "rib_y0": pat["rib_y0"] + dia[1] - pat["dia_level"],
        "rib_curv": pat["rib_curv"],
        "spine_phase": pat["spine_phase"],
        "marking_phase": pat["marking_phase"] + rng.normal(0, 0.05, size=2),
        "marking_amp": pat["marking_amp"],
        "marking_noise": pat["marking_noise"],
        "effusion_on": eff_on,
        "effusion_h": np.full(2, pat["effusion_h"] * rng.uniform(0.85, 1.15)),
        "effusion_op": np.full(2, pat["effusion_op"]),
        "cons_on": cons_on,
        "cons_x": np.full(2, pat["cons_xy"][0]),
        "cons_y": np.full(2, pat["cons_xy"][1]),
        "cons_rx": np.full(2, pat["cons_rx"]),
        "cons_ry": np.full(2, pat["cons_ry"]),
        "cons_op": np.full(2, pat["cons_op"]),
        "consolidation_noise": cons_noise,
        "ptx_on": ptx_on,
        "ptx_w": np.full(2, pat["ptx_w"] * rng.uniform(0.85, 1.15)),
        "ptx_line": np.full(2, pat["ptx_line"]),
        "nodule_x": np.array([pat["nodule_xy"][0][0], pat["nodule_xy"][1][0]]),
        "nodule_y": np.array([pat["nodule_xy"][0][1], pat["nodule_xy"][1][1]]),
        "nodule_r": pat["nodule_r"] * grow,
        "nodule_amp": nod_amp,
        "gain": site["gain"] * rng.normal(1.0, 0.02),
        "offset": site["offset"],
        "gamma": site["gamma"] * rng.normal(1.0, 0.02),
        "contrast": contrast,
        "blur": math.sqrt(site["blur"] ** 2 + blur2),
    }


_RENDER_KEYS = (
    "scale", "rotation", "shift_x", "shift_y", "thorax_half", "apex", "mediastinum", "dome", "diaphragm",
    "heart_a", "heart_b", "heart_x", "heart_y", "aorta_r", "bone_density", "breast", "rib_spacing", "rib_y0",
    "rib_curv", "spine_phase", "marking_phase", "marking_amp", "marking_noise", "effusion_on", "effusion_h",
    "effusion_op", "cons_on", "cons_x", "cons_y", "cons_rx", "cons_ry", "cons_op", "consolidation_noise",
    "ptx_on", "ptx_w", "ptx_line", "nodule_x", "nodule_y", "nodule_r", "nodule_amp", "gain", "offset", "gamma",
    "contrast", "blur",
)  # fmt: skip


def _stack(studies: list[dict]) -> dict[str, torch.Tensor]:
    out = {}
    for k in _RENDER_KEYS:
        arr = np.stack([np.asarray(st[k], dtype=np.float64) for st in studies]).astype(np.float32)
        out[k] = torch.from_numpy(arr)
    out["consolidation_noise"] = out["consolidation_noise"].unsqueeze(1)  # (B,1,10,10)
    return out


# ============================================================================ data card
def _data_card(params: ChestXrayParams, table: pd.DataFrame) -> str:
    n_pat = table["patient_id"].nunique()
    lines = [
        "# Data card: chest-xray (synthetic)",
        "",
        f"- studies: {len(table)}; patients: {n_pat}; image size: {params.size}x{params.size}; seed: {params.seed}",
        f"- studies per patient: {params.studies_per_patient[0]}-{params.studies_per_patient[1]}"
        f" (follow-up persistence rho = {params.follow_up_persistence:g})",
        "- splits (by patient): "
        + ", ".join(f"{s}: {int((table['split'] == s).sum())}" for s in ("train", "val", "test")),
        "- images: attenuation maps in [0, 1] (bright = dense), one channel",
        f"- findings: {', '.join(LABELS)}; co-occurrence from a Gaussian copula "
        f"(strength {params.co_occurrence_strength:g})",
        f"- bias preset: `{params.bias}`",
        "",
        "## Bias mechanisms switched on",
        "",
    ]
    active = params.active_biases()
    lines += [f"- {a}" for a in active] if active else ["- none (all knobs neutral)"]
    lines += ["", "## Prevalence per group (observed label / true finding)", ""]
    header = "| attribute | group | studies | " + " | ".join(LABELS) + " |"
    lines += [header, "|" + " --- |" * (3 + len(LABELS))]
    rows = [("all", "all", table)]
    for attr, values in GROUP_VALUES.items():
        rows += [(attr, v, table[table[attr] == v]) for v in values]
    for attr, v, sub in rows:
        cells = []
        for k in LABELS:
            if len(sub):
                cells.append(f"{sub[k].mean():.1%} / {sub['true_' + k].mean():.1%}")
            else:
                cells.append("-")
        lines.append(f"| {attr} | {v} | {len(sub)} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


# ============================================================================ public entry points
def _resolve(params: ChestXrayParams | None, overrides: dict[str, Any]) -> ChestXrayParams:
    if params is None:
        return ChestXrayParams(**overrides)
    if overrides:
        return ChestXrayParams.model_validate({**params.model_dump(exclude_unset=True), **overrides})
    return params


def _draw_cohort(params: ChestXrayParams) -> tuple[list[dict], pd.DataFrame]:
    """Draw every patient and study (rendering parameters and labels; no pixels)."""
    s = params.co_occurrence_strength
    chol = np.linalg.cholesky((1.0 - s) * np.eye(len(LABELS)) + s * LATENT_CORRELATION)

    master = np.random.default_rng(derive_seed("cohort/chest-xray/visits", params.seed))
    lo, hi = params.studies_per_patient
    visits: list[int] = []
    while sum(visits) < params.n_studies:
        visits.append(int(master.integers(lo, hi + 1)))
    visits[-1] -= sum(visits) - params.n_studies
    width = max(5, len(str(len(visits))))

    studies: list[dict] = []
    rows: list[dict] = []
    for i, nv in enumerate(visits):
        pid = f"CXR-P{i:0{width}d}"
        pat = _draw_patient(params, pid, nv, chol)
        for j in range(nv):
            sid = f"{pid}-S{j}"
            st = _draw_study(params, pat, j, sid, chol)
            studies.append(st)
            row = {
                "study_id": sid,
                "patient_id": pid,
                "sex": pat["sex"],
                "age_band": pat["age_band"],
                "site": pat["site"],
                "age": st["age"],
                "visit": j,
                "cardiothoracic_ratio": st["ctr"],
                "effusion_height": st["effusion_h"][0] if st["truth"][1] else np.nan,
                "nodule_radius": float(st["nodule_r"][0]) if st["truth"][2] else np.nan,
                "pneumothorax_fraction": st["ptx_w"][0] if st["truth"][4] else np.nan,
            }
            row.update({k: float(v) for k, v in zip(LABELS, st["observed"])})
            row.update({f"true_{k}": float(v) for k, v in zip(LABELS, st["truth"])})
            rows.append(row)

    table = pd.DataFrame(rows)
    split = assign_splits_by_patient(table["patient_id"].to_numpy(), params.split_fractions, params.seed)
    table.insert(2, "split", split.astype(str))
    table["age"] = table["age"].astype(int)
    return studies, table


def chest_xray_table(params: ChestXrayParams | None = None, **overrides: Any) -> pd.DataFrame:
    """The study table of :func:`generate_chest_xray` (groups, splits, labels) without rendering images.

    Identical, row for row, to ``generate_chest_xray(params, **overrides).table``; cheap enough to
    study the label model (prevalence per group, co-occurrence, label noise) on many studies.
    """
    return _draw_cohort(_resolve(params, overrides))[1]


def generate_chest_xray(params: ChestXrayParams | None = None, **overrides: Any) -> Cohort:
    """Generate the synthetic chest X-ray cohort.

    Parameters
    ----------
    params:
        Full parameter set; ``None`` uses the defaults.
    **overrides:
        Fields of :class:`ChestXrayParams` that replace those of ``params`` (validated; an unknown
        key raises :class:`pydantic.ValidationError` naming it).  ``bias="none"`` given here still
        neutralises every knob that ``params`` did not set explicitly.

    Returns
    -------
    Cohort
        ``name="chest-xray"``, ``modality="xray"``, images (N, 1, H, W) float32 in [0, 1] (attenuation,
        so ``I ~ Poisson(photons exp(-mu_scale image))`` applies), a table with ``study_id``,
        ``patient_id``, ``split`` (by patient), ``sex``, ``age_band``, ``site``, ``age``, ``visit``,
        ``cardiothoracic_ratio``, the size of a present finding (``effusion_height``, ``nodule_radius``,
        ``pneumothorax_fraction`` in half-widths of the thorax frame; NaN when absent), the observed labels (float 1/0) and ``true_<label>`` columns, body
        masks as ``roi_masks``, the regions of the present findings as ``lesion_masks`` (see :func:`_render`), a generated data card and ``meta`` = the parameters.  Same
        parameters, same bits.

    Notes
    -----
    Finding k of a study is present when ``z_k < Phi^-1(p_k)`` with ``z = sqrt(rho) z_patient +
    sqrt(1 - rho) e``, ``z_patient, e ~ N(0, R_s)``, ``R_s = (1 - s) I + s R`` (Gaussian copula: the
    marginal prevalence is exactly ``p_k``).  The observed label is 0 with probability ``q_g`` (the
    group's miss rate) when the finding is present.  Rendering is batched over studies in chunks of
    ``min(256, 2**22 / size**2)``.
    """
    params = _resolve(params, overrides)
    studies, table = _draw_cohort(params)

    size = params.size
    chunk = int(max(1, min(256, 2**22 // (size * size))))
    images = torch.empty((len(studies), 1, size, size), dtype=_F32)
    roi = torch.empty((len(studies), 1, size, size), dtype=torch.bool)
    lesion = torch.empty((len(studies), 1, size, size), dtype=torch.bool)
    with task("chest-xray: rendering studies", total=len(studies)) as bar:
        for start in range(0, len(studies), chunk):
            batch = studies[start : start + chunk]
            img, body, finding = _render(_stack(batch), size)
            images[start : start + len(batch)] = img
            roi[start : start + len(batch)] = body
            lesion[start : start + len(batch)] = finding
            bar.advance(len(batch))
    logger.info(
        "chest-xray: %d studies of %d patients at %dx%d",
        len(studies),
        table["patient_id"].nunique(),
        size,
        size,
    )

    return Cohort(
        name="chest-xray",
        modality="xray",
        images=images,
        table=table,
        labels=list(LABELS),
        group_attributes=["sex", "age_band", "site"],
        roi_masks=roi,
        lesion_masks=lesion,
        data_card=_data_card(params, table),
        meta=params.model_dump(mode="json"),
    )
