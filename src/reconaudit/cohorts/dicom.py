"""A folder of DICOM files (PACS export, DICOMDIR tree) as a cohort, identities and groups from the headers.

Files are found recursively and recognised by content (the ``DICM`` marker after the 128-byte
preamble), whatever their name: PACS exports name files by number or UID.  Headers are read with
``pydicom.dcmread(defer_size="1 KB")`` (large values such as the pixels are not read);
pixels are decoded only for the files kept: once to find the unreadable ones, then again chunk by
chunk as the cohort is written (:func:`dicom_stream`).
"""

from __future__ import annotations

import logging
import re
from datetime import date
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import ConfigDict, Field

from ..progress import track
from . import _io
from .base import Cohort, CohortBuilder, CohortError, CohortStream, collect_stream
from .groups import GroupOptions, GroupReport, band_ages, group_summary, normalise_groups

logger = logging.getLogger(__name__)
WHAT = "dicom"
HEADER_TAGS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "InstanceNumber",
               "PatientSex", "PatientAge", "PatientBirthDate", "StudyDate", "Modality")
_AGE_RE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$", re.IGNORECASE)
_PER_YEAR = {"Y": 1.0, "M": 12.0, "W": 365.25 / 7.0, "D": 365.25}
MR_MODALITIES = ("MR",)


class DicomParams(GroupOptions):
    """Options of :func:`load_dicom` (see ``docs/loaders.md``)."""

    model_config = ConfigDict(extra="forbid")

    root: Path
    recursive: bool = True
    one_per_study: bool = False
    modality: Literal["auto", "xray", "mri"] = "auto"
    labels_csv: str | None = None
    key_column: Literal["SOPInstanceUID", "StudyInstanceUID", "PatientID"] = "StudyInstanceUID"
    target_columns: list[str] = Field(default_factory=list)
    size: int = Field(64, ge=4)
    max_files: int | None = Field(None, ge=1)
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 0
    name: str = "dicom"


def supported_tasks(params: dict) -> tuple[str, ...]:
    """Classification with ``target_columns`` (from ``labels_csv``), otherwise none (image quality only)."""
    return ("classification",) if params.get("target_columns") else ()


def parse_age(value: object) -> float:
    """DICOM Age String (``nnnD``/``nnnW``/``nnnM``/``nnnY``, e.g. ``045Y``) → years; NaN when blank or malformed."""
    m = _AGE_RE.match(str(value or ""))
    if not m:
        return float("nan")
    return float(m.group(1)) / _PER_YEAR[m.group(2).upper()]


def _date(value: object) -> date | None:
    s = str(value or "").strip()
    if not re.fullmatch(r"\d{8}", s):
        return None
    try:
        return date(int(s[:4]), int(s[4:6]), int(s[6:]))
    except ValueError:
        return None


def age_from_dates(birth: object, study: object) -> float:
    """Age in whole years at the study date from ``PatientBirthDate`` and ``StudyDate`` (``YYYYMMDD``)."""
    b, s = _date(birth), _date(study)
    if b is None or s is None:
        return float("nan")
    return float(s.year - b.year - ((s.month, s.day) < (b.month, b.day)))


def scan_headers(root: Path, *, recursive: bool = True, drops: _io.DropReport | None = None) -> pd.DataFrame:
    """One row per DICOM file under ``root`` with :data:`HEADER_TAGS` (pixels not read).

    Files that are not DICOM by content are counted as ``not DICOM`` in ``drops``.
    """
    import pydicom

    paths = sorted(p for p in (root.rglob("*") if recursive else root.glob("*")) if p.is_file())
    rows = []
    for f in track(paths, description=f"{WHAT}: reading headers"):
        if not _io.is_dicom(f):
            if drops is not None:
                drops.add("not DICOM", file=str(f), detail="no DICM marker after the 128-byte preamble")
            continue
        try:
            ds = pydicom.dcmread(str(f), defer_size="1 KB")  # headers now, large values (pixels) deferred
        except Exception as exc:  # noqa: BLE001 - any decoder error is a named drop
            if drops is not None:
                drops.add("unreadable header", file=str(f), detail=f"{type(exc).__name__}: {exc}")
            continue
        row = {t: ds.get(t, None) for t in HEADER_TAGS}
        row = {k: ("" if v is None else str(v)) for k, v in row.items()}
        row["path"] = str(f)
        row["has_pixels"] = "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds
        rows.append(row)
    return pd.DataFrame(rows, columns=[*HEADER_TAGS, "path", "has_pixels"])


