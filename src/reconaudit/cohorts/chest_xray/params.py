"""Parameters of the synthetic chest X-ray cohort: groups, labels, sites, bias knobs."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator, model_validator

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
    regression_columns: list[Literal["cardiothoracic_ratio"]] = Field(
        default_factory=list,
        description="ground-truth phenotypes exposed as regression targets: cardiothoracic_ratio (heart width "
        "over thorax width, the quantity behind cardiomegaly)",
    )
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
