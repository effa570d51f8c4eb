"""A user's files are handled safely: weights never unpickle code, every load failure is a clear
config error naming the key and the file, and a folder reconstructor never reads outside its folder."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
import yaml
from _recon_data import noisy, phantoms
from safetensors.torch import save_file
from tests.engine.tiny import tiny_config
from typer.testing import CliRunner

from reconaudit.cli import app
from reconaudit.engine.config import ConfigError, load_config
from reconaudit.plugins import WeightsError, load_state_dict_file
from reconaudit.recon import make_reconstructor


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_files(tmp_path):
    marker = tmp_path / "PWNED"
    files = {}
    for ext in (".pt", ".pth", ".ckpt", ".safetensors", ".bin"):
        f = tmp_path / f"evil_torch{ext}"
        torch.save({"weight": _Evil(str(marker))}, f)
        files[f"torch-pickle{ext}"] = (f, "Python objects other than tensors" if ext != ".safetensors"
                                       else "not a readable safetensors file")
        g = tmp_path / f"evil_plain{ext}"
        with open(g, "wb") as fh:
            pickle.dump(_Evil(str(marker)), fh)
        files[f"plain-pickle{ext}"] = (g, "Python objects other than tensors" if ext != ".safetensors"
                                       else "not a readable safetensors file")
    files["missing"] = (tmp_path / "nowhere.safetensors", "does not exist")
    (tmp_path / "empty.pt").write_bytes(b"")
    files["empty"] = (tmp_path / "empty.pt", "is empty")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    files["not-a-dict"] = (tmp_path / "list.pt", "does not hold a state dict")
    torch.save({"epochs": 3}, tmp_path / "nontensor.pt")
    files["no-tensors"] = (tmp_path / "nontensor.pt", "does not hold a state dict")
    save_file({"weight": torch.zeros(1, 1, 3, 3)}, str(tmp_path / "t.safetensors"))
    (tmp_path / "trunc.safetensors").write_bytes((tmp_path / "t.safetensors").read_bytes()[:40])
    files["truncated"] = (tmp_path / "trunc.safetensors", "not a readable safetensors file")
    return files, marker


def test_every_bad_weights_file_is_a_clear_error_and_no_pickle_runs(tmp_path):
    files, marker = _bad_files(tmp_path)
    for case, (f, what) in files.items():
        with pytest.raises(WeightsError) as e:
            load_state_dict_file(f)
        msg = str(e.value)
        assert f"weights={str(f)!r}" in msg and what in msg, (case, msg)
        assert "weights_only=False" not in msg and "weights_only" not in msg.replace("weights_only=True", ""), case
        if case != "missing":
            assert "safetensors" in msg, case
    assert not marker.exists()


def test_weights_with_wrong_keys_name_the_file_and_the_keys(tmp_path):
    save_file({"not_factor": torch.tensor(1.0)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(WeightsError, match=r"w\.safetensors.*does not fit the module built by.*factor"):
        make_reconstructor("plugin", target="tests.engine.plugin_recon:build_scale",
                           weights=str(tmp_path / "w.safetensors"))


def _plugin_config(weights):
    raw = tiny_config(reconstructors=[{"name": "plugin", "params": {
        "target": "tests.engine.plugin_recon:build_scale", "weights": str(weights), "trainable": False}}])
    return raw


@pytest.mark.parametrize("build_plugins", [True, False])
def test_a_pickled_weights_file_is_a_config_error_under_its_key(tmp_path, build_plugins):
    files, marker = _bad_files(tmp_path)
    f, _ = files["torch-pickle.pth"]
    with pytest.raises(ConfigError) as e:
        load_config(_plugin_config(f), build_plugins=build_plugins)
    assert f"reconstructors.0.params: weights={str(f)!r}" in str(e.value)
    assert not marker.exists()


def test_cli_shows_the_weights_error_without_a_traceback(tmp_path):
    files, marker = _bad_files(tmp_path)
    cfg = tmp_path / "a.yaml"
    cfg.write_text(yaml.safe_dump(_plugin_config(files["plain-pickle.ckpt"][0])))
    for cmd in (["plan", str(cfg), "--out", str(tmp_path / "r")], ["run", str(cfg), "--out", str(tmp_path / "r")]):
        res = CliRunner().invoke(app, cmd, terminal_width=300)
        assert res.exit_code == 2, res.output
        out = "".join(res.output.split())  # the console wraps long paths
        assert "evil_plain.ckpt" in out and "safetensors" in out and "Traceback" not in out
        assert "weights_only=False" not in out
    assert not marker.exists()


@pytest.mark.parametrize("sid", ["../outside", "sub/../../outside", "/etc/passwd", "../../etc/x", "a/../../x"])
def test_folder_study_ids_outside_the_folder_are_refused_with_the_id(tmp_path, sid):
    folder = tmp_path / "recons"
    folder.mkdir()
    clean = phantoms(1)
    np.save(tmp_path / "outside.npy", clean[0, 0].numpy())  # a file the id would reach
    rec = make_reconstructor("folder", path=str(folder))
    with pytest.raises(ValueError, match="outside the folder") as e:
        rec.reconstruct(noisy(clean), study_ids=[sid])
    assert repr(sid) in str(e.value)


def test_folder_ids_inside_subfolders_are_fine(tmp_path):
    clean = phantoms(1)
    (tmp_path / "site1").mkdir()
    np.save(tmp_path / "site1" / "s.npy", clean[0, 0].numpy())
    rec = make_reconstructor("folder", path=str(tmp_path))
    assert torch.equal(rec.reconstruct(noisy(clean), study_ids=["site1/s"]), clean)


def test_folder_npy_of_objects_names_the_file(tmp_path):
    clean = phantoms(1)
    np.save(tmp_path / "s.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    rec = make_reconstructor("folder", path=str(tmp_path))
    with pytest.raises(ValueError, match=r"s\.npy.*not a plain numeric \.npy"):
        rec.reconstruct(noisy(clean), study_ids=["s"])


def test_plan_never_calls_a_plugin_factory(tmp_path):
    marker = tmp_path / "factory-called"
    raw = tiny_config(reconstructors=[{"name": "plugin", "params": {
        "target": "tests.engine.plugin_recon:build_marking", "factory_kwargs": {"marker": str(marker)}}}])
    cfg = tmp_path / "a.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    res = CliRunner().invoke(app, ["plan", str(cfg), "--out", str(tmp_path / "r")], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert not marker.exists() and not (tmp_path / "r").exists()
    load_config(raw)  # a run validates by building the plug-in: the factory is called
    assert marker.read_text() == "called"
