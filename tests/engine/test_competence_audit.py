"""A tiny audit with a broken reconstructor (noise) and a good one: only the broken one is flagged."""

import numpy as np
import pytest

from reconaudit.cohorts import make_cohort
from reconaudit.engine.config import load_config
from reconaudit.engine.run import run_audit
from reconaudit.metrics.competence import BELOW_BASELINE_NOTE
from reconaudit.report import analyse
from reconaudit.report.html import load_run
from reconaudit.report.tables import formatted_tables
from tests.engine.tiny import tiny_config

COHORT_PARAMS = {"n_studies": 48, "size": 32}


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("competence")
    cohort = make_cohort("chest-xray", seed=0, **COHORT_PARAMS)
    folder = tmp / "good"
    folder.mkdir()
    # a near-perfect reconstructor: 0.98 x the clean image, precomputed per study id
    for sid, img in zip(cohort.table["study_id"], cohort.images[:, 0].numpy(), strict=True):
        np.save(folder / f"{sid}.npy", (0.98 * img).astype(np.float32))
    raw = tiny_config(
        reconstructors=[
            {"name": "identity"},
            {"name": "plugin", "label": "noise",
             "params": {"target": "tests.engine.noise_recon:build", "trainable": False}},
            {"name": "folder", "label": "good", "params": {"path": str(folder)}},
        ],
        direct={"enabled": False}, evaluation={"examples": 0},
    )
    raw["cohorts"][0]["params"] = dict(COHORT_PARAMS)
    raw["cohorts"][0]["degradations"][0]["levels"] = [3000]
    result = run_audit(load_config(raw), tmp / "run", report=False)
    assert result.summary.ok, [f.error for f in result.summary.failed]
    records, meta = load_run(tmp / "run")
    return records, analyse(records, meta), tmp / "run"


def test_the_noise_reconstructor_is_flagged_and_the_good_one_is_not(audited):
    records, a, _ = audited
    comp = a.competence.set_index("reconstructor")
    assert set(comp.index) == {"noise", "good"}
    noise, good = comp.loc["noise"], comp.loc["good"]
    assert noise["below_psnr"] and noise["below_ssim"] and noise["below_baseline"]
    assert BELOW_BASELINE_NOTE in noise["note"]
    assert not good["below_psnr"] and not good["below_ssim"]
    # the baseline is the identity reconstructor's (= the degraded input's) mean PSNR over the test studies
    ident = records[records["reconstructor"] == "identity"]
    assert noise["baseline_psnr"] == pytest.approx(ident["psnr"].mean(), rel=1e-6)
    assert noise["psnr"] == pytest.approx(records.loc[records["reconstructor"] == "noise", "psnr"].mean(), rel=1e-6)


def test_headline_and_summary_table_carry_the_flag(audited):
    _, a, _ = audited
    sentence = a.headlines.iloc[0]["sentence"]
    assert "Below the no-reconstruction baseline: noise at 3000 photons (PSNR, SSIM" in sentence
    assert "good at" not in sentence.split("Below the no-reconstruction baseline:")[1]
    summary = formatted_tables(a)["summary"].set_index("reconstructor")
    assert BELOW_BASELINE_NOTE in summary.loc["noise", "note"]
    assert summary.loc["identity", "note"] == ""
    assert "PSNR" not in summary.loc["good", "note"]


def test_training_histories_reach_run_json_and_the_training_curve_figure(audited, tmp_path):
    import json

    import pandas as pd

    from reconaudit.report.figures import _fig_training

    _, _, run = audited
    meta = json.loads((run / "run.json").read_text())
    saved = {}
    for info in (run / "store" / "task_model").glob("*/info.json"):
        saved[json.loads(info.read_text())["task"]] = json.loads(info.read_text())["history"]
    entries = [h for h in meta["training"] if h["kind"] == "diagnostic model"]
    assert [h["model"] for h in entries] == ["classification"]
    assert entries[0]["cohort"] == "chest-xray" and entries[0]["level"] is None
    assert entries[0]["train_loss"] == pytest.approx(saved["classification"]["train_loss"])
    assert entries[0]["val_loss"] == pytest.approx(saved["classification"]["val_loss"])
    (tmp_path / "figs").mkdir()
    fig = _fig_training(meta, tmp_path / "figs")  # what render_figures adds to the report
    assert fig.png.stat().st_size > 0 and fig.pdf.exists()
    plotted = pd.read_csv(tmp_path / "figs" / "training_curves.csv")
    val = plotted[(plotted["panel"] == "diagnostic model: classification") & (plotted["split"] == "val")]
    assert val["loss"].tolist() == pytest.approx(saved["classification"]["val_loss"])
    assert val["epoch"].tolist() == list(range(1, len(saved["classification"]["val_loss"]) + 1))
