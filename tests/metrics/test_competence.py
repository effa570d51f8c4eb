"""The competence check: reconstructed cells against the no-reconstruction baseline."""

import numpy as np
import pandas as pd
import pytest

from reconaudit.metrics.competence import BELOW_BASELINE_NOTE, competence


def _cells():
    base = {"cohort": "c", "degradation": "d", "arm": "reconstruct", "mitigation": "none",
            "mitigation_strength": np.nan, "seed": 0}
    rows = []
    for i, (rec, level, psnr, ssim, inp_psnr, inp_ssim) in enumerate([
        ("identity", 4.0, 20.0, 0.5, 20.0, 0.5),
        ("good", 4.0, 25.0, 0.7, 20.0, 0.5),
        ("blurry", 4.0, 21.0, 0.4, 20.0, 0.5),     # PSNR up, SSIM down
        ("identity", 8.0, 15.0, 0.3, 15.0, 0.3),
        ("good", 8.0, 18.0, 0.4, 15.0, 0.3),
        ("blurry", 8.0, 14.0, 0.2, 15.0, 0.3),
    ]):
        rows.append({**base, "cell_id": f"c{i}", "reconstructor": rec, "level": level, "psnr": psnr,
                     "ssim": ssim, "input_psnr": inp_psnr, "input_ssim": inp_ssim})
    rows.append({**base, "cell_id": "direct", "reconstructor": "direct", "arm": "direct", "level": 4.0,
                 "psnr": np.nan, "ssim": np.nan, "input_psnr": 20.0, "input_ssim": 0.5})
    return pd.DataFrame(rows)


def _task():
    dice = {"c0": 0.70, "c1": 0.65, "c2": 0.80, "c3": 0.50, "c4": 0.60, "c5": 0.40, "direct": 0.1}
    rows = [{"cell_id": k, "metric": "dice", "label": "", "recon": v} for k, v in dice.items()]
    rows += [{"cell_id": k, "metric": "hd95", "label": "", "recon": 1.0} for k in dice]
    return pd.DataFrame(rows)


def test_flags_each_metric_below_its_baseline():
    out = competence(_cells(), _task(), primary={"c": ("dice", "")}).set_index(["reconstructor", "level"])
    assert set(out.index.get_level_values(0)) == {"good", "blurry"}  # not identity, not the direct arm
    assert out.loc[("good", 4.0), ["below_psnr", "below_ssim", "below_task"]].tolist() == [False, False, True]
    assert out.loc[("good", 4.0), "baseline_task"] == pytest.approx(0.70)
    assert out.loc[("good", 4.0), "task"] == pytest.approx(0.65)
    assert out.loc[("good", 8.0), "below_baseline"] == np.False_
    assert out.loc[("good", 8.0), "note"] == ""
    assert out.loc[("blurry", 4.0), ["below_psnr", "below_ssim", "below_task"]].tolist() == [False, True, False]
    assert out.loc[("blurry", 8.0), "below_metrics"] == "PSNR, SSIM, Dice"
    assert out.loc[("blurry", 8.0), "note"] == f"PSNR, SSIM, Dice {BELOW_BASELINE_NOTE}"


def test_a_task_metric_within_the_tolerance_of_the_baseline_is_not_flagged():
    cells, task = _cells(), _task()
    task.loc[task["cell_id"] == "c1", "recon"] = 0.695  # 0.005 below identity's 0.70
    out = competence(cells, task, primary={"c": ("dice", "")}).set_index(["reconstructor", "level"])
    assert not out.loc[("good", 4.0), "below_task"]
    strict = competence(cells, task, primary={"c": ("dice", "")}, task_tolerance=0.0)
    assert strict.set_index(["reconstructor", "level"]).loc[("good", 4.0), "below_task"]


def test_without_task_rows_or_baseline_cell_only_image_quality_is_compared():
    cells = _cells()
    out = competence(cells)
    assert out["task"].isna().all() and not out["below_task"].any()
    assert out.set_index(["reconstructor", "level"]).loc[("blurry", 8.0), "below_metrics"] == "PSNR, SSIM"
    # no identity cell: image quality still compares against the cell's own input
    no_id = competence(cells[cells["reconstructor"] != "identity"], _task(), primary={"c": ("dice", "")})
    assert no_id["baseline_task"].isna().all() and not no_id["below_task"].any()
    assert no_id["below_psnr"].sum() == 1


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match="arm"):
        competence(_cells().drop(columns=["arm"]))
