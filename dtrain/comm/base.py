"""The communicator interface, its errors, the one-rank communicator, and the mailbox that the
Dask and in-memory transports share.

Every collective is *synchronous and in place*: all ranks call the same collectives in the same
order with buffers of the same size and dtype, and each call returns when this rank's buffer holds
the result. A peer that never answers is an error after a deadline (``CommError``), never a hang;
an abort of the job (by the driver or by a failing peer) wakes every waiter at once (``Aborted``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, Protocol, runtime_checkable

# How long a blocked wait sleeps before it looks at its deadline and abort flag again. Deliveries
# and aborts notify the waiter at once; the slice only bounds how late a missed wake-up is noticed.
WAIT_SLICE = 0.05


class CommError(RuntimeError):
    """A collective failed: a peer is lost or stuck, or a deadline passed. The job cannot go on;
    abort it and restart it from a checkpoint. ``waiting_for``: what the failed wait waited for,
    where known (an incident report says it: dtrain.cluster.incidents)."""

    waiting_for = ""


class DeadlineMissed(CommError):
    """A wait on a peer passed its deadline (the run's ``timeout``): the peer is dead, stuck or
    frozen. ``waiting_for`` says for what (which rank, which collective)."""

    def __init__(self, message: str, waiting_for: str = "") -> None:
        self.waiting_for = waiting_for
        super().__init__(message)

    def __reduce__(self):  # rank tasks raise this; Dask pickles it back to the client
        return (type(self), (str(self), self.waiting_for))


class Aborted(CommError):
    """The job was aborted, by the driver or by a failing peer; ``reason`` says who and why."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        self.reason = reason
        super().__init__(message or f"The job was aborted: {reason}")

    def __reduce__(self):  # rank tasks raise this; Dask pickles it back to the client
        return (type(self), (self.reason, str(self)))


@runtime_checkable
class Communicator(Protocol):
    """What a training loop needs from its peers; see the backends in :mod:`dtrain.comm`."""

    rank: int
    size: int
    name: str  # "local" | "dask" | "nccl" | "host-staged"

    def allreduce(self, array: Any) -> None:
        """Sum ``array`` (contiguous) over all ranks, in place; afterwards it is bitwise identical on every rank."""

    def allreduce_into(self, array: Any, out: Any) -> None:
        """``out`` = the sum over all ranks of ``array`` (same size and dtype); ``array`` is left as
        it was. With ``array`` from :meth:`shared_array`, the peers read it where it is, uncopied."""

    # Whether the next two work (not on the GPU communicators yet: theirs raise NotImplementedError).
    has_reduce_scatter: bool

    def reduce_scatter_into(self, array: Any, out: Any) -> slice:
        """``out[part]`` = the sum over all ranks of ``array[part]`` for this rank's ``part`` of the
        flat buffer (returned: contiguous, about 1/size of it); ``array`` and the rest of ``out``
        are left as they were. Every part is summed once, by its owner."""

    def allgather(self, array: Any) -> None:
        """Every rank's part (as :meth:`reduce_scatter_into` returns it) of ``array`` overwrites the
        others' copies of it, in place: afterwards ``array`` is bitwise identical on every rank."""

    def shared_array(self, size: int, dtype: Any) -> Any | None:
        """A zeroed 1-D buffer that :meth:`allreduce_into`, :meth:`reduce_scatter_into` and
        :meth:`allgather` send without copying it (memory the peers on this machine can read), or
        None where there is no such thing."""

    def broadcast(self, array: Any, root: int = 0) -> None:
        """Overwrite ``array`` in place with rank ``root``'s copy."""

    def barrier(self) -> None:
        """Return once every rank has entered the barrier."""

    def set_timeout(self, seconds: float) -> None:
        """Change the deadline of every later wait (ranks wait longer at start-up, while the
        slowest one loads its data, than between steps)."""
        ...

    def check_abort(self) -> None:
        """Raise :class:`Aborted` if the job was aborted (cheap: called every step)."""

    def abort(self, reason: str) -> None:
        """Best effort: tell every peer to abort because this rank is failing. Never raises; blocks a moment at most."""

    def close(self) -> None:
        """Release this rank's resources; the communicator cannot be used afterwards."""


def abort_reason(flag: Any) -> str:
    return getattr(flag, "reason", None) or "the job was aborted"


def failure_message(rank: int, where: str, reason: str) -> str:
    """The abort reason a failing rank sends its peers: says which rank, unless ``reason`` already does."""
    return reason if reason.startswith(f"rank {rank} ") else f"rank {rank}{where} failed: {reason}"


class LocalCommunicator:
    """Rank 0 of 1: the collectives are no-ops. ``abort_event`` (a ``threading.Event``, or a
    :class:`Mailbox`) lets the owner of the job stop the training loop through ``check_abort``."""

    name = "local"
    rank = 0
    size = 1
    has_reduce_scatter = True

    def __init__(self, abort_event: threading.Event | Mailbox | None = None) -> None:
        self._abort = abort_event if abort_event is not None else threading.Event()
        self._reason: str | None = None

    def set_timeout(self, seconds: float) -> None:
        pass  # nothing to wait for

    def allreduce(self, array: Any) -> None:
        pass

    def allreduce_into(self, array: Any, out: Any) -> None:
        out[...] = array

    def reduce_scatter_into(self, array: Any, out: Any) -> slice:
        out[...] = array
        return slice(0, out.size)

    def allgather(self, array: Any) -> None:
        pass

    def shared_array(self, size: int, dtype: Any) -> None:
        return None

    def broadcast(self, array: Any, root: int = 0) -> None:
        if root != 0:
            raise ValueError(f"root={root} is not a rank of a 1-rank communicator: the only rank is 0.")

    def barrier(self) -> None:
        pass

    def check_abort(self) -> None:
        if self._abort.is_set():
            raise Aborted(self._reason or abort_reason(self._abort))

    def abort(self, reason: str) -> None:
        self._reason = self._reason or reason
        if isinstance(self._abort, Mailbox):
            self._abort.abort(reason)
        else:
            self._abort.set()

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return "<LocalCommunicator rank 0 of 1>"


_MISSING = object()


class Mailbox:
    """Items keyed by (source, tag) for one rank of one job, plus the job's abort flag.

    ``put`` may run on any thread (a Dask worker's event loop, another rank's thread) and never
    waits for the consumer; ``take`` blocks the calling thread until the item arrives, the job is
    aborted, or the deadline passes. Items that arrive early simply wait here, so the tags (unique
    per collective call and round) keep rounds from mixing.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._items: dict[tuple[Hashable, str], Any] = {}
        self.reason: str | None = None  # set once, by abort(); read without the lock (one attribute load)
        self.closed = False
        # Pipes that the taking thread reads itself (dtrain.comm.pipes.Inbound): drained before
        # every look, and waited on instead of the condition; the others wake it through them.
        self._reader: Any = None
        self._waiting_on_reader = 0

    def attach_reader(self, reader: Any) -> None:
        """From now on, ``take`` and ``poll`` read ``reader``'s pipes first (``drain()``) and
        sleep in ``reader.wait(timeout)``; ``put``, ``abort`` and ``close`` call ``reader.wake()``."""
        with self._cond:
            self._reader = reader

    def detach_reader(self, reader: Any) -> None:
        with self._cond:
            if self._reader is reader:
                self._reader = None
            waiting = self._waiting_on_reader
        if waiting:
            reader.wake()

    def drain(self) -> None:
        """Read what has arrived in the attached pipes into the mailbox (nothing without pipes)."""
        reader = self._reader
        if reader is not None:
            reader.drain()

    def _wake_reader(self) -> None:
        """Called with the lock held, after a change a taker waiting on the pipes must see."""
        if self._waiting_on_reader and self._reader is not None:
            self._reader.wake()

    def is_set(self) -> bool:
        """True once aborted: lets a mailbox serve as the ``abort_event`` of other communicators."""
        return self.reason is not None

    def put(self, source: Hashable, tag: str, data: Any) -> None:
        with self._cond:
            if self.closed or self.reason is not None:
                return  # a late message for a finished or aborted job: nobody will take it
            self._items[(source, tag)] = data
            self._cond.notify_all()
            self._wake_reader()

    def abort(self, reason: str) -> None:
        """Wake every waiter with :class:`Aborted`; the first reason sticks. Drops queued items."""
        with self._cond:
            if self.reason is None:
                self.reason = reason
            self._items.clear()
            self._cond.notify_all()
            self._wake_reader()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._items.clear()
            self._cond.notify_all()
            self._wake_reader()

    def poll(self, source: Hashable, tag: str) -> bool:
        """Remove the item (source, tag) if it has arrived; never waits."""
        self.drain()
        with self._cond:
            return self._items.pop((source, tag), _MISSING) is not _MISSING

    def take(
        self,
        source: Hashable,
        tag: str,
        timeout: float,
        *,
        waiting_for: str = "",
        check: Callable[[], None] | None = None,
    ) -> Any:
        """Remove and return the item (source, tag), blocking up to ``timeout`` seconds.

        ``check`` runs between waits (outside the lock): the Dask transport uses it to fail fast
        when one of its own sends failed, instead of waiting out the deadline.
        """
        key = (source, tag)
        deadline = time.monotonic() + timeout
        while True:
            self.drain()
            with self._cond:
                while True:
                    if self.reason is not None:
                        aborted = Aborted(self.reason)
                        aborted.waiting_for = waiting_for or str(key)
                        raise aborted
                    item = self._items.pop(key, _MISSING)
                    if item is not _MISSING:
                        return item
                    if self.closed:
                        raise CommError(f"The communicator was closed while waiting for {waiting_for or key}.")
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise DeadlineMissed(
                            f"Timed out after {timeout:g} s waiting for {waiting_for or key}. The peer is dead, "
                            "stuck, or not running the same sequence of collectives (same steps, same buffer "
                            "sizes); abort the job and restart it, or raise the timeout if the peer is only slow.",
                            waiting_for=waiting_for or str(key),
                        )
                    reader = self._reader
                    if reader is not None:
                        self._waiting_on_reader += 1  # from here on, put() wakes the reader's wait
                        break
                    if not self._cond.wait(min(remaining, WAIT_SLICE)) and check is not None:
                        break  # a quiet slice: run the check outside the lock
            if reader is not None:  # sleep on the pipes (outside the lock), then drain them
                try:
                    quiet = not reader.wait(min(remaining, WAIT_SLICE))
                finally:
                    with self._cond:
                        self._waiting_on_reader -= 1
                if not quiet or check is None:
                    continue
            if check is not None:  # always so here: a quiet slice breaks out only with a check
                check()
