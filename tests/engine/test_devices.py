"""Device selection and GPU utilisation reporting (nvidia-smi replaced by a fake script on PATH)."""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

import pytest
import torch

from reconaudit.devices import GpuMonitor, gpu_monitor, parse_nvidia_smi_utilization, resolve_device


def fake_nvidia_smi(bin_dir: Path, lines: list[str], args_file: Path | None = None) -> Path:
    """Write an executable ``nvidia-smi`` that prints ``lines`` (and records its arguments)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "nvidia-smi"
    record = f'echo "$@" >> "{args_file}"\n' if args_file else ""
    body = "".join(f"echo '{line}'\n" for line in lines)
    exe.write_text(f"#!/bin/sh\n{record}{body}")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return exe


def _wait_for(mon: GpuMonitor, n: int, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while len(mon.samples) < n and time.time() < deadline:
        time.sleep(0.02)


def test_parse_nvidia_smi_utilization():
    # one line per GPU; units and blank lines tolerated, unreadable lines ([N/A]) dropped
    assert parse_nvidia_smi_utilization("45\n100\n") == [45.0, 100.0]
    assert parse_nvidia_smi_utilization("  7 %\n\n 0\n[N/A]\n") == [7.0, 0.0]
    assert parse_nvidia_smi_utilization("") == []
    assert parse_nvidia_smi_utilization("No devices were found\n") == []


def test_gpu_monitor_samples_fake_nvidia_smi(tmp_path, monkeypatch):
    args_file = tmp_path / "args.txt"
    fake_nvidia_smi(tmp_path / "bin", ["30", "70"], args_file)  # two GPUs at 30 % and 70 %
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with GpuMonitor(interval=0.02) as mon:
        _wait_for(mon, 6)
    assert len(mon.samples) >= 6 and len(mon.samples) % 2 == 0
    assert mon.samples[:4] == [30.0, 70.0, 30.0, 70.0]
    assert mon.mean == 50.0
    calls = args_file.read_text().splitlines()
    assert calls[0] == "--query-gpu=utilization.gpu --format=csv,noheader,nounits"
    assert len(calls) == len(mon.samples) // 2
    n = len(mon.samples)
    time.sleep(0.1)
    assert len(mon.samples) == n  # stopped on exit


def test_gpu_monitor_without_nvidia_smi_reports_nothing(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with GpuMonitor(interval=0.01) as mon:
        time.sleep(0.05)
    assert mon.samples == [] and mon.mean is None


def test_step_monitor_logs_utilisation_on_cuda_only(tmp_path, monkeypatch, caplog):
    fake_nvidia_smi(tmp_path / "bin", ["64"])
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    caplog.set_level(logging.INFO, logger="reconaudit.gpu")
    with gpu_monitor("cuda:0", "fit_recon/abc") as g:
        _wait_for(g.mon, 1)
    msgs = [r.getMessage() for r in caplog.records if r.name == "reconaudit.gpu"]
    assert len(msgs) == 1
    assert msgs[0].startswith("GPU utilisation during fit_recon/abc: 64% (mean of ")
    caplog.clear()
    with gpu_monitor("cpu", "fit_recon/abc") as g:
        assert g.mon is None
    assert not [r for r in caplog.records if r.name == "reconaudit.gpu"]


def test_step_monitor_says_na_when_nvidia_smi_prints_no_numbers(tmp_path, monkeypatch, caplog):
    fake_nvidia_smi(tmp_path / "bin", ["No devices were found"])
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    caplog.set_level(logging.INFO, logger="reconaudit.gpu")
    with gpu_monitor("cuda", "score/x"):
        time.sleep(0.05)
    assert [r.getMessage() for r in caplog.records if r.name == "reconaudit.gpu"] == [
        "GPU utilisation during score/x: n/a"
    ]


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tiny_audit_on_gpu_with_mixed_precision_reports_utilisation(tmp_path):
    from reconaudit.engine.config import load_config
    from reconaudit.engine.run import run_audit
    from tests.engine.tiny import tiny_config

    cfg = tiny_config(device="auto", execution={"mixed_precision": True},
                      reconstructors=[{"name": "identity"}, {"name": "unet", "params": {"epochs": 1}}])
    res = run_audit(load_config(cfg), tmp_path, report=False)
    assert res.summary.ok, res.summary.failed
    log = (tmp_path / "run.log").read_text()
    assert "GPU utilisation during fit_recon/" in log and "GPU utilisation during task_model/" in log
