"""k-space undersampling: FFT conventions, mask statistics, effective acceleration, determinism."""

import numpy as np
import pytest
import torch

from reconaudit.physics import KspaceUndersampling, fft2c, ifft2c, make_degradation, radial_mask


def _images(n: int = 4, h: int = 32, w: int = 32) -> torch.Tensor:
    return torch.rand(n, 1, h, w, generator=torch.Generator().manual_seed(0))


def test_fft2c_matches_numpy_and_is_orthonormal():
    x = _images(2, 16, 12)
    k = fft2c(x)
    ref = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x.numpy(), axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    np.testing.assert_allclose(k.numpy(), ref, atol=1e-5)
    assert k.dtype == torch.complex64
    # DC at (H // 2, W // 2) equals sum / sqrt(HW); Parseval; exact inverse
    torch.testing.assert_close(k[:, 0, 8, 6].real, x.sum(dim=(1, 2, 3)) / np.sqrt(16 * 12))
    torch.testing.assert_close(k.abs().pow(2).sum(), x.pow(2).sum(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ifft2c(k).real, x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("acc", [4, 8, 16])
@pytest.mark.parametrize("pattern", ["random", "equispaced"])
def test_cartesian_fraction_and_centre(pattern, acc):
    op = KspaceUndersampling(acc, pattern=pattern)
    lines = op.masks((1, 256), list(range(300)))[:, 0, 0]  # (300, 256) phase-encode lines
    frac = lines.mean(dim=1)
    if pattern == "equispaced":
        assert torch.all((frac * acc - 1).abs() < 0.02)  # every mask
    assert abs(float(frac.mean()) * acc - 1) < 0.02  # expected N / acc lines
    n_low = round(256 * {4: 0.08, 8: 0.04, 16: 0.02}[acc])
    pad = (256 - n_low + 1) // 2
    assert torch.all(lines[:, pad : pad + n_low] == 1)  # centre always sampled
    assert 128 in range(pad, pad + n_low)  # ... and holds DC
    if pattern == "random":
        assert not torch.all(lines == lines[0])  # drawn per study
        assert abs(op.effective_acceleration((256, 256)) - acc) < 1e-6


def test_default_center_fractions():
    assert [KspaceUndersampling(a).center_fraction for a in (4, 8, 16)] == pytest.approx([0.08, 0.04, 0.02])


def test_radial_60_spokes_is_about_9_3x():
    assert int(radial_mask((256, 256), 60).sum()) == 7059
    op = KspaceUndersampling(None, pattern="radial", spokes=60)
    assert abs(op.effective_acceleration((256, 256)) - 9.3) < 0.1
    assert op.level == pytest.approx(op.effective_acceleration((256, 256)))


def test_radial_acceleration_picks_spokes():
    op = KspaceUndersampling(8, pattern="radial")
    s = op.spokes_for((256, 256))
    total = 256 * 256
    assert total / float(radial_mask((256, 256), s).sum()) <= 8
    assert total / float(radial_mask((256, 256), s - 1).sum()) > 8
    d = op(_images(2), [1, 2])
    assert d.info["spokes"] == op.spokes_for((32, 32))


def test_gaussian_exact_count_and_centre():
    op = KspaceUndersampling(8, pattern="gaussian")
    m = op.masks((64, 64), [1, 2, 3])
    assert torch.all(m.sum(dim=(1, 2, 3)) == round(64 * 64 / 8))
    assert torch.all(m[:, 0, 31:33, 31:33] == 1)
    # variable density: the inner quarter is sampled more densely than the outside
    inner = m[:, 0, 16:48, 16:48].mean()
    assert float(inner) > 2 * float((m.sum() - m[:, 0, 16:48, 16:48].sum()) / (3 * (64 * 64 - 32 * 32)))


@pytest.mark.parametrize("pattern", ["random", "equispaced", "gaussian", "radial"])
def test_degraded_contents_and_batch_determinism(pattern):
    op = KspaceUndersampling(4, pattern=pattern)
    x = _images(4)
    seeds = [21, 22, 23, 24]
    d = op(x, seeds)
    assert d.image.shape == x.shape and d.image.dtype == torch.float32
    assert d.kspace.dtype == torch.complex64 and d.mask.shape == (4, 1, 32, 32) and d.mask.dtype == torch.float32
    torch.testing.assert_close(d.kspace, fft2c(x) * d.mask)
    torch.testing.assert_close(d.image, ifft2c(d.kspace).abs().clamp(0, 1))
    assert d.info["effective_acceleration"] == pytest.approx(float(d.mask.numel() / d.mask.sum()))
    parts = [op(x[:2], seeds[:2]), op(x[2:], seeds[2:])]
    for attr in ("image", "kspace", "mask"):
        assert torch.equal(getattr(d, attr), torch.cat([getattr(p, attr) for p in parts]))
    assert torch.equal(op(x[3:], [24]).mask, d.mask[3:])


def test_shared_mask():
    op = KspaceUndersampling(4, shared_mask=True)
    d = op(_images(3), [1, 2, 3])
    assert d.mask.shape == (1, 1, 32, 32)
    assert torch.equal(d.mask, op(_images(1), [9]).mask)


def test_from_kspace_matches_image_path():
    x = _images(2)
    op = KspaceUndersampling(4, pattern="equispaced")
    d1 = op(x, [1, 2])
    d2 = op.from_kspace(fft2c(x), [1, 2], normalize=False)
    d3 = op(None, [1, 2], kspace=fft2c(x))
    assert torch.equal(d1.kspace, d2.kspace) and torch.equal(d2.image, d3.image)
    # normalisation scales the fully sampled magnitude to max 1
    d4 = KspaceUndersampling(1.0, center_fraction=0.0).from_kspace(fft2c(x) * 50, [1, 2])
    torch.testing.assert_close(d4.image.amax(dim=(1, 2, 3)), torch.ones(2), atol=1e-5, rtol=0)


def test_registry_and_errors():
    op = make_degradation("kspace", 8, pattern="equispaced")
    assert isinstance(op, KspaceUndersampling) and op.level == 8 and op.center_fraction == pytest.approx(0.04)
    assert (KspaceUndersampling.name, KspaceUndersampling.modality, KspaceUndersampling.level_name) == (
        "kspace",
        "mri",
        "acceleration",
    )
    with pytest.raises(ValueError, match="center_fraction"):
        KspaceUndersampling(8, center_fraction=0.5).masks((32, 32), [0])
    with pytest.raises(ValueError, match="pattern"):
        KspaceUndersampling(4, pattern="spiral")
    with pytest.raises(ValueError, match="spokes"):
        KspaceUndersampling(4, pattern="random", spokes=10)
