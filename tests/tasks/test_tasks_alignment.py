"""Latent alignment of the direct arm (k-MTR): the losses, their gradient, and what training buys."""

import copy

import numpy as np
import pytest
import torch

from reconaudit.cohorts import make_cohort
from reconaudit.engine.companions import teacher_latents
from reconaudit.physics import make_degradation
from reconaudit.tasks import TaskConfigError, direct_inputs, make_task_model
from reconaudit.tasks.alignment import alignment_loss, fit_aligned, latent_distance


def _latents(n=8, f=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, f, generator=g)


@pytest.mark.parametrize("kind", ["cosine", "mse"])
def test_alignment_loss_is_zero_when_the_encoders_agree(kind):
    t = _latents()
    assert float(alignment_loss(t.clone(), t, kind)) == pytest.approx(0.0, abs=1e-6)
    assert float(alignment_loss(t + 0.5 * _latents(seed=1), t, kind)) > 1e-3


def test_cosine_and_mse_match_their_formulas():
    z, t = _latents(seed=2), _latents(seed=3)
    zn, tn = z.numpy().astype(np.float64), t.numpy().astype(np.float64)
    cos = (zn * tn).sum(1) / np.linalg.norm(zn, axis=1) / np.linalg.norm(tn, axis=1)
    assert float(alignment_loss(z, t, "cosine")) == pytest.approx(float(np.mean(1 - cos)), rel=1e-5)
    assert float(alignment_loss(z, t, "mse")) == pytest.approx(float(np.mean((zn - tn) ** 2)), rel=1e-5)


def test_infonce_equals_cross_entropy_of_the_cosine_similarities():
    z, t, tau = _latents(seed=4), _latents(seed=5), 0.2
    zn = z.numpy().astype(np.float64)
    tn = t.numpy().astype(np.float64)
    zn /= np.linalg.norm(zn, axis=1, keepdims=True)
    tn /= np.linalg.norm(tn, axis=1, keepdims=True)
    s = zn @ tn.T / tau
    expected = np.mean(np.log(np.exp(s).sum(1)) - np.diag(s))
    assert float(alignment_loss(z, t, "infonce", tau)) == pytest.approx(expected, rel=1e-5)
    # matched pairs score lower than shuffled ones
    assert float(alignment_loss(t, t, "infonce", tau)) < float(alignment_loss(t[torch.randperm(len(t))], t, "infonce", tau))


def test_alignment_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="kind"):
        alignment_loss(_latents(), _latents(), "l3")
    with pytest.raises(ValueError, match=r"\(N, F\)"):
        alignment_loss(_latents(f=4), _latents(f=5))


@pytest.mark.parametrize("kind", ["classification", "segmentation"])
def test_alignment_gradient_reaches_the_kspace_encoder(kind):
    x = torch.rand(4, 1, 32, 32)
    kspace = torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1)).to(torch.complex64)
    inputs = direct_inputs(None, kspace, "kspace")
    n_out = 2 if kind == "classification" else 1
    teacher = make_task_model(kind, n_outputs=n_out)
    student = make_task_model(kind, in_channels=2, n_outputs=n_out)
    t = teacher_latents(teacher, x)
    student._unfreeze(student.net)
    _, z = student.logits_and_features(inputs)
    alignment_loss(z, t, "cosine").backward()
    first = next(p for p in student.net.parameters() if p.ndim == 4)  # the first convolution: reads the k-space channels
    assert first.shape[1] == 2 and first.grad is not None and float(first.grad.abs().sum()) > 0
    assert all(p.grad is None for p in teacher.net.parameters())  # the clean model stays frozen


def test_logits_and_features_match_logits_and_features():
    x = torch.rand(3, 1, 32, 32)
    for model in (make_task_model("classification", n_outputs=2), make_task_model("segmentation"),
                  make_task_model("regression", n_outputs=2)):
        out, f = model.logits_and_features(x)
        assert torch.allclose(out, model.logits(x), atol=1e-6)
        assert torch.allclose(f, model.features(x), atol=1e-6)


def test_fit_aligned_refuses_augmentation():
    m = make_task_model("segmentation", augment=True)
    x, y = torch.rand(4, 1, 32, 32), torch.zeros(4, 1, 32, 32)
    with pytest.raises(TaskConfigError, match="augment"):
        fit_aligned(m, x, y, x, y, torch.zeros(4, 32), torch.zeros(4, 32))


@pytest.mark.slow
def test_aligned_latent_is_closer_to_the_clean_latent_than_unaligned():
    """Tiny brain cohort, 4x radial k-space: the direct model trained with an alignment loss has test
    latents closer to the clean model's latents of the clean images than the same model trained
    without it, in the distance each loss minimises (cosine distance; mean squared error)."""
    cohort = make_cohort("brain-glioma", n_subjects=16, slices_per_subject=2, size=32)
    deg = make_degradation("kspace", 4, pattern="radial")(cohort.images, list(range(len(cohort))))
    x = direct_inputs(deg.image, deg.kspace, "kspace")
    tr, va, te = (cohort.indices(s) for s in ("train", "val", "test"))
    y = cohort.masks.float()
    params = dict(epochs=4, patience=4, lr=3e-3)
    teacher = make_task_model("segmentation", **params)
    teacher.fit(cohort.images[tr], y[tr], cohort.images[va], y[va], seed=0)
    t_all = teacher_latents(teacher, cohort.images)
    untrained = make_task_model("segmentation", in_channels=2, **params)
    plain = copy.deepcopy(untrained)
    plain.fit(x[tr], y[tr], x[va], y[va], seed=0)
    z_plain = teacher_latents(plain, x[te])
    distances = {"cosine": lambda z: float(latent_distance(z, t_all[te]).mean()),
                 "mse": lambda z: float(((z - t_all[te]) ** 2).mean())}
    for loss, dist in distances.items():
        aligned = copy.deepcopy(untrained)
        fit_aligned(aligned, x[tr], y[tr], x[va], y[va], t_all[tr], t_all[va], seed=0, loss=loss, weight=1.0)
        assert dist(teacher_latents(aligned, x[te])) < dist(z_plain), loss
