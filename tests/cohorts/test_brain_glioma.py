"""The synthetic glioma cohort: determinism, shapes, targets, bias knobs, validation, anatomy."""

from __future__ import annotations

import importlib.util
import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from reconaudit.arrays import StudyArray
from reconaudit.cohorts import brain_glioma as bg
from reconaudit.cohorts.brain_glioma import (
    LABELS,
    BrainGliomaParams,
    generate_brain_glioma,
    sample_subjects,
)

_spec = importlib.util.spec_from_file_location("reconaudit_test_cohort_fixtures", Path(__file__).with_name("fixtures.py"))
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)

TINY = dict(
    n_subjects=4, slices_per_subject=2, size=32, seed=7, tumor_radius_mm=(11.0, 16.0), window_voxels=30
)


@pytest.fixture(scope="module")
def tiny():
    return generate_brain_glioma(**TINY)


def test_deterministic_and_independent_of_cohort_size(tiny):
    small = generate_brain_glioma(BrainGliomaParams(**{**TINY, "n_subjects": 2}))
    again = generate_brain_glioma(**{**TINY, "n_subjects": 2})
    assert torch.equal(small.images, again.images)
    assert torch.equal(small.masks, again.masks)
    assert small.table.equals(again.table)
    # a subject is the same whether the cohort has 2 or 4 subjects (per-subject seeds)
    assert torch.allclose(small.images, tiny.images[:4], atol=1e-6)
    assert torch.equal(small.masks, tiny.masks[:4])
    other = generate_brain_glioma(**{**TINY, "n_subjects": 1, "seed": 8})
    assert not torch.equal(other.images, tiny.images[:2])


def test_shapes_ranges_and_targets(tiny):
    n = TINY["n_subjects"] * TINY["slices_per_subject"]
    assert tiny.name == "brain-glioma" and tiny.modality == "mri"
    assert tuple(tiny.images.shape) == (n, 1, 32, 32) and tiny.images.dtype == torch.float32
    assert 0.0 <= float(tiny.images.min()) and float(tiny.images.max()) <= 1.0
    assert tiny.masks.dtype == torch.uint8 and set(tiny.masks.unique().tolist()) <= {0, 1}
    assert tiny.roi_masks.dtype == torch.bool
    area = tiny.masks.flatten(1).sum(1)
    brain = tiny.roi_masks.flatten(1).sum(1)
    assert bool((area > 0).all()), "every slice passes through the tumour"
    assert not bool((tiny.masks.bool() & ~tiny.roi_masks).any()), "tumour mask lies inside the brain"
    assert float((area / brain).mean()) > 0.02
    assert 0.25 < float(brain.float().mean()) / 32**2 < 0.75  # brain fills a plausible part of the FOV
    t = tiny.table
    assert tiny.labels == LABELS and tiny.group_attributes == ["sex", "age_band"]
    for lab in LABELS:
        assert set(t[lab].unique()) <= {0.0, 1.0} and set(t[f"true_{lab}"].unique()) <= {0.0, 1.0}
    type_cols = [lab for lab in LABELS if lab.startswith("type_")]
    assert (t[type_cols].sum(axis=1) == 1).all() and (
        t[["true_" + c for c in type_cols]].sum(axis=1) == 1
    ).all()
    p = BrainGliomaParams()
    assert ((t["front_speed"] > p.grade_speed_threshold) == (t["true_high_grade"] == 1)).all()
    assert (t.groupby("patient_id")["split"].nunique() == 1).all()
    assert (t.groupby("patient_id").size() == TINY["slices_per_subject"]).all()
    assert {"sex", "age_band", "age", "slice_index"} <= set(t.columns)
    assert "Prevalence per group" in tiny.data_card and "Bias mechanisms" in tiny.data_card
    assert tiny.meta["n_subjects"] == TINY["n_subjects"]


def test_save_load_roundtrip(tiny, tmp_path):
    tiny.save(tmp_path / "c")
    back = type(tiny).load(tmp_path / "c")
    assert isinstance(back.images, StudyArray)  # read lazily from the study store, bit for bit
    assert torch.equal(back.images.load(), tiny.images) and torch.equal(back.masks.load(), tiny.masks)
    assert torch.equal(back.roi_masks.load(), tiny.roi_masks) and back.roi_masks.dtype == torch.bool
    assert back.table[LABELS].equals(tiny.table[LABELS]) and back.meta == tiny.meta


