"""Arrays of .npz archives (local path or fsspec URL): each worker reads its own rows. The
client never materialises the archive: it reads the zip directory and the .npy headers only.

A .npz is a zip archive of .npy members. A stored (uncompressed) member is a .npy file at a
fixed offset inside the archive, so its rows are one byte range, read like a .npy file's. A
compressed member (np.savez_compressed) can only be decompressed from its start.
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from .base import (
    NpyFile,
    ShardReader,
    Source,
    absolute_path,
    brief,
    check_dims,
    read_into,
    read_npy_header,
    rewrap,
    role_name,
    role_prefix,
    running_on,
)

_ZIP_LOCAL_HEADER = b"PK\x03\x04"
_ZIP_LOCAL_HEADER_SIZE = 30  # fixed part; the member's name and extra field follow it
_SKIP_CHUNK = 1 << 20


@dataclass(frozen=True)
class _NpzMember:
    """One array of a .npz archive: everything a worker needs to read its rows.

    ``file`` is the archive's path and options with the member's shape, dtype and order; its
    ``data_offset`` is where the rows start: in the archive for a stored member, in the
    decompressed member otherwise."""

    file: NpyFile
    member: str  # the name inside the archive, e.g. "x.npy"
    compressed: bool
    npy_offset: int  # where the member's .npy bytes (its header) start in the archive

    def describe(self) -> str:
        kind = "compressed member" if self.compressed else "member"
        return f"{kind} {self.member!r} of .npz file {self.file.path}"


def _member_name(zf: Any, name: str, path: str, role: str) -> str:
    """The archive entry holding array ``name`` (np.savez stores ``name`` as ``name.npy``)."""
    entries = zf.namelist()
    for candidate in (f"{name}.npy", name):
        if candidate in entries:
            return candidate
    arrays = [e[: -len(".npy")] if e.endswith(".npy") else e for e in entries]
    raise ValueError(
        f"{role + ': ' if role else ''}the .npz file {path} has no array {name!r}; it holds {brief(arrays)}. "
        f"Name the arrays with from_npz(path, x=..., y=...)."
    )


def _member_data_start(f: IO[bytes], info: Any, path: str) -> int:
    """Offset of a member's bytes in the archive: after its local header, whose name and extra
    field lengths may differ from the central directory's (zip64 fields), so read it."""
    f.seek(info.header_offset)
    head = f.read(_ZIP_LOCAL_HEADER_SIZE)
    if len(head) != _ZIP_LOCAL_HEADER_SIZE or head[:4] != _ZIP_LOCAL_HEADER:
        raise ValueError(f"{path}: the local header of member {info.filename!r} is damaged (not a valid zip archive).")
    name_length, extra_length = struct.unpack_from("<HH", head, 26)
    return info.header_offset + _ZIP_LOCAL_HEADER_SIZE + name_length + extra_length


def _npz_members(path: str, storage_options: dict | None, wanted: dict[str, str]) -> dict[str, _NpzMember]:
    """Role -> member, for the arrays named in ``wanted`` (role -> array name). Reads the zip's
    central directory and each member's .npy header only (for a compressed member, the first
    block of its stream)."""
    archive = NpyFile(path, storage_options, (), np.dtype("u1"), False, 0)
    found: dict[str, _NpzMember] = {}
    with archive.open() as f, zipfile.ZipFile(f) as zf:
        for role, name in wanted.items():
            info = zf.getinfo(_member_name(zf, name, path, role))
            start = _member_data_start(f, info, path)
            compressed = info.compress_type != zipfile.ZIP_STORED
            try:
                if compressed:
                    with zf.open(info) as stream:
                        shape, fortran_order, dtype, offset = read_npy_header(stream)
                else:
                    f.seek(start)
                    shape, fortran_order, dtype, offset = read_npy_header(f)  # absolute: f is the archive
            except ValueError as exc:
                raise ValueError(f"{path}: member {info.filename!r} is not a readable .npy array ({exc}).") from None
            npy = NpyFile(path, storage_options, shape, dtype, fortran_order, offset)
            found[role] = _NpzMember(npy, info.filename, compressed, start)
    return found


def _skip(stream: IO[bytes], nbytes: int, what: str) -> None:
    """Read and drop ``nbytes`` of a stream that cannot seek (a decompressing one)."""
    while nbytes > 0:
        n = len(stream.read(min(nbytes, _SKIP_CHUNK)))
        if not n:
            raise EOFError(f"{what} ends {nbytes} bytes early: the file is truncated.")
        nbytes -= n


def _read_npz_rows(m: _NpzMember, start: int, stop: int) -> np.ndarray:
    npy = m.file
    rows = np.empty((stop - start, *npy.shape[1:]), npy.dtype)
    row_bytes = math.prod(npy.shape[1:]) * npy.dtype.itemsize

    def check_header(stream: IO[bytes]) -> None:
        shape, fortran_order, dtype, offset = read_npy_header(stream)
        if (shape, fortran_order, dtype, offset) != (npy.shape, npy.fortran_order, npy.dtype, npy.data_offset):
            raise ValueError(f"{m.describe()} changed since its header was read: shape {shape} {dtype}.")

    with npy.open() as f:
        if not m.compressed:  # one byte range, like a .npy file
            f.seek(m.npy_offset)
            check_header(f)
            f.seek(npy.data_offset + start * row_bytes)
            read_into(f, rows, m.describe(), stop)
            return rows
        # Decompress from the member's start: O(rows before this shard) of work, nothing kept.
        with zipfile.ZipFile(f) as zf, zf.open(m.member) as stream:
            check_header(stream)
            _skip(stream, start * row_bytes, m.describe())
            read_into(stream, rows, m.describe(), stop)
    return rows


