"""`reconaudit check` / `plan`: data errors surface before any work, with the message `run` gives; never retried."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from reconaudit.cli import app
from reconaudit.cohorts import CohortError
from reconaudit.cohorts.chexpert import load_chexpert
from reconaudit.engine.config import load_config
from reconaudit.engine.run import run_audit

_spec = importlib.util.spec_from_file_location(
    "reconaudit_test_cohort_fixtures", Path(__file__).parents[1] / "cohorts" / "fixtures.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)
runner = CliRunner()


def _write(tmp_path: Path, cohort: dict, name: str = "c.yaml", **extra) -> Path:
    cfg = {"name": "check", "device": "cpu", "cohorts": [{**cohort, "degradations": cohort.get("degradations") or
                                                          [{"name": "lowdose-xray", "levels": [1000]}]}],
           "reconstructors": [{"name": "identity"}], **extra}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_check_passes_without_decoding_images(tmp_path, monkeypatch):
    from reconaudit.cohorts import _io

    root = fx.write_chexpert(tmp_path)
    path = _write(tmp_path, {"name": "chexpert", "params": {"root": str(root), "size": 16}})

    def no_decoding(*a, **k):
        raise AssertionError("check decoded an image")

    monkeypatch.setattr(_io, "_read_raster", no_decoding)
    monkeypatch.setattr(_io, "_read_dicom", no_decoding)
    res = runner.invoke(app, ["check", str(path)], terminal_width=250)
    assert res.exit_code == 0, res.output
    # 9 frontal rows; the corrupt JPEG's header already fails, so it is the same named drop as in run
    assert "data check passed" in res.output and "unreadable image: 1" in res.output
    assert "chexpert (cohorts.0): 8 studies, 7 patients" in res.output


def test_check_and_plan_fail_with_the_run_message(tmp_path):
    root = fx.write_chexpert(tmp_path)
    df = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    df.loc[2, "Edema"] = "yes"
    df.to_csv(root / "yesno.csv", index=False)
    with pytest.raises(CohortError) as e:
        load_chexpert(root=root, csv="yesno.csv")
    msg = str(e.value)
    assert "row 2 (line 4), column 'Edema': value 'yes'" in msg
    path = _write(tmp_path, {"name": "chexpert", "params": {"root": str(root), "csv": "yesno.csv"}})
    for cmd in (["check", str(path)], ["plan", str(path), "--out", str(tmp_path / "p")]):
        res = runner.invoke(app, cmd, terminal_width=400)
        assert res.exit_code == 1, res.output
        flat = " ".join(res.output.split())
        assert "data error" in flat and "value 'yes' is not one of [1, 0, -1]" in flat
        assert "Traceback" not in res.output
    res = runner.invoke(app, ["plan", str(path), "--no-check", "--out", str(tmp_path / "p")], terminal_width=200)
    assert res.exit_code == 0 and "cells" in res.output
    # run: the cohort step fails with the same message, once: a data error is not retried
    cfg = load_config(path)
    cfg.execution.retries = 3
    out = run_audit(cfg, tmp_path / "run", report=False)
    assert [f.attempts for f in out.summary.failed] == [1]
    assert msg in out.summary.failed[0].error


def test_check_task_without_labels(tmp_path):
    root = fx.write_fastmri(tmp_path, n_files=3)
    deg = [{"name": "kspace", "levels": [4]}]
    ok = _write(tmp_path, {"name": "fastmri", "params": {"root": str(root), "size": 8}, "degradations": deg})
    res = runner.invoke(app, ["check", str(ok)], terminal_width=250)
    assert res.exit_code == 0 and "none" in res.output, res.output
    bad = _write(tmp_path, {"name": "fastmri", "params": {"root": str(root), "size": 8}, "degradations": deg,
                            "tasks": ["classification"]}, name="bad.yaml")
    res = runner.invoke(app, ["check", str(bad)], terminal_width=400)
    assert res.exit_code == 1
    assert "cohorts.0.tasks.classification: cohort 'fastmri' has no classification labels" in " ".join(
        res.output.split())
