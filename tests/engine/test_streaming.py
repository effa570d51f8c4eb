"""The study store and streaming steps: lazy arrays, shard sizes that do not change a number, and steps
that never read a whole split at once."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from reconaudit.arrays import (
    READS,
    ArrayStoreError,
    ArrayWriter,
    MappedArray,
    StudyArray,
    open_arrays,
    to_float32,
)
from reconaudit.engine.config import ConfigError, load_config
from reconaudit.engine.run import run_audit
from tests.engine.tiny import tiny_config


# ------------------------------------------------------------------------------ the arrays
def test_study_arrays_round_trip_and_index_like_tensors(tmp_path):
    x = torch.rand(23, 1, 4, 5)
    k = torch.complex(torch.rand(23, 2, 4, 5), torch.rand(23, 2, 4, 5))
    w = ArrayWriter(tmp_path / "a.zarr", 23, shard_studies=8)
    for start in (0, 3, 10, 17):  # batches of uneven sizes, across shard boundaries
        stop = {0: 3, 3: 10, 10: 17, 17: 23}[start]
        w.append("x", x[start:stop])
        w.append("k", k[start:stop])
        w.append("m", x[start:stop] > 0.5)
    w.constant("shared", torch.ones(1, 1, 4, 5))
    w.close()
    a = open_arrays(tmp_path / "a.zarr")
    assert isinstance(a["x"], StudyArray) and a["x"].shape == (23, 1, 4, 5) and a["x"].dtype == torch.float32
    assert torch.equal(a["x"].load(), x) and torch.equal(a["k"].load(), k) and a["m"].dtype == torch.bool
    assert torch.equal(a["m"].load(), x > 0.5) and torch.equal(a["shared"], torch.ones(1, 1, 4, 5))
    idx = np.array([7, 2, 2, 19, 0])  # unordered, repeated
    assert torch.equal(a["x"][idx], x[idx]) and torch.equal(a["x"][torch.as_tensor(idx)], x[idx])
    assert torch.equal(a["x"][5], x[5]) and torch.equal(a["x"][-1], x[-1]) and torch.equal(a["x"][3:9:2], x[3:9:2])
    assert torch.equal(a["k"][2:6, 1], k[2:6, 1])
    split = a["x"].take([1, 4, 9, 12, 20])
    assert len(split) == 5 and torch.equal(split[[4, 0]], x[[20, 1]]) and torch.equal(split.take([2])[0], x[9])
    assert list(split.shards(2)) == [(0, 2), (2, 4), (4, 5)]
    f = MappedArray(a["m"], to_float32)
    assert f.dtype == torch.float32 and torch.equal(f.take([3])[0], (x[3] > 0.5).float())


def test_an_incomplete_array_is_an_error_naming_it(tmp_path):
    w = ArrayWriter(tmp_path / "b.zarr", 10, shard_studies=4)
    w.append("x", torch.zeros(6, 1, 2, 2))
    with pytest.raises(ArrayStoreError, match=r"b\.zarr/x: 6 studies were written, 10 expected"):
        w.close()


def test_a_block_written_into_an_array_must_fit_it(tmp_path):
    w = ArrayWriter(tmp_path / "c.zarr", 10, shard_studies=4)
    w.create("x", (1, 2, 2), torch.float32)
    w.write("x", 4, torch.ones(4, 1, 2, 2))
    with pytest.raises(ArrayStoreError, match=r"c\.zarr/x: a batch of shape \(1, 2, 2\) float64 does not fit"):
        w.write("x", 0, torch.ones(4, 1, 2, 2, dtype=torch.float64))
    with pytest.raises(ArrayStoreError, match=r"c\.zarr/x: studies 8:12 are outside the array's 10"):
        w.write("x", 8, torch.ones(4, 1, 2, 2))
    assert torch.equal(open_arrays(tmp_path / "c.zarr")["x"][3:9], torch.cat([torch.zeros(1, 1, 2, 2), torch.ones(4, 1, 2, 2),
                                                                           torch.zeros(1, 1, 2, 2)]))


@pytest.mark.parametrize("mode", ["image", "kspace"])
def test_the_direct_arms_lazy_inputs_index_like_the_inputs_in_memory(mode, tmp_path):
    """DirectInputs over a stored degraded set: slices, index lists and views read the studies the
    in-memory direct_inputs gives for them (a slice reads its own studies, not the split's list)."""
    from reconaudit.engine.steps import DirectInputs, degraded_view
    from reconaudit.physics.base import Degraded
    from reconaudit.tasks.direct import direct_inputs

    img = torch.rand(13, 1, 4, 4)
    ks = torch.complex(torch.rand(13, 2, 4, 4), torch.rand(13, 2, 4, 4))
    w = ArrayWriter(tmp_path / "d.zarr", 13, shard_studies=4)
    w.append("image", img)
    w.append("kspace", ks)
    w.close()
    a = open_arrays(tmp_path / "d.zarr")
    x = DirectInputs(Degraded(a["image"], a["kspace"], None, {}), mode)
    want = direct_inputs(img, ks, mode)
    assert x.shape == tuple(want.shape) and torch.equal(x[slice(None)], want)
    assert torch.equal(x[3:11:3], want[3:11:3]) and torch.equal(x[[12, 0, 5]], want[[12, 0, 5]])
    assert torch.equal(x[-2:], want[-2:])
    part = x.take([8, 1, 6, 2])
    assert len(part) == 4 and torch.equal(part[1:3], want[[1, 6]]) and torch.equal(part[[3]], want[[2]])
    assert isinstance(degraded_view(x.deg, [0]).image, StudyArray)


def test_shard_size_must_hold_whole_compute_batches():
    cfg = tiny_config(execution={"shard_studies": 10, "batch_studies": 4})
    with pytest.raises(ConfigError, match=r"shard_studies \(10\) must be a multiple of execution\.batch_studies"):
        load_config(cfg)
    with pytest.raises(ConfigError, match=r"multiple of the largest step batch"):
        load_config(tiny_config(execution={"shard_studies": 100}))


# ------------------------------------------------------------------------------ shard sizes
def _brain() -> dict:
    return tiny_config(
        cohorts=[{"name": "brain-glioma", "params": {"n_subjects": 16, "slices_per_subject": 2, "size": 32},
                  "tasks": {"segmentation": {"arch": "unet", "params": {"epochs": 1}}},
                  "degradations": [{"name": "kspace", "levels": [4], "params": {"pattern": "radial"}}]}],
        reconstructors=[{"name": "identity"}, {"name": "classical"},
                        {"name": "irsde", "params": {"epochs": 1, "steps": 3, "channels": [8, 8, 8]}, "samples": 2}],
        direct={"enabled": True, "input": "kspace"},
    )


@pytest.mark.parametrize("make", [tiny_config, _brain], ids=["chest-xray", "brain-kspace"])
def test_small_shards_give_the_records_of_one_shard(make, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = {}
        for shard in (1024, 8):  # one shard of the whole cohort, then shards of 8 studies (several per split)
            cfg = make()
            cfg["execution"] = {"batch_studies": 4, "shard_studies": shard}
            res = run_audit(load_config(cfg), tmp_path / f"s{shard}", report=False)
            assert res.summary.ok
            runs[shard] = pd.read_parquet(res.records_path)
    finally:
        torch.set_num_threads(threads)
    pd.testing.assert_frame_equal(runs[1024], runs[8], check_exact=True)
    store = tmp_path / "s8" / "store"
    recon = next(p for p in (store / "reconstruct").glob("*/recon.zarr/mean"))
    assert len(list((recon / "c").rglob("*"))) > 1  # the test split was written as several shard files


def test_no_step_reads_a_whole_split_at_once(tmp_path):
    """Every read of a stored array (cohort images and masks, degraded inputs, reconstructions) is at
    most one batch, while every split is several times larger."""
    small = {"epochs": 1, "batch_size": 8, "eval_batch_size": 8}
    cfg = tiny_config(
        reconstructors=[{"name": "identity"}, {"name": "unet", "params": {**small, "channels": [8, 16]}}],
        execution={"batch_studies": 4, "shard_studies": 8},
    )
    cfg["cohorts"][0]["params"]["n_studies"] = 160
    cfg["cohorts"][0]["tasks"]["classification"]["params"] = small
    cfg["cohorts"][0]["degradations"][0]["levels"] = [3000]
    READS.reset()
    res = run_audit(load_config(cfg), tmp_path / "run", report=False)
    assert res.summary.ok
    from reconaudit.cohorts.base import Cohort

    cohort = Cohort.load(next((tmp_path / "run" / "store" / "cohort").iterdir()))
    smallest_split = min(len(cohort.indices(s)) for s in ("train", "val", "test"))
    assert smallest_split >= 24
    read = {name: n for name, n in READS.largest.items() if n}
    for name in ("arrays.zarr/images", "arrays.zarr/roi_masks", "degraded.zarr/image", "recon.zarr/mean"):
        assert READS.total.get(name, 0) > 0, f"{name} was never read from the store"
    assert max(read.values()) <= 8, read  # a training batch or a shard, never a split
    assert sum(READS.total[n] for n in read if n.startswith("recon.zarr")) == 2 * len(cohort.indices("test"))


def test_a_long_scattered_read_goes_in_pieces_and_returns_the_same_studies(tmp_path, monkeypatch):
    import reconaudit.arrays as arrays

    x = torch.rand(40, 1, 4, 4)
    w = ArrayWriter(tmp_path / "a.zarr", 40, 16)
    w.append("x", x)
    w.close()
    a = open_arrays(tmp_path / "a.zarr")["x"]
    pos = [37, 2, 5, 5, 11, 12, 30, 0, 19, 25, 33]  # unsorted, a repeat, several shards
    calls = []
    real = a.array.get_orthogonal_selection
    monkeypatch.setattr(a.array, "get_orthogonal_selection", lambda sel: calls.append(len(sel[0])) or real(sel))
    monkeypatch.setattr(arrays, "SCATTERED_READ", 3)
    assert torch.equal(a[pos], x[pos])
    assert max(calls) <= 3 and sum(calls) == len(set(pos))
    assert torch.equal(a.take(np.arange(40)[::-1].copy())[[1, 3, 7, 8, 20]], x.flip(0)[[1, 3, 7, 8, 20]])


def _chest_120() -> dict:
    cfg = tiny_config()
    cfg["cohorts"][0]["params"]["n_studies"] = 120
    return cfg


@pytest.mark.parametrize(("make", "shard"), [(_chest_120, 8), (_brain, 4)], ids=["chest-xray", "brain-kspace-samples"])
def test_the_score_steps_read_at_most_one_shard_and_measure_pixels_in_chunks(make, shard, tmp_path, monkeypatch):
    """Re-running every score and direct-score step of a finished audit reads each stored array at
    most one shard at a time, and per-pixel measures in chunks of 3 studies give the same records."""
    import json
    import tempfile
    from pathlib import Path

    import reconaudit.engine.generative as generative
    import reconaudit.engine.steps as steps
    from reconaudit.engine.plan import build_plan
    from reconaudit.engine.run import input_digests, store_for

    cfg = make()
    cfg["execution"] = {"batch_studies": 4, "shard_studies": shard}
    run_dir = tmp_path / "run"
    res = run_audit(load_config(cfg), run_dir, report=False)
    assert res.summary.ok
    conf = load_config(json.loads(json.dumps(cfg)))
    plan = build_plan(conf, input_digests(conf, run_dir))
    store = store_for(conf, run_dir)
    scored = [s for s in plan.ordered() if s.kind in ("score", "direct_score")]
    assert {s.kind for s in scored} == {"score", "direct_score"}
    assert generative.pixel_chunk((10, 1, 64, 64)) == 64 and generative.pixel_chunk((10, 1, 256, 256)) == 4
    monkeypatch.setattr(generative, "pixel_chunk", lambda shape: 3)
    monkeypatch.setattr(steps, "pixel_chunk", lambda shape: 3)
    test_n = None
    for step in scored:
        READS.reset()
        ctx = steps.StepContext(store, threads=conf.execution.threads, shard_studies=shard, batch_studies=4)
        with tempfile.TemporaryDirectory() as d:
            torch.use_deterministic_algorithms(True, warn_only=True)
            steps._seed_all(steps.derive_seed(step.kind, step.key) % (2**31))
            steps.STEP_FUNCS[step.kind](step.spec, ctx, Path(d))
            new = pd.read_parquet(Path(d) / "records.parquet")
        old = pd.read_parquet(store.path(step.kind, step.key) / "records.parquet")
        pd.testing.assert_frame_equal(old, new, check_exact=True)
        test_n = len(old)
        assert test_n > shard
        read = {name: n for name, n in READS.largest.items() if n}
        assert read and max(read.values()) <= shard, (step.id, read)
        assert READS.total["degraded.zarr/image"] >= test_n
