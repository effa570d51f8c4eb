"""The :class:`Cohort`: a set of studies with clean images, targets, group attributes and splits."""

from __future__ import annotations

import json
from abc import ABC
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel
from safetensors.torch import load_file

from reconaudit.arrays import DEFAULT_SHARD_STUDIES, ArrayWriter, StudyArray, open_arrays

SPLITS = ("train", "val", "test")
Modality = Literal["xray", "mri"]
REQUIRED_COLUMNS = ("study_id", "patient_id", "split")


class CohortError(ValueError):
    """A cohort (or the files it was read from) is malformed; the message names what and where.

    A data error fails the same way on every attempt, so executors do not retry it (``retryable``).
    """

    retryable = False


@dataclass
class Cohort:
    """A set of studies, in the conventions every other room relies on.

    Attributes
    ----------
    name:
        Cohort name (e.g. ``"chest-xray"``).
    modality:
        ``"xray"`` or ``"mri"``: decides which degradations apply.
    images:
        Clean images, float32 in [0, 1], shape (N, 1, H, W): a tensor, or (a cohort read with
        :meth:`load`) a lazy :class:`~reconaudit.arrays.StudyArray` whose ``images[idx]`` reads only
        those studies; the masks and k-space likewise.
    table:
        One row per study, aligned with ``images``: ``study_id`` (unique str), ``patient_id`` (str),
        ``split`` (train/val/test, assigned by patient), one column per group attribute and one
        float column per classification label (1, 0, or NaN for missing).
    labels:
        Names of the classification label columns (may be empty).
    group_attributes:
        Names of the group attribute columns (e.g. ``["sex", "age_band"]``).
    masks:
        Segmentation targets, uint8 {0, 1}, shape (N, 1, H, W), or ``None``.
    roi_masks:
        Region of interest (body or brain) as bool (N, 1, H, W) for image quality within it, or None.
    lesion_masks:
        Where the findings are, as bool (N, 1, H, W) (e.g. the synthetic chest cohort's finding
        regions), for region-aware image quality; ``None`` falls back to ``masks``.
    kspace:
        Measured complex64 k-space (N, C, H, W) (C receive coils; 1 single-coil) when the cohort
        comes from raw data, else ``None``.
    regression:
        Names of the continuous target columns of ``table`` (phenotypes, e.g. ``tumor_area_cm2``;
        NaN where missing), the targets of the ``regression`` task; may be empty.
    concentration:
        The ground-truth tumour concentration field, float32 (N, 1, H, W) in [0, 1], when the cohort
        keeps it (brain-glioma with ``isolines``), else ``None``: the truth of the isoline scores.
    data_card:
        Markdown description (size, prevalence per group, bias mechanisms).
    meta:
        Free JSON-serialisable metadata (generation parameters, drop counts, ...).
    """

    name: str
    modality: Modality
    images: torch.Tensor
    table: pd.DataFrame
    labels: list[str] = field(default_factory=list)
    group_attributes: list[str] = field(default_factory=list)
    masks: torch.Tensor | None = None
    roi_masks: torch.Tensor | None = None
    lesion_masks: torch.Tensor | None = None
    kspace: torch.Tensor | None = None
    data_card: str = ""
    meta: dict = field(default_factory=dict)
    regression: list[str] = field(default_factory=list)
    concentration: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Check shapes, dtypes, ranges and table columns; raise :class:`CohortError` naming the fault."""
        n = self.images.shape[0] if self.images.ndim else 0
        if self.images.ndim != 4 or self.images.shape[1] != 1:
            raise CohortError(f"cohort {self.name!r}: images must be (N, 1, H, W), got {tuple(self.images.shape)}")
        if self.images.dtype != torch.float32:
            raise CohortError(f"cohort {self.name!r}: images must be float32, got {self.images.dtype}")
        # a cohort read from the store was checked shard by shard when it was written (CohortWriter)
        if n and not isinstance(self.images, StudyArray) and (
            float(self.images.min()) < 0.0 or float(self.images.max()) > 1.0
        ):
            raise CohortError(f"cohort {self.name!r}: images must lie in [0, 1]")
        if self.modality not in ("xray", "mri"):
            raise CohortError(f"cohort {self.name!r}: modality must be 'xray' or 'mri', got {self.modality!r}")
        if len(self.table) != n:
            raise CohortError(f"cohort {self.name!r}: table has {len(self.table)} rows but there are {n} images")
        for col in (*REQUIRED_COLUMNS, *self.group_attributes, *self.labels, *self.regression):
            if col not in self.table.columns:
                raise CohortError(f"cohort {self.name!r}: table lacks column {col!r}")
        if self.table["study_id"].duplicated().any():
            dup = self.table.loc[self.table["study_id"].duplicated(), "study_id"].iloc[0]
            raise CohortError(f"cohort {self.name!r}: study_id {dup!r} appears more than once")
        bad = ~self.table["split"].isin(SPLITS)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise CohortError(
                f"cohort {self.name!r}: row {row} has split {self.table['split'].iloc[row]!r}; allowed: {SPLITS}"
            )
        per_patient = self.table.groupby("patient_id")["split"].nunique()
        if (per_patient > 1).any():
            pid = per_patient[per_patient > 1].index[0]
            raise CohortError(f"cohort {self.name!r}: patient {pid!r} spans more than one split")
        if self.kspace is not None and (
            self.kspace.ndim != 4 or self.kspace.shape[0] != n or tuple(self.kspace.shape[2:]) != tuple(self.images.shape[2:])
        ):
            raise CohortError(
                f"cohort {self.name!r}: kspace shape {tuple(self.kspace.shape)} must be (N, C, H, W) with N, H, W "
                f"of images {tuple(self.images.shape)}"
            )
        for name, t in (("masks", self.masks), ("roi_masks", self.roi_masks), ("lesion_masks", self.lesion_masks),
                        ("concentration", self.concentration)):
            if t is not None and tuple(t.shape) != tuple(self.images.shape):
                raise CohortError(
                    f"cohort {self.name!r}: {name} shape {tuple(t.shape)} differs from images {tuple(self.images.shape)}"
                )

    # ------------------------------------------------------------------ views
    @property
    def tasks(self) -> list[str]:
        """Diagnostic tasks this cohort supports: ``classification`` and/or ``segmentation``."""
        out = []
        if self.labels:
            out.append("classification")
        if self.masks is not None:
            out.append("segmentation")
        return out

    @property
    def size(self) -> int:
        """Image side length (H)."""
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def indices(self, split: str) -> np.ndarray:
        """Row indices of the studies in ``split``."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return np.flatnonzero(self.table["split"].to_numpy() == split)

    def subset(self, idx: np.ndarray | list[int]) -> Cohort:
        """A new cohort with the studies at ``idx`` (row positions)."""
        idx = np.asarray(idx, dtype=np.int64)
        ti = torch.as_tensor(idx)

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[ti]

        return Cohort(
            name=self.name,
            modality=self.modality,
            images=self.images[ti],
            table=self.table.iloc[idx].reset_index(drop=True),
            labels=list(self.labels),
            group_attributes=list(self.group_attributes),
            masks=pick(self.masks),
            roi_masks=pick(self.roi_masks),
            lesion_masks=pick(self.lesion_masks),
            kspace=pick(self.kspace),
            data_card=self.data_card,
            meta=dict(self.meta),
            regression=list(self.regression),
            concentration=pick(self.concentration),
        )

    def split(self, split: str) -> Cohort:
        """The studies of one split."""
        return self.subset(self.indices(split))

    def regression_targets(self) -> np.ndarray:
        """Continuous targets (phenotypes) as float (N, R) in the order of ``regression``, NaN where missing."""
        if not self.regression:
            return np.zeros((len(self), 0), dtype=np.float32)
        return self.table[self.regression].to_numpy(dtype=np.float32)

    def targets(self) -> np.ndarray:
        """Classification targets as float (N, L), NaN where missing."""
        if not self.labels:
            return np.zeros((len(self), 0), dtype=np.float32)
        return self.table[self.labels].to_numpy(dtype=np.float32)

    # ------------------------------------------------------------------ storage
    def save(self, directory: str | Path, *, shard_studies: int = DEFAULT_SHARD_STUDIES) -> None:
        """Write the cohort as :meth:`load` reads it: per-study arrays in ``arrays.zarr`` (shards of
        ``shard_studies`` studies), the table (Parquet), metadata (JSON) and data card (Markdown)."""
        write_stream(self.as_stream(), directory, shard_studies=shard_studies)

    def as_stream(self) -> CohortStream:
        """This cohort as a :class:`CohortStream` (slices of its arrays; the same fields)."""
        def batches(chunk: int) -> Iterator[dict[str, torch.Tensor | None]]:
            for start in range(0, len(self), chunk):
                sl = slice(start, start + chunk)
                yield {name: _opt(getattr(self, name), sl) for name in COHORT_ARRAY_DTYPES}

        info = {"name": self.name, "modality": self.modality, "table": self.table, "labels": self.labels,
                "group_attributes": self.group_attributes, "data_card": self.data_card, "meta": self.meta,
                "regression": self.regression}
        return CohortStream(len(self), batches, lambda: info)

    @classmethod
    def load(cls, directory: str | Path) -> Cohort:
        """Read a cohort written by :meth:`save` or :class:`CohortWriter`.

        The per-study arrays stay on disk (:class:`~reconaudit.arrays.StudyArray`); the table and
        metadata are read.  A cohort saved by an earlier version (``tensors.safetensors``) is read
        into memory.
        """
        d = Path(directory)
        try:
            meta = json.loads((d / "cohort.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError) as e:
            raise CohortError(f"{d / 'cohort.json'}: not a readable cohort ({e})") from e
        if (d / "tensors.safetensors").exists():  # written before the study store
            t: dict = load_file(str(d / "tensors.safetensors"))
            if "kspace_real" in t:
                t["kspace"] = torch.complex(t.pop("kspace_real"), t.pop("kspace_imag"))
            for k in ("roi_masks", "lesion_masks"):
                if k in t:
                    t[k] = t[k].bool()
        else:
            t = open_arrays(d / ARRAYS)
            if "images" not in t:
                raise CohortError(f"{d / ARRAYS}: the cohort has no images array")
        return cls(
            name=meta["name"],
            modality=meta["modality"],
            images=t["images"],
            table=pd.read_parquet(d / "table.parquet"),
            labels=list(meta["labels"]),
            group_attributes=list(meta["group_attributes"]),
            masks=t.get("masks"),
            roi_masks=t.get("roi_masks"),
            lesion_masks=t.get("lesion_masks"),
            kspace=t.get("kspace"),
            data_card=(d / "data_card.md").read_text(),
            meta=meta.get("meta", {}),
            regression=list(meta.get("regression", [])),
            concentration=t.get("concentration"),
        )


#: The directory of a stored cohort's per-study arrays (zarr v3).
ARRAYS = "arrays.zarr"
#: The dtype each per-study array of a cohort is stored in (the precision it needs).
COHORT_ARRAY_DTYPES = {"images": torch.float32, "masks": torch.uint8, "roi_masks": torch.bool,
                       "lesion_masks": torch.bool, "kspace": torch.complex64, "concentration": torch.float32}


def _opt(t: torch.Tensor | None, sl: slice) -> torch.Tensor | None:
    return None if t is None else t[sl]


class CohortWriter:
    """Writes a cohort to ``directory`` shard by shard, never holding it whole.

    ``append(images=..., masks=..., roi_masks=..., lesion_masks=..., kspace=...)`` adds the next
    studies (any batch size; give the same arrays every time, ``None`` for absent ones); each batch
    is checked (shape, dtype, images in [0, 1]) and converted to the dtype of
    :data:`COHORT_ARRAY_DTYPES`.  ``finish(...)`` writes the table and metadata, closes the arrays
    and checks the result by reading it back with :meth:`Cohort.load` (every check of
    :meth:`Cohort.validate` except the value range, which the batches had).  Generators and loaders
    use it to write cohorts larger than memory.
    """

    def __init__(self, directory: str | Path, n: int, shard_studies: int = DEFAULT_SHARD_STUDIES) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.n = int(n)
        self.shard = int(shard_studies)
        self._arrays = ArrayWriter(self.directory / ARRAYS, self.n, self.shard)
        self._seen = 0

    def append(self, **batches: torch.Tensor | None) -> None:
        """Add the next studies; keys are the array names of :data:`COHORT_ARRAY_DTYPES`."""
        unknown = set(batches) - set(COHORT_ARRAY_DTYPES)
        if unknown:
            raise CohortError(f"{self.directory}: unknown cohort arrays {sorted(unknown)}; "
                              f"allowed: {sorted(COHORT_ARRAY_DTYPES)}")
        images = batches.get("images")
        if images is None or images.ndim != 4 or images.shape[1] != 1:
            raise CohortError(f"{self.directory}: images must be (B, 1, H, W), got "
                              f"{None if images is None else tuple(images.shape)}")
        if images.dtype != torch.float32:
            raise CohortError(f"{self.directory}: images must be float32, got {images.dtype}")
        if len(images) and (float(images.min()) < 0.0 or float(images.max()) > 1.0):
            raise CohortError(f"{self.directory}: images of studies {self._seen}..{self._seen + len(images) - 1} "
                              f"must lie in [0, 1]")
        for name, t in batches.items():
            if t is None:
                continue
            if t.shape[0] != images.shape[0]:
                raise CohortError(f"{self.directory}: {name} has {t.shape[0]} studies in a batch of "
                                  f"{images.shape[0]} images")
            self._arrays.append(name, t.to(COHORT_ARRAY_DTYPES[name]))
        self._seen += int(images.shape[0])

    def finish(self, *, name: str, modality: str, table: pd.DataFrame, labels: list[str],
               group_attributes: list[str], data_card: str = "", meta: dict | None = None,
               regression: list[str] | None = None) -> None:
        """Write the table, metadata and data card; close and check the arrays."""
        if self._seen != self.n:
            raise CohortError(f"{self.directory}: {self._seen} studies were appended, {self.n} expected")
        self._arrays.close()
        table.to_parquet(self.directory / "table.parquet", index=False)
        info = {"name": name, "modality": modality, "labels": list(labels),
                "group_attributes": list(group_attributes), "meta": meta or {}}
        if regression:
            info["regression"] = list(regression)
        (self.directory / "cohort.json").write_text(json.dumps(info, indent=2, default=str))
        (self.directory / "data_card.md").write_text(data_card)
        Cohort.load(self.directory)  # validates shapes, table and splits


def assign_splits_by_patient(
    patient_ids: np.ndarray | list[str],
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
) -> np.ndarray:
    """Assign train/val/test by patient so that no patient spans two splits.

    Patients are shuffled with ``numpy.random.default_rng(seed)`` and cut at the cumulative
    ``fractions`` of the number of patients.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    pids = np.asarray(patient_ids).astype(str)
    uniq = np.unique(pids)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    n_train = int(round(fractions[0] * len(uniq)))
    n_val = int(round(fractions[1] * len(uniq)))
    split_of = np.empty(len(uniq), dtype=object)
    split_of[order[:n_train]] = "train"
    split_of[order[n_train : n_train + n_val]] = "val"
    split_of[order[n_train + n_val :]] = "test"
    lookup = dict(zip(uniq, split_of, strict=True))
    return np.array([lookup[p] for p in pids], dtype=object)


@dataclass
class CohortStream:
    """A cohort produced batch by batch, so it can be written without ever being held whole.

    Attributes
    ----------
    n:
        The number of studies :attr:`batches` yields in all.
    batches:
        ``batches(chunk)`` yields dicts of the next studies' arrays (keys of
        :data:`COHORT_ARRAY_DTYPES`: ``images`` always, ``masks``, ``roi_masks``, ``lesion_masks``,
        ``kspace``, ``concentration`` when the cohort has them), at most ``chunk`` studies each, in
        table order.  Called once.
    finish:
        Called once, after every batch: the :class:`Cohort` fields other than the arrays
        (``name``, ``modality``, ``table``, ``labels``, ``group_attributes`` and optionally
        ``data_card``, ``meta``, ``regression``), so a table or data card may use what the batches
        decoded (e.g. mask fractions).

    :func:`collect_stream` assembles it into an in-memory :class:`Cohort` and
    :func:`write_stream` into a :class:`CohortWriter`: both see the same batches, so a loaded and a
    written cohort hold the same bits.
    """

    n: int
    batches: Callable[[int], Iterator[dict[str, torch.Tensor | None]]]
    finish: Callable[[], dict]


def collect_stream(stream: CohortStream, chunk: int = 256) -> Cohort:
    """The in-memory :class:`Cohort` of ``stream`` (each array allocated once and filled batch by batch)."""
    arrays: dict[str, torch.Tensor | None] = {}
    seen = 0
    for batch in stream.batches(max(1, int(chunk))):
        b = int(batch["images"].shape[0])
        for name, t in batch.items():
            if t is None:
                arrays.setdefault(name, None)
                continue
            if name not in arrays or arrays[name] is None:
                arrays[name] = torch.empty((stream.n, *t.shape[1:]), dtype=t.dtype)
            arrays[name][seen : seen + b] = t
        seen += b
    if seen != stream.n:
        raise CohortError(f"the cohort stream yielded {seen} studies, {stream.n} expected")
    info = stream.finish()
    if "images" not in arrays:
        arrays["images"] = torch.zeros((0, 1, 1, 1), dtype=torch.float32)
    return Cohort(**info, **arrays)


def write_stream(stream: CohortStream, directory: str | Path, *, shard_studies: int = DEFAULT_SHARD_STUDIES,
                 chunk: int = 256) -> None:
    """Write ``stream`` to ``directory`` with a :class:`CohortWriter` (at most one shard and one batch held)."""
    writer = CohortWriter(directory, stream.n, shard_studies)
    for batch in stream.batches(max(1, min(int(shard_studies), int(chunk)))):
        writer.append(**batch)
    writer.finish(**stream.finish())


def _defines(cls: type, method: str) -> bool:
    """Whether ``cls`` overrides the :class:`CohortBuilder` classmethod ``method``."""
    return getattr(cls, method).__func__ is not getattr(CohortBuilder, method).__func__


class CohortBuilder(ABC):
    """A cohort the engine can build (synthetic) or load (a real layout), declared at class level.

    The engine validates the config's ``params`` with ``Params`` and calls :meth:`write` (the
    ``cohort`` step).  A subclass defines :meth:`stream` (the studies batch by batch: :meth:`build`
    and :meth:`write` follow, and the cohort is never held whole) or, for a cohort that is only
    ever small, :meth:`build`; defining neither is a ``TypeError`` at class creation.  ``tasks`` bounds the tasks a synthetic cohort's config may ask for and is the
    default task list of any cohort; ``modality``, ``groups`` and ``description`` are shown by
    ``reconaudit cohorts``.  Register a subclass with one line in :data:`reconaudit.cohorts.COHORTS`.

    Attributes
    ----------
    name:
        The config name (``cohorts[i].name``).
    kind:
        ``"synthetic"`` (generated) or ``"loader"`` (reads a dataset layout).
    modality:
        ``"xray"``, ``"mri"`` (or ``"xray|mri"`` for a loader of either).
    tasks:
        The tasks it supports, e.g. ``("classification",)``.
    groups:
        Its group attributes, in words (``"sex, age_band, site"``).
    description:
        One line for ``reconaudit cohorts``.
    Params:
        The pydantic model of its ``params`` (``extra="forbid"``).  A ``seed`` field, when present,
        is filled from the config's ``data_seed``.
    """

    name: ClassVar[str]
    kind: ClassVar[str] = "synthetic"
    modality: ClassVar[str]
    tasks: ClassVar[tuple[str, ...]]
    groups: ClassVar[str]
    description: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]]

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if not (_defines(cls, "stream") or _defines(cls, "build")):
            raise TypeError(f"{cls.__name__} must define stream() (studies batch by batch) or build()")

    @classmethod
    def stream(cls, params: BaseModel) -> CohortStream:
        """The cohort from validated ``params`` (an instance of ``Params``), batch by batch.

        Define this (or, for a cohort that is only ever small, :meth:`build`): :meth:`build` and
        :meth:`write` then both follow from it, and the ``cohort`` step never holds the cohort whole.
        """
        raise NotImplementedError(f"{cls.__name__} defines build(), not stream()")

    @classmethod
    def build(cls, params: BaseModel) -> Cohort:
        """Build or load the cohort from validated ``params`` in memory (default: :func:`collect_stream`)."""
        return collect_stream(cls.stream(params))

    @classmethod
    def write(cls, params: BaseModel, directory: str | Path, *, shard_studies: int = DEFAULT_SHARD_STUDIES) -> None:
        """Write the cohort to ``directory`` (what the ``cohort`` step stores; :meth:`Cohort.load` reads it).

        With :meth:`stream`, batch by batch through a :class:`CohortWriter` (:func:`write_stream`);
        a builder defining only :meth:`build` is built in memory and saved.
        """
        if not _defines(cls, "stream"):
            cls.build(params).save(directory, shard_studies=shard_studies)
        else:
            write_stream(cls.stream(params), directory, shard_studies=shard_studies)
