"""Batched Radon / FBP against scikit-image."""

import numpy as np
import pytest
import torch
from skimage.data import shepp_logan_phantom
from skimage.transform import iradon as sk_iradon
from skimage.transform import radon as sk_radon
from skimage.transform import resize

from reconaudit.physics import iradon, radon

ANGLES = np.linspace(0, 180, 256, endpoint=False)


def _phantom(n: int) -> np.ndarray:
    return resize(shepp_logan_phantom(), (n, n), anti_aliasing=True).astype(np.float64)


def _smooth_phantom(n: int) -> np.ndarray:
    """Sum of Gaussian blobs, zero outside the inscribed circle."""
    y, x = np.mgrid[:n, :n] / n - 0.5
    img = np.zeros((n, n))
    for cy, cx, s, a in ((0, 0, 0.18, 0.6), (0.12, -0.1, 0.06, 0.4), (-0.15, 0.1, 0.08, 0.3)):
        img += a * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * s**2))
    img[x**2 + y**2 > 0.45**2] = 0
    return img / img.max()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_radon_matches_skimage_circle():
    img = _phantom(64)
    ours = radon(torch.tensor(img, dtype=torch.float32)[None, None], ANGLES, circle=True)[0, 0].numpy()
    ref = sk_radon(img, ANGLES, circle=True)
    assert ours.shape == ref.shape == (64, 256)
    assert _rel(ours, ref) < 0.01


def test_radon_matches_skimage_padded_nonsquare():
    rng = np.random.default_rng(0)
    img = rng.random((24, 32))
    th = np.linspace(0, 180, 30, endpoint=False)
    ours = radon(torch.tensor(img, dtype=torch.float32)[None, None], th, circle=False)[0, 0].numpy()
    ref = sk_radon(img, th, circle=False)
    assert ours.shape == ref.shape
    assert _rel(ours, ref) < 1e-4


def test_iradon_matches_skimage_and_reproduces_image():
    img = _smooth_phantom(128)
    sino = sk_radon(img, ANGLES, circle=True)
    ours = iradon(torch.tensor(sino, dtype=torch.float32)[None, None], ANGLES, filter="hann", circle=True)
    ours = ours[0, 0].numpy()
    ref = sk_iradon(sino, ANGLES, circle=True, filter_name="hann")
    assert _rel(ours, ref) < 0.01
    psnr = 10 * np.log10(1.0 / np.mean((ours - img) ** 2))
    assert psnr > 30.0


@pytest.mark.parametrize("filt", ["ramp", "shepp-logan", None])
def test_iradon_filters_padded(filt):
    rng = np.random.default_rng(1)
    sino = rng.random((46, 20))
    th = np.linspace(0, 180, 20, endpoint=False)
    ours = iradon(torch.tensor(sino, dtype=torch.float32)[None, None], th, filter=filt, circle=False)[0, 0].numpy()
    ref = sk_iradon(sino, th, circle=False, filter_name=filt)
    assert ours.shape == ref.shape
    assert _rel(ours, ref) < 1e-3


def test_batch_equals_single():
    rng = np.random.default_rng(2)
    x = torch.tensor(rng.random((3, 1, 32, 32)), dtype=torch.float32)
    th = np.linspace(0, 180, 40, endpoint=False)
    s = radon(x, th)
    s1 = radon(x[1:2], th)
    torch.testing.assert_close(s[1:2], s1)
    r = iradon(s, th)
    torch.testing.assert_close(r[2:3], iradon(s[2:3], th))


def test_iradon_angle_count_error():
    with pytest.raises(ValueError, match="angles"):
        iradon(torch.zeros(1, 1, 16, 10), np.arange(9.0))
    with pytest.raises(ValueError, match="filter"):
        iradon(torch.zeros(1, 1, 16, 10), filter="hanning")
