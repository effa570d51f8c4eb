"""A generic manifest (CSV or Parquet): one row per image, for datasets without a dedicated loader."""

from __future__ import annotations

import logging
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
from .groups import GroupOptions, GroupReport, band_ages, group_summary, normalise_groups

logger = logging.getLogger(__name__)
WHAT = "manifest"


class ManifestParams(GroupOptions):
    """Options of :func:`load_manifest` (see ``docs/loaders.md``)."""

    model_config = ConfigDict(extra="forbid")

    path: Path
    root: Path | None = None
    image_column: str = "path"
    patient_column: str = "patient_id"
    study_column: str | None = None
    split_column: str | None = None
    target_columns: list[str] = Field(default_factory=list)
    regression_columns: list[str] = Field(
        default_factory=list, description="continuous targets (phenotypes): numbers, blank for missing")
    group_columns: list[str] = Field(default_factory=list)
    age_column: str | None = None
    mask_column: str | None = None
    modality: Literal["xray", "mri"] = "xray"
    size: int = Field(64, ge=4)
    on_missing_image: Literal["error", "drop"] = "error"
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 0
    name: str = "manifest"


def load_manifest(params: ManifestParams | None = None, **overrides) -> Cohort:
    """Load a cohort from a manifest table.

    Each row names an image (``image_column``, relative to ``root``, default the manifest's
    folder), its patient, optionally its study id (default: the image path without its suffix),
    split (``train``/``val``/``test``, aliases ``valid``/``validation``...; default: assigned by
    patient with ``seed``), targets (0/1/blank → float with NaN), groups (normalised by
    :func:`reconaudit.cohorts.groups.normalise_groups`; blank → ``"unknown"``), an age column
    (``age_column``, banded by ``age_bands`` into the group ``age_band``) and a segmentation mask path
    (any value > 0 is foreground).  Paths may use Windows separators (``images\\a.png``).  Rows with
    every target missing, a missing mask path, or an unreadable image or mask are dropped and
    reported.  :func:`write_manifest` writes the same cohort to a directory shard by shard.

    Raises
    ------
    CohortError
        Missing manifest or column; bad target or split value (file, row, column); duplicate study
        id; a patient in two splits; missing image file (with ``on_missing_image="error"``).
    """
    return collect_stream(manifest_stream(_io.merge_params(ManifestParams, params, overrides)))


def manifest_stream(params: ManifestParams) -> CohortStream:
    """:func:`load_manifest`'s cohort as a :class:`~reconaudit.cohorts.base.CohortStream`.

    The rows are checked and every image (and mask) is decoded once to find the unreadable ones,
    keeping nothing; the kept rows are then decoded again at most :data:`DECODE_CHUNK` at a time
    and resized, so written through a :class:`~reconaudit.cohorts.base.CohortWriter` at most one
    shard of resized images and one chunk of decoded files are in memory.  Each image is resized on
    its own (batched with others of its shape), so the chunk changes no number.  A file that decoded
    in the first pass and fails in the second (changed meanwhile) is a :class:`CohortError` naming it.
    """
    p = params
    rows = _ManifestRows(p)
    fracs: list[np.ndarray] = []

    def batches(chunk: int):
        for images, masks in rows.decoded(min(chunk, DECODE_CHUNK)):
            if masks is not None:
                fracs.append(_io.mask_fraction(masks))
            yield {"images": images, "masks": masks}

    def finish() -> dict:
        frac = (np.concatenate(fracs) if fracs else np.zeros(0, dtype=np.float32)) if p.mask_column is not None \
            else None
        table, card, meta = rows.finish(frac)
        return {"name": p.name, "modality": p.modality, "table": table, "labels": list(p.target_columns),
                "group_attributes": rows.groups, "data_card": card, "meta": meta,
                "regression": list(p.regression_columns)}

    return CohortStream(len(rows.table), batches, finish)


def write_manifest(params: ManifestParams, directory: str | Path, *,
                   shard_studies: int = DEFAULT_SHARD_STUDIES) -> None:
    """Write :func:`load_manifest`'s cohort to ``directory`` shard by shard (:func:`manifest_stream`)."""
    write_stream(manifest_stream(_io.merge_params(ManifestParams, params, {})), directory,
                 shard_studies=shard_studies)


#: Files decoded and resized per batch by :func:`manifest_stream` (a 390x320 image is 0.5 MB as float32).
DECODE_CHUNK = _io.DECODE_CHUNK


