"""Real-layout loaders (CheXpert, UCSF-PDGM, fastMRI, manifest) on tiny fixture files."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from reconaudit.cohorts.base import Cohort, CohortError
from reconaudit.cohorts.chexpert import ChexpertParams, load_chexpert, snake_case
from reconaudit.cohorts.fastmri import FastmriParams, fft2c, ifft2c, load_fastmri
from reconaudit.cohorts.manifest import ManifestParams, load_manifest
from reconaudit.cohorts.ucsf_pdgm import UcsfPdgmParams, load_ucsf_pdgm

_spec = importlib.util.spec_from_file_location("reconaudit_test_cohort_fixtures", Path(__file__).with_name("fixtures.py"))
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)


def _row(c: Cohort, study_id: str) -> pd.Series:
    return c.table.set_index("study_id").loc[study_id]


def _patient_split_ok(c: Cohort) -> None:
    assert (c.table.groupby("patient_id")["split"].nunique() == 1).all()
    assert set(c.table["split"]) <= {"train", "val", "test"}


# =============================================================================================== CheXpert
@pytest.fixture(scope="module")
def chexpert_root(tmp_path_factory) -> Path:
    return fx.write_chexpert(tmp_path_factory.mktemp("chexpert"))


def test_chexpert_layout_values_and_drops(chexpert_root, caplog):
    with caplog.at_level(logging.WARNING, logger="reconaudit"):
        c = load_chexpert(root=chexpert_root, csv="train.csv", size=16,
                          demographics_csv="CHEXPERT DEMO.csv", seed=3)
    # 10 CSV rows, 1 lateral removed by frontal_only, 1 corrupt image dropped
    assert len(c) == 8 and c.images.shape == (8, 1, 16, 16) and c.images.dtype == torch.float32
    assert c.meta["rows_in_csv"] == 10 and c.meta["rows_after_frontal_only"] == 9
    d = c.meta["dropped"]
    assert d["total"] == 1 and d["by_reason"] == {"unreadable image": 1}
    bad = "train/patient00006/study1/view1_frontal.jpg"
    assert d["entries"][0]["file"].endswith(bad)
    assert bad in c.data_card and "unreadable image" in c.data_card
    assert any("dropped 1 row" in r.getMessage() and bad in r.getMessage() for r in caplog.records)
    # identifiers parsed from the path, labels in snake_case
    assert "patient00002/study2/view1_frontal" in set(c.table["study_id"])
    assert c.labels == [snake_case(x) for x in fx.FINDINGS] and "pleural_effusion" in c.labels
    assert c.group_attributes == ["sex", "age_band", "race"]
    r2 = _row(c, "patient00002/study1/view1_frontal")
    assert r2["patient_id"] == "patient00002" and r2["age_band"] == "60-79" and r2["race"] == "Asian"
    assert _row(c, "patient00001/study1/view1_frontal")["age_band"] == "<40"
    assert _row(c, "patient00003/study1/view1_frontal")["age_band"] == "80+"
    assert list(c.table.loc[c.table["race"] == "unknown", "patient_id"]) == ["patient00008"]  # not in DEMO
    assert c.meta["rows_without_demographics"] == 1
    # image values: constant JPEG/PNG greys survive resizing
    for pat, sid in ((1, "patient00001/study1/view1_frontal"), (2, "patient00002/study2/view1_frontal")):
        i = int(np.flatnonzero(c.table["study_id"] == sid)[0])
        assert c.images[i].mean().item() == pytest.approx(fx.chexpert_value(pat) / 255, abs=2 / 255)
    # DICOM: modality LUT then min-max; compare with an independent antialiased resize of the ramp
    i = int(np.flatnonzero(c.table["study_id"] == "patient00003/study1/view1_frontal")[0])
    ramp = fx.chexpert_dicom_pixels().astype(np.float64)
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    ref = torch.nn.functional.interpolate(torch.tensor(ramp, dtype=torch.float32)[None, None], size=(16, 16),
                                          mode="bilinear", antialias=True)[0, 0].clamp(0, 1)
    assert torch.allclose(c.images[i, 0], ref, atol=1e-5)
    assert c.images[i, 0, :, 0].mean() < 0.1 and c.images[i, 0, :, -1].mean() > 0.9
    _patient_split_ok(c)
    assert "## By race" in c.data_card and "Cardiomegaly".lower() in c.data_card


@pytest.mark.parametrize(
    ("uncertain", "blank", "cardio_p1", "nofind_p1", "pe_p2"),
    [("zeros", "zeros", 0.0, 0.0, 0.0), ("ones", "zeros", 1.0, 0.0, 1.0), ("ignore", "ignore", np.nan, np.nan, np.nan),
     ("ones", "ignore", 1.0, np.nan, 1.0)],
)
def test_chexpert_uncertainty_policies(chexpert_root, uncertain, blank, cardio_p1, nofind_p1, pe_p2):
    c = load_chexpert(ChexpertParams(root=chexpert_root, size=8), uncertain_policy=uncertain, blank_policy=blank)
    r1 = _row(c, "patient00001/study1/view1_frontal")
    np.testing.assert_equal(r1["cardiomegaly"], cardio_p1)  # -1 in the CSV
    np.testing.assert_equal(r1["no_finding"], nofind_p1)  # blank in the CSV
    assert r1["edema"] == 1.0
    np.testing.assert_equal(_row(c, "patient00002/study1/view1_frontal")["pleural_effusion"], pe_p2)
    assert _row(c, "patient00002/study2/view1_frontal")["cardiomegaly"] == 0.0
    # patient 5 has only an uncertain label: under U-Ignore + blank ignore it has no label at all
    by = c.meta["dropped"]["by_reason"]
    if uncertain == "ignore" and blank == "ignore":
        assert by == {"unreadable image": 1, "no label": 1}
        assert "patient00005" not in set(c.table["patient_id"])
    else:
        assert by == {"unreadable image": 1}
    assert np.isin(c.targets()[np.isfinite(c.targets())], (0.0, 1.0)).all()


def test_chexpert_paths_relative_to_root_and_lateral_kept(tmp_path):
    root = fx.write_chexpert(tmp_path, prefix=False)
    c = load_chexpert(root=root, size=8, frontal_only=False, max_studies=100)
    assert len(c) == 9 and "patient00001/study1/view2_lateral" in set(c.table["study_id"])
    c2 = load_chexpert(root=root, size=8, max_studies=4, seed=1)
    # max_studies bounds the rows read (whole patients in a seeded order); drops come after
    assert len(c2) + c2.meta["dropped"]["total"] == 4 and c2.meta["params"]["max_studies"] == 4
    assert load_chexpert(root=root, size=8, max_studies=4, seed=1).table.equals(c2.table)


def test_chexpert_official_partitions(tmp_path):
    root = fx.write_chexpert(tmp_path)
    rows = []
    for pat in (20, 21):
        rel = f"valid/patient{pat:05d}/study1/view1_frontal.jpg"
        fx.gray(root / rel, 100)
        rows.append({"Path": f"{root.name}/{rel}", "Sex": "Female", "Age": 40, "Frontal/Lateral": "Frontal",
                     "AP/PA": "AP", **{k: 1 if k == "Edema" else 0 for k in fx.FINDINGS}})
    pd.DataFrame(rows).to_csv(root / "valid.csv", index=False)
    c = load_chexpert(root=root, csv=["train.csv", "valid.csv"], size=8)
    split = c.table.groupby("patient_id")["split"].first()
    # valid/ becomes the test split; val is drawn from train/ patients (fraction 0.2 / 0.8 of them)
    assert split[["patient00020", "patient00021"]].tolist() == ["test", "test"]
    train_patients = split.drop(["patient00020", "patient00021"])
    assert sorted(train_patients.value_counts().to_dict().items()) == [("train", 5), ("val", 2)]
    assert c.meta["split_rule"] == "CheXpert partitions from the path"
    pd.DataFrame([{**rows[0], "Path": rows[0]["Path"].replace("patient00020", "patient00001")}]).to_csv(
        root / "valid2.csv", index=False)
    fx.gray(root / "valid/patient00001/study1/view1_frontal.jpg", 100)
    with pytest.raises(CohortError, match=r"patient 'patient00001' appears in splits \['train', 'val'\]"):
        load_chexpert(root=root, csv=["train.csv", "valid2.csv"], size=8)


def test_chexpert_malformed(tmp_path):
    root = fx.write_chexpert(tmp_path)
    csv = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    csv.drop(columns=["Pleural Effusion"]).to_csv(root / "no_col.csv", index=False)
    with pytest.raises(CohortError, match=r"no_col\.csv has no column 'Pleural Effusion'"):
        load_chexpert(root=root, csv="no_col.csv")
    bad = csv.copy()
    bad.loc[3, "Cardiomegaly"] = "2"
    bad.to_csv(root / "bad_value.csv", index=False)
    with pytest.raises(CohortError, match=r"bad_value\.csv: row 3 \(line 5\), column 'Cardiomegaly': value '2'"):
        load_chexpert(root=root, csv="bad_value.csv")
    missing = csv.copy()
    missing.loc[4, "Path"] = "CheXpert-v1.0-small/train/patient00099/study1/view1_frontal.jpg"
    missing.to_csv(root / "missing.csv", index=False)
    with pytest.raises(CohortError, match=r"row 4 .*patient00099/study1/view1_frontal\.jpg' not found"):
        load_chexpert(root=root, csv="missing.csv")
    c = load_chexpert(root=root, csv="missing.csv", on_missing_image="drop", size=8)
    assert c.meta["dropped"]["by_reason"] == {"missing image": 1, "unreadable image": 1}
    with pytest.raises(CohortError, match="not found"):
        load_chexpert(root=root, csv="nope.csv")
    with pytest.raises(ValueError, match="extra"):
        ChexpertParams(root=root, colour="red")


def test_chexpert_written_shard_by_shard_is_the_cohort_loaded_in_memory(tmp_path, monkeypatch):
    """write_cohort("chexpert") with shards of 3 studies, shards of 4 decoded 2 at a time, and one shard
    stores what make_cohort and load_chexpert return: the same images (two input shapes), table, card, meta."""
    import reconaudit.cohorts._io as io
    from reconaudit.cohorts import make_cohort, write_cohort

    root = fx.write_chexpert(tmp_path)
    fx.gray(root / "train/patient00004/study1/view1_frontal.jpg", 90, shape=(20, 32))  # resized in its own batch
    kw = {"root": str(root), "size": 16, "demographics_csv": "CHEXPERT DEMO.csv", "seed": 3}
    mem = make_cohort("chexpert", **kw)
    same = load_chexpert(**kw)
    assert torch.equal(same.images, mem.images) and same.table.equals(mem.table) and same.data_card == mem.data_card
    assert len(mem) == 8 and mem.meta["dropped"]["by_reason"] == {"unreadable image": 1}
    for shard, chunk in ((3, 64), (4, 2), (1024, 64)):
        monkeypatch.setattr(io, "DECODE_CHUNK", chunk)
        d = tmp_path / f"s{shard}"
        write_cohort("chexpert", d, shard_studies=shard, **kw)
        c = Cohort.load(d)
        assert torch.equal(c.images[:], mem.images)
        pd.testing.assert_frame_equal(c.table, mem.table, check_exact=True)
        assert c.data_card == mem.data_card and c.meta == json.loads(json.dumps(mem.meta, default=str))
        assert c.labels == mem.labels and c.group_attributes == mem.group_attributes
    assert len(list((tmp_path / "s3" / "arrays.zarr" / "images" / "c").rglob("*"))) > 1  # several shard files


def test_chexpert_holds_at_most_one_chunk_of_decoded_images(tmp_path, monkeypatch):
    """Each image is decoded once to check it (and let go), then once more in chunks of DECODE_CHUNK:
    never more than one chunk of decoded images alive (loading them all first would hold 8)."""
    import reconaudit.cohorts._io as io
    from reconaudit.cohorts import write_cohort
    from reconaudit.cohorts.chexpert import chexpert_stream

    root = fx.write_chexpert(tmp_path)
    monkeypatch.setattr(io, "DECODE_CHUNK", 2)
    count = fx.DecodeCounter(io.read_image)
    monkeypatch.setattr(io, "read_image", count)
    stream = chexpert_stream(ChexpertParams(root=root, size=8))
    assert (count.calls, count.max_live, stream.n) == (9, 1, 8)  # 9 frontal rows checked, 1 unreadable
    assert [len(b["images"]) for b in stream.batches(5)] == [2, 2, 2, 2]
    assert count.calls == 9 + 8 and count.max_live == 2  # the kept rows decoded once more, 2 at a time
    count.calls = count.max_live = 0
    write_cohort("chexpert", tmp_path / "out", shard_studies=3, root=str(root), size=8)  # the cohort step
    assert count.calls == 9 + 8 and count.max_live <= 2


def test_chexpert_image_changed_between_check_and_load_is_an_error_naming_it(tmp_path):
    from reconaudit.cohorts.base import collect_stream, write_stream
    from reconaudit.cohorts.chexpert import chexpert_stream

    root = fx.write_chexpert(tmp_path)
    stream = chexpert_stream(ChexpertParams(root=root, size=8))  # every image checked
    f = root / "train/patient00004/study1/view1_frontal.jpg"
    f.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(CohortError, match=r"chexpert: image '.*patient00004/study1/view1_frontal\.jpg' "
                                          r"\(.*train\.csv: row 5 \(line 7\)\) decoded when the images were checked "
                                          r"but not when it was loaded"):
        write_stream(stream, tmp_path / "out", shard_studies=4)
    stream = chexpert_stream(ChexpertParams(root=root, size=8, on_missing_image="drop"))
    (root / "train/patient00007/study1/view1_frontal.jpg").unlink()
    with pytest.raises(CohortError, match=r"image '.*patient00007/study1/view1_frontal\.jpg' .*removed meanwhile"):
        collect_stream(stream)


# =============================================================================================== UCSF-PDGM
@pytest.fixture(scope="module")
def ucsf_root(tmp_path_factory) -> Path:
    return fx.write_ucsf(tmp_path_factory.mktemp("ucsf"))


def _expected_slice(a: np.ndarray) -> np.ndarray:
    return np.rot90(a, k=1)


def test_ucsf_pdgm_slices_masks_targets(ucsf_root):
    c = load_ucsf_pdgm(root=ucsf_root, size=16, slices="max_tumor", n_slices=2, seed=0)
    assert c.modality == "mri" and c.images.shape == (4, 1, 16, 16)
    assert list(c.table["study_id"]) == ["UCSF-PDGM-0004/z003", "UCSF-PDGM-0004/z004",
                                         "UCSF-PDGM-0017/z004", "UCSF-PDGM-0017/z005"]
    # metadata ID "UCSF-PDGM-004" matched to folder "UCSF-PDGM-0004_nifti" on the integer
    r = c.table.set_index("study_id")
    assert r.loc["UCSF-PDGM-0004/z003", "high_grade"] == 1.0 and r.loc["UCSF-PDGM-0017/z004", "high_grade"] == 0.0
    assert r.loc["UCSF-PDGM-0004/z003", "type_glioblastoma"] == 1.0
    assert r.loc["UCSF-PDGM-0017/z005", "type_oligodendroglioma"] == 1.0
    assert r.loc["UCSF-PDGM-0017/z005", "type_astrocytoma"] == 0.0 and "type_other" not in c.labels
    assert r.loc["UCSF-PDGM-0004/z003", "sex"] == "M" and r.loc["UCSF-PDGM-0017/z004", "age_band"] == "<40"
    # subject 99 is in the CSV without a folder: reported, not silent
    assert c.meta["dropped"]["by_reason"] == {"no image folder": 1}
    assert "UCSF-PDGM-metadata_v2.csv" in c.meta["dropped"]["entries"][0]["file"]
    # intensity: percentile 1-99 within brain (independent numpy computation)
    vol, seg = fx.ucsf_volumes(4)
    brain = vol > 0
    lo, hi = np.percentile(vol[brain], [1, 99])
    ref = np.where(brain, np.clip((vol - lo) / (hi - lo), 0, 1), 0)
    np.testing.assert_allclose(c.images[0, 0].numpy(), _expected_slice(ref[:, :, 3]), atol=1e-6)
    np.testing.assert_array_equal(c.masks[0, 0].numpy(), _expected_slice(seg[:, :, 3] > 0))
    np.testing.assert_array_equal(c.roi_masks[1, 0].numpy(), _expected_slice(brain[:, :, 4]))
    assert c.masks.dtype == torch.uint8 and c.masks[:, 0].sum().item() == 36 + 16 + 16 + 4
    _patient_split_ok(c)
    assert "mean mask fraction" in c.data_card


@pytest.mark.parametrize("et", [4, 3])
def test_ucsf_pdgm_label_policies_and_slice_rules(tmp_path, et):
    root = fx.write_ucsf(tmp_path, enhancing_label=et)
    vol, seg = fx.ucsf_volumes(4, et)
    enh = load_ucsf_pdgm(root=root, size=16, n_slices=1, label_policy="enhancing")
    core = load_ucsf_pdgm(root=root, size=16, n_slices=1, label_policy="core")
    assert list(enh.table["slice"]) == [3, 4]
    np.testing.assert_array_equal(enh.masks[0, 0].numpy(), _expected_slice(seg[:, :, 3] == et))
    assert enh.masks[0].sum().item() == 12
    np.testing.assert_array_equal(core.masks[0, 0].numpy(), _expected_slice(np.isin(seg[:, :, 3], (1, et))))
    assert core.masks[0].sum().item() == 16
    allt = load_ucsf_pdgm(root=root, size=8, slices="all_tumor")
    assert allt.table.groupby("patient_id")["slice"].apply(list).to_dict() == {
        "UCSF-PDGM-0004": [2, 3, 4], "UCSF-PDGM-0017": [4, 5]}
    every = load_ucsf_pdgm(root=root, size=8, slices="every_n", n_slices=3)
    assert list(every.table.loc[every.table["patient_id"] == "UCSF-PDGM-0004", "slice"]) == [0, 3, 6]


def test_ucsf_pdgm_malformed(tmp_path):
    root = fx.write_ucsf(tmp_path, corrupt=17)
    c = load_ucsf_pdgm(root=root, size=8)
    assert c.meta["dropped"]["by_reason"] == {"no image folder": 1, "unreadable volume": 1}
    entry = next(e for e in c.meta["dropped"]["entries"] if e["reason"] == "unreadable volume")
    assert entry["file"].endswith("UCSF-PDGM-0017_nifti/UCSF-PDGM-0017_FLAIR.nii.gz")
    assert "UCSF-PDGM-0017_FLAIR.nii.gz" in c.data_card and set(c.table["patient_id"]) == {"UCSF-PDGM-0004"}
    md = pd.read_csv(root / "UCSF-PDGM-metadata_v2.csv", dtype=str, keep_default_na=False)
    md.drop(columns=["WHO CNS Grade"]).to_csv(root / "m1.csv", index=False)
    with pytest.raises(CohortError, match=r"m1\.csv has no column 'WHO CNS Grade'"):
        load_ucsf_pdgm(root=root, metadata_csv="m1.csv")
    bad = md.copy()
    bad.loc[1, "Age at MRI"] = "thirty"
    bad.to_csv(root / "m2.csv", index=False)
    with pytest.raises(CohortError, match=r"m2\.csv: row 1 \(line 3\), column 'Age at MRI': value 'thirty'"):
        load_ucsf_pdgm(root=root, metadata_csv="m2.csv")
    bad = md.copy()
    bad.loc[0, "WHO CNS Grade"] = "5"
    bad.to_csv(root / "m3.csv", index=False)
    with pytest.raises(CohortError, match=r"row 0 \(line 2\), column 'WHO CNS Grade': value '5'"):
        load_ucsf_pdgm(root=root, metadata_csv="m3.csv")
    with pytest.raises(CohortError, match=r"missing\.csv' not found"):
        load_ucsf_pdgm(UcsfPdgmParams(root=root, metadata_csv="missing.csv"))


def test_ucsf_pdgm_written_shard_by_shard_is_the_cohort_loaded_in_memory(tmp_path):
    """write_cohort with shards of 2 and 3 slices (cutting across subjects) and one shard stores what
    make_cohort returns: images, masks, brain masks, table, data card (mask fractions) and drops."""
    import reconaudit.cohorts.ucsf_pdgm as ucsf
    from reconaudit.cohorts import make_cohort, write_cohort

    root = fx.write_ucsf(tmp_path / "u")
    params = dict(root=root, size=16, slices="all_tumor")
    mem = make_cohort("ucsf-pdgm", **params)
    assert len(mem) == 5 and mem.meta["dropped"]["by_reason"] == {"no image folder": 1}
    for shard in (2, 3, 1024):
        write_cohort("ucsf-pdgm", tmp_path / f"s{shard}", shard_studies=shard, **params)
        fx.assert_same_cohort(Cohort.load(tmp_path / f"s{shard}"), mem)
    bad = fx.write_ucsf(tmp_path / "bad", corrupt=17)  # a dropped subject: the same drops, stored
    ucsf.write_ucsf_pdgm(UcsfPdgmParams(root=bad, size=8), tmp_path / "sb", shard_studies=2)
    fx.assert_same_cohort(Cohort.load(tmp_path / "sb"), make_cohort("ucsf-pdgm", root=bad, size=8))


def test_ucsf_pdgm_stream_reads_one_subject_at_a_time(ucsf_root, monkeypatch):
    """The stream's batches hold at most ``chunk`` slices; after the first pass each kept subject is read
    once, when its slices are due, and at most one decoded volume is alive at a time."""
    import gc
    import weakref

    import reconaudit.cohorts.ucsf_pdgm as ucsf

    real, reads, live, live_at_read = ucsf._read_subject, [], [], []

    def counted(nib, folder, stem, f_img, f_seg):
        gc.collect()
        live_at_read.append(sum(r() is not None for r in live))  # the previous subject was let go
        out = real(nib, folder, stem, f_img, f_seg)
        reads.append(stem)
        live.append(weakref.ref(out[0]))
        return out

    monkeypatch.setattr(ucsf, "_read_subject", counted)
    stream = ucsf.ucsf_pdgm_stream(UcsfPdgmParams(root=ucsf_root, size=8, slices="all_tumor"))
    assert reads == ["UCSF-PDGM-0004", "UCSF-PDGM-0017"] and stream.n == 5  # first pass: slices chosen
    reads.clear()
    sizes, reads_at = [], []
    for batch in stream.batches(2):
        gc.collect()
        sizes.append(len(batch["images"]))
        reads_at.append(len(reads))
        assert sum(r() is not None for r in live) <= 1
    assert sizes == [2, 2, 1] and reads == ["UCSF-PDGM-0004", "UCSF-PDGM-0017"]
    assert reads_at == [1, 2, 2]  # subject 0017 is read only once subject 0004's slices are out
    assert live_at_read == [0, 0, 0, 0]  # both passes: never two decoded volumes at once
    assert list(stream.finish()["table"]["slice"]) == [2, 3, 4, 4, 5]


# =============================================================================================== fastMRI
@pytest.fixture(scope="module")
def fastmri_root(tmp_path_factory) -> Path:
    return fx.write_fastmri(tmp_path_factory.mktemp("fastmri"))


def test_fastmri_kspace_round_trip_and_values(fastmri_root):
    c = load_fastmri(root=fastmri_root, size=20, slices=3)
    assert c.kspace is not None and c.kspace.dtype == torch.complex64 and c.kspace.shape == (6, 1, 20, 20)
    assert list(c.table["slice"][:3]) == [1, 2, 3]  # middle 3 of 5
    assert list(c.table["patient_id"].unique()) == ["file1000001", "pt2"]  # attr absent → file name
    assert c.group_attributes == [] and c.labels == []
    assert "fairness across patient groups cannot be audited" in c.data_card
    # independent numpy oracle: crop rows 2:22 of the (24, 20) image, divide by the volume maximum
    img = fx.fastmri_image(seed=0)[1:4, 2:22, :]
    s = np.abs(img).max()
    np.testing.assert_allclose(c.images[:3, 0].numpy(), np.abs(img) / s, atol=1e-5)
    np.testing.assert_allclose(c.kspace[:3, 0].numpy(), fx.np_fft2c(img / s), atol=1e-5)
    np.testing.assert_allclose(np.abs(fx.np_ifft2c(c.kspace[:, 0].numpy())), c.images[:, 0].numpy(), atol=1e-5)
    assert c.table["kspace_scale"].iloc[0] == pytest.approx(s, rel=1e-5)
    # with resizing the round trip still holds (torch and numpy FFTs agree)
    c8 = load_fastmri(FastmriParams(root=fastmri_root, size=8, slices=2))
    assert c8.images.shape == (4, 1, 8, 8)
    torch.testing.assert_close(ifft2c(c8.kspace).abs(), c8.images, atol=1e-5, rtol=0)
    torch.testing.assert_close(fft2c(ifft2c(c8.kspace)), c8.kspace, atol=1e-5, rtol=0)
    assert c8.images.amax(dim=(1, 2, 3)).max().item() == pytest.approx(1.0, abs=1e-6)
    _patient_split_ok(c)


def test_fastmri_labels_and_metadata(fastmri_root):
    pd.DataFrame({"file": ["file1000001.h5", "file1000001.h5", "file1000002"], "slice": [1, 2, 2],
                  "meniscus_tear": [1, 0, 1]}).to_csv(fastmri_root / "wide.csv", index=False)
    pd.DataFrame({"file": ["file1000001", "file1000002.h5"], "sex": ["F", "M"], "age": [34, 71]}).to_csv(
        fastmri_root / "meta.csv", index=False)
    c = load_fastmri(root=fastmri_root, size=8, slices=3, labels_csv="wide.csv", metadata_csv="meta.csv")
    assert c.labels == ["meniscus_tear"]
    assert list(c.table["study_id"]) == ["file1000001/s001", "file1000001/s002", "file1000002/s002"]
    assert list(c.table["meniscus_tear"]) == [1.0, 0.0, 1.0]
    assert c.meta["dropped"]["by_reason"] == {"no label": 3}  # unlabelled slices are reported
    assert [e["detail"] for e in c.meta["dropped"]["entries"]][-1] == "slice 3 has no label in wide.csv"
    assert c.group_attributes == ["sex", "age_band"] and list(c.table["sex"]) == ["F", "F", "M"]
    assert list(c.table["age_band"]) == ["<40", "<40", "60-79"]
    assert c.kspace.shape[0] == c.images.shape[0] == 3
    # fastMRI+ style: one row per annotation; annotated files are negative where no box is listed
    pd.DataFrame({"file": ["file1000001", "file1000001", "file1000002"], "slice": [2, "", 3],
                  "study_level": ["No", "Yes", "No"], "x": [1, "", 2], "y": [1, "", 2], "width": [3, "", 3],
                  "height": [3, "", 3], "label": ["Meniscus Tear", "Joint Effusion", "Meniscus Tear"]}
                 ).to_csv(fastmri_root / "plus.csv", index=False)
    p = load_fastmri(root=fastmri_root, size=8, slices=3, labels_csv="plus.csv")
    assert p.labels == ["joint_effusion", "meniscus_tear"] and len(p) == 6
    assert list(p.table["meniscus_tear"]) == [0, 1, 0, 0, 0, 1]
    assert list(p.table["joint_effusion"]) == [1, 1, 1, 0, 0, 0]


def test_fastmri_malformed(tmp_path):
    root = fx.write_fastmri(tmp_path / "a", kspace=False, n_files=1)
    with pytest.raises(CohortError, match=r"file1000001\.h5 has no 'kspace' dataset.*reconstruction_esc"):
        load_fastmri(root=root)
    root = fx.write_fastmri(tmp_path / "b")
    (root / "file1000009.h5").write_bytes(b"garbage, not HDF5")
    c = load_fastmri(root=root, size=8, slices=1)
    assert c.meta["dropped"]["by_reason"] == {"unreadable file": 1} and len(c) == 2
    assert c.meta["dropped"]["entries"][0]["file"].endswith("file1000009.h5")
    pd.DataFrame({"file": ["file1000001"], "slice": ["two"], "tear": [1]}).to_csv(root / "l.csv", index=False)
    with pytest.raises(CohortError, match=r"l\.csv: row 0 \(line 2\), column 'slice': 'two'"):
        load_fastmri(root=root, labels_csv="l.csv")
    with pytest.raises(CohortError, match="no .h5 files"):
        load_fastmri(root=tmp_path)


def test_fastmri_stream_reads_headers_first_then_one_file_at_a_time(fastmri_root, monkeypatch):
    """The first pass reads each file's k-space once to check it, keeping nothing (a file whose k-space
    cannot be used is dropped there, as before streaming); the batches hold at most ``chunk`` slices and
    each file is read again once, when its slices are due."""
    import reconaudit.cohorts.fastmri as fm

    real, reads = fm.resample_kspace, []

    def counted(k, size, crop=None):
        reads.append(tuple(k.shape))
        return real(k, size, crop)

    monkeypatch.setattr(fm, "resample_kspace", counted)
    stream = fm.fastmri_stream(FastmriParams(root=fastmri_root, size=8, slices=3))
    assert stream.n == 6 and reads == [(3, 24, 20)] * 2  # every file checked once, one at a time
    sizes, reads_at = [], []
    for batch in stream.batches(2):
        sizes.append(len(batch["images"]))
        reads_at.append(len(reads))
        assert batch["kspace"].shape == (sizes[-1], 1, 8, 8)
    assert sizes == [2, 2, 2] and reads_at == [3, 4, 4] and reads == [(3, 24, 20)] * 4
    assert stream.finish()["table"]["kspace_scale"].notna().all()


def test_fastmri_unreadable_kspace_is_dropped_and_reported(tmp_path):
    """A file whose k-space is zero is dropped when the files are checked (reported with its reason),
    and the other file's slices load: the same cohort as without the bad file."""
    import h5py

    root = fx.write_fastmri(tmp_path, n_files=2)
    with h5py.File(root / "file1000002.h5", "r+") as h:
        h["kspace"][...] = 0
    c = load_fastmri(root=root, size=8, slices=2)
    assert set(c.table["file"]) == {"file1000001"} and len(c) == 2
    drops = c.meta["dropped"]
    assert "unreadable k-space" in str(drops) and "file1000002.h5" in str(drops)


