""".npy files, local (memory-mapped) or behind an fsspec URL: each worker reads its own rows. The
client never materialises the file: it reads its header only."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import (
    NpyFile,
    ShardReader,
    Source,
    absolute_path,
    check_dims,
    read_into,
    read_npy_header,
    rewrap,
    role_name,
    role_prefix,
    running_on,
)


def _npy_file(path: str, storage_options: dict | None) -> NpyFile:
    probe = NpyFile(path, storage_options, (), np.dtype("u1"), False, 0)
    with probe.open() as f:
        shape, fortran_order, dtype, offset = read_npy_header(f)
    return NpyFile(path, storage_options, shape, dtype, fortran_order, offset)


def _check_npy_header(npy: NpyFile, where: str) -> str | None:
    """None if the file at ``npy.path`` still has the header the client read, else why not."""
    try:
        found = _npy_file(npy.path, npy.storage_options)
    except FileNotFoundError:
        return f"file {npy.path} does not exist on {where}"
    except PermissionError:
        return f"file {npy.path} is not readable on {where} (permission denied)"
    except Exception as exc:  # noqa: BLE001 - any failure is a reason to report, not to crash
        return f"cannot read the .npy header of {npy.path} on {where}: {exc}"
    if (found.shape, found.dtype, found.fortran_order) != (npy.shape, npy.dtype, npy.fortran_order):
        return (
            f"{npy.path} on {where} holds shape {found.shape} {found.dtype}, but shape {npy.shape} "
            f"{npy.dtype} on the client: the workers must see the same file"
        )
    return None


def _read_npy_rows(npy: NpyFile, start: int, stop: int) -> np.ndarray:
    row_shape = npy.shape[1:]
    if npy.local:  # memory-map: only the pages of these rows are read
        mapped = np.load(npy.path, mmap_mode="r")
        if mapped.shape != npy.shape or mapped.dtype != npy.dtype:
            raise ValueError(f"{npy.path} changed since its header was read: shape {mapped.shape} {mapped.dtype}.")
        rows = np.array(mapped[start:stop], order="C")  # a copy: the map is closed when we return
        del mapped
        return rows
    # fsspec: one contiguous byte range (C order is checked when the source is made).
    rows = np.empty((stop - start, *row_shape), npy.dtype)
    row_bytes = math.prod(row_shape) * npy.dtype.itemsize
    with npy.open() as f:
        shape, fortran_order, dtype, offset = read_npy_header(f)
        if (shape, dtype, offset) != (npy.shape, npy.dtype, npy.data_offset):
            raise ValueError(f"{npy.path} changed since its header was read: shape {shape} {dtype}.")
        f.seek(offset + start * row_bytes)
        read_into(f, rows, npy.path, stop)
    return rows


class NpySource(Source):
    """A .npy file, local (memory-mapped) or behind an fsspec URL; each worker reads its rows."""

    def __init__(self, path: str | os.PathLike, storage_options: dict | None = None, role: str | None = None):
        self.role = role
        path = absolute_path(os.fspath(path), storage_options)
        try:
            self.file = _npy_file(path, storage_options)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{role_name(role)}: the .npy file {path} does not exist. The client reads its header and the "
                f"workers read its rows, so both must reach the path (a shared filesystem or an fsspec URL)."
            ) from None
        except (OSError, ValueError) as exc:
            raise rewrap(exc, f"{role_name(role)}: {path} is not a readable .npy file: {exc}") from None
        f = self.file
        check_dims(f.shape, f.dtype, f"{role_name(role)} (.npy file {path})", role)
        if f.fortran_order and not f.local:
            raise ValueError(
                f"{path} is stored in Fortran order, so its rows are not contiguous and cannot be read as "
                f"one byte range; save it in C order: np.save(path, np.ascontiguousarray(array))."
            )
        self.n_rows, self.row_shape, self.dtype = f.shape[0], f.shape[1:], f.dtype

    @property
    def path(self) -> str:
        return self.file.path

    def describe(self) -> str:
        return f"{role_prefix(self.role)}.npy file {self.path} {self.file.shape} {self.dtype}"

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = self._check_range(start, stop)
        return _read_npy_rows(self.file, start, stop) if stop > start else np.empty((0, *self.row_shape), self.dtype)

    def access_check(self) -> Callable[[], str | None]:
        return _NpyCheck(self.file)

    def shard(self, start: int, stop: int, client: Any, worker: str) -> ShardReader:
        start, stop = self._check_range(start, stop)
        return _NpyReader(start, stop, self.row_shape, self.dtype, file=self.file)


@dataclass(frozen=True)
class _NpyCheck:
    file: NpyFile

    def __call__(self) -> str | None:
        return _check_npy_header(self.file, "this worker")


class _NpyReader(ShardReader):
    def __init__(self, start, stop, row_shape, dtype, file: NpyFile):
        super().__init__(start, stop, row_shape, dtype)
        self.file = file

    def _load(self, resolved: list) -> np.ndarray:
        try:
            return _read_npy_rows(self.file, self.start, self.stop)
        except Exception as exc:
            raise rewrap(
                exc, f"reading rows [{self.start}, {self.stop}) of {self.file.path} on {running_on()} failed: {exc}"
            ) from exc


def from_npy(path: str | os.PathLike, storage_options: dict | None = None) -> NpySource:
    """A .npy file that each worker reads its own rows from: a local path (memory-mapped) or an
    fsspec URL (``s3://``, ``file://``, ...; one byte-range read per shard)."""
    return NpySource(path, storage_options)
