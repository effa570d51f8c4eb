"""Shared pieces of the real-data loaders: image reading, resizing, drop accounting, data cards.

Everything here converts *at the edge*: files on disk become float32 arrays in [0, 1], and
tables become the column conventions of :class:`reconaudit.cohorts.base.Cohort`.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..progress import track
from .base import SPLITS, CohortError, assign_splits_by_patient

logger = logging.getLogger(__name__)

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


# ---------------------------------------------------------------------------------------------- images
_HEADER_ONLY: ContextVar[bool] = ContextVar("reconaudit_header_only", default=False)


@contextlib.contextmanager
def header_only() -> Iterator[None]:
    """Within this block loaders check tables, paths and file headers but decode no pixel data.

    :func:`read_image` then checks that a file exists and that its header can be read (and, for
    DICOM, that a decoder for its transfer syntax is installed) and returns a 1x1 placeholder; the
    fastMRI and UCSF-PDGM loaders read dataset shapes and NIfTI headers instead of voxels.  The
    cohort that comes out has the real table, drops and errors but zero images:
    ``reconaudit check`` uses it.
    """
    token = _HEADER_ONLY.set(True)
    try:
        yield
    finally:
        _HEADER_ONLY.reset(token)


def headers_only() -> bool:
    """True inside :func:`header_only`."""
    return _HEADER_ONLY.get()


def _probe(path: Path, suf: str) -> np.ndarray:
    """Header-only stand-in for decoding (see :func:`header_only`)."""
    if suf in RASTER_SUFFIXES:
        from PIL import Image

        with Image.open(path) as im:  # reads the header only
            im.verify()
    elif suf in DICOM_SUFFIXES or is_dicom(path):
        import pydicom

        ds = pydicom.dcmread(str(path), defer_size="1 KB")
        if "PixelData" not in ds:
            raise ImageDropError("no pixel data", f"DICOM {ds.get('Modality', '')} object without PixelData")
        _check_decoder(ds, path)
    elif suf in NIFTI_SUFFIXES:
        import nibabel as nib

        nib.load(str(path))
    elif suf == ".npy":
        np.load(path, mmap_mode="r", allow_pickle=False)
    else:
        raise ValueError(f"unsupported image format {suf!r} (supported: PNG, JPEG, TIFF, DICOM, NIfTI, .npy)")
    return np.zeros((1, 1), dtype=np.float32)


class ImageDropError(ValueError):
    """An image that cannot be decoded for a reason with its own name in the drop report."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def drop_reason(exc: Exception) -> str:
    """The drop-report reason of a :func:`read_image` failure: its own name, else ``"unreadable image"``."""
    return getattr(exc, "reason", "unreadable image")


def is_dicom(path: str | Path) -> bool:
    """True when the file starts with the DICOM Part 10 header: a 128-byte preamble, then ``DICM``."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _scale_integer_or_minmax(a: np.ndarray) -> np.ndarray:
    """Integers: divide by the dtype's maximum; floats: keep if within [0, 1], else min-max."""
    if np.issubdtype(a.dtype, np.bool_):
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        if info.min < 0:
            return minmax(a)
        return (a.astype(np.float64) / float(info.max)).astype(np.float32)
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise ValueError("image contains NaN or infinite values")
    if a.size and a.min() >= 0.0 and a.max() <= 1.0:
        return a
    return minmax(a)


def minmax(a: np.ndarray) -> np.ndarray:
    """Rescale to [0, 1]: ``(a - min) / (max - min)``; a constant image becomes all zeros."""
    a = a.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.float32)
    return ((a - lo) / (hi - lo)).astype(np.float32)


