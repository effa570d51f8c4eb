"""Input handling shared by the metric modules: convert at the boundary, then trust the data."""

from __future__ import annotations

import numpy as np


def to_numpy(x: object, name: str, dtype: type | None = None) -> np.ndarray:
    """Return ``x`` (numpy array, torch tensor, sequence) as a numpy array.

    Torch tensors are detached and moved to the CPU without importing torch here.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()  # type: ignore[union-attr]
    try:
        arr = np.asarray(x) if dtype is None else np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: could not convert a {type(x).__name__} to a numpy array ({exc})") from exc
    return arr


def as_1d(x: object, name: str, dtype: type | None = None) -> np.ndarray:
    """A one-dimensional array (column vectors of shape (n, 1) are flattened)."""
    arr = to_numpy(x, name, dtype)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a one-dimensional array, got shape {arr.shape}")
    return arr


def check_same_length(**arrays: np.ndarray) -> int:
    """Raise when the arrays differ in length; return the common length."""
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inputs must have one entry per study; got lengths {lengths}")
    return next(iter(lengths.values())) if lengths else 0


def as_binary(x: object, name: str) -> np.ndarray:
    """A 1-D array of 0/1 labels as int8; raises on other values (NaN included)."""
    arr = as_1d(x, name)
    if arr.dtype == bool:
        return arr.astype(np.int8)
    arr = arr.astype(np.float64)
    bad = ~np.isin(arr, (0.0, 1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name}: expected binary labels 0/1, got {arr[i]!r} at index {i}; "
            "drop missing targets (NaN) before calling or binarise the values"
        )
    return arr.astype(np.int8)


def group_codes(
    sensitive_features: object, name: str = "sensitive_features"
) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes 0..G-1 and the sorted group labels of a 1-D group attribute."""
    arr = as_1d(sensitive_features, name)
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise ValueError(f"{name}: contains NaN; fill missing group values (e.g. 'unknown') first")
    if arr.dtype == object:
        arr = arr.astype(str)
    labels, codes = np.unique(arr, return_inverse=True)
    return codes.astype(np.int64), labels