class _ManifestRows:
    """The rows of a manifest that load: the table checked and every file decoded once (drops
    reported), then :meth:`decoded` gives the kept rows' images and masks shard by shard and
    :meth:`finish` the table, data card and metadata."""

    def __init__(self, p: ManifestParams) -> None:
        self.p = p
        path = self.path = Path(p.path)
        self.root = Path(p.root) if p.root is not None else path.parent
        csv = self.csv = path.suffix.lower() not in (".parquet", ".pq")
        df = _io.read_table(path, what=WHAT)
        cols = [p.image_column, p.patient_column, *p.target_columns, *p.regression_columns, *p.group_columns]
        cols += [c for c in (p.study_column, p.split_column, p.mask_column, p.age_column) if c is not None]
        _io.require_columns(df, cols, path, what=WHAT)
        drops = self.drops = _io.DropReport(source=f"{WHAT} ({path})")

        def strings(col: str) -> pd.Series:
            return df[col].astype("string").str.strip()

        img = strings(p.image_column).str.replace("\\", "/", regex=False)
        pid = strings(p.patient_column)
        for col, s in ((p.image_column, img), (p.patient_column, pid)):
            blank = (s.isna() | (s == "")).fillna(True).to_numpy()
            if blank.any():
                i = int(np.flatnonzero(blank)[0])
                raise CohortError(f"{WHAT}: {_io.where(path, i, csv=csv)}, column {col!r}: value is blank")
        if p.study_column is not None:
            sid = strings(p.study_column)
        else:
            sid = img.str.replace(r"(\.nii\.gz|\.[A-Za-z0-9]+)$", "", regex=True)
        dup = sid.duplicated().to_numpy()
        if dup.any():
            i = int(np.flatnonzero(dup)[0])
            raise CohortError(f"{WHAT}: {_io.where(path, i, csv=csv)}, column {p.study_column or p.image_column!r}: "
                              f"study {sid.iloc[i]!r} appears twice (study ids must be unique; set study_column)")
        table = pd.DataFrame({"study_id": sid.to_numpy(dtype=object), "patient_id": pid.to_numpy(dtype=object),
                              "path": img.to_numpy(dtype=object)})
        if p.split_column is not None:
            table["split"] = _io.normalise_splits(df[p.split_column], path, p.split_column, csv=csv, what=WHAT)
            _io.check_patient_splits(table["patient_id"].to_numpy(), table["split"].to_numpy(), path, what=WHAT)
        for c in p.target_columns:
            table[c] = _io.numeric_column(df, c, path, allowed=(0, 1), csv=csv, what=WHAT)
        for c in p.regression_columns:
            if c in p.target_columns:
                raise CohortError(f"{WHAT}: column {c!r} is in both target_columns and regression_columns; "
                                  f"name it once")
            table[c] = _io.numeric_column(df, c, path, csv=csv, what=WHAT)
        grep = self.grep = GroupReport()
        groups = self.groups = list(p.group_columns)
        for c in p.group_columns:
            if c.strip().casefold().startswith("age") and \
                    pd.to_numeric(df[c].dropna(), errors="coerce").notna().all() \
                    and df[c].nunique() > len(p.age_bands) + 1:
                raise CohortError(f"{WHAT}: {path}, column {c!r} in group_columns holds numeric ages, which would "
                                  f"make one group per age; set age_column: {c} (banded by age_bands) instead")
            table[c] = normalise_groups(df[c], c, p.group_synonyms, grep)
        if p.age_column is not None:
            table["age"] = _io.numeric_column(df, p.age_column, path, csv=csv, what=WHAT)  # banded once rows are known
            groups.append("age_band")
        table["_row"] = np.arange(len(df))

        keep = _io.drop_rows_without_labels(table, p.target_columns, drops, file=str(path))
        if p.mask_column is not None:
            mcol = strings(p.mask_column).str.replace("\\", "/", regex=False)
            nomask = (mcol.isna() | (mcol == "")).fillna(True).to_numpy()
            for i in np.flatnonzero(nomask & keep):
                drops.add("missing mask", file=str(path), row=int(i), detail=f"column {p.mask_column!r} is blank")
            keep &= ~nomask
            table["mask_path"] = mcol.to_numpy(dtype=object)
        table = table[keep].reset_index(drop=True)

        ok = np.zeros(len(table), dtype=bool)
        for i in track(range(len(table)), description=f"{WHAT}: checking images"):
            ok[i] = self._read(table, i, first_pass=True) is not None  # decoded, then let go
        self.table = table[ok].reset_index(drop=True)
        if len(self.table) == 0:
            drops.log(logger)
            raise CohortError(f"{WHAT}: no row of {path} could be loaded; dropped: {drops.counts}")

    def _read(self, table: pd.DataFrame, i: int, *, first_pass: bool) -> tuple[np.ndarray, np.ndarray | None] | None:
        """Row ``i``'s image (and mask) as decoded arrays; None, with the drop recorded, when the first
        pass cannot read it; in the second pass a failure is an error naming the file."""
        p = self.p
        row = int(table["_row"].iloc[i])
        f = self.root / table["path"].iloc[i]
        if not f.is_file():
            msg = f"image {str(f)!r} not found"
            if not first_pass:
                raise CohortError(f"{WHAT}: {_io.where(self.path, row, csv=self.csv)}, column {p.image_column!r}: "
                                  f"{msg} (it was there when the manifest was checked; was it removed meanwhile?)")
            if p.on_missing_image == "error":
                raise CohortError(f"{WHAT}: {_io.where(self.path, row, csv=self.csv)}, column {p.image_column!r}: "
                                  f"{msg}; check 'root' (or set on_missing_image='drop')")
            self.drops.add("missing image", file=str(f), row=row, detail=msg)
            return None
        try:
            a = _io.read_image(f)
        except ValueError as exc:
            if not first_pass:
                raise CohortError(f"{WHAT}: image {str(f)!r} (row {row}) decoded when the manifest was checked "
                                  f"but not when it was loaded ({exc}); was it changed meanwhile?") from exc
            self.drops.add(_io.drop_reason(exc), file=str(f), row=row, detail=str(exc))
            return None
        m = None
        if p.mask_column is not None:
            mf = self.root / table["mask_path"].iloc[i]
            try:
                m = _io.read_image(mf) > 0
                if m.shape != a.shape:
                    raise ValueError(f"mask shape {m.shape} differs from image shape {a.shape}")
            except (ValueError, FileNotFoundError) as exc:
                if not first_pass:
                    raise CohortError(f"{WHAT}: mask {str(mf)!r} (row {row}) read when the manifest was checked "
                                      f"but not when it was loaded ({exc}); was it changed meanwhile?") from exc
                self.drops.add("unreadable mask", file=str(mf), row=row, detail=str(exc))
                return None
            m = m.astype(np.float32)
        return a, m

    def decoded(self, chunk: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """The kept rows' images (float32) and masks (uint8, or None), ``chunk`` rows at a time,
        centre-cropped and resized to ``size`` (:func:`~reconaudit.cohorts._io.stack_resized`)."""
        n, size = len(self.table), self.p.size
        for a in track(range(0, n, chunk), description=f"{WHAT}: reading images"):
            arrays, mask_arrays = [], []
            for i in range(a, min(a + chunk, n)):
                im, m = self._read(self.table, i, first_pass=False)
                arrays.append(im)
                if m is not None:
                    mask_arrays.append(m)
            masks = _io.stack_resized(mask_arrays, size, mask=True) if self.p.mask_column is not None else None
            yield _io.stack_resized(arrays, size), masks

    def finish(self, mask_fraction: np.ndarray | None) -> tuple[pd.DataFrame, str, dict]:
        """The cohort's table (ages banded, splits), data card and metadata; ``mask_fraction``
        is each kept row's mask foreground fraction (None without masks)."""
        p, path, table, drops, grep = self.p, self.path, self.table.copy(), self.drops, self.grep
        if p.age_column is not None:
            locs = [f"{_io.where(path, int(i), csv=self.csv)}, column {p.age_column!r}" for i in table["_row"]]
            table["age"], table["age_band"] = band_ages(table["age"].to_numpy(dtype=np.float64), p.age_bands, grep,
                                                        where=locs)
        if p.split_column is None:
            table["split"] = _io.split_by_patient(table["patient_id"].to_numpy(), p.split_fractions, p.seed)
            rule = f"assigned by patient (fractions {tuple(p.split_fractions)}, seed {p.seed})"
        else:
            rule = f"from column {p.split_column!r}"
        table = table.drop(columns=["_row"])

        drops.log(logger)
        notes = [f"Splits {rule}", f"Images: centre-cropped to a square and resized to {p.size}x{p.size}"]
        gmeta, gcard = group_summary(table, self.groups, p, grep, WHAT)
        card = _io.data_card(title=p.name, source=str(path), modality=p.modality, table=table,
                             labels=p.target_columns, group_attributes=self.groups, drops=drops,
                             mask_fraction=mask_fraction, notes=notes, sections=[gcard])
        meta = {"loader": "manifest", "params": p.model_dump(mode="json"), "split_rule": rule,
                "groups": gmeta, "dropped": drops.as_meta()}
        return table, card, meta


def supported_tasks(params: dict) -> tuple[str, ...]:
    """Tasks a manifest offers: classification with ``target_columns``, segmentation with ``mask_column``,
    regression with ``regression_columns``."""
    out = ("classification",) if params.get("target_columns") else ()
    out += ("segmentation",) if params.get("mask_column") else ()
    return out + (("regression",) if params.get("regression_columns") else ())


def input_files(p: ManifestParams) -> list[Path]:
    """Every file :func:`load_manifest` reads: the manifest, and the images and masks it lists.

    The engine hashes them into the cohort step's key, so an edited label or a replaced image
    rebuilds the cohort.  Blank cells are skipped (the loader reports them).
    """
    path = Path(p.path)
    root = Path(p.root) if p.root is not None else path.parent
    if not path.is_file():
        return [path]
    df = _io.read_table(path, what=WHAT)
    out = [path]
    for col in (p.image_column, p.mask_column):
        if col is not None and col in df.columns:
            out += [root / str(v).strip() for v in df[col].dropna() if str(v).strip()]
    return out


class ManifestCohort(CohortBuilder):
    """The ``manifest`` cohort (:func:`load_manifest`)."""

    name = "manifest"
    kind = "loader"
    modality = "xray|mri"
    tasks = ("classification", "segmentation", "regression")
    groups = "any columns you name"
    description = "generic CSV/Parquet manifest: image path, patient id, split, targets, group columns"
    Params = ManifestParams

    @classmethod
    def stream(cls, params: ManifestParams) -> CohortStream:
        """:func:`manifest_stream`: decoded and written shard by shard."""
        return manifest_stream(params)
