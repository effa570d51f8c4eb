"""fastMRI single- and multi-coil HDF5 files as a cohort that keeps measured k-space.

Each ``fileNNNNNNN.h5`` holds ``kspace`` (complex, slices x H x W single-coil, or slices x coils
x H x W multi-coil), usually ``reconstruction_esc`` or ``reconstruction_rss``, and attributes such
as ``max``, ``norm``, ``acquisition`` and ``patient_id`` (any may be absent). A folder may mix both
kinds: each file is read by its own layout (see :func:`resample_multicoil` for multi-coil files).

Reference: Zbontar et al., "fastMRI: An Open Dataset and Benchmarks for Accelerated MRI",
arXiv:1811.08839; fastMRI+ (Zhao et al., Sci. Data 2022) for slice-level finding labels.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field

from ..arrays import DEFAULT_SHARD_STUDIES
from ..progress import track
from . import _io
from .base import Cohort, CohortBuilder, CohortError, CohortStream, collect_stream, write_stream
from .chexpert import snake_case
from .groups import GroupOptions, GroupReport, band_ages, group_summary, normalise_groups

logger = logging.getLogger(__name__)
WHAT = "fastmri"


class FastmriParams(GroupOptions):
    """Options of :func:`load_fastmri` (see ``docs/loaders.md``)."""

    model_config = ConfigDict(extra="forbid")

    root: Path | list[Path]
    folder_splits: bool = False
    size: int = Field(64, ge=4)
    slices: int = Field(8, ge=1)
    crop: int | None = Field(None, ge=4)
    labels_csv: str | None = None
    file_list_csv: str | None = None
    label_columns: list[str] | None = None
    allow_missing_reconstruction: bool = False
    metadata_csv: str | None = None
    max_files: int | None = Field(None, ge=1)
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 0
    name: str = "fastmri"


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2D FFT over the last two axes: ``fftshift(fft2(ifftshift(x), norm="ortho"))``."""
    dims = (-2, -1)
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=dims), norm="ortho"), dim=dims)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2D inverse FFT: ``fftshift(ifft2(ifftshift(k), norm="ortho"))``."""
    dims = (-2, -1)
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=dims), norm="ortho"), dim=dims)


def resample_kspace(
    kspace: torch.Tensor, size: int, crop: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Measured k-space (S, H, W) → normalised image and matching k-space, each (S, 1, size, size).

    ``x = ifft2c(k)``; ``x`` is centre-cropped to a square of side ``crop`` (default ``min(H, W)``)
    and resized to ``size`` (real and imaginary parts, bilinear with anti-aliasing); with
    ``s = max |x|`` over the slices, the outputs are ``image = |x| / s`` and ``k' = fft2c(x / s)``,
    so ``|ifft2c(k')| == image``.

    Returns
    -------
    image : torch.Tensor
        float32 (S, 1, size, size) in [0, 1].
    kspace : torch.Tensor
        complex64 (S, 1, size, size).
    scale : float
        ``s``, to recover the measured units (``x = s * ifft2c(k')``).
    """
    x = ifft2c(kspace.to(torch.complex64))
    h, w = x.shape[-2:]
    c = min(h, w) if crop is None else min(crop, h, w)
    top, left = (h - c) // 2, (w - c) // 2
    x = x[..., top : top + c, left : left + c]
    ri = torch.stack([x.real, x.imag], dim=1)  # (S, 2, c, c)
    if c != size:
        ri = F.interpolate(ri, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    xr = torch.complex(ri[:, 0], ri[:, 1])[:, None]
    scale = xr.abs().amax()
    if not torch.isfinite(scale) or scale <= 0:
        raise ValueError("k-space is zero or not finite")
    xr = xr / scale
    return xr.abs().clamp(0.0, 1.0).to(torch.float32), fft2c(xr).to(torch.complex64), float(scale)


def multicoil_rss(kspace: torch.Tensor, crop: tuple[int, int] | None = None) -> torch.Tensor:
    """fastMRI's ``reconstruction_rss``: :math:`\\sqrt{\\sum_c |\\mathrm{ifft2c}(k_c)|^2}`, centre-cropped.

    ``kspace`` (S, C, H, W) complex; ``crop`` (h, w) is cut from the centre as
    ``fastmri.data.transforms.center_crop`` does (``top = (H - h) // 2``). Returns float32 (S, h, w).
    """
    x = ifft2c(kspace.to(torch.complex64))
    r = torch.sqrt((x.abs() ** 2).sum(1))
    if crop is None:
        return r
    h, w = r.shape[-2:]
    ch, cw = min(int(crop[0]), h), min(int(crop[1]), w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return r[..., top : top + ch, left : left + cw]


def resample_multicoil(
    kspace: torch.Tensor, size: int, crop: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Measured multi-coil k-space (S, C, H, W) → RSS image (S, 1, size, size) and coil k-space (S, C, size, size).

    Each coil image goes through :func:`resample_kspace` (centre crop to ``crop``, resize to
    ``size``); with ``x_c`` the resampled coil images and ``s = max_slices RSS(x)``, the outputs
    are ``image = RSS(x) / s`` and ``k_c = fft2c(x_c / s)``, so ``sqrt(sum_c |ifft2c(k_c)|^2) ==
    image``; ``scale`` returns to the measured units (``RSS(measured) = scale * image``).
    """
    n_s, n_c, h, w = kspace.shape
    _, kc, s1 = resample_kspace(kspace.reshape(n_s * n_c, h, w), size, crop)
    kc = kc.reshape(n_s, n_c, size, size)
    r = torch.sqrt((ifft2c(kc).abs() ** 2).sum(1, keepdim=True))
    s2 = r.amax()
    if not torch.isfinite(s2) or s2 <= 0:
        raise ValueError("k-space is zero or not finite")
    return (r / s2).clamp(0.0, 1.0).to(torch.float32), (kc / s2).to(torch.complex64), float(s1 * s2)


def _pad_coils(k: torch.Tensor, coils: int) -> torch.Tensor:
    """Zero-pad a k-space block (S, C, H, W) to ``coils`` coils (the most coils of any file of the cohort).

    A zero coil receives nothing: it changes no RSS image, SENSE solution or sensitivity estimate.
    """
    return k if k.shape[1] == coils else torch.nn.functional.pad(k, (0, 0, 0, 0, 0, coils - k.shape[1]))


def _middle(n: int, k: int) -> np.ndarray:
    """Indices of the middle ``k`` of ``n`` slices: ``start = (n - k) // 2``."""
    k = min(k, n)
    start = (n - k) // 2
    return np.arange(start, start + k)


def _stem(name: str) -> str:
    s = str(name).strip()
    return s[:-3] if s.endswith(".h5") else s


def _read_labels(path: Path, label_columns: list[str] | None) -> tuple[dict, list[str], set[str]]:
    """Labels CSV → ({(file, slice): {label: value}}, label names, annotated files).

    Long (fastMRI+) format: a ``label`` column of finding names, one row per annotation; a slice is
    positive for a finding when a row names it (``study_level`` = yes applies to every slice of
    the file), negative otherwise, for every file listed.  Wide format: numeric 0/1/blank columns.
    """
    df = _io.read_table(path, what=f"{WHAT} labels")
    _io.require_columns(df, ("file", "slice"), path, what=f"{WHAT} labels")
    files = df["file"].map(_stem)
    long = "label" in df.columns and label_columns is None and \
        pd.to_numeric(df["label"].dropna(), errors="coerce").isna().any()
    study_level = np.zeros(len(df), dtype=bool)
    if long and "study_level" in df.columns:
        study_level = df["study_level"].astype("string").str.strip().str.lower().isin(["yes", "true", "1"]).to_numpy()
    sl = df["slice"].astype("string").str.strip()
    sl_num = pd.to_numeric(sl, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~study_level & (~np.isfinite(sl_num) | (sl_num != np.round(sl_num)) | (sl_num < 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CohortError(f"{WHAT} labels: {_io.where(path, i)}, column 'slice': {df['slice'].iloc[i]!r} "
                          f"is not a slice index (non-negative integer)")
    annotated = set(files)
    out: dict = {}
    if long:
        names_raw = df["label"].astype("string").str.strip()
        findings = sorted({x for x in names_raw.dropna() if x})
        names = [snake_case(x) for x in findings]
        for i in range(len(df)):
            f = files.iloc[i]
            lab = names_raw.iloc[i]
            if pd.isna(lab) or not lab:
                continue
            key = (f, "*") if study_level[i] else (f, int(sl_num[i]))
            out.setdefault(key, {})[snake_case(lab)] = 1.0
        return {"long": True, "pos": out}, names, annotated
    cols = label_columns or [c for c in df.columns if c not in ("file", "slice")]
    _io.require_columns(df, cols, path, what=f"{WHAT} labels")
    vals = {c: _io.numeric_column(df, c, path, allowed=(0, 1), what=f"{WHAT} labels") for c in cols}
    names = [snake_case(c) for c in cols]
    for i in range(len(df)):
        out[(files.iloc[i], int(sl_num[i]))] = {n: vals[c][i] for c, n in zip(cols, names)}
    return {"long": False, "rows": out}, names, annotated


def load_fastmri(params: FastmriParams | None = None, **overrides) -> Cohort:
    """Load fastMRI single- or multi-coil volumes (middle ``slices`` of each) with their measured k-space.

    ``kspace`` of the cohort is the measured k-space resampled to ``size`` and ``images`` its
    normalised magnitude, exactly as :func:`resample_kspace`: ``|ifft2c(cohort.kspace)| ==
    cohort.images``; the scale ``s`` per volume is in the table column ``kspace_scale``.
    Multi-coil files (``kspace`` (slices, coils, H, W)) go through :func:`resample_multicoil`:
    ``images`` is the root-sum-of-squares image (cropped to the file's ``reconstruction_rss`` side
    unless ``crop`` is given, as fastMRI does) and ``kspace`` keeps every coil, (N, C, size, size),
    zero-padded to the most coils of any file (a single-coil file is coil 0); the table column
    ``coils`` holds each study's own count. Undersample it with ``kspace`` ``coils: 0``.
    Patient id: the ``patient_id`` attribute, else the file name without ``.h5``.  Labels come only
    from ``labels_csv``; groups (``sex``, ``age_band``) only from ``metadata_csv`` (columns
    ``file``, ``sex`` and/or ``age``); without it the cohort has no groups.  Splits are assigned by
    patient with ``seed``.  Unreadable files and slices without any label are dropped and reported.
    :func:`write_fastmri` writes the same cohort to a directory shard by shard (:func:`fastmri_stream`).

    Raises
    ------
    CohortError
        No ``.h5`` file under ``root``; a file without a ``kspace`` dataset, or with real-valued
        k-space or another layout; malformed labels or metadata CSV (file, row, column); k-space
        that cannot be read or is zero or not finite (it is read only once the headers of every
        file have been checked: see :func:`fastmri_stream`).
    """
    return collect_stream(fastmri_stream(_io.merge_params(FastmriParams, params, overrides)))


def fastmri_stream(params: FastmriParams) -> CohortStream:
    """:func:`load_fastmri`'s cohort as a :class:`~reconaudit.cohorts.base.CohortStream`.

    A first pass reads every file's HDF5 attributes and dataset shapes, reads and resamples its
    middle ``slices`` of k-space once (keeping nothing), drops the files that cannot be opened, are
    undersampled, lack a reference or whose k-space cannot be used (unreadable, zero or not finite:
    dropped and reported, as in one pass), and reads the labels and metadata CSVs, so the table (but
    for ``kspace_scale``), the drops and the number of studies are known before any study is kept.
    The kept files are then read again one at a time, resampled and yielded, so written through a
    :class:`~reconaudit.cohorts.base.CohortWriter` at most one volume's k-space and one shard are
    in memory.  Each volume is resampled on its own, as in one pass, so the numbers do not depend
    on the batch.  A file whose k-space read in the first pass and fails in the second (changed
    meanwhile) is a :class:`CohortError` naming it.
    """
    volumes = _Volumes(params)
    scales: list[np.ndarray] = []

    def batches(chunk: int):
        yield from _io.rebatch(volumes.slices(scales), chunk)

    def finish() -> dict:
        return volumes.finish(np.concatenate(scales) if scales else np.zeros(0))

    return CohortStream(len(volumes.table), batches, finish)


def write_fastmri(params: FastmriParams, directory: str | Path, *,
                  shard_studies: int = DEFAULT_SHARD_STUDIES) -> None:
    """Write :func:`load_fastmri`'s cohort to ``directory`` shard by shard (:func:`fastmri_stream`)."""
    write_stream(fastmri_stream(_io.merge_params(FastmriParams, params, {})), directory,
                 shard_studies=shard_studies)


class _Volumes:
    """The fastMRI files that load: headers checked (drops reported), labels, metadata and splits
    read, then :meth:`slices` gives the kept slices' images and k-space a file at a time and
    :meth:`finish` the table, data card and metadata."""

    def __init__(self, p: FastmriParams) -> None:
        import h5py

        self.p = p
        roots = self.roots = [Path(r) for r in (p.root if isinstance(p.root, list) else [p.root])]
        root = self.root = roots[0]  # labels, file list and metadata CSVs are relative to the first root
        drops = self.drops = _io.DropReport(source=f"{WHAT} ({', '.join(map(str, roots))})")
        files, folder_of = _list_files(roots, drops)
        if p.max_files is not None:
            files = files[: p.max_files]
        self.n_files = len(files)
        self.header_only = _io.headers_only()  # fixed when the stream is made: both passes agree

        # loaded files: (file, slice indices, coils, crop, row positions in the table)
        self.kept: list[tuple[Path, np.ndarray, int, int | None, np.ndarray]] = []
        rows: list[dict] = []
        for f in track(files, description=f"{WHAT}: checking files"):
            try:
                h = h5py.File(f, "r")
            except Exception as exc:
                drops.add("unreadable file", file=str(f), detail=f"{type(exc).__name__}: {exc}")
                continue
            with h:
                if "kspace" not in h:
                    raise CohortError(f"{WHAT}: {f} has no 'kspace' dataset (datasets present: {sorted(h.keys())}); "
                                      f"fastMRI single- or multi-coil files are expected")
                d = h["kspace"]
                if d.ndim not in (3, 4) or not np.issubdtype(d.dtype, np.complexfloating):
                    raise CohortError(f"{WHAT}: {f}: 'kspace' must be complex (slices, H, W) or multi-coil "
                                      f"(slices, coils, H, W), got {d.dtype} {d.shape}")
                why = undersampled_reason(h, p.allow_missing_reconstruction)
                if why:
                    drops.add(why[0], file=str(f), detail=why[1])
                    continue
                idx = _middle(d.shape[0], p.slices)
                coils = int(d.shape[1]) if d.ndim == 4 else 1
                try:
                    crop = p.crop or reference_crop(h)
                    if not self.header_only:  # read and resampled once, nothing kept: unusable k-space is dropped
                        _resampled(d, idx, p.size, crop)
                except Exception as exc:
                    drops.add("unreadable k-space", file=str(f), detail=f"{type(exc).__name__}: {exc}")
                    continue
                attrs = dict(h.attrs)
            pid = attrs.get("patient_id")
            pid = pid.decode() if isinstance(pid, bytes) else pid
            pid = str(pid) if pid not in (None, "") else f.stem
            acq = attrs.get("acquisition", "")
            acq = acq.decode() if isinstance(acq, bytes) else str(acq)
            self.kept.append((f, idx, coils, crop, np.arange(len(rows), len(rows) + len(idx))))
            for s in idx:
                rows.append({"study_id": f"{f.stem}/s{int(s):03d}", "patient_id": pid, "file": f.stem,
                             "slice": int(s), "acquisition": acq, "kspace_scale": np.nan, "folder": folder_of[f],
                             "coils": coils})
        if not rows:
            drops.log(logger)
            raise CohortError(f"{WHAT}: no file under {str(root)!r} could be loaded; dropped: {drops.counts}")
        self.coils = max(c for _, _, c, _, _ in self.kept)  # k-space is zero-padded to the most coils
        table = pd.DataFrame(rows)
        keep = np.ones(len(table), dtype=bool)

        labels: list[str] = []
        self.n_reviewed_negative = 0
        if p.labels_csv is not None:
            lpath = root / p.labels_csv
            spec, labels, annotated = _read_labels(lpath, p.label_columns)
            if p.file_list_csv is not None:
                reviewed = read_file_list(root / p.file_list_csv)
                self.n_reviewed_negative = len(reviewed - annotated)
                annotated = annotated | reviewed
            for n in labels:
                vals = np.full(len(table), np.nan)
                for i, (fs, s) in enumerate(zip(table["file"], table["slice"])):
                    if spec["long"]:
                        if fs in annotated:
                            pos = spec["pos"].get((fs, s), {}).get(n, 0.0) or \
                                spec["pos"].get((fs, "*"), {}).get(n, 0.0)
                            vals[i] = pos
                    else:
                        vals[i] = spec["rows"].get((fs, s), {}).get(n, np.nan)
                table[n] = vals
            keep = ~table[labels].isna().all(axis=1).to_numpy()
            for i in np.flatnonzero(~keep):
                drops.add("no label", file=str(root / f"{table['file'].iloc[i]}.h5"),
                          detail=f"slice {int(table['slice'].iloc[i])} has no label in {lpath.name}")
            table = table[keep].reset_index(drop=True)
        self.keep = keep  # per row of the files' middle slices: kept (labelled)
        self.labels = labels

        groups = self.groups = []
        grep = self.grep = GroupReport()
        if p.metadata_csv is not None:
            mpath = root / p.metadata_csv
            md = _io.read_table(mpath, what=f"{WHAT} metadata")
            _io.require_columns(md, ("file",), mpath, what=f"{WHAT} metadata")
            if "sex" not in md.columns and "age" not in md.columns:
                raise CohortError(f"{WHAT} metadata: {mpath} has neither a 'sex' nor an 'age' column; "
                                  f"give at least one")
            mf = md["file"].map(_stem)
            dup = mf.duplicated().to_numpy()
            if dup.any():
                i = int(np.flatnonzero(dup)[0])
                raise CohortError(f"{WHAT} metadata: {_io.where(mpath, i)}, column 'file': {md['file'].iloc[i]!r} "
                                  f"appears twice")
            if "sex" in md.columns:
                sex = dict(zip(mf, normalise_groups(md["sex"], "sex", p.group_synonyms, grep)))
                table["sex"] = normalise_groups(table["file"].map(sex), "sex", p.group_synonyms)
                groups.append("sex")
            if "age" in md.columns:
                ages = _io.numeric_column(md, "age", mpath, what=f"{WHAT} metadata")
                loaded = mf.isin(set(table["file"])).to_numpy()  # impossible ages reported for loaded files only
                locs = [f"{_io.where(mpath, i)}, column 'age'" for i in range(len(md))]
                age = dict(zip(mf[loaded], band_ages(ages[loaded], p.age_bands, grep,
                                                     where=list(np.array(locs)[loaded]))[0]))
                table["age"] = table["file"].map(age).astype(np.float64)
                table["age_band"] = _io.age_bands(table["age"].to_numpy(), p.age_bands)
                groups.append("age_band")
        self.split_rule = f"assigned by patient (fractions {tuple(p.split_fractions)}, seed {p.seed})"
        if p.folder_splits:
            parts = table["folder"].map(folder_partition).to_numpy(dtype=object)
            table["split"] = _io.splits_from_partitions(parts, table["patient_id"].to_numpy(), p.split_fractions,
                                                        p.seed, source=", ".join(map(str, roots)), what=WHAT)
            self.split_rule = ("from the folder names (train/val/test; val → test when no test folder, val drawn "
                               "from train)")
        else:
            table["split"] = _io.split_by_patient(table["patient_id"].to_numpy(), p.split_fractions, p.seed)
        self.table = table

    def _read(self, f: Path, idx: np.ndarray, coils: int, crop: int | None) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(image, k-space, scale) of a kept file's middle slices; placeholders in header-only mode."""
        import h5py

        p = self.p
        if self.header_only:  # reconaudit check: datasets, shapes and attributes; no k-space read
            return _placeholder(len(idx), p.size, coils)
        try:
            with h5py.File(f, "r") as h:
                return _resampled(h["kspace"], idx, p.size, crop)
        except Exception as exc:
            raise CohortError(f"{WHAT}: {f}: unreadable k-space ({type(exc).__name__}: {exc}); it was read when the "
                              f"files were checked and fails now: was it changed meanwhile?") from exc

    def slices(self, scales: list[np.ndarray]) -> Iterator[dict[str, torch.Tensor]]:
        """Each kept file's labelled slices (images, k-space padded to the most coils), a file at a time;
        appends each kept slice's ``kspace_scale`` to ``scales``."""
        for f, idx, coils, crop, rows in track(self.kept, description=f"{WHAT}: reading k-space"):
            keep = self.keep[rows]
            if not keep.any():
                continue
            image, kspace, scale = self._read(f, idx, coils, crop)
            kspace = _pad_coils(kspace, self.coils)
            if not keep.all():
                ti = torch.as_tensor(np.flatnonzero(keep))
                image, kspace = image[ti], kspace[ti]
            scales.append(np.full(int(keep.sum()), scale, dtype=np.float64))
            unit = {"images": image, "kspace": kspace}
            del image, kspace  # one volume at a time: released before the next is read
            yield unit
            del unit

    def finish(self, scales: np.ndarray) -> dict:
        """The :class:`Cohort` fields other than the arrays; ``scales`` per study, from the batches."""
        p, table, groups, labels, drops = self.p, self.table.copy(), self.groups, self.labels, self.drops
        table["kspace_scale"] = scales
        drops.log(logger)
        notes = [
            f"Middle {p.slices} slices per volume; image = |x| / s, k-space = fft2c(x / s) with x the centre-cropped "
            f"(crop={p.crop or 'the reference reconstruction size, else min(H, W)'}) and resized ifft2c of the "
            f"measured k-space, s = max |x| per volume",
            f"Splits {self.split_rule}",
            f"Folders: {', '.join(map(str, self.roots))}",
        ]
        if p.file_list_csv is not None and p.labels_csv is not None:
            notes.append(f"{self.n_reviewed_negative} reviewed file(s) listed in {p.file_list_csv} without any "
                         f"finding in {p.labels_csv} are negatives on every slice")
        if not labels:
            notes.append("No labels: reconstruction quality only (give labels_csv for classification targets)")
        gmeta, gcard = group_summary(table, groups, p, self.grep, WHAT)
        card = _io.data_card(title=p.name, source=str(self.root), modality="mri", table=table, labels=labels,
                             group_attributes=groups, drops=drops, notes=notes, sections=[gcard] if groups else [])
        meta = {"loader": "fastmri", "params": p.model_dump(mode="json"), "files": self.n_files,
                "fairness_auditable": bool(groups), "groups": gmeta, "dropped": drops.as_meta()}
        return {"name": p.name, "modality": "mri", "table": table, "labels": labels, "group_attributes": groups,
                "data_card": card, "meta": meta}


def supported_tasks(params: dict) -> tuple[str, ...]:
    """Tasks a fastMRI cohort offers: classification with a ``labels_csv``, otherwise none (image quality only)."""
    return ("classification",) if params.get("labels_csv") else ()


# ---------------------------------------------------------------------- single-coil release quirks
#: Attributes and datasets that mark a test/challenge file: undersampled k-space, not a clean reference.
UNDERSAMPLED_MARKERS = ("mask", "acceleration", "num_low_frequency")
REFERENCE_DATASETS = ("reconstruction_esc", "reconstruction_rss")


def _list_files(roots: list[Path], drops: _io.DropReport) -> tuple[list[Path], dict[Path, str]]:
    """The ``.h5`` files of every root (sorted per root) and the folder each came from.

    A file name seen in an earlier root is dropped as ``duplicate file`` (study ids are file names).
    """
    files: list[Path] = []
    folder_of: dict[Path, str] = {}
    seen: dict[str, Path] = {}
    for r in roots:
        if not r.is_dir():
            raise CohortError(f"{WHAT}: root {str(r)!r} is not a directory; set 'root' to the folder of .h5 files "
                              f"(or a list of folders, e.g. [singlecoil_train, singlecoil_val])")
        found = sorted(r.glob("*.h5"))
        if not found:
            raise CohortError(f"{WHAT}: no .h5 files in {str(r)!r}")
        for f in found:
            if f.stem in seen:
                drops.add("duplicate file", file=str(f), detail=f"{f.name} is already read from {seen[f.stem].parent}")
                continue
            seen[f.stem] = f
            files.append(f)
            folder_of[f] = r.name
    return files, folder_of


def undersampled_reason(h5, allow_missing_reconstruction: bool = False) -> tuple[str, str] | None:
    """(drop reason, detail) for a file that must not be loaded as a clean image, else ``None``.

    fastMRI test and challenge files (``singlecoil_test_v2``, ``singlecoil_challenge``) hold
    undersampled k-space with a ``mask`` dataset and ``acceleration`` / ``num_low_frequency``
    attributes and no ``reconstruction_esc``: their zero-filled image is aliased, not a reference.
    A file with no reference reconstruction at all is dropped too, unless
    ``allow_missing_reconstruction`` (k-space known to be fully sampled).
    """
    marks = [m for m in UNDERSAMPLED_MARKERS if m in h5 or m in h5.attrs]
    if marks:
        return ("undersampled file (test/challenge)",
                f"has {', '.join(marks)}: k-space is undersampled, so it cannot serve as a clean reference")
    if not allow_missing_reconstruction and not any(d in h5 for d in REFERENCE_DATASETS):
        return ("no reference reconstruction",
                f"none of {', '.join(REFERENCE_DATASETS)}; set allow_missing_reconstruction: true if its k-space "
                f"is fully sampled")
    return None


def reference_crop(h5) -> int | None:
    """Side of the released reference reconstruction (320 for ``reconstruction_esc``), or ``None``."""
    for name in REFERENCE_DATASETS:
        if name in h5 and len(h5[name].shape) >= 2:
            return int(min(h5[name].shape[-2:]))
    return None


def read_file_list(path: Path) -> set[str]:
    """File names of a fastMRI+ ``knee_file_list.csv`` / ``brain_file_list.csv`` (reviewed files).

    The lists have no header, one file name per line (with or without ``.h5``), and end with a
    text line such as ``Knee data``; a line with spaces is taken as such a caption and skipped
    when it is the first or last line, and is an error (naming the line) elsewhere.
    """
    if not path.is_file():
        raise CohortError(f"{WHAT} file list: file {str(path)!r} not found; check 'file_list_csv'")
    lines = [ln.strip().strip(",").strip() for ln in path.read_text().splitlines()]
    numbered = [(i + 1, ln) for i, ln in enumerate(lines) if ln]
    out: set[str] = set()
    for k, (lineno, ln) in enumerate(numbered):
        if len(ln.split()) > 1:
            if k in (0, len(numbered) - 1):
                continue
            raise CohortError(f"{WHAT} file list: {path}: line {lineno}: {ln!r} is not a file name")
        out.add(_stem(ln))
    return out


def folder_partition(folder: str) -> str:
    """``singlecoil_train`` → ``train``, ``singlecoil_val`` → ``val``, ``..._test...`` → ``test``; else ``""``."""
    for token in reversed(str(folder).lower().replace("-", "_").split("_")):
        if token in _io.SPLIT_ALIASES:
            return _io.SPLIT_ALIASES[token]
    return ""


def _resampled(d, idx: np.ndarray, size: int, crop: int | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(image, k-space, scale) of the slices ``idx[0]..idx[-1]`` of the h5 dataset ``d`` (single-coil
    ``resample_kspace``; multi-coil: the RSS image, cropped as fastMRI crops ``reconstruction_rss``)."""
    k = torch.from_numpy(np.asarray(d[int(idx[0]) : int(idx[-1]) + 1], dtype=np.complex64))
    return resample_multicoil(k, size, crop) if d.ndim == 4 else resample_kspace(k, size, crop)


def _placeholder(n: int, size: int, coils: int = 1) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Zero images and k-space of ``n`` slices, for header-only checks (:func:`reconaudit.cohorts._io.header_only`)."""
    return torch.zeros(n, 1, size, size), torch.zeros(n, coils, size, size, dtype=torch.complex64), 1.0


class FastmriCohort(CohortBuilder):
    """The ``fastmri`` cohort (:func:`load_fastmri`)."""

    name = "fastmri"
    kind = "loader"
    modality = "mri"
    tasks = ("classification",)
    groups = "from an optional metadata CSV"
    description = "fastMRI single-coil HDF5 (measured k-space), optional labels and metadata CSVs"
    Params = FastmriParams

    @classmethod
    def stream(cls, params: FastmriParams) -> CohortStream:
        """:func:`fastmri_stream`: read a file at a time and written shard by shard."""
        return fastmri_stream(params)

