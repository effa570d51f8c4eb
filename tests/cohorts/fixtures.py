"""Tiny files in the real dataset layouts (CheXpert, UCSF-PDGM, fastMRI, DICOM, a manifest) for loader tests."""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

FINDINGS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)


def gray(path: Path, value: int, shape: tuple[int, int] = (20, 20)) -> None:
    """Write a constant 8-bit grey image (PNG or JPEG by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, dtype=np.uint8), mode="L").save(path)


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **tags: object) -> None:
    """Write a minimal uncompressed 16-bit greyscale DICOM with pydicom; ``tags`` are set as attributes."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    for k, v in tags.items():
        setattr(ds, k, v)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_dicom_folder(tmp_path: Path, n: int = 7) -> Path:
    """A PACS-style export ``export/PA<k>/IM<i>`` of ``n`` DICOM images of three shapes (random 12-bit
    pixels, every third MONOCHROME1), two per patient, plus a text file (``not DICOM``) and a DICOM whose
    pixel data is cut short (``unreadable image``); returns the folder."""
    root = tmp_path / "export"
    rng = np.random.default_rng(7)
    for i in range(n):
        shape = ((20, 20), (24, 16), (16, 30))[i % 3]
        write_dicom(root / f"PA{i // 2:04d}" / f"IM{i:05d}", rng.integers(0, 4096, size=shape).astype(np.uint16),
                    photometric="MONOCHROME1" if i % 3 == 2 else "MONOCHROME2", PatientID=f"P{i // 2}",
                    StudyInstanceUID=f"1.2.{i}", PatientSex="FM"[i % 2], PatientAge=f"{30 + 7 * i:03d}Y")
    short = root / "PA9999" / "IM99999"
    write_dicom(short, np.ones((20, 20), dtype=np.uint16), PatientID="P9999", StudyInstanceUID="1.2.9999")
    short.write_bytes(short.read_bytes()[:-300])
    (root / "README.txt").write_text("exported by a PACS")
    return root


class DecodeCounter:
    """Stands in for ``reconaudit.cohorts._io.read_image``: counts its calls and the most decoded
    images alive at once (``max_live``, followed by weak references: an image let go stops counting)."""

    def __init__(self, real) -> None:
        self.real, self.calls, self.max_live, self._alive = real, 0, 0, []

    def __call__(self, path):
        self.calls += 1
        a = self.real(path)
        self._alive = [r for r in self._alive if r() is not None] + [weakref.ref(a)]
        self.max_live = max(self.max_live, len(self._alive))
        return a


# ------------------------------------------------------------------------------------------- CheXpert
# (patient, study, view, sex, age, {finding: value}); blank = not given; -1 = uncertain
CHEXPERT_ROWS = [
    (1, 1, "view1_frontal.jpg", "Male", 35, {"Cardiomegaly": -1, "Edema": 1, "No Finding": ""}),
    (1, 1, "view2_lateral.jpg", "Male", 35, {"Cardiomegaly": 1}),
    (2, 1, "view1_frontal.jpg", "Female", 62, {"Cardiomegaly": 1, "Pleural Effusion": -1}),
    (2, 2, "view1_frontal.png", "Female", 63, {"Cardiomegaly": 0, "Pleural Effusion": 1}),
    (3, 1, "view1_frontal.dcm", "Female", 81, {"No Finding": 1}),
    (4, 1, "view1_frontal.jpg", "Male", 45, {"Edema": 0, "Support Devices": 1}),
    (5, 1, "view1_frontal.jpg", "Unknown", 70, {"Cardiomegaly": -1}),  # only uncertain: all-NaN under U-Ignore
    (6, 1, "view1_frontal.jpg", "Female", 50, {"Edema": 1}),  # corrupt image file
    (7, 1, "view1_frontal.jpg", "Male", 28, {"Fracture": 1}),
    (8, 1, "view1_frontal.jpg", "Female", 55, {"Atelectasis": 1}),
]
CORRUPT_PATIENT = 6


def chexpert_value(patient: int) -> int:
    """The constant grey value written for a patient's JPEG/PNG images."""
    return 20 * patient + 30


def chexpert_dicom_pixels() -> np.ndarray:
    """Pixels of patient 3's DICOM: a horizontal 12-bit ramp (rows 20, columns 20)."""
    return np.tile(np.linspace(100, 3000, 20).round().astype(np.uint16), (20, 1))