def _check_npz_member(m: _NpzMember, where: str) -> str | None:
    """None if the archive still holds the member the client saw, else why not."""
    path = m.file.path
    try:
        found = _npz_members(path, m.file.storage_options, {"": m.member})[""]
    except FileNotFoundError:
        return f"file {path} does not exist on {where}"
    except PermissionError:
        return f"file {path} is not readable on {where} (permission denied)"
    except Exception as exc:  # noqa: BLE001 - any failure is a reason to report, not to crash
        return f"cannot read {m.describe()} on {where}: {exc}"
    if found != m:
        return (
            f"{m.describe()} on {where} holds shape {found.file.shape} {found.file.dtype}, but shape "
            f"{m.file.shape} {m.file.dtype} on the client (or lies elsewhere in the archive): the workers "
            f"must see the same file"
        )
    return None


class NpzSource(Source):
    """One array of a .npz archive (local path or fsspec URL); each worker reads its own rows.
    Made by :func:`from_npz`."""

    def __init__(self, member: _NpzMember, role: str | None = None):
        self.member, self.role = member, role
        npy = member.file
        check_dims(npy.shape, npy.dtype, f"{role_name(role)} ({member.describe()})", role)
        if npy.fortran_order:
            raise ValueError(
                f"{role_name(role)}: {member.describe()} is stored in Fortran order, so its rows are not contiguous "
                f"and cannot be read as one byte range; save it in C order: "
                f"np.savez(path, {member.member.removesuffix('.npy')}=np.ascontiguousarray(array), ...)."
            )
        self.n_rows, self.row_shape, self.dtype = npy.shape[0], npy.shape[1:], npy.dtype

    @property
    def path(self) -> str:
        return self.member.file.path

    def describe(self) -> str:
        return f"{role_prefix(self.role)}{self.member.describe()} {self.member.file.shape} {self.dtype}"

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = self._check_range(start, stop)
        return _read_npz_rows(self.member, start, stop) if stop > start else np.empty((0, *self.row_shape), self.dtype)

    def access_check(self) -> Callable[[], str | None]:
        return _NpzCheck(self.member)

    def shard(self, start: int, stop: int, client: Any, worker: str) -> ShardReader:
        start, stop = self._check_range(start, stop)
        return _NpzReader(start, stop, self.row_shape, self.dtype, member=self.member)


@dataclass(frozen=True)
class _NpzCheck:
    member: _NpzMember

    def __call__(self) -> str | None:
        return _check_npz_member(self.member, "this worker")


class _NpzReader(ShardReader):
    def __init__(self, start, stop, row_shape, dtype, member: _NpzMember):
        super().__init__(start, stop, row_shape, dtype)
        self.member = member

    def _load(self, resolved: list) -> np.ndarray:
        try:
            return _read_npz_rows(self.member, self.start, self.stop)
        except Exception as exc:
            raise rewrap(
                exc,
                f"reading rows [{self.start}, {self.stop}) of {self.member.describe()} on {running_on()} failed: {exc}",
            ) from exc


def _open_npz(path: str, storage_options: dict | None, x: str, y: str) -> dict[str, _NpzMember]:
    """:func:`_npz_members` for x and y, with errors that name the file and say what to do."""
    try:
        return _npz_members(path, storage_options, {"x": x, "y": y})
    except FileNotFoundError:
        raise FileNotFoundError(
            f"the .npz file {path} does not exist. The client reads its directory and the workers read "
            f"its rows, so both must reach the path (a shared filesystem or an fsspec URL)."
        ) from None
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{path} is not a .npz file (not a zip archive: {exc}). Write it with np.savez.") from None
    except OSError as exc:
        raise rewrap(exc, f"cannot read the .npz file {path}: {exc}") from None


def from_npz(
    path: str | os.PathLike, x: str = "x", y: str = "y", storage_options: dict | None = None
) -> tuple[NpzSource, NpzSource]:
    """(x, y) from two arrays of a .npz archive (``np.savez(path, x=..., y=...)``): a local path or
    an fsspec URL. The client reads the zip directory and the two .npy headers only.

    Each worker reads its own rows. From a stored member (``np.savez``) that is one byte range of
    the archive, like a .npy file. A compressed member (``np.savez_compressed``) can only be
    decompressed from its start, so a worker streams it up to its rows: O(rows before its shard)
    of work per load (nothing is kept in memory but its own rows). Prefer ``np.savez`` for large
    data. ``x`` must be 2-D (samples, features); ``y`` may be 1-D labels or 2-D targets.
    """
    if not isinstance(x, str) or not isinstance(y, str) or not x or not y:
        raise ValueError(f"from_npz expected the names of two arrays of the archive, received x={x!r}, y={y!r}.")
    path = absolute_path(os.fspath(path), storage_options)
    members = _open_npz(path, storage_options, x, y)
    xs, ys = NpzSource(members["x"], "x"), NpzSource(members["y"], "y")
    if len(xs.row_shape) != 1:
        raise ValueError(
            f"x ({members['x'].describe()}) must be 2-D (samples, features), but its shape is "
            f"{members['x'].file.shape}. Save it as x.reshape(len(x), -1)."
        )
    if xs.n_rows != ys.n_rows:
        raise ValueError(
            f"{path}: x ({members['x'].member}, shape {members['x'].file.shape}) and y ({members['y'].member}, "
            f"shape {members['y'].file.shape}) have different numbers of rows; every sample needs exactly one target."
        )
    return xs, ys
