"""Low-dose X-ray: photon statistics against theory, determinism, validation."""

import numpy as np
import pytest
import torch

from reconaudit.physics import LowDoseXray, bowtie_profile, make_degradation


def _images(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g)


@pytest.mark.parametrize("value", [0.25, 0.75])
def test_projection_noise_variance_matches_theory(value):
    photons, mu = 1000.0, 4.0
    op = LowDoseXray(photons, mu_scale=mu)
    x = torch.full((4, 1, 64, 64), value)
    p_hat = op.line_integrals(x, [1, 2, 3, 4]).double()
    p = mu * value
    theory = 1.0 / (photons * np.exp(-p))
    assert abs(float(p_hat.var()) / theory - 1) < 0.05
    assert abs(float(p_hat.mean()) - p) < 0.02
    # the degraded image is p_hat / mu_scale (no clipping at these values)
    out = op(x, [1, 2, 3, 4]).image.double()
    torch.testing.assert_close(out, (p_hat / mu).clamp(0, 1), rtol=0, atol=1e-6)


def test_projection_electronic_noise_adds_variance():
    photons, mu, sig = 2000.0, 4.0, 20.0
    x = torch.full((4, 1, 64, 64), 0.5)
    p_hat = LowDoseXray(photons, mu_scale=mu, electronic_std=sig).line_integrals(x, [5, 6, 7, 8]).double()
    lam = photons * np.exp(-mu * 0.5)
    theory = 1 / lam + sig**2 / lam**2
    assert abs(float(p_hat.var()) / theory - 1) < 0.06


def test_noise_falls_with_dose():
    x = _images()
    err = [float((LowDoseXray(ph)(x, [0, 1, 2, 3]).image - x).pow(2).mean()) for ph in (3000, 10000, 100000)]
    assert err[0] > err[1] > err[2]


@pytest.mark.parametrize("model", ["projection", "sinogram"])
def test_same_study_same_noise_in_any_batch(model):
    op = LowDoseXray(3000, model=model, n_angles=32)
    x = _images(4)
    seeds = [11, 12, 13, 14]
    whole = op(x, seeds).image
    parts = torch.cat([op(x[:2], seeds[:2]).image, op(x[2:], seeds[2:]).image])
    assert torch.equal(whole, parts)
    reordered = op(x[[3, 0]], [14, 11]).image
    assert torch.equal(reordered, whole[[3, 0]])
    assert not torch.equal(op(x[:1], [99]).image, whole[:1])


@pytest.mark.parametrize("axis", ["detector", "angle"])
def test_sinogram_noise_matches_bowtie_axis(axis):
    photons = 5000.0
    op = LowDoseXray(photons, model="sinogram", n_angles=64, bowtie_axis=axis, bowtie_sigma=0.4)
    x = torch.zeros(2, 1, 32, 32)
    x[:, :, 8:24, 8:24] = 0.8
    clean, noisy = op.sinograms(x, [3, 4])
    smax = clean.amax(dim=(1, 2, 3), keepdim=True)
    n_det = clean.shape[2]
    keep = clean > 0.05 * smax

    def z_var(w: torch.Tensor) -> float:
        z = (noisy - clean) / torch.sqrt(clean * smax / (photons * w))
        return float(z[keep].var())

    w_det = bowtie_profile(n_det, 0.4).view(1, 1, -1, 1)
    w_ang = bowtie_profile(64, 0.4).view(1, 1, 1, -1)
    right, wrong = (w_det, w_ang) if axis == "detector" else (w_ang, w_det)
    assert abs(z_var(right) - 1) < 0.1  # Var = s max(s) / (N0 w) with the profile on its axis
    assert abs(z_var(wrong) - 1) > 0.2


def test_sinogram_output_range_and_fidelity():
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 48), torch.linspace(-1, 1, 48), indexing="ij")
    x = (torch.exp(-(xx**2 + yy**2) / 0.3) * (0.8 + 0.2 * torch.rand(1, generator=g))).view(1, 1, 48, 48)
    out = LowDoseXray(100000, model="sinogram", n_angles=96)(x, [0]).image
    assert out.shape == x.shape and out.dtype == torch.float32
    assert float(out.min()) == 0.0 and abs(float(out.max()) - 1.0) < 1e-6
    corr = np.corrcoef(out.flatten().numpy(), x.flatten().numpy())[0, 1]
    assert corr > 0.98


def test_sinogram_nonsquare_keeps_shape():
    x = torch.rand(1, 1, 20, 28)
    out = LowDoseXray(1e5, model="sinogram", n_angles=40)(x, [0]).image
    assert out.shape == (1, 1, 20, 28)


def test_level_and_registry():
    op = make_degradation("lowdose-xray", 3000, model="sinogram")
    assert isinstance(op, LowDoseXray) and op.level == 3000.0 and op.model == "sinogram"
    assert (LowDoseXray.name, LowDoseXray.modality, LowDoseXray.level_name) == ("lowdose-xray", "xray", "photons")


def test_validation_messages():
    with pytest.raises(ValueError, match="photons"):
        LowDoseXray(0)
    with pytest.raises(ValueError, match="model"):
        LowDoseXray(1000, model="fanbeam")
    with pytest.raises(ValueError, match="bowtie_axis"):
        LowDoseXray(1000, bowtie_axis="rows")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        LowDoseXray(1000)(torch.full((1, 1, 8, 8), 2.0), [0])
    with pytest.raises(ValueError, match="one seed per study"):
        LowDoseXray(1000)(torch.zeros(2, 1, 8, 8), [0])
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        LowDoseXray(1000)(torch.zeros(2, 8, 8), [0, 1])
