"""Assemble the records table (one row per evaluated test study per cell) and the run metadata."""

from __future__ import annotations

import io
import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from reconaudit.engine.plan import Plan
from reconaudit.engine.store import ArtifactStore, atomic_write_bytes, atomic_write_text, file_digest
from reconaudit.schema import COLUMN_PREFIXES, RECORD_KEYS

log = logging.getLogger(__name__)

KEY_COLUMNS = list(RECORD_KEYS)


def _order_columns(df: pd.DataFrame) -> pd.DataFrame:
    first = [c for c in KEY_COLUMNS if c in df.columns]
    rest = [c for c in df.columns if c not in first]
    by_prefix = [c for p in COLUMN_PREFIXES for c in rest if c.startswith(p)]
    other = [c for c in rest if c not in by_prefix]
    return df[first + by_prefix + other]


BULK_PREFIXES: tuple[str, ...] = ("feature:", "clean_feature:", "sample_score:")
"""Record columns that come many to a study (penultimate features, per-sample scores): read only by
the analyses that use them (the shortcut probe, the generative section), never with a whole cell."""


class RecordsError(ValueError):
    """The records file or table cannot be read as docs/records.md describes (the message names it)."""


def _unified_type(name: str, types: list, missing: bool):
    """The Arrow type of column ``name`` in the records of every cell: what ``pandas.concat`` of the
    cells' tables followed by ``to_parquet`` stores (an integer column that some cell lacks becomes
    float64, as pandas fills it with NaN; a cell whose column is all null adopts the others' type)."""
    import pyarrow as pa

    real = [t for t in types if not pa.types.is_null(t)]
    if not real:
        return pa.null()
    if all(t == real[0] for t in real):
        t = real[0]
        if (missing or len(real) < len(types)) and pa.types.is_integer(t):
            return pa.float64()
        return t
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in real):
        return pa.float64()
    if all(pa.types.is_string(t) or pa.types.is_large_string(t) for t in real):
        return pa.string()
    raise RecordsError(f"records: column {name!r} has different types in different cells ({sorted(map(str, set(real)))}); "
                       "the cells cannot be put in one table")


def collect_records(plan: Plan, store: ArtifactStore, run_dir: Path, *,
                    row_group_rows: int = 65536) -> tuple[Records, list[dict]]:
    """Write ``run_dir/records.parquet`` from the records of every finished cell, one cell at a time;
    copy example studies into ``run_dir/examples``.

    The cells are written in plan order, each as row groups of at most ``row_group_rows`` rows that
    hold that cell alone, with the columns of every cell (docs/records.md order: keys, per-name
    columns by prefix, the rest); a column a cell lacks is null there.  The table read back equals
    ``pandas.concat`` of the cells' tables (the shape of earlier versions), but memory is one cell.

    Returns the records (a lazy :class:`Records` over the written file) and the cell list (with
    ``examples`` paths) for ``run.json``.  An example file in ``run_dir`` that differs from the
    store's checksum is copied again.  Cells whose final step did not finish are listed with
    ``status = "missing"``.
    """
    files = []
    cells = []
    ex_dir = run_dir / "examples"
    ex_dir.mkdir(parents=True, exist_ok=True)
    for cell in plan.cells:
        kind, key = cell.final_step.split("/", 1)
        entry = {**cell.as_dict(), "examples": None, "status": "done"}
        if not store.exists(kind, key):
            entry["status"] = "missing"
            cells.append(entry)
            continue
        d = store.path(kind, key)
        files.append(d / "records.parquet")
        if (d / "examples.npz").exists():
            dest = ex_dir / f"{cell.cell_id}.npz"
            if not dest.exists() or file_digest(dest) != store.checksum(kind, key, "examples.npz"):
                if dest.exists():
                    log.warning("%s differs from the store's copy (damaged or edited): copied again", dest)
                tmp = dest.with_suffix(".npz.tmp")
                shutil.copyfile(d / "examples.npz", tmp)
                tmp.replace(dest)
            entry["examples"] = f"examples/{cell.cell_id}.npz"
            entry["examples_blake2b"] = store.checksum(kind, key, "examples.npz")
        cells.append(entry)
    path = merge_cell_records(files, run_dir / "records.parquet", row_group_rows=row_group_rows)
    return Records(path), cells


