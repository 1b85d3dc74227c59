"""A directory that is a local path or an fsspec URL, written to atomically.

:class:`Location` is where dtrain keeps what must survive the process: a job's output files
(:mod:`dtrain.jobs.outputs`) and training checkpoints (:mod:`dtrain.checkpoints`). The directory
is a local folder (``runs/x``) or a folder on an fsspec filesystem (``memory://runs/x``,
``s3://bucket/x``, ``file:///x``...).

What it guarantees: **a reader never sees half a file under its final name.** Every file is
written whole under a temporary name in the same folder (``.<name>.tmp-<random hex>``), then
moved onto its name: locally with ``os.replace``, an atomic rename; on fsspec filesystems with
``fs.mv``, which on object stores is a copy then a delete, but the final name still appears only
once whole. A write that fails removes its temporary file where it can; one cut short by a crash
can leave it behind, under a name no reader looks for (checkpoint pruning deletes those).

With ``durable=True`` (local folders) each file's bytes are fsynced before its rename, and
:meth:`Location.sync` fsyncs the folder, so the renames themselves survive a power cut.
"""

from __future__ import annotations

import os
import posixpath
import secrets
from typing import Any


class NotARegularFile(OSError):
    """A name that holds something other than a file's bytes: dtrain never opens those."""


