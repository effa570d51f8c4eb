"""Glioma growth by the Fisher-Kolmogorov reaction-diffusion equation, batched in torch.

The tumour cell density :math:`c \\in [0, 1]` (fraction of the carrying capacity) obeys

.. math::

    \\frac{\\partial c}{\\partial t} = \\nabla \\cdot (D(x) \\nabla c) + \\rho\\, c (1 - c),

with a zero-flux (Neumann) condition :math:`D \\nabla c \\cdot n = 0` on the border of the tissue
(Swanson et al., Cell Prolif. 2000; Konukoglu et al., IEEE TMI 2010).

Discretisation
--------------
Lie operator splitting on a regular grid of spacing ``h``:

1. diffusion, explicit conservative finite volumes:
   :math:`c_i \\leftarrow c_i + \\frac{\\Delta t}{h^2} \\sum_{a} \\big[D_{i+\\frac12 e_a}(c_{i+e_a} - c_i)
   - D_{i-\\frac12 e_a}(c_i - c_{i-e_a})\\big]`, with face diffusivity the harmonic mean
   :math:`D_{i+\\frac12} = 2 D_i D_{i+1} / (D_i + D_{i+1})` (zero when either side is zero, so a face
   touching a D = 0 voxel, CSF or the outside, carries no flux) and no flux through the grid border;
2. reaction, solved exactly: :math:`c \\leftarrow c e^{\\rho \\Delta t} / (1 - c + c e^{\\rho \\Delta t})`.

The explicit step is stable for :math:`\\Delta t \\le h^2 / (2 d D_{max})` (``d`` spatial dimensions);
each subject gets its own number of steps :math:`n = \\lceil t_{end} / (s\\, h^2 / (2 d D_{max})) \\rceil`
(safety ``s``) and :math:`\\Delta t = t_{end} / n`, so its result does not depend on which batch it is
solved in. Subjects that are done (all steps taken, or an optional target volume reached) leave the
working batch, so a batch costs what its subjects need.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["face_diffusivities", "front_speed", "grow_tumor", "logistic_solution", "stable_time_step"]


def stable_time_step(d_max: Tensor | float, spacing_mm: float, ndim: int) -> Tensor:
    """Largest stable explicit time step :math:`\\Delta t = h^2 / (2 d D_{max})` (days).

    Parameters
    ----------
    d_max:
        Largest diffusivity (mm^2/day), scalar or per subject.
    spacing_mm:
        Grid spacing ``h`` (mm).
    ndim:
        Number of spatial dimensions ``d``.
    """
    d_max = torch.as_tensor(d_max, dtype=torch.float64)
    return spacing_mm**2 / (2.0 * ndim * d_max.clamp_min(1e-30))


def face_diffusivities(diffusivity: Tensor) -> list[Tensor]:
    """Harmonic-mean diffusivity on the faces between neighbours along each spatial axis.

    :math:`D_{i+1/2} = 2 D_i D_{i+1} / (D_i + D_{i+1})`, defined as 0 when both are 0.

    Parameters
    ----------
    diffusivity:
        (B, *spatial) non-negative diffusivity.

    Returns
    -------
    list of Tensor
        One tensor per spatial axis ``a``, shaped like ``diffusivity`` with one fewer entry along ``a``.
    """
    out = []
    for axis in range(1, diffusivity.ndim):
        n = diffusivity.shape[axis]
        lo = diffusivity.narrow(axis, 0, n - 1)
        hi = diffusivity.narrow(axis, 1, n - 1)
        s = lo + hi
        out.append(torch.where(s > 0, 2.0 * lo * hi / s.clamp_min(1e-30), torch.zeros_like(s)))
    return out


def grow_tumor(
    diffusivity: Tensor,
    rho: Tensor,
    c0: Tensor,
    t_end: Tensor,
    spacing_mm: float = 2.0,
    *,
    domain: Tensor | None = None,
    safety: float = 0.9,
    max_steps: int = 20_000,
    stop_volume: Tensor | None = None,
    stop_threshold: float = 0.16,
    check_every: int = 5,
    return_time: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Solve the Fisher-Kolmogorov equation for a batch of subjects (explicit scheme, see module doc).

    Parameters
    ----------
    diffusivity:
        (B, *spatial) diffusivity D (mm^2/day), 1 to 3 spatial dimensions; D = 0 marks voxels the
        tumour cannot enter (no flux crosses a face touching them).
    rho:
        (B,) proliferation rate (1/day).
    c0:
        (B, *spatial) initial density in [0, 1] (a boolean seed mask is taken as density 1 there).
    t_end:
        (B,) growth time (days), non-negative.
    spacing_mm:
        Grid spacing ``h`` (mm), the same along every axis.
    domain:
        Optional (B, *spatial) boolean tissue mask; the density is set to 0 outside it at the start.
    safety:
        Fraction ``s`` of the stability limit :math:`h^2 / (2 d D_{max})` used as time step, in (0, 1].
    max_steps:
        Refuse to run more explicit steps than this for any subject (guards against huge D * t).
    stop_volume:
        Optional (B,) number of voxels: a subject stops growing at the first check (every
        ``check_every`` of its steps) where at least this many voxels have :math:`c >` ``stop_threshold``;
        ``t_end`` is then an upper limit. Checks fall on the same steps whatever the batch.
    stop_threshold:
        Density counted by ``stop_volume``.
    check_every:
        Steps between two checks of ``stop_volume``.
    return_time:
        Also return the (B,) float64 time (days) each subject actually grew.

    Returns
    -------
    Tensor or (Tensor, Tensor)
        (B, *spatial) float32 density at the end of growth, and with ``return_time`` the growth times.
    """
    if diffusivity.ndim < 2 or diffusivity.ndim > 4:
        raise ValueError(
            f"grow_tumor: diffusivity must be (B, *spatial) with 1-3 spatial dims, got {tuple(diffusivity.shape)}"
        )
    b = diffusivity.shape[0]
    ndim = diffusivity.ndim - 1
    if tuple(c0.shape) != tuple(diffusivity.shape):
        raise ValueError(
            f"grow_tumor: c0 shape {tuple(c0.shape)} differs from diffusivity {tuple(diffusivity.shape)}"
        )
    rho = torch.as_tensor(rho, dtype=torch.float64).reshape(-1)
    t_end = torch.as_tensor(t_end, dtype=torch.float64).reshape(-1)
    if rho.numel() != b or t_end.numel() != b:
        raise ValueError(
            f"grow_tumor: rho and t_end need one value per subject ({b}), got {rho.numel()}, {t_end.numel()}"
        )
    if float(diffusivity.min()) < 0:
        raise ValueError("grow_tumor: diffusivity must be non-negative")
    if float(t_end.min()) < 0 or float(rho.min()) < 0:
        raise ValueError("grow_tumor: t_end and rho must be non-negative")
    if not 0 < safety <= 1:
        raise ValueError(f"grow_tumor: safety must lie in (0, 1], got {safety}")

    dif = diffusivity.to(torch.float32)
    c = c0.to(torch.float32).clone()
    if domain is not None:
        c = c * domain.to(torch.float32)
    d_max = dif.reshape(b, -1).amax(dim=1).to(torch.float64)
    dt_stable = safety * stable_time_step(d_max, spacing_mm, ndim)
    n_steps = torch.where(
        t_end > 0,
        torch.where(d_max > 0, torch.ceil(t_end / dt_stable), torch.ones_like(t_end)),
        torch.zeros_like(t_end),
    ).to(torch.int64)
    if int(n_steps.max()) > max_steps:
        i = int(n_steps.argmax())
        raise ValueError(
            f"grow_tumor: subject {i} needs {int(n_steps[i])} explicit steps (D_max={float(d_max[i]):.3g}, "
            f"t_end={float(t_end[i]):.3g}) > max_steps={max_steps}; lower D or t_end, or raise max_steps"
        )
    dt = torch.where(n_steps > 0, t_end / n_steps.clamp_min(1), torch.zeros_like(t_end))
    # CFL / stability check (explicit diffusion)
    if bool((dt * 2 * ndim * d_max > spacing_mm**2 * (1 + 1e-9)).any()):
        raise RuntimeError("grow_tumor: time step violates dt <= h^2 / (2 d D_max)")

    shape1 = (b,) + (1,) * ndim
    coef_all = [f * (dt / spacing_mm**2).to(torch.float32).reshape(shape1) for f in face_diffusivities(dif)]
    growth_all = torch.exp(rho * dt).to(torch.float32).reshape(shape1)
    if stop_volume is not None:
        stop_volume = torch.as_tensor(stop_volume, dtype=torch.float64).reshape(-1)
        if stop_volume.numel() != b:
            raise ValueError(
                f"grow_tumor: stop_volume needs one value per subject ({b}), got {stop_volume.numel()}"
            )
        if check_every < 1:
            raise ValueError(f"grow_tumor: check_every must be >= 1, got {check_every}")

    out = c
    steps_done = torch.zeros(b, dtype=torch.int64)
    active = torch.arange(b)
    n_left = n_steps.clone()
    if stop_volume is not None:  # a subject already at its volume does not grow at all
        vol0 = (c.reshape(b, -1) > stop_threshold).sum(1).double()
        n_left = torch.where(vol0 >= stop_volume, torch.zeros_like(n_left), n_left)

    def gather(idx: Tensor):
        return (
            out[idx].contiguous(),
            [cf[idx] for cf in coef_all],
            growth_all[idx],
            growth_all[idx] - 1.0,
            n_left[idx].tolist(),
        )

    active = active[n_left > 0]
    cc, coef, growth, growth_m1, n_act = gather(active)
    upd = torch.empty_like(cc)
    k = 0
    while active.numel():
        for a in range(ndim):
            axis = a + 1
            n = cc.shape[axis]
            flux = cc.narrow(axis, 1, n - 1) - cc.narrow(axis, 0, n - 1)
            flux.mul_(coef[a])
            if a == 0:
                upd.zero_()
            upd.narrow(axis, 0, n - 1).add_(flux)
            upd.narrow(axis, 1, n - 1).sub_(flux)
        cc.add_(upd)
        # exact logistic reaction step: c e / (1 + c (e - 1))
        den = torch.addcmul(torch.ones_like(cc), cc, growth_m1)
        cc.mul_(growth).div_(den)
        k += 1
        done = torch.tensor([k >= n for n in n_act])
        if stop_volume is not None and k % check_every == 0:
            vol = (cc.reshape(cc.shape[0], -1) > stop_threshold).sum(1).double()
            done |= vol >= stop_volume[active]
        if bool(done.any()):
            out[active[done]] = cc[done]
            steps_done[active[done]] = k
            keep = ~done
            active = active[keep]
            if active.numel():
                cc = cc[keep].contiguous()
                coef = [cf[keep] for cf in coef]
                growth, growth_m1 = growth[keep], growth_m1[keep]
                n_act = [n for n, kp in zip(n_act, keep.tolist()) if kp]
                upd = torch.empty_like(cc)
    if return_time:
        return out, steps_done.double() * dt
    return out


def logistic_solution(c0: Tensor | float, rho: Tensor | float, t: Tensor | float) -> Tensor:
    """Closed-form logistic growth :math:`c(t) = c_0 e^{\\rho t} / (1 - c_0 + c_0 e^{\\rho t})` (D = 0)."""
    c0 = torch.as_tensor(c0, dtype=torch.float64)
    e = torch.exp(torch.as_tensor(rho, dtype=torch.float64) * torch.as_tensor(t, dtype=torch.float64))
    return c0 * e / (1 - c0 + c0 * e)


def front_speed(d: float, rho: float) -> float:
    """Asymptotic Fisher-KPP travelling-wave speed :math:`v = 2 \\sqrt{D \\rho}` (mm/day)."""
    return 2.0 * math.sqrt(d * rho)
