"""Small helpers users expect from Keras."""

from __future__ import annotations

from typing import Any

import numpy as np

from .randomness import set_random_seed

__all__ = ["PyDataset", "set_random_seed", "to_categorical"]


class PyDataset:
    """Keras' ``PyDataset``: subclass it with ``__len__`` (batches per epoch) and
    ``__getitem__(index)`` (a batch: ``(x, y)`` or ``(x, y, sample_weight)``), and optionally
    ``on_epoch_end``; ``fit(dataset)`` trains on it batch by batch. dtrain reads the batches in
    the training thread, one at a time: ``workers`` and ``use_multiprocessing`` (Keras' reading
    ahead in threads or processes) take their defaults only."""

    def __init__(self, workers: int = 1, use_multiprocessing: bool = False, max_queue_size: int = 10):
        if workers != 1 or use_multiprocessing:
            raise ValueError(
                f"PyDataset(workers={workers!r}, use_multiprocessing={use_multiprocessing!r}): dtrain reads the "
                "batches in the training thread, one at a time; leave workers=1 and use_multiprocessing=False."
            )
        self.workers, self.use_multiprocessing, self.max_queue_size = workers, use_multiprocessing, max_queue_size

    def __len__(self) -> int:
        raise NotImplementedError("A PyDataset subclass defines __len__: its number of batches.")

    def __getitem__(self, index: int):
        raise NotImplementedError("A PyDataset subclass defines __getitem__: batch number index, (x, y).")

    def on_epoch_end(self) -> None:
        """Called after every epoch (override it to reshuffle, say)."""


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
