"""Multi-coil reconstructors: CG-SENSE, VarNet, coil-aware data consistency."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reconaudit.metrics import psnr
from reconaudit.physics import KspaceUndersampling
from reconaudit.physics.coils import birdcage_maps, coil_forward
from reconaudit.physics.mri import fft2c
from reconaudit.recon import PairSet, make_reconstructor
from reconaudit.recon._fft import apply_data_consistency
from reconaudit.recon.sense import cg_sense


def _phantoms(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    out = []
    for _ in range(n):
        a, b = 0.55 + 0.2 * torch.rand(2, generator=g)
        head = ((yy / a) ** 2 + (xx / b) ** 2 < 1).float()
        img = 0.5 * head
        for _ in range(3):
            c = torch.rand(2, generator=g) - 0.5
            r = 0.08 + 0.12 * float(torch.rand(1, generator=g))
            img = img + 0.4 * (((yy - c[0]) ** 2 + (xx - c[1]) ** 2) < r**2).float() * head
        out.append(img.clamp(0, 1))
    return torch.stack(out).unsqueeze(1)


def test_cg_sense_recovers_image_with_full_sampling_and_exact_maps():
    g = torch.Generator().manual_seed(0)
    x = torch.complex(torch.rand(3, 1, 32, 32, generator=g), torch.rand(3, 1, 32, 32, generator=g))
    # un-normalised maps (1/r fall-off times a smooth ripple) so that A^H A is not the identity
    raw = birdcage_maps(6, (32, 32)) * (1.0 + 0.5 * torch.rand(6, 1, 1, generator=g))
    maps = raw.unsqueeze(0)
    y = coil_forward(x, maps)
    rec = cg_sense(y, torch.ones(1, 1, 32, 32), maps, lam=0.0, iterations=100, tol=1e-8)
    rel = float((rec - x).abs().norm() / x.abs().norm())
    assert rel < 1e-4


def test_cg_sense_beats_zero_filled_rss_and_its_normal_equations_hold():
    imgs = _phantoms(4, 64)
    d = KspaceUndersampling(3, center_fraction=0.12, coils=8, phase=1.0)(imgs, [0, 1, 2, 3])
    rec = make_reconstructor("sense", lam=0.01, iterations=100, tol=1e-7, threshold=0.05)
    out = rec.reconstruct(d)
    assert out.shape == imgs.shape
    p_zf = np.asarray(psnr(d.image.numpy(), imgs.numpy()))
    p_sense = np.asarray(psnr(out.numpy(), imgs.numpy()))
    assert (p_sense > p_zf + 1.5).all(), (p_zf, p_sense)  # measured: +2.2 to +5.4 dB
    # the solution satisfies the normal equations A^H (A x - y) + lam x = 0
    x = rec.solve(d)
    from reconaudit.physics.coils import coil_adjoint, estimate_sensitivities

    maps = estimate_sensitivities(d.kspace, d.mask, threshold=0.05)
    res = coil_adjoint(coil_forward(x, maps, d.mask) - d.kspace, maps, d.mask) + 0.01 * x
    assert float(res.abs().norm() / coil_adjoint(d.kspace, maps, d.mask).abs().norm()) < 1e-4


def test_sense_needs_kspace():
    from reconaudit.physics.base import Degraded

    with pytest.raises(ValueError, match="k-space"):
        make_reconstructor("sense").reconstruct(Degraded(torch.zeros(1, 1, 8, 8)))


def test_multicoil_data_consistency_keeps_measured_lines():
    imgs = _phantoms(2, 32)
    d = KspaceUndersampling(4, center_fraction=0.16, coils=4)(imgs, [5, 6])
    out = apply_data_consistency(torch.zeros_like(imgs), d)
    assert out.shape == imgs.shape
    # DC of the clean image against its own noise-free data changes it little
    same = apply_data_consistency(imgs, d)
    assert float((same - imgs).abs().max()) < 0.05


TINY = {"cascades": 2, "features": (4, 8, 8, 16, 16, 4), "sens_features": (4, 4, 8, 8, 16, 4)}


def _varnet_fit(epochs: int):
    imgs = _phantoms(32, 32, seed=1)
    op = KspaceUndersampling(4, center_fraction=0.16, coils=4, phase=0.5)
    d = op(imgs, list(range(32)))
    tr, va = list(range(24)), list(range(24, 32))
    train = PairSet(d.subset(tr), imgs[tr])
    val = PairSet(d.subset(va), imgs[va])
    rec = make_reconstructor("varnet", epochs=epochs, batch_size=8, lr=3e-3, patience=epochs, **TINY)
    hist = rec.fit(train, val, seed=0)
    return rec, hist, val


def test_untrained_varnet_is_zero_filled_rss_and_data_consistent():
    imgs = _phantoms(4, 32)
    d = KspaceUndersampling(4, center_fraction=0.16, coils=4, phase=0.5)(imgs, [0, 1, 2, 3])
    rec = make_reconstructor("varnet", **TINY)
    rec._ensure_built()
    rec._train_mode(False)
    with torch.no_grad():
        out = rec._forward(d)
    torch.testing.assert_close(out, d.image, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_varnet_trains_beats_zero_filled_and_is_data_consistent():
    rec, hist, val = _varnet_fit(epochs=6)
    assert hist["train_loss"][-1] < hist["train_loss"][0]
    out = rec.reconstruct(val.degraded)
    p_zf = float(np.mean(psnr(val.degraded.image.numpy(), val.clean.numpy())))
    p_vn = float(np.mean(psnr(out.numpy(), val.clean.numpy())))
    assert p_vn > p_zf, (p_zf, p_vn)
    with torch.no_grad():
        rec._train_mode(False)
        k = rec.predict_kspace(val.degraded)
    m = val.degraded.mask.bool().expand_as(k)
    assert torch.equal(k[m], val.degraded.kspace[m])
    # it round-trips through save/load
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        rec.save(Path(tmp) / "w.safetensors")
        rec2 = make_reconstructor("varnet", **TINY)
        rec2.load(Path(tmp) / "w.safetensors")
        torch.testing.assert_close(rec2.reconstruct(val.degraded), out)


def test_varnet_rejects_2d_masks():
    imgs = _phantoms(2, 32)
    d = KspaceUndersampling(4, pattern="gaussian", center_fraction=0.16, coils=2)(imgs, [0, 1])
    rec = make_reconstructor("varnet", epochs=1, **TINY)
    with pytest.raises(ValueError, match="line mask"):
        rec.fit(PairSet(d, imgs), PairSet(d, imgs))


def test_identity_is_zero_filled_rss():
    imgs = _phantoms(2, 32)
    d = KspaceUndersampling(4, coils=4)(imgs, [0, 1])
    out = make_reconstructor("identity").reconstruct(d)
    z = torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(d.kspace, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))
    torch.testing.assert_close(out, torch.sqrt((z.abs() ** 2).sum(1, keepdim=True)).clamp(0, 1))
    assert fft2c(imgs).shape == (2, 1, 32, 32)


def test_classical_tv_on_multicoil_beats_zero_filled():
    imgs = _phantoms(2, 48)
    d = KspaceUndersampling(3, center_fraction=0.12, coils=6, phase=1.0)(imgs, [0, 1])
    out = make_reconstructor("classical", iterations=50).reconstruct(d)
    p_zf = np.asarray(psnr(d.image.numpy(), imgs.numpy()))
    p_tv = np.asarray(psnr(out.numpy(), imgs.numpy()))
    assert (p_tv > p_zf + 1.0).all(), (p_zf, p_tv)


def test_direct_kspace_channels_take_coils_as_channels():
    from reconaudit.tasks.direct import direct_inputs, kspace_channels

    imgs = _phantoms(2, 16)
    d = KspaceUndersampling(4, center_fraction=0.25, coils=3)(imgs, [0, 1])
    x = direct_inputs(d.image, d.kspace, "kspace")
    assert x.shape == (2, 6, 16, 16)
    torch.testing.assert_close(x[:, 1], kspace_channels(d.kspace[:, 1:2])[:, 0])
    torch.testing.assert_close(x[:, 4], kspace_channels(d.kspace[:, 1:2])[:, 1])
