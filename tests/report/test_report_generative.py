"""The report's generative-trust section: its tables agree with the records, the figure is drawn."""

import numpy as np
import pandas as pd
from tests.report.fake_records import make_fake_run

from reconaudit.metrics import record_flips
from reconaudit.report.generative import generative_section


def _with_generative_columns(records: pd.DataFrame) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    df = records.copy()
    rec = (df["arm"] == "reconstruct").to_numpy()
    n = len(df)
    for region, base in (("lesion", 25.0), ("tissue", 30.0), ("background", 40.0)):
        df[f"region_psnr:{region}"] = np.where(rec, base + rng.normal(0, 1, n), np.nan)
        df[f"region_ssim:{region}"] = np.where(rec, 0.9, np.nan)
        df[f"region_nmse:{region}"] = np.where(rec, 0.01, np.nan)
    df["gen_hallucination_fraction"] = np.where(rec, rng.uniform(0, 0.1, n), np.nan)
    df["gen_erasure_fraction"] = np.where(rec, rng.uniform(0, 0.1, n), np.nan)
    df["gen_feature_distance"] = np.where(rec, rng.uniform(0, 1, n), np.nan)
    df["gen_frechet"] = np.where(rec, df.groupby("cell_id")["level"].transform("first") / 1000.0, np.nan)
    return df


def test_section_tables_match_the_records(tmp_path):
    run = make_fake_run(tmp_path / "run", n_patients=16, n_resamples=40, with_mitigation=False)
    records = _with_generative_columns(pd.read_parquet(run / "records.parquet"))
    meta = {"config": {"analysis": {"n_resamples": 40, "seed": 0}}}
    sec = generative_section(records, meta, tmp_path / "report")
    assert not sec.empty and sec.region and sec.figures
    cohort, table = next(iter(sec.region.items()))
    main = records[(records["cohort"] == cohort) & (records["arm"] == "reconstruct") & (records["seed"] == records["seed"].min())]
    row = table.iloc[0]
    cell = main[(main["reconstructor"] == row["reconstructor"]) & (main["level"].map(lambda v: f"{v:g}") == row["level"])]
    expected = cell["region_psnr:lesion"].mean()
    assert row["PSNR lesion"].startswith(f"{expected:.3g}")
    lo, hi = (float(v) for v in row["PSNR lesion"].split("[")[1].rstrip("]").split(","))
    assert lo < expected < hi
    # hallucinated-finding shares equal the flips computed from the records
    cls_cohorts = [c for c in sec.hallucination if "hallucinated finding (share)" in sec.hallucination[c]]
    if cls_cohorts:
        c = cls_cohorts[0]
        t = sec.hallucination[c].iloc[0]
        sub = records[(records["cohort"] == c) & (records["seed"] == records["seed"].min())]
        sub = sub.loc[:, sub.notna().any()]
        hcell = sub[(sub["reconstructor"] == t["reconstructor"]) & (sub["level"].map(lambda v: f"{v:g}") == t["level"])
                    & (sub["arm"] == t["arm"]) & (sub["mitigation"] == "none")]
        share = record_flips(hcell)["hallucinated:any"].mean()
        assert t["hallucinated finding (share)"].startswith(f"{share:.3g}")
    assert (tmp_path / "report" / "figures" / "fidelity-perception.png").exists()
    assert list((tmp_path / "report" / "tables").glob("region-quality-*.csv"))
    groups = pd.read_csv(tmp_path / "report" / "tables" / "generative-groups.csv")
    sex = groups[(groups["column"] == "region_psnr:lesion") & (groups["attribute"] == "sex")
                 & (groups["reconstructor"] == row["reconstructor"]) & (groups["level"].map(lambda v: f"{v:g}") == row["level"])
                 & (groups["cohort"] == cohort)]
    by_sex = cell.groupby("group:sex")["region_psnr:lesion"].mean()
    got = sex.set_index("group")["value"]
    for g, v in by_sex.items():
        assert abs(got[g] - v) < 1e-9
    assert abs(got["(gap)"] - (by_sex.max() - by_sex.min())) < 1e-9


def test_section_is_empty_without_its_columns(tmp_path, fake_inputs):
    records, meta = fake_inputs
    assert generative_section(records, meta, tmp_path).empty


def test_built_report_has_the_section_when_records_have_the_columns(tmp_path):
    from reconaudit.report import build_report

    run = make_fake_run(tmp_path / "run", n_patients=12, n_resamples=30, with_mitigation=False)
    records = _with_generative_columns(pd.read_parquet(run / "records.parquet"))
    records.to_parquet(run / "records.parquet", index=False)
    html = build_report(run).read_text()
    assert 'id="generative-region"' in html and "Fidelity against task-aware perception" in html
