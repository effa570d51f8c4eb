"""The README's extension recipes: each room's minimal subclass (tests/engine/recipes.py),
registered with its one line, runs through one tiny audit and gives its closed-form answer."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from reconaudit.arrays import open_arrays
from reconaudit.cohorts import COHORTS, make_cohort
from reconaudit.engine.config import load_config
from reconaudit.engine.run import run_audit
from reconaudit.metrics import psnr
from reconaudit.mitigation import MITIGATIONS
from reconaudit.physics import DEGRADATIONS
from reconaudit.recon import RECONSTRUCTORS
from reconaudit.tasks import TASK_MODELS
from tests.engine import recipes

GAIN = 0.5


@pytest.fixture(scope="module")
def audit(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    # the one registration line of each recipe
    mp.setitem(COHORTS, recipes.BrightSpotCohort.name, recipes.BrightSpotCohort)
    mp.setitem(DEGRADATIONS, recipes.DimmedNoise.name, recipes.DimmedNoise)
    mp.setitem(RECONSTRUCTORS, recipes.GainReconstructor.name, recipes.GainReconstructor)
    mp.setitem(TASK_MODELS["classification"], "mean-intensity", recipes.MeanIntensityClassifier)
    mp.setitem(MITIGATIONS, recipes.UpweightGroup.name, recipes.UpweightGroup)
    recipes.GainReconstructor.seen_study_ids.clear()
    raw = {
        "name": "recipes",
        "seeds": [0],
        "device": "cpu",
        "cohorts": [{
            "name": "bright-spot",
            "params": {"n_studies": 60, "size": 16},
            "tasks": {"classification": {"arch": "mean-intensity"}},
            "degradations": [{"name": "dimmed-noise", "levels": [GAIN], "params": {"sigma": 0.02}}],
        }],
        "reconstructors": [{"name": "gain"}],
        "mitigations": [{"name": "upweight-group", "strengths": [3.0], "params": {"value": "F"}}],
        "direct": {"enabled": False},
        "evaluation": {"examples": 0},
        "analysis": {"n_resamples": 20},
    }
    try:
        result = run_audit(load_config(raw), tmp_path_factory.mktemp("recipes"), report=False)
        yield result, pd.read_parquet(result.records_path)
    finally:
        mp.undo()


def _artifact(result, kind: str, **match) -> tuple[dict, object]:
    """The info.json and directory of the one ``kind`` step whose spec matches ``match``."""
    steps = [s for s in result.plan.steps.values() if s.kind == kind
             and all(getattr(s.spec, k, None) == v for k, v in match.items())]
    assert len(steps) == 1, steps
    d = result.run_dir / "store" / kind / steps[0].key
    info = json.loads((d / "info.json").read_text()) if (d / "info.json").exists() else {}
    return info, d


def _cohort():
    return make_cohort("bright-spot", n_studies=60, size=16, seed=0)


def test_cohort_recipe_builds_the_studies_the_records_carry(audit):
    result, rec = audit
    assert result.summary.ok, [f.error for f in result.summary.failed]
    te = _cohort().split("test")
    expect = te.table.set_index("study_id")
    for _, cell in rec.groupby("cell_id"):
        got = cell.set_index("study_id")
        assert sorted(got.index) == sorted(expect.index)
        np.testing.assert_array_equal(got.loc[expect.index, "target:spot"], expect["spot"])
        assert (got.loc[expect.index, "group:sex"] == expect["sex"]).all()


def test_cohort_recipe_streams_the_same_studies_written_and_in_memory(audit, tmp_path):
    """The recipe defines only ``stream``: ``build`` (in memory) and ``write`` (shard by shard) follow
    from it and hold the same bits, whatever the shard size; the spot is where the label says."""
    from reconaudit.cohorts import write_cohort
    from reconaudit.cohorts.base import Cohort

    mem = _cohort()
    write_cohort("bright-spot", tmp_path / "c", shard_studies=8, n_studies=60, size=16, seed=0)
    disk = Cohort.load(tmp_path / "c")
    torch.testing.assert_close(torch.as_tensor(disk.images[list(range(60))]), mem.images, rtol=0, atol=0)
    pd.testing.assert_frame_equal(disk.table, mem.table)
    centre = mem.images[:, 0, 6:10, 6:10].mean(dim=(1, 2))
    np.testing.assert_array_equal((centre > 0.55).numpy(), mem.table["spot"].to_numpy() == 1)


def test_degradation_recipe_gives_the_input_psnr_of_its_formula(audit):
    _, rec = audit
    te = _cohort().split("test")
    deg = recipes.DimmedNoise(GAIN, sigma=0.02)
    from reconaudit.seeding import study_seeds

    ids = te.table["study_id"].astype(str).tolist()
    full = _cohort()
    all_ids = full.table["study_id"].astype(str).tolist()
    seeds = dict(zip(all_ids, study_seeds(f"degrade/dimmed-noise/{GAIN}", 0, all_ids), strict=True))
    x = deg(te.images, [seeds[i] for i in ids]).image
    expect = pd.Series(psnr(x.numpy(), te.images.numpy()), index=ids)
    cell = rec[rec["mitigation"] == "none"].set_index("study_id")
    np.testing.assert_allclose(cell.loc[ids, "input_psnr"], expect.loc[ids], rtol=1e-5)


def test_reconstructor_recipe_fits_its_least_squares_gain_and_gets_study_ids(audit):
    result, rec = audit
    full = _cohort()
    tr = full.indices("train")
    info, d = _artifact(result, "degrade")
    x = open_arrays(d / "degraded.zarr")["image"][tr].double().flatten(1)
    y = full.images[torch.as_tensor(tr)].double().flatten(1)
    _, fit = _artifact(result, "fit_recon", mitigation=None)
    a = float(load_file(str(fit / "weights.safetensors"))["a"])
    assert a == pytest.approx(float((x * y).sum() / (x * x).sum()), rel=1e-6)
    assert a == pytest.approx(1 / GAIN, rel=0.05)  # undoes the dimming
    te_ids = full.table["study_id"].astype(str).to_numpy()[full.indices("test")].tolist()
    assert sorted(recipes.GainReconstructor.seen_study_ids) == sorted(te_ids * 2)  # both cells, every test study
    cell = rec[rec["mitigation"] == "none"]
    assert (cell["psnr"] > cell["input_psnr"]).all()


def test_diagnostic_model_recipe_scores_are_its_formula(audit):
    result, rec = audit
    full = _cohort()
    _, d = _artifact(result, "task_model")
    state = load_file(str(d / "model.safetensors"))
    c, s = float(state["c"]), float(state["s"])
    tr = full.images[torch.as_tensor(full.indices("train"))].flatten(1).mean(1)
    assert c == pytest.approx(float(tr.mean()), rel=1e-6) and s == pytest.approx(float(tr.std()), rel=1e-6)
    te = full.split("test")
    expect = pd.Series(1 / (1 + np.exp(-((te.images.flatten(1).mean(1).double().numpy() - c) / s))),
                       index=te.table["study_id"])
    got = rec.drop_duplicates("study_id").set_index("study_id")
    np.testing.assert_allclose(got.loc[expect.index, "clean_score:spot"], expect, rtol=1e-5)


def test_mitigation_recipe_weights_the_fit_as_declared(audit):
    result, rec = audit
    assert set(rec["mitigation"]) == {"none", "upweight-group"}
    full = _cohort()
    tr = full.indices("train")
    _, d = _artifact(result, "degrade")
    x = open_arrays(d / "degraded.zarr")["image"][tr].double().flatten(1)
    y = full.images[torch.as_tensor(tr)].double().flatten(1)
    w = torch.as_tensor(1.0 + 3.0 * (full.table["sex"].to_numpy()[tr] == "F"), dtype=torch.float64)
    fits = [s for s in result.plan.steps.values() if s.kind == "fit_recon" and s.spec.mitigation]
    assert len(fits) == 1 and fits[0].spec.mitigation.base is None  # trains from scratch
    a = float(load_file(str(result.run_dir / "store" / "fit_recon" / fits[0].key / "weights.safetensors"))["a"])
    assert a == pytest.approx(float((w * (x * y).sum(1)).sum() / (w * (x * x).sum(1)).sum()), rel=1e-6)
    info = json.loads((result.run_dir / "store" / "fit_recon" / fits[0].key / "info.json").read_text())
    assert info["history"]["mitigation"] == {"name": "upweight-group", "strength": 3.0}


def test_a_reconstructor_without_the_engines_keywords_is_refused_when_defined():
    from reconaudit.recon.base import Reconstructor

    with pytest.raises(TypeError, match=r"Old\.reconstruct must accept .*study_ids=\.\.\."):
        class Old(Reconstructor):  # the signature documented before study_ids
            def reconstruct(self, degraded, *, seeds=None, samples=1):
                return degraded.image

    with pytest.raises(TypeError, match="abstract"):
        class NoReconstruct(Reconstructor):
            pass

        NoReconstruct()
