"""With a bias knob on, the fairness gap reconaudit measures moves in the injected direction.

The "diagnostic model" here is a fixed image statistic that sees cardiomegaly (the share of dense
pixels in the lower mid-thorax band, where the heart shadow widens), so the test needs no training:
what changes between the two cohorts is only the injected bias, and what is checked is that the
metrics, computed as the audit computes them (threshold fixed on validation data, gaps on the
observed test labels), move the way the injected bias says they must.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from reconaudit.cohorts import make_cohort
from reconaudit.metrics import auroc, choose_threshold, equalized_odds_difference

N = 1200


def _score(cohort) -> np.ndarray:
    img = cohort.images[:, 0].numpy()
    return (img[:, 30:42, 8:56] > 0.6).mean(axis=(1, 2))


def _measure(cohort):
    s = _score(cohort)
    y = cohort.table["cardiomegaly"].to_numpy()
    va, te = cohort.indices("val"), cohort.indices("test")
    thr = choose_threshold(y[va], s[va], "sens_eq_spec")
    pred = (s[te] >= thr).astype(int)
    sex = cohort.table["sex"].to_numpy()[te]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eod = equalized_odds_difference(y[te].astype(int), pred, sensitive_features=sex)
        fpr = {g: float(((pred == 1) & (y[te] == 0) & (sex == g)).sum() / ((y[te] == 0) & (sex == g)).sum())
               for g in ("F", "M")}
    auc = {g: auroc(y[te][sex == g], s[te][sex == g]) for g in ("F", "M")}
    return eod, fpr, auc


@pytest.fixture(scope="module")
def neutral():
    return make_cohort("chest-xray", n_studies=N, size=64, seed=3, bias="none", female_share=0.5,
                       split_fractions=(0.4, 0.2, 0.4))


def test_label_noise_for_women_raises_their_false_positive_rate(neutral):
    biased = make_cohort("chest-xray", n_studies=N, size=64, seed=3, bias="none", female_share=0.5,
                         split_fractions=(0.4, 0.2, 0.4), label_miss_rate={"sex": {"F": 0.6}})
    # same images, only the observed labels differ (findings missed for women)
    assert np.array_equal(biased.images.numpy(), neutral.images.numpy())
    eod0, fpr0, _ = _measure(neutral)
    eod1, fpr1, _ = _measure(biased)
    # missed findings are scored positive by a model that sees them: women's FPR rises
    assert fpr1["F"] - fpr1["M"] > fpr0["F"] - fpr0["M"] + 0.05
    assert eod1 > eod0  # and the equalized-odds difference, the max of the TPR and FPR gaps, with it


def test_worse_image_quality_for_women_lowers_their_auroc(neutral):
    biased = make_cohort("chest-xray", n_studies=N, size=64, seed=3, bias="none", female_share=0.5,
                         split_fractions=(0.4, 0.2, 0.4),
                         quality={"sex": {"F": {"blur": 2.5, "contrast": 0.5}}})
    _, _, auc0 = _measure(neutral)
    _, _, auc1 = _measure(biased)
    gap0 = auc0["M"] - auc0["F"]
    gap1 = auc1["M"] - auc1["F"]
    assert gap1 > gap0 + 0.05  # the injected group (F) is the one that gets worse
    assert abs(auc1["M"] - auc0["M"]) < 1e-12  # men's images are untouched