def write_chexpert(tmp_path: Path, *, prefix: bool = True) -> Path:
    """CheXpert-v1.0-small/{train.csv, train/patientNNNNN/studyN/view*.jpg}; returns the root folder.

    With ``prefix`` the CSV paths start with the dataset folder name (as distributed), else they
    are relative to the root.
    """
    root = tmp_path / "CheXpert-v1.0-small"
    rows = []
    for pat, study, view, sex, age, labels in CHEXPERT_ROWS:
        rel = f"train/patient{pat:05d}/study{study}/{view}"
        f = root / rel
        if view.endswith(".dcm"):
            write_dicom(f, chexpert_dicom_pixels())
        elif pat == CORRUPT_PATIENT:
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
        else:
            gray(f, chexpert_value(pat))
        row = {"Path": f"{root.name}/{rel}" if prefix else rel, "Sex": sex, "Age": age,
               "Frontal/Lateral": "Lateral" if "lateral" in view else "Frontal",
               "AP/PA": "" if "lateral" in view else "PA"}
        row.update({k: labels.get(k, "") for k in FINDINGS})
        rows.append(row)
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    demo = pd.DataFrame({"PATIENT": [f"patient{p:05d}" for p in (1, 2, 3, 4, 5, 7)],
                         "GENDER": ["Male", "Female", "Female", "Male", "Male", "Male"],
                         "AGE_AT_CXR": [35, 62, 81, 45, 70, 28],
                         "PRIMARY_RACE": ["White", "Asian", "Black or African American", "White", "Other", "Asian"]})
    demo.to_csv(root / "CHEXPERT DEMO.csv", index=False)
    return root


# ------------------------------------------------------------------------------------------- UCSF-PDGM
SHAPE = (16, 16, 8)
# subject number → (folder digits, csv id, sex, age, grade, diagnosis, tumour slices {z: half-width})
UCSF_SUBJECTS = {
    4: ("UCSF-PDGM-0004", "UCSF-PDGM-004", "M", 66, 4, "Glioblastoma, IDH-wildtype", {2: 1, 3: 3, 4: 2}),
    17: ("UCSF-PDGM-0017", "UCSF-PDGM-017", "F", 34, 2,
         "Oligodendroglioma, IDH-mutant, 1p/19q-codeleted", {4: 2, 5: 1}),
}