def merge_cell_records(files: list[Path], path: Path, *, row_group_rows: int = 65536) -> Path:
    """Write the cells' records files ``files`` into one Parquet file ``path`` (atomically), one
    cell at a time, each cell as row groups of at most ``row_group_rows`` rows holding that cell alone.

    The columns are every cell's, in docs/records.md order; a column a cell lacks is null there, an
    integer column some cell lacks becomes float64: the table read back equals
    ``pandas.concat([pandas.read_parquet(f) for f in files], ignore_index=True)`` (columns ordered),
    while memory is one cell.  Columns whose types cannot be put together are a
    :class:`RecordsError` naming the column.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not files:
        write_records(pd.DataFrame(columns=KEY_COLUMNS), path.parent)
        return path
    schemas = [pq.read_schema(f) for f in files]
    names: list[str] = []
    for sch in schemas:
        names += [n for n in sch.names if n not in set(names)]
    names = list(_order_columns(pd.DataFrame(columns=names)).columns)
    fields = []
    for n in names:
        types = [sch.field(n).type for sch in schemas if n in sch.names]
        fields.append(pa.field(n, _unified_type(n, types, missing=len(types) < len(schemas))))
    schema = pa.schema(fields)
    tmp = path.with_suffix(".parquet.tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for f in files:
            t = pq.read_table(f)
            cols = [t.column(n).cast(fd.type) if n in t.column_names else pa.nulls(len(t), fd.type)
                    for n, fd in zip(names, schema)]
            writer.write_table(pa.Table.from_arrays(cols, schema=schema), row_group_size=row_group_rows)
            del t, cols
    tmp.replace(path)
    return path


class Records:
    """The records of a run (docs/records.md), read a cell at a time and only the columns asked for.

    Built on ``records.parquet`` (a path) or on a records table already in memory (a DataFrame, e.g.
    in tests or an API user's own table); both give the same tables.  On a file nothing is read up
    front but the ``cell_id`` column, a row group at a time, to know which row groups hold which
    cell; :meth:`cell` then reads only those row groups and the columns asked for, so the memory of
    an analysis is one cell, whatever the number of record rows.  A cell's rows keep the file's
    order and their row numbers in the whole table as index, as in ``records.groupby("cell_id")``.

    Parameters
    ----------
    source : path or DataFrame
        ``records.parquet``, or the records table.
    """

    def __init__(self, source: str | Path | pd.DataFrame) -> None:
        self._df: pd.DataFrame | None = None
        self._pf = None
        if isinstance(source, pd.DataFrame):
            self._df = source
            self.path = None
            self.columns = [str(c) for c in source.columns]
            self.n_rows = len(source)
        else:
            import pyarrow.parquet as pq

            self.path = Path(source)
            if not self.path.is_file():
                raise FileNotFoundError(f"{self.path}: no such records file")
            try:
                self._pf = pq.ParquetFile(self.path)
            except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
                raise RecordsError(f"{self.path}: not a readable Parquet file ({exc})") from exc
            self.columns = list(self._pf.schema_arrow.names)
            self.n_rows = self._pf.metadata.num_rows
        self._index: dict[str, list[int]] | None = None
        self._mixed: set[int] = set()

    @classmethod
    def of(cls, records: Records | str | Path | pd.DataFrame) -> Records:
        """``records`` itself when it already is :class:`Records`, else ``Records(records)``."""
        return records if isinstance(records, Records) else cls(records)

    @property
    def empty(self) -> bool:
        """True when there is no record row."""
        return self.n_rows == 0

    def __contains__(self, column: str) -> bool:
        return column in self.columns

    def with_prefix(self, *prefixes: str) -> list[str]:
        """The columns whose name starts with one of ``prefixes``, in table order."""
        return [c for c in self.columns if c.startswith(prefixes)]

    # ---------------------------------------------------------------------------------------- index
    def _build_index(self) -> dict[str, list[int]]:
        if self._index is not None:
            return self._index
        if "cell_id" not in self.columns:
            raise RecordsError(f"{self.path or 'records'}: has no cell_id column; the records table must follow "
                               "docs/records.md")
        index: dict[str, list[int]] = {}
        if self._df is not None:
            self._groups = {str(k): v for k, v in self._df.groupby("cell_id", sort=True).indices.items()}
            self._index = {k: [] for k in self._groups}
            return self._index
        import pyarrow.compute as pc

        self._starts = []
        start = 0
        j = self.columns.index("cell_id")
        for i in range(self._pf.num_row_groups):
            md = self._pf.metadata.row_group(i)
            self._starts.append(start)
            start += md.num_rows
            if md.num_rows == 0:
                continue
            st = md.column(j).statistics
            if st is not None and st.has_min_max and st.null_count == 0 and st.min == st.max:
                ids = [st.min.decode() if isinstance(st.min, bytes) else str(st.min)]
            else:
                col = self._pf.read_row_group(i, columns=["cell_id"]).column(0)
                if col.null_count:
                    raise RecordsError(f"{self.path}: row group {i} has rows without a cell_id")
                ids = [str(v) for v in pc.unique(col).to_pylist()]
                if len(ids) > 1:
                    self._mixed.add(i)
            for cid in ids:
                index.setdefault(cid, []).append(i)
        self._index = dict(sorted(index.items()))
        return self._index

    @property
    def cell_ids(self) -> list[str]:
        """The cells, sorted (as ``groupby("cell_id", sort=True)``)."""
        return list(self._build_index())

    def _read_groups(self, groups: list[int], columns: list[str], cell_id: str | None) -> pd.DataFrame:
        import pyarrow as pa
        import pyarrow.compute as pc

        want = list(dict.fromkeys([*columns, *(["cell_id"] if cell_id is not None else [])]))
        parts, rows = [], []
        for i in groups:
            t = self._pf.read_row_group(i, columns=want)
            pos = np.arange(self._starts[i], self._starts[i] + len(t))
            if cell_id is not None and i in self._mixed:
                keep = pc.equal(t.column("cell_id"), pa.scalar(cell_id)).to_numpy(zero_copy_only=False)
                t, pos = t.filter(pa.array(keep)), pos[keep]
            parts.append(t)
            rows.append(pos)
        table = pa.concat_tables(parts) if parts else self._pf.schema_arrow.empty_table().select(want)
        df = table.to_pandas()
        for c in self._nullable_columns().intersection(df.columns):
            # the dtype the whole table gives (null somewhere: integers as float64, booleans as objects)
            if df[c].dtype == bool:
                df[c] = df[c].astype(object)
            elif df[c].dtype.kind in "iu":
                df[c] = df[c].astype(np.float64)
        df.index = pd.Index(np.concatenate(rows) if rows else np.zeros(0, np.int64))
        return df[columns] if list(df.columns) != columns else df

    def _nullable_columns(self) -> set[str]:
        """Integer and boolean columns with a null in some row group (pandas types them by the whole file)."""
        if getattr(self, "_nullable", None) is not None:
            return self._nullable
        import pyarrow as pa

        out = set()
        md = self._pf.metadata
        for j, f in enumerate(self._pf.schema_arrow):
            if not (pa.types.is_integer(f.type) or pa.types.is_boolean(f.type)):
                continue
            for i in range(md.num_row_groups):
                st = md.row_group(i).column(j).statistics
                nulls = st.null_count if st is not None and st.has_null_count else \
                    self._pf.read_row_group(i, columns=[f.name]).column(0).null_count
                if nulls:
                    out.add(f.name)
                    break
        self._nullable = out
        return out

    def _columns(self, columns: list[str] | None, exclude: tuple[str, ...]) -> list[str]:
        if columns is None:
            cols = [c for c in self.columns if not (exclude and c.startswith(exclude))]
        else:
            missing = [c for c in columns if c not in self.columns]
            if missing:
                raise KeyError(f"{self.path or 'records'}: no column {missing}")
            cols = list(columns)
        return cols

    def cell(self, cell_id: str, columns: list[str] | None = None, *, exclude: tuple[str, ...] = ()) -> pd.DataFrame:
        """The rows of ``cell_id`` (file order, index = row number in the whole table).

        ``columns``: only these (default: every column but those starting with ``exclude``).
        """
        index = self._build_index()
        if cell_id not in index:
            raise KeyError(f"{self.path or 'records'}: no cell {cell_id!r}")
        cols = self._columns(columns, exclude)
        if self._df is not None:
            return self._df.iloc[self._groups[cell_id]][cols]
        return self._read_groups(index[cell_id], cols, cell_id)

    def cells(self, columns: list[str] | None = None, *, exclude: tuple[str, ...] = ()):
        """``(cell_id, rows)`` of every cell in :attr:`cell_ids` order (see :meth:`cell`)."""
        for cid in self.cell_ids:
            yield cid, self.cell(cid, columns, exclude=exclude)

    def select(self, columns: list[str], where: dict[str, object] | None = None) -> pd.DataFrame:
        """``columns`` of every row (or of the rows where each column of ``where`` equals its value),
        read a row group at a time: memory is the rows selected times the columns asked for."""
        cols = self._columns(columns, ())
        where = where or {}
        if self._df is not None:
            keep = pd.Series(True, index=self._df.index)
            for c, v in where.items():
                keep &= self._df[c] == v
            return self._df.loc[keep, cols]
        parts = []
        need = list(dict.fromkeys([*cols, *where]))
        self._build_index()  # the row groups' first row numbers
        for i in range(self._pf.num_row_groups):
            df = self._read_groups([i], need, None)
            for c, v in where.items():
                df = df[df[c] == v]
            parts.append(df[cols])
        return pd.concat(parts) if parts else pd.DataFrame(columns=cols)

    def scan(self, columns: list[str]):
        """``columns`` of every row, one row group after another (a DataFrame each; the whole table
        at once for an in-memory source): for aggregates over the run in bounded memory."""
        cols = self._columns(columns, ())
        if self._df is not None:
            yield self._df[cols]
            return
        self._build_index()
        for i in range(self._pf.num_row_groups):
            yield self._read_groups([i], cols, None)

    def first_rows(self, columns: list[str]) -> pd.DataFrame:
        """One row per cell (its first), ``columns`` only, in :attr:`cell_ids` order: the cells' keys."""
        index = self._build_index()
        if self._df is not None:
            return self._df.iloc[[self._groups[c][0] for c in index]][list(columns)]
        out = []
        for cid, groups in index.items():
            df = self._read_groups(groups[:1], list(columns), cid)
            out.append(df.iloc[:1])
        return pd.concat(out) if out else pd.DataFrame(columns=list(columns))

    def frame(self) -> pd.DataFrame:
        """The whole table in memory (small runs; the analysis never needs it)."""
        if self._df is not None:
            return self._df
        return pd.read_parquet(self.path)


def check_examples(run_dir: Path, meta: dict, store: ArtifactStore | None = None) -> int:
    """Check every example file of ``run.json`` against its checksum before a report reads it.

    A file that differs is copied again from ``store`` when the cell's artifact is there, otherwise
    moved aside to ``*.npz.damaged`` (the report then leaves that cell's examples out, with a
    warning); returns how many files differed.
    """
    n = 0
    for c in meta.get("cells", []):
        rel, want = c.get("examples"), c.get("examples_blake2b")
        f = Path(run_dir) / rel if rel else None
        if f is None or want is None or not f.is_file() or file_digest(f) == want:
            continue
        n += 1
        kind, key = str(c.get("final_step", "/")).split("/", 1)
        if store is not None and store.verified(kind, key) and store.checksum(kind, key, "examples.npz") == want:
            shutil.copyfile(store.path(kind, key) / "examples.npz", f.with_suffix(".npz.tmp"))
            f.with_suffix(".npz.tmp").replace(f)
            log.warning("%s differs from its checksum in run.json: copied again from the store", f)
        else:
            f.replace(f.with_suffix(".npz.damaged"))
            log.warning("%s differs from its checksum in run.json and the store has no copy: moved to %s; "
                        "the report leaves its examples out (run the audit again to restore them)", f,
                        f.with_suffix(".npz.damaged"))
    return n


def write_records(records: pd.DataFrame, run_dir: Path) -> Path:
    """Write ``records.parquet`` atomically."""
    buf = io.BytesIO()
    records.to_parquet(buf, index=False)
    path = run_dir / "records.parquet"
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_run_meta(meta: dict, run_dir: Path) -> Path:
    """Write ``run.json`` atomically."""
    path = run_dir / "run.json"
    atomic_write_text(path, json.dumps(meta, indent=2, default=str, allow_nan=True))
    return path


def plain_summary(records: Records | pd.DataFrame, meta: dict) -> pd.DataFrame:
    """One row per cell: mean PSNR, mean AUROC (clean and on the input), mean Dice, and the
    equalized-odds difference of the first group attribute at the fixed thresholds.

    This is the engine's own minimal summary; the report room adds intervals and tests.  It reads
    one cell at a time (``records``: :class:`Records` or the table).
    """
    from reconaudit.metrics import auroc, equalized_odds_difference

    rows = []
    keys = ["cohort", "degradation", "level", "reconstructor", "arm", "mitigation", "mitigation_strength", "seed"]
    rec = Records.of(records)
    order = rec.first_rows(["cell_id"]).sort_index()["cell_id"]  # the cells in file order
    feature = ("feature:", "clean_feature:", "sample_score:", "region_", "gen_")
    for cell_id in order:
        g = rec.cell(cell_id, exclude=feature)
        cinfo = meta["cohorts"][g["cohort"].iloc[0]]
        row = {k: g[k].iloc[0] for k in keys}
        row["cell_id"] = cell_id
        row["n_studies"] = len(g)
        row["psnr"] = float(g["psnr"].mean()) if g["psnr"].notna().any() else np.nan
        row["input_psnr"] = float(g["input_psnr"].mean())
        labels = [lb for lb in cinfo["labels"] if f"score:{lb}" in g and g[f"score:{lb}"].notna().any()]
        if labels:
            au, au_clean, eodd = [], [], []
            attr = cinfo["group_attributes"][0] if cinfo["group_attributes"] else None
            for lb in labels:
                y = g[f"target:{lb}"].to_numpy()
                ok = ~np.isnan(y)
                if ok.sum() == 0 or len(np.unique(y[ok])) < 2:
                    continue
                au.append(auroc(y[ok], g[f"score:{lb}"].to_numpy()[ok]))
                au_clean.append(auroc(y[ok], g[f"clean_score:{lb}"].to_numpy()[ok]))
                if attr is not None:
                    pred = (g[f"score:{lb}"].to_numpy()[ok] >= g[f"threshold:{lb}"].to_numpy()[ok]).astype(int)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        eodd.append(
                            equalized_odds_difference(y[ok].astype(int), pred,
                                                      sensitive_features=g[f"group:{attr}"].to_numpy()[ok])
                        )
            row["auroc"] = float(np.nanmean(au)) if au else np.nan
            row["clean_auroc"] = float(np.nanmean(au_clean)) if au_clean else np.nan
            row["delta_auroc"] = row["auroc"] - row["clean_auroc"]
            if attr is not None:
                row[f"eodd:{attr}"] = float(np.nanmean(eodd)) if eodd and not np.all(np.isnan(eodd)) else np.nan
        if "dice" in g:
            row["dice"] = float(g["dice"].mean())
            row["clean_dice"] = float(g["clean_dice"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def write_plain_summary(records: Records | pd.DataFrame, meta: dict, run_dir: Path) -> list[Path]:
    """``summary.csv`` and ``summary.md`` in ``run_dir``."""
    df = plain_summary(records, meta)
    csv = run_dir / "summary.csv"
    md = run_dir / "summary.md"
    atomic_write_text(csv, df.to_csv(index=False))
    atomic_write_text(md, _markdown(df))
    return [csv, md]


def _markdown(df: pd.DataFrame) -> str:
    if df.empty:
        return "(no finished cells)\n"
    cols = [c for c in df.columns if c != "cell_id"]

    from reconaudit.report.markdown import markdown_text

    def fmt(v: object) -> str:
        if isinstance(v, float | np.floating):
            return "n/a" if np.isnan(v) else f"{v:.4g}"
        return markdown_text(v)

    lines = ["| " + " | ".join(markdown_text(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(fmt(r[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"