def _read_raster(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L"):
            return np.asarray(im, dtype=np.uint16).astype(np.float32) / 65535.0
        if im.mode in ("I", "F"):
            return _scale_integer_or_minmax(np.asarray(im))
        return np.asarray(im.convert("L"), dtype=np.uint8).astype(np.float32) / 255.0


def _check_decoder(ds, path: Path) -> None:
    """Raise :class:`ImageDropError` ``compressed DICOM without decoder`` when pydicom cannot decode ``ds``."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None or not ts.is_compressed:
        return
    from pydicom.pixels import get_decoder

    try:
        ok = get_decoder(ts).is_available
    except NotImplementedError:
        ok = False
    if not ok:
        raise ImageDropError(
            "compressed DICOM without decoder",
            f"transfer syntax {ts.name} ({ts}) needs a pixel-data plugin that is not installed "
            f"(see pydicom's pixel data handlers: pylibjpeg, pylibjpeg-openjpeg, gdcm)",
        )


def _read_dicom(path: Path) -> np.ndarray:
    import pydicom

    ds = pydicom.dcmread(str(path))
    if "PixelData" not in ds:
        raise ImageDropError("no pixel data", f"DICOM {ds.get('Modality', '')} object without PixelData")
    _check_decoder(ds, path)
    a = ds.pixel_array.astype(np.float64)
    a = a * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
    if a.ndim == 3 and a.shape[-1] in (3, 4) and getattr(ds, "SamplesPerPixel", 1) > 1:
        a = a[..., :3].mean(axis=-1)
    a = np.squeeze(a)
    if a.ndim != 2:
        raise ValueError(f"DICOM pixel data has shape {a.shape}; a single 2D frame is expected")
    out = minmax(a)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 1.0 - out
    return out


def _read_nifti(path: Path) -> np.ndarray:
    import nibabel as nib

    a = np.squeeze(np.asarray(nib.load(str(path)).dataobj))
    if a.ndim != 2:
        raise ValueError(f"NIfTI data has shape {a.shape}; a 2D image is expected here")
    return _scale_integer_or_minmax(a)


def read_image(path: str | Path) -> np.ndarray:
    """Read one 2D image as float32 in [0, 1].

    Scaling by format:

    - PNG/JPEG/TIFF (Pillow): 8-bit ``v / 255``, 16-bit ``v / 65535``; colour is converted to
      luminance (ITU-R 601-2, Pillow's ``"L"`` mode).
    - DICOM (pydicom), recognised by its suffix or, whatever the name, by the ``DICM`` marker after
      the 128-byte preamble: the modality LUT ``v * RescaleSlope + RescaleIntercept``, then min-max to
      [0, 1]; ``MONOCHROME1`` is inverted so that bright means dense.
    - NIfTI (nibabel) and ``.npy``: unsigned integers ``v / max(dtype)``; floats already in [0, 1]
      are kept, otherwise min-max ``(v - min) / (max - min)``.

    Raises
    ------
    ValueError
        The file exists but cannot be decoded as a single 2D image (the loaders count this as a
        dropped row, under :func:`drop_reason`: e.g. ``compressed DICOM without decoder``).
    """
    p = Path(path)
    suf = _suffix(p)
    try:
        if headers_only():
            return _probe(p, suf)
        if suf in RASTER_SUFFIXES:
            a = _read_raster(p)
        elif suf in DICOM_SUFFIXES or (suf not in NIFTI_SUFFIXES and suf != ".npy" and is_dicom(p)):
            a = _read_dicom(p)
        elif suf in NIFTI_SUFFIXES:
            a = _read_nifti(p)
        elif suf == ".npy":
            a = np.squeeze(np.load(p, allow_pickle=False))
            if a.ndim != 2:
                raise ValueError(f"array has shape {a.shape}; a 2D image is expected")
            a = _scale_integer_or_minmax(a)
        else:
            raise ValueError(
                f"unsupported image format {suf!r} (supported: PNG, JPEG, TIFF, DICOM, NIfTI, .npy)"
            )
    except ValueError:
        raise
    except Exception as exc:  # decoder errors come in many types (OSError, InvalidDicomError, ...)
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc
    if a.ndim != 2:
        raise ValueError(f"decoded image has shape {a.shape}; a 2D image is expected")
    return np.clip(a, 0.0, 1.0).astype(np.float32)


def center_crop_square(x: torch.Tensor) -> torch.Tensor:
    """Crop the last two dimensions of ``x`` to a centred square of side ``min(H, W)``."""
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return x[..., top : top + s, left : left + s]


def resize_batch(x: torch.Tensor, size: int, *, mask: bool = False) -> torch.Tensor:
    """Centre-crop (N, C, H, W) to a square, then resize to ``size x size``.

    Images use bilinear interpolation with anti-aliasing (``torch.nn.functional.interpolate(...,
    mode="bilinear", antialias=True)``), clamped to [0, 1]; masks (``mask=True``) are resized the
    same way as a float fraction and thresholded at 0.5, so a mask follows its image's geometry.
    """
    x = center_crop_square(x.to(torch.float32))
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if mask:
        return (x >= 0.5).to(torch.uint8)
    return x.clamp_(0.0, 1.0)


def stack_resized(arrays: Sequence[np.ndarray], size: int, *, mask: bool = False) -> torch.Tensor:
    """Resize 2D arrays of possibly different shapes to one (N, 1, size, size) tensor.

    Arrays are grouped by shape and each group is resized in one batched call
    (:func:`resize_batch`), so the cost is one interpolation per distinct input shape.
    """
    n = len(arrays)
    out = torch.zeros((n, 1, size, size), dtype=torch.uint8 if mask else torch.float32)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, a in enumerate(arrays):
        by_shape.setdefault(tuple(a.shape), []).append(i)
    for idx in by_shape.values():
        batch = torch.from_numpy(np.stack([np.asarray(arrays[i], dtype=np.float32) for i in idx]))[:, None]
        out[torch.as_tensor(idx)] = resize_batch(batch, size, mask=mask)
    return out


#: Files decoded and resized per batch by the streaming loaders' second pass (:func:`resized_chunks`);
#: a 390x320 image is 0.5 MB as float32.
DECODE_CHUNK = 64


def decodes(path: str | Path, drops: DropReport, *, row: int | None = None) -> bool:
    """Whether ``path`` decodes with :func:`read_image` (the first pass of a streaming loader).

    The decoded image is let go at once, so checking every file holds none of them.  A file that
    does not decode is recorded in ``drops`` (reason :func:`drop_reason`, the file, ``row`` and the
    decoder's message) and ``False`` is returned.
    """
    try:
        read_image(path)
    except ValueError as exc:
        drops.add(drop_reason(exc), file=str(path), row=row, detail=str(exc))
        return False
    return True


def resized_chunks(
    files: Sequence[str | Path],
    size: int,
    chunk: int,
    *,
    what: str,
    where: Callable[[int], str] | None = None,
    description: str,
) -> Iterator[torch.Tensor]:
    """The second pass of a streaming loader: ``files`` (each checked by :func:`decodes`) as
    (B, 1, ``size``, ``size``) float32 batches of at most ``chunk`` studies, in order.

    Each batch is decoded (:func:`read_image`) and resized (:func:`stack_resized`) on its own, so at
    most ``chunk`` decoded files are in memory; each image is resized alone (batched only with
    others of its shape), so the chunk changes no number.  No files give one empty batch.  A file
    that no longer decodes (removed or changed since it was checked) is a :class:`CohortError`
    naming it, with ``where(i)`` (e.g. its CSV row) when given.
    """
    n, chunk = len(files), max(1, int(chunk))
    if n == 0:
        yield stack_resized([], size)
        return
    for start in track(range(0, n, chunk), description=description):
        arrays = []
        for i in range(start, min(start + chunk, n)):
            try:
                arrays.append(read_image(files[i]))
            except ValueError as exc:
                loc = f" ({where(i)})" if where is not None else ""
                raise CohortError(f"{what}: image {str(files[i])!r}{loc} decoded when the images were checked but "
                                  f"not when it was loaded ({exc}); was it changed or removed meanwhile?") from exc
        yield stack_resized(arrays, size)
        del arrays


# ---------------------------------------------------------------------------------------------- drops
@dataclass
class DropReport:
    """Rows a loader had to leave out, each with its reason; never dropped silently.

    Each entry records the reason (e.g. ``"unreadable image"``), where (file and/or row) and a
    detail (the decoder's message).  :meth:`as_meta` goes into ``Cohort.meta["dropped"]``,
    :meth:`markdown` into the data card, and :meth:`log` writes one WARNING.
    """

    source: str
    entries: list[dict] = field(default_factory=list)
    max_listed: int = 1000

    def add(self, reason: str, *, file: str | Path | None = None, row: int | None = None, detail: str = "") -> None:
        """Record one dropped row."""
        self.entries.append(
            {"reason": reason, "file": None if file is None else str(file), "row": row, "detail": str(detail)}
        )

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def counts(self) -> dict[str, int]:
        """Number of dropped rows per reason."""
        return dict(Counter(e["reason"] for e in self.entries))

    def as_meta(self) -> dict:
        """JSON-serialisable summary: total, counts per reason, and the entries (first ``max_listed``)."""
        return {
            "total": len(self.entries),
            "by_reason": self.counts,
            "entries": self.entries[: self.max_listed],
            "entries_truncated": len(self.entries) > self.max_listed,
        }

    def log(self, log: logging.Logger | None = None) -> None:
        """Log one WARNING summarising the drops (nothing when there are none)."""
        if not self.entries:
            return
        first = "; ".join(_describe(e) for e in self.entries[:5])
        more = f" (and {len(self.entries) - 5} more)" if len(self.entries) > 5 else ""
        (log or logger).warning(
            "%s: dropped %d row(s): %s. First: %s%s",
            self.source,
            len(self.entries),
            ", ".join(f"{k}: {v}" for k, v in self.counts.items()),
            first,
            more,
        )

    def markdown(self, max_rows: int = 20) -> str:
        """A Markdown section listing the drop counts and the first ``max_rows`` dropped rows."""
        if not self.entries:
            return "## Dropped rows\n\nNone: every row that passed selection was loaded.\n"
        lines = ["## Dropped rows", "", f"{len(self.entries)} row(s) dropped.", "", "| reason | count |", "| --- | --- |"]
        lines += [f"| {md_escape(k)} | {v} |" for k, v in self.counts.items()]
        lines += ["", "| reason | file | row | detail |", "| --- | --- | --- | --- |"]
        for e in self.entries[:max_rows]:
            row = "" if e["row"] is None else e["row"]
            lines.append(f"| {md_escape(e['reason'])} | {md_escape(e['file'] or '')} | {row} | {md_escape(e['detail'])} |")
        if len(self.entries) > max_rows:
            lines.append(f"\n... {len(self.entries) - max_rows} more in `meta['dropped']`.")
        return "\n".join(lines) + "\n"


def _describe(e: dict) -> str:
    where = ", ".join(x for x in (e["file"], None if e["row"] is None else f"row {e['row']}") if x)
    return f"{e['reason']} ({where}){': ' + e['detail'] if e['detail'] else ''}"


def md_escape(s: object) -> str:
    """Escape a value for a Markdown table cell (pipes, newlines and HTML angle brackets)."""
    return (
        str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|").replace("\n", " ")
    )


# ---------------------------------------------------------------------------------------------- tables
def where(file: str | Path, index: int, *, csv: bool = True) -> str:
    """Name a data row: ``file: row i (line i + 2)`` for CSV files (header on line 1)."""
    return f"{file}: row {index} (line {index + 2})" if csv else f"{file}: row {index}"


def read_table(path: str | Path, *, what: str) -> pd.DataFrame:
    """Read a CSV or Parquet table with string columns preserved; raise CohortError if absent."""
    p = Path(path)
    if not p.is_file():
        raise CohortError(f"{what}: file {str(p)!r} not found; check the path (and the root it is relative to)")
    try:
        if p.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(p)
        return pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""])
    except Exception as exc:
        raise CohortError(f"{what}: cannot read {str(p)!r} as a table ({type(exc).__name__}: {exc})") from exc


def require_columns(df: pd.DataFrame, columns: Sequence[str], file: str | Path, *, what: str) -> None:
    """Raise CohortError naming the first required column missing from ``df``."""
    for c in columns:
        if c not in df.columns:
            raise CohortError(
                f"{what}: {file} has no column {c!r} (columns present: {list(map(str, df.columns))}); "
                f"rename the column or set the loader option that names it"
            )


def numeric_column(
    df: pd.DataFrame,
    column: str,
    file: str | Path,
    *,
    allowed: Sequence[float] | None = None,
    csv: bool = True,
    what: str,
) -> np.ndarray:
    """Parse ``df[column]`` as float (blank → NaN); raise CohortError naming row and column of a bad value.

    ``allowed`` restricts the non-missing values (e.g. ``(1, 0, -1)``).
    """
    raw = df[column]
    if pd.api.types.is_bool_dtype(raw):
        return np.array(raw.to_numpy(dtype=np.float64), copy=True)
    s = raw.astype("string").str.strip() if not pd.api.types.is_numeric_dtype(raw) else raw
    vals = np.array(pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan), copy=True)
    present = ~pd.isna(s).to_numpy() & (s.astype("string") != "").fillna(False).to_numpy(dtype=bool)
    bad = present & ~np.isfinite(vals)
    if allowed is not None:
        bad |= np.isfinite(vals) & ~np.isin(vals, np.asarray(allowed, dtype=np.float64))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        expect = f"one of {list(allowed)} or blank" if allowed is not None else "a number or blank"
        raise CohortError(
            f"{what}: {where(file, i, csv=csv)}, column {column!r}: value {raw.iloc[i]!r} is not {expect}; "
            f"correct the value or leave it blank for missing"
        )
    vals[~present] = np.nan
    return vals


def age_band_labels(edges: Sequence[float]) -> list[str]:
    """Band names for ``edges`` e.g. ``[40, 60, 80]`` → ``["<40", "40-59", "60-79", "80+"]``."""
    e = [float(x) for x in edges]
    fmt = [f"{x:g}" for x in e]
    names = [f"<{fmt[0]}"]
    for a, b in zip(e[:-1], e[1:]):
        upper = f"{b - 1:g}" if a.is_integer() and b.is_integer() else f"<{b:g}"
        names.append(f"{a:g}-{upper}")
    names.append(f"{fmt[-1]}+")
    return names


def age_bands(ages: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Map ages to bands with left-closed intervals ``[e_k, e_{k+1})``; NaN → ``"unknown"``."""
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or len(e) == 0 or np.any(np.diff(e) <= 0):
        raise CohortError(f"age_bands must be a non-empty strictly increasing list of edges, got {list(edges)}")
    names = np.asarray(age_band_labels(edges), dtype=object)
    a = np.asarray(ages, dtype=np.float64)
    out = names[np.digitize(np.nan_to_num(a, nan=0.0), e, right=False)]
    out[~np.isfinite(a)] = "unknown"
    return out


def normalise_splits(values: pd.Series, file: str | Path, column: str, *, csv: bool = True, what: str) -> np.ndarray:
    """Map split names (train/val/test and aliases such as ``valid``) or raise naming row and column."""
    s = values.astype("string").str.strip().str.lower()
    mapped = s.map(SPLIT_ALIASES)
    bad = mapped.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CohortError(
            f"{what}: {where(file, i, csv=csv)}, column {column!r}: split {values.iloc[i]!r} is not one of "
            f"{SPLITS} (aliases: {sorted(SPLIT_ALIASES)})"
        )
    return mapped.to_numpy(dtype=object)


def check_patient_splits(patient_ids: np.ndarray, splits: np.ndarray, file: str | Path, *, what: str) -> None:
    """Raise CohortError when one patient appears in two splits (naming the patient and splits)."""
    df = pd.DataFrame({"p": patient_ids, "s": splits})
    n = df.groupby("p")["s"].nunique()
    if (n > 1).any():
        pid = n[n > 1].index[0]
        found = sorted(df.loc[df["p"] == pid, "s"].unique())
        raise CohortError(
            f"{what}: {file}: patient {pid!r} appears in splits {found}; a patient must stay in one split "
            f"(fix the split column, or leave it out to assign splits by patient)"
        )


def split_by_patient(patient_ids: np.ndarray, fractions: Sequence[float], seed: int) -> np.ndarray:
    """:func:`reconaudit.cohorts.base.assign_splits_by_patient` with a tuple of fractions."""
    return assign_splits_by_patient(np.asarray(patient_ids, dtype=str), tuple(fractions), seed)  # type: ignore[arg-type]


def splits_from_partitions(
    partitions: np.ndarray, patient_ids: np.ndarray, fractions: Sequence[float], seed: int, *, source: str, what: str
) -> np.ndarray:
    """Splits from a dataset's own partitions (``train``/``val``/``test``; ``""`` = unknown → train).

    Without a test partition, ``val`` becomes test (the official validation data are the held-out
    set) and val is drawn by patient from the train partition with the fraction
    ``f_val / (f_train + f_val)`` of ``fractions``.  A patient in two partitions is an error.
    """
    split = np.asarray(partitions, dtype=object).copy()
    split[split == ""] = "train"
    check_patient_splits(np.asarray(patient_ids), split, source, what=what)
    if "test" not in set(split):
        split = np.where(split == "val", "test", split).astype(object)
        tr = split == "train"
        f_tr, f_val = float(fractions[0]), float(fractions[1])
        frac = f_val / (f_tr + f_val) if f_tr + f_val > 0 else 0.0
        sub = split_by_patient(np.asarray(patient_ids)[tr], (1.0 - frac, 0.0, frac), seed)
        split[tr] = np.where(sub == "test", "val", "train")
    return split


def drop_rows_without_labels(table: pd.DataFrame, labels: Sequence[str], drops: DropReport, *, file: str) -> np.ndarray:
    """Boolean keep-mask: rows with every label missing are dropped with reason ``"no label"``."""
    if not labels:
        return np.ones(len(table), dtype=bool)
    none = table[list(labels)].isna().all(axis=1).to_numpy()
    for i in np.flatnonzero(none):
        drops.add("no label", file=file, row=int(table.index[i]), detail=f"all of {list(labels)} missing")
    return ~none


# ---------------------------------------------------------------------------------------------- data card
def data_card(
    *,
    title: str,
    source: str,
    modality: str,
    table: pd.DataFrame,
    labels: Sequence[str],
    group_attributes: Sequence[str],
    drops: DropReport,
    masks: torch.Tensor | None = None,
    notes: Sequence[str] = (),
    sections: Sequence[str] = (),
    mask_fraction: np.ndarray | None = None,
) -> str:
    """Markdown data card: counts per split, prevalence of each label per group, mask coverage, drops.

    The mask coverage is each study's foreground fraction of ``masks``, or ``mask_fraction`` (one
    number per table row) from a loader that wrote its masks shard by shard.

    ``sections`` (Markdown, e.g. the group-value summary of :mod:`reconaudit.cohorts.groups`) come
    before the dropped rows.  Prevalence of label ``l`` in group ``g`` is ``sum(y_l == 1) / sum(y_l observed)`` over the
    group's studies (missing labels excluded from the denominator).
    """
    out = [f"# Data card: {md_escape(title)}", "", f"- Source: `{source}`", f"- Modality: {modality}"]
    out.append(f"- Studies: {len(table)}; patients: {table['patient_id'].nunique() if len(table) else 0}")
    out += [f"- {md_escape(n)}" for n in notes]
    out += ["", "## Splits", "", "| split | studies | patients |", "| --- | --- | --- |"]
    for s in SPLITS:
        sub = table[table["split"] == s]
        out.append(f"| {s} | {len(sub)} | {sub['patient_id'].nunique()} |")
    lab = list(labels)
    frac = None
    if masks is not None and len(table):
        frac = masks.reshape(masks.shape[0], -1).float().mean(dim=1).numpy()
    elif mask_fraction is not None and len(table):
        frac = np.asarray(mask_fraction)
    if lab:
        out += ["", "## Label prevalence (all studies)", "", "| label | positives | observed | prevalence |",
                "| --- | --- | --- | --- |"]
        for name in lab:
            y = table[name].to_numpy(dtype=np.float64)
            obs = np.isfinite(y).sum()
            pos = int((y == 1).sum())
            out.append(f"| {md_escape(name)} | {pos} | {obs} | {_rate(pos, obs)} |")
    if not group_attributes:
        out += ["", "## Groups", "", "No group attributes: fairness across patient groups cannot be audited "
                "for this cohort (supply demographic metadata to enable it)."]
    for g in group_attributes:
        head = ["group", "studies", "patients", *lab]
        if frac is not None:
            head.append("mean mask fraction")
        out += ["", f"## By {md_escape(g)}", "", "| " + " | ".join(md_escape(h) for h in head) + " |",
                "|" + " --- |" * len(head)]
        parts = dict(list(table.groupby(g, sort=False, dropna=False)))
        for value in sorted(parts, key=_group_key):
            sub = parts[value]
            cells = [md_escape(value), str(len(sub)), str(sub["patient_id"].nunique())]
            for name in lab:
                y = sub[name].to_numpy(dtype=np.float64)
                cells.append(_rate(int((y == 1).sum()), int(np.isfinite(y).sum())))
            if frac is not None:
                cells.append(f"{float(frac[table.index.get_indexer(sub.index)].mean()):.4f}")
            out.append("| " + " | ".join(cells) + " |")
    for sec in sections:
        out += ["", sec.rstrip()]
    out += ["", drops.markdown()]
    return "\n".join(out)


def _group_key(value: object) -> tuple:
    """Order group values: age bands by their lower edge (``<40`` first), then other text."""
    m = re.match(r"^(<)?(\d+(?:\.\d+)?)", str(value))
    if m:
        return (0, float(m.group(2)) - (0.5 if m.group(1) else 0.0), str(value))
    return (1, 0.0, str(value))


def _rate(pos: int, obs: int) -> str:
    return "n/a" if obs == 0 else f"{pos / obs:.3f}"


def merge_params(cls, params, overrides: dict):
    """Build a params model from ``params`` (or defaults) updated with keyword ``overrides`` (validated)."""
    if params is None:
        return cls(**overrides)
    if not isinstance(params, cls):
        raise TypeError(f"params must be a {cls.__name__}, got {type(params).__name__}")
    if not overrides:
        return params
    return cls(**{**params.model_dump(), **overrides})


# ---------------------------------------------------------------------------------------------- streams
def mask_fraction(masks: torch.Tensor) -> np.ndarray:
    """The foreground fraction of each study's mask (N, 1, H, W): the data card's mean mask fraction,
    computed batch by batch by a loader that streams its masks (``data_card(mask_fraction=...)``)."""
    return masks.reshape(masks.shape[0], -1).float().mean(dim=1).numpy()


def rebatch(units: Iterable[dict[str, torch.Tensor | None]], chunk: int) -> Iterator[dict[str, torch.Tensor | None]]:
    """Batches of exactly ``chunk`` studies (the last may be smaller) from ``units`` of any size.

    A unit is a dict of arrays with the same keys every time and one row per study (e.g. the
    slices of one volume); ``None`` entries stay ``None``.  Rows keep their order and values (a
    batch is the concatenation of consecutive rows), and at most one unit and one batch are held:
    the shape of :attr:`~reconaudit.cohorts.base.CohortStream.batches` for a loader that reads a
    volume at a time.  Rows left over from a unit are copied, so a unit is released before the next
    one is made.
    """
    chunk = max(1, int(chunk))
    parts: list[dict[str, torch.Tensor | None]] = []
    held = 0
    for unit in units:
        n, start = int(unit["images"].shape[0]), 0
        while start < n:
            take = min(chunk - held, n - start)
            parts.append({k: None if v is None else v[start : start + take] for k, v in unit.items()})
            held, start = held + take, start + take
            if held == chunk:
                yield _concat(parts)
                parts, held = [], 0
        if parts and start:  # the unit's last rows wait for the next unit: copy them, so the unit is let go
            parts[-1] = {k: None if v is None else v.clone() for k, v in parts[-1].items()}
        del unit
    if held:
        yield _concat(parts)


def _concat(parts: list[dict[str, torch.Tensor | None]]) -> dict[str, torch.Tensor | None]:
    if len(parts) == 1:
        return parts[0]
    return {k: None if v is None else torch.cat([p[k] for p in parts]) for k, v in parts[0].items()}