def test_fastmri_file_changed_after_the_check_is_an_error_naming_it(tmp_path, monkeypatch):
    """K-space that read when the files were checked and fails when the cohort is loaded is an error
    naming the file (nothing is dropped silently after the study count was fixed)."""
    import h5py

    from reconaudit.cohorts import fastmri as fm

    root = fx.write_fastmri(tmp_path, n_files=2)
    stream = fm.fastmri_stream(fm.FastmriParams(root=root, size=8, slices=2))
    with h5py.File(root / "file1000002.h5", "r+") as h:
        h["kspace"][...] = 0
    with pytest.raises(CohortError, match=r"file1000002\.h5: unreadable k-space \(ValueError: k-space is zero"):
        list(stream.batches(64))


# =============================================================================================== manifest
@pytest.fixture(scope="module")
def manifest_path(tmp_path_factory) -> Path:
    return fx.write_manifest(tmp_path_factory.mktemp("manifest"))


def test_manifest_html_groups_masks_and_splits(manifest_path):
    c = load_manifest(path=manifest_path, target_columns=["finding"], group_columns=["sex", "site"],
                      mask_column="mask", split_column="split", size=16)
    assert len(c) == 12 and c.masks is not None and c.masks.shape == (12, 1, 16, 16)
    assert set(c.table["sex"]) == {"<b>F</b>", "M"} and set(c.table["site"]) == {"A & B", "C"}
    assert "&lt;b&gt;F&lt;/b&gt;" in c.data_card and "<b>" not in c.data_card
    np.testing.assert_array_equal(c.masks[:, 0, :, :8].numpy(), 1)
    np.testing.assert_array_equal(c.masks[:, 0, :, 8:].numpy(), 0)
    assert list(c.table["split"][:6]) == ["train"] * 4 + ["val"] * 2
    assert c.table["study_id"].iloc[3] == "images/p01_s1"
    np.testing.assert_allclose(c.images[3].mean().item(), (10 + 40) / 255, atol=1e-6)
    assert list(c.table["finding"][:4]) == [0.0, 1.0, 1.0, 0.0]
    # Parquet works the same, and without a split column splits are assigned by patient
    pq = manifest_path.with_suffix(".parquet")
    pd.read_csv(manifest_path).to_parquet(pq)
    c2 = load_manifest(ManifestParams(path=pq, group_columns=["sex"], target_columns=["finding"], seed=5))
    assert list(c2.table["sex"]) == list(c.table["sex"])
    _patient_split_ok(c2)
    c3 = Cohort.load(_save(c, manifest_path.parent / "saved"))
    assert list(c3.table["sex"]) == list(c.table["sex"])


