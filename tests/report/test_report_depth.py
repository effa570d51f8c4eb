"""The fairness audit in depth, from the fake run's records: tables agree with direct computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import reconaudit.metrics as M
from reconaudit.report.depth import analyse_depth, formatted_depth, power_table


@pytest.fixture(scope="module")
def depth(fake_inputs, analysis):
    records, meta = fake_inputs
    return analyse_depth(records, meta, analysis)


def _cell(records, **kw):
    m = np.ones(len(records), bool)
    for k, v in kw.items():
        m &= (records[k] == v).to_numpy()
    return records[m]


def test_operating_point_matches_the_records(fake_inputs, depth):
    records, _ = fake_inputs
    rows = _cell(records, cohort="chest-xray", reconstructor="unet", level=3000.0, mitigation="none", seed=0)
    y = rows["target:effusion"].to_numpy(float)
    ok = np.isfinite(y)
    t = rows["threshold:effusion"].to_numpy(float)[ok]
    sc, sr = rows["clean_score:effusion"].to_numpy(float)[ok], rows["score:effusion"].to_numpy(float)[ok]
    y = y[ok]
    op = depth.tables["operating_point"]
    sel = op[(op["cohort"] == "chest-xray") & (op["reconstructor"] == "unet") & (op["level"] == 3000.0)
             & (op["mitigation"] == "none") & (op["seed"] == 0) & (op["label"] == "effusion")
             & (op["attribute"] == "age_band") & (op["group"] == "(all)")].set_index("quantity")["estimate"]
    assert sel["sensitivity_clean"] == pytest.approx(np.mean(sc[y == 1] >= t[y == 1]))
    assert sel["specificity_recon"] == pytest.approx(np.mean(sr[y == 0] < t[y == 0]))
    assert sel["flip_rate"] == pytest.approx(np.mean((sc >= t) != (sr >= t)))


def test_calibration_ece_matches_the_metric(fake_inputs, depth):
    records, _ = fake_inputs
    rows = _cell(records, cohort="chest-xray", reconstructor="identity", level=3000.0)
    y = rows["target:cardiomegaly"].to_numpy(float)
    ok = np.isfinite(y)
    want = M.expected_calibration_error(y[ok].astype(int), rows["score:cardiomegaly"].to_numpy(float)[ok])
    cal = depth.tables["calibration"]
    got = cal[(cal["reconstructor"] == "identity") & (cal["level"] == 3000.0) & (cal["label"] == "cardiomegaly")
              & (cal["attribute"] == "sex") & (cal["group"] == "(all)") & (cal["metric"] == "ece")
              & (cal["input"] == "recon")]["estimate"]
    assert got.iloc[0] == pytest.approx(want)


def test_intersections_list_groups_below_the_guard(depth):
    g = depth.tables["intersection_groups"]
    assert set(g["intersection"]) == {"sex × age_band"}
    # every group is listed, estimable or not, and the guard counts patients
    assert (g["estimable"] == (g["n_patients"] >= depth.settings["min_group_patients"])).all()
    assert (~g["estimable"]).any()
    fmt = formatted_depth(depth)["intersection_groups"]
    assert fmt["estimable"].str.startswith("not estimable").any()


def test_onset_agrees_with_the_fairness_table(analysis, depth):
    f = analysis.fairness
    for r in depth.tables["onset"].head(40).itertuples():
        g = f[(f["cohort"] == r.cohort) & (f["reconstructor"] == r.reconstructor) & (f["arm"] == r.arm)
              & (f["attribute"] == r.attribute) & (f["label"] == r.label) & (f["metric"] == r.metric)
              & (f["mitigation"] == "none") & (f["seed"] == 0)]
        sig = g[g["significant"] & g["change"].notna()]
        if sig.empty:
            assert r.onset == "none up to the most severe level"
        else:
            assert r.onset_level == sig.sort_values("severity")["level"].iloc[0]


def test_ranking_shares_and_intervals(depth):
    r = depth.tables["ranking"]
    assert not r.empty
    sums = r.groupby(["cohort", "level", "criterion"])["p_first"].sum()
    assert (sums >= 1 - 1e-9).all()  # ties can share the first place
    assert ((r["rank_ci_low"] <= r["rank"]) | (r["rank_ci_high"] >= r["rank"])).all()
    assert set(depth.tables["friedman"]["cohort"]) == {"chest-xray", "brain-mri"}


def test_equity_and_power_tables(depth, analysis):
    eq = depth.tables["segmentation_equity"]
    assert set(eq["metric"]) == set(M.SEGMENTATION_EQUITY_METRICS)
    # on each input (not the change) Dice >= 0, so mean / (1 + sd) <= mean
    levels = eq[eq["input"].isin(["clean", "recon"])]
    keys = [c for c in levels.columns if c not in ("metric", "estimate", "ci_low", "ci_high")]
    wide = levels.pivot_table(index=keys, columns="metric", values="estimate", dropna=False)
    both = wide[["equity_scaled", "mean"]].dropna()
    assert len(both) and (both["equity_scaled"] <= both["mean"] + 1e-12).all()
    p = power_table(analysis, 0.05)
    finite = p["required_patients"].notna()
    assert finite.any()
    # a larger effect needs fewer patients
    p2 = power_table(analysis, 0.10)
    assert (p2.loc[finite, "required_patients"] <= p.loc[finite, "required_patients"]).all()


def test_no_feature_columns_means_an_empty_shortcut_table(depth):
    assert depth.tables["shortcut"].empty


def test_report_shows_the_depth_sections(built_report):
    html = built_report.read_text(encoding="utf-8")
    for title in ("Fairness audit in depth", "Calibration by group", "Operating point at the clean threshold",
                  "Intersectional groups", "Onset level", "Shortcut check", "Ranking with uncertainty",
                  "Equity-scaled and worst-case segmentation", "Sample-size planner"):
        assert title in html
    tables = built_report.parent / "tables"
    for name in ("calibration", "operating_point", "onset", "ranking", "power"):
        assert (tables / f"depth_{name}.csv").exists() and (tables / f"depth_{name}.tex").exists()
        assert not pd.read_csv(tables / f"depth_{name}.csv").empty


def test_power_command(fake_run, analysis, tmp_path):
    from typer.testing import CliRunner

    from reconaudit.cli import app

    out = tmp_path / "power.csv"
    res = CliRunner().invoke(app, ["power", str(fake_run), "--effect", "0.05", "--csv", str(out)])
    assert res.exit_code == 0, res.output
    got = pd.read_csv(out)
    want = power_table(analysis, 0.05)
    np.testing.assert_allclose(got["required_patients"].to_numpy(float), want["required_patients"].to_numpy(float))
    bad = CliRunner().invoke(app, ["power", str(fake_run), "--effect", "0"])
    assert bad.exit_code == 2
    missing = CliRunner().invoke(app, ["power", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "records.parquet" in missing.output
