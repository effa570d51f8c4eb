"""Seeds that depend on what a draw is for, not on where it runs.

Every random draw in reconaudit takes an explicit generator seeded from a *purpose*
(e.g. ``"degrade/lowdose-xray/3000"``), the cell seed and the study id, so a study gets the same
noise whichever batch or worker it lands in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np
import torch

_MASK63 = (1 << 63) - 1


def derive_seed(*parts: object) -> int:
    """Return a 63-bit seed from any printable parts (stable across processes and platforms).

    >>> derive_seed("degrade", 0, "study-0001") == derive_seed("degrade", 0, "study-0001")
    True
    """
    h = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode("utf-8"), digest_size=8)
    return int.from_bytes(h.digest(), "little") & _MASK63


def study_seeds(purpose: str, seed: int, study_ids: Iterable[str]) -> list[int]:
    """One seed per study: ``derive_seed(purpose, seed, study_id)``."""
    return [derive_seed(purpose, seed, sid) for sid in study_ids]


def torch_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def numpy_generator(seed: int) -> np.random.Generator:
    """A ``numpy.random.Generator`` (PCG64) seeded with ``seed``."""
    return np.random.default_rng(int(seed))


def as_seed_list(seeds: Sequence[int] | torch.Tensor | np.ndarray, n: int) -> list[int]:
    """Validate per-study seeds: exactly ``n`` integers."""
    if isinstance(seeds, torch.Tensor | np.ndarray):
        seeds = [int(s) for s in seeds.reshape(-1).tolist()]
    seeds = [int(s) for s in seeds]
    if len(seeds) != n:
        raise ValueError(f"seeds: expected one seed per study ({n}), got {len(seeds)}")
    return seeds
