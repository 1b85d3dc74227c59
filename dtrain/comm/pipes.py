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
thread: a 4-byte length, then a msgpack list ``[tag, kind, payload]``. The rank thread reads its
own pipes, whenever it looks in its mailbox: a receive drains them into the mailbox, then
sleeps in ``poll`` on the pipes (and on a wake-up pipe that the mailbox writes to when something
arrives another way: a message over TCP, an abort). Between collectives, frames wait in the
pipe. Measured: a ping-pong of one-number frames between two processes takes 23 us this way,
and took 172-182 us when a reader thread moved the frames into the mailbox and woke the rank
thread through a condition variable (the bare system calls: 8 us). Once the handshake is done
the owner closes its own copy of each write end: the peer then holds the only one, and if that
peer dies the pipe ends at once (no waiting for a deadline).
"""

from __future__ import annotations

import fcntl
import os
import select
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from .base import Aborted, CommError, DeadlineMissed, Mailbox
from .shm import SharedRef

HEADER = 4  # bytes of the frame length, little-endian
READ_CHUNK = 2**16
PIPE_BYTES = 2**18  # asked for each kept pipe (from 64 KiB): a few of the largest inline frames
FULL_PIPE_POLL_S = 0.01  # a writer facing a full pipe looks again (and reads its own) this often
ENLARGE_MAX_PEERS = 8  # with more peers on the machine, pipes keep the default size: Linux allows
# each user 64 MiB of pipes (pipe-user-pages-soft), then gives new ones 4 KiB
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
        """Write one frame whole. The peer reads its pipes whenever it waits for a message; this
        waits only when the pipe is full, reading this rank's own pipes meanwhile."""
        view = memoryview(encode(tag, value))
        deadline = time.monotonic() + timeout
        while view:
            try:
                view = view[os.write(self.fd, view) :]
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
                raise DeadlineMissed(
                    f"Sending {tag!r} to {self.describe} did not complete within {timeout:g} s: that rank stopped "
                    "reading its messages (stuck or dead); abort the job and restart it.",
                    waiting_for=f"{self.describe} to read {tag!r} (its pipe is full)",
                )
            # The peer may be writing to us, just as stuck: read our own pipes while we wait.
            abort.drain()
            poller = select.poll()
            poller.register(self.fd, select.POLLOUT)
            poller.poll(min(remaining, FULL_PIPE_POLL_S) * 1000)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Inbound:
    """This rank's pipes, one per peer on its machine, read by the rank thread into ``box``.

    After :meth:`keep_only` the mailbox calls :meth:`drain` before it looks for an item and
    :meth:`wait` instead of its condition variable, and :meth:`wake` when an item arrives by
    another route. One thread takes from a rank's mailbox: the rank thread (its collectives,
    and rank 0's wait for the client's callbacks); other threads only put. :meth:`wait` is not
    for two threads at once (one poll object, one wake-up pipe)."""

    def __init__(self, box: Mailbox, peers: list[int], name: str) -> None:
        self.box, self.name = box, name
        self._read: dict[int, int] = {}  # peer -> read end
        self._write: dict[int, int] = {}  # peer -> our copy of the write end (until sealed)
        self._pending: dict[int, bytearray] = {}  # peer -> the start of a frame not yet whole
        self.ended: set[int] = set()  # peers whose pipe reached end-of-file: closed or died
        self._lock = threading.Lock()
        self._poller: Any = None
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            for peer in peers:
                self._read[peer], self._write[peer] = os.pipe2(os.O_CLOEXEC)
                self._pending[peer] = bytearray()
        except BaseException:
            self.close()
            raise

    def write_end(self, peer: int) -> int:
        """The fd number ``peer`` opens (with this process's pid) to write to this rank."""
        return self._write[peer]

    def keep_only(self, peers: set[int]) -> None:
        """After the handshake: close the pipes of peers that do not use them, close this process's
        copies of the write ends (so a dead peer's pipe ends), and let the mailbox read the rest."""
        for peer in list(self._read):
            os.close(self._write.pop(peer))
            if peer not in peers:
                os.close(self._read.pop(peer))
        if not self._read:
            return
        self._poller = select.poll()
        self._poller.register(self._wake_read, select.POLLIN)
        for fd in self._read.values():
            if len(self._read) <= ENLARGE_MAX_PEERS:
                _enlarge(fd)
            os.set_blocking(fd, False)
            self._poller.register(fd, select.POLLIN)
        self.box.attach_reader(self)

    def drain(self) -> None:
        """Move every whole frame that has arrived into the mailbox; note the pipes that ended. A
        broken frame means the ranks are out of step: the job is aborted and this raises
        :class:`CommError` with the cause (the caller's rank then fails with it, not as aborted)."""
        with self._lock:
            for peer, fd in self._read.items():
                if peer in self.ended:
                    continue
                try:
                    while True:
                        try:
                            chunk = os.read(fd, READ_CHUNK)
                        except BlockingIOError:
                            break
                        if not chunk:
                            self.ended.add(peer)
                            self._poller.unregister(fd)  # an ended pipe is always "ready": stop polling it
                            break
                        self._deliver(peer, self._pending[peer], chunk)
                except Exception as exc:  # the ranks are out of step: stop the job, and fail this rank with the cause
                    reason = f"{self.name} could not read a message from rank {peer} ({type(exc).__name__}: {exc})"
                    self.box.abort(reason)
                    raise CommError(reason) from exc

    def wait(self, timeout: float) -> bool:
        """Sleep until a pipe has data (or ends), :meth:`wake` is called, or ``timeout`` seconds
        pass; False when nothing happened."""
        events = self._poller.poll(max(timeout, 0.0) * 1000)
        if any(fd == self._wake_read for fd, _ in events):
            try:
                while os.read(self._wake_read, 4096):
                    pass
            except BlockingIOError:
                pass
        return bool(events)

    def wake(self) -> None:
        """Interrupt a :meth:`wait` (any thread)."""
        try:
            os.write(self._wake_write, b"x")
        except OSError:  # full (a wake-up is pending anyway) or closed
            pass

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
        """For a receive from ``peer``: True from the second call that finds its pipe ended. (A
        drain delivers every frame before it notes the end, so one more look at the mailbox in
        between tells a peer that sent and then left from one that died first.)"""
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
        self.box.detach_reader(self)
        with self._lock:
            for fd in [*self._read.values(), *self._write.values(), self._wake_read, self._wake_write]:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._read.clear()
            self._write.clear()
            self._wake_read = self._wake_write = -1


def _enlarge(fd: int) -> None:
    """Make the pipe hold PIPE_BYTES where the system allows: frames wait in the pipe while the
    rank computes, and a writer finding it full must wait for the reader."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (OSError, AttributeError):
        pass


def _is_pipe(fd: int) -> bool:
    return stat.S_ISFIFO(os.fstat(fd).st_mode)
