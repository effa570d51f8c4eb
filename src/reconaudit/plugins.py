"""Loading a user's own code and weights: one place for reconstructors and diagnostic models.

A plug-in is named ``"package.module:factory"`` (the attribute may be dotted); weights are read
from ``.safetensors`` or from a ``torch.save`` file with ``weights_only=True`` (nothing unpickled).
"""

from __future__ import annotations

import importlib
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


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``torch.save`` file read with ``weights_only=True``.

    A checkpoint that wraps the state dict under ``state_dict``, ``model`` or ``model_state_dict``
    is unwrapped.  A missing file raises ``FileNotFoundError``; anything else than a dict of tensors
    raises ``ValueError``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"plugin weights file {str(p)!r} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    state = torch.load(str(p), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise ValueError(f"plugin weights file {str(p)!r} does not hold a state dict (got {type(state).__name__})")
    return state
