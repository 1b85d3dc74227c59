"""Pipes between the ranks of one machine: a job's per-step messages without the event loop.

With shared memory (:mod:`dtrain.comm.shm`) the gradients no longer cross a socket, but each
allreduce still sent two small messages per peer through Dask: the descriptor of the shared
segment, and the notice that it has been read. Each took the sender's and the receiver's event
loops (a coroutine, Dask's RPC layer and connection pool, msgpack framing, the handler): a few
hundred microseconds of Python per message on each side, on the cores the ranks' matrix products
need. Measured on 2 cores (784-1024-1024-10, 2 workers): the allreduce took 2.1-2.3 ms of a
34-36 ms step, where copying and adding the 7.4 MB take ~0.9 ms.

Here a rank owns one pipe per peer on its machine. The peer opens the write end through
``/proc/<pid>/fd/<fd>`` (as it opens the segments) and writes frames to it straight from its rank
thread: a 4-byte length, then a msgpack list ``[tag, kind, payload]``. One reader thread per rank
moves the frames into the job's mailbox, so receiving, deadlines and aborts work as before. Once
the handshake is done the owner closes its own copy of each write end: the peer then holds the
only one, and if that peer dies the reader sees end-of-file at once (no waiting for a deadline).
"""
from __future__ import annotations

import os
import select
import selectors
import stat
import threading
import time
from typing import Any, Callable

import msgpack
import numpy as np

from .base import WAIT_SLICE, Aborted, CommError, Mailbox
from .shm import SharedRef

HEADER = 4  # bytes of the frame length, little-endian
READ_CHUNK = 2**16
_NONE, _SEGMENT, _ARRAY = 0, 1, 2  # payload kinds


def encode(tag: str, value: Any) -> bytes:
    """One frame: ``None``, a :class:`SharedRef` or a NumPy array (sent inline: keep them small)."""
    if value is None:
        body = [tag, _NONE, None]
    elif isinstance(value, SharedRef):
        body = [tag, _SEGMENT, value.to_msg()]
    else:
        array = np.asarray(value)
        body = [tag, _ARRAY, [array.dtype.str, list(array.shape), array.tobytes()]]
    packed = msgpack.packb(body, use_bin_type=True)
    return len(packed).to_bytes(HEADER, "little") + packed


def decode(packed: bytes) -> tuple[str, Any]:
    tag, kind, payload = msgpack.unpackb(packed, raw=False)
    if kind == _SEGMENT:
        return tag, SharedRef.from_msg(payload)
    if kind == _ARRAY:
        dtype, shape, data = payload
        return tag, np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape).copy()  # writable, aligned
    return tag, None


class Outbound:
    """The write end of a peer's pipe, opened from its ``/proc`` entry; written by the rank thread."""

    def __init__(self, pid: int, fd: int, describe: str) -> None:
        self.describe = describe  # "rank 1 (tcp://...)", for errors
        self.fd = os.open(f"/proc/{pid}/fd/{fd}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            if not _is_pipe(self.fd):
                raise OSError(f"/proc/{pid}/fd/{fd} is not a pipe")
            os.set_blocking(self.fd, False)  # our own open file: a stuck peer must not block us past the deadline
        except BaseException:
            os.close(self.fd)
            raise

    def send(self, tag: str, value: Any, timeout: float, abort: Mailbox) -> None:
        """Write one frame whole; the peer's reader drains the pipe, so this normally never waits."""
        view = memoryview(encode(tag, value))
        deadline = time.monotonic() + timeout
        while view:
            try:
                view = view[os.write(self.fd, view):]
                continue
            except BlockingIOError:
                pass
            except OSError as exc:  # BrokenPipeError: the peer's process is gone
                raise CommError(
                    f"Sending {tag!r} to {self.describe} failed ({type(exc).__name__}: {exc}): that worker has most "
                    "likely died; abort the job and restart it."
                ) from exc
            if abort.reason is not None:
                raise Aborted(abort.reason)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CommError(
                    f"Sending {tag!r} to {self.describe} did not complete within {timeout:g} s: that rank stopped "
                    "reading its messages (stuck or dead); abort the job and restart it."
                )
            poller = select.poll()
            poller.register(self.fd, select.POLLOUT)
            poller.poll(min(remaining, WAIT_SLICE) * 1000)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Inbound:
    """This rank's pipes, one per peer on its machine, and the thread that reads them into ``box``."""

    def __init__(self, box: Mailbox, peers: list[int], name: str) -> None:
        self.box, self.name = box, name
        self._read: dict[int, int] = {}  # peer -> read end
        self._write: dict[int, int] = {}  # peer -> our copy of the write end (until sealed)
        self.ended: set[int] = set()  # peers whose pipe reached end-of-file: closed or died
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC)
        self._thread: threading.Thread | None = None
        try:
            for peer in peers:
                self._read[peer], self._write[peer] = os.pipe2(os.O_CLOEXEC)
        except BaseException:
            self.close()
            raise

    def write_end(self, peer: int) -> int:
        """The fd number ``peer`` opens (with this process's pid) to write to this rank."""
        return self._write[peer]

    def keep_only(self, peers: set[int]) -> None:
        """After the handshake: close the pipes of peers that do not use them, close this process's
        copies of the write ends (so a dead peer's pipe ends), and start reading."""
        for peer in list(self._read):
            os.close(self._write.pop(peer))
            if peer not in peers:
                os.close(self._read.pop(peer))
        if self._read:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self._read_until_closed()
        except Exception as exc:  # a broken frame: the ranks are out of step, stop them now
            self.box.abort(f"{self.name} could not read a message from a peer ({type(exc).__name__}: {exc})")

    def _read_until_closed(self) -> None:
        pending = {peer: bytearray() for peer in self._read}
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_read, selectors.EVENT_READ, None)
            for peer, fd in self._read.items():
                selector.register(fd, selectors.EVENT_READ, peer)
            while True:
                for key, _ in selector.select():
                    if key.data is None:  # close() woke us
                        return
                    chunk = os.read(key.fd, READ_CHUNK)
                    if not chunk:
                        selector.unregister(key.fd)
                        self.ended.add(key.data)
                        continue
                    self._deliver(key.data, pending[key.data], chunk)

    def _deliver(self, peer: int, buffer: bytearray, chunk: bytes) -> None:
        """Add ``chunk`` to what ``peer`` sent so far and put every whole frame in the mailbox."""
        buffer += chunk
        while len(buffer) >= HEADER:
            size = int.from_bytes(buffer[:HEADER], "little")
            if len(buffer) < HEADER + size:
                return
            tag, value = decode(bytes(buffer[HEADER : HEADER + size]))
            del buffer[: HEADER + size]
            self.box.put(peer, tag, value)

    def ended_check(self, peer: int) -> Callable[[], bool]:
        """For a receive from ``peer``: True from the second call that finds its pipe ended. (The reader
        delivers every frame before it notes the end, so one more look at the mailbox in between
        tells a peer that sent and then left from one that died first.)"""
        seen = [False]

        def check() -> bool:
            if peer not in self.ended:
                return False
            if seen[0]:
                return True
            seen[0] = True
            return False

        return check

    def close(self) -> None:
        if self._thread is not None:
            os.write(self._wake_write, b"x")
            self._thread.join(timeout=5)
            self._thread = None
        for fd in [*self._read.values(), *self._write.values(), self._wake_read, self._wake_write]:
            try:
                os.close(fd)
            except OSError:
                pass
        self._read.clear()
        self._write.clear()
        self._wake_read = self._wake_write = -1


def _is_pipe(fd: int) -> bool:
    return stat.S_ISFIFO(os.fstat(fd).st_mode)