def test_manifest_written_shard_by_shard_is_the_cohort_loaded_in_memory(tmp_path, monkeypatch):
    """write_manifest with shards of 3 studies, shards of 4 decoded 2 at a time, and one shard stores
    what load_manifest returns: the same arrays (images of two shapes, masks), table, data card and drops."""
    import reconaudit.cohorts.manifest as manifest
    from reconaudit.cohorts.manifest import ManifestCohort, write_manifest

    path = fx.write_manifest(tmp_path / "m")
    root = path.parent
    fx.gray(root / "images" / "wide.png", 90, shape=(20, 32))  # another shape: resized in its own batch
    m = np.zeros((20, 32), dtype=np.uint8)
    m[:, :7] = 255
    fx.Image.fromarray(m, mode="L").save(root / "masks" / "wide.png")
    (root / "images" / "broken.png").write_bytes(b"\x89PNG broken")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.loc[2, "path"] = "images/wide.png"
    df.loc[2, "mask"] = "masks/wide.png"
    df.loc[5, "path"] = "images/broken.png"
    df.loc[8, "finding"] = ""
    df.loc[9, "mask"] = ""
    df.to_csv(path, index=False)
    params = ManifestParams(path=path, target_columns=["finding"], group_columns=["sex", "site"], mask_column="mask",
                            size=16)
    mem = load_manifest(params)
    assert len(mem) == 9 and mem.meta["dropped"]["by_reason"] == {"no label": 1, "missing mask": 1,
                                                                   "unreadable image": 1}
    for shard, chunk in ((3, 64), (4, 2), (1024, 64)):
        monkeypatch.setattr(manifest, "DECODE_CHUNK", chunk)
        d = tmp_path / f"s{shard}"
        write_manifest(params, d, shard_studies=shard)
        c = Cohort.load(d)
        assert torch.equal(c.images[:], mem.images) and torch.equal(c.masks[:], mem.masks)
        pd.testing.assert_frame_equal(c.table, mem.table, check_exact=True)
        assert c.data_card == mem.data_card and c.meta == json.loads(json.dumps(mem.meta, default=str))
    assert len(list((tmp_path / "s3" / "arrays.zarr" / "images" / "c").rglob("*"))) > 1  # several shard files
    e = next(x for x in mem.meta["dropped"]["entries"] if x["reason"] == "unreadable image")
    assert e["file"].endswith("images/broken.png") and e["row"] == 5
    ManifestCohort.write(params, tmp_path / "builder", shard_studies=3)  # the cohort step's path
    assert torch.equal(Cohort.load(tmp_path / "builder").images[:], mem.images)


