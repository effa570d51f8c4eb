"""CG-SENSE: the classical multi-coil reconstruction (Pruessmann et al., MRM 46, 2001), batched in torch.

With the multi-coil operator :math:`A = M F S` of :mod:`reconaudit.physics.coils`, the image is the
solution of the (optionally Tikhonov-regularised) normal equations

.. math:: (A^H A + \\lambda I)\\, x = A^H y,

found by conjugate gradients, all studies of a batch at once (per-study step sizes, and a study
stops updating once its residual falls below ``tol`` times its initial one). Sensitivities are
estimated from the fully sampled calibration region of each study
(:func:`~reconaudit.physics.coils.estimate_sensitivities`); the magnitude :math:`|x|` is returned.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from reconaudit.physics.base import Degraded
from reconaudit.physics.coils import coil_adjoint, coil_forward, estimate_sensitivities
from reconaudit.recon.classical import ClassicalReconstructor
from reconaudit.recon.training import ReconParams

__all__ = ["SenseReconstructor", "cg_sense"]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-study :math:`\\langle a, b \\rangle = \\sum \\bar a b` over all but the first axis, shape (N, 1, 1, 1)."""
    return (a.conj() * b).sum(dim=tuple(range(1, a.ndim)), keepdim=True)


def cg_sense(
    kspace: torch.Tensor,
    mask: torch.Tensor,
    maps: torch.Tensor | None,
    *,
    lam: float = 0.0,
    iterations: int = 30,
    tol: float = 1e-6,
) -> torch.Tensor:
    """Solve :math:`(A^H A + \\lambda I) x = A^H y` by conjugate gradients from :math:`x_0 = 0`.

    Parameters
    ----------
    kspace:
        Measured coil k-space :math:`y` (N, C, H, W) complex.
    mask:
        Sampling mask (N or 1, 1, H, W).
    maps:
        Sensitivities (N or 1, C, H, W) complex, or ``None`` for one coil with :math:`S = 1`.
    lam:
        Tikhonov weight :math:`\\lambda \\ge 0`.
    iterations:
        Most CG iterations.
    tol:
        A study stops when :math:`\\|r_k\\| \\le \\mathrm{tol} \\, \\|r_0\\|`.

    Returns
    -------
    torch.Tensor
        The complex image (N, 1, H, W) complex64.
    """
    if lam < 0:
        raise ValueError(f"cg_sense: lam must be >= 0, got {lam!r}")

    def normal(v: torch.Tensor) -> torch.Tensor:
        return coil_adjoint(coil_forward(v, maps, mask), maps, mask) + lam * v

    b = coil_adjoint(kspace, maps, mask)
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = _dot(r, r).real
    stop = tol**2 * rs
    for _ in range(int(iterations)):
        active = rs > stop
        if not bool(active.any()):
            break
        ap = normal(p)
        den = _dot(p, ap).real
        alpha = torch.where(active & (den > 0), rs / den.clamp_min(1e-30), torch.zeros_like(rs))
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = _dot(r, r).real
        beta = torch.where(active, rs_new / rs.clamp_min(1e-30), torch.zeros_like(rs))
        p = r + beta * p
        rs = torch.where(active, rs_new, rs)
    return x


class SenseReconstructor(ClassicalReconstructor):
    """CG-SENSE from the measured coil k-space (module docstring); the magnitude, float32 (N, 1, H, W).

    ``reconstruct`` is the classical reconstructor's batched loop over :meth:`solve` (``|x|``,
    clipped to [0, 1], repeated to K samples if asked).

    Parameters (``Params``)
    -----------------------
    lam:
        Tikhonov weight :math:`\\lambda` (default 0.01: with maps normalised to unit RSS,
        :math:`A^H A` has eigenvalues in [0, 1], so 0.01 damps only badly conditioned directions).
    iterations, tol:
        Conjugate-gradient iterations and relative residual tolerance.
    threshold:
        Relative low-resolution RSS below which estimated maps are set to zero (outside the object;
        default 0.05: without it, CG fits the unit-norm maps of empty background as well).
    batch_size:
        Studies per batched solve.
    """

    name: ClassVar[str] = "sense"
    progress_label: ClassVar[str] = "CG-SENSE"

    class Params(ReconParams):
        """Hyperparameters of :class:`SenseReconstructor`."""

        lam: float = Field(0.01, ge=0)
        iterations: int = Field(30, ge=1)
        tol: float = Field(1e-6, gt=0)
        threshold: float = Field(0.05, ge=0, lt=1)
        batch_size: int = Field(32, ge=1)

    def solve(self, degraded: Degraded) -> torch.Tensor:
        """The complex CG-SENSE image (N, 1, H, W) of one batch, on the reconstructor's device."""
        if degraded.kspace is None or degraded.mask is None:
            raise ValueError("sense.reconstruct: needs measured k-space and a mask (an MRI degradation, 'kspace')")
        y = degraded.kspace.to(self.device, torch.complex64)
        m = degraded.mask.to(self.device, torch.float32)
        maps = estimate_sensitivities(y, m, threshold=self.hp.threshold) if y.shape[1] > 1 else None
        return cg_sense(y, m, maps, lam=self.hp.lam, iterations=self.hp.iterations, tol=self.hp.tol)

    def _solve(self, d: Degraded) -> torch.Tensor:
        return self.solve(d).abs().clamp(0.0, 1.0)
