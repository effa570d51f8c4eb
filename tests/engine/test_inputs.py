"""Content-addressed inputs: a changed external file recomputes exactly the steps that read it."""

import os

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import save_file
from typer.testing import CliRunner

from reconaudit.cli import app
from reconaudit.cohorts import make_cohort
from reconaudit.engine import inputs as inputs_mod
from reconaudit.engine.config import load_config
from reconaudit.engine.inputs import InputDigests, hash_file
from reconaudit.engine.plan import build_plan
from reconaudit.engine.run import run_audit
from tests.engine.tiny import tiny_config

COHORT_PARAMS = {"n_studies": 48, "size": 32}
runner = CliRunner()


def _config(reconstructors, **kw):
    raw = tiny_config(reconstructors=reconstructors, direct={"enabled": False}, **kw)
    raw["cohorts"][0]["params"] = dict(COHORT_PARAMS)
    raw["cohorts"][0]["degradations"][0]["levels"] = [3000]
    return raw


@pytest.fixture(scope="module")
def cohort():
    return make_cohort("chest-xray", seed=0, **COHORT_PARAMS)


def _kinds(ids):
    return sorted(s.split("/")[0] for s in ids)


# ------------------------------------------------------------------------- the digest cache
def test_digest_cache_rehashes_only_when_the_fingerprint_changes(tmp_path, monkeypatch):
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.bin").write_bytes(b"aaaa")
    (tree / "sub" / "b.bin").write_bytes(b"bbbb")
    (tree / ".hidden").write_bytes(b"ignored")
    cache = tmp_path / "digests.json"
    d1 = InputDigests(cache)
    first = d1.tree(tree)
    d1.save()
    calls = []
    monkeypatch.setattr(inputs_mod, "hash_file", lambda p: calls.append(p) or hash_file(p))
    d2 = InputDigests(cache)
    assert d2.tree(tree) == first and calls == [] and d2.changes == {}  # a stat per file, no hashing
    # same bytes, new mtime: re-hashed once, same digest, no change reported
    st = os.stat(tree / "a.bin")
    os.utime(tree / "a.bin", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    d3 = InputDigests(cache)
    assert d3.tree(tree) == first and len(calls) == 1 and d3.changes == {}
    d3.save()
    # same size, new bytes: a new digest, the file named as changed; an added file is named too
    (tree / "sub" / "b.bin").write_bytes(b"BBBB")
    (tree / "c.bin").write_bytes(b"c")
    d4 = InputDigests(cache)
    assert d4.tree(tree) != first
    assert d4.changes == {str((tree / "sub" / "b.bin").resolve()): "changed", str((tree / "c.bin").resolve()): "added"}
    # the hidden file is not part of the digest
    (tree / ".hidden").write_bytes(b"other")
    assert InputDigests().tree(tree) == d4.tree(tree)


# ------------------------------------------------------------------------- folder and weights
def test_changed_folder_file_recomputes_exactly_its_reconstruct_and_score(tmp_path, cohort):
    folder = tmp_path / "recons"
    folder.mkdir()
    for sid, img in zip(cohort.table["study_id"], cohort.images[:, 0].numpy(), strict=True):
        np.save(folder / f"{sid}.npy", (0.9 * img).astype(np.float32))
    raw = _config([{"name": "identity"}, {"name": "folder", "label": "pre", "params": {"path": str(folder)}}])
    first = run_audit(load_config(raw), tmp_path / "run", report=False)
    assert first.summary.ok
    old = pd.read_parquet(first.records_path)
    again = run_audit(load_config(raw), tmp_path / "run", report=False)
    assert again.summary.computed == []
    te = cohort.split("test")
    sid = str(te.table["study_id"].iloc[0])
    np.save(folder / f"{sid}.npy", np.zeros((32, 32), np.float32))
    res = run_audit(load_config(raw), tmp_path / "run", report=False)
    assert _kinds(res.summary.computed) == ["reconstruct", "score"]
    rec = pd.read_parquet(res.records_path)
    pre = rec[rec["reconstructor"] == "pre"].set_index("study_id")
    old_pre = old[old["reconstructor"] == "pre"].set_index("study_id")
    assert pre.loc[sid, "psnr"] < old_pre.loc[sid, "psnr"] - 10  # the zeroed study is read anew
    others = [s for s in pre.index if s != sid]
    np.testing.assert_allclose(pre.loc[others, "psnr"], old_pre.loc[others, "psnr"])
    ident = rec[rec["reconstructor"] == "identity"].sort_values("study_id").reset_index(drop=True)
    old_ident = old[old["reconstructor"] == "identity"].sort_values("study_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(ident, old_ident)


def test_changed_weights_file_recomputes_exactly_the_plugin_steps(tmp_path):
    weights = tmp_path / "halve.safetensors"
    save_file({"factor": torch.tensor(0.5)}, str(weights))
    plugin = {"name": "plugin", "label": "halve",
              "params": {"target": "tests.engine.plugin_recon:build_scale", "weights": str(weights),
                         "trainable": False}}
    raw = _config([{"name": "identity"}, plugin])
    first = run_audit(load_config(raw), tmp_path / "run", report=False)
    assert first.summary.ok, [f.error for f in first.summary.failed]
    old = pd.read_parquet(first.records_path)
    save_file({"factor": torch.tensor(0.25)}, str(weights))
    res = run_audit(load_config(raw), tmp_path / "run", report=False)
    assert _kinds(res.summary.computed) == ["fit_recon", "reconstruct", "score"]
    rec = pd.read_parquet(res.records_path)
    assert (rec.loc[rec["reconstructor"] == "halve", "psnr"].mean()
            < old.loc[old["reconstructor"] == "halve", "psnr"].mean() - 1)


# ------------------------------------------------------------------------- manifest labels
def _write_manifest(tmp_path, cohort):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    rows = []
    t = cohort.table
    for i in range(len(t)):
        rel = f"images/{t['study_id'].iloc[i]}.npy"
        np.save(root / rel, cohort.images[i, 0].numpy().astype(np.float32))
        rows.append({"path": rel, "patient_id": t["patient_id"].iloc[i], "split": t["split"].iloc[i],
                     "finding": int(cohort.targets()[i, 0]), "sex": t["sex"].iloc[i]})
    path = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_changed_manifest_label_recomputes_that_cohort_only_and_plan_names_the_file(tmp_path, cohort):
    path = _write_manifest(tmp_path, cohort)
    raw = _config([{"name": "identity"}])
    manifest = {"name": "manifest", "params": {"path": str(path), "target_columns": ["finding"],
                                               "group_columns": ["sex"], "size": 32, "split_column": "split"},
                "tasks": {"classification": {"arch": "small-cnn", "params": {"epochs": 1}}},
                "degradations": [{"name": "lowdose-xray", "levels": [3000], "params": {"model": "projection"}}]}
    raw["cohorts"].append(manifest)
    first = run_audit(load_config(raw), tmp_path / "run", report=False)
    assert first.summary.ok, [f.error for f in first.summary.failed]
    old = pd.read_parquet(first.records_path)
    man_id = [sid for sid, s in first.plan.steps.items() if s.kind == "cohort" and s.spec.name == "manifest"][0]
    n_manifest = sum(1 for sid in first.plan.steps if man_id in first.plan.needed_for([sid]))
    df = pd.read_csv(path, dtype=str)
    df["finding"] = (1 - df["finding"].astype(int)).astype(str)
    df.to_csv(path, index=False)
    cfg_file = tmp_path / "audit.yaml"
    cfg_file.write_text(yaml.safe_dump(raw))
    out = runner.invoke(app, ["plan", str(cfg_file), "--out", str(tmp_path / "run")], terminal_width=250)
    assert out.exit_code == 0, out.output
    assert "input changed" in out.output and "manifest.csv (changed)" in out.output
    res = run_audit(load_config(raw), tmp_path / "run", report=False)
    assert len(res.summary.computed) == n_manifest == 7
    assert "cohort" in _kinds(res.summary.computed)
    # every computed step belongs to the manifest cohort; the synthetic cohort's are reused
    chest = [sid for sid, s in res.plan.steps.items() if s.kind == "cohort" and s.spec.name == "chest-xray"][0]
    assert not any(chest in res.plan.needed_for([s]) for s in res.summary.computed)
    rec = pd.read_parquet(res.records_path)
    man = rec[rec["cohort"] == "manifest"]
    np.testing.assert_array_equal(man["target:finding"].to_numpy(),
                                  1 - old.loc[old["cohort"] == "manifest", "target:finding"].to_numpy())


def test_keys_of_synthetic_audits_hold_no_file_digests():
    plan = build_plan(load_config(tiny_config()))
    assert all(s.spec.inputs == {} for s in plan.steps.values() if hasattr(s.spec, "inputs"))


def test_an_edited_plugin_source_changes_the_keys_of_its_steps_only(tmp_path, monkeypatch):
    src = tmp_path / "my_recon_mod.py"
    src.write_text("from tests.engine.plugin_recon import build\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = _config([{"name": "identity"}, {"name": "plugin", "label": "mine",
                                           "params": {"target": "my_recon_mod:build", "trainable": False}}])
    a = build_plan(load_config(raw, build_plugins=False))
    src.write_text("from tests.engine.plugin_recon import build  # edited\n")
    b = build_plan(load_config(raw, build_plugins=False))
    changed = set(a.steps) ^ set(b.steps)
    assert {sid.split("/")[0] for sid in changed} == {"fit_recon", "reconstruct", "score"}
    assert all(getattr(s.spec, "reconstructor", None) in ("plugin", "mine") for sid, s in {**a.steps, **b.steps}.items()
               if sid in changed)
