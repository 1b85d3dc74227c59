"""Small helpers users expect from Keras."""

from __future__ import annotations

from typing import Any

import numpy as np

from .randomness import set_random_seed

__all__ = ["set_random_seed", "to_categorical"]


def to_categorical(y: Any, num_classes: int | None = None, dtype: str = "float32") -> np.ndarray:
    """One-hot encode integer class labels: shape (n,) -> (n, num_classes)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.ndim != 1:
        raise ValueError(f"to_categorical expects labels of shape (n,), received shape {y.shape}.")
    if y.dtype.kind == "f" and not np.all(np.floor(y) == y):
        raise ValueError("to_categorical expects integer labels, received non-integer values.")
    if y.dtype.kind not in "biuf":
        raise ValueError(f"to_categorical expects integer labels, received dtype {y.dtype}.")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise ValueError(f"to_categorical expects non-negative labels, received {int(y.min())}.")
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y.size else 0
    elif y.size and y.max() >= num_classes:
        raise ValueError(f"Label {int(y.max())} is out of range for num_classes={num_classes}.")
    out = np.zeros((len(y), num_classes), dtype=dtype)
    out[np.arange(len(y)), y] = 1
    return out
