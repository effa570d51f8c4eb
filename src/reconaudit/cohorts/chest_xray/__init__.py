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

Modules: :mod:`.params` (groups, labels, bias knobs, :class:`ChestXrayParams`), :mod:`.draws`
(patients and studies), :mod:`.anatomy` (the renderer), :mod:`.card` (the data card),
:mod:`.generate` (:func:`generate_chest_xray` and the registry entry :class:`ChestXrayCohort`).
"""

from reconaudit.cohorts.chest_xray.generate import ChestXrayCohort, chest_xray_table, generate_chest_xray
from reconaudit.cohorts.chest_xray.params import (
    AGE_BANDS,
    GROUP_VALUES,
    LABELS,
    LATENT_CORRELATION,
    NEUTRAL_BIAS,
    SITE_PROFILES,
    ChestXrayParams,
    QualityShift,
)

__all__ = [
    "AGE_BANDS",
    "ChestXrayCohort",
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
