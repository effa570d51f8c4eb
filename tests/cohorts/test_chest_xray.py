"""Tests of the synthetic chest X-ray cohort: determinism, layout, bias knobs, visible findings."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
import torch
from scipy.special import ndtri
from scipy.stats import binomtest, multivariate_normal
from sklearn.metrics import roc_auc_score

from reconaudit.cohorts.base import Cohort
from reconaudit.cohorts.chest_xray import (
    AGE_BANDS,
    LABELS,
    LATENT_CORRELATION,
    NEUTRAL_BIAS,
    ChestXrayParams,
    chest_xray_table,
    generate_chest_xray,
)

ZERO = dict.fromkeys(LABELS, 0.0)


@pytest.fixture(scope="module")
def visible() -> Cohort:
    """400 studies at 64x64 without bias, for image statistics."""
    return generate_chest_xray(n_studies=400, size=64, seed=5, bias="none")


def test_deterministic_and_seed_dependent():
    a = generate_chest_xray(n_studies=12, size=32, seed=3)
    b = generate_chest_xray(ChestXrayParams(n_studies=12, size=32, seed=3))
    c = generate_chest_xray(n_studies=12, size=32, seed=4)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.roi_masks, b.roi_masks)
    assert a.table.equals(b.table)
    assert a.data_card == b.data_card
    assert not torch.equal(a.images, c.images)
    # a study does not depend on how many studies follow it
    d = generate_chest_xray(n_studies=20, size=32, seed=3)
    same = d.table["study_id"].isin(a.table["study_id"]).to_numpy()
    first = a.table["patient_id"].iloc[-1]
    keep = torch.as_tensor((a.table["patient_id"] != first).to_numpy().copy())  # last patient may be cut
    rows = torch.as_tensor(np.flatnonzero(same)[: int(keep.sum())].copy())
    assert torch.equal(a.images[keep], d.images[rows])


def test_layout_shapes_ranges_columns():
    c = generate_chest_xray(n_studies=25, size=32, seed=0)
    assert c.name == "chest-xray" and c.modality == "xray"
    assert c.images.shape == (25, 1, 32, 32) and c.images.dtype == torch.float32
    assert float(c.images.min()) >= 0.0 and float(c.images.max()) <= 1.0
    assert c.roi_masks.dtype == torch.bool and c.roi_masks.shape == c.images.shape
    # the body covers most of the frame but not the corners above the shoulders
    frac = c.roi_masks.float().mean(dim=(1, 2, 3))
    assert bool(((frac > 0.6) & (frac < 0.98)).all())
    assert not bool(c.roi_masks[:, 0, 0, 0].any())
    assert c.labels == list(LABELS)
    assert c.group_attributes == ["sex", "age_band", "site"]
    for col in ("study_id", "patient_id", "split", "sex", "age_band", "site", "age", *LABELS):
        assert col in c.table.columns
    for k in LABELS:
        assert set(np.unique(c.table[k])) <= {0.0, 1.0} and c.table[k].dtype == np.float64
        assert f"true_{k}" in c.table.columns
    assert c.table["age"].dtype.kind == "i"
    lo = c.table["age_band"].map({"18-40": 18, "40-65": 40, "65+": 65})
    hi = c.table["age_band"].map({"18-40": 39, "40-65": 64, "65+": 90})
    assert bool(((c.table["age"] >= lo) & (c.table["age"] <= hi)).all())
    assert c.meta == ChestXrayParams(n_studies=25, size=32, seed=0).model_dump(mode="json")
    # body (attenuating) is brighter than the air outside it; lungs darker than the abdomen
    img = c.images[:, 0]
    assert float(img[c.roi_masks[:, 0]].mean()) > float(img[~c.roi_masks[:, 0]].mean()) + 0.2


def test_size_256_renders():
    c = generate_chest_xray(n_studies=2, size=256, seed=1)
    assert c.images.shape == (2, 1, 256, 256)
    # the same study at 64 and at 256 (area-averaged to 64) agree closely
    c64 = generate_chest_xray(n_studies=2, size=64, seed=1)
    down = torch.nn.functional.avg_pool2d(c.images, 4)
    assert float((down - c64.images).abs().mean()) < 0.03


def test_split_by_patient_and_follow_ups():
    c = generate_chest_xray(n_studies=120, size=16, seed=2, studies_per_patient=(1, 3))
    per_patient = c.table.groupby("patient_id")
    assert int(per_patient["split"].nunique().max()) == 1
    counts = per_patient.size()
    assert counts.max() <= 3 and counts.min() >= 1 and counts.max() > 1
    for col in ("sex", "age_band", "site"):
        assert int(per_patient[col].nunique().max()) == 1
    assert set(c.table["split"]) == {"train", "val", "test"}
    # follow-ups look like the same patient: closer to each other than to other patients
    pids = c.table["patient_id"].to_numpy()
    multi = counts[counts > 1].index[:10]
    within, between = [], []
    for pid in multi:
        i, j = np.flatnonzero(pids == pid)[:2]
        within.append(float((c.images[i] - c.images[j]).abs().mean()))
        k = int(np.flatnonzero(pids != pid)[0])
        between.append(float((c.images[i] - c.images[k]).abs().mean()))
    assert np.mean(within) < 0.6 * np.mean(between)


def test_table_matches_generated_cohort():
    c = generate_chest_xray(n_studies=30, size=16, seed=12)
    assert chest_xray_table(n_studies=30, size=16, seed=12).equals(c.table)


def test_bias_off_equal_prevalence_and_shares():
    t = chest_xray_table(n_studies=3000, seed=11, bias="none")
    p = ChestXrayParams()
    for k in LABELS:
        assert (t[k] == t[f"true_{k}"]).all(), "no label noise when bias='none'"
        for attr in ("sex", "age_band", "site"):
            rates = t.groupby(attr)[f"true_{k}"].agg(["sum", "count"])
            for _, row in rates.iterrows():
                # every group at the reference prevalence (two-sided binomial test, generous level)
                assert binomtest(int(row["sum"]), int(row["count"]), p.prevalence[k]).pvalue > 1e-3, (k, attr)
    patients = t.drop_duplicates("patient_id")
    assert binomtest(int((patients["sex"] == "F").sum()), len(patients), 0.5).pvalue > 1e-3
    for band in AGE_BANDS:
        assert binomtest(int((patients["age_band"] == band).sum()), len(patients), 1 / 3).pvalue > 1e-3


def test_prevalence_ratio_follows_knob():
    t = chest_xray_table(n_studies=3000, seed=7, bias="none", prevalence_ratio={"sex": {"F": 2.0}})
    prev = ChestXrayParams().prevalence
    for k in LABELS:
        for sex, mult in (("F", 2.0), ("M", 1.0)):
            x = t.loc[t["sex"] == sex, f"true_{k}"]
            assert binomtest(int(x.sum()), len(x), prev[k] * mult).pvalue > 1e-3, (k, sex)


def test_label_miss_rate_follows_knob():
    miss = 0.4
    t = chest_xray_table(n_studies=3000, seed=8, bias="none", label_miss_rate={"sex": {"F": miss}})
    obs = t[list(LABELS)].to_numpy()
    true = t[[f"true_{k}" for k in LABELS]].to_numpy()
    assert bool((obs <= true).all()), "noise only removes present findings"
    f = (t["sex"] == "F").to_numpy()
    kept_f = obs[f].sum() / true[f].sum()
    assert binomtest(int(obs[f].sum()), int(true[f].sum()), 1 - miss).pvalue > 1e-3
    assert abs(kept_f - (1 - miss)) < 0.06
    assert bool((obs[~f] == true[~f]).all())


@pytest.mark.parametrize("strength", [1.0, 0.0])
def test_co_occurrence_follows_gaussian_copula(strength: float):
    """P(A and B) = Phi_2(Phi^-1(p_A), Phi^-1(p_B); s r_AB) for the latent copula."""
    t = chest_xray_table(n_studies=4000, seed=0, bias="none", co_occurrence_strength=strength)
    prev = ChestXrayParams().prevalence
    for a, b in (("cardiomegaly", "effusion"), ("effusion", "consolidation"), ("nodule", "pneumothorax")):
        r = strength * LATENT_CORRELATION[LABELS.index(a), LABELS.index(b)]
        expected = multivariate_normal(mean=[0, 0], cov=[[1, r], [r, 1]]).cdf(
            [ndtri(prev[a]), ndtri(prev[b])]
        )
        observed = float(((t[f"true_{a}"] == 1) & (t[f"true_{b}"] == 1)).mean())
        assert abs(observed - expected) < 0.015, (a, b, observed, expected)
    if strength == 1.0:
        cm = t["true_cardiomegaly"] == 1
        assert t.loc[cm, "true_effusion"].mean() > 2.0 * t.loc[~cm, "true_effusion"].mean()


def test_age_trend_of_prevalence():
    t = chest_xray_table(
        n_studies=3000, seed=9, age_prevalence_ratio={"cardiomegaly": {"18-40": 0.5, "65+": 1.6}}
    )
    by_age = t.groupby("age_band")["true_cardiomegaly"].mean()
    p = ChestXrayParams().prevalence["cardiomegaly"]
    for band, mult in (("18-40", 0.5), ("40-65", 1.0), ("65+", 1.6)):
        assert abs(by_age[band] - p * mult) < 0.04, band


def test_cardiomegaly_visible(visible: Cohort):
    t = visible.table
    y = t["true_cardiomegaly"].to_numpy()
    assert bool(((t["cardiothoracic_ratio"] > 0.5) == (y == 1)).all())
    # share of bright (dense) pixels in the lower mid-thorax band: the heart shadow widens
    img = visible.images[:, 0].numpy()
    stat = (img[:, 30:42, 8:56] > 0.6).mean(axis=(1, 2))
    assert roc_auc_score(y, stat) > 0.75


def _paired(k: str, n: int = 40, size: int = 32) -> tuple[Cohort, Cohort, np.ndarray]:
    """The same anatomy (same seed, one study per patient) without any finding and with finding ``k``."""
    kw = dict(
        n_studies=n, size=size, seed=4, bias="none", studies_per_patient=(1, 1), co_occurrence_strength=0
    )
    base = generate_chest_xray(prevalence=ZERO, **kw)
    pos = generate_chest_xray(prevalence={**ZERO, k: 0.98}, **kw)
    return base, pos, pos.table[f"true_{k}"].to_numpy() == 1


@pytest.mark.parametrize("k", LABELS)
def test_findings_change_images_where_expected(k: str):
    """Adding one finding to the same anatomy changes pixels inside the body only, in the right zone/sign."""
    base, pos, present = _paired(k)
    assert present.sum() >= 0.8 * len(present)
    # absent studies are bit-identical: a finding never leaks into other pixels or studies
    assert torch.equal(pos.images[~present], base.images[~present])
    diff = (pos.images - base.images)[present, 0].numpy()
    body = pos.roi_masks[present, 0].numpy()
    assert float(np.abs(diff).max(axis=(1, 2)).min()) > 0.01
    assert float(np.abs(diff[~body]).max()) < 0.05
    upper, lower = diff[:, 4:15].sum(axis=(1, 2)), diff[:, 17:26].sum(axis=(1, 2))
    if k == "effusion":  # basal opacity: lower lung zones brighter, far more than upper ones
        assert np.mean(lower > 0.05) > 0.95 and np.mean(lower > np.abs(upper)) > 0.9
    elif k == "pneumothorax":  # air rim: darker pixels, mostly in the upper zones
        assert np.mean(diff.min(axis=(1, 2)) < -0.01) > 0.95
        assert np.mean(np.minimum(diff, 0).sum(axis=(1, 2)) < -np.maximum(diff, 0).sum(axis=(1, 2))) > 0.8
    elif k in ("nodule", "consolidation"):  # added density
        assert np.mean(diff.sum(axis=(1, 2)) > 0) > 0.95
    else:  # cardiomegaly: the heart widens, the bright area grows in the lower mid thorax
        assert np.mean(lower > 0) > 0.95
        assert float(np.abs(diff[:, :, :4]).max()) < 0.02  # lateral chest wall untouched


def test_nodule_size_is_recorded_and_small_nodules_are_fainter():
    base, pos, present = _paired("nodule", n=30, size=48)
    r = pos.table["nodule_radius"].to_numpy()[present]
    peak = (pos.images - base.images)[present].amax(dim=(1, 2, 3)).numpy()
    assert np.isnan(base.table["nodule_radius"]).all() and not np.isnan(r).any()
    small, large = r < np.median(r), r >= np.median(r)
    assert np.median(peak[small]) < np.median(peak[large])


def test_quality_knob_changes_only_that_group():
    kw = dict(n_studies=30, size=32, seed=6, bias="none")
    base = generate_chest_xray(**kw)
    q = generate_chest_xray(**kw, quality={"sex": {"F": {"blur": 1.5, "contrast": 0.6}}})
    f = torch.as_tensor((q.table["sex"] == "F").to_numpy().copy())
    assert bool(f.any()) and bool((~f).any())
    assert torch.equal(q.images[~f], base.images[~f])
    assert torch.equal(q.roi_masks, base.roi_masks)
    # lower contrast and blur: smaller spread and smaller gradients
    assert float(q.images[f].std(dim=(2, 3)).mean()) < float(base.images[f].std(dim=(2, 3)).mean())
    gq = (q.images[f][..., 1:] - q.images[f][..., :-1]).abs().mean()
    gb = (base.images[f][..., 1:] - base.images[f][..., :-1]).abs().mean()
    assert float(gq) < 0.8 * float(gb)


def test_params_validation_and_presets():
    with pytest.raises(pydantic.ValidationError, match="female_shar"):
        generate_chest_xray(n_studies=4, size=16, female_shar=0.3)
    with pytest.raises(pydantic.ValidationError, match="age_band_shares"):
        ChestXrayParams(age_band_shares={"18-40": 0.5, "40-65": 0.5})
    with pytest.raises(pydantic.ValidationError, match="unknown value"):
        ChestXrayParams(label_miss_rate={"sex": {"X": 0.1}})
    with pytest.raises(pydantic.ValidationError, match="unknown group attribute"):
        ChestXrayParams(quality={"race": {"A": {"blur": 1.0}}})
    none = ChestXrayParams(bias="none")
    for knob, neutral in NEUTRAL_BIAS.items():
        assert getattr(none, knob) == neutral or none.model_dump()[knob] == neutral
    assert none.active_biases() == []
    assert len(ChestXrayParams().active_biases()) >= 3
    # one explicit knob on top of the neutral preset
    one = ChestXrayParams(bias="none", label_miss_rate={"sex": {"F": 0.2}})
    assert one.female_share == 0.5 and one.active_biases() == [
        "label noise: 20% of present findings labelled 0 in sex=F"
    ]
    # overrides keep the preset semantics of the given params
    c = generate_chest_xray(ChestXrayParams(n_studies=4, size=16), bias="none")
    assert c.meta["female_share"] == 0.5 and c.meta["n_studies"] == 4


def test_data_card_reports_groups_and_biases():
    c = generate_chest_xray(n_studies=40, size=16, seed=0)
    card = c.data_card
    assert "studies: 40" in card and f"patients: {c.table['patient_id'].nunique()}" in card
    assert "label noise: 15% of present findings labelled 0 in sex=F" in card
    for k in LABELS:
        assert k in card
    assert "| sex | F |" in card and "| site | C |" in card
    off = generate_chest_xray(n_studies=40, size=16, seed=0, bias="none").data_card
    assert "none (all knobs neutral)" in off
