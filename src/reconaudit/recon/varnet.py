"""The end-to-end variational network (Sriram et al., MICCAI 2020) from MONAI's building blocks.

``monai.apps.reconstruction.networks.nets``: a :class:`CoilSensitivityModel` (a ``ComplexUnet`` on
the calibration region's coil images, normalised to unit RSS) estimates the maps :math:`S`; then
``cascades`` VarNet blocks update the coil k-space,

.. math::

    k^{t+1} = k^t - \\eta_t M (k^t - y) - F S\\, \\mathcal{R}_t\\big(S^H F^{-1} k^t\\big),

with :math:`\\mathcal{R}_t` a ``ComplexUnet`` and :math:`\\eta_t` a learned data-consistency
weight. With ``hard_dc`` (default) the measured lines then replace the prediction,
:math:`k \\leftarrow (1 - M) k + M y`, so the output is exactly consistent with what was measured;
the image is the root-sum-of-squares :math:`\\sqrt{\\sum_c |F^{-1} k_c|^2}`. The forward pass is
MONAI's ``VariationalNetworkModel.forward`` with the calibration region found from the masks of
the whole batch (MONAI reads it from one mask) and the final hard data consistency added. The
last convolution of every refinement network starts at zero, so training starts from the
zero-filled RSS image and improves on it.

Masks must be Cartesian line masks (``pattern`` ``random`` or ``equispaced``): the sensitivity model
takes its calibration region from the sampled centre lines.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from reconaudit.physics.base import Degraded
from reconaudit.physics.mri import ifft2c
from reconaudit.recon.training import TrainParams
from reconaudit.recon.unet import ImageToImageReconstructor

__all__ = ["VarNetReconstructor", "line_mask"]


def line_mask(mask: torch.Tensor, where: str = "varnet") -> torch.Tensor:
    """A Cartesian mask (N or 1, 1, H, W) as MONAI's line mask (N or 1, 1, 1, W, 1) bool.

    Raises ``ValueError`` when the mask is not constant along H (a 2-D variable-density or radial mask).
    """
    m = mask.to(torch.bool)
    if not bool((m == m[:, :, :1, :]).all()):
        raise ValueError(
            f"{where}: needs a Cartesian line mask (pattern 'random' or 'equispaced'); this mask varies along "
            "the readout (gaussian / radial)"
        )
    return m[:, :, :1, :].unsqueeze(-1)


class VarNetReconstructor(ImageToImageReconstructor):
    """End-to-end VarNet (module docstring) trained with the shared loop: MSE or L1 on the RSS image.

    Defaults are a CPU quickstart (4 cascades, ComplexUnet features (8, 16, 32, 64, 128, 8) for the
    maps and the refinement). The paper's size on a GPU: ``cascades=12``,
    ``features=[18, 36, 72, 144, 288, 18]``, ``sens_features=[8, 16, 32, 64, 128, 8]``, ``lr=3e-4``.
    """

    name: ClassVar[str] = "varnet"

    class Params(TrainParams):
        """Hyperparameters of :class:`VarNetReconstructor` (plus those of :class:`TrainParams`)."""

        cascades: int = Field(4, ge=1)
        features: tuple[int, int, int, int, int, int] = (8, 16, 32, 64, 128, 8)
        sens_features: tuple[int, int, int, int, int, int] = (8, 16, 32, 64, 128, 8)
        hard_dc: bool = True
        loss: Literal["mse", "l1"] = "mse"

    def _build(self) -> dict[str, nn.Module]:
        from monai.apps.reconstruction.networks.nets.coil_sensitivity_model import CoilSensitivityModel
        from monai.apps.reconstruction.networks.nets.complex_unet import ComplexUnet
        from monai.apps.reconstruction.networks.nets.varnet import VariationalNetworkModel

        sens = CoilSensitivityModel(spatial_dims=2, features=self.hp.sens_features)
        refine = ComplexUnet(spatial_dims=2, features=self.hp.features)
        nn.init.zeros_(refine.unet.final_conv.weight)  # each cascade starts as the identity on k-space,
        nn.init.zeros_(refine.unet.final_conv.bias)  # so the untrained network is the zero-filled RSS
        return {"net": VariationalNetworkModel(sens, refine, num_cascades=self.hp.cascades, spatial_dims=2)}

    def predict_kspace(self, batch: Degraded) -> torch.Tensor:
        """The network's coil k-space (N, C, H, W) complex64 (after the hard data consistency)."""
        assert self.modules is not None
        if batch.kspace is None or batch.mask is None:
            raise ValueError("varnet: needs measured k-space and a mask (an MRI degradation, 'kspace')")
        net = self.modules["net"]
        y = batch.kspace.to(self.device, torch.complex64)
        m = line_mask(batch.mask.to(self.device))
        masked = torch.view_as_real(y).contiguous()  # (N, C, H, W, 2)
        calib = m.all(dim=0, keepdim=True)  # lines sampled in every study of the batch
        maps = net.coil_sensitivity_model(masked, calib)
        k = masked.clone()
        for cascade in net.cascades:
            k = cascade(k, masked, m, maps)
        if self.hp.hard_dc:
            k = torch.where(m, masked, k)
        return torch.view_as_complex(k.contiguous())

    def _forward(self, batch: Degraded) -> torch.Tensor:
        z = ifft2c(self.predict_kspace(batch))
        power = (z.real**2 + z.imag**2).sum(1, keepdim=True)
        return torch.sqrt(power + 1e-12).to(torch.float32)  # RSS, differentiable at 0
