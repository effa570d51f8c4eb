"""Damaged artifacts and run-directory copies are detected, set aside and recomputed, never read."""

import shutil

import numpy as np
import pandas as pd
import pytest

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
        if s.kind == kind and (name is None or s.spec.get("reconstructor") == name):
            return run / "store" / kind / s.key
    raise AssertionError(kind)


def _zero_range(f, frac=0.4):
    data = bytearray(f.read_bytes())
    a = len(data) // 2 - int(len(data) * frac / 2)
    data[a : a + int(len(data) * frac)] = bytes(int(len(data) * frac))
    f.write_bytes(bytes(data))


def _truncate(f):
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])


@pytest.mark.parametrize("case", ["zeroed-recon", "truncated-records", "truncated-weights", "truncated-checkpoint",
                                  "truncated-example"])
def test_damage_is_detected_recomputed_and_the_records_equal_a_lone_run(tmp_path, lone_run, case, caplog):
    src, want, plan = lone_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    if case == "zeroed-recon":
        _zero_range(_artifact(run, plan, "reconstruct", "unet") / "recon.safetensors")
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
