"""A reconstruction-quality audit without any diagnostic model (``tasks: none``, fastMRI without labels)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reconaudit.engine.config import ConfigError, load_config
from reconaudit.engine.plan import NO_TASK, build_plan
from reconaudit.engine.run import run_audit

_spec = importlib.util.spec_from_file_location(
    "reconaudit_test_cohort_fixtures", Path(__file__).parents[1] / "cohorts" / "fixtures.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)


def _cfg(root: Path, tasks=None, **extra) -> dict:
    cohort = {"name": "fastmri", "params": {"root": str(root), "size": 16, "slices": 2, "metadata_csv": "meta.csv",
                                            "split_fractions": [0.4, 0.2, 0.4]},
              "degradations": [{"name": "kspace", "levels": [4]}]}
    if tasks is not None:
        cohort["tasks"] = tasks
    return {"name": "recon-only", "seeds": [0], "device": "cpu", "cohorts": [cohort],
            "reconstructors": [{"name": "identity"}], "analysis": {"n_resamples": 20}, **extra}


@pytest.fixture(scope="module")
def fastmri_root(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("fastmri_recon_only")
    root = fx.write_fastmri(tmp, n_files=6)
    files = sorted(p.stem for p in root.glob("*.h5"))
    pd.DataFrame({"file": files, "sex": ["F", "male", "f", "M", "Female", "M"]}).to_csv(root / "meta.csv", index=False)
    return root


@pytest.mark.parametrize("tasks", [None, "none", []])
def test_plan_has_no_task_steps(fastmri_root, tasks):
    cfg = load_config(_cfg(fastmri_root, tasks))
    plan = build_plan(cfg)
    kinds = sorted({s.kind for s in plan.steps.values()})
    assert kinds == ["cohort", "degrade", "fit_recon", "reconstruct", "score"]
    assert {c.task for c in plan.cells} == {NO_TASK} and {c.arm for c in plan.cells} == {"reconstruct"}


def test_tasks_none_on_a_labelled_cohort_and_task_list():
    base = {"name": "chest-xray", "params": {"n_studies": 20, "size": 16},
            "degradations": [{"name": "lowdose-xray", "levels": [1000]}]}
    cfg = {"cohorts": [dict(base, tasks="none")], "reconstructors": [{"name": "identity"}]}
    plan = build_plan(load_config(cfg))
    assert not [s for s in plan.steps.values() if s.kind in ("task_model", "predict_clean", "direct_model")]
    listed = build_plan(load_config({**cfg, "cohorts": [dict(base, tasks=["classification"])]}))
    tm = [s for s in listed.steps.values() if s.kind == "task_model"]
    assert [s.spec.arch for s in tm] == ["small-cnn"]
    every = build_plan(load_config({**cfg, "cohorts": [dict(base, tasks={})]}))  # {} keeps meaning "all tasks"
    assert [s.spec.task for s in every.steps.values() if s.kind == "task_model"] == ["classification"]
    with pytest.raises(ConfigError, match="'eodd' trains against diagnostic models"):
        load_config({**cfg, "mitigations": [{"name": "eodd"}]})


def test_recon_only_fastmri_audit_end_to_end(fastmri_root, tmp_path):
    from reconaudit.cohorts.fastmri import load_fastmri
    from reconaudit.metrics import psnr

    cfg = load_config(_cfg(fastmri_root))
    res = run_audit(cfg, tmp_path / "run")
    assert res.summary.ok, res.summary.failed
    rec = pd.read_parquet(res.records_path)
    cohort = load_fastmri(root=fastmri_root, size=16, slices=2, metadata_csv="meta.csv",
                          split_fractions=(0.4, 0.2, 0.4))
    test = cohort.split("test")
    assert len(rec) == len(test) > 0
    assert not [c for c in rec.columns if c.startswith(("score:", "clean_score:", "target:"))]
    assert set(rec["group:sex"]) <= {"F", "M"}  # synonyms merged before they reach the records
    assert rec[["psnr", "ssim", "nmse", "input_psnr"]].notna().all().all()
    # identity reconstruction = the zero-filled input: its PSNR is the input's, and matches an oracle
    assert np.allclose(rec["psnr"], rec["input_psnr"])
    from reconaudit.engine.run import store_for
    from reconaudit.engine.steps import StepContext, load_degraded

    ids = test.table["study_id"].astype(str).tolist()
    deg_key = next(s.key for s in res.plan.steps.values() if s.kind == "degrade")
    deg = load_degraded(StepContext(store_for(cfg, tmp_path / "run")), deg_key).subset(cohort.indices("test"))
    expect = np.asarray(psnr(deg.image.clamp(0, 1).numpy(), test.images.numpy()))
    got = rec.set_index("study_id").loc[ids, "input_psnr"].to_numpy()
    assert np.allclose(got, expect, atol=1e-4)
    card = (tmp_path / "run" / "cohorts" / "fastmri" / "data_card.md").read_text()
    assert "No task metrics" in card and "labels_csv" in card
    # image quality per group: the mean PSNR of each sex group equals the records'
    assert "## Image quality by group" in card
    for sex, g in rec.groupby("group:sex"):
        line = next(ln for ln in card.splitlines() if ln.startswith(f"| identity | none | 4 | sex | {sex} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert int(cells[5]) == len(g) and float(cells[6]) == pytest.approx(g["psnr"].mean(), abs=0.005)
    assert res.report_path is not None and "No task metrics" in res.report_path.read_text()
