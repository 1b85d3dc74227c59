"""What every source shares: the two interfaces, and helpers used by several formats.

A :class:`Source` is metadata (rows, row shape, dtype) plus the recipe that gets rows
[start, stop) to the worker training on them, without passing through the client when they
need not. A :class:`ShardReader` carries that recipe for one rank's rows to the worker.

How the driver uses a source (client side unless said otherwise)::

    src = as_source(x, "x").prepare(client)   # checks; persist Dask arrays; count table rows
    check_same_rows(x_src, y_src)
    client.run(src.access_check(), workers=chosen)    # when not None: a reason, or None if readable
    reader = src.shard(lo, hi, client, worker)       # once per logical shard
    client.submit(rank, reader, reader.dependencies, workers=[worker], ...)
    rows = reader.load(resolved_dependencies)         # in the rank task, on the worker
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

NUMERIC = "biuf"  # bool, signed, unsigned, float: what the maths accepts (as dtrain.data)


def role_name(role: str | None) -> str:
    return role or "data"


def role_prefix(role: str | None) -> str:
    return f"{role} from " if role else ""


def running_on() -> str:
    """Where this code runs, for error messages: the worker address, or 'the client'."""
    try:
        from distributed import get_worker

        return f"worker {get_worker().address}"
    except (ImportError, ValueError):
        return "this process"


def absolute_path(path: str, storage_options: dict | None) -> str:
    """Local paths made absolute on the client: workers may run in another directory."""
    return path if storage_options is not None or "://" in path else os.path.abspath(path)


def rewrap(exc: BaseException, message: str) -> Exception:
    """``message`` in an exception of the most specific familiar class ``exc`` belongs to, so
    that callers can still catch FileNotFoundError / PermissionError / ValueError."""
    for cls in (FileNotFoundError, PermissionError, OSError, ValueError):
        if isinstance(exc, cls):
            return cls(message)
    return RuntimeError(message)


def overlaps(sizes: Sequence[int], start: int, stop: int) -> list[tuple[int, int, int]]:
    """(block, lo, hi) for every non-empty block of ``sizes`` that rows [start, stop) touch;
    lo/hi are local to the block."""
    out, first = [], 0
    for i, size in enumerate(sizes):
        last = first + size
        if first < stop and last > start and size:
            out.append((i, max(start, first) - first, min(stop, last) - first))
        if last >= stop:
            break
        first = last
    return out


def brief(items: Sequence[Any], limit: int = 8) -> str:
    shown = ", ".join(map(repr, items[:limit]))
    return f"[{shown}, ... ({len(items)} in all)]" if len(items) > limit else f"[{shown}]"


# -- the two interfaces -----------------------------------------------------------------------


class ShardReader:
    """Rows [start, stop) of one source for one rank: made on the client, loaded in the rank task.

    ``dependencies`` are Dask futures; the driver passes them to ``client.submit`` as one
    top-level list argument so that Dask hands their values to :meth:`load`. They are dropped
    when the reader is pickled: futures hidden inside custom objects are not resolved by Dask,
    and a reader must not keep data alive on the worker twice."""

    def __init__(self, start: int, stop: int, row_shape: tuple[int, ...], dtype: np.dtype, dependencies=()):
        self.start, self.stop = int(start), int(stop)
        self.row_shape, self.dtype = tuple(row_shape), np.dtype(dtype)
        self.dependencies: list = list(dependencies)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "dependencies": []}

    def load(self, resolved: list) -> np.ndarray:
        """Rows [start, stop) as a NumPy array, where this runs (the rank task's worker).
        ``resolved`` holds the values of ``dependencies``, in order. The result may be a view of
        data the worker holds (a Dask chunk): do not modify it in place."""
        rows = self._load(list(resolved)) if self.stop > self.start else self._empty()
        if rows.shape != (self.stop - self.start, *self.row_shape):
            raise RuntimeError(
                f"{type(self).__name__} loaded an array of shape {rows.shape} for rows [{self.start}, "
                f"{self.stop}) on {running_on()}; expected {(self.stop - self.start, *self.row_shape)}."
            )
        return rows

    def _empty(self) -> np.ndarray:
        return np.empty((0, *self.row_shape), self.dtype)

    def _load(self, resolved: list) -> np.ndarray:
        raise NotImplementedError


class Source:
    """Where the rows of x or y (or validation data) come from.

    Small and picklable; file-backed sources never hold data, and in-memory ones leave their data
    behind when pickled (only a :class:`ShardReader` carries rows between processes)."""

    role: str | None = None
    n_rows: int
    row_shape: tuple[int, ...]
    dtype: np.dtype

    def describe(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.describe()}>"

    def row_nbytes(self, dtype: Any = None) -> int:
        """Bytes per row once loaded as ``dtype`` (default: as stored), for memory checks."""
        return math.prod(self.row_shape) * np.dtype(self.dtype if dtype is None else dtype).itemsize

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a NumPy array in this process (single-process fit, readers)."""
        raise NotImplementedError

    def prepare(self, client: Any) -> Source:
        """Client side, once per job, before sharding; brings no data to the client."""
        return self

    def access_check(self) -> Callable[[], str | None] | None:
        """A quick picklable check to run on each chosen worker with ``client.run``: returns None
        when the data is readable there, else a one-line reason. None for in-memory sources."""
        return None

    def shard(self, start: int, stop: int, client: Any, worker: str) -> ShardReader:
        raise NotImplementedError

    def locality(self, start: int, stop: int, client: Any) -> dict[str, int]:
        """Worker address -> bytes of rows [start, stop) already held there."""
        return {}

    def _check_range(self, start: int, stop: int) -> tuple[int, int]:
        if not 0 <= start <= stop <= self.n_rows:
            raise ValueError(f"rows [{start}, {stop}) are outside {self.describe()}, which has {self.n_rows} rows.")
        return int(start), int(stop)


def check_same_rows(x: Source, y: Source) -> None:
    """Every sample needs exactly one target: refuse x and y of different lengths (after prepare)."""
    if x.n_rows != y.n_rows:
        raise ValueError(
            f"{role_name(x.role)} and {role_name(y.role)} have different numbers of rows: {x.n_rows} in "
            f"{x.describe()}, {y.n_rows} in {y.describe()}. Every sample needs exactly one target."
        )


def check_dims(shape: tuple[int, ...], dtype: np.dtype, what: str, role: str | None) -> None:
    if len(shape) == 0:
        raise ValueError(f"{what} must have one entry per sample, received a scalar.")
    if dtype.kind not in NUMERIC:
        raise ValueError(
            f"{what} must hold numbers, received dtype {dtype}. Encode {role_name(role)} as numbers "
            f"(e.g. integer class labels) before training."
        )


# -- the .npy format: .npy files, and the stored members of .npz archives ----------------


@dataclass(frozen=True)
class NpyFile:
    """Where a .npy file is and what its header says; everything a worker needs to read rows."""

    path: str
    storage_options: dict | None  # None and no '://': a local path, memory-mapped
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    data_offset: int

    @property
    def local(self) -> bool:
        return self.storage_options is None and "://" not in self.path

    @contextmanager
    def open(self) -> Iterator[IO[bytes]]:
        if self.local:
            with open(self.path, "rb") as f:
                yield f
        else:
            import fsspec

            with fsspec.open(self.path, "rb", **(self.storage_options or {})) as f:
                yield f


def read_npy_header(f: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(f)  # v3 differs from v2 only in utf-8 field names
    return tuple(shape), fortran_order, dtype, f.tell()


def read_into(f: Any, rows: np.ndarray, what: str, stop: int) -> None:
    """Fill ``rows`` (C-contiguous) from ``f``'s current position; ``what`` names the file in the
    error if it ends early."""
    view, got = memoryview(rows.view(np.uint8).reshape(-1).data), 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise EOFError(f"{what} ends {len(view) - got} bytes before row {stop}: the file is truncated.")
        got += n
