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
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from ..progress import track
from . import _io
from .base import Cohort, CohortError
from .chexpert import snake_case

logger = logging.getLogger(__name__)
WHAT = "fastmri"


class FastmriParams(BaseModel):
    """Options of :func:`load_fastmri` (see ``docs/loaders.md``)."""

    model_config = ConfigDict(extra="forbid")

    root: Path
    size: int = Field(64, ge=4)
    slices: int = Field(8, ge=1)
    crop: int | None = Field(None, ge=4)
    labels_csv: str | None = None
    label_columns: list[str] | None = None
    metadata_csv: str | None = None
    age_bands: list[float] = Field(default_factory=lambda: [40.0, 60.0, 80.0])
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


def _rss_crop(h5: object) -> int | None:
    """The side of a file's ``reconstruction_rss`` (fastMRI's crop, e.g. 320), when square and present."""
    if "reconstruction_rss" not in h5:  # type: ignore[operator]
        return None
    shape = h5["reconstruction_rss"].shape  # type: ignore[index]
    return int(shape[-1]) if len(shape) == 3 and shape[-1] == shape[-2] else None


def _stack_coils(ks: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate k-space blocks (S_i, C_i, H, W) along slices, zero-padding to the most coils.

    A zero coil receives nothing: it changes no RSS image, SENSE solution or sensitivity estimate.
    """
    c = max(int(k.shape[1]) for k in ks)
    return torch.cat([k if k.shape[1] == c else torch.nn.functional.pad(k, (0, 0, 0, 0, 0, c - k.shape[1]))
                      for k in ks])


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

    Raises
    ------
    CohortError
        No ``.h5`` file under ``root``; a file without a ``kspace`` dataset, or with real-valued
        k-space or another layout; malformed labels or metadata CSV (file, row, column).
    """
    import h5py

    p = _io.merge_params(FastmriParams, params, overrides)
    root = Path(p.root)
    if not root.is_dir():
        raise CohortError(f"{WHAT}: root {str(root)!r} is not a directory; set 'root' to the folder of .h5 files")
    files = sorted(root.glob("*.h5"))
    if not files:
        raise CohortError(f"{WHAT}: no .h5 files in {str(root)!r}")
    if p.max_files is not None:
        files = files[: p.max_files]
    drops = _io.DropReport(source=f"{WHAT} ({root})")

    imgs, ks, rows = [], [], []
    for f in track(files, description=f"{WHAT}: reading k-space"):
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
            idx = _middle(d.shape[0], p.slices)
            try:
                k = torch.from_numpy(np.asarray(d[int(idx[0]) : int(idx[-1]) + 1], dtype=np.complex64))
                if d.ndim == 4:  # multi-coil: RSS image, cropped as fastMRI crops reconstruction_rss
                    image, kspace, scale = resample_multicoil(k, p.size, p.crop or _rss_crop(h))
                else:
                    image, kspace, scale = resample_kspace(k, p.size, p.crop)
            except Exception as exc:
                drops.add("unreadable k-space", file=str(f), detail=f"{type(exc).__name__}: {exc}")
                continue
            attrs = dict(h.attrs)
        pid = attrs.get("patient_id")
        pid = pid.decode() if isinstance(pid, bytes) else pid
        pid = str(pid) if pid not in (None, "") else f.stem
        acq = attrs.get("acquisition", "")
        acq = acq.decode() if isinstance(acq, bytes) else str(acq)
        imgs.append(image)
        ks.append(kspace)
        for s in idx:
            rows.append({"study_id": f"{f.stem}/s{int(s):03d}", "patient_id": pid, "file": f.stem,
                         "slice": int(s), "acquisition": acq, "kspace_scale": scale,
                         "coils": int(kspace.shape[1])})
    if not rows:
        drops.log(logger)
        raise CohortError(f"{WHAT}: no file under {str(root)!r} could be loaded; dropped: {drops.counts}")
    images, kspace = torch.cat(imgs), _stack_coils(ks)
    table = pd.DataFrame(rows)

    labels: list[str] = []
    if p.labels_csv is not None:
        lpath = root / p.labels_csv
        spec, labels, annotated = _read_labels(lpath, p.label_columns)
        for n in labels:
            vals = np.full(len(table), np.nan)
            for i, (fs, s) in enumerate(zip(table["file"], table["slice"])):
                if spec["long"]:
                    if fs in annotated:
                        pos = spec["pos"].get((fs, s), {}).get(n, 0.0) or spec["pos"].get((fs, "*"), {}).get(n, 0.0)
                        vals[i] = pos
                else:
                    vals[i] = spec["rows"].get((fs, s), {}).get(n, np.nan)
            table[n] = vals
        keep = ~table[labels].isna().all(axis=1).to_numpy()
        for i in np.flatnonzero(~keep):
            drops.add("no label", file=str(root / f"{table['file'].iloc[i]}.h5"),
                      detail=f"slice {int(table['slice'].iloc[i])} has no label in {lpath.name}")
        ti = torch.as_tensor(np.flatnonzero(keep))
        table, images, kspace = table[keep].reset_index(drop=True), images[ti], kspace[ti]

    groups: list[str] = []
    if p.metadata_csv is not None:
        mpath = root / p.metadata_csv
        md = _io.read_table(mpath, what=f"{WHAT} metadata")
        _io.require_columns(md, ("file",), mpath, what=f"{WHAT} metadata")
        if "sex" not in md.columns and "age" not in md.columns:
            raise CohortError(f"{WHAT} metadata: {mpath} has neither a 'sex' nor an 'age' column; give at least one")
        mf = md["file"].map(_stem)
        dup = mf.duplicated().to_numpy()
        if dup.any():
            i = int(np.flatnonzero(dup)[0])
            raise CohortError(f"{WHAT} metadata: {_io.where(mpath, i)}, column 'file': {md['file'].iloc[i]!r} "
                              f"appears twice")
        if "sex" in md.columns:
            sex = dict(zip(mf, md["sex"].astype("string").str.strip()))
            table["sex"] = table["file"].map(sex).fillna("unknown").astype(object)
            groups.append("sex")
        if "age" in md.columns:
            age = dict(zip(mf, _io.numeric_column(md, "age", mpath, what=f"{WHAT} metadata")))
            table["age"] = table["file"].map(age).astype(np.float64)
            table["age_band"] = _io.age_bands(table["age"].to_numpy(), p.age_bands)
            groups.append("age_band")
    table["split"] = _io.split_by_patient(table["patient_id"].to_numpy(), p.split_fractions, p.seed)

    drops.log(logger)
    notes = [
        f"Middle {p.slices} slices per volume; image = |x| / s, k-space = fft2c(x / s) with x the centre-cropped "
        f"(crop={p.crop or 'min(H, W)'}) and resized ifft2c of the measured k-space, s = max |x| per volume",
        f"Splits assigned by patient (fractions {tuple(p.split_fractions)}, seed {p.seed})",
    ]
    if not labels:
        notes.append("No labels: reconstruction quality only (give labels_csv for classification targets)")
    card = _io.data_card(title=p.name, source=str(root), modality="mri", table=table, labels=labels,
                         group_attributes=groups, drops=drops, notes=notes)
    meta = {"loader": "fastmri", "params": p.model_dump(mode="json"), "files": len(files),
            "fairness_auditable": bool(groups), "dropped": drops.as_meta()}
    return Cohort(name=p.name, modality="mri", images=images, table=table, labels=labels, group_attributes=groups,
                  kspace=kspace, data_card=card, meta=meta)
