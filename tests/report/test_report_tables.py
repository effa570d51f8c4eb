"""write_tables(): files, numbers recomputed from the records, formatting, LaTeX/Markdown escaping."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import equalized_odds_difference
from sklearn.metrics import roc_auc_score

from reconaudit.report import write_tables
from reconaudit.report.tables import format_ci, to_latex, to_markdown


@pytest.fixture(scope="module")
def tables(analysis, tmp_path_factory):
    out = tmp_path_factory.mktemp("tables")
    return out, write_tables(analysis, out)


def test_every_table_in_three_formats(tables):
    out, paths = tables
    for name in ("summary", "task", "fairness", "seeds", "families"):
        for ext in ("csv", "md", "tex"):
            p = out / f"{name}.{ext}"
            assert p in paths and p.stat().st_size > 0
    assert (out / "cells.csv").exists() and (out / "headlines.md").exists()


def test_table_numbers_equal_the_records(tables, fake_inputs):
    out, _ = tables
    records, _ = fake_inputs
    r = records[(records["cohort"] == "chest-xray") & (records["reconstructor"] == "identity")
                & (records["level"] == 10000.0) & (records["mitigation"] == "none") & (records["seed"] == 0)]
    summary = pd.read_csv(out / "summary.csv")
    s = summary[(summary["cohort"] == "chest-xray") & (summary["reconstructor"] == "identity")
                & (summary["level"] == 10000.0) & (summary["mitigation"] == "none") & (summary["seed"] == 0)]
    assert len(s) == 1
    assert s["psnr"].iloc[0] == pytest.approx(r["psnr"].mean(), rel=1e-9)
    task = pd.read_csv(out / "task.csv", keep_default_na=False, na_values=[""])
    k = r["target:nodule"].notna()
    auc = roc_auc_score(r.loc[k, "target:nodule"].astype(int), r.loc[k, "score:nodule"])
    row = task[(task["cell_id"] == r["cell_id"].iloc[0]) & (task["label"] == "nodule") & (task["metric"] == "auroc")]
    assert row["recon"].iloc[0] == pytest.approx(auc, abs=1e-12)
    fair = pd.read_csv(out / "fairness.csv", keep_default_na=False, na_values=[""])
    pred = (r.loc[k, "score:nodule"] >= r.loc[k, "threshold:nodule"]).astype(int)
    eod = equalized_odds_difference(r.loc[k, "target:nodule"].astype(int), pred,
                                    sensitive_features=r.loc[k, "group:age_band"])
    row = fair[(fair["cell_id"] == r["cell_id"].iloc[0]) & (fair["label"] == "nodule")
               & (fair["attribute"] == "age_band") & (fair["metric"] == "equalized_odds_difference")]
    got = row["recon"].iloc[0]
    assert (np.isnan(got) and np.isnan(eod)) or got == pytest.approx(eod, abs=1e-12)


def test_formatted_tables_show_estimates_with_intervals(tables, analysis):
    out, _ = tables
    md = (out / "summary.md").read_text()
    c = analysis.cells.iloc[0]
    assert format_ci(c["psnr"], c["psnr_ci_low"], c["psnr_ci_high"], 1) in md
    task_md = (out / "task.md").read_text()
    t = analysis.task[analysis.task["metric"] == "auroc"].iloc[0]
    assert format_ci(t["recon"], t["recon_ci_low"], t["recon_ci_high"], 3) in task_md
    tex = (out / "fairness.tex").read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert "<script>" not in tex and r"\textless{}script\textgreater{}" in tex
    assert "study_id" not in md and "patient_id" not in (out / "fairness.csv").read_text()


def test_format_ci():
    assert format_ci(0.8123, 0.78, 0.8449, 2) == "0.81 [0.78, 0.84]"
    assert format_ci(-0.01, -0.02, 0.0, 2, signed=True) == "-0.01 [-0.02, 0.00]"
    assert format_ci(float("nan"), 0, 1) == "n/a"
    assert format_ci(0.5, float("nan"), float("nan"), 1) == "0.5"


def test_markdown_and_latex_escape_cells():
    df = pd.DataFrame({"group": ["a|b", "x_y & 50%"], "value": ["0.1 [0.0, 0.2]", "n/a"]})
    md = to_markdown(df)
    assert "a\\|b" in md and md.count("\n") == 4
    tex = to_latex(df, caption="c_1")
    assert r"x\_y \& 50\%" in tex and r"\caption{c\_1}" in tex and tex.count(r"\\") == 3
