"""Reconstructors behind one interface (``fit``, ``reconstruct``, ``save``, ``load``), selectable by name.

>>> rec = make_reconstructor("classical", weight=0.1)
>>> sorted(RECONSTRUCTORS)
['classical', 'folder', 'identity', 'irsde', 'pix2pix', 'plugin', 'sense', 'unet', 'varnet']
"""

from __future__ import annotations

import difflib

import torch

from reconaudit.recon.base import LossHook, PairSet, Reconstructor, TrainingHooks
from reconaudit.recon.classical import ClassicalReconstructor
from reconaudit.recon.identity import IdentityReconstructor
from reconaudit.recon.irsde import IRSDEReconstructor
from reconaudit.recon.pix2pix import Pix2PixReconstructor
from reconaudit.recon.plugins import FolderReconstructor, PluginReconstructor
from reconaudit.recon.sense import SenseReconstructor
from reconaudit.recon.training import LearnedReconstructor
from reconaudit.recon.unet import UNetReconstructor
from reconaudit.recon.varnet import VarNetReconstructor

RECONSTRUCTORS: dict[str, type[Reconstructor]] = {
    IdentityReconstructor.name: IdentityReconstructor,
    ClassicalReconstructor.name: ClassicalReconstructor,
    UNetReconstructor.name: UNetReconstructor,
    Pix2PixReconstructor.name: Pix2PixReconstructor,
    IRSDEReconstructor.name: IRSDEReconstructor,
    PluginReconstructor.name: PluginReconstructor,
    FolderReconstructor.name: FolderReconstructor,
    SenseReconstructor.name: SenseReconstructor,
    VarNetReconstructor.name: VarNetReconstructor,
}
"""Registry: config name -> reconstructor class (one line per reconstructor, as in ``physics``)."""


def make_reconstructor(name: str, device: str | torch.device = "cpu", **params: object) -> Reconstructor:
    """Build the reconstructor registered as ``name`` with validated hyperparameters.

    Raises
    ------
    ValueError
        For an unknown ``name`` or parameter (the message lists the allowed values) or an invalid value.
    """
    if name not in RECONSTRUCTORS:
        close = difflib.get_close_matches(str(name), list(RECONSTRUCTORS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown reconstructor {name!r}{hint}; allowed: {sorted(RECONSTRUCTORS)}")
    return RECONSTRUCTORS[name](device=device, **params)


__all__ = [
    "RECONSTRUCTORS",
    "ClassicalReconstructor",
    "FolderReconstructor",
    "IRSDEReconstructor",
    "IdentityReconstructor",
    "LearnedReconstructor",
    "LossHook",
    "PairSet",
    "Pix2PixReconstructor",
    "PluginReconstructor",
    "Reconstructor",
    "SenseReconstructor",
    "TrainingHooks",
    "UNetReconstructor",
    "VarNetReconstructor",
    "make_reconstructor",
]
