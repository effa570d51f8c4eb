"""Loading a user's own code and weights: one place for reconstructors and diagnostic models.

A plug-in is named ``"package.module:factory"`` (the attribute may be dotted); weights are read
from ``.safetensors`` or from a ``torch.save`` file with ``weights_only=True`` (nothing unpickled).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def import_target(target: str, error: type[Exception] = ValueError) -> Callable:
    """Import ``"package.module:attr[.attr]"`` and return the callable it names.

    Raises ``error`` (default ``ValueError``) naming the target and what is wrong: no ``:``, a module
    that cannot be imported, a missing attribute, or an attribute that is not callable.
    """
    if not isinstance(target, str) or ":" not in target:
        raise error(f"plugin target must look like 'package.module:factory', got {target!r}")
    mod_name, attr = target.split(":", 1)
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as err:
        raise error(
            f"plugin target {target!r}: cannot import module {mod_name!r} ({err}); is it installed or on PYTHONPATH?"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise error(f"plugin target {target!r}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise error(f"plugin target {target!r} is not callable")
    return obj


class WeightsError(ValueError):
    """A weights file cannot be used: the message names the config key, the file and the fix."""


_SAVE_ADVICE = (
    "save the weights as safetensors, e.g. `safetensors.torch.save_file(model.state_dict(), 'model.safetensors')`"
)


def load_state_dict_file(path: str | Path, key: str = "weights") -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``torch.save`` file read with ``weights_only=True``.

    A checkpoint that wraps the state dict under ``state_dict``, ``model`` or ``model_state_dict``
    is unwrapped.  Every failure (missing or empty file, damaged file, a pickle holding Python
    objects, anything but a dict of tensors) raises :class:`WeightsError` naming ``key`` (the
    config key that named the file) and the file, and advising safetensors; nothing is unpickled
    beyond tensors, and the file is never re-read without ``weights_only``.
    """
    p = Path(path)
    where = f"{key}={str(p)!r}"
    if not p.is_file():
        raise WeightsError(f"{where}: the weights file does not exist (check the path; relative paths are read "
                           "from the working directory)")
    if p.stat().st_size == 0:
        raise WeightsError(f"{where}: the weights file is empty; {_SAVE_ADVICE}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as err:  # noqa: BLE001 - SafetensorError, OSError: all mean "not readable"
            raise WeightsError(f"{where}: not a readable safetensors file ({type(err).__name__}); it may be "
                               f"damaged, truncated or another format under this name; {_SAVE_ADVICE}") from None
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not the user's concern
            warnings.simplefilter("ignore")
            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, ...
        raise WeightsError(
            f"{where}: cannot be read as a plain state dict of tensors ({type(err).__name__}): the file holds "
            f"Python objects other than tensors (such files are refused: loading them could run code), "
            f"or it is damaged; {_SAVE_ADVICE}"
        ) from None
    if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        for k in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(k), dict):
                state = state[k]
                break
    if not isinstance(state, dict) or not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        got = type(state).__name__ if not isinstance(state, dict) else "a dict that is not name -> tensor"
        raise WeightsError(f"{where}: does not hold a state dict of named tensors (got {got}); {_SAVE_ADVICE}")
    return state


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path, target: str,
              key: str = "weights") -> None:
    """``module.load_state_dict(state, strict=True)``; a mismatch raises :class:`WeightsError` naming
    the file, the target and the missing / unexpected / mis-shaped keys."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        raise WeightsError(f"{key}={str(path)!r} does not fit the module built by {target!r}: "
                           f"{detail[:600]}") from None