class Location:
    """A local directory, or a directory URL on an fsspec filesystem.

    ``what`` names the directory in the error raised for an argument that is not a path or a
    URL (e.g. ``"an output directory or URL"``). Attributes: ``text`` (the argument as given),
    ``is_url``, ``fs`` (the fsspec filesystem; None locally) and ``root`` (the absolute local
    path, or the path on ``fs`` without its protocol)."""

    def __init__(self, directory: str | os.PathLike, *, what: str = "a directory or URL", durable: bool = False):
        text = os.fspath(directory) if isinstance(directory, (str, os.PathLike)) else None
        if not isinstance(text, str) or not text:  # bytes paths are refused too
            raise ValueError(f"Expected {what}, received {directory!r}.")
        self.text = text
        self.durable = durable
        self.is_url = "://" in text
        # fsspec has no type information: an AbstractFileSystem where is_url, else None (every
        # use below is behind an is_url check).
        self.fs: Any = None
        if self.is_url:
            from fsspec.core import url_to_fs  # fsspec only when a URL needs it

            self.fs, root = url_to_fs(text)
            self.root = root.rstrip("/") or "/"
        else:
            self.root = os.path.abspath(text)

    @property
    def identity(self) -> str:
        """What this folder is, whatever it was called: the real local path (symlinks, ``.``,
        ``..`` and ``file://`` resolved), or the URL with its path normalised. Two names of one
        folder have one identity."""
        if not self.is_url:
            return os.path.realpath(self.root)
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        if protocol in ("file", "local"):
            return os.path.realpath(self.root)
        return f"{protocol}://{posixpath.normpath('/' + self.root.lstrip('/'))}"

    # - names -
    def path(self, name: str) -> str:
        """The path of file ``name`` on this filesystem (no protocol on URLs)."""
        return os.path.join(self.root, name) if not self.is_url else f"{self.root.rstrip('/')}/{name}"

    def where(self, name: str) -> str:
        """The location of file ``name`` as users write it: a path, or a URL with its protocol."""
        return self.path(name) if not self.is_url else self.fs.unstrip_protocol(self.path(name))

    # - the folder itself -
    def is_file(self) -> bool:
        """Whether the directory's own name holds a file (callers say why that is wrong)."""
        return os.path.isfile(self.root) if not self.is_url else self.fs.isfile(self.root)

    def is_dir(self) -> bool:
        return os.path.isdir(self.root) if not self.is_url else self.fs.isdir(self.root)

    def make(self) -> None:
        """Create the directory, parents included, if it is missing."""
        if not self.is_url:
            os.makedirs(self.root, exist_ok=True)
        else:
            self.fs.makedirs(self.root, exist_ok=True)  # a no-op on object stores

    def names(self) -> list[str]:
        """Names of the files in the directory ([] if there is no directory)."""
        if not self.is_dir():
            return []
        if not self.is_url:
            return os.listdir(self.root)
        self.fs.invalidate_cache(self.root)  # another process (an earlier attempt) may have written here
        try:
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False)]
        except FileNotFoundError:
            return []

    def sync(self) -> None:
        """Make the renames durable (local folders; object stores have no such step)."""
        if self.is_url:
            return
        try:
            fd = os.open(self.root, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:  # some platforms and filesystems cannot sync a folder
            pass
        finally:
            os.close(fd)

    # - files -
    def write(self, name: str, data: bytes) -> str:
        """Write ``name`` whole under a temporary name, then move it into place. Returns its location."""
        tmp = _temporary(name)
        if not self.is_url:
            path = self.path(tmp)
            try:
                with open(path, "xb") as f:  # "x": the random name is ours alone
                    f.write(data)
                    if self.durable:
                        f.flush()
                        os.fsync(
                            f.fileno()
                        )  # the bytes are on disk before the name is: no empty file after a power cut
                os.replace(path, self.path(name))
            except BaseException:
                _discard(path)
                raise
        else:
            self._into_place(tmp, name, lambda target: self.fs.pipe_file(target, data))
        return self.where(name)

    def upload(self, name: str, local_file: str | os.PathLike) -> str:
        """Copy the local file ``local_file`` to ``name`` (URLs only: a local directory can write
        the file in place itself), through a temporary name. Returns its location."""
        if not self.is_url:
            raise ValueError(f"upload copies to a URL; {self.text} is a local directory.")
        self._into_place(_temporary(name), name, lambda target: self.fs.put_file(os.fspath(local_file), target))
        return self.where(name)

    def _into_place(self, tmp: str, name: str, put) -> None:
        """``put(path of tmp)`` on the fsspec filesystem, then move tmp onto ``name``; on failure
        the temporary file is removed where it can be."""
        try:
            put(self.path(tmp))
            self.fs.mv(self.path(tmp), self.path(name))
        except BaseException:
            try:
                self.fs.rm_file(self.path(tmp))
            except Exception:  # noqa: BLE001 - the original error matters more than the leftover
                pass
            raise

    def exists(self, name: str) -> bool:
        """Whether file ``name`` is there."""
        return os.path.isfile(self.path(name)) if not self.is_url else self.fs.isfile(self.path(name))

    def read(self, name: str, limit: int | None = None) -> bytes:
        """The bytes of ``name`` (its first ``limit`` bytes, when given); FileNotFoundError if it
        is not there, NotARegularFile if it is a folder, a FIFO (whose read would block for
        ever), a device or a socket."""
        if not self.is_url:
            path = self.path(name)
            if os.path.exists(path) and not os.path.isfile(path):
                raise NotARegularFile(f"{path} is not a regular file (a folder, a FIFO, a device or a socket)")
            with open(path, "rb") as f:
                return f.read() if limit is None else f.read(limit)
        if limit is None:
            return self.fs.cat_file(self.path(name))
        return self.fs.cat_file(self.path(name), start=0, end=limit)

    def remove(self, name: str) -> None:
        """Delete ``name`` if it is there (any other error is raised)."""
        try:
            if not self.is_url:
                os.remove(self.path(name))
            else:
                self.fs.rm_file(self.path(name))
        except FileNotFoundError:
            pass


def _temporary(name: str) -> str:
    """A fresh temporary name for ``name``: hidden (a leading dot) and never a final name.
    dtrain.checkpoints recognises this pattern (its _TEMP) to prune what interrupted writes leave."""
    return f".{name}.tmp-{secrets.token_hex(6)}"


def _discard(path: str) -> None:
    """Remove a local temporary file after a failed write, ignoring any error: the write's own
    error is the one to raise."""
    try:
        os.remove(path)
    except OSError:
        pass
