"""Dask arrays: persisted on the cluster, their chunks move worker to worker."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .base import ShardReader, Source, check_dims, overlaps, rewrap, role_name


class DaskArraySource(Source):
    """A Dask array: persisted on the cluster by :meth:`prepare`; each rank receives exactly the
    chunks overlapping its rows (worker to worker, nothing through the client)."""

    def __init__(self, array: Any, role: str | None = None, _chunk_futures: list | None = None):
        self.role = role
        what = f"Dask array {role_name(role)}"
        check_dims(array.shape, np.dtype(array.dtype), what, role)
        if any(math.isnan(c) for c in array.chunks[0]):
            raise ValueError(
                f"{what} has unknown chunk sizes along its rows (shape {array.shape}), so its rows cannot be "
                f"split between workers. Call .compute_chunk_sizes() on it first (x = x.compute_chunk_sizes()); "
                f"that counts the rows on the cluster."
            )
        self.array = array
        self.n_rows, self.row_shape = int(array.shape[0]), tuple(int(s) for s in array.shape[1:])
        self.dtype = np.dtype(array.dtype)
        self.row_chunks: tuple[int, ...] = tuple(int(c) for c in array.chunks[0])
        self._chunk_futures = _chunk_futures  # one future per row chunk, once prepared

    def __getstate__(self) -> dict:
        return {**self.__dict__, "array": None, "_chunk_futures": None}

    def describe(self) -> str:
        chunks = self.row_chunks
        sizes = chunks[:6] + ("...",) * (len(chunks) > 6)
        return (
            f"Dask array {role_name(self.role)} {(self.n_rows, *self.row_shape)} {self.dtype} in {len(chunks)} "
            f"chunks of ({', '.join(map(str, sizes))}) rows"
        )

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = self._check_range(start, stop)
        if self.array is None:
            raise RuntimeError(f"{self.describe()} was pickled without its graph; read it through shard().")
        if self._chunk_futures:  # persisted: compute through the client that holds the chunks
            return np.asarray(self._chunk_futures[0].client.compute(self.array[start:stop]).result())
        return np.asarray(self.array[start:stop].compute())

    def prepare(self, client: Any) -> DaskArraySource:
        """Persist on the cluster (cheap if already persisted), one chunk across the columns so
        that a row range is a list of whole-width chunks, and wait until every chunk is held
        somewhere: :meth:`locality` needs that, and a failing chunk is reported here, before
        training starts. The chunks stay on the workers."""
        if self._chunk_futures is not None:
            return self
        from distributed import futures_of

        array = self.array
        if any(len(c) > 1 for c in array.chunks[1:]):
            array = array.rechunk({axis: -1 for axis in range(1, array.ndim)})
        array = client.persist(array)
        by_key = {f.key: f for f in futures_of(array)}
        keys = array.__dask_keys__()
        for _ in range(array.ndim - 1):
            keys = [k[0] for k in keys]
        futures = [by_key[k] for k in keys]
        for future in futures:
            # Waits for the chunk without fetching it; through the future's own client (the
            # caller's client need not be Dask's default one).
            exc = future.exception()
            if exc is not None:
                raise rewrap(exc, f"computing {self.describe()} on the cluster failed: {exc!r}") from exc
        return DaskArraySource(array, self.role, futures)

    def _futures(self) -> list:
        if self._chunk_futures is None:
            raise RuntimeError(f"call prepare(client) on {self.describe()} before shard().")
        return self._chunk_futures

    def shard(self, start: int, stop: int, client: Any, worker: str) -> ShardReader:
        start, stop = self._check_range(start, stop)
        futures, parts = self._futures(), overlaps(self.row_chunks, start, stop)
        return _ChunkReader(
            start,
            stop,
            self.row_shape,
            self.dtype,
            [futures[i] for i, _, _ in parts],
            [(lo, hi) for _, lo, hi in parts],
        )

    def locality(self, start: int, stop: int, client: Any) -> dict[str, int]:
        if self._chunk_futures is None:
            return {}
        start, stop = self._check_range(start, stop)
        parts = overlaps(self.row_chunks, start, stop)
        futures = [self._chunk_futures[i] for i, _, _ in parts]
        who_has = client.who_has(futures)
        held: dict[str, int] = {}
        for future, (_, lo, hi) in zip(futures, parts):
            for address in who_has.get(future.key, ()):
                held[address] = held.get(address, 0) + (hi - lo) * self.row_nbytes()
        return held


class _ChunkReader(ShardReader):
    def __init__(self, start, stop, row_shape, dtype, dependencies, slices: list[tuple[int, int]]):
        super().__init__(start, stop, row_shape, dtype, dependencies)
        self.slices = slices

    def _load(self, resolved: list) -> np.ndarray:
        if len(resolved) != len(self.slices):
            raise RuntimeError(
                f"expected the values of {len(self.slices)} Dask chunks, received {len(resolved)}: pass "
                f"reader.dependencies as one top-level list argument of client.submit."
            )
        pieces = [np.asarray(chunk)[lo:hi] for chunk, (lo, hi) in zip(resolved, self.slices)]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
