"""A plug-in model, a folder of precomputed reconstructions, re-chosen thresholds and a worker
pool, each through a whole (tiny) audit."""

import numpy as np
import pandas as pd
import pytest

from reconaudit.cohorts import make_cohort
from reconaudit.engine.config import load_config
from reconaudit.engine.run import run_audit
from reconaudit.metrics import choose_threshold, psnr
from tests.engine.tiny import tiny_config

COHORT_PARAMS = {"n_studies": 48, "size": 32}


def _config(reconstructors, **kw):
    raw = tiny_config(reconstructors=reconstructors, direct={"enabled": False}, **kw)
    raw["cohorts"][0]["params"] = dict(COHORT_PARAMS)
    raw["cohorts"][0]["degradations"][0]["levels"] = [3000]
    return raw


@pytest.fixture(scope="module")
def cohort():
    return make_cohort("chest-xray", seed=0, **COHORT_PARAMS)


def test_plugin_callable_and_folder_run_through_an_audit(tmp_path, cohort):
    folder = tmp_path / "recons"
    folder.mkdir()
    # the user's precomputed reconstructions: 0.9 x the clean image, one .npy per study id
    for sid, img in zip(cohort.table["study_id"], cohort.images[:, 0].numpy(), strict=True):
        np.save(folder / f"{sid}.npy", (0.9 * img).astype(np.float32))
    raw = _config([
        {"name": "plugin", "label": "halve", "params": {"target": "tests.engine.plugin_recon:build",
                                                          "factory_kwargs": {"factor": 0.5}, "trainable": False}},
        {"name": "folder", "label": "precomputed", "params": {"path": str(folder)}},
    ])
    result = run_audit(load_config(raw), tmp_path / "run", report=False)
    assert result.summary.ok, [f.error for f in result.summary.failed]
    rec = pd.read_parquet(result.records_path)
    assert set(rec["reconstructor"]) == {"halve", "precomputed"}
    te = cohort.split("test")
    order = {sid: i for i, sid in enumerate(te.table["study_id"])}
    pre = rec[rec["reconstructor"] == "precomputed"].sort_values("study_id", key=lambda s: s.map(order))
    expect = psnr(0.9 * te.images.numpy(), te.images.numpy())
    np.testing.assert_allclose(pre["psnr"].to_numpy(), expect, rtol=1e-5)
    half = rec[rec["reconstructor"] == "halve"]
    # halving the input image: its PSNR is below the input's for every study
    assert (half["psnr"] < half["input_psnr"]).all()


def test_missing_study_in_folder_is_reported_with_its_id(tmp_path, cohort):
    folder = tmp_path / "recons"
    folder.mkdir()
    raw = _config([{"name": "folder", "params": {"path": str(folder)}}])
    result = run_audit(load_config(raw), tmp_path / "run", report=False)
    assert not result.summary.ok
    err = result.summary.failed[0].error
    assert str(folder) in err and "study" in err.lower()
    assert "Traceback" in (tmp_path / "run" / "run.log").read_text()


def test_rechoose_on_test_uses_thresholds_from_the_test_set(tmp_path):
    raw = _config([{"name": "identity"}], evaluation={"examples": 0, "rechoose_on_test": True})
    rec = pd.read_parquet(run_audit(load_config(raw), tmp_path / "run", report=False).records_path)
    for label in ("cardiomegaly", "effusion"):
        y = rec[f"target:{label}"].to_numpy()
        ok = ~np.isnan(y)
        if len(np.unique(y[ok])) < 2:
            continue
        expect = choose_threshold(y[ok], rec[f"score:{label}"].to_numpy()[ok], "sens_eq_spec")
        assert rec[f"threshold:{label}"].nunique() == 1
        assert rec[f"threshold:{label}"].iloc[0] == pytest.approx(expect)


def test_worker_pool_runs_the_same_grid(tmp_path):
    raw = _config([{"name": "identity"}], evaluation={"examples": 0})
    serial = pd.read_parquet(run_audit(load_config(raw), tmp_path / "serial", report=False).records_path)
    pooled = run_audit(load_config(raw), tmp_path / "pool", workers=2, report=False)
    assert pooled.summary.ok
    pool = pd.read_parquet(pooled.records_path)
    assert list(pool["cell_id"]) == list(serial["cell_id"])
    assert list(pool["study_id"]) == list(serial["study_id"])
    # degradation and identity involve no training: identical whatever the threading
    pd.testing.assert_series_equal(pool["psnr"], serial["psnr"], check_exact=True)


def test_rechoose_on_test_over_shards_sets_one_threshold_in_every_row_group(tmp_path):
    """Records are written shard by shard; thresholds chosen on the whole test set afterwards are set
    in every row group, and the records equal those of one shard (one row group per shard)."""
    import pyarrow.parquet as pq

    raw = _config([{"name": "identity"}], evaluation={"examples": 0, "rechoose_on_test": True})
    one = pd.read_parquet(run_audit(load_config(raw), tmp_path / "one", report=False).records_path)
    raw["execution"] = {"shard_studies": 4, "batch_studies": 4}
    res = run_audit(load_config(raw), tmp_path / "sharded", report=False)
    sharded = pd.read_parquet(res.records_path)
    pd.testing.assert_frame_equal(sharded, one, check_exact=True)
    files = sorted((tmp_path / "sharded" / "store" / "score").glob("*/records.parquet"))
    assert files and all(pq.ParquetFile(f).num_row_groups == -(-len(pd.read_parquet(f)) // 4) for f in files)


def test_records_writer_refuses_a_shard_whose_types_differ(tmp_path):
    from reconaudit.engine.steps import RecordsWriter

    with pytest.raises(RuntimeError, match=r"columns \['b'\]"):
        with RecordsWriter(tmp_path / "r.parquet") as w:
            w.append(pd.DataFrame({"a": [1.0, 2.0], "b": [1.0, 2.0]}))
            w.append(pd.DataFrame({"a": [3.0], "b": ["x"]}))
    with RecordsWriter(tmp_path / "s.parquet") as w:  # an int shard after a float one is cast, not refused
        w.append(pd.DataFrame({"a": [1.5]}))
        w.append(pd.DataFrame({"a": [2]}))
    assert pd.read_parquet(tmp_path / "s.parquet")["a"].tolist() == [1.5, 2.0]
