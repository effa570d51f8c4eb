"""A user's own model: an importable factory (``plugin``) or a folder of reconstructions (``folder``).

``plugin``: ``target="package.module:factory"`` names a callable; ``factory(**factory_kwargs)`` returns
either a ``torch.nn.Module`` mapping (N, 1, H, W) -> (N, 1, H, W), or a plain callable on such tensors.
``weights=`` loads a state dict (``.safetensors``, or a ``.pt``/``.pth`` file read with
``torch.load(weights_only=True)``) into the module.  A module with parameters is trained like the U-Net
(pixel loss, the shared loop) unless ``trainable=False``; a plain callable is never trained.

``folder``: ``path=`` holds one precomputed reconstruction per study, ``<study_id>.npy`` (float32
(H, W), values in [0, 1]) or ``<study_id>.png`` (8- or 16-bit greyscale, scaled to [0, 1]);
:meth:`FolderReconstructor.reconstruct` needs ``study_ids=``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from reconaudit.physics.base import Degraded
from reconaudit.plugins import import_target, load_into, load_state_dict_file
from reconaudit.recon.base import PairSet, Reconstructor, TrainingHooks
from reconaudit.recon.training import (
    ParamsMixin,
    ReconParams,
    TrainParams,
    as_samples,
    check_degraded,
)
from reconaudit.recon.unet import ImageToImageReconstructor


def load_target(target: str) -> Callable:
    """Import ``"package.module:attribute"`` and return the attribute (see :func:`reconaudit.plugins.import_target`)."""
    return import_target(target, ValueError)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``weights_only`` torch file (see :mod:`reconaudit.plugins`)."""
    return load_state_dict_file(path)


class _CallableModule(nn.Module):
    """Wraps a plain callable as a parameter-free module."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``fn(x)``."""
        return self.fn(x)


class PluginReconstructor(ImageToImageReconstructor):
    """A user's model or callable, imported from ``target`` (see the module docstring)."""

    name: ClassVar[str] = "plugin"

    class Params(TrainParams):
        """Hyperparameters of :class:`PluginReconstructor` (plus those of :class:`TrainParams`)."""

        target: str
        factory_kwargs: dict = Field(default_factory=dict)
        weights: str | None = None
        trainable: bool | None = None
        loss: Literal["mse", "l1"] = "mse"
        residual: bool = False
        pad_multiple: int = Field(1, ge=1)

    def __init__(self, device: str | torch.device = "cpu", **params: object) -> None:
        super().__init__(device, **params)
        self._factory = load_target(self.hp.target)
        self._ensure_built()
        assert self.modules is not None
        net = self.modules["net"]
        has_params = any(True for _ in net.parameters())
        if self.hp.trainable and not has_params:
            raise ValueError(f"plugin target={self.hp.target!r}: trainable=True but the model has no parameters")
        self.trainable = bool(has_params if self.hp.trainable is None else self.hp.trainable)  # type: ignore[misc]
        if self.hp.weights is not None:
            if not has_params:
                raise ValueError(f"plugin weights= given but target={self.hp.target!r} is not an nn.Module with parameters")
            load_into(net, load_weights(self.hp.weights), self.hp.weights, self.hp.target)
        self.fitted = True  # a plug-in is usable as it comes

    @property
    def _multiple(self) -> int:  # type: ignore[override]
        return self.hp.pad_multiple

    def _build(self) -> dict[str, nn.Module]:
        obj = self._factory(**self.hp.factory_kwargs)
        if isinstance(obj, nn.Module):
            return {"net": obj}
        if callable(obj):
            return {"net": _CallableModule(obj)}
        raise ValueError(f"plugin target={self.hp.target!r} returned {type(obj).__name__}, not a module or callable")

    def fit(
        self,
        train: PairSet,
        val: PairSet,
        *,
        seed: int = 0,
        hooks: TrainingHooks | None = None,
        checkpoint_dir: str | Path | None = None,
    ) -> dict:
        """Train with the shared loop when trainable; otherwise do nothing and return ``{}``."""
        if not self.trainable:
            return {}
        return super().fit(train, val, seed=seed, hooks=hooks, checkpoint_dir=checkpoint_dir)


