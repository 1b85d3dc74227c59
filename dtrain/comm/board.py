"""Small sums between the ranks of one machine: a board in shared memory, read without messages.

A synchronised BatchNormalization layer sums a few KiB twice per step (issue 17), the sharded
step sums its one-number verdict, a barrier sums ones. Through the pipes (:mod:`dtrain.comm.pipes`)
each such allreduce took 0.26 ms between two local ranks in lockstep (2 cores): recursive
doubling's framing, msgpack, a write and a read per message, the mailbox, and the wake-up of a
peer asleep in ``poll``; the arithmetic is a few microseconds.

Here every rank owns a board: one memfd segment (:mod:`dtrain.comm.shm`) of two slots, each a
header (call number, byte count, dtype) and room for :data:`CAPACITY` bytes. To sum, a rank copies
its array into slot ``call % 2`` and then writes the call number into that slot's header; it then
reads every peer's slot once that slot shows the same call number, and adds the ranks' arrays in
the order recursive doubling adds them, so every rank gets the bits the message path would give.
Nobody sends anything. A rank writes a slot again two calls later, when every peer is done with
it: a peer posts call ``n + 1`` only after it has finished call ``n``.

Waiting is looking: the rank first looks without pause (:data:`SPIN_S`), then yields its core
between looks (``sched_yield``, which also lets the worker's event loop thread run), then naps
for growing times up to :data:`NAP_MAX_S`; every :data:`CHECK_EVERY_S` it checks for an abort,
for a peer whose pipe ended (its process died) and for the deadline, so failures stop it as fast
as on the message path. With more ranks than cores, looking without pause would take the core
the awaited rank needs: the ranks then nap from the start.

x86-64 only: its stores become visible to other cores in program order (TSO), so a peer that
sees the call number also sees the data written before it, and loads are not reordered either.
Python has no memory fence to make that hold on weaker memory models; there (and where a rank has
a peer on another host) small sums keep going through messages.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Protocol

import numpy as np

from . import shm as shared
from .base import Aborted, CommError, DeadlineMissed

CAPACITY = 2**17  # bytes per slot: arrays up to this size are summed on the board (BN of 8,191 features)
HEADER = 64  # bytes before each slot's data: call number, byte count, dtype number (int64), padding
SLOTS = 2  # written alternately: a slot is free again once every peer has posted the next call
SPIN_S = 300e-6  # a wait looks without letting go of the GIL this long (see _wait), then ...
YIELD_S = 0.002  # ... yields the core between looks this long, then naps
NAP_MIN_S, NAP_MAX_S = 20e-6, 0.001
CHECK_EVERY_S = 0.005  # abort, dead peers and the deadline are checked this often while waiting


class Watch(Protocol):
    """What a wait on the board asks the transport about a peer."""

    def gone(self, peer: int) -> bool:
        """True when ``peer``'s process has left (its pipe ended); raises Aborted when the job was."""

    def stuck(self, peer: int) -> None:
        """``peer`` did not post in time: aborts should not wait for it."""

    def describe(self, peer: int) -> str:
        """``peer`` in errors: "rank 1 (tcp://...)"."""


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def available() -> bool:
    return shared.available() and platform.machine().lower() in ("x86_64", "amd64")


