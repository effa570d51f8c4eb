"""The run's records file: merged cell by cell (equal to pandas.concat of the cells), read a cell at a
time with only the columns asked for (equal to the table's groupby), and analysed from the file with
the same tables as from the table in memory."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from reconaudit.engine.records import Records, RecordsError, _order_columns, merge_cell_records


def _cell(cid: str, n: int, seed: int, **extra) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "cell_id": cid, "cohort": extra.pop("cohort", "c"), "task": "classification", "degradation": "d",
        "level": 1.0, "reconstructor": "r", "arm": "reconstruct", "mitigation": "none",
        "mitigation_strength": 0.0, "seed": 0, "study_id": [f"s{i}" for i in range(n)],
        "patient_id": [f"p{i // 2}" for i in range(n)], "study_index": np.arange(n),
        "group:sex": rng.choice(["F", "M"], n), "psnr": rng.normal(30, 1, n),
    })
    for k, v in extra.items():
        df[k] = v(n, rng) if callable(v) else v
    return df


@pytest.fixture()
def awkward(tmp_path):
    """Three cells whose columns differ: an int, a bool and a string column missing in some, an
    all-null object column in one, a float column that is int in another."""
    parts = [
        _cell("b", 7, 0, **{"score:x": lambda n, r: r.random(n), "n_lesions": lambda n, r: r.integers(0, 5, n),
                            "flag": lambda n, r: r.random(n) > 0.5, "note": lambda n, r: ["a"] * n}),
        _cell("a", 5, 1, cohort="d", dice=lambda n, r: r.random(n), note=lambda n, r: [None] * n,
              mixed=lambda n, r: r.integers(0, 3, n)),
        _cell("c", 6, 2, **{"score:x": lambda n, r: r.random(n), "mixed": lambda n, r: r.random(n)}),
    ]
    files = []
    for i, p in enumerate(parts):
        f = tmp_path / f"cell{i}.parquet"
        p.to_parquet(f, index=False)
        files.append(f)
    return parts, files


def _old_way(files) -> pd.DataFrame:
    """What the records were before: one concatenated table, written and read back."""
    df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True, sort=False)
    return df


def test_merged_records_equal_the_concatenated_table(awkward, tmp_path):
    _, files = awkward
    old = _order_columns(_old_way(files))
    buf = tmp_path / "old.parquet"
    old.to_parquet(buf, index=False)
    old = pd.read_parquet(buf)
    path = merge_cell_records(files, tmp_path / "records.parquet", row_group_rows=4)
    new = pd.read_parquet(path)
    assert list(new.columns) == list(old.columns)
    pd.testing.assert_frame_equal(new, old)
    assert new["n_lesions"].dtype == np.float64 and new["n_lesions"].isna().sum() == 11
    # every row group holds one cell; a cell of 7 rows and groups of 4 -> 2 row groups
    pf = pq.ParquetFile(path)
    ids = [set(pf.read_row_group(i, columns=["cell_id"]).column(0).to_pylist()) for i in range(pf.num_row_groups)]
    assert [len(x) for x in ids] == [1] * pf.num_row_groups and pf.num_row_groups == 2 + 2 + 2


def test_merge_refuses_types_that_cannot_be_joined(tmp_path):
    a = _cell("a", 3, 0, v=lambda n, r: ["x"] * n)
    b = _cell("b", 3, 1, v=lambda n, r: r.random(n))
    fa, fb = tmp_path / "a.parquet", tmp_path / "b.parquet"
    a.to_parquet(fa, index=False)
    b.to_parquet(fb, index=False)
    with pytest.raises(RecordsError, match="'v'"):
        merge_cell_records([fa, fb], tmp_path / "records.parquet")


@pytest.mark.parametrize("row_group_rows", [3, 1000])
def test_cells_read_from_the_file_equal_the_tables_groupby(awkward, tmp_path, row_group_rows):
    _, files = awkward
    path = merge_cell_records(files, tmp_path / "records.parquet", row_group_rows=row_group_rows)
    table = pd.read_parquet(path)
    for src in (Records(path), Records(table)):
        assert src.cell_ids == ["a", "b", "c"] and src.n_rows == len(table)
        for cid, want in table.groupby("cell_id", sort=True):
            pd.testing.assert_frame_equal(src.cell(cid), want)  # same rows, order, index
            pd.testing.assert_frame_equal(src.cell(cid, ["psnr", "study_index"]), want[["psnr", "study_index"]])
        got = src.select(["cell_id", "psnr"], where={"cohort": "c"})
        pd.testing.assert_frame_equal(got, table.loc[table["cohort"] == "c", ["cell_id", "psnr"]])
        assert sum(len(p) for p in src.scan(["psnr"])) == len(table)
        pd.testing.assert_frame_equal(src.first_rows(["cell_id", "cohort"]).sort_index(),
                                      table.drop_duplicates("cell_id")[["cell_id", "cohort"]])
    with pytest.raises(KeyError, match="no cell 'zz'"):
        Records(path).cell("zz")
    with pytest.raises(KeyError, match="nope"):
        Records(path).cell("a", ["nope"])


def test_cells_are_found_in_a_file_whose_row_groups_mix_cells(awkward, tmp_path):
    """A records file written by other means (one row group, cells interleaved) reads the same."""
    _, files = awkward
    table = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True).sample(frac=1, random_state=0)
    table = table.reset_index(drop=True)
    path = tmp_path / "mixed.parquet"
    table.to_parquet(path, index=False, row_group_size=5)
    table = pd.read_parquet(path)
    src = Records(path)
    for cid, want in table.groupby("cell_id", sort=True):
        pd.testing.assert_frame_equal(src.cell(cid), want)


def test_a_damaged_records_file_is_named(tmp_path):
    bad = tmp_path / "records.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(RecordsError, match="records.parquet"):
        Records(bad)


# -------------------------------------------------------------------------------------------- a real run
class _CountingRecords(Records):
    """Records that remember the largest table any one read returned, and the columns of cell reads."""

    def __init__(self, path):
        super().__init__(path)
        self.largest, self.cell_columns = 0, set()

    def _read_groups(self, groups, columns, cell_id):
        df = super()._read_groups(groups, columns, cell_id)
        self.largest = max(self.largest, len(df))
        if cell_id is not None:
            self.cell_columns |= set(df.columns)
        return df


@pytest.fixture(scope="module")
def two_cohort_run(tmp_path_factory):
    from reconaudit.engine.config import load_config
    from reconaudit.engine.run import run_audit
    from tests.engine.test_companions_audit import BRAIN
    from tests.engine.tiny import tiny_config

    brain = {**BRAIN, "degradations": [{"name": "kspace", "levels": [4], "params": {"pattern": "radial"}}]}
    chest = {**tiny_config()["cohorts"][0]}
    chest["degradations"] = [{"name": "lowdose-xray", "levels": [3000], "params": {"model": "projection"}}]
    cfg = load_config(tiny_config(cohorts=[chest, brain], reconstructors=[{"name": "identity"}, {"name": "classical"}],
                                  seeds=[0, 1]))
    run = tmp_path_factory.mktemp("records") / "run"
    res = run_audit(cfg, run, report=False)
    return res, run


def test_a_runs_records_file_equals_the_cells_concatenated(two_cohort_run):
    """The merged file is what the one concatenated table of earlier versions was."""
    res, run = two_cohort_run
    files = []
    for cell in res.plan.cells:
        kind, key = cell.final_step.split("/", 1)
        files.append(run / "store" / kind / key / "records.parquet")
    files = [f for f in files if f.exists()]
    assert len(files) == len(res.plan.cells)
    old = _order_columns(_old_way(files))
    old.to_parquet(run / "old.parquet", index=False)
    new = pd.read_parquet(run / "records.parquet")
    pd.testing.assert_frame_equal(new, pd.read_parquet(run / "old.parquet"))
    assert {"dice", "score:effusion"} <= set(new.columns)  # columns of both cohorts, null in the other's rows


def test_the_report_from_the_file_equals_the_report_from_the_table(two_cohort_run, tmp_path):
    """Every table of the analysis, the analyses in depth, the companion and generative sections:
    the same read a cell (or a cohort) at a time from the file as from the whole table in memory;
    the cell-wise analyses never read more rows at once than the largest cell, and the main analysis
    reads no penultimate features."""
    import json

    from reconaudit.report import analyse
    from reconaudit.report.companions import companion_sections
    from reconaudit.report.depth import analyse_depth
    from reconaudit.report.generative import generative_section

    _, run = two_cohort_run
    meta = json.loads((run / "run.json").read_text())
    table = pd.read_parquet(run / "records.parquet")
    lazy = _CountingRecords(run / "records.parquet")
    a_mem, a_file = analyse(table, meta), analyse(lazy, meta)
    for name in ("cells", "task", "fairness", "seeds", "headlines", "competence"):
        pd.testing.assert_frame_equal(getattr(a_file, name), getattr(a_mem, name), obj=name)
    assert a_file.cohorts == a_mem.cohorts
    assert lazy.cell_columns and not lazy.cell_columns & set(lazy.with_prefix("feature:", "clean_feature:"))
    d_mem, d_file = analyse_depth(table, meta, a_mem), analyse_depth(lazy, meta, a_file)
    for name, t in d_mem.tables.items():
        pd.testing.assert_frame_equal(d_file.tables[name], t, obj=name)
    assert all(len(d_mem.tables[k]) for k in ("calibration", "ranking", "shortcut", "segmentation_equity"))
    largest_cell = int(table.groupby("cell_id").size().max())
    assert lazy.largest <= largest_cell < len(table) / 4
    assert lazy.with_prefix("feature:")  # the shortcut probe read them, a cell at a time
    c_mem = companion_sections(table, meta, a_mem, tmp_path / "m", tmp_path / "m")
    c_file = companion_sections(lazy, meta, a_file, tmp_path / "f", tmp_path / "f")
    assert [s["id"] for s in c_file] == [s["id"] for s in c_mem] and c_mem
    for sm, sf in zip(c_mem, c_file):
        for (_, tm), (_, tf) in zip(sm["tables"], sf["tables"]):
            pd.testing.assert_frame_equal(tf, tm)
    g_mem = generative_section(table, meta, tmp_path / "gm")
    g_file = generative_section(lazy, meta, tmp_path / "gf")
    assert set(g_file.region) == set(g_mem.region) and set(g_file.hallucination) == set(g_mem.hallucination)
    assert g_mem.hallucination
    for k in g_mem.region:
        pd.testing.assert_frame_equal(g_file.region[k], g_mem.region[k])
    for k in g_mem.hallucination:
        pd.testing.assert_frame_equal(g_file.hallucination[k], g_mem.hallucination[k])
    assert [f.key for f in g_file.figures] == [f.key for f in g_mem.figures]
