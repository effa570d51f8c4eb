"""Multi-coil MRI physics: operator and adjoint, sensitivities, noise, calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reconaudit.physics import KspaceUndersampling, make_degradation
from reconaudit.physics.coils import (
    birdcage_maps,
    calibration_size,
    coil_adjoint,
    coil_forward,
    complex_noise,
    estimate_sensitivities,
    noise_sigma,
    rss,
    sensitivity_correlation,
    smooth_phase,
)
from reconaudit.physics.mri import ifft2c
from reconaudit.seeding import torch_generator


def _disk_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth blobs inside a disk: an object with support well inside the field of view."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    disk = ((yy**2 + xx**2) < 0.6**2).float()
    imgs = []
    for _ in range(n):
        c = torch.rand(2, generator=g) * 0.6 - 0.3
        blob = torch.exp(-((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / 0.05)
        imgs.append((0.4 + 0.5 * blob) * disk)
    return torch.stack(imgs).unsqueeze(1).clamp(0, 1)


def test_birdcage_maps_match_sigpy_and_have_unit_rss():
    sp_mri = pytest.importorskip("sigpy.mri")
    ours = birdcage_maps(8, (32, 40))
    ref = sp_mri.birdcage_maps((8, 32, 40), r=1.5)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose((ours.abs() ** 2).sum(0).numpy(), 1.0, atol=1e-5)


@pytest.mark.parametrize("coils", [1, 8])
def test_adjoint_dot_product(coils):
    g = torch.Generator().manual_seed(1)
    n, h, w = 3, 32, 32
    x = torch.complex(torch.randn(n, 1, h, w, generator=g), torch.randn(n, 1, h, w, generator=g))
    y = torch.complex(torch.randn(n, coils, h, w, generator=g), torch.randn(n, coils, h, w, generator=g))
    maps = None if coils == 1 else birdcage_maps(coils, (h, w)).unsqueeze(0) * (1 + 0.3 * torch.rand(1, coils, h, w, generator=g))
    mask = (torch.rand(n, 1, 1, w, generator=g) < 0.4).float().expand(n, 1, h, w)
    ax = coil_forward(x, maps, mask)
    aty = coil_adjoint(y, maps, mask)
    lhs = (ax.to(torch.complex128) * y.to(torch.complex128).conj()).sum()
    rhs = (x.to(torch.complex128) * aty.to(torch.complex128).conj()).sum()
    assert abs(lhs - rhs) / abs(lhs) < 1e-5


def test_full_sampling_rss_recovers_magnitude_and_single_coil_unchanged():
    imgs = _disk_images(4, 32)
    seeds = [11, 12, 13, 14]
    multi = KspaceUndersampling(4, coils=8, phase=math.pi)(imgs, seeds)
    assert multi.kspace.shape == (4, 8, 32, 32) and multi.kspace.dtype == torch.complex64
    assert multi.mask.shape == (4, 1, 32, 32)
    # full sampling: RSS of the coil images is the magnitude image (sum_c |S_c|^2 = 1)
    full = KspaceUndersampling(1, center_fraction=0.0, coils=8, phase=math.pi)(imgs, seeds)
    torch.testing.assert_close(full.image, imgs, atol=2e-6, rtol=0)
    # the C = 1 case with default options is the single-coil operator, bit for bit
    single = KspaceUndersampling(4)(imgs, seeds)
    ku = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(imgs.to(torch.complex64), dim=(-2, -1)), norm="ortho"),
                            dim=(-2, -1)) * single.mask
    assert torch.equal(single.kspace, ku)
    assert torch.equal(single.image, ifft2c(ku).abs().clamp(0, 1))
    # masks do not depend on the coils, the phase or the noise
    assert torch.equal(single.mask, multi.mask)
    noisy = KspaceUndersampling(4, coils=8, snr=20.0)(imgs, seeds)
    assert torch.equal(noisy.mask, single.mask)


def test_phase_breaks_hermitian_symmetry():
    imgs = _disk_images(1, 32)
    real = KspaceUndersampling(1, center_fraction=0.0, coils=1, phase=0.0)(imgs, [3]).kspace[0, 0]
    cplx = KspaceUndersampling(1, center_fraction=0.0, coils=1, phase=2.0)(imgs, [3]).kspace[0, 0]

    def asym(k):  # || K(k) - conj K(-k) || / || K ||, on the grid symmetric about the centre
        kk = k[1:, 1:]
        return float((kk - torch.flip(kk, (0, 1)).conj()).abs().norm() / kk.abs().norm())

    assert asym(real) < 1e-5
    assert asym(cplx) > 0.1
    phi = smooth_phase((32, 32), [torch_generator(5)], 2.0)
    assert float(phi.abs().max()) <= 2.0 + 1e-6


def test_noise_level_and_determinism():
    imgs = _disk_images(2, 32)
    op = KspaceUndersampling(1, center_fraction=0.0, coils=4, snr=10.0)
    a, b = op(imgs, [7, 8]), op(imgs, [7, 8])
    assert torch.equal(a.kspace, b.kspace)
    # the same study gets the same noise in another batch
    c = op(imgs[1:], [8])
    assert torch.equal(c.kspace[0], a.kspace[1])
    clean = KspaceUndersampling(1, center_fraction=0.0, coils=4)(imgs, [7, 8]).kspace
    sigma = noise_sigma(clean, 10.0).view(-1)
    measured = (a.kspace - clean).abs().pow(2).mean(dim=(1, 2, 3)).sqrt()
    np.testing.assert_allclose(measured.numpy(), sigma.numpy(), rtol=0.03)
    # per-coil SNR: RMS coil signal / sigma == 10
    np.testing.assert_allclose((clean.abs().pow(2).mean(dim=(1, 2, 3)).sqrt() / sigma).numpy(), 10.0, rtol=1e-5)
    n = complex_noise((4, 64, 64), [torch_generator(0)])
    assert abs(float(n.abs().pow(2).mean()) - 1.0) < 0.02


def test_calibration_size_of_cartesian_masks():
    op = KspaceUndersampling(4, center_fraction=0.25, coils=4)
    masks = op.masks((32, 32), [1, 2, 3])
    assert calibration_size(masks).tolist() == [8, 8, 8]


def test_ratio_sensitivities_match_truth_and_espirit():
    imgs = _disk_images(3, 64, seed=2)
    op = KspaceUndersampling(4, center_fraction=0.16, coils=8, phase=1.0)
    d = op(imgs, [1, 2, 3])
    est = estimate_sensitivities(d.kspace, d.mask)
    true = birdcage_maps(8, (64, 64)).unsqueeze(0).expand(3, -1, -1, -1)
    inside = imgs > 0.1
    corr = sensitivity_correlation(est, true, inside)
    assert float(corr.min()) > 0.95, corr
    np.testing.assert_allclose((est.abs() ** 2).sum(1).numpy(), 1.0, atol=1e-4)
    assert float(corr.min()) > 0.99  # measured: 0.998
    # a wrong map set (each coil given its opposite's map) correlates clearly less
    assert float(sensitivity_correlation(torch.roll(est, 4, dims=1), true, inside).max()) < 0.85
    # oracle: sigpy's ESPIRiT (its default crop=0.95 zeroes ~11% of this small object at 10 calibration lines)
    sp_mri = pytest.importorskip("sigpy.mri")
    espirit = sp_mri.app.EspiritCalib(d.kspace[0].numpy().astype(np.complex128), calib_width=10, crop=0.8, show_pbar=False).run()
    esp = torch.from_numpy(np.asarray(espirit)).to(torch.complex64).unsqueeze(0)
    assert float(sensitivity_correlation(esp, true[:1], inside[:1])) > 0.95
    assert float(sensitivity_correlation(est[:1], esp, inside[:1])) > 0.95


def test_estimate_sensitivities_needs_calibration_lines():
    op = KspaceUndersampling(4, center_fraction=0.0, coils=4)
    d = op(_disk_images(1, 32), [0])
    with pytest.raises(ValueError, match="calibration region"):
        estimate_sensitivities(d.kspace, d.mask)


def test_measured_coils_path_and_validation():
    imgs = _disk_images(2, 32)
    sim = KspaceUndersampling(1, center_fraction=0.0, coils=6)(imgs, [0, 1]).kspace
    op = make_degradation("kspace", 4, coils=0)
    assert op.accepts_kspace and not KspaceUndersampling(4).accepts_kspace
    d = op(imgs, [0, 1], kspace=sim)
    assert d.kspace.shape == (2, 6, 32, 32)
    torch.testing.assert_close(d.kspace, sim * d.mask)
    torch.testing.assert_close(d.image, rss(ifft2c(sim * d.mask)).clamp(0, 1))
    with pytest.raises(ValueError, match="coils=0"):
        op(imgs, [0, 1])
    for bad in ({"coils": -1}, {"snr": 0}, {"phase": -1.0}, {"coil_radius": 0.5}):
        with pytest.raises(ValueError):
            make_degradation("kspace", 4, **bad)