def ucsf_volumes(num: int, enhancing_label: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(FLAIR volume, tumour labels) of a fixture subject; brain = a 12x12 square in every slice.

    Tumour on slice z is a square of half-width w centred at (8, 8): the outer ring is oedema (2),
    the centre voxel(s) core (1) and the ring between them enhancing (``enhancing_label``).
    """
    rng = np.random.default_rng(num)
    vol = np.zeros(SHAPE, dtype=np.float32)
    vol[2:14, 2:14, :] = rng.uniform(100, 900, size=(12, 12, SHAPE[2]))
    seg = np.zeros(SHAPE, dtype=np.int16)
    for z, w in UCSF_SUBJECTS[num][6].items():
        seg[8 - w : 8 + w, 8 - w : 8 + w, z] = 2
        if w >= 2:
            seg[8 - w + 1 : 8 + w - 1, 8 - w + 1 : 8 + w - 1, z] = enhancing_label
            seg[7:9, 7:9, z] = 1
    return vol, seg


def write_ucsf(tmp_path: Path, *, enhancing_label: int = 4, corrupt: int | None = None) -> Path:
    """UCSF-PDGM layout with two subjects and a metadata CSV that also lists a subject without images."""
    import nibabel as nib

    root = tmp_path / "UCSF-PDGM"
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for num, (folder, csv_id, sex, age, grade, dx, _) in UCSF_SUBJECTS.items():
        d = root / f"{folder}_nifti"
        d.mkdir(exist_ok=True)
        vol, seg = ucsf_volumes(num, enhancing_label)
        aff = np.eye(4)
        if num == corrupt:
            (d / f"{folder}_FLAIR.nii.gz").write_bytes(b"not a nifti file at all")
        else:
            nib.save(nib.Nifti1Image(vol, aff), d / f"{folder}_FLAIR.nii.gz")
        nib.save(nib.Nifti1Image(seg, aff), d / f"{folder}_tumor_segmentation.nii.gz")
        rows.append({"ID": csv_id, "Sex": sex, "Age at MRI": age, "WHO CNS Grade": grade,
                     "Final pathologic diagnosis (WHO 2021)": dx, "MGMT status": "unknown"})
    rows.append({"ID": "UCSF-PDGM-099", "Sex": "F", "Age at MRI": 50, "WHO CNS Grade": 3,
                 "Final pathologic diagnosis (WHO 2021)": "Astrocytoma, IDH-mutant", "MGMT status": ""})
    pd.DataFrame(rows).to_csv(root / "UCSF-PDGM-metadata_v2.csv", index=False)
    return root


# ------------------------------------------------------------------------------------------- fastMRI
def fastmri_image(n_slices: int = 5, h: int = 24, w: int = 20, seed: int = 0) -> np.ndarray:
    """A complex (slices, h, w) image: a smooth magnitude with a phase ramp."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((n_slices, h, w), dtype=np.complex64)
    for s in range(n_slices):
        mag = 1.0 + (s + 1) * np.exp(-((yy - h / 2) ** 2 + (xx - w / 2) ** 2) / (2 * 4.0**2)) + 0.1 * rng.random((h, w))
        out[s] = mag * np.exp(1j * (0.2 * xx + 0.1 * s))
    return out


def np_fft2c(x: np.ndarray) -> np.ndarray:
    """Centred orthonormal FFT with numpy (an oracle independent of torch)."""
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def np_ifft2c(k: np.ndarray) -> np.ndarray:
    """Centred orthonormal inverse FFT with numpy."""
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def write_fastmri(tmp_path: Path, *, n_files: int = 2, kspace: bool = True) -> Path:
    """singlecoil_val/file100000N.h5 with ``kspace``, ``reconstruction_esc`` and fastMRI attributes.

    The first file has no ``patient_id`` attribute (the loader falls back to the file name).
    """
    import h5py

    root = tmp_path / "singlecoil_val"
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        img = fastmri_image(seed=i)
        with h5py.File(root / f"file100000{i + 1}.h5", "w") as f:
            if kspace:
                f.create_dataset("kspace", data=np_fft2c(img).astype(np.complex64))
            f.create_dataset("reconstruction_esc", data=np.abs(img).astype(np.float32))
            f.attrs["acquisition"] = "CORPD_FBK"
            f.attrs["max"] = float(np.abs(img).max())
            f.attrs["norm"] = float(np.linalg.norm(img))
            if i > 0:
                f.attrs["patient_id"] = f"pt{i + 1}"
    return root


# ------------------------------------------------------------------------------------------- manifest
def write_manifest(tmp_path: Path, *, n_patients: int = 6, masks: bool = True) -> Path:
    """images/pNN_sK.png (+ masks/pNN_sK.png) and manifest.csv; returns the manifest path.

    Two studies per patient; image value ``10 * patient + 40 * k``; the mask is the left half.
    """
    root = tmp_path / "data"
    rows = []
    for pnum in range(n_patients):
        for k in range(2):
            rel = f"images/p{pnum:02d}_s{k}.png"
            gray(root / rel, 10 * pnum + 40 * k)
            row = {"path": rel, "patient_id": f"P{pnum:02d}", "finding": (pnum + k) % 2,
                   "sex": "<b>F</b>" if pnum % 2 else "M", "site": "A & B" if pnum < 3 else "C",
                   "split": ["train", "train", "val", "test", "train", "test"][pnum % 6]}
            if masks:
                m = np.zeros((20, 20), dtype=np.uint8)
                m[:, :10] = 255
                mrel = f"masks/p{pnum:02d}_s{k}.png"
                (root / mrel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(m, mode="L").save(root / mrel)
                row["mask"] = mrel
            rows.append(row)
    path = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


# ------------------------------------------------------------------------------------------- streams
def assert_same_cohort(stored, mem) -> None:
    """A cohort read back with ``Cohort.load`` holds the bits of the in-memory one: every array (same
    dtype), the table (exactly), the data card, the metadata and the column roles."""
    import json

    import torch

    for name in ("images", "masks", "roi_masks", "lesion_masks", "kspace", "concentration"):
        a, b = getattr(stored, name), getattr(mem, name)
        assert (a is None) == (b is None), name
        if b is not None:
            assert a[:].dtype == b.dtype and torch.equal(a[:], b), name
    pd.testing.assert_frame_equal(stored.table, mem.table, check_exact=True)
    assert stored.data_card == mem.data_card
    assert stored.meta == json.loads(json.dumps(mem.meta, default=str))
    assert (stored.labels, stored.group_attributes, stored.regression) == (mem.labels, mem.group_attributes,
                                                                           mem.regression)
