"""CheXpert as distributed: ``train.csv`` / ``valid.csv`` next to ``train/patientNNNNN/studyN/viewN_*.jpg``.

Reference: Irvin et al., "CheXpert: A Large Chest Radiograph Dataset with Uncertainty Labels and
Expert Comparison", AAAI 2019 (uncertainty policies U-Zeros, U-Ones, U-Ignore).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import ConfigDict, Field, field_validator

from ..progress import track
from . import _io
from .base import Cohort, CohortBuilder, CohortError, CohortStream, collect_stream
from .groups import GroupOptions, GroupReport, band_ages, group_summary, normalise_groups

logger = logging.getLogger(__name__)

CHEXPERT_FINDINGS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
_PATH_RE = re.compile(r"(?P<patient>patient\d+)/(?P<study>study\d+)/(?P<view>[^/]+?)(?:\.[A-Za-z0-9]+)+$")
_PARTITIONS = {"train": "train", "valid": "val", "val": "val", "test": "test"}
WHAT = "chexpert"


def snake_case(name: str) -> str:
    """Label column name → label name: lower case, runs of non-alphanumerics → ``_``.

    ``"Pleural Effusion"`` → ``"pleural_effusion"``, ``"No Finding"`` → ``"no_finding"``.
    """
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


class ChexpertParams(GroupOptions):
    """Options of :func:`load_chexpert` (see ``docs/loaders.md``)."""

    model_config = ConfigDict(extra="forbid")

    root: Path
    csv: str | list[str] = "train.csv"
    size: int = Field(64, ge=4)
    labels: list[str] = Field(default_factory=lambda: list(CHEXPERT_FINDINGS))
    uncertain_policy: Literal["zeros", "ones", "ignore"] = "zeros"
    blank_policy: Literal["zeros", "ignore"] = "zeros"
    frontal_only: bool = True
    demographics_csv: str | None = None
    max_studies: int | None = Field(None, ge=1)
    on_missing_image: Literal["error", "drop"] = "error"
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 0
    name: str = "chexpert"

    @field_validator("labels")
    @classmethod
    def _labels_nonempty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("labels: give at least one CheXpert finding column")
        if len({snake_case(x) for x in v}) != len(v):
            raise ValueError(f"labels: two columns map to the same snake_case name: {v}")
        return v


def _resolve(root: Path, rel: str) -> Path | None:
    """A CSV path relative to ``root`` or to ``root.parent`` (CheXpert paths start with the folder name)."""
    for cand in (root / rel, root.parent / rel):
        if cand.is_file():
            return cand
    parts = Path(rel).parts
    if parts and parts[0] == root.name:
        cand = root.joinpath(*parts[1:])
        if cand.is_file():
            return cand
    return None


def _policy_map(values: np.ndarray, uncertain: str, blank: str) -> np.ndarray:
    """Apply U-Zeros / U-Ones / U-Ignore to -1 and zeros / ignore to blanks (NaN)."""
    out = values.copy()
    unc = out == -1
    out[unc] = {"zeros": 0.0, "ones": 1.0, "ignore": np.nan}[uncertain]
    out[np.isnan(values)] = 0.0 if blank == "zeros" else np.nan
    return out


def _read_demographics(path: Path) -> pd.DataFrame:
    df = _io.read_table(path, what=f"{WHAT} demographics")
    _io.require_columns(df, ("PATIENT", "PRIMARY_RACE"), path, what=f"{WHAT} demographics")
    pid = df["PATIENT"].astype("string").str.strip()
    dup = pid.duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise CohortError(f"{WHAT} demographics: {_io.where(path, i)}, column 'PATIENT': "
                          f"patient {pid.iloc[i]!r} appears more than once")
    return pd.DataFrame({"patient_id": pid.to_numpy(dtype=object), "race": df["PRIMARY_RACE"].to_numpy(dtype=object)})


def load_chexpert(params: ChexpertParams | None = None, **overrides) -> Cohort:
    """Load CheXpert (or any CSV in its layout) as a :class:`Cohort`.

    Label values in the CSV are ``1`` (positive), ``0`` (negative), ``-1`` (uncertain) or blank
    (not mentioned).  Uncertain labels follow ``uncertain_policy``: ``"zeros"`` (U-Zeros, -1 → 0),
    ``"ones"`` (U-Ones, -1 → 1) or ``"ignore"`` (U-Ignore, -1 → NaN, excluded from training and
    metrics); blanks follow ``blank_policy`` (``"zeros"``: 0, ``"ignore"``: NaN).  Label names are
    the column names in snake_case (:func:`snake_case`).  Rows whose every label ends up missing,
    and rows whose image cannot be decoded, are dropped and reported in ``meta["dropped"]``.
    :func:`chexpert_stream` gives the same cohort batch by batch (what the ``cohort`` step writes,
    shard by shard).

    Patient and study come from the path (``.../patientNNNNN/studyN/viewN_frontal.jpg``); the
    study id is ``patientNNNNN/studyN/viewN_frontal`` (one row per image).  Splits: when the CSV(s)
    cover several of CheXpert's partitions (``train/``, ``valid/``, ``test/`` in the path) they are
    kept (train → train, valid → val, test → test; without a test partition, valid becomes test and
    val is drawn from train patients); otherwise splits are assigned by patient with ``seed``.

    Parameters
    ----------
    params:
        :class:`ChexpertParams`; keyword ``overrides`` update it (or build it when ``None``).

    Raises
    ------
    CohortError
        Missing CSV or column, bad label value (file, row, column), unparsable path, missing image
        (with ``on_missing_image="error"``), patient in two official partitions.
    """
    return collect_stream(chexpert_stream(_io.merge_params(ChexpertParams, params, overrides)))


def chexpert_stream(params: ChexpertParams) -> CohortStream:
    """:func:`load_chexpert`'s cohort as a :class:`~reconaudit.cohorts.base.CohortStream`.

    The CSV(s) are checked and every selected image is decoded once to find the missing and
    unreadable ones (:func:`reconaudit.cohorts._io.decodes`), keeping nothing; the table, data
    card and metadata follow from the rows kept.  The kept images are then decoded again at most
    :data:`reconaudit.cohorts._io.DECODE_CHUNK` at a time and resized
    (:func:`reconaudit.cohorts._io.resized_chunks`), so written through a
    :class:`~reconaudit.cohorts.base.CohortWriter` at most one shard of resized images and one chunk
    of decoded files are in memory (CheXpert's 224,316 radiographs decoded whole would be ~60 GB).

    Parameters
    ----------
    params:
        Validated :class:`ChexpertParams`.

    Returns
    -------
    CohortStream
        ``n`` kept studies; ``batches(chunk)`` yields ``{"images": (B, 1, size, size)}`` with
        ``B <= min(chunk, DECODE_CHUNK)``, in table order.

    Raises
    ------
    CohortError
        As :func:`load_chexpert` (raised when the stream is made, before any image is kept); from
        ``batches``, a file that decoded when checked but not when loaded (changed or removed
        meanwhile), naming the file and its CSV row.
    """
    p = params
    root = Path(p.root)
    if not root.is_dir():
        raise CohortError(f"{WHAT}: root {str(root)!r} is not a directory; set 'root' to the dataset folder")
    drops = _io.DropReport(source=f"{WHAT} ({root})")
    csvs = [p.csv] if isinstance(p.csv, str) else list(p.csv)
    frames = []
    for c in csvs:
        f = root / c
        df = _io.read_table(f, what=WHAT)
        _io.require_columns(df, ["Path", *p.labels], f, what=WHAT)
        if p.frontal_only:
            _io.require_columns(df, ["Frontal/Lateral"], f, what=f"{WHAT} (frontal_only=True)")
        df = df.assign(_file=str(f), _row=np.arange(len(df)))
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)

    # labels: validate every value before selection, so a bad row is reported wherever it sits
    names = [snake_case(x) for x in p.labels]
    raw = {}
    for col, name in zip(p.labels, names):
        vals = np.full(len(df), np.nan)
        for f, sub in df.groupby("_file", sort=False):
            vals[sub.index] = _io.numeric_column(sub.reset_index(drop=True), col, f, allowed=(1, 0, -1), what=WHAT)
        raw[name] = vals

    # identifiers from the path
    paths = df["Path"].astype("string").str.strip().str.replace("\\", "/", regex=False)
    parsed = paths.str.extract(_PATH_RE)
    bad = parsed["patient"].isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CohortError(
            f"{WHAT}: {_io.where(df['_file'].iloc[i], int(df['_row'].iloc[i]))}, column 'Path': {paths.iloc[i]!r} "
            f"does not follow .../patientNNNNN/studyN/viewN_<view>.<ext>"
        )
    part = paths.str.split("/").map(lambda ps: next((_PARTITIONS[x] for x in ps if x in _PARTITIONS), ""))
    table = pd.DataFrame(
        {
            "study_id": (parsed["patient"] + "/" + parsed["study"] + "/" + parsed["view"]).to_numpy(dtype=object),
            "patient_id": parsed["patient"].to_numpy(dtype=object),
            "exam_id": (parsed["patient"] + "/" + parsed["study"]).to_numpy(dtype=object),
            "path": paths.to_numpy(dtype=object),
            "partition": part.to_numpy(dtype=object),
            "_file": df["_file"].to_numpy(dtype=object),
            "_row": df["_row"].to_numpy(),
        }
    )
    if len(set(table["partition"]) - {""}) > 1:
        _io.check_patient_splits(table["patient_id"].to_numpy(), table["partition"].replace("", "train").to_numpy(),
                                 ", ".join(csvs), what=WHAT)
    dup = table["study_id"].duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero(table["study_id"].to_numpy() == table["study_id"].iloc[i])[0])
        raise CohortError(f"{WHAT}: {_io.where(table['_file'].iloc[i], int(table['_row'].iloc[i]))}, column 'Path': "
                          f"image {paths.iloc[i]!r} repeats study {table['study_id'].iloc[i]!r} of "
                          f"{paths.iloc[first]!r}; each image may be listed once")
    grep = GroupReport()
    table["sex"] = normalise_groups(df["Sex"] if "Sex" in df else [None] * len(df), "sex", p.group_synonyms, grep)
    groups = ["sex"]
    if "Age" in df:
        ages = np.full(len(df), np.nan)
        for f, sub in df.groupby("_file", sort=False):
            ages[sub.index] = _io.numeric_column(sub.reset_index(drop=True), "Age", f, what=WHAT)
        table["age"] = ages  # banded once the cohort's rows are known, so only their impossible ages are reported
        groups.append("age_band")
    for name in names:
        table[name] = _policy_map(raw[name], p.uncertain_policy, p.blank_policy)
    for extra in ("Frontal/Lateral", "AP/PA"):
        if extra in df:
            table[snake_case(extra)] = df[extra].astype("string").fillna("").to_numpy(dtype=object)

    # demographics (race) joined on patient id
    n_no_demo = 0
    if p.demographics_csv is not None:
        demo = _read_demographics(root / p.demographics_csv)
        demo_ids = set(demo["patient_id"])
        race = table["patient_id"].map(dict(zip(demo["patient_id"], demo["race"])))
        table["race"] = normalise_groups(race, "race", p.group_synonyms, grep)
        groups.append("race")

    # selection (not drops): frontal views, then max_studies by patient
    n_csv = len(table)
    keep = np.ones(len(table), dtype=bool)
    if p.frontal_only:
        keep &= df["Frontal/Lateral"].astype("string").str.strip().str.lower().eq("frontal").fillna(False).to_numpy()
    n_frontal = int(keep.sum())
    table = table[keep].reset_index(drop=True)
    if p.max_studies is not None and len(table) > p.max_studies:
        rng = np.random.default_rng(p.seed)
        pats = table["patient_id"].unique()
        order = pats[rng.permutation(len(pats))]
        counts = table["patient_id"].value_counts().reindex(order).to_numpy()
        n_pat = int(np.searchsorted(np.cumsum(counts), p.max_studies)) + 1
        chosen = set(order[:n_pat])
        table = table[table["patient_id"].isin(chosen)].head(p.max_studies).reset_index(drop=True)

    # rows without any label
    label_keep = np.ones(len(table), dtype=bool)
    none = table[names].isna().all(axis=1).to_numpy()
    for i in np.flatnonzero(none):
        drops.add("no label", file=table["_file"].iloc[i], row=int(table["_row"].iloc[i]),
                  detail=f"every label missing under uncertain_policy={p.uncertain_policy!r}, "
                         f"blank_policy={p.blank_policy!r}")
    label_keep &= ~none
    table = table[label_keep].reset_index(drop=True)

    # images: each decoded once to find the unreadable ones (kept: none), decoded again by batches()
    files, ok = [], np.zeros(len(table), dtype=bool)
    for i, rel in enumerate(track(table["path"].tolist(), description=f"{WHAT}: checking images")):
        f = _resolve(root, rel)
        if f is None:
            msg = f"image {rel!r} not found under {str(root)!r} or {str(root.parent)!r}"
            if p.on_missing_image == "error":
                loc = _io.where(table["_file"].iloc[i], int(table["_row"].iloc[i]))
                raise CohortError(f"{WHAT}: {loc}, column 'Path': {msg}; check 'root' "
                                  f"(or set on_missing_image='drop')")
            drops.add("missing image", file=rel, row=int(table["_row"].iloc[i]), detail=msg)
            continue
        ok[i] = _io.decodes(f, drops, row=int(table["_row"].iloc[i]))
        if ok[i]:
            files.append(f)
    table = table[ok].reset_index(drop=True)
    rows_of = list(zip(table["_file"].tolist(), table["_row"].astype(int).tolist()))  # names a file that changes
    if "age" in table:
        locs = [f"{_io.where(f, int(r))}, column 'Age'" for f, r in zip(table["_file"], table["_row"])]
        table["age"], table["age_band"] = band_ages(table["age"].to_numpy(dtype=np.float64), p.age_bands, grep,
                                                    where=locs)

    # splits
    parts = set(table["partition"])
    if len(parts - {""}) > 1:
        split = _io.splits_from_partitions(table["partition"].to_numpy(dtype=object), table["patient_id"].to_numpy(),
                                           p.split_fractions, p.seed, source=", ".join(csvs), what=WHAT)
        split_rule = "CheXpert partitions from the path"
    else:
        split = _io.split_by_patient(table["patient_id"].to_numpy(), p.split_fractions, p.seed)
        split_rule = f"assigned by patient (fractions {tuple(p.split_fractions)}, seed {p.seed})"
    table["split"] = split
    table = table.drop(columns=["_file", "_row"])
    if p.demographics_csv is not None:
        n_no_demo = int((~table["patient_id"].isin(demo_ids)).sum())

    drops.log(logger)
    notes = [
        f"CSV: {', '.join(csvs)}; {n_csv} rows, {n_frontal} after frontal_only={p.frontal_only}",
        f"uncertain_policy={p.uncertain_policy!r} (-1 → {dict(zeros=0, ones=1, ignore='NaN')[p.uncertain_policy]}), "
        f"blank_policy={p.blank_policy!r}",
        f"Splits: {split_rule}",
        f"Images: centre-cropped to a square and resized to {p.size}x{p.size}",
    ]
    if p.demographics_csv is not None:
        notes.append(f"Race joined from {p.demographics_csv}; {n_no_demo} row(s) without a demographics entry "
                     f"are 'unknown'")
    gmeta, gcard = group_summary(table, groups, p, grep, WHAT)
    card = _io.data_card(title=p.name, source=str(root), modality="xray", table=table, labels=names,
                         group_attributes=groups, drops=drops, notes=notes, sections=[gcard])
    meta = {
        "loader": "chexpert",
        "params": p.model_dump(mode="json"),
        "label_columns": dict(zip(names, p.labels)),
        "rows_in_csv": n_csv,
        "rows_after_frontal_only": n_frontal,
        "rows_without_demographics": n_no_demo,
        "split_rule": split_rule,
        "groups": gmeta,
        "dropped": drops.as_meta(),
    }
    info = {"name": p.name, "modality": "xray", "table": table, "labels": names, "group_attributes": groups,
            "data_card": card, "meta": meta}

    def batches(chunk: int):
        for images in _io.resized_chunks(files, p.size, min(chunk, _io.DECODE_CHUNK), what=WHAT,
                                         where=lambda i: _io.where(*rows_of[i]),
                                         description=f"{WHAT}: reading images"):
            yield {"images": images}

    return CohortStream(len(table), batches, lambda: info)


class ChexpertCohort(CohortBuilder):
    """The ``chexpert`` cohort (:func:`load_chexpert`)."""

    name = "chexpert"
    kind = "loader"
    modality = "xray"
    tasks = ("classification",)
    groups = "sex, age_band (+ race)"
    description = "CheXpert CSV layout (14 findings, uncertain-label policy, optional demographics)"
    Params = ChexpertParams

    @classmethod
    def stream(cls, params: ChexpertParams) -> CohortStream:
        """:func:`chexpert_stream`: decoded and written shard by shard."""
        return chexpert_stream(params)

