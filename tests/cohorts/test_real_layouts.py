"""Quirks of the real dataset releases: group values, drops with named reasons, layouts as distributed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reconaudit.cohorts.base import CohortError
from reconaudit.cohorts.chexpert import load_chexpert
from reconaudit.cohorts.groups import UNKNOWN, band_ages, normalise_groups
from reconaudit.cohorts.manifest import load_manifest

_spec = importlib.util.spec_from_file_location("reconaudit_test_cohort_fixtures", Path(__file__).with_name("fixtures.py"))
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)


# ------------------------------------------------------------------------------------------ group values
def test_normalise_groups_sex_synonyms_case_space_and_missing():
    raw = ["F ", "f", "Female", "FEMALE", " male", "M", "Male", "Unknown", "", None, np.nan, "N/A", "o"]
    out = normalise_groups(raw, "sex")
    assert list(out) == ["F", "F", "F", "F", "M", "M", "M", UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, "O"]
    # a user map is merged over the default; other attributes keep their most frequent spelling
    out = normalise_groups(["W", "w", "F"], "sex", {"sex": {"w": "F"}})
    assert list(out) == ["F", "F", "F"]
    race = normalise_groups(["White", "white ", "White", "Asian", "ASIAN  "], "race")
    # most frequent spelling wins; a tie goes to the first in sorted order ("ASIAN" < "Asian")
    assert list(race) == ["White", "White", "White", "ASIAN", "ASIAN"]


def test_band_ages_impossible_values_reported():
    from reconaudit.cohorts.groups import GroupReport

    rep = GroupReport()
    ages, bands = band_ages(np.array([0, -3, 35, 121, 120, np.nan, 60]), [40, 60, 80], rep,
                            where=[f"r{i}" for i in range(7)])
    assert list(bands) == [UNKNOWN, UNKNOWN, "<40", UNKNOWN, "80+", UNKNOWN, "60-79"]
    assert np.isnan(ages[[0, 1, 3, 5]]).all() and ages[2] == 35
    assert [e["where"] for e in rep.impossible_ages] == ["r0", "r1", "r3"]  # NaN is missing, not impossible


def _manifest(tmp_path: Path, sexes: list[str], ages: list[object], *, backslash: bool = False) -> Path:
    root = tmp_path / "m"
    rows = []
    for i, (sx, ag) in enumerate(zip(sexes, ages)):
        rel = f"images/s{i}.png"
        fx.gray(root / rel, 10 * i + 20)
        rows.append({"path": rel.replace("/", "\\") if backslash else rel, "patient_id": f"P{i}",
                     "finding": i % 2, "sex": sx, "age": ag})
    path = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_manifest_sex_synonyms_one_group_age_bands_and_backslashes(tmp_path):
    sexes = ["F ", "f", "Female", "M", "male", "Unknown", "", "F"]
    ages = [35, 0, 45, 61, 130, 82, "", 50]
    path = _manifest(tmp_path, sexes, ages, backslash=True)
    c = load_manifest(path=path, target_columns=["finding"], group_columns=["sex"], age_column="age", size=8)
    assert len(c) == 8  # backslash paths resolved
    assert c.group_attributes == ["sex", "age_band"]
    assert list(c.table["sex"]) == ["F", "F", "F", "M", "M", UNKNOWN, UNKNOWN, "F"]
    assert list(c.table["age_band"]) == ["<40", UNKNOWN, "40-59", "60-79", UNKNOWN, "80+", UNKNOWN, "40-59"]
    g = c.meta["groups"]
    assert g["unknown"] == {"sex": 2, "age_band": 3} and g["impossible_ages"] == 2
    assert g["unknown_groups"] == "exclude"
    assert [e["value"] for e in g["impossible_age_entries"]] == [0.0, 130.0]
    assert "row 1 (line 3), column 'age'" in g["impossible_age_entries"][0]["where"]
    assert "## Group values" in c.data_card and "impossible age" in c.data_card
    assert c.table["study_id"].tolist()[0] == "images/s0"
    # a numeric age among group_columns would make one group per age: an error naming the fix
    with pytest.raises(CohortError, match="set age_column: age"):
        load_manifest(path=path, target_columns=["finding"], group_columns=["age"], size=8)


def test_chexpert_age_zero_reported_and_sex_merged(tmp_path):
    root = tmp_path / "CheXpert-v1.0-small"
    rows = []
    for i, (sex, age) in enumerate([("Male", 0), ("Female", 55), ("female", 70), ("Unknown", 30), ("M", 44)]):
        rel = f"train/patient{i + 1:05d}/study1/view1_frontal.jpg"
        fx.gray(root / rel, 40 + 10 * i)
        rows.append({"Path": f"{root.name}/{rel}", "Sex": sex, "Age": age, "Frontal/Lateral": "Frontal",
                     "AP/PA": "PA", **{k: "" for k in fx.FINDINGS}, "Edema": i % 2})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    c = load_chexpert(root=root, size=8, labels=["Edema"])
    t = c.table.set_index("patient_id")
    assert t.loc["patient00001", "age_band"] == UNKNOWN and np.isnan(t.loc["patient00001", "age"])
    assert list(c.table["sex"]) == ["M", "F", "F", UNKNOWN, "M"]
    assert c.meta["groups"]["impossible_ages"] == 1
    assert "train.csv: row 0 (line 2), column 'Age'" in c.meta["groups"]["impossible_age_entries"][0]["where"]
    assert "1 impossible age(s)" in c.data_card


# ------------------------------------------------------------------------------------------ fastMRI
def _h5(path: Path, img: np.ndarray, *, recon: tuple[int, int] | None = (16, 16), test_file: bool = False,
        pid: str | None = None) -> None:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    k = fx.np_fft2c(img).astype(np.complex64)
    with h5py.File(path, "w") as f:
        if test_file:  # singlecoil_test_v2: undersampled k-space, a mask, no reconstruction
            mask = np.zeros(img.shape[-1], dtype=bool)
            mask[::4] = True
            f.create_dataset("kspace", data=k * mask)
            f.create_dataset("mask", data=mask)
            f.attrs["acceleration"] = 4
            f.attrs["num_low_frequency"] = 2
        else:
            f.create_dataset("kspace", data=k)
            if recon is not None:
                f.create_dataset("reconstruction_esc", data=np.zeros((img.shape[0], *recon), np.float32))
        f.attrs["acquisition"] = "CORPD_FBK"
        if pid:
            f.attrs["patient_id"] = pid


def test_fastmri_two_roots_folder_splits_test_files_and_crop(tmp_path):
    from reconaudit.cohorts.fastmri import load_fastmri

    train, val, test = tmp_path / "singlecoil_train", tmp_path / "singlecoil_val", tmp_path / "singlecoil_test_v2"
    for i in range(6):
        _h5(train / f"file10000{i:02d}.h5", fx.fastmri_image(3, 40, 30, seed=i), pid=f"tr{i}")
    for i in range(2):
        _h5(val / f"file20000{i:02d}.h5", fx.fastmri_image(3, 40, 30, seed=10 + i), pid=f"va{i}")
    _h5(val / "file2000099.h5", fx.fastmri_image(3, 40, 30, seed=20), recon=None)
    _h5(test / "file3000000.h5", fx.fastmri_image(3, 40, 30, seed=30), test_file=True)
    c = load_fastmri(root=[train, val, test], folder_splits=True, size=16, slices=1)
    assert len(c) == 8  # 6 train + 2 val; the test file and the file without reconstruction are dropped
    d = c.meta["dropped"]["by_reason"]
    assert d == {"undersampled file (test/challenge)": 1, "no reference reconstruction": 1}
    assert "undersampled file (test/challenge)" in c.data_card
    entry = next(e for e in c.meta["dropped"]["entries"] if e["reason"].startswith("undersampled"))
    assert entry["file"].endswith("file3000000.h5") and "mask" in entry["detail"]
    split = c.table.set_index("file")["split"]
    assert set(split[[f"file20000{i:02d}" for i in range(2)]]) == {"test"}  # official val held out
    assert set(split[[f"file10000{i:02d}" for i in range(6)]]) == {"train", "val"}
    # crop defaults to the reference reconstruction's side (16 here, 320 in the release), not min(H, W) = 30
    img = fx.fastmri_image(3, 40, 30, seed=0)[1:2, 12:28, 7:23]
    i0 = int(np.flatnonzero(c.table["file"] == "file1000000")[0])
    np.testing.assert_allclose(c.images[i0, 0].numpy(), np.abs(img[0]) / np.abs(img).max(), atol=1e-5)
    ok = load_fastmri(root=[val], size=16, slices=1, allow_missing_reconstruction=True)
    assert len(ok) == 3 and ok.meta["dropped"]["total"] == 0


def test_fastmri_plus_file_list_negatives(tmp_path):
    from reconaudit.cohorts.fastmri import load_fastmri

    root = tmp_path / "singlecoil_train"
    for i in range(4):
        _h5(root / f"file100000{i}.h5", fx.fastmri_image(3, 24, 20, seed=i), recon=(20, 20))
    pd.DataFrame({"file": ["file1000000", "file1000001"], "slice": [1, 0], "study_level": ["No", "No"],
                  "x": [1, 2], "y": [1, 2], "width": [3, 3], "height": [3, 3], "label": ["Meniscus Tear"] * 2}
                 ).to_csv(root / "knee.csv", index=False)
    # as released: no header, file names (one reviewed without findings), a caption on the last line
    (root / "knee_file_list.csv").write_text("file1000000\nfile1000001\nfile1000002\nKnee data\n")
    c = load_fastmri(root=root, size=8, slices=3, labels_csv="knee.csv", file_list_csv="knee_file_list.csv")
    assert sorted(c.table["file"].unique()) == ["file1000000", "file1000001", "file1000002"]
    neg = c.table[c.table["file"] == "file1000002"]
    assert len(neg) == 3 and (neg["meniscus_tear"] == 0).all()
    assert c.meta["dropped"]["by_reason"] == {"no label": 3}  # file1000003 was never reviewed
    assert "1 reviewed file(s)" in c.data_card
    without = load_fastmri(root=root, size=8, slices=3, labels_csv="knee.csv")
    assert without.meta["dropped"]["by_reason"] == {"no label": 6}
    (root / "bad_list.csv").write_text("file1000000\nnot a file name\nfile1000001\nKnee data\n")
    with pytest.raises(CohortError, match=r"bad_list\.csv: line 2: 'not a file name'"):
        load_fastmri(root=root, labels_csv="knee.csv", file_list_csv="bad_list.csv")


# ------------------------------------------------------------------------------------------ UCSF-PDGM
def test_ucsf_pdgm_shadow_folders_skipped_and_hints(tmp_path):
    import shutil

    from reconaudit.cohorts.ucsf_pdgm import load_ucsf_pdgm

    root = fx.write_ucsf(tmp_path)
    # a stale copy beside the real folder, with a broken volume: it must not replace subject 0004
    old = root / "UCSF-PDGM-0004_nifti_old"
    shutil.copytree(root / "UCSF-PDGM-0004_nifti", old)
    (old / "UCSF-PDGM-0004_FLAIR.nii.gz").write_bytes(b"broken")
    (root / "derivatives_v2").mkdir()
    c = load_ucsf_pdgm(root=root, size=8)
    assert set(c.table["patient_id"]) == {"UCSF-PDGM-0004", "UCSF-PDGM-0017"}
    d = c.meta["dropped"]
    assert d["by_reason"] == {"not a subject folder": 2, "no image folder": 1}
    assert sorted(Path(e["file"]).name for e in d["entries"] if e["reason"] == "not a subject folder") == [
        "UCSF-PDGM-0004_nifti_old", "derivatives_v2"]
    # root one level too high: the hint names the folder that holds the subjects
    with pytest.raises(CohortError, match=r"one level down: set 'root' to '.*UCSF-PDGM'"):
        load_ucsf_pdgm(root=tmp_path)
    with pytest.raises(CohortError, match=r"is itself a subject folder"):
        load_ucsf_pdgm(root=root / "UCSF-PDGM-0004_nifti")
    # a sequence that no subject has: the error lists the sequences present
    with pytest.raises(CohortError, match=r"sequence 'T1c' is absent, sequences present: FLAIR"):
        load_ucsf_pdgm(root=root, sequence="T1c")


def test_ucsf_pdgm_sex_and_impossible_age(tmp_path):
    from reconaudit.cohorts.ucsf_pdgm import load_ucsf_pdgm

    root = fx.write_ucsf(tmp_path)
    md = pd.read_csv(root / "UCSF-PDGM-metadata_v2.csv", dtype=str, keep_default_na=False)
    md.loc[0, "Sex"], md.loc[1, "Sex"], md.loc[0, "Age at MRI"] = "male ", "Female", "-1"
    md.to_csv(root / "m.csv", index=False)
    c = load_ucsf_pdgm(root=root, size=8, metadata_csv="m.csv")
    t = c.table.groupby("patient_id").first()
    assert t.loc["UCSF-PDGM-0004", "sex"] == "M" and t.loc["UCSF-PDGM-0017", "sex"] == "F"
    assert t.loc["UCSF-PDGM-0004", "age_band"] == UNKNOWN
    assert c.meta["groups"]["impossible_ages"] == 1
    assert "m.csv: row 0 (line 2), column 'Age at MRI'" in c.meta["groups"]["impossible_age_entries"][0]["where"]


# ------------------------------------------------------------------------------------------ DICOM
def _testdata(name: str) -> Path:
    from pydicom.data import get_testdata_file

    f = get_testdata_file(name, download=False)  # files bundled with pydicom; never the network
    if f is None:
        pytest.skip(f"pydicom test file {name} is not bundled")
    return Path(f)


def test_read_image_dicom_without_suffix(tmp_path):
    import shutil

    import pydicom

    from reconaudit.cohorts._io import is_dicom, read_image

    src = _testdata("CT_small.dcm")
    f = tmp_path / "1.2.840.113619.2.55.3" / "IM000001"
    f.parent.mkdir(parents=True)
    shutil.copy(src, f)
    (tmp_path / "notes").write_bytes(b"x" * 200)
    assert is_dicom(f) and not is_dicom(tmp_path / "notes")
    a = read_image(f)
    ds = pydicom.dcmread(src)
    v = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(a, (v - v.min()) / (v.max() - v.min()), atol=1e-6)
    with pytest.raises(ValueError, match="unsupported image format ''"):
        read_image(tmp_path / "notes")


def test_dicom_folder_cohort_from_headers(tmp_path):
    import shutil

    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEG2000

    from reconaudit.cohorts.dicom import age_from_dates, load_dicom, parse_age

    root = tmp_path / "export"
    px = fx.chexpert_dicom_pixels()
    specs = [  # (path, PatientID, study, sex, age, birth, study date)
        ("PA000000/ST000000/IM000000", "P1", "1.2.1", "F", "045Y", "", "20200101"),
        ("PA000000/ST000000/IM000001", "P1", "1.2.1", "F", "045Y", "", "20200101"),
        ("PA000001/ST000000/IM000000", "P2", "1.2.2", "MALE", "", "19600615", "20200614"),
        ("PA000002/ST000000/IM000000", "P3", "1.2.3", "O", "018M", "", ""),
        ("PA000003/ST000000/IM000000", "P4", "1.2.4", "", "000Y", "", ""),
    ]
    for i, (rel, pid, st, sex, age, birth, sdate) in enumerate(specs):
        fx.write_dicom(root / rel, px + 10 * i, PatientID=pid, StudyInstanceUID=st, PatientSex=sex,
                       PatientAge=age, PatientBirthDate=birth, StudyDate=sdate, InstanceNumber=i)
    shutil.copy(_testdata("rtplan.dcm"), root / "PA000009_plan")
    shutil.copy(_testdata("JPEG2000.dcm"), root / "J2K0001")
    (root / "DICOMDIR.txt").write_text("not a DICOM file")
    c = load_dicom(root=root, size=8)
    jpeg2000_decodable = get_decoder(JPEG2000).is_available
    assert len(c) == 5 + int(jpeg2000_decodable)
    want = {"not DICOM": 1, "no pixel data": 1}
    if not jpeg2000_decodable:
        want["compressed DICOM without decoder"] = 1
    assert c.meta["dropped"]["by_reason"] == want
    t = c.table.set_index("path")
    row = lambda rel: t.loc[str(root / rel)]  # noqa: E731
    assert row(specs[0][0])["patient_id"] == "P1" and row(specs[0][0])["sex"] == "F"
    assert row(specs[0][0])["age_band"] == "40-59"
    assert row(specs[2][0])["sex"] == "M" and row(specs[2][0])["age"] == 59.0  # day before the 60th birthday
    assert row(specs[3][0])["age"] == pytest.approx(1.5) and row(specs[3][0])["age_band"] == "<40"
    assert row(specs[4][0])["sex"] == UNKNOWN and row(specs[4][0])["age_band"] == UNKNOWN
    assert c.meta["groups"]["impossible_ages"] == 1  # "000Y"
    assert (c.table.groupby("patient_id")["split"].nunique() == 1).all()
    # one image per study: the two images of study 1.2.1 become one
    one = load_dicom(root=root, size=8, one_per_study=True)
    assert len(one) == len(c) - 1 and "1.2.1" in set(one.table["study_id"])
    assert parse_age("006W") == pytest.approx(6 * 7 / 365.25) and np.isnan(parse_age("45"))
    assert age_from_dates("19600615", "20200615") == 60.0 and np.isnan(age_from_dates("", "20200101"))
    # labels keyed by StudyInstanceUID; images without a row are named drops
    pd.DataFrame({"StudyInstanceUID": ["1.2.1", "1.2.2"], "finding": [1, 0]}).to_csv(root / "labels.csv", index=False)
    lab = load_dicom(root=root, size=8, labels_csv="labels.csv", target_columns=["finding"])
    assert sorted(lab.table["finding"]) == [0.0, 1.0, 1.0] and lab.labels == ["finding"]
    assert lab.meta["dropped"]["by_reason"]["no label"] == 2 + int(jpeg2000_decodable)


def test_dicom_written_shard_by_shard_is_the_cohort_loaded_in_memory(tmp_path, monkeypatch):
    """write_cohort("dicom") with shards of 3 images, shards of 4 decoded 2 at a time, and one shard stores
    what make_cohort and load_dicom return: the same images (three shapes, MONOCHROME1), table, card, meta."""
    import json

    import torch

    import reconaudit.cohorts._io as io
    from reconaudit.cohorts import Cohort, make_cohort, write_cohort
    from reconaudit.cohorts.dicom import load_dicom

    root = fx.write_dicom_folder(tmp_path)
    mem = make_cohort("dicom", root=str(root), size=8)
    same = load_dicom(root=root, size=8)
    assert torch.equal(same.images, mem.images) and same.table.equals(mem.table) and same.data_card == mem.data_card
    assert len(mem) == 7 and mem.meta["dropped"]["by_reason"] == {"not DICOM": 1, "unreadable image": 1}
    for shard, chunk in ((3, 64), (4, 2), (1024, 64)):
        monkeypatch.setattr(io, "DECODE_CHUNK", chunk)
        d = tmp_path / f"s{shard}"
        write_cohort("dicom", d, shard_studies=shard, root=str(root), size=8)
        c = Cohort.load(d)
        assert torch.equal(c.images[:], mem.images)
        pd.testing.assert_frame_equal(c.table, mem.table, check_exact=True)
        assert c.data_card == mem.data_card and c.meta == json.loads(json.dumps(mem.meta, default=str))
        assert c.modality == mem.modality == "xray"


def test_dicom_holds_at_most_one_chunk_of_decoded_images(tmp_path, monkeypatch):
    """Each file's pixels are decoded once to check them (and let go), then once more in chunks of
    DECODE_CHUNK: never more than one chunk of decoded images alive (decoding them all first would hold 7)."""
    import reconaudit.cohorts._io as io
    from reconaudit.cohorts import write_cohort
    from reconaudit.cohorts.dicom import DicomParams, dicom_stream

    root = fx.write_dicom_folder(tmp_path)
    monkeypatch.setattr(io, "DECODE_CHUNK", 2)
    count = fx.DecodeCounter(io.read_image)
    monkeypatch.setattr(io, "read_image", count)
    stream = dicom_stream(DicomParams(root=root, size=8))
    assert (count.calls, count.max_live, stream.n) == (8, 1, 7)  # 8 DICOM images checked, 1 unreadable
    assert [len(b["images"]) for b in stream.batches(64)] == [2, 2, 2, 1]
    assert count.calls == 8 + 7 and count.max_live == 2
    count.calls = count.max_live = 0
    write_cohort("dicom", tmp_path / "out", shard_studies=3, root=str(root), size=8)  # the cohort step
    assert count.calls == 8 + 7 and count.max_live <= 2


def test_dicom_file_changed_between_check_and_load_is_an_error_naming_it(tmp_path):
    from reconaudit.cohorts.base import write_stream
    from reconaudit.cohorts.dicom import DicomParams, dicom_stream

    root = fx.write_dicom_folder(tmp_path)
    stream = dicom_stream(DicomParams(root=root, size=8))  # every file's pixels checked
    f = root / "PA0002" / "IM00004"
    f.write_bytes(f.read_bytes()[:-200])  # pixel data cut short after the check
    with pytest.raises(CohortError, match=r"dicom: image '.*PA0002/IM00004' decoded when the images were checked "
                                          r"but not when it was loaded \(.*less than expected"):
        write_stream(stream, tmp_path / "out", shard_studies=3)


def test_header_only_loads_tables_and_drops_without_voxels(tmp_path):
    from reconaudit.cohorts._io import header_only
    from reconaudit.cohorts.ucsf_pdgm import load_ucsf_pdgm

    root = fx.write_ucsf(tmp_path / "u", corrupt=17)
    full = load_ucsf_pdgm(root=root, size=8)
    with header_only():
        quick = load_ucsf_pdgm(root=root, size=8)
    # the corrupt FLAIR fails on its header too: the same named drops, one placeholder slice per subject
    assert quick.meta["dropped"]["by_reason"] == full.meta["dropped"]["by_reason"]
    assert list(quick.table["patient_id"]) == ["UCSF-PDGM-0004"] and float(quick.images.abs().sum()) == 0.0
    assert list(quick.table["sex"]) == ["M"] and list(quick.table["age_band"]) == ["60-79"]
