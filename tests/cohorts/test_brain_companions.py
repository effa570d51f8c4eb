"""brain-glioma's companion outputs: phenotypes, the concentration field and longitudinal series."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from reconaudit.cohorts import make_cohort, supported_tasks
from reconaudit.engine.companions import companion_columns, isoline_scores
from reconaudit.metrics import series_growth

BASE = dict(n_subjects=6, slices_per_subject=2, size=32)
ALL = ["tumor_area_cm2", "infiltration_mm", "tumor_volume_ml"]


@pytest.fixture(scope="module")
def plain():
    return make_cohort("brain-glioma", **BASE)


@pytest.fixture(scope="module")
def rich():
    return make_cohort("brain-glioma", **BASE, regression_columns=ALL, isolines=[0.01, 0.16, 0.5])


@pytest.fixture(scope="module")
def series():
    return make_cohort("brain-glioma", **BASE, regression_columns=["tumor_area_cm2"], time_points=[0.4, 0.7, 1.0])


def test_new_options_leave_the_default_cohort_unchanged(plain, rich):
    assert torch.equal(plain.images, rich.images) and torch.equal(plain.masks, rich.masks)
    assert list(plain.table["study_id"]) == list(rich.table["study_id"])
    assert set(rich.table.columns) - set(plain.table.columns) == set(ALL)
    pd.testing.assert_frame_equal(plain.table, rich.table[plain.table.columns])
    assert plain.regression == [] and plain.concentration is None
    assert rich.regression == ALL and rich.concentration.shape == rich.images.shape


def test_regression_is_a_task_only_with_regression_columns():
    assert "regression" not in supported_tasks("brain-glioma", {})
    assert "regression" in supported_tasks("brain-glioma", {"regression_columns": ["tumor_area_cm2"]})


def test_bad_companion_params_name_the_key():
    with pytest.raises(Exception, match="regression_columns"):
        make_cohort("brain-glioma", **BASE, regression_columns=["tumour_size"])
    with pytest.raises(Exception, match="isolines"):
        make_cohort("brain-glioma", **BASE, isolines=[0.5, 0.1])
    with pytest.raises(Exception, match="time_points"):
        make_cohort("brain-glioma", **BASE, time_points=[0.0, 1.0])


def test_phenotypes_follow_from_the_masks_and_the_concentration(rich):
    area = (220.0 / 32) ** 2  # default field of view over size, mm^2 per pixel
    vis = rich.masks.flatten(1).sum(1).numpy() * area
    np.testing.assert_allclose(rich.table["tumor_area_cm2"], vis / 100, rtol=1e-12)
    inf = ((rich.concentration > 0.01) & rich.roi_masks).flatten(1).sum(1).numpy() * area
    np.testing.assert_allclose(rich.table["infiltration_mm"], np.sqrt(inf / math.pi) - np.sqrt(vis / math.pi), rtol=1e-9)
    assert (rich.table["infiltration_mm"] >= 0).all() and (rich.table["tumor_volume_ml"] > 0).all()
    np.testing.assert_array_equal(rich.regression_targets(), rich.table[ALL].to_numpy(np.float32))


def test_isoline_dice_equals_dice_of_independently_thresholded_concentration(rich):
    rng = np.random.default_rng(0)
    pred = rich.masks.numpy().copy()
    pred[rng.random(pred.shape) < 0.02] ^= 1  # a perturbed segmentation
    conc, roi = rich.concentration.numpy(), rich.roi_masks.numpy()
    scores = isoline_scores(pred, conc, [0.01, 0.5], roi)
    for iso, (d, e) in scores.items():
        for i in range(len(pred)):
            p, t = pred[i].astype(bool), (conc[i] > iso) & roi[i]
            expected = 1.0 if p.sum() + t.sum() == 0 else 2 * (p & t).sum() / (p.sum() + t.sum())
            assert d[i] == pytest.approx(expected)
            if t.sum():
                assert e[i] == pytest.approx((p.sum() - t.sum()) / t.sum())
    # the cohort's own visible mask is exactly the isoline at the mask threshold (0.16)
    d, _ = isoline_scores(rich.masks.numpy(), conc, [0.16], roi)[0.16]
    np.testing.assert_allclose(d, 1.0)


def test_companion_columns_of_a_cohort(rich):
    te = rich.indices("test")
    seg = rich.masks[torch.as_tensor(te)].numpy()
    cols = companion_columns(rich, te, rich.images[torch.as_tensor(te)], {}, seg)
    np.testing.assert_allclose(cols["isoline_dice:0.16"], 1.0)
    assert set(cols) == {f"{p}:{i}" for p in ("isoline_dice", "isoline_volume_error") for i in ("0.01", "0.16", "0.5")}
    assert companion_columns(make_cohort("brain-glioma", **BASE), te, None, {}, seg) == {}


def test_series_share_anatomy_and_grow(series):
    t = series.table.sort_values(["series_id", "time_index"])
    assert len(series) == 6 * 2 * 3
    assert all(sorted(v) == [0, 1, 2] for v in t.groupby("series_id")["time_index"].apply(list))
    assert (t.groupby("series_id")["patient_id"].nunique() == 1).all()
    last = t.groupby("series_id")["growth_days"].max()
    first = t.groupby("series_id")["growth_days"].min()
    np.testing.assert_allclose(first / last, 0.4, rtol=1e-9)
    # tumours grow: the visible area never shrinks from the first to the last time point
    assert (t.groupby("series_id")["tumor_px"].last() >= t.groupby("series_id")["tumor_px"].first()).all()
    assert (t.groupby("series_id")["tumor_px"].last() > t.groupby("series_id")["tumor_px"].first()).mean() > 0.8


def test_measured_growth_of_the_clean_series_equals_the_generators(series):
    """Measuring growth on the clean series (the true masks) gives the generator's own area change."""
    te = np.arange(len(series))
    cols = companion_columns(series, te, series.images, {}, None)
    rec = pd.DataFrame({"patient_id": series.table["patient_id"], "group:sex": series.table["sex"], **cols,
                        "gen_seg_volume": series.masks.flatten(1).sum(1).numpy().astype(float)})
    g = series_growth(rec).set_index("series_id")
    tab = series.table.sort_values(["series_id", "time_index"])
    expected = (tab.groupby("series_id")["tumor_area_cm2"].last() - tab.groupby("series_id")["tumor_area_cm2"].first()) * 100
    np.testing.assert_allclose(g.loc[expected.index, "true_growth"], expected.to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(g["measured_growth"], g["true_growth"], rtol=1e-12)
    np.testing.assert_allclose(g["days"], 0.6 * tab.groupby("series_id")["growth_days"].last().loc[g.index], rtol=1e-9)


def test_manifest_takes_regression_columns(tmp_path):
    from tests.cohorts import fixtures as fx

    from reconaudit.cohorts.base import Cohort, CohortError
    from reconaudit.cohorts.manifest import load_manifest

    path = fx.write_manifest(tmp_path / "m")
    df = pd.read_csv(path)
    df["lvef"] = np.linspace(30, 70, len(df))
    df.loc[2, "lvef"] = np.nan
    df.to_csv(path, index=False)
    c = load_manifest(path=path, target_columns=["finding"], regression_columns=["lvef"], size=8)
    assert c.regression == ["lvef"] and np.isnan(c.regression_targets()[2, 0])
    np.testing.assert_allclose(c.regression_targets()[[0, 1], 0], df["lvef"].to_numpy()[[0, 1]], rtol=1e-6)
    assert "regression" in supported_tasks("manifest", {"path": str(path), "regression_columns": ["lvef"]})
    c.save(tmp_path / "saved")
    assert Cohort.load(tmp_path / "saved").regression == ["lvef"]
    df["lvef"] = df["lvef"].astype(object)
    df.loc[3, "lvef"] = "high"
    df.to_csv(path, index=False)
    with pytest.raises(CohortError, match="lvef"):
        load_manifest(path=path, regression_columns=["lvef"], size=8)


def test_chest_xray_exposes_the_cardiothoracic_ratio():
    plain = make_cohort("chest-xray", n_studies=30, size=32)
    c = make_cohort("chest-xray", n_studies=30, size=32, regression_columns=["cardiothoracic_ratio"])
    assert torch.equal(plain.images, c.images) and plain.regression == []
    np.testing.assert_allclose(c.regression_targets()[:, 0], c.table["cardiothoracic_ratio"], rtol=1e-6)
    # the label follows the phenotype: cardiomegaly is a ratio above 0.5
    truth = c.table["true_cardiomegaly"].to_numpy() == 1
    assert (c.table["cardiothoracic_ratio"][truth] > 0.5).all() and (c.table["cardiothoracic_ratio"][~truth] < 0.5).all()
    with pytest.raises(Exception, match="regression_columns"):
        make_cohort("chest-xray", n_studies=30, size=32, regression_columns=["lung_volume"])
