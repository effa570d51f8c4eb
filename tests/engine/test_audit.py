"""End-to-end engine behaviour on a tiny audit: records, reuse, resume after a kill, determinism."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from reconaudit.engine.config import load_config
from reconaudit.engine.run import run_audit
from tests.engine.tiny import tiny_config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = run_audit(load_config(tiny_config()), out, report=False)
    return result


def test_records_have_one_row_per_test_study_and_cell(tiny_run):
    rec = pd.read_parquet(tiny_run.records_path)
    assert tiny_run.summary.ok
    n_cells = len(tiny_run.plan.cells)
    per_cell = rec.groupby("cell_id").size()
    assert len(per_cell) == n_cells
    assert per_cell.nunique() == 1  # every cell scores the same test studies
    assert set(rec["arm"]) == {"reconstruct", "direct"}
    assert (rec.groupby("cell_id")["study_id"].apply(lambda s: s.is_unique)).all()
    for col in ("psnr", "ssim", "input_psnr", "group:sex", "target:cardiomegaly", "score:cardiomegaly",
                "clean_score:cardiomegaly", "threshold:cardiomegaly"):
        assert col in rec.columns, col
    ident = rec[rec["reconstructor"] == "identity"]
    # identity reconstructs nothing: its PSNR is the input PSNR
    assert (ident["psnr"] - ident["input_psnr"]).abs().max() < 1e-6
    # clean scores are the same in every cell (one frozen model, the same clean images)
    wide = rec.pivot_table(index="study_id", columns="cell_id", values="clean_score:cardiomegaly")
    assert (wide.max(axis=1) - wide.min(axis=1)).max() == 0
    assert rec.loc[rec["arm"] == "direct", "psnr"].isna().all()
    # the clean model's threshold is the same in every cell, and the reconstruct arm's own threshold
    thr = rec.groupby("seed")["clean_threshold:cardiomegaly"].nunique()
    assert (thr == 1).all()
    r = rec[rec["arm"] == "reconstruct"]
    assert (r["clean_threshold:cardiomegaly"] == r["threshold:cardiomegaly"]).all()


def test_run_json_times_every_step_in_wall_and_cpu_seconds(tiny_run):
    timing = json.loads((tiny_run.run_dir / "run.json").read_text())["timing"]
    assert set(timing["steps"]) == set(tiny_run.plan.steps) == set(tiny_run.summary.computed)
    for sid, t in timing["steps"].items():
        assert t["wall_s"] == round(tiny_run.summary.seconds[sid], 3) and t["cpu_s"] >= 0
    fits = [t["cpu_s"] for sid, t in timing["steps"].items() if sid.startswith("fit_recon/")]
    assert fits and min(fits) > 0  # training burns CPU in this process
    for kind, k in timing["by_kind"].items():
        mine = [t for sid, t in timing["steps"].items() if sid.split("/")[0] == kind]
        assert k["steps"] == len(mine)
        assert k["cpu_s"] == pytest.approx(sum(t["cpu_s"] for t in mine), abs=1e-6)
        assert k["wall_s"] == pytest.approx(sum(t["wall_s"] for t in mine), abs=1e-6)


def test_second_run_recomputes_nothing(tiny_run):
    before = json.loads((tiny_run.run_dir / "run.json").read_text())["timing"]
    again = run_audit(load_config(tiny_config()), tiny_run.run_dir, report=False)
    assert again.summary.computed == []
    # a run that reuses every step keeps what each step cost when it was computed
    assert json.loads((tiny_run.run_dir / "run.json").read_text())["timing"] == before
    a = pd.read_parquet(tiny_run.records_path)
    b = pd.read_parquet(again.records_path)
    pd.testing.assert_frame_equal(a, b)


def test_same_config_same_records_bit_for_bit(tiny_run, tmp_path):
    other = run_audit(load_config(tiny_config()), tmp_path / "again", report=False)
    a = pd.read_parquet(tiny_run.records_path)
    b = pd.read_parquet(other.records_path)
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def _cli(cfg_path, out, env, **kw):
    cmd = [sys.executable, "-m", "reconaudit.cli", "run", str(cfg_path), "--out", str(out), "--no-report"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def _committed(store: Path) -> list[Path]:
    """Committed artifacts ``KIND/KEY/_COMMITTED``; not a marker inside ``.tmp/`` that a kill left before its rename."""
    return [p for p in store.glob("*/*/_COMMITTED") if not p.parts[-3].startswith(".")]


def test_kill_midway_then_resume_gives_same_records(tmp_path):
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config()))
    # every run in its own process with the same thread settings: bit-for-bit equality on CPU holds
    # for the same threading (reductions are ordered by threads)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "reference"
    assert _cli(cfg_path, ref, env).wait() == 0
    out = tmp_path / "killed"
    proc = _cli(cfg_path, out, env, start_new_session=True)
    store = out / "store"
    deadline = time.time() + 120
    # wait until some but not all steps are committed (the unet fits are the slow ones)
    while time.time() < deadline:
        done = _committed(store) if store.exists() else []
        if len(done) >= 5 or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "records.parquet").exists()
    partial = len(_committed(store))
    assert 0 < partial < 21
    assert _cli(cfg_path, out, env).wait() == 0
    log = (out / "run.log").read_text()
    assert f"{21 - partial} to compute" in log
    a = pd.read_parquet(ref / "records.parquet")
    b = pd.read_parquet(out / "records.parquet")
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert not any(Path(store / ".tmp").iterdir())


def test_plan_command_shows_done_cells(tiny_run, tmp_path):
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config()))
    from typer.testing import CliRunner

    from reconaudit.cli import app

    res = CliRunner().invoke(app, ["plan", str(cfg_path), "--out", str(tiny_run.run_dir)])
    assert res.exit_code == 0, res.output
    assert res.output.count("done") >= len(tiny_run.plan.cells)


def test_records_carry_penultimate_features_for_the_shortcut_probe(tiny_run):
    from reconaudit.report.depth import shortcut_table

    rec = pd.read_parquet(tiny_run.records_path)
    feats = [c for c in rec.columns if c.startswith("feature:")]
    assert feats and all(f"clean_{c}" in rec.columns for c in feats)
    assert rec[feats].notna().all().all()
    # the clean model's features of the clean images are the same in every reconstruct cell
    recon = rec[rec["arm"] == "reconstruct"]
    spread = recon.groupby("study_id")["clean_feature:0"].agg(lambda s: s.max() - s.min())
    assert spread.max() < 1e-6
    tab = shortcut_table(rec, {"seed": 0, "depth_resamples": 20})
    assert set(tab["input"]) == {"clean", "recon", "change"}
    arms = tab[tab["input"] != "change"]
    assert arms["estimate"].between(0, 1).all() and set(arms["attribute"]) >= {"sex"}