class Board:
    """This rank's board and its views of the peers' boards (:meth:`attach` each before use)."""

    def __init__(self, rank: int, size: int, capacity: int = CAPACITY) -> None:
        self.rank, self.size, self.capacity = rank, size, capacity
        self.segment = shared.Segment(SLOTS * (HEADER + capacity))
        self.calls = 0
        self.eager = size <= _cores()  # (a core each: a waiting rank may look without pause)
        self._slots: list[list[tuple[np.ndarray, np.ndarray]] | None] = [None] * size
        self._slots[rank] = self._split(self.segment.data)

    def ref(self) -> shared.SharedRef:
        """What a peer needs to open this board (:meth:`shared.PeerSegments.array`)."""
        return self.segment.ref(np.dtype(np.uint8), self.segment.capacity, -1, 0)

    def attach(self, peer: int, data: np.ndarray) -> None:
        """``data``: the bytes of ``peer``'s board, as opened from its :meth:`ref`."""
        if data.size != SLOTS * (HEADER + self.capacity):
            raise OSError(f"rank {peer}'s board has {data.size} bytes, expected {SLOTS * (HEADER + self.capacity)}")
        self._slots[peer] = self._split(data)

    @property
    def complete(self) -> bool:
        return all(slots is not None for slots in self._slots)

    def _split(self, data: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per slot: its header (3 int64) and its data bytes."""
        step = HEADER + self.capacity
        return [
            (data[k * step : k * step + 24].view(np.int64), data[k * step + HEADER : (k + 1) * step])
            for k in range(SLOTS)
        ]

    def allreduce(
        self,
        source: np.ndarray,
        out: np.ndarray,
        *,
        timeout: float,
        watch: Watch,
    ) -> None:
        """``out`` = the sum over the ranks of their ``source`` (``out`` may be ``source``);
        ``timeout`` bounds the wait for each peer."""
        self.calls += 1
        call, k = self.calls, self.calls % SLOTS
        header, body = self._slots[self.rank][k]  # type: ignore[index]
        np.copyto(body[: source.nbytes].view(source.dtype), source)
        header[1], header[2] = source.nbytes, source.dtype.num
        header[0] = call  # last: a peer that sees it sees the data (x86-64 stores stay in order)
        parts: list[np.ndarray] = []
        for peer in range(self.size):
            if peer == self.rank:
                parts.append(source)
                continue
            peer_header, peer_body = self._slots[peer][k]  # type: ignore[index]
            if peer_header[0] != call:
                self._wait(peer, peer_header, call, timeout, watch)
            if peer_header[1] != source.nbytes or peer_header[2] != source.dtype.num:
                raise CommError(
                    f"Rank {self.rank} summed {source.size} {source.dtype} values but {watch.describe(peer)} posted "
                    f"{peer_header[1]} bytes of dtype number {peer_header[2]}: every rank must call the same "
                    "collectives, in the same order, with buffers of the same size and dtype."
                )
            parts.append(peer_body[: source.nbytes].view(source.dtype))
        _add_as_doubling(parts, out)

    def _wait(
        self,
        peer: int,
        header: np.ndarray,
        call: int,
        timeout: float,
        watch: Watch,
    ) -> None:
        start = time.monotonic()
        next_check, nap = start + CHECK_EVERY_S, 0.0
        while header[0] != call:
            now = time.monotonic()
            if now >= next_check:
                try:
                    gone = watch.gone(peer)
                except Aborted as aborted:  # (what it waited for, when the abort came: an incident report says it)
                    aborted.waiting_for = (
                        f"{watch.describe(peer)} to join sum number {call} (a small sum on the shared board)"
                    )
                    raise
                if header[0] == call:  # looked at after gone(): a peer that posted and then left is not lost
                    return
                if gone:
                    raise CommError(
                        f"The peer {watch.describe(peer)} exited without joining sum number {call} of rank "
                        f"{self.rank}: that worker has died or left the job; abort the job and restart it."
                    )
                if now - start > timeout:
                    watch.stuck(peer)
                    raise DeadlineMissed(
                        f"Timed out after {timeout:g} s waiting for {watch.describe(peer)} to join sum number {call} on "
                        f"the shared board of rank {self.rank}. The peer is dead, stuck, or not running the same "
                        "sequence of collectives; abort the job and restart it, or raise the timeout if the peer "
                        "is only slow.",
                        waiting_for=f"{watch.describe(peer)} to join sum number {call} (a small sum on the shared board)",
                    )
                next_check = now + CHECK_EVERY_S
            if self.eager and now - start < SPIN_S:
                continue
            if self.eager and now - start < YIELD_S:
                os.sched_yield()
            else:
                nap = min(NAP_MAX_S, max(NAP_MIN_S, 2 * nap))
                time.sleep(nap)

    def close(self) -> None:
        """The peers keep their own mappings: what they still read stays valid."""
        self._slots = [None] * self.size
        self.segment.close()


def _add_as_doubling(parts: list[np.ndarray], out: np.ndarray) -> None:
    """``out`` = the sum of ``parts`` (one per rank, in rank order), added in the order of
    :func:`dtrain.comm.algorithms._doubling_allreduce`: ranks past the largest power of two fold
    into their neighbours (odd rank + even rank), then adjacent partial sums pair up, level by
    level. Floating-point addition is commutative, so every rank gets the same bits as there."""
    p = len(parts)
    pof2 = 1 << (p.bit_length() - 1)
    extra = p - pof2
    if p == 2:
        np.add(parts[0], parts[1], out=out)
        return
    level = [parts[2 * v + 1] + parts[2 * v] if v < extra else parts[v + extra] for v in range(pof2)]
    while len(level) > 2:
        level = [level[i] + level[i + 1] for i in range(0, len(level), 2)]
    if len(level) == 2:
        np.add(level[0], level[1], out=out)
    else:
        out[...] = level[0]
