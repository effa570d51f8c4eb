"""The store's guarantees through whole audits: damaged artifacts and run-directory copies are
detected, set aside and recomputed, never read; a second run is refused; the report is atomic."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import reconaudit
from reconaudit.engine.config import load_config
from reconaudit.engine.records import KEY_COLUMNS
from reconaudit.engine.run import run_audit
from tests.engine.tiny import tiny_config


def _raw():
    raw = tiny_config(direct={"enabled": False})
    raw["cohorts"][0]["params"] = {"n_studies": 48, "size": 32}
    raw["cohorts"][0]["degradations"][0]["levels"] = [3000]
    return raw


def _sorted(df):
    return df.sort_values(["cell_id", "study_id"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def lone_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("lone") / "run"
    res = run_audit(load_config(_raw()), run, report=False)
    assert res.summary.ok, [f.error for f in res.summary.failed]
    return run, _sorted(pd.read_parquet(res.records_path)), res.plan


def _artifact(run, plan, kind, name=None):
    for s in plan.steps.values():
        if s.kind == kind and (name is None or getattr(s.spec, "reconstructor", None) == name):
            return run / "store" / kind / s.key
    raise AssertionError(kind)


def _zero_range(f, frac=0.4):
    data = bytearray(f.read_bytes())
    a = len(data) // 2 - int(len(data) * frac / 2)
    data[a : a + int(len(data) * frac)] = bytes(int(len(data) * frac))
    f.write_bytes(bytes(data))


def _recon_shard(d):
    """The first shard file of a reconstruct artifact's ``mean`` array (the study store, zarr)."""
    return sorted(p for p in (d / "recon.zarr" / "mean" / "c").rglob("*") if p.is_file())[0]


def _truncate(f):
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])


@pytest.mark.parametrize("case", ["zeroed-recon", "truncated-records", "truncated-weights", "truncated-checkpoint",
                                  "truncated-example"])
def test_damage_is_detected_recomputed_and_the_records_equal_a_lone_run(tmp_path, lone_run, case, caplog):
    src, want, plan = lone_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    if case == "zeroed-recon":
        _zero_range(_recon_shard(_artifact(run, plan, "reconstruct", "unet")))
        expect = ["reconstruct"]
    elif case == "truncated-records":
        _truncate(_artifact(run, plan, "score", "unet") / "records.parquet")
        expect = ["score"]
    elif case == "truncated-weights":
        _truncate(_artifact(run, plan, "fit_recon", "unet") / "weights.safetensors")
        expect = ["fit_recon"]
    elif case == "truncated-checkpoint":
        # a killed fit left a damaged checkpoint: the first attempt fails on it, the checkpoint is set
        # aside, the retry trains afresh and writes the same weights as the lone run
        fit = _artifact(run, plan, "fit_recon", "unet")
        shutil.rmtree(fit)
        ckpt = run / "store" / ".checkpoints" / "fit_recon" / fit.name
        ckpt.mkdir(parents=True)
        (ckpt / "checkpoint.safetensors").write_bytes((src / "store" / "fit_recon" / fit.name /
                                                       "weights.safetensors").read_bytes()[:200])
        expect = ["fit_recon"]
    else:
        ex = sorted((run / "examples").glob("*.npz"))[0]
        _truncate(ex)
        expect = []
    with caplog.at_level("WARNING"):
        res = run_audit(load_config(_raw()), run, report=False)
    assert res.summary.ok, [f.error for f in res.summary.failed]
    assert sorted(s.split("/")[0] for s in res.summary.computed) == expect
    got = _sorted(pd.read_parquet(res.records_path))
    pd.testing.assert_frame_equal(got[want.columns], want)
    assert set(KEY_COLUMNS) <= set(got.columns)
    if expect:
        moved = sorted(p.name for p in (run / "store" / ".quarantine").iterdir())
        assert len(moved) == len(expect) and str(run / "store" / ".quarantine") in caplog.text
    if case.startswith(("truncated-weights", "truncated-checkpoint")):
        fit = _artifact(run, plan, "fit_recon", "unet")
        assert (fit / "weights.safetensors").read_bytes() == (src / "store" / "fit_recon" / fit.name /
                                                              "weights.safetensors").read_bytes()
        assert moved[0].startswith("checkpoint-" if case == "truncated-checkpoint" else "fit_recon-")
    if case == "truncated-example":
        assert "copied again" in caplog.text
    for f in (run / "examples").glob("*.npz"):
        with np.load(f) as z:  # every example file is whole again
            assert "clean" in z.files


