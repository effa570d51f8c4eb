"""UCSF-PDGM (preoperative diffuse glioma MRI) as distributed on TCIA.

Layout: one folder per subject, ``UCSF-PDGM-0004_nifti/UCSF-PDGM-0004_FLAIR.nii.gz`` (also ``_T1``,
``_T1c``, ``_T2`` ...), ``UCSF-PDGM-0004_tumor_segmentation.nii.gz`` (labels 1 necrotic core,
2 oedema, 4 enhancing tumour; 3 for enhancing in BraTS-2023-style releases), optionally
``UCSF-PDGM-0004_brain_segmentation.nii.gz``; and ``UCSF-PDGM-metadata_v2.csv`` with ``ID``
(``UCSF-PDGM-004``: note the padding differs from the folders), ``Sex``, ``Age at MRI``,
``WHO CNS Grade`` and ``Final pathologic diagnosis (WHO 2021)``.

Reference: Calabrese et al., "The University of California San Francisco Preoperative Diffuse
Glioma MRI Dataset", Radiology: Artificial Intelligence 2022.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import ConfigDict, Field

from ..arrays import DEFAULT_SHARD_STUDIES
from ..progress import track
from . import _io
from .base import Cohort, CohortBuilder, CohortError, CohortStream, collect_stream, write_stream
from .groups import GroupOptions, GroupReport, clean_ages, group_summary, normalise_groups

logger = logging.getLogger(__name__)
WHAT = "ucsf-pdgm"
META_COLUMNS = ("ID", "Sex", "Age at MRI", "WHO CNS Grade", "Final pathologic diagnosis (WHO 2021)")
TUMOUR_TYPES = ("glioblastoma", "astrocytoma", "oligodendroglioma")
_ID_RE = re.compile(r"(\d+)(?!.*\d)")
SUBJECT_FOLDER_RE = re.compile(r"^UCSF-PDGM-(\d+)_nifti$")


class UcsfPdgmParams(GroupOptions):
    """Options of :func:`load_ucsf_pdgm` (see ``docs/loaders.md``)."""

    model_config = ConfigDict(extra="forbid")

    root: Path
    metadata_csv: str = "UCSF-PDGM-metadata_v2.csv"
    sequence: str = "FLAIR"
    size: int = Field(64, ge=4)
    slices: Literal["max_tumor", "every_n", "all_tumor"] = "max_tumor"
    n_slices: int = Field(3, ge=1)
    label_policy: Literal["whole_tumor", "enhancing", "core"] = "whole_tumor"
    max_subjects: int | None = Field(None, ge=1)
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 0
    name: str = "ucsf-pdgm"


def subject_number(text: str) -> int | None:
    """The subject's integer from an ID or folder name (last run of digits): ``UCSF-PDGM-004`` → 4."""
    m = _ID_RE.search(str(text).replace("_nifti", ""))
    return int(m.group(1)) if m else None


def tumour_type(diagnosis: str) -> str:
    """WHO 2021 diagnosis text → ``glioblastoma`` / ``astrocytoma`` / ``oligodendroglioma`` / ``other``."""
    d = str(diagnosis).lower()
    for t in TUMOUR_TYPES:
        if t in d:
            return t
    return "other"


def target_mask(seg: np.ndarray, policy: str) -> np.ndarray:
    """Binary mask from a tumour label volume.

    ``whole_tumor``: ``seg > 0``; ``enhancing``: ``seg == ET`` with ET = 4 if label 4 occurs in the
    volume, else 3; ``core``: ``seg in {1, ET}``.
    """
    if policy == "whole_tumor":
        return seg > 0
    et = 4 if (seg == 4).any() else 3
    if policy == "enhancing":
        return seg == et
    return (seg == 1) | (seg == et)