def load_dicom(params: DicomParams | None = None, **overrides) -> Cohort:
    """Load every DICOM image under ``root`` as a cohort; identities, sex and age from the headers.

    - ``patient_id`` = ``PatientID`` (blank: ``StudyInstanceUID``, noted in the data card);
      ``study_id`` = ``SOPInstanceUID`` (one study per image), or with ``one_per_study`` the first
      image (lowest ``InstanceNumber``, then path) of each ``StudyInstanceUID``.
    - ``sex`` from ``PatientSex`` (normalised, :mod:`reconaudit.cohorts.groups`); ``age`` from
      ``PatientAge`` (:func:`parse_age`), else ``PatientBirthDate`` with ``StudyDate``
      (:func:`age_from_dates`), banded by ``age_bands``.
    - Optional ``labels_csv`` (relative to ``root``): ``key_column`` names the header the CSV is keyed by,
      ``target_columns`` its 0/1/blank labels; images without a row are dropped as ``no label``.
    - Pixels as :func:`reconaudit.cohorts._io.read_image` (modality LUT, min-max, MONOCHROME1 inverted).

    Drops (named in the data card): ``not DICOM``, ``unreadable header``, ``no pixel data`` (e.g.
    DICOMDIR, RT plans, structured reports), ``duplicate SOPInstanceUID``, ``no label``,
    ``compressed DICOM without decoder``, ``unreadable image``.  :func:`dicom_stream` gives the
    same cohort batch by batch (what the ``cohort`` step writes, shard by shard).

    Raises
    ------
    CohortError
        ``root`` is not a folder or holds no loadable DICOM image; ``labels_csv`` missing or
        unreadable, without a named column, with a bad label value or a key twice (file, row, column).
    """
    return collect_stream(dicom_stream(_io.merge_params(DicomParams, params, overrides)))


