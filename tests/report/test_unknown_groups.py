"""`unknown_groups`: studies with an unknown group value are left out of gap metrics (default) or kept."""

from __future__ import annotations

import numpy as np
import pytest
from fairlearn.metrics import equalized_odds_difference

from reconaudit.report.analysis import analyse

XRAY = "chest-xray"


def _one_cell_with_an_unknown(records):
    r = records[(records["cohort"] == XRAY) & (records["reconstructor"] == "identity") & (records["level"] == 3000.0)
                & (records["mitigation"] == "none") & (records["seed"] == 0)].copy()
    r.loc[r.index[0], "group:sex"] = "unknown"  # one study of unknown sex
    return r


@pytest.mark.parametrize("policy", ["exclude", "keep"])
def test_unknown_group_excluded_from_gaps_or_kept(fake_inputs, policy):
    records, meta = fake_inputs
    r = _one_cell_with_an_unknown(records)
    cohorts = {k: dict(v) for k, v in meta["cohorts"].items()}
    cohorts[XRAY]["unknown_groups"] = policy
    m = dict(meta, cohorts=cohorts, analysis=dict(meta["analysis"], n_resamples=30, min_group_size=5))
    a = analyse(r, m)
    eod = a.fairness[(a.fairness["attribute"] == "sex") & (a.fairness["label"] == "effusion")
                     & (a.fairness["metric"] == "equalized_odds_difference")].iloc[0]
    auroc = a.task[(a.task["label"] == "effusion") & (a.task["metric"] == "auroc")].iloc[0]
    assert auroc["n"] == r["target:effusion"].notna().sum()  # task performance always uses every study
    if policy == "keep":  # a group of one study is below min_group_size: every sex gap is undefined
        assert np.isnan(eod["recon"]) and "unknown" in eod["reason"]
    else:
        k = (r["group:sex"] != "unknown") & r["target:effusion"].notna()
        y = r.loc[k, "target:effusion"].astype(int)
        pred = (r.loc[k, "score:effusion"] >= r.loc[k, "threshold:effusion"]).astype(int)
        assert eod["recon"] == pytest.approx(equalized_odds_difference(y, pred, sensitive_features=r.loc[k, "group:sex"]))
        assert eod["n"] == int(k.sum())