def normalise_volume(vol: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """``(v - p1) / (p99 - p1)`` clipped to [0, 1], percentiles over brain voxels; outside brain → 0."""
    inside = vol[brain]
    if inside.size == 0:
        raise ValueError("empty brain mask")
    lo, hi = np.percentile(inside, [1.0, 99.0])
    if hi <= lo:
        raise ValueError("constant intensity inside the brain")
    out = np.clip((vol - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    out[~brain] = 0.0
    return out


def choose_slices(tumour_area: np.ndarray, brain_area: np.ndarray, rule: str, n: int) -> np.ndarray:
    """Axial slice indices (ascending) chosen by ``rule``.

    - ``max_tumor``: the ``n`` slices with the largest whole-tumour area (ties → lower index),
      only slices with some tumour;
    - ``all_tumor``: every slice with whole-tumour area > 0;
    - ``every_n``: every ``n``-th slice among those containing brain, starting at the first.
    """
    if rule == "max_tumor":
        order = np.argsort(-tumour_area, kind="stable")[:n]
        return np.sort(order[tumour_area[order] > 0])
    if rule == "all_tumor":
        return np.flatnonzero(tumour_area > 0)
    return np.flatnonzero(brain_area > 0)[::n]


def axial_slices(vol: np.ndarray, z: np.ndarray) -> torch.Tensor:
    """Slices ``vol[:, :, z]`` of a RAS+ volume as float (len(z), 1, Y, X), anterior at the top.

    ``np.rot90`` over the (x, y) axes turns RAS array order into the usual display (rows run
    anterior → posterior, columns run with x).
    """
    s = np.rot90(vol[:, :, z], k=1, axes=(0, 1)).transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32))[:, None]


def _find(folder: Path, stem: str, suffix: str) -> Path | None:
    for ext in (".nii.gz", ".nii"):
        f = folder / f"{stem}_{suffix}{ext}"
        if f.is_file():
            return f
    return None


def available_sequences(folder: Path, stem: str) -> list[str]:
    """Suffixes of the image volumes in a subject folder (``FLAIR``, ``T1c``, ...), segmentations excluded."""
    out = []
    for f in sorted(folder.iterdir()):
        name = f.name
        for ext in (".nii.gz", ".nii"):
            if name.startswith(stem + "_") and name.endswith(ext):
                q = name[len(stem) + 1 : -len(ext)]
                if not q.endswith("segmentation"):
                    out.append(q)
                break
    return out


def _looks_like_root(d: Path) -> bool:
    try:
        return any(SUBJECT_FOLDER_RE.match(c.name) and c.is_dir() for c in d.iterdir())
    except OSError:
        return False


def subject_folders(root: Path, drops: _io.DropReport) -> dict[int, Path]:
    """Subject number → folder, matching ``UCSF-PDGM-<digits>_nifti`` exactly.

    Other folders (``UCSF-PDGM-0004_nifti_old``, ``derivatives_v2``, ...) are skipped and counted
    as ``not a subject folder``; a second folder with the same number is counted as ``duplicate
    subject folder``.  No subject folder at all is an error with a hint: the sub-folder that holds
    subjects when ``root`` is one level too high, the parent when ``root`` is a subject folder.
    """
    by_num: dict[int, Path] = {}
    for d in sorted(x for x in root.iterdir() if x.is_dir()):
        m = SUBJECT_FOLDER_RE.match(d.name)
        if m is None:
            drops.add("not a subject folder", file=str(d), detail="name is not UCSF-PDGM-<number>_nifti")
            continue
        num = int(m.group(1))
        if num in by_num:
            drops.add("duplicate subject folder", file=str(d), detail=f"subject {num} is already read from "
                      f"{by_num[num].name}")
            continue
        by_num[num] = d
    if not by_num:
        hint = ""
        if SUBJECT_FOLDER_RE.match(root.name):
            hint = f"; {str(root)!r} is itself a subject folder: set 'root' to {str(root.parent)!r}"
        else:
            below = [d for d in sorted(root.iterdir()) if d.is_dir() and _looks_like_root(d)]
            if below:
                hint = (f"; the subject folders are one level down: set 'root' to {str(below[0])!r} "
                        f"(and 'metadata_csv' relative to it, or absolute)")
        raise CohortError(f"{WHAT}: no subject folders (e.g. UCSF-PDGM-0004_nifti/) under {str(root)!r}{hint}")
    return by_num


def _read_metadata(path: Path, options: GroupOptions, report: GroupReport) -> pd.DataFrame:
    df = _io.read_table(path, what=f"{WHAT} metadata")
    _io.require_columns(df, META_COLUMNS, path, what=f"{WHAT} metadata")
    nums = df["ID"].map(subject_number)
    bad = nums.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CohortError(f"{WHAT} metadata: {_io.where(path, i)}, column 'ID': {df['ID'].iloc[i]!r} has no subject number")
    dup = nums.duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise CohortError(f"{WHAT} metadata: {_io.where(path, i)}, column 'ID': subject {int(nums.iloc[i])} appears twice")
    grade = _io.numeric_column(df, "WHO CNS Grade", path, allowed=(1, 2, 3, 4), what=f"{WHAT} metadata")
    age = _io.numeric_column(df, "Age at MRI", path, what=f"{WHAT} metadata")
    return pd.DataFrame(
        {
            "num": nums.astype(int).to_numpy(),
            "sex": normalise_groups(df["Sex"], "sex", options.group_synonyms, report),
            "age": age,
            "grade": grade,
            "diagnosis": df["Final pathologic diagnosis (WHO 2021)"].astype("string").fillna("").to_numpy(dtype=object),
            "_row": np.arange(len(df)),
        }
    )


def _read_subject(nib, folder: Path, stem: str, f_img: Path, f_seg: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(normalised volume, tumour labels, brain mask) of one subject, RAS+; raises on any inconsistency."""
    vol = np.asarray(nib.as_closest_canonical(nib.load(str(f_img))).dataobj, dtype=np.float32)
    seg = np.rint(np.asarray(nib.as_closest_canonical(nib.load(str(f_seg))).dataobj)).astype(np.int16)
    if vol.ndim != 3 or seg.shape != vol.shape:
        raise ValueError(f"volume shape {vol.shape} and segmentation shape {seg.shape} must be equal 3D")
    f_brain = _find(folder, stem, "brain_segmentation")
    if f_brain is not None:
        brain = np.asarray(nib.as_closest_canonical(nib.load(str(f_brain))).dataobj) > 0
        if brain.shape != vol.shape:
            raise ValueError(f"brain mask shape {brain.shape} differs from volume {vol.shape}")
    else:
        brain = vol > 0
    return normalise_volume(vol, brain), seg, brain


def load_ucsf_pdgm(params: UcsfPdgmParams | None = None, **overrides) -> Cohort:
    """Load UCSF-PDGM as 2D axial slices with tumour masks, grade and tumour-type targets.

    Each volume is reoriented to the closest canonical (RAS+) orientation and sliced along the
    superior axis; each chosen slice is one study (``study_id = UCSF-PDGM-0004/z042``) of patient
    ``UCSF-PDGM-0004``.  Intensities are normalised per volume: ``(v - p1) / (p99 - p1)`` clipped
    to [0, 1], with p1, p99 the 1st and 99th percentiles over brain voxels (brain = the
    ``_brain_segmentation`` file if present, else ``v > 0``: the released images are skull-stripped).

    Targets: ``masks`` from ``label_policy`` (:func:`target_mask`); labels ``high_grade``
    (WHO CNS grade 4 → 1, grades 2–3 → 0, missing → NaN) and one-hot ``type_glioblastoma``,
    ``type_astrocytoma``, ``type_oligodendroglioma`` (plus ``type_other`` when a diagnosis names
    none of them) from the WHO 2021 diagnosis.  Groups: ``sex`` and ``age_band``.  Splits are
    assigned by patient with ``seed``.  Subjects without metadata, sequence, segmentation or tumour
    slices, or with unreadable volumes, are dropped and reported.  :func:`write_ucsf_pdgm` writes
    the same cohort to a directory shard by shard (:func:`ucsf_pdgm_stream`).

    Raises
    ------
    CohortError
        Missing metadata file or column, bad value (file, row, column), duplicate subject IDs,
        no subject folders under ``root``.
    """
    return collect_stream(ucsf_pdgm_stream(_io.merge_params(UcsfPdgmParams, params, overrides)))


def ucsf_pdgm_stream(params: UcsfPdgmParams) -> CohortStream:
    """:func:`load_ucsf_pdgm`'s cohort as a :class:`~reconaudit.cohorts.base.CohortStream`.

    A first pass reads each subject's volumes (image, tumour segmentation, brain mask) once to find
    the unusable subjects and choose the slices, keeping only the slice indices; the kept subjects
    are then read again one at a time and their chosen slices resized, so written through a
    :class:`~reconaudit.cohorts.base.CohortWriter` at most one subject's volumes and one shard of
    slices are in memory.  Each subject's slices are resized together, as in one pass, so the
    numbers do not depend on the batch.  A subject that read in the first pass and fails in the
    second (changed meanwhile) is a :class:`CohortError` naming the file.
    """
    subjects = _Subjects(params)
    fracs: list[np.ndarray] = []

    def batches(chunk: int):
        for batch in _io.rebatch(subjects.slices(), chunk):
            fracs.append(_io.mask_fraction(batch["masks"]))
            yield batch

    def finish() -> dict:
        return subjects.finish(np.concatenate(fracs) if fracs else np.zeros(0, dtype=np.float32))

    return CohortStream(len(subjects.rows), batches, finish)


def write_ucsf_pdgm(params: UcsfPdgmParams, directory: str | Path, *,
                    shard_studies: int = DEFAULT_SHARD_STUDIES) -> None:
    """Write :func:`load_ucsf_pdgm`'s cohort to ``directory`` shard by shard (:func:`ucsf_pdgm_stream`)."""
    write_stream(ucsf_pdgm_stream(_io.merge_params(UcsfPdgmParams, params, {})), directory,
                 shard_studies=shard_studies)


class _Subjects:
    """The subjects of a UCSF-PDGM root that load: metadata matched to folders and every subject's
    volumes read once (drops reported, slices chosen), then :meth:`slices` gives the kept subjects'
    chosen slices one subject at a time and :meth:`finish` the table, data card and metadata."""

    def __init__(self, p: UcsfPdgmParams) -> None:
        self.p = p
        root = self.root = Path(p.root)
        if not root.is_dir():
            raise CohortError(f"{WHAT}: root {str(root)!r} is not a directory; set 'root' to the dataset folder")
        meta_path = self.meta_path = root / p.metadata_csv if not Path(p.metadata_csv).is_absolute() \
            else Path(p.metadata_csv)
        drops = self.drops = _io.DropReport(source=f"{WHAT} ({root})")
        by_num = subject_folders(root, drops)
        grep = self.grep = GroupReport()
        md = _read_metadata(meta_path, p, grep)
        md_nums = set(md["num"].tolist())
        for num, d in by_num.items():
            if num not in md_nums:
                drops.add("no metadata row", file=str(d), detail=f"subject {num} is not in {meta_path.name}")
        for num, row in zip(md["num"].tolist(), md["_row"].tolist()):
            if num not in by_num:
                drops.add("no image folder", file=str(meta_path), row=int(row),
                          detail=f"subject {num} has no folder under root")
        md = md[md["num"].isin(set(by_num))].reset_index(drop=True)
        if p.max_subjects is not None:
            md = md.iloc[: p.max_subjects]
        self.md = md
        self.header_only = _io.headers_only()  # fixed when the stream is made: both passes agree

        import nibabel as nib

        self.nib = nib
        # kept subjects: (folder, stem, image file, segmentation file, volume shape, chosen slices)
        self.kept: list[tuple[Path, str, Path, Path, tuple[int, ...], np.ndarray]] = []
        self.rows: list[dict] = []
        for r in track(list(md.itertuples(index=False)), description=f"{WHAT}: checking volumes"):
            folder = by_num[r.num]
            stem = folder.name.removesuffix("_nifti")
            pid = f"UCSF-PDGM-{r.num:04d}"
            f_img, f_seg = _find(folder, stem, p.sequence), _find(folder, stem, "tumor_segmentation")
            if f_img is None:
                drops.add("missing sequence", file=str(folder), detail=f"no {stem}_{p.sequence}.nii[.gz]; sequences "
                          f"present: {', '.join(available_sequences(folder, stem)) or 'none'}")
                continue
            if f_seg is None:
                drops.add("missing segmentation", file=str(folder), detail=f"no {stem}_tumor_segmentation.nii[.gz]")
                continue
            if self.header_only:  # reconaudit check: NIfTI headers only, one placeholder slice per subject
                try:
                    shapes = [nib.load(str(f)).shape for f in (f_img, f_seg)]
                    if len(shapes[0]) != 3 or shapes[1] != shapes[0]:
                        raise ValueError(f"volume shape {shapes[0]} and segmentation shape {shapes[1]} must be "
                                         f"equal 3D")
                except Exception as exc:
                    drops.add("unreadable volume", file=str(f_img), detail=f"{type(exc).__name__}: {exc}")
                    continue
                shape, z = tuple(shapes[0]), np.array([shapes[0][2] // 2])
            else:
                try:
                    vol, seg, brain = _read_subject(nib, folder, stem, f_img, f_seg)
                except Exception as exc:
                    drops.add("unreadable volume", file=str(f_img), detail=f"{type(exc).__name__}: {exc}")
                    continue
                shape = tuple(vol.shape)
                z = choose_slices((seg > 0).sum(axis=(0, 1)), brain.sum(axis=(0, 1)), p.slices, p.n_slices)
                del vol, seg, brain  # the second pass reads them again
                if len(z) == 0:
                    drops.add("no tumour slices", file=str(f_seg), detail=f"slices={p.slices!r} selected none")
                    continue
            self.kept.append((folder, stem, f_img, f_seg, shape, z))
            for k in z:
                self.rows.append({"study_id": f"{pid}/z{int(k):03d}", "patient_id": pid, "slice": int(k),
                                  "sex": r.sex, "age": r.age, "grade": r.grade, "diagnosis": r.diagnosis})

        if not self.rows:
            drops.log(logger)
            hint = ""
            if drops.counts.get("missing sequence", 0) and by_num:
                seqs = sorted({q for d in by_num.values()
                               for q in available_sequences(d, d.name.removesuffix("_nifti"))})
                hint = f"; sequence {p.sequence!r} is absent, sequences present: {', '.join(seqs) or 'none'}"
            raise CohortError(f"{WHAT}: no subject under {str(root)!r} could be loaded; "
                              f"dropped: {drops.counts}{hint}")

    def _volumes(self, folder: Path, stem: str, f_img: Path, f_seg: Path,
                 shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(normalised volume, target mask, brain mask) of a kept subject; placeholders in header-only mode."""
        if self.header_only:
            vol = np.zeros((2, 2, shape[2]), dtype=np.float32)  # 2x2: numpy keeps strides of 1x1 views
            return vol, vol > 0, vol > 0
        try:
            vol, seg, brain = _read_subject(self.nib, folder, stem, f_img, f_seg)
            if tuple(vol.shape) != shape:
                raise ValueError(f"volume shape {tuple(vol.shape)} differs from {shape} when it was checked")
        except Exception as exc:
            raise CohortError(f"{WHAT}: {str(f_img)!r} (or its segmentation) read when the subjects were checked "
                              f"but not when they were loaded ({type(exc).__name__}: {exc}); was it changed "
                              f"meanwhile?") from exc
        return vol, target_mask(seg, self.p.label_policy), brain

    def slices(self) -> Iterator[dict[str, torch.Tensor]]:
        """Each kept subject's chosen slices (images, masks, roi_masks), resized to ``size``, a subject at a time."""
        size = self.p.size
        for folder, stem, f_img, f_seg, shape, z in track(self.kept, description=f"{WHAT}: reading volumes"):
            vol, tgt, brain = self._volumes(folder, stem, f_img, f_seg, shape)
            unit = {"images": _io.resize_batch(axial_slices(vol, z), size),
                    "masks": _io.resize_batch(axial_slices(tgt, z), size, mask=True),
                    "roi_masks": _io.resize_batch(axial_slices(brain, z), size, mask=True).bool()}
            del vol, tgt, brain  # one volume at a time: released before the next is read
            yield unit
            del unit

    def finish(self, mask_fraction: np.ndarray) -> dict:
        """The :class:`Cohort` fields other than the arrays; ``mask_fraction`` per study, from the batches."""
        p, md, grep, drops, meta_path = self.p, self.md, self.grep, self.drops, self.meta_path
        table = pd.DataFrame(self.rows)
        # impossible ages of the loaded subjects: reported once per subject, then unknown
        first = table.drop_duplicates("patient_id")
        md_row = dict(zip(md["num"].map(lambda n: f"UCSF-PDGM-{n:04d}"), md["_row"]))
        ages = clean_ages(first["age"].to_numpy(dtype=np.float64), grep,
                          where=[f"{_io.where(meta_path, int(md_row[q]))}, column 'Age at MRI'"
                                 for q in first["patient_id"]])
        table["age"] = table["patient_id"].map(dict(zip(first["patient_id"], ages))).astype(np.float64)
        table["age_band"] = _io.age_bands(table["age"].to_numpy(dtype=np.float64), p.age_bands)
        g = table["grade"].to_numpy(dtype=np.float64)
        table["high_grade"] = np.where(np.isfinite(g), (g == 4).astype(np.float64), np.nan)
        types = table["diagnosis"].map(tumour_type)
        labels = ["high_grade"]
        for t in (*TUMOUR_TYPES, "other"):
            if t == "other" and not (types == "other").any():
                continue
            table[f"type_{t}"] = (types == t).astype(np.float64)
            labels.append(f"type_{t}")
        table["split"] = _io.split_by_patient(table["patient_id"].to_numpy(), p.split_fractions, p.seed)
        groups = ["sex", "age_band"]

        drops.log(logger)
        notes = [
            f"Sequence {p.sequence}; slices={p.slices!r}, n_slices={p.n_slices}; label_policy={p.label_policy!r}",
            "Intensity per volume: (v - p1) / (p99 - p1) within brain, clipped to [0, 1]",
            f"Splits assigned by patient (fractions {tuple(p.split_fractions)}, seed {p.seed})",
            f"Images: {p.size}x{p.size}; one study per axial slice",
        ]
        gmeta, gcard = group_summary(table, groups, p, grep, WHAT)
        card = _io.data_card(title=p.name, source=str(self.root), modality="mri", table=table, labels=labels,
                             group_attributes=groups, drops=drops, mask_fraction=mask_fraction, notes=notes,
                             sections=[gcard])
        meta = {"loader": "ucsf-pdgm", "params": p.model_dump(mode="json"),
                "subjects": int(table["patient_id"].nunique()), "groups": gmeta, "dropped": drops.as_meta()}
        return {"name": p.name, "modality": "mri", "table": table, "labels": labels, "group_attributes": groups,
                "data_card": card, "meta": meta}


class UcsfPdgmCohort(CohortBuilder):
    """The ``ucsf-pdgm`` cohort (:func:`load_ucsf_pdgm`)."""

    name = "ucsf-pdgm"
    kind = "loader"
    modality = "mri"
    tasks = ("segmentation", "classification")
    groups = "sex, age_band"
    description = "UCSF-PDGM NIfTI folders + metadata CSV (FLAIR, tumour segmentation, WHO grade)"
    Params = UcsfPdgmParams

    @classmethod
    def stream(cls, params: UcsfPdgmParams) -> CohortStream:
        """:func:`ucsf_pdgm_stream`: read a subject at a time and written shard by shard."""
        return ucsf_pdgm_stream(params)

