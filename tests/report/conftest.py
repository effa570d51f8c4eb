"""Shared fixtures: one fake run, its analysis and its built report, made once per test session."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_records import EVIL_SEX, make_fake_run  # noqa: E402


@pytest.fixture(scope="session")
def fake_run(tmp_path_factory) -> Path:
    """A fake run whose group names are markup (to test escaping)."""
    return make_fake_run(tmp_path_factory.mktemp("run"), n_patients=20, sex_groups=EVIL_SEX, n_resamples=60,
                         failures=[{"step": "recon/<i>gan</i>", "error": "CUDA <b>out of memory</b> & more"}])


@pytest.fixture(scope="session")
def fake_inputs(fake_run) -> tuple[pd.DataFrame, dict]:
    return pd.read_parquet(fake_run / "records.parquet"), json.loads((fake_run / "run.json").read_text())


@pytest.fixture(scope="session")
def analysis(fake_inputs):
    from reconaudit.report import analyse

    records, meta = fake_inputs
    return analyse(records, meta)


@pytest.fixture(scope="session")
def built_report(fake_run) -> Path:
    from reconaudit.report import build_report

    return build_report(fake_run)
