"""Known answers for the Fisher-Kolmogorov solver: logistic growth, front speed, no leaks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reconaudit.cohorts.tumor_growth import (
    face_diffusivities,
    front_speed,
    grow_tumor,
    logistic_solution,
    stable_time_step,
)


def test_logistic_growth_without_diffusion_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    c0 = torch.rand(3, 5, 6, generator=g) * 0.5
    rho = torch.tensor([0.01, 0.05, 0.2])
    t = torch.tensor([30.0, 45.0, 12.5])
    c = grow_tumor(torch.zeros(3, 5, 6), rho, c0, t)
    want = logistic_solution(c0.double(), rho.view(3, 1, 1).double(), t.view(3, 1, 1).double())
    assert torch.allclose(c.double(), want, atol=1e-3)
    # D = 0 and large rho*t: saturates at the carrying capacity, never above
    c_sat = grow_tumor(torch.zeros(1, 8), torch.tensor([1.0]), torch.full((1, 8), 0.1), torch.tensor([50.0]))
    assert float(c_sat.max()) <= 1.0 and float(c_sat.min()) > 0.999


def _front_position(c: np.ndarray, h: float, level: float = 0.5) -> float:
    """Position (mm) where a decreasing 1-D profile crosses ``level``, by linear interpolation."""
    i = int(np.flatnonzero(c < level)[0])
    x0, x1 = (i - 1) * h, i * h
    return x0 + (c[i - 1] - level) / (c[i - 1] - c[i]) * (x1 - x0)


@pytest.mark.parametrize("ndim", [1, 2])
def test_front_travels_at_fisher_speed(ndim):
    d, rho, h, n = 0.5, 0.1, 0.5, 500  # sqrt(D/rho) = 2.2 mm = 4.5 grid cells
    shape = (1, n) if ndim == 1 else (1, 4, n)
    c0 = torch.zeros(shape)
    c0[..., :10] = 1.0  # plane front along the last axis
    dif = torch.full(shape, d)
    t1, t2 = 150.0, 300.0  # rho t = 15 and 30: past the transient
    c1 = grow_tumor(dif, torch.tensor([rho]), c0, torch.tensor([t1]), spacing_mm=h)
    c2 = grow_tumor(dif, torch.tensor([rho]), c0, torch.tensor([t2]), spacing_mm=h)
    p1 = _front_position(c1.reshape(-1, n)[0].numpy(), h)
    p2 = _front_position(c2.reshape(-1, n)[0].numpy(), h)
    speed = (p2 - p1) / (t2 - t1)
    assert speed == pytest.approx(front_speed(d, rho), rel=0.10)
    if ndim == 2:  # a plane front stays plane
        assert torch.allclose(c2[0, 0], c2[0, 3], atol=1e-6)


def test_no_leak_outside_and_mass_conserved_in_closed_domain():
    n = 24
    dif = torch.zeros(2, n, n, n)
    dif[:, 2:10, 2:12, 3:11] = 1.0  # closed box A
    dif[:, 2:10, 2:12, 4:8] = 0.1  # a slower band inside A (heterogeneous medium)
    dif[:, 14:20, 14:20, 14:20] = 1.0  # box B, disconnected from A
    dom = dif > 0
    c0 = torch.zeros(2, n, n, n)
    c0[:, 5, 6, 5] = 0.8
    c = grow_tumor(
        dif, torch.tensor([0.0, 0.05]), c0, torch.tensor([200.0, 200.0]), spacing_mm=2.0, domain=dom
    )
    # nothing outside the domain, nothing in the disconnected box
    assert float(c[~dom].abs().max()) == 0.0
    assert float(c[:, 14:20, 14:20, 14:20].abs().max()) == 0.0
    # rho = 0: pure diffusion conserves total mass and spreads it over box A
    assert float(c[0].sum()) == pytest.approx(0.8, rel=1e-4)
    assert float(c[0, 2:10, 2:12, 3:11].min()) > 0.0
    # rho > 0: density stays in [0, 1]
    assert 0.0 <= float(c[1].min()) and float(c[1].max()) <= 1.0 + 1e-6
    # closed-box Neumann steady state with rho = 0 is uniform: 0.8 / (number of box voxels)
    crop = (slice(0, 1), slice(0, 12), slice(0, 14), slice(0, 13))
    c_long = grow_tumor(dif[crop], torch.tensor([0.0]), c0[crop], torch.tensor([2000.0]), domain=dom[crop])
    box = c_long[0, 2:10, 2:12, 3:11]
    assert torch.allclose(box, torch.full_like(box, 0.8 / box.numel()), rtol=1e-2)


def test_face_diffusivity_is_harmonic_and_zero_next_to_zero():
    dif = torch.tensor([[1.0, 3.0, 0.0, 2.0]])
    (f,) = face_diffusivities(dif)
    assert torch.allclose(f, torch.tensor([[1.5, 0.0, 0.0]]))


def test_result_does_not_depend_on_batch_composition():
    g = torch.Generator().manual_seed(1)
    dif = torch.rand(3, 10, 10, generator=g)
    c0 = torch.zeros(3, 10, 10)
    c0[:, 5, 5] = 0.5
    rho = torch.tensor([0.05, 0.1, 0.02])
    t = torch.tensor([20.0, 5.0, 60.0])
    together = grow_tumor(dif, rho, c0, t)
    alone = grow_tumor(dif[1:2], rho[1:2], c0[1:2], t[1:2])
    assert torch.equal(together[1:2], alone)


def test_stable_step_and_bad_input():
    assert float(stable_time_step(0.5, 2.0, 3)) == pytest.approx(4.0 / 3.0)
    with pytest.raises(ValueError, match="c0 shape"):
        grow_tumor(torch.ones(1, 4), torch.ones(1), torch.ones(1, 5), torch.ones(1))
    with pytest.raises(ValueError, match="max_steps"):
        grow_tumor(torch.ones(1, 4), torch.ones(1), torch.ones(1, 4), torch.tensor([1e6]), max_steps=10)


def test_stop_volume_halts_growth_at_target_and_reports_time():
    n = 41
    dif = torch.full((2, n, n), 0.5)
    c0 = torch.zeros(2, n, n)
    c0[:, 20, 20] = 0.9
    target = torch.tensor([50.0, 200.0])
    c, t = grow_tumor(
        dif,
        torch.tensor([0.1, 0.1]),
        c0,
        torch.tensor([1e3, 1e3]),
        spacing_mm=1.0,
        stop_volume=target,
        stop_threshold=0.3,
        check_every=1,
        return_time=True,
    )
    vol = (c > 0.3).flatten(1).sum(1).double()
    assert bool((vol >= target).all()) and bool((vol < target * 1.5).all())
    assert float(t[0]) < float(t[1]) < 1e3
    # the same growth, run for the reported time without a target, gives the same density
    again = grow_tumor(dif[1:], torch.tensor([0.1]), c0[1:], t[1:], spacing_mm=1.0)
    assert torch.allclose(again, c[1:], atol=1e-5)
