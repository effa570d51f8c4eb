"""No-reconstruction arm: inputs from the degraded image or from k-space, and models on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _synthetic import discs_and_bars
from sklearn.metrics import roc_auc_score

from reconaudit.tasks import DIRECT_IN_CHANNELS, direct_inputs, kspace_channels, make_direct_model


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred unitary FFT (the physics convention)."""
    dims = (-2, -1)
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=dims), dim=dims, norm="ortho"), dim=dims)


def test_image_mode_passes_the_degraded_image():
    img = torch.rand(3, 1, 16, 16, dtype=torch.float64)
    out = direct_inputs(img, None, "image")
    assert out.dtype == torch.float32 and out.shape == (3, 1, 16, 16)
    torch.testing.assert_close(out, img.float())


def test_kspace_channels_formula_and_independence_of_batch():
    x, _, _ = discs_and_bars(6, seed=0)
    k = fft2c(x.to(torch.complex64))
    k[..., ::2, :] = 0  # unsampled lines
    out = direct_inputs(x, k, "kspace")
    assert out.shape == (6, 2, 32, 32) and out.dtype == torch.float32
    s = 0.01
    kn = k.numpy()
    expected = np.concatenate([np.arcsinh(kn.real / s), np.arcsinh(kn.imag / s)], 1) / np.arcsinh(1 / s)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert torch.all(out[:, :, ::2, :] == 0)  # unsampled stays zero
    # a study's channels do not depend on its batch
    torch.testing.assert_close(direct_inputs(x[2:3], k[2:3], "kspace"), out[2:3])
    # unit-ish range: DC of a 32x32 image with mean ~0.3 is ~10 -> about 1.4
    assert 0.5 < float(out.abs().max()) < 3.0
    assert float(out.abs().median()) < 1.0


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="use mode='image'"):
        direct_inputs(torch.rand(2, 1, 8, 8), None, "kspace")
    with pytest.raises(ValueError, match="mode must be one of"):
        direct_inputs(torch.rand(2, 1, 8, 8), None, "sinogram")
    with pytest.raises(TypeError, match="complex"):
        kspace_channels(torch.rand(2, 1, 8, 8))


def test_models_on_kspace_channels_learn():
    assert DIRECT_IN_CHANNELS == {"image": 1, "kspace": 2}
    x, y, m = discs_and_bars(40, seed=0)
    vx, vy, vm = discs_and_bars(20, seed=1)
    tx, ty, _ = discs_and_bars(40, seed=2)

    def inputs(img: torch.Tensor) -> torch.Tensor:
        return direct_inputs(img, fft2c(img.to(torch.complex64)), "kspace")

    clf = make_direct_model("classification", "kspace", n_outputs=2, channels=(8, 16), epochs=6, patience=6,
                            lr=3e-3, batch_size=8)
    assert clf.in_channels == 2
    clf.fit(inputs(x), y, inputs(vx), vy, seed=0)
    p = clf.predict(inputs(tx))
    assert p.shape == (40, 2) and clf.thresholds.shape == (2,)
    # k-space of a disc is learnable: better than chance for the disc label
    assert roc_auc_score(ty[:, 0], p[:, 0]) > 0.7
    seg = make_direct_model("segmentation", "kspace", channels=(4, 8), epochs=1)
    seg.fit(inputs(x), m, inputs(vx), vm, seed=0)
    assert seg.predict(inputs(tx)).shape == (40, 1, 32, 32)
    with pytest.raises(ValueError, match="sets in_channels"):
        make_direct_model("classification", "image", n_outputs=2, in_channels=1)
