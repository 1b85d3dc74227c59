"""Ranks as threads of one process, exchanging arrays through mailboxes: the same algorithms as the
Dask transport without a cluster, for tests and for trying a multi-rank training loop in-process.

    group = MemoryGroup(3)
    # in thread r:  comm = group.communicator(r); comm.allreduce(grads)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Aborted, Mailbox, failure_message
from .collectives import TransportCommunicator


class MemoryGroup:
    """``size`` ranks in one process. Each rank has a mailbox; a send puts a copy in the peer's."""

    def __init__(self, size: int, timeout: float = 60.0) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive integer, received {size!r}.")
        self.size = size
        self.timeout = timeout
        self.mailboxes = [Mailbox() for _ in range(size)]

    def communicator(self, rank: int) -> MemoryCommunicator:
        if not 0 <= rank < self.size:
            raise ValueError(f"rank={rank} is not in [0, {self.size}).")
        return MemoryCommunicator(_MemoryTransport(self, rank))

    def abort(self, reason: str) -> None:
        """Abort the whole group, as the driver would: every waiting rank raises :class:`Aborted`."""
        for box in self.mailboxes:
            box.abort(reason)


class _MemoryTransport:
    def __init__(self, group: MemoryGroup, rank: int) -> None:
        self.group, self.rank, self.size = group, rank, group.size

    def send(self, peer: int, tag: str, array: np.ndarray, lend: bool = False) -> None:
        self.group.mailboxes[peer].put(self.rank, tag, array.copy())  # a copy, as if it crossed a wire

    def recv(self, peer: int, tag: str) -> np.ndarray:
        return self.group.mailboxes[self.rank].take(
            peer, tag, self.group.timeout, waiting_for=f"rank {peer} to send {tag!r} to rank {self.rank}"
        )

    def wait(self, handle: Any) -> None:
        pass

    def release(self, peer: int, tag: str) -> None:
        pass  # received arrays are private copies


class MemoryCommunicator(TransportCommunicator):
    name = "memory"

    def __init__(self, transport: _MemoryTransport) -> None:
        super().__init__(transport)
        self._group = transport.group

    def check_abort(self) -> None:
        reason = self._group.mailboxes[self.rank].reason
        if reason is not None:
            raise Aborted(reason)

    def abort(self, reason: str) -> None:
        self._group.abort(failure_message(self.rank, "", reason))

    def close(self) -> None:
        self._group.mailboxes[self.rank].close()