def test_flair_and_t1_contrast_of_tumour(tiny):
    tumour = tiny.masks.bool()
    brain = tiny.roi_masks & ~tumour
    assert float(tiny.images[tumour].mean()) > float(tiny.images[brain].mean()) + 0.2  # FLAIR hyperintense
    t1 = generate_brain_glioma(**{**TINY, "n_subjects": 2, "contrast": "t1"})
    # same anatomy and tumour, T1: tumour darker than surrounding brain
    assert torch.equal(t1.masks, tiny.masks[:4])
    assert float(t1.images[t1.masks.bool()].mean()) < float(t1.images[t1.roi_masks & ~t1.masks.bool()].mean())


def _se(p, n):
    return math.sqrt(p * (1 - p) / n)


def test_prevalence_label_noise_and_quality_follow_knobs():
    p = BrainGliomaParams(n_subjects=3000, seed=1)
    s = sample_subjects(p)
    base = p.high_grade_prevalence
    for band, d in s.groupby("age_band"):
        odds = base / (1 - base) * p.high_grade_odds_ratio.get(f"age_band={band}", 1.0)
        want = odds / (1 + odds)
        assert abs(d["true_high_grade"].mean() - want) < 4 * _se(want, len(d)), band
    assert abs((s["sex"] == "F").mean() - p.sex_shares["F"]) < 4 * _se(p.sex_shares["F"], len(s))
    flips = s["high_grade"] != s["true_high_grade"]
    f = s["sex"] == "F"
    assert abs(flips[f].mean() - p.label_noise_by_group["sex=F"]) < 4 * _se(0.12, int(f.sum()))
    assert flips[~f].mean() == 0.0
    old = s["age_band"] == "65-85"
    assert (s.loc[old, "noise_sigma"] == p.noise_sigma_by_group["age_band=65-85"]).all()
    assert (s.loc[~old, "noise_sigma"] == p.noise_sigma).all()


def test_bias_off_gives_equal_groups():
    s = sample_subjects(n_subjects=3000, seed=2, bias=False)
    rates = s.groupby("age_band")["true_high_grade"].mean()
    assert rates.max() - rates.min() < 4 * math.sqrt(2) * _se(0.5, 1000)
    assert (s["p_high_grade"] == 0.5).all()
    assert (s["high_grade"] == s["true_high_grade"]).all()
    assert s["noise_sigma"].nunique() == 1 and s["blur_mm"].nunique() == 1
    shares = s["age_band"].value_counts(normalize=True)
    assert (shares - 1 / 3).abs().max() < 4 * _se(1 / 3, 3000)


def test_typos_and_bad_values_raise():
    with pytest.raises(ValidationError, match="n_subject"):
        BrainGliomaParams(n_subject=3)
    with pytest.raises(ValidationError):
        generate_brain_glioma(sizee=32)
    with pytest.raises(ValidationError, match="sex=X"):
        BrainGliomaParams(label_noise_by_group={"sex=X": 0.1})
    with pytest.raises(ValidationError, match="summing to 1"):
        BrainGliomaParams(sex_shares={"F": 0.7, "M": 0.7})
    with pytest.raises(ValidationError, match="contrast"):
        BrainGliomaParams(contrast="dwi")
    with pytest.raises(ValidationError, match="grade_speed_threshold"):
        BrainGliomaParams(grade_speed_threshold=1.0)


def test_template_is_bundled_and_loads_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access while loading the MNI152 template")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    bg.load_mni152_tissue.cache_clear()
    vol = bg.load_mni152_tissue()
    assert tuple(vol.shape) == (1, 3, 95, 117, 99)
    gm, wm, mask = vol[0]
    assert float(((gm + wm) * (1 - mask)).sum() / (gm + wm).sum()) < 0.01  # tissue lies in the mask


