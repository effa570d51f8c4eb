"""analyse(): numbers against independent oracles (numpy, scikit-learn, fairlearn), NaN handling,
multiple-comparison correction, seeds, headlines and reproducibility."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    demographic_parity_difference,
    equal_opportunity_difference,
    equalized_odds_difference,
)
from sklearn.metrics import roc_auc_score

from reconaudit.report.analysis import MEAN_LABEL, analyse

XRAY, MRI = "chest-xray", "brain-mri"


def _cell(records: pd.DataFrame, cohort: str, rec: str, level: float, mitigation: str = "none", seed: int = 0):
    r = records[(records["cohort"] == cohort) & (records["reconstructor"] == rec) & (records["level"] == level)
                & (records["mitigation"] == mitigation) & (records["seed"] == seed)]
    assert r["cell_id"].nunique() == 1
    return r


def _row(df: pd.DataFrame, **kw) -> pd.Series:
    m = np.ones(len(df), bool)
    for k, v in kw.items():
        m &= (df[k] == v).to_numpy()
    assert m.sum() == 1, (kw, m.sum())
    return df[m].iloc[0]


def test_image_quality_means_equal_the_records(fake_inputs, analysis):
    records, _ = fake_inputs
    for cohort, rec, level in ((XRAY, "unet", 3000.0), (MRI, "diffusion", 4.0)):
        r = _cell(records, cohort, rec, level)
        c = _row(analysis.cells, cell_id=r["cell_id"].iloc[0])
        for q in ("psnr", "ssim", "nmse", "input_psnr"):
            assert c[q] == pytest.approx(r[q].mean(), rel=1e-12)
            assert c[f"{q}_ci_low"] <= c[q] <= c[f"{q}_ci_high"]
        assert c["n_studies"] == len(r) and c["n_patients"] == r["patient_id"].nunique()
    d = _row(analysis.cells, cell_id=_cell(records, XRAY, "direct", 3000.0)["cell_id"].iloc[0])
    assert np.isnan(d["psnr"]) and np.isfinite(d["input_psnr"])


def test_auroc_sensitivity_specificity_match_sklearn(fake_inputs, analysis):
    records, _ = fake_inputs
    r = _cell(records, XRAY, "identity", 3000.0)
    cid = r["cell_id"].iloc[0]
    clean_aucs, recon_aucs = [], []
    for label in ("effusion", "cardiomegaly", "nodule"):
        k = r[f"target:{label}"].notna()
        y = r.loc[k, f"target:{label}"].astype(int)
        auc_c = roc_auc_score(y, r.loc[k, f"clean_score:{label}"])
        auc_r = roc_auc_score(y, r.loc[k, f"score:{label}"])
        clean_aucs.append(auc_c)
        recon_aucs.append(auc_r)
        row = _row(analysis.task, cell_id=cid, label=label, metric="auroc")
        assert row["clean"] == pytest.approx(auc_c, abs=1e-12)
        assert row["recon"] == pytest.approx(auc_r, abs=1e-12)
        assert row["change"] == pytest.approx(auc_r - auc_c, abs=1e-12)
        assert row["test"] == "DeLong (patient-clustered)" and 0 <= row["p_value"] <= 1
        pred = r.loc[k, f"score:{label}"] >= r.loc[k, f"threshold:{label}"]
        sens = _row(analysis.task, cell_id=cid, label=label, metric="sensitivity")
        spec = _row(analysis.task, cell_id=cid, label=label, metric="specificity")
        assert sens["recon"] == pytest.approx((pred & (y == 1)).sum() / (y == 1).sum())
        assert spec["recon"] == pytest.approx((~pred & (y == 0)).sum() / (y == 0).sum())
    mean = _row(analysis.task, cell_id=cid, label=MEAN_LABEL, metric="auroc")
    assert mean["clean"] == pytest.approx(np.mean(clean_aucs))
    assert mean["recon"] == pytest.approx(np.mean(recon_aucs))
    assert mean["change_ci_low"] <= mean["change"] <= mean["change_ci_high"]


@pytest.mark.parametrize("attribute", ["sex", "age_band"])
def test_fairness_matches_fairlearn(fake_inputs, analysis, attribute):
    records, _ = fake_inputs
    r = _cell(records, XRAY, "diffusion", 10000.0)
    cid = r["cell_id"].iloc[0]
    label = "effusion"
    y = r[f"target:{label}"].astype(int)
    g = r[f"group:{attribute}"]
    for arm, col in (("clean", f"clean_score:{label}"), ("recon", f"score:{label}")):
        pred = (r[col] >= r[f"threshold:{label}"]).astype(int)
        for metric, fn in (("equalized_odds_difference", equalized_odds_difference),
                           ("equal_opportunity_difference", equal_opportunity_difference),
                           ("demographic_parity_difference", demographic_parity_difference)):
            row = _row(analysis.fairness, cell_id=cid, label=label, attribute=attribute, metric=metric)
            assert row[arm] == pytest.approx(fn(y, pred, sensitive_features=g), abs=1e-12), (metric, arm)
        per_group = {k: roc_auc_score(y[g == k], r.loc[g == k, col]) for k in g.unique()}
        gap = _row(analysis.fairness, cell_id=cid, label=label, attribute=attribute, metric="auroc_gap")
        worst = _row(analysis.fairness, cell_id=cid, label=label, attribute=attribute, metric="worst_group_auroc")
        assert gap[arm] == pytest.approx(max(per_group.values()) - min(per_group.values()), abs=1e-12)
        assert worst[arm] == pytest.approx(min(per_group.values()), abs=1e-12)
        assert per_group[worst[f"worst_group_{arm}"]] == min(per_group.values())  # (ties: any of them)
    row = _row(analysis.fairness, cell_id=cid, label=label, attribute=attribute, metric="equalized_odds_difference")
    assert row["change"] == pytest.approx(row["recon"] - row["clean"])
    if row["clean"] != 0:
        assert row["change_rel_pct"] == pytest.approx(100 * row["change"] / abs(row["clean"]))
    assert row["test"] == "paired bootstrap" and 0 < row["p_value"] <= 1 and 0 < row["p_permutation"] <= 1


def test_segmentation_dice_metrics(fake_inputs, analysis):
    records, _ = fake_inputs
    r = _cell(records, MRI, "unet", 8.0)
    cid = r["cell_id"].iloc[0]
    dice = _row(analysis.task, cell_id=cid, metric="dice")
    assert dice["recon"] == pytest.approx(r["dice"].mean()) and dice["clean"] == pytest.approx(r["clean_dice"].mean())
    patient = _row(analysis.task, cell_id=cid, metric="dice_patient")
    assert patient["recon"] == pytest.approx(r.groupby("patient_id")["dice"].median().mean())
    assert patient["test"].startswith("Wilcoxon") and dice["test"].startswith("Wilcoxon")
    from scipy.stats import wilcoxon

    per_patient = r.groupby("patient_id")[["dice", "clean_dice"]].mean()
    diff = per_patient["dice"] - per_patient["clean_dice"]
    assert dice["p_value"] == pytest.approx(wilcoxon(diff, zero_method="zsplit").pvalue)
    assert np.isfinite(dice["p_adjusted"]) and np.isnan(patient["p_adjusted"])
    min_size = analysis.settings["min_group_size"]
    for attribute in ("sex", "age_band"):
        means = r.groupby(f"group:{attribute}")["dice"].mean()
        gap = _row(analysis.fairness, cell_id=cid, attribute=attribute, metric="dice_gap")
        worst = _row(analysis.fairness, cell_id=cid, attribute=attribute, metric="worst_group_dice")
        if r[f"group:{attribute}"].value_counts().min() < min_size:
            assert np.isnan(gap["recon"]) and "fewer than" in gap["reason"]
            continue
        assert gap["recon"] == pytest.approx(means.max() - means.min())
        assert worst["recon"] == pytest.approx(means.min()) and worst["worst_group_recon"] == means.idxmin()


def test_undefined_metrics_are_nan_with_a_reason_never_zero(fake_inputs):
    records, meta = fake_inputs
    r = records[(records["cohort"] == XRAY) & (records["level"] == 3000.0) & (records["mitigation"] == "none")
                & (records["seed"] == 0) & records["reconstructor"].isin(["unet"])].copy()
    # the group "<40" has no positive for effusion: TPR undefined there
    r.loc[(r["group:age_band"] == "<40"), "target:effusion"] = 0.0
    m = dict(meta, analysis=dict(meta["analysis"], n_resamples=30))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the analysis itself must not leak metric warnings
        a = analyse(r, m)
    f = a.fairness[(a.fairness["label"] == "effusion") & (a.fairness["attribute"] == "age_band")]
    eod = _row(f, metric="equalized_odds_difference")
    assert np.isnan(eod["clean"]) and np.isnan(eod["recon"]) and np.isnan(eod["change"])
    assert "<40" in eod["reason"] and "positive" in eod["reason"]
    assert np.isnan(eod["p_adjusted"]) and not eod["significant"]
    dpd = _row(f, metric="demographic_parity_difference")  # defined without positives
    assert np.isfinite(dpd["recon"]) and dpd["reason"] == ""


def test_min_group_size_makes_small_groups_undefined(fake_inputs):
    records, meta = fake_inputs
    r = records[(records["cohort"] == MRI) & (records["level"] == 8.0) & (records["reconstructor"] == "unet")
                & (records["mitigation"] == "none") & (records["seed"] == 0)]
    smallest = r["group:age_band"].value_counts().min()
    m = dict(meta, analysis=dict(meta["analysis"], n_resamples=30, min_group_size=int(smallest) + 1))
    a = analyse(r, m)
    gap = _row(a.fairness, attribute="age_band", metric="dice_gap")
    assert np.isnan(gap["recon"]) and "fewer than" in gap["reason"]


def test_multiple_comparison_correction_and_family(analysis):
    f = analysis.fairness
    p = f["p_value"].to_numpy(float)
    ok = ~np.isnan(p)
    m = ok.sum()
    order = np.argsort(p[ok], kind="stable")
    holm = np.maximum.accumulate(np.minimum(1, (m - np.arange(m)) * p[ok][order]))
    expected = np.empty(m)
    expected[order] = holm
    np.testing.assert_allclose(f["p_adjusted"].to_numpy(float)[ok], expected)
    assert (f["significant"] == (f["p_adjusted"] < 0.05)).all()
    fam = analysis.families.set_index("family")
    assert fam.loc["fairness", "n_tests"] == m and f"{m} tests" in fam.loc["fairness", "description"]
    assert fam.loc["task", "n_tests"] == analysis.task["p_adjusted"].notna().sum()


def test_bh_correction_and_bca_option(fake_inputs):
    records, meta = fake_inputs
    r = records[(records["cohort"] == MRI) & (records["level"] == 8.0) & (records["mitigation"] == "none")]
    m = dict(meta, analysis=dict(meta["analysis"], n_resamples=40, correction="bh", ci="bca"))
    a = analyse(r, m)
    assert set(a.families["method"]) == {"Benjamini-Hochberg"}
    p = a.fairness["p_value"].to_numpy(float)
    ok = ~np.isnan(p)
    q = p[ok]
    n = len(q)
    order = np.argsort(q)
    bh = np.minimum(1, np.minimum.accumulate((q[order] * n / np.arange(1, n + 1))[::-1])[::-1])
    expected = np.empty(n)
    expected[order] = bh
    np.testing.assert_allclose(a.fairness["p_adjusted"].to_numpy(float)[ok], expected)


def test_seed_spread_is_kept_apart(fake_inputs, analysis):
    records, _ = fake_inputs
    vals = []
    for seed in (0, 1):
        cid = _cell(records, XRAY, "unet", 3000.0, seed=seed)["cell_id"].iloc[0]
        vals.append(_row(analysis.task, cell_id=cid, label=MEAN_LABEL, metric="auroc")["recon"])
    s = analysis.seeds
    row = _row(s, cohort=XRAY, source="task:recon", metric="auroc", label=MEAN_LABEL, mitigation="none")
    assert row["n_seeds"] == 2
    assert row["seed_mean"] == pytest.approx(np.mean(vals))
    assert row["seed_std"] == pytest.approx(np.std(vals, ddof=1))
    assert row["bootstrap_half_width"] > 0
    # single-seed configurations are not in the seed table
    assert set(s["reconstructor"]) == {"unet"} and set(s["level"]) <= {3000.0, 8.0}


def test_headlines_are_built_from_the_tables(analysis):
    h = analysis.headlines.set_index("cohort")["sentence"]
    assert set(h.index) == {XRAY, MRI}
    cells = analysis.cells
    unet = cells[(cells["cohort"] == XRAY) & (cells["reconstructor"] == "unet") & (cells["mitigation"] == "none")
                 & (cells["seed"] == 0)].set_index("level")["psnr"]
    drop = unet[3000.0] - unet[100000.0]
    assert f"PSNR fell {abs(drop):.1f} dB from 100000 photons to 3000 photons" in h[XRAY]
    t = analysis.task
    mean = t[(t["cohort"] == XRAY) & (t["reconstructor"] == "unet") & (t["level"] == 3000.0) & (t["label"] == MEAN_LABEL)
             & (t["mitigation"] == "none") & (t["seed"] == 0)].iloc[0]
    assert f"mean AUROC changed by {mean['change']:+.3f} [{mean['change_ci_low']:.3f}, {mean['change_ci_high']:.3f}]" in h[XRAY]
    assert "8x acceleration" in h[MRI] and "Dice" in h[MRI]


def test_analysis_is_reproducible(fake_inputs):
    records, meta = fake_inputs
    r = records[(records["cohort"] == XRAY) & (records["level"] == 3000.0) & (records["mitigation"] == "none")]
    m = dict(meta, analysis=dict(meta["analysis"], n_resamples=30))
    a1, a2 = analyse(r, m), analyse(r.sample(frac=1.0, random_state=3), m)
    pd.testing.assert_frame_equal(a1.fairness, a2.fairness)
    pd.testing.assert_frame_equal(a1.task, a2.task)


def test_missing_columns_are_named(fake_inputs):
    records, meta = fake_inputs
    with pytest.raises(ValueError, match=r"missing columns \['arm'\]"):
        analyse(records.drop(columns=["arm"]), meta)
    with pytest.raises(ValueError, match="correction"):
        analyse(records, dict(meta, analysis=dict(meta["analysis"], correction="bonferroni")))


def test_extreme_bootstrap_p_values_are_refined_and_floored(analysis):
    f = analysis.fairness[analysis.fairness["p_value"].notna()]
    b = analysis.settings["n_resamples"]
    assert (f["p_value"] >= 1.0 / (f["n_resamples"] + 1) - 1e-15).all()
    refined = f[f["n_resamples"] > b]
    assert len(refined) > 0  # the fake's worst-group Dice drops are extreme
    assert refined["metric"].isin(["equalized_odds_difference", "equal_opportunity_difference",
                                   "demographic_parity_difference", "skewed_error_ratio", "dice_gap",
                                   "worst_group_dice"]).all()
    assert (refined["p_value"] < 1.0 / (b + 1)).any()
    # a change that is significant after correction has an interval that excludes zero
    sig = f[f["significant"]]
    assert ((sig["change_ci_low"] > 0) | (sig["change_ci_high"] < 0)).all()


def test_direct_arm_clean_baseline_uses_the_clean_models_threshold(fake_inputs, analysis):
    """The clean values of a direct cell equal those of the reconstruct cells of the same cohort and seed."""
    records, meta = fake_inputs
    direct = _cell(records, XRAY, "direct", 3000.0)
    recon = _cell(records, XRAY, "unet", 3000.0)
    assert (direct["threshold:effusion"] != direct["clean_threshold:effusion"]).all()  # the case at stake
    for df, keys in ((analysis.task, ["label", "metric"]), (analysis.fairness, ["attribute", "label", "metric"])):
        d = df[df["cell_id"] == direct["cell_id"].iloc[0]].set_index(keys)["clean"]
        r = df[df["cell_id"] == recon["cell_id"].iloc[0]].set_index(keys)["clean"]
        common = d.index.intersection(r.index)
        assert len(common) >= 10
        np.testing.assert_allclose(d[common].to_numpy(float), r[common].to_numpy(float), rtol=0, atol=1e-12)
    # the direct model's threshold applies to its own (degraded-input) scores only
    y = direct["target:effusion"].astype(int)
    pred = direct["score:effusion"] >= 0.35
    sens = _row(analysis.task, cell_id=direct["cell_id"].iloc[0], label="effusion", metric="sensitivity")
    assert sens["recon"] == pytest.approx((pred & (y == 1)).sum() / (y == 1).sum())
    # records without the column: the direct arm falls back to its own threshold (old behaviour, logged)
    old = pd.concat([direct, recon]).drop(columns=[c for c in records if c.startswith("clean_threshold:")])
    a = analyse(old, dict(meta, analysis=dict(meta["analysis"], n_resamples=20)))
    t = a.task[a.task["metric"].isin(["sensitivity", "specificity"])]
    d = t[t["cell_id"] == direct["cell_id"].iloc[0]].set_index(["label", "metric"])["clean"]
    r = t[t["cell_id"] == recon["cell_id"].iloc[0]].set_index(["label", "metric"])["clean"]
    assert (d - r[d.index]).abs().max() > 0.01


def test_not_estimable_rows_are_named_and_outside_the_family(fake_inputs):
    """A one-patient group is not estimable under the default guards: NaN p, outside Holm, never significant."""
    records, meta = fake_inputs
    r = records[(records["cohort"] == XRAY) & (records["level"] == 3000.0) & (records["mitigation"] == "none")
                & (records["seed"] == 0) & records["reconstructor"].isin(["unet", "identity"])].copy()
    r.loc[r["group:age_band"] == "<40", "patient_id"] = "one-patient"
    defaults = {k: v for k, v in meta["analysis"].items()
                if k not in ("min_group_patients", "min_group_positives", "max_undefined_share")}
    a = analyse(r, dict(meta, analysis=dict(defaults, n_resamples=50)))
    assert a.settings["min_group_patients"] == 5 and a.settings["max_undefined_share"] == 0.01
    for df in (a.task, a.fairness):
        for col in ("n_undefined", "undefined_share", "estimable", "ci_method"):
            assert col in df.columns, col
    f = a.fairness
    age = f[f["attribute"] == "age_band"]
    assert len(age) and not age["estimable"].any() and not age["significant"].any()
    assert age["p_adjusted"].isna().all() and age["p_value"].isna().all()
    assert age["reason"].str.contains("'<40': 1 patient").all()
    assert age["groups"].str.contains(r"<40: \d+ \(1 patients\)").all()
    # the family holds exactly the rows with a p-value, and no not-estimable row
    fam = a.families.set_index("family")
    assert fam.loc["fairness", "n_tests"] == f["p_value"].notna().sum()
    assert f.loc[~f["estimable"], "p_value"].isna().all()
    shown = f[f["estimable"] & f["p_value"].notna()]
    assert (shown["undefined_share"] <= 0.01).all()
    np.testing.assert_array_equal(shown["n_undefined"] / shown["n_resamples"], shown["undefined_share"])


def test_study_definitions_reproduce_the_study(fake_inputs):
    """definitions: study -> thresholds per label and arm on the test set, EODD = mean of the gaps, Dice SER."""
    from reconaudit.metrics import choose_threshold

    records, meta = fake_inputs
    r = records[(records["level"].isin([3000.0, 8.0])) & (records["mitigation"] == "none") & (records["seed"] == 0)
                & (records["reconstructor"] == "unet")]
    a = analyse(r, dict(meta, analysis=dict(meta["analysis"], n_resamples=30, definitions="study")))
    x = r[r["cohort"] == XRAY]
    label, attribute = "effusion", "sex"
    y = x[f"target:{label}"].astype(int).to_numpy()
    g = x[f"group:{attribute}"].to_numpy()
    row = _row(a.fairness, cohort=XRAY, label=label, attribute=attribute, metric="equalized_odds_difference")
    for arm, col in (("clean", f"clean_score:{label}"), ("recon", f"score:{label}")):
        s = x[col].to_numpy()
        pred = (s >= choose_threshold(y, s, "sens_eq_spec")).astype(int)
        assert row[arm] == pytest.approx(equalized_odds_difference(y, pred, sensitive_features=g, agg="mean"),
                                         abs=1e-12), arm
    if row["clean"] != 0:
        assert row["change_rel_pct"] == pytest.approx(100 * (row["recon"] - row["clean"]) / abs(row["clean"]))
    assert "study" in row["threshold_policy"] and "mean(TPR gap, FPR gap)" in row["definition"]
    counted = a.fairness[a.fairness["metric"].isin(["equalized_odds_difference", "demographic_parity_difference"])]
    assert counted["threshold_policy"].str.contains("each arm's whole test set").all()
    assert (a.fairness.loc[a.fairness["metric"] == "auroc_gap", "threshold_policy"] == "threshold-free").all()
    # segmentation: (1 - min group mean Dice) / (1 - max group mean Dice)
    m = r[r["cohort"] == MRI]
    ser = _row(a.fairness, cohort=MRI, attribute="sex", metric="dice_skewed_error_ratio")
    for arm, col in (("clean", "clean_dice"), ("recon", "dice")):
        means = m.groupby("group:sex")[col].mean()
        assert ser[arm] == pytest.approx((1 - means.min()) / (1 - means.max()), abs=1e-12)
    d = a.definitions.set_index("metric")
    assert d.loc["equalized-odds difference", "definition"] == "study"
    assert "skewed error ratio (1 - Dice)" in d.index
    # the package definitions: no Dice SER row, EODD the max
    p = analyse(r, dict(meta, analysis=dict(meta["analysis"], n_resamples=30)))
    assert "dice_skewed_error_ratio" not in set(p.fairness["metric"])
    assert _row(p.fairness, cohort=XRAY, label=label, attribute=attribute,
                metric="equalized_odds_difference")["definition"].startswith("max(")


def test_a_gap_closed_by_the_operating_point_is_flagged_and_never_a_headline(fake_inputs):
    records, meta = fake_inputs
    r = records[(records["cohort"] == XRAY) & (records["level"] == 3000.0) & (records["mitigation"] == "none")
                & (records["seed"] == 0) & (records["reconstructor"] == "identity")].copy()
    r["score:cardiomegaly"] = 0.01  # every processed score below the threshold: nothing called positive
    a = analyse(r, dict(meta, analysis=dict(meta["analysis"], n_resamples=30)))
    f = a.fairness[(a.fairness["label"] == "cardiomegaly") & a.fairness["metric"].isin(
        ["equalized_odds_difference", "equal_opportunity_difference", "demographic_parity_difference"])]
    assert len(f) and f["operating_point_flag"].str.contains("nothing called positive").all()
    sens = _row(a.task, label="cardiomegaly", metric="sensitivity")
    assert sens["recon"] == 0 and "nothing called positive" in sens["operating_point_flag"]
    auc = _row(a.fairness, label="cardiomegaly", attribute="sex", metric="auroc_gap")
    assert auc["operating_point_flag"] == "" and auc["threshold_policy"] == "threshold-free"
    assert "cardiomegaly" not in a.headlines.iloc[0]["sentence"].split("largest")[-1]


def test_ci_method_says_when_bca_fell_back_to_percentile():
    from reconaudit.report.analysis import _stats_from_boot

    base = dict(metric="m", attribute="all", estimate=0.5, ci_low=0.4, ci_high=0.6, p_value=np.nan, n_undefined=0)
    ok = {("m", "all", arm): dict(base, arm=arm, bca_low=0.41, bca_high=0.62) for arm in ("clean", "recon")}
    st = _stats_from_boot(ok, "m", "all", "bca")
    assert st["ci_method"] == "bca" and st["recon_ci_low"] == 0.41
    bad = {("m", "all", arm): dict(base, arm=arm, bca_low=np.nan, bca_high=np.nan) for arm in ("clean", "recon")}
    st = _stats_from_boot(bad, "m", "all", "bca")
    assert st["ci_method"] == "percentile (BCa undefined)" and st["recon_ci_low"] == 0.4
    assert _stats_from_boot(bad, "m", "all", "percentile")["ci_method"] == "percentile"


def test_second_stage_chunks_shrink_with_the_patients_and_keep_the_numbers():
    """The second-stage bootstrap draws fewer resamples per chunk for a large cell (memory: a chunk
    of draw counts) and gets the same classification p-values as with 2,048 at a time (the counts
    are integers, so their sums do not depend on the chunk)."""
    import numpy as np

    from reconaudit import metrics as M
    from reconaudit.report.analysis import _refine_chunk

    assert _refine_chunk(np.arange(500)) == 2048 and _refine_chunk(np.arange(10_000)) == 400
    assert _refine_chunk(np.repeat(np.arange(10**6), 2)) == 64
    rng = np.random.default_rng(0)
    n = 600
    y = rng.integers(0, 2, n)
    g = rng.choice(["a", "b", "c"], n)
    pid = np.repeat(np.arange(n // 2), 2)
    pc, pr = rng.integers(0, 2, n), rng.integers(0, 2, n)
    kw = dict(patient_ids=pid, sensitive_features={"g": g}, y_pred=pr, y_pred_clean=pc, n_resamples=3000, seed=4)
    a = M.bootstrap_metrics(y, **kw, chunk_size=2048).table
    b = M.bootstrap_metrics(y, **kw, chunk_size=100).table
    pd.testing.assert_frame_equal(a, b, check_exact=True)