# ------------------------------------------------------------------------- the run lock
def test_a_second_run_on_the_directory_is_refused_and_the_first_finishes_as_a_lone_run(tmp_path, lone_run):
    _, want, _ = lone_run
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(_raw()))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(reconaudit.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "reconaudit.cli", "run", str(cfg), "--out", str(run), "--no-report"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    held = False
    while time.time() < deadline and first.poll() is None and not held:
        if (run / ".lock").exists() and str(first.pid) in (run / ".lock").read_text():
            # hold the first run still while the second tries: it keeps the lock, alive but paused, so the
            # outcome does not depend on how fast the machine finishes the tiny audit
            os.kill(first.pid, signal.SIGSTOP)
            held = (run / ".lock").exists() and str(first.pid) in (run / ".lock").read_text()
            if not held:
                os.kill(first.pid, signal.SIGCONT)
        time.sleep(0.05)
    assert held, "the first run ended before the second started"
    try:
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out = " ".join((second.stdout + second.stderr).split())
    assert second.returncode == 2, out
    assert f"in use by another run (pid {first.pid}" in out and "started" in out
    assert "Traceback" not in out
    assert first.wait(timeout=300) == 0, first.stdout.read()
    got = _sorted(pd.read_parquet(run / "records.parquet"))
    pd.testing.assert_frame_equal(got[want.columns], want)
    log = (run / "run.log").read_text()
    assert log.count("plan: 2 cells") == 1  # the refused run wrote nothing into the run's log


# ------------------------------------------------------------------------- the atomic report
def test_a_kill_during_the_report_leaves_no_truncated_report_and_a_rerun_completes_it(tmp_path, lone_run,
                                                                                       monkeypatch):
    import reconaudit.report.html as html

    src, _, _ = lone_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    real = html.render_html

    def killed(analysis, meta, figures, out_path, **kwargs):
        Path(out_path).write_text("<!doctype html><html><body>half")
        raise KeyboardInterrupt  # the process is stopped mid-write

    monkeypatch.setattr(html, "render_html", killed)
    with pytest.raises(KeyboardInterrupt):
        run_audit(load_config(_raw()), run, report=True)
    assert not (run / "report").exists()  # no half report: none at all
    assert not list(run.glob(".report-*"))
    monkeypatch.setattr(html, "render_html", real)
    res = run_audit(load_config(_raw()), run, report=True)
    text = res.report_path.read_text()
    assert text.rstrip().endswith("</html>") and "half" not in text
    stamp = json.loads((run / "report" / ".fingerprint").read_text())
    assert set(stamp["files"]) >= {"report.html", "tables/summary.md"}
    # a damaged report file is rebuilt, not declared up to date
    res.report_path.write_text(text[: len(text) // 2])
    res = run_audit(load_config(_raw()), run, report=True)
    again = res.report_path.read_text()
    assert again.rstrip().endswith("</html>") and abs(len(again) - len(text)) < 100


# ------------------------------------------------------------------------- thread counts
def test_resuming_with_another_thread_count_says_that_the_store_mixes(tmp_path, lone_run, caplog):
    import torch
    from typer.testing import CliRunner

    from reconaudit.cli import app

    src, want, plan = lone_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    before = torch.get_num_threads()
    shutil.rmtree(_artifact(run, plan, "score", "identity"))
    torch.set_num_threads(before + 1)
    try:
        with caplog.at_level("WARNING"):
            res = run_audit(load_config(_raw()), run, report=False)
    finally:
        torch.set_num_threads(before)
    assert [s.split("/")[0] for s in res.summary.computed] == ["score"]
    meta = json.loads((run / "run.json").read_text())
    assert meta["torch_threads"] == {str(before): len(plan.steps) - 1, str(before + 1): 1}
    assert "different torch thread counts" in caplog.text
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(_raw()))
    out = CliRunner().invoke(app, ["plan", str(cfg), "--out", str(run)], terminal_width=250)
    assert out.exit_code == 0 and "different torch thread counts" in " ".join(out.output.split())


def test_execution_threads_fixes_the_count_of_every_step_whatever_the_process_default(tmp_path, lone_run):
    import torch

    src, want, plan = lone_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    before = torch.get_num_threads()
    shutil.rmtree(_artifact(run, plan, "score", "identity"))
    raw = _raw()
    raw.setdefault("execution", {})["threads"] = before  # the count the lone run used
    torch.set_num_threads(before + 1)  # another machine, or another --workers
    try:
        res = run_audit(load_config(raw), run, report=False)
        assert torch.get_num_threads() == before + 1  # the process setting is restored after each step
    finally:
        torch.set_num_threads(before)
    assert [s.split("/")[0] for s in res.summary.computed] == ["score"]
    meta = json.loads((run / "run.json").read_text())
    assert meta["torch_threads"] == {str(before): len(plan.steps)}  # nothing mixed
    pd.testing.assert_frame_equal(_sorted(pd.read_parquet(run / "records.parquet")), want, check_exact=True)


def test_report_command_restores_or_sets_aside_a_damaged_example(tmp_path, lone_run):
    from typer.testing import CliRunner

    from reconaudit.cli import app

    src, _, _ = lone_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    exs = sorted((run / "examples").glob("*.npz"))
    good = exs[0].read_bytes()
    _truncate(exs[0])
    res = CliRunner().invoke(app, ["report", str(run)])
    assert res.exit_code == 0, res.output
    assert exs[0].read_bytes() == good  # copied again from the store
    shutil.rmtree(run / "store")
    _truncate(exs[0])
    res = CliRunner().invoke(app, ["report", str(run)])
    assert res.exit_code == 0, res.output
    assert not exs[0].exists() and exs[0].with_suffix(".npz.damaged").exists()
    assert (run / "report" / "report.html").read_text().rstrip().endswith("</html>")