class FolderReconstructor(ParamsMixin, Reconstructor):
    """Precomputed reconstructions read from ``path`` by study id (``<id>.npy`` or ``<id>.png``)."""

    name: ClassVar[str] = "folder"

    class Params(ReconParams):
        """Hyperparameters of :class:`FolderReconstructor`."""

        path: str
        format: Literal["auto", "npy", "png"] = "auto"

    def __init__(self, device: str | torch.device = "cpu", **params: object) -> None:
        self._init_params(device, dict(params))
        self.path = Path(self.hp.path)
        if not self.path.is_dir():
            raise ValueError(f"folder reconstructor: path={str(self.path)!r} is not a directory")

    def _file(self, sid: str, ext: str) -> Path:
        """``path/<sid>.<ext>``; a study id that would resolve outside the folder is refused."""
        base = self.path.resolve()
        f = (self.path / f"{sid}.{ext}").resolve()
        if Path(sid).is_absolute() or (f != base and base not in f.parents):
            raise ValueError(
                f"folder reconstructor: study id {sid!r} names a file outside the folder {str(self.path)!r} "
                "(an absolute path or '..'); study ids must be plain names inside the folder"
            )
        return f

    def _read(self, sid: str) -> np.ndarray:
        exts = ["npy", "png"] if self.hp.format == "auto" else [self.hp.format]
        for ext in exts:
            f = self._file(sid, ext)
            if f.exists():
                if ext == "npy":
                    try:
                        arr = np.load(f, allow_pickle=False)
                    except (ValueError, OSError, EOFError) as err:
                        raise ValueError(
                            f"folder reconstructor: {str(f)!r} is not a plain numeric .npy array ({err}); "
                            "save each reconstruction with numpy.save of a float32 (H, W) array"
                        ) from None
                    if not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.number):
                        raise ValueError(f"folder reconstructor: {str(f)!r} holds {arr.dtype} values, "
                                         "not numbers; save a float32 (H, W) array")
                    return np.asarray(arr, dtype=np.float32).squeeze()
                from PIL import Image

                with Image.open(f) as im:
                    arr = np.asarray(im)
                if arr.ndim == 3:
                    raise ValueError(f"{f}: expected a greyscale PNG, got {arr.shape[2]} channels")
                scale = 65535.0 if arr.dtype == np.uint16 or arr.max() > 255 else 255.0
                return arr.astype(np.float32) / scale
        raise FileNotFoundError(
            f"folder reconstructor: no reconstruction for study {sid!r} in {str(self.path)!r} "
            f"(looked for {', '.join(f'{sid}.{e}' for e in exts)})"
        )

    def reconstruct(
        self,
        degraded: Degraded,
        *,
        seeds: Sequence[int] | None = None,
        samples: int = 1,
        study_ids: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Stack the stored reconstructions of ``study_ids`` into float32 (N, 1, H, W)."""
        check_degraded(degraded, "folder.reconstruct")
        if study_ids is None:
            raise ValueError("folder reconstructor: reconstruct() needs study_ids= (one id per study)")
        if len(study_ids) != len(degraded):
            raise ValueError(f"folder reconstructor: {len(study_ids)} study_ids for {len(degraded)} studies")
        h, w = degraded.image.shape[-2:]
        out = []
        for sid in study_ids:
            arr = self._read(str(sid))
            if arr.shape != (h, w):
                raise ValueError(
                    f"folder reconstructor: {self.path}/{sid}: shape {arr.shape} differs from the input's {(h, w)}"
                )
            out.append(torch.from_numpy(arr))
        return as_samples(torch.stack(out).unsqueeze(1).to(torch.float32), samples)
