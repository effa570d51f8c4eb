"""Image quality metrics against scikit-image and direct formulas."""

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from reconaudit.metrics import nmse, psnr, ssim, ssim_map


def _pair(seed=0, n=6, size=32):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    clean = np.stack([np.clip(0.5 + 0.4 * np.sin(6 * xx * (i + 1)) * np.cos(4 * yy), 0, 1) for i in range(n)])
    recon = np.clip(clean + rng.normal(0, 0.05 * (1 + np.arange(n))[:, None, None], clean.shape), 0, 1)
    return recon[:, None].astype(np.float32), clean[:, None].astype(np.float32)


def test_ssim_matches_skimage_per_image():
    x, y = _pair()
    ref = [
        structural_similarity(x[i, 0], y[i, 0], data_range=1.0, win_size=7, gaussian_weights=False)
        for i in range(len(x))
    ]
    np.testing.assert_allclose(ssim(x, y), ref, atol=1e-5)
    # (N, H, W) input and torch tensors give the same values
    np.testing.assert_allclose(ssim(torch.from_numpy(x[:, 0]), torch.from_numpy(y[:, 0])), ref, atol=1e-5)


def test_ssim_map_matches_skimage_full_map():
    x, y = _pair(1, n=2)
    x, y = x.astype(np.float64), y.astype(np.float64)  # skimage computes float32 input in float32
    _, full = structural_similarity(x[0, 0], y[0, 0], data_range=1.0, full=True)
    np.testing.assert_allclose(ssim_map(x, y)[0], full, atol=1e-10)


def test_psnr_and_nmse_match_skimage_and_formula():
    x, y = _pair(2)
    ref = [peak_signal_noise_ratio(y[i, 0], x[i, 0], data_range=1.0) for i in range(len(x))]
    np.testing.assert_allclose(psnr(x, y), ref, rtol=1e-6)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    direct = ((x64 - y64) ** 2).sum(axis=(1, 2, 3)) / (y64**2).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(nmse(x, y), direct, rtol=1e-10)
    assert np.isinf(psnr(y, y)).all() and (nmse(y, y) == 0).all()


def test_masked_metrics():
    x, y = _pair(3, n=3)
    mask = np.zeros_like(x, dtype=bool)
    mask[:, :, 8:24, 4:28] = True
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    for i in range(3):
        m = mask[i, 0]
        mse = ((x64[i, 0] - y64[i, 0])[m] ** 2).mean()
        assert psnr(x, y, mask=mask)[i] == pytest.approx(10 * np.log10(1 / mse), rel=1e-9)
        assert nmse(x, y, mask=mask)[i] == pytest.approx(
            ((x64[i, 0] - y64[i, 0])[m] ** 2).sum() / (y64[i, 0][m] ** 2).sum()
        )
        s = ssim_map(x, y)[i]
        assert ssim(x, y, mask=mask)[i] == pytest.approx(s[m].mean(), rel=1e-9)  # mask inside the interior
    # a mask covering everything equals the unmasked SSIM; an empty mask gives NaN
    np.testing.assert_allclose(ssim(x, y, mask=np.ones_like(mask)), ssim(x, y))
    assert np.isnan(psnr(x, y, mask=np.zeros_like(mask))).all()


def test_shape_errors_name_the_argument():
    x, y = _pair(4, n=2)
    with pytest.raises(ValueError, match="same shape"):
        ssim(x, y[:1])
    with pytest.raises(ValueError, match="x: expected shape"):
        psnr(np.zeros((2, 3, 8, 8)), np.zeros((2, 3, 8, 8)))
