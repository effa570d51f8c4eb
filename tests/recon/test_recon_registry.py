"""Registry, parameter validation, identity, and the two plug-in routes."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from _recon_data import noisy, phantoms
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from reconaudit.recon import RECONSTRUCTORS, make_reconstructor


def test_registry_names_and_errors() -> None:
    assert set(RECONSTRUCTORS) == {"identity", "classical", "unet", "pix2pix", "irsde", "plugin", "folder", "sense", "varnet"}
    with pytest.raises(ValueError, match=r"unknown reconstructor 'unett'.*did you mean 'unet'.*allowed"):
        make_reconstructor("unett")
    with pytest.raises(ValueError, match=r"unknown parameter 'epoch'.*did you mean 'epochs'.*allowed parameters: .*epochs"):
        make_reconstructor("unet", epoch=3)
    with pytest.raises(ValueError, match=r"loss"):
        make_reconstructor("unet", loss="huber")
    rec = make_reconstructor("unet", channels=[8, 16], epochs=1)
    assert rec.params["channels"] == (8, 16) and rec.params["epochs"] == 1


def test_identity_returns_input_and_samples() -> None:
    d = noisy(phantoms(4))
    rec = make_reconstructor("identity")
    out = rec.reconstruct(d)
    assert torch.equal(out, d.image)
    assert rec.reconstruct(d, samples=3).shape == (4, 3, 1, 32, 32)


def _register_module() -> str:
    mod = types.ModuleType("reconaudit_test_plugin")

    def blur_factory(k: int = 3):
        return lambda x: nn.functional.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)

    def conv_factory():
        conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        return conv

    mod.blur_factory = blur_factory
    mod.conv_factory = conv_factory
    sys.modules[mod.__name__] = mod
    return mod.__name__


def test_plugin_callable_and_module_with_weights(tmp_path) -> None:
    name = _register_module()
    d = noisy(phantoms(6))
    rec = make_reconstructor("plugin", target=f"{name}:blur_factory", factory_kwargs={"k": 3})
    assert not rec.trainable and rec.fit(None, None) == {}  # type: ignore[arg-type]
    expected = nn.functional.avg_pool2d(d.image, 3, stride=1, padding=1, count_include_pad=False).clamp(0, 1)
    assert torch.allclose(rec.reconstruct(d), expected)
    # a module with weights loaded from safetensors: a 3x3 kernel with a single 1 at the centre is the identity
    w = torch.zeros(1, 1, 3, 3)
    w[0, 0, 1, 1] = 1.0
    save_file({"weight": w}, str(tmp_path / "w.safetensors"))
    rec2 = make_reconstructor("plugin", target=f"{name}:conv_factory", weights=str(tmp_path / "w.safetensors"))
    assert rec2.trainable
    assert torch.allclose(rec2.reconstruct(d), d.image.clamp(0, 1), atol=1e-6)
    with pytest.raises(ValueError, match="cannot import module"):
        make_reconstructor("plugin", target="no_such_module_xyz:f")


def test_folder_npy_png_and_missing(tmp_path) -> None:
    clean = phantoms(3)
    ids = ["a1", "b2", "c3"]
    np.save(tmp_path / "a1.npy", clean[0, 0].numpy())
    np.save(tmp_path / "b2.npy", clean[1, 0].numpy())
    Image.fromarray((clean[2, 0].numpy() * 65535).round().astype(np.uint16)).save(tmp_path / "c3.png")
    rec = make_reconstructor("folder", path=str(tmp_path))
    out = rec.reconstruct(noisy(clean), study_ids=ids)
    assert out.shape == (3, 1, 32, 32) and out.dtype == torch.float32
    assert torch.equal(out[:2], clean[:2])
    assert torch.allclose(out[2], clean[2], atol=1 / 65535)
    with pytest.raises(FileNotFoundError, match=r"'zz'.*" + str(tmp_path.name)):
        rec.reconstruct(noisy(clean[:1]), study_ids=["zz"])
    with pytest.raises(ValueError, match="study_ids"):
        rec.reconstruct(noisy(clean))


def test_docs_plugin_example_runs(capsys) -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "reconstructors.md").read_text()
    start = doc.index("```python\nimport sys, tempfile")
    code = doc[start + len("```python\n"): doc.index("```", start + 10)]
    path_before = list(sys.path)
    try:
        exec(compile(code, "docs/reconstructors.md", "exec"), {"__name__": "docs_example"})
    finally:
        sys.path[:] = path_before
        sys.modules.pop("my_recon", None)
    assert capsys.readouterr().out.split() == ["False", "torch.Size([4,", "1,", "32,", "32])", "True", "True"]