def test_atrophy_enlarges_ventricles_and_sex_scales_head():
    s, draws = bg._draw_subjects(BrainGliomaParams(n_subjects=2, seed=0))
    s = s.iloc[[0, 0, 0]].reset_index(drop=True)
    draws = {k: v[[0, 0, 0]] for k, v in draws.items()}
    s["atrophy"] = [0.0, 1.0, 0.0]
    s["head_scale"] = [1.0, 1.0, 1.1]
    p = BrainGliomaParams()
    warp = bg._Warp(s, draws, p)
    ax = torch.linspace(-90, 90, 91)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    pts = torch.stack([xx, yy - 17, torch.full_like(xx, 16.0)], -1).reshape(1, -1, 3).expand(3, -1, -1)
    atrophy = torch.tensor(s["atrophy"].to_numpy(), dtype=torch.float32)
    gm, wm, csf, mask = bg._tissue(bg.load_mni152_tissue(), warp(pts), atrophy, p.gm_loss)
    central = ((xx.abs() < 25) & ((yy - 17).abs() < 40)).reshape(1, -1)
    vent = ((csf > 0.5) & central).sum(1)
    assert int(vent[1]) > 1.3 * int(vent[0])  # ventricles grow with atrophy
    assert float(gm[1].sum()) < float(gm[0].sum())  # grey matter shrinks
    brain = (mask > 0.5).sum(1).double()
    assert float(brain[2] / brain[0]) == pytest.approx(1.1**2, rel=0.05)  # area scales with scale^2


# two subjects per generation batch at TINY's size and slices: three subjects make two batches
TWO_A_BATCH = 2 * (TINY["slices_per_subject"] * TINY["size"] ** 2 + 8 * TINY["window_voxels"] ** 2)


def test_written_shard_by_shard_is_the_cohort_generated_in_memory(tmp_path, monkeypatch):
    """write_cohort with shards of 3 studies (cutting across generation batches) stores what make_cohort
    returns: images, masks, brain masks, concentration, table (phenotypes), data card and meta."""
    from reconaudit.cohorts import Cohort, make_cohort, write_cohort

    monkeypatch.setattr(bg, "GENERATION_BUDGET", TWO_A_BATCH)
    params = {**TINY, "n_subjects": 3, "regression_columns": ["tumor_area_cm2", "infiltration_mm"],
              "isolines": [0.2]}
    mem = make_cohort("brain-glioma", **params)
    write_cohort("brain-glioma", tmp_path / "c", shard_studies=3, **params)
    fx.assert_same_cohort(Cohort.load(tmp_path / "c"), mem)
    bg.write_brain_glioma(BrainGliomaParams(**params), tmp_path / "d", shard_studies=4)
    fx.assert_same_cohort(Cohort.load(tmp_path / "d"), mem)


def test_stream_holds_one_generation_batch(monkeypatch):
    """Batches of at most ``chunk`` studies, generated a fixed generation batch at a time and only when due
    (never more than one batch ahead of the reader); the draws are arrays holding sample_subjects' numbers."""
    monkeypatch.setattr(bg, "GENERATION_BUDGET", TWO_A_BATCH)
    p = BrainGliomaParams(**{**TINY, "n_subjects": 3})
    assert bg.generation_chunk(p) == 2
    real, made = bg._generate_chunk, []

    def counted(sub, draws, params, vol):
        made.append(len(sub))
        return real(sub, draws, params, vol)

    monkeypatch.setattr(bg, "_generate_chunk", counted)
    stream = bg.brain_glioma_stream(p)
    assert stream.n == 6 and made == []
    s_per, seen, sizes = p.slices_per_subject, 0, []
    for batch in stream.batches(3):
        sizes.append(len(batch["images"]))
        seen += sizes[-1]
        assert sum(made) * s_per - seen < 2 * s_per  # what is generated and not yet yielded: < one batch
    assert sizes == [3, 3] and made == [2, 1] and batch["concentration"] is None
    sub, draws = bg._draw_subjects(p)
    assert draws["seed_u"].shape == (3, 64, 3)
    np.testing.assert_array_equal(np.array(sample_subjects(p)["seed_u"].tolist()), draws["seed_u"])