def dicom_stream(params: DicomParams) -> CohortStream:
    """:func:`load_dicom`'s cohort as a :class:`~reconaudit.cohorts.base.CohortStream`.

    The headers are read (:func:`scan_headers`) and the pixels of every file kept are decoded once
    to find the unreadable ones (:func:`reconaudit.cohorts._io.decodes`), keeping nothing; the
    table, data card and metadata follow from the files kept.  Their pixels are then decoded again
    at most :data:`reconaudit.cohorts._io.DECODE_CHUNK` files at a time and resized
    (:func:`reconaudit.cohorts._io.resized_chunks`), so written through a
    :class:`~reconaudit.cohorts.base.CohortWriter` at most one shard of resized images and one chunk
    of decoded files are in memory, however many files the folder holds.

    Parameters
    ----------
    params:
        Validated :class:`DicomParams`.

    Returns
    -------
    CohortStream
        ``n`` kept images; ``batches(chunk)`` yields ``{"images": (B, 1, size, size)}`` with
        ``B <= min(chunk, DECODE_CHUNK)``, in table order.

    Raises
    ------
    CohortError
        As :func:`load_dicom` (raised when the stream is made, before any image is kept); from
        ``batches``, a file that decoded when checked but not when loaded (changed or removed
        meanwhile), naming the file.
    """
    p = params
    root = Path(p.root)
    if not root.is_dir():
        raise CohortError(f"{WHAT}: root {str(root)!r} is not a directory; set 'root' to the folder of DICOM files")
    drops = _io.DropReport(source=f"{WHAT} ({root})")
    hdr = scan_headers(root, recursive=p.recursive, drops=drops)
    if hdr.empty:
        raise CohortError(f"{WHAT}: no DICOM file under {str(root)!r} (recursive={p.recursive}); "
                          f"dropped: {drops.counts}")
    for i in np.flatnonzero(~hdr["has_pixels"].to_numpy(dtype=bool)):
        drops.add("no pixel data", file=hdr["path"].iloc[i], detail=f"Modality {hdr['Modality'].iloc[i]!r}")
    hdr = hdr[hdr["has_pixels"].to_numpy(dtype=bool)].reset_index(drop=True)
    sop = hdr["SOPInstanceUID"].where(hdr["SOPInstanceUID"] != "", hdr["path"])
    dup = sop.duplicated().to_numpy()
    for i in np.flatnonzero(dup):
        drops.add("duplicate SOPInstanceUID", file=hdr["path"].iloc[i], detail=f"{sop.iloc[i]} is read already")
    hdr, sop = hdr[~dup].reset_index(drop=True), sop[~dup].reset_index(drop=True)
    study = hdr["StudyInstanceUID"].where(hdr["StudyInstanceUID"] != "", sop)
    n_files = len(hdr)
    if p.one_per_study:
        inst = pd.to_numeric(hdr["InstanceNumber"], errors="coerce").fillna(np.inf)
        order = pd.DataFrame({"s": study, "i": inst, "p": hdr["path"]}).sort_values(["s", "i", "p"])
        keep_idx = np.sort(order.drop_duplicates("s").index.to_numpy())
        hdr, sop, study = (x.iloc[keep_idx].reset_index(drop=True) for x in (hdr, sop, study))
    if p.max_files is not None:
        hdr, sop, study = (x.iloc[: p.max_files].reset_index(drop=True) for x in (hdr, sop, study))
    no_pid = (hdr["PatientID"].str.strip() == "").to_numpy()
    table = pd.DataFrame({
        "study_id": (study + "/" + sop).to_numpy(dtype=object) if not p.one_per_study else study.to_numpy(dtype=object),
        "patient_id": np.where(no_pid, study.to_numpy(dtype=object), hdr["PatientID"].str.strip().to_numpy(dtype=object)),
        "study_uid": study.to_numpy(dtype=object),
        "sop_uid": sop.to_numpy(dtype=object),
        "path": hdr["path"].to_numpy(dtype=object),
        "dicom_modality": hdr["Modality"].to_numpy(dtype=object),
    })
    grep = GroupReport()
    table["sex"] = normalise_groups(hdr["PatientSex"], "sex", p.group_synonyms, grep)
    age = np.array([parse_age(v) for v in hdr["PatientAge"]], dtype=np.float64)
    from_dates = np.array([age_from_dates(b, s) for b, s in zip(hdr["PatientBirthDate"], hdr["StudyDate"])])
    age_source = np.where(np.isfinite(age), "PatientAge", np.where(np.isfinite(from_dates), "dates", ""))
    table["age"] = np.where(np.isfinite(age), age, from_dates)  # banded once the cohort's rows are known
    groups = ["sex", "age_band"]

    labels: list[str] = []
    if p.labels_csv is not None:
        lpath = root / p.labels_csv
        lab = _io.read_table(lpath, what=f"{WHAT} labels")
        _io.require_columns(lab, [p.key_column, *p.target_columns], lpath, what=f"{WHAT} labels")
        keys = lab[p.key_column].astype("string").str.strip()
        if keys.duplicated().any():
            i = int(np.flatnonzero(keys.duplicated().to_numpy())[0])
            raise CohortError(f"{WHAT} labels: {_io.where(lpath, i)}, column {p.key_column!r}: "
                              f"{keys.iloc[i]!r} appears twice")
        key_of = {"SOPInstanceUID": table["sop_uid"], "StudyInstanceUID": table["study_uid"],
                  "PatientID": table["patient_id"]}[p.key_column]
        pos = key_of.map(dict(zip(keys, range(len(keys)))))
        for c in p.target_columns:
            vals = _io.numeric_column(lab, c, lpath, allowed=(0, 1), what=f"{WHAT} labels")
            table[c] = np.where(pos.notna(), vals[pos.fillna(0).astype(int).to_numpy()], np.nan)
        labels = list(p.target_columns)
        keep = _io.drop_rows_without_labels(table, labels, drops, file=str(lpath))
        table = table[keep].reset_index(drop=True)
        age_source = age_source[keep]

    # pixels: each file decoded once to find the unreadable ones (kept: none), decoded again by batches()
    ok = np.array([_io.decodes(f, drops) for f in track(table["path"].tolist(), description=f"{WHAT}: checking images")],
                  dtype=bool)
    table = table[ok].reset_index(drop=True)
    age_source = age_source[ok]
    if len(table) == 0:
        drops.log(logger)
        raise CohortError(f"{WHAT}: no image under {str(root)!r} could be loaded; dropped: {drops.counts}")
    table["age"], table["age_band"] = band_ages(table["age"].to_numpy(dtype=np.float64), p.age_bands, grep,
                                                where=[f"{f}: PatientAge / PatientBirthDate" for f in table["path"]])
    modality = p.modality
    if modality == "auto":
        modality = "mri" if set(table["dicom_modality"]) <= set(MR_MODALITIES) else "xray"
    table["split"] = _io.split_by_patient(table["patient_id"].to_numpy(), p.split_fractions, p.seed)

    drops.log(logger)
    notes = [
        f"{n_files} DICOM image file(s) found; {len(table)} loaded"
        + (" (one per StudyInstanceUID)" if p.one_per_study else ""),
        f"patient_id from PatientID; {int(no_pid.sum())} file(s) without one use their StudyInstanceUID",
        f"age from PatientAge for {int((age_source == 'PatientAge').sum())} study(ies), from PatientBirthDate and "
        f"StudyDate for {int((age_source == 'dates').sum())}",
        f"Modality {modality} ({'auto from the Modality tag' if p.modality == 'auto' else 'as configured'})",
        f"Splits assigned by patient (fractions {tuple(p.split_fractions)}, seed {p.seed})",
        f"Images: centre-cropped to a square and resized to {p.size}x{p.size}",
    ]
    gmeta, gcard = group_summary(table, groups, p, grep, WHAT)
    card = _io.data_card(title=p.name, source=str(root), modality=modality, table=table, labels=labels,
                         group_attributes=groups, drops=drops, notes=notes, sections=[gcard])
    meta = {"loader": "dicom", "params": p.model_dump(mode="json"), "files": n_files, "groups": gmeta,
            "dropped": drops.as_meta()}
    info = {"name": p.name, "modality": modality, "table": table, "labels": labels, "group_attributes": groups,
            "data_card": card, "meta": meta}
    files = table["path"].tolist()

    def batches(chunk: int):
        for images in _io.resized_chunks(files, p.size, min(chunk, _io.DECODE_CHUNK), what=WHAT,
                                         description=f"{WHAT}: decoding images"):
            yield {"images": images}

    return CohortStream(len(table), batches, lambda: info)


class DicomCohort(CohortBuilder):
    """The ``dicom`` cohort (:func:`load_dicom`)."""

    name = "dicom"
    kind = "loader"
    modality = "xray|mri"
    tasks = ("classification",)
    groups = "sex, age_band (from the DICOM headers)"
    description = "a folder of DICOM files (any names, recursive); patient, sex and age from the headers"
    Params = DicomParams

    @classmethod
    def stream(cls, params: DicomParams) -> CohortStream:
        """:func:`dicom_stream`: decoded and written shard by shard."""
        return dicom_stream(params)