def test_manifest_file_changed_between_check_and_load_is_an_error_naming_it(tmp_path, monkeypatch):
    import reconaudit.cohorts._io as io
    from reconaudit.cohorts.manifest import write_manifest

    path = fx.write_manifest(tmp_path / "m", masks=False)
    real, seen = io.read_image, []

    def flaky(f):
        seen.append(str(f))
        if len(seen) > 12 and str(f).endswith("p03_s1.png"):  # decodes when checked, not when loaded
            raise ValueError("truncated")
        return real(f)

    monkeypatch.setattr(io, "read_image", flaky)
    with pytest.raises(CohortError, match=r"image '.*p03_s1\.png' \(row 7\) decoded when the manifest was checked"):
        write_manifest(ManifestParams(path=path, size=8), tmp_path / "out", shard_studies=4)


def _save(c: Cohort, d: Path) -> Path:
    c.save(d)
    return d


def test_manifest_malformed(manifest_path, tmp_path):
    df = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
    root = manifest_path.parent

    def write(frame: pd.DataFrame, name: str) -> Path:
        p = tmp_path / name
        frame.to_csv(p, index=False)
        return p

    with pytest.raises(CohortError, match=r"has no column 'age'"):
        load_manifest(path=write(df, "a.csv"), root=root, group_columns=["age"])
    bad = df.copy()
    bad.loc[5, "finding"] = "yes"
    with pytest.raises(CohortError, match=r"b\.csv: row 5 \(line 7\), column 'finding': value 'yes'"):
        load_manifest(path=write(bad, "b.csv"), root=root, target_columns=["finding"])
    bad = df.copy()
    bad.loc[1, "split"] = "test"
    with pytest.raises(CohortError, match=r"patient 'P00' appears in splits \['test', 'train'\]"):
        load_manifest(path=write(bad, "c.csv"), root=root, split_column="split")
    bad = df.copy()
    bad.loc[2, "split"] = "holdout"
    with pytest.raises(CohortError, match=r"row 2 \(line 4\), column 'split': split 'holdout'"):
        load_manifest(path=write(bad, "d.csv"), root=root, split_column="split")
    bad = df.copy()
    bad.loc[7, "path"] = "images/absent.png"
    with pytest.raises(CohortError, match=r"row 7 \(line 9\), column 'path': image '.*images/absent\.png' not found"):
        load_manifest(path=write(bad, "e.csv"), root=root)
    # a corrupt image and a blank target row are dropped, each reported with where and why
    (root / "images" / "broken.png").write_bytes(b"\x89PNG broken")
    bad = df.copy()
    bad.loc[4, "path"] = "images/broken.png"
    bad.loc[6, "finding"] = ""
    c = load_manifest(path=write(bad, "f.csv"), root=root, target_columns=["finding"], size=8)
    assert len(c) == 10 and c.meta["dropped"]["by_reason"] == {"no label": 1, "unreadable image": 1}
    e = next(x for x in c.meta["dropped"]["entries"] if x["reason"] == "unreadable image")
    assert e["file"].endswith("images/broken.png") and e["row"] == 4
    assert "images/broken.png" in c.data_card
