"""NumPy arrays (or anything np.asarray takes) in the client's memory: a NumPy slice is
scattered straight to its worker."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import to_numpy
from .base import ShardReader, Source, check_dims, role_name


class ArraySource(Source):
    """An array in the client's memory; each worker is sent only its own slice."""

    def __init__(self, array: Any, role: str | None = None):
        self.role = role
        try:
            array = to_numpy(array)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{role_name(role)} could not be read as a numeric array: {exc}") from None
        check_dims(array.shape, array.dtype, role_name(role), role)
        self.array: np.ndarray | None = array
        self.n_rows, self.row_shape, self.dtype = array.shape[0], array.shape[1:], array.dtype

    def __getstate__(self) -> dict:
        return {**self.__dict__, "array": None}  # metadata only: rows travel through shard()

    def _data(self) -> np.ndarray:
        if self.array is None:
            raise RuntimeError(
                f"{self.describe()} was pickled without its rows (a Source never carries data between "
                f"processes); get them on a worker through shard() and ShardReader.load()."
            )
        return self.array

    def describe(self) -> str:
        return f"NumPy array {role_name(self.role)} {(self.n_rows, *self.row_shape)} {self.dtype}"

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = self._check_range(start, stop)
        return self._data()[start:stop]  # a view: the rows are already in this process

    def shard(self, start: int, stop: int, client: Any, worker: str) -> ShardReader:
        start, stop = self._check_range(start, stop)
        # Only the slice is serialised (a row slice of a C array is contiguous; Dask copies
        # just the slice otherwise), and it goes to that worker alone.
        # A 1-byte lead array goes first: Dask places the first buffer of a message at an odd
        # offset, and a misaligned shard made every batch gather of the training loop ~10% of a
        # step slower (measured: 31.4 -> 28.1 ms per step of 784-1024-1024-10 at batch 256).
        [future] = client.scatter([(_LEAD, self._data()[start:stop])], workers=[worker], hash=False)
        return _ValueReader(start, stop, self.row_shape, self.dtype, [future])


_LEAD = np.zeros(1, dtype=np.uint8)


class _ValueReader(ShardReader):
    def _load(self, resolved: list) -> np.ndarray:
        _, rows = resolved[0]
        return np.asarray(rows)
