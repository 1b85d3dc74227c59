"""CPU collectives over Dask's own worker-to-worker comms.

A :class:`DtrainWorkerPlugin`, registered once per cluster, adds two RPC handlers to every worker
(the mechanism Dask's P2P shuffle uses): ``dtrain_message`` stores an incoming array in the
mailbox of its job, ``dtrain_abort`` aborts a job. The rank task (a long-lived task pinned to its
worker, running in a task thread) builds a :class:`DaskCommunicator`, which sends with
``worker.rpc(peer).dtrain_message(...)`` scheduled on the worker's event loop and waits for the
arrays it expects in its mailbox. NumPy arrays travel zero-copy (``to_serialize``). Ranks on
the same machine agree at their first collective to bypass all this: large arrays then go through
shared memory (:mod:`dtrain.comm.shm`) and every message through a pipe (:mod:`dtrain.comm.pipes`),
written and read without the event loop; when all ranks are on one machine, small sums skip
messages altogether (:mod:`dtrain.comm.board`).

Where code runs is labelled: *event loop* (handlers, ``client.run`` functions, the coroutines that
send) or *task thread* (the rank's training loop). They share the job table under one lock, held
only for dictionary updates; no handler ever waits for the task thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
from distributed import WorkerPlugin, get_worker
from distributed.comm import get_address_host
from distributed.core import Status
from distributed.protocol import to_serialize

from . import board as boards
from . import pipes
from . import shm as shared
from .base import WAIT_SLICE, Aborted, CommError, Mailbox, failure_message
from .collectives import TransportCommunicator

if TYPE_CHECKING:
    from distributed import Client, Worker

PLUGIN_NAME = "dtrain"
REMEMBER_JOBS = 4096  # closed and aborted job ids remembered per worker (bounded; oldest forgotten)
CLOSE_GRACE = 1.0  # seconds close() waits for the peers to finish reading this rank's shared memory
# Seconds abort() waits for its messages to the peers. Short: a frozen or cut-off peer never answers
# (the driver aborts every rank as well), and a failing rank should report its error at once.
ABORT_GRACE = 0.25


class _JobTable:
    """One worker's mailboxes, one per job id, and the ids of closed and aborted jobs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Mailbox] = {}
        self._closed: OrderedDict[str, None] = OrderedDict()
        self._aborted: OrderedDict[str, str] = OrderedDict()

    @staticmethod
    def _remember(ids: OrderedDict, job_id: str, value: Any) -> None:
        ids.setdefault(job_id, value)
        while len(ids) > REMEMBER_JOBS:
            ids.popitem(last=False)

    def mailbox(self, job_id: str, *, reopen: bool = False) -> Mailbox | None:
        """The job's mailbox, created on first use (messages may arrive before the rank opens it);
        None for a closed job, unless ``reopen``. A remembered abort is applied to a new mailbox."""
        with self._lock:
            if reopen:
                self._closed.pop(job_id, None)
            elif job_id in self._closed:
                return None
            box = self._jobs.get(job_id)
            if box is None:
                box = self._jobs[job_id] = Mailbox()
                if job_id in self._aborted:
                    box.abort(self._aborted[job_id])
            return box

    def close(self, job_id: str) -> None:
        with self._lock:
            box = self._jobs.pop(job_id, None)
            self._remember(self._closed, job_id, None)
        if box is not None:
            box.close()

    def abort(self, job_id: str, reason: str) -> None:
        with self._lock:
            self._remember(self._aborted, job_id, reason)
            box = self._jobs.get(job_id)
        if box is not None:
            box.abort(reason)

    def deliver(self, job_id: str, source: Hashable, tag: str, data: Any) -> None:
        box = self.mailbox(job_id)
        if box is not None:
            box.put(source, tag, data)  # discarded there if the job was aborted


# One table per worker, shared by every instance of the plugin on it: registering the plugin again
# (the driver does it before each job) replaces the instance but must not lose running jobs.
_TABLES: weakref.WeakKeyDictionary[Worker, _JobTable] = weakref.WeakKeyDictionary()
_TABLES_LOCK = threading.Lock()


def _table(worker: Worker) -> _JobTable:
    with _TABLES_LOCK:
        table = _TABLES.get(worker)
        if table is None:
            table = _TABLES[worker] = _JobTable()
        return table


class DtrainWorkerPlugin(WorkerPlugin):
    """Adds dtrain's message and abort handlers to a worker. Register it once per cluster:
    ``client.register_plugin(DtrainWorkerPlugin(), name=PLUGIN_NAME)`` (registering again is safe)."""

    name = PLUGIN_NAME

    def setup(self, worker: Worker) -> None:  # event loop
        serve_large_buffers_from_heap()
        _quiet_aborted_ranks()
        self.worker = worker
        self._jobs = _table(worker)
        worker.handlers["dtrain_message"] = self._handle_message
        worker.handlers["dtrain_abort"] = self._handle_abort

    # -- handlers: event loop; store and return at once ------------------------------------------

    def _handle_message(self, job_id: str, source: Hashable, tag: str, data: Any = None, lead: Any = None) -> None:
        # ``lead``: a 1-byte buffer sent before large arrays so that they arrive aligned (see _send_array)
        self._jobs.deliver(job_id, source, tag, data)

    def _handle_abort(self, job_id: str, reason: str) -> None:
        self._jobs.abort(job_id, reason)

    # -- API: any thread --------------------------------------------------------------------------

    def open_job(self, job_id: str) -> None:
        """Create the job's mailbox (idempotent). An abort that came first is kept and applies."""
        self._jobs.mailbox(job_id, reopen=True)

    def close_job(self, job_id: str) -> None:
        """Drop the job's mailbox and its queued messages; later messages for it are discarded."""
        self._jobs.close(job_id)

    def abort_job(self, job_id: str, reason: str) -> None:
        """Abort the job on this worker: wakes its waiters at once; sticky, even before ``open_job``."""
        self._jobs.abort(job_id, reason)

    def deliver(self, job_id: str, source: Hashable, tag: str, data: Any) -> None:
        """Put an item in the job's mailbox (the handler does this; so can the driver, via ``client.run``)."""
        self._jobs.deliver(job_id, source, tag, data)

    def wait_for(self, job_id: str, source: Hashable, tag: str, timeout: float, **kwargs: Any) -> Any:
        """Block the calling (task) thread until (source, tag) arrives for the job; raises
        :class:`Aborted`, or :class:`CommError` after ``timeout`` seconds. ``kwargs`` go to
        :meth:`Mailbox.take` (``waiting_for``, ``check``)."""
        box = self._jobs.mailbox(job_id)
        if box is None:
            raise CommError(f"Job {job_id!r} is closed on worker {self.worker.address}; it cannot receive messages.")
        return box.take(source, tag, timeout, **kwargs)

    def mailbox(self, job_id: str) -> Mailbox:
        """The job's mailbox (opening the job): its ``reason`` is the job's abort flag."""
        box = self._jobs.mailbox(job_id, reopen=True)
        assert box is not None
        return box


class _AbortedRankFilter:
    """Drops the worker's "Compute Failed" report of a dtrain rank that stopped because its job
    was aborted (a cancel, Ctrl-C, a peer's failure): that is the job stopping as asked, and the
    cause is reported once, by the driver. Other failures are logged as usual."""

    def filter(self, record) -> bool:
        message = record.getMessage()
        return not ("Compute Failed" in message and "dtrain-" in message and "Aborted(" in message)


def _quiet_aborted_ranks() -> None:
    import logging

    log = logging.getLogger("distributed.worker")
    if not any(isinstance(f, _AbortedRankFilter) for f in log.filters):
        log.addFilter(_AbortedRankFilter())


_MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's largest allowed value


def serve_large_buffers_from_heap() -> None:
    """Let glibc serve allocations up to 32 MiB from its heap instead of a fresh mmap each.

    Every step the allreduce receives the peers' gradients in new buffers. Dask's nanny sets
    MALLOC_TRIM_THRESHOLD_, which freezes glibc's mmap threshold at 128 KiB, so each of those
    buffers was mapped, page-faulted in and unmapped again: measured on 2 workers, the 7.4 MB
    gradient of 784-1024-1024-10 took 8.0-8.8 ms to allreduce, and 6.6-6.8 ms with this (the
    step went from 45-49 to 41-42 ms). Freed memory is still trimmed back to the system as
    the nanny intended. Process-wide; a no-op where the C library is not glibc."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, _MMAP_THRESHOLD_BYTES)  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def get_plugin(worker: Worker | None = None) -> DtrainWorkerPlugin:
    """The dtrain plugin of ``worker`` (default: the worker running this task)."""
    if worker is None:
        try:
            worker = get_worker()
        except ValueError:
            raise RuntimeError(
                "dtrain's Dask communicator must be created inside a task running on a Dask worker "
                "(the rank task), not on the client."
            ) from None
    plugin = worker.plugins.get(PLUGIN_NAME)
    if not isinstance(plugin, DtrainWorkerPlugin):
        raise RuntimeError(
            f"The dtrain worker plugin is not registered on worker {worker.address}: register it with "
            f"client.register_plugin(DtrainWorkerPlugin(), name={PLUGIN_NAME!r}) before launching the ranks."
        )
    return plugin


def ensure_plugin(client: Client) -> None:
    """Register the plugin unless the scheduler already has it (cheaper than registering again)."""
    registered = client.run_on_scheduler(_scheduler_has_plugin)
    if not registered:
        client.register_plugin(DtrainWorkerPlugin(), name=PLUGIN_NAME)


def _scheduler_has_plugin(dask_scheduler: Any) -> bool:
    return PLUGIN_NAME in dask_scheduler.worker_plugins


def abort_on_worker(job_id: str, reason: str, dask_worker: Worker | None = None) -> None:
    """``client.run(abort_on_worker, job_id, reason)``: abort the job on every worker (event loop).
    Works before the job starts there, and whether or not the plugin is registered yet.
    (``client.run`` passes the worker as the keyword ``dask_worker``, hence its place last.)"""
    dask_worker = dask_worker or get_worker()
    _table(dask_worker).abort(job_id, reason)


def deliver_on_worker(job_id: str, source: Hashable, tag: str, data: Any, dask_worker: Worker | None = None) -> None:
    """``client.run(deliver_on_worker, job_id, "driver", tag, value)``: a control value for the ranks,
    which read it with ``get_plugin().wait_for(job_id, "driver", tag, timeout)`` (event loop)."""
    dask_worker = dask_worker or get_worker()
    _table(dask_worker).deliver(job_id, source, tag, data)


# -- the rank's side: task thread ------------------------------------------------------------------


_LEAD = np.zeros(1, dtype=np.uint8)
ALIGN_MIN_BYTES = 2**17  # from this size, arrays are sent after a lead buffer (see _send_array)
ACK_MIN_BYTES = 2**24  # from this size, a send waits for the peer's reply (see _send_array)
SHARED_MIN_BYTES = 2**16  # from this size, arrays for a peer on this machine go through shared memory
SHARED_SLOTS_PER_PEER = 4  # segments this rank keeps per peer (in use until the peer frees them)


class _Slot:
    """One of this rank's shared segments for one peer. Once sent through, it is in use until the
    peer's "free" notice for that use arrives (the notice names the use)."""

    def __init__(self, capacity: int) -> None:
        self.segment = shared.Segment(capacity)
        self.use = 0  # sends through this slot so far
        self.last_send = 0  # this rank's send count at its latest use: the oldest is waited for first


class _DaskTransport:
    """Sends through the worker's event loop and receives from the job's mailbox. Between peers on
    the same machine (after :meth:`connect_shared_memory`) large arrays travel through shared
    memory and every message through a pipe written by the rank thread (:mod:`dtrain.comm.pipes`)."""

    def __init__(self, worker: Worker, box: Mailbox, job_id: str, rank: int, peers: list[str], timeout: float):
        self.worker, self.box, self.job_id = worker, box, job_id
        self.rank, self.size, self.peers, self.timeout = rank, len(peers), peers, timeout
        # The worker's tornado IOLoop is an AsyncIOLoop (tornado 6 has no other kind), which
        # tornado's base IOLoop type does not say.
        self.loop = worker.loop.asyncio_loop  # type: ignore[attr-defined]
        self._pending: dict[concurrent.futures.Future, tuple[int, str]] = {}
        self.shared_peers: set[int] = set()  # peers that read this rank's large arrays from shared memory
        self.unanswered: set[int] = set()  # peers a receive from timed out or ended on: aborts do not wait on them
        self._slots: dict[int, list[_Slot]] = {}
        self._sends = 0
        self._peer_segments = shared.PeerSegments()
        self._held: dict[tuple[int, str], tuple[int, int]] = {}  # received from shared memory, not yet released
        self._outbound: dict[int, pipes.Outbound] = {}  # peers this rank writes to through their pipe
        self._lendable: list[_Slot] = []  # segments the caller writes into itself (shared_array): sent uncopied
        self._inbound: pipes.Inbound | None = None  # this rank's pipes, read into the mailbox
        self.board: boards.Board | None = None  # small sums, when every rank is on this machine

    # -- sending --------------------------------------------------------------------------------------

    def send(self, peer: int, tag: str, array: np.ndarray, lend: bool = False) -> Any:
        pipe = self._outbound.get(peer)
        if pipe is None:
            return self._launch(peer, tag, self._send_array(self.peers[peer], tag, array))
        lent = self._lent_ref(array) if lend else None
        if lent is not None:  # the peer reads the caller's own memory; wait() waits until it is done
            pipe.send(tag, lent, self.timeout, self.box)
            return _Lent(peer, _free_tag(lent.slot, lent.use))
        # done when this returns: large arrays are copied into this rank's shared memory, small
        # ones go in the frame, and the caller's buffer is free again
        value = self._put_shared(peer, array) if array.nbytes >= SHARED_MIN_BYTES else array
        pipe.send(tag, value, self.timeout, self.box)
        return _SENT

    def shared_array(self, size: int, dtype: Any) -> np.ndarray | None:
        """A zeroed array in a segment of this rank's shared memory, which ``send(..., lend=True)``
        hands to the peers uncopied; None when no peer reads this rank's shared memory."""
        if not self._outbound:
            return None
        dtype = np.dtype(dtype)
        slot = _Slot(shared.slot_capacity(size * dtype.itemsize))
        self._lendable.append(slot)
        return slot.segment.data[: size * dtype.itemsize].view(dtype)

    def _lent_ref(self, array: np.ndarray) -> shared.SharedRef | None:
        for index, slot in enumerate(self._lendable):
            offset = slot.segment.offset_of(array)
            if offset is not None:
                slot.use += 1  # its free notice is named after this use (lent slots count from -1 down)
                return slot.segment.ref(array.dtype, array.size, -1 - index, slot.use, offset)
        return None

    def _launch(self, peer: int, tag: str, coro) -> concurrent.futures.Future:
        """Run a send on the event loop; :meth:`wait` (or a failed receive) collects it."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        self._pending[future] = (peer, tag)
        return future

    async def _send_array(self, address: str, tag: str, array: np.ndarray) -> None:  # event loop
        # Dask reads the first NumPy buffer of a message into one allocation together with the
        # message header, at an arbitrary byte offset: the array arrives misaligned and NumPy adds
        # it 2-3x slower. Later buffers get an allocation of their own, so a 1-byte lead buffer goes
        # first. (Small messages travel as one block anyway, and their additions are cheap.)
        lead = {"lead": to_serialize(_LEAD)} if array.nbytes >= ALIGN_MIN_BYTES else {}
        # Messages under 16 MiB go without an acknowledgement (reply=False): the write completing
        # frees the buffer, and a dead peer fails the write (or, at worst, the receive deadline of
        # whoever waits for it). Measured on 2 cores: a tiny model's step went from 1.2-3 ms to
        # 0.5 ms of communication, and the 7.4 MB gradient of 784-1024-1024-10 from 9.5 to 7.1 ms.
        # Larger ones keep the reply: 40 MiB allreduces took 30-33 ms with it, 34-38 ms without.
        await self.worker.rpc(address).dtrain_message(
            job_id=self.job_id,
            source=self.rank,
            tag=tag,
            **lead,
            data=to_serialize(array),
            reply=array.nbytes >= ACK_MIN_BYTES,
        )

    async def _send_message(self, address: str, tag: str, **fields: Any) -> None:  # event loop
        """A small message (msgpack-able fields), without waiting for a reply."""
        await self.worker.rpc(address).dtrain_message(
            job_id=self.job_id, source=self.rank, tag=tag, **fields, reply=False
        )

    def _put_shared(self, peer: int, array: np.ndarray) -> shared.SharedRef:
        slots = self._slots.setdefault(peer, [])
        index = self._free_slot(peer, slots, array.nbytes)
        slot = slots[index]
        slot.segment.write(array)
        self._sends += 1
        slot.use, slot.last_send = slot.use + 1, self._sends
        return slot.segment.ref(array.dtype, array.size, index, slot.use)

    def _free_slot(self, peer: int, slots: list[_Slot], nbytes: int) -> int:
        """A slot for ``peer`` that can take ``nbytes`` and that the peer no longer reads."""
        for index, slot in enumerate(slots):  # (a slot is created for a send: each here has been used)
            if slot.segment.capacity >= nbytes and self.box.poll(peer, _free_tag(index, slot.use)):
                return index
        if len(slots) < SHARED_SLOTS_PER_PEER:
            slots.append(_Slot(shared.slot_capacity(nbytes)))
            return len(slots) - 1
        # every slot is in use (the peer is behind) or too small: wait for the oldest to be freed
        index = min(range(len(slots)), key=lambda i: slots[i].last_send)
        slot = slots[index]
        self.box.take(
            peer,
            _free_tag(index, slot.use),
            self.timeout,
            waiting_for=f"rank {peer} ({self.peers[peer]}) to finish reading rank {self.rank}'s shared memory",
            check=self._checker(peer, _free_tag(index, slot.use)),
        )
        if slot.segment.capacity < nbytes:
            slot.segment.close()
            slots[index] = _Slot(shared.slot_capacity(nbytes))
            slots[index].use = slot.use  # later "free" notices keep distinct names
        return index

    # -- receiving ------------------------------------------------------------------------------------

    def recv(self, peer: int, tag: str) -> np.ndarray:
        got = self._take(peer, tag)
        if not isinstance(got, shared.SharedRef):
            return got
        try:
            array = self._peer_segments.array(got)
        except OSError as exc:
            raise CommError(
                f"Rank {self.rank} of job {self.job_id!r} could not read what rank {peer} ({self.peers[peer]}) put in "
                f"its shared memory for {tag!r} ({exc}): that worker has most likely died; abort the job and restart it."
            ) from exc
        self._held[(peer, tag)] = (got.slot, got.use)
        return array

    def release(self, peer: int, tag: str) -> None:
        """Tell ``peer`` that the shared slot it sent ``tag`` through may be written again."""
        held = self._held.pop((peer, tag), None)
        if held is None:
            return  # it came over TCP
        try:  # it came through shared memory, so its descriptor came through the pipe
            self._outbound[peer].send(_free_tag(*held), None, self.timeout, self.box)
        except Aborted:
            raise
        except CommError:  # the peer has closed (it finished first) or died: nobody to tell; a
            pass  # dead peer fails this rank's next receive from it

    # -- shared memory set-up and tear-down -----------------------------------------------------------

    def connect_shared_memory(self, enabled: bool) -> None:
        """Agree with every peer on this machine whether to talk through shared memory and pipes.

        Every rank runs this once, at start-up: it offers each peer on its host a probe segment and
        a pipe of its own (or declines), opens the peers' probes and pipes, and tells each whether
        that worked. A pair where both sides could open both talks through them from then on; any
        other pair stays on TCP (through Dask), in both directions.
        """
        host = get_address_host(self.peers[self.rank])
        local = [p for p in range(self.size) if p != self.rank and get_address_host(self.peers[p]) == host]
        if not local:
            return
        probe = inbound = board = None
        opened: dict[int, pipes.Outbound] = {}
        try:
            if enabled and shared.available():
                try:
                    probe = shared.Segment(0)
                    inbound = pipes.Inbound(self.box, local, name=f"dtrain-pipes-{self.job_id}-rank{self.rank}")
                    if len(local) == self.size - 1 and boards.available():
                        board = boards.Board(self.rank, self.size)
                except OSError:  # out of file descriptors or of pipes this user may have: decline, use TCP
                    for made in (probe, inbound):
                        if made is not None:
                            made.close()
                    probe = inbound = None
            sent = []
            for p in local:
                offer: dict[str, Any] | None = None
                if probe is not None and inbound is not None:  # made together: both or neither
                    offer = {"segment": probe.ref(np.dtype(np.uint8), 0, -1, 0).to_msg(), "pipe": inbound.write_end(p)}
                    if board is not None:
                        offer["board"] = board.ref().to_msg()
                sent.append(self._post(p, "shm.hello", data=offer))
            for p in local:
                offer = self._take(p, "shm.hello")
                if probe is not None and isinstance(offer, dict):
                    try:
                        ref = shared.SharedRef.from_msg(offer["segment"])
                        self._peer_segments.array(ref)
                        if board is not None and "board" in offer:
                            board.attach(p, self._peer_segments.array(shared.SharedRef.from_msg(offer["board"])))
                        opened[p] = pipes.Outbound(ref.pid, offer["pipe"], f"rank {p} ({self.peers[p]})")
                    except (OSError, KeyError, TypeError):
                        pass
                sent.append(self._post(p, "shm.ok", data=p in opened))
            for p in local:
                if self._take(p, "shm.ok") is True and p in opened:
                    self.shared_peers.add(p)
            for future in sent:
                self.wait(future)
            # the peers that said yes opened our pipes before saying so: our copies can go
            if inbound is not None:
                inbound.keep_only(self.shared_peers)
                self._inbound, inbound = inbound, None
            self._outbound = {p: opened.pop(p) for p in self.shared_peers}
            if len(local) == self.size - 1:  # every rank is here, so every rank takes part
                usable = board is not None and board.complete and len(self.shared_peers) == self.size - 1
                if self._all_agree(usable, "board.ok"):
                    self.board, board = board, None
        finally:
            for pipe in opened.values():
                pipe.close()
            if inbound is not None:
                inbound.close()
            if probe is not None:
                probe.close()
            if board is not None:
                board.close()

    def _all_agree(self, yes: bool, tag: str) -> bool:
        """True on every rank when every rank says yes (each tells each: for the few ranks of one machine)."""
        verdict = np.array([yes], dtype=np.uint8)
        handles = [self.send(p, tag, verdict) for p in range(self.size) if p != self.rank]
        answers = []
        for p in range(self.size):
            if p != self.rank:
                answers.append(bool(_checked_verdict(self.recv(p, tag))))
                self.release(p, tag)
        for handle in handles:
            self.wait(handle)
        return yes and all(answers)

    # -- small sums on the board ----------------------------------------------------------------------

    def sum_small(self, source: np.ndarray, out: np.ndarray) -> bool:
        """``out`` = the ranks' sum of ``source`` on the board, if there is one and it fits; False
        (nothing done) otherwise. Every rank decides alike: the board is on all ranks or none."""
        if self.board is None or source.nbytes > self.board.capacity:
            return False
        self.board.allreduce(source, out, timeout=self.timeout, watch=self)
        return True

    def gone(self, peer: int) -> bool:  # board.Watch
        self._check_sends()
        self.box.drain()  # notes pipes that ended
        if self.box.reason is not None:
            raise Aborted(self.box.reason)
        gone = self._inbound is not None and peer in self._inbound.ended
        if gone:
            self.unanswered.add(peer)
        return gone

    def stuck(self, peer: int) -> None:  # board.Watch
        self.unanswered.add(peer)

    def describe(self, peer: int) -> str:  # board.Watch
        return f"rank {peer} ({self.peers[peer]})"

    def _post(self, peer: int, tag: str, **fields: Any) -> concurrent.futures.Future:
        return self._launch(peer, tag, self._send_message(self.peers[peer], tag, **fields))

    def _take(self, peer: int, tag: str) -> Any:
        try:
            return self.box.take(
                peer,
                tag,
                self.timeout,
                waiting_for=f"rank {peer} ({self.peers[peer]}) to send {tag!r} to rank {self.rank} of job {self.job_id!r}",
                check=self._checker(peer, tag),
            )
        except Aborted:
            raise
        except CommError:  # the peer is dead, frozen or cut off: it will not answer an abort either
            self.unanswered.add(peer)
            raise

    def _checker(self, peer: int, tag: str) -> Callable[[], None]:
        """What a receive from ``peer`` checks between waits: this rank's failed sends, and whether the
        peer's pipe has ended (its process exited) without sending ``tag``."""
        if self._inbound is None or peer not in self.shared_peers:
            return self._check_sends
        ended = self._inbound.ended_check(peer)

        def check() -> None:
            self._check_sends()
            if ended():
                if self.box.reason is not None:  # it left because the job was aborted: say that
                    raise Aborted(self.box.reason)
                raise CommError(
                    f"Rank {peer} ({self.peers[peer]}) of job {self.job_id!r} exited without sending {tag!r} to rank "
                    f"{self.rank}: that worker has died or left the job; abort the job and restart it."
                )

        return check

    def close_shared_memory(self, grace: float) -> None:
        """Free this rank's segments once the peers have read them: a peer that has not opened a
        segment yet could not after it is closed. Waits ``grace`` seconds at most (none once aborted)."""
        deadline = time.monotonic() + grace
        try:
            for peer, slots in self._slots.items():
                for index, slot in enumerate(slots):
                    while self.box.reason is None and not self.box.closed and time.monotonic() <= deadline:
                        if self.box.poll(peer, _free_tag(index, slot.use)):
                            break
                        time.sleep(0.001)
        except CommError:  # a broken frame (reported where it was read) or an abort: nobody to wait for
            pass
        finally:
            for slot in [*(slot for slots in self._slots.values() for slot in slots), *self._lendable]:
                slot.segment.close()  # a lent array still referenced keeps its memory mapped until it goes
            self._slots.clear()
            self._lendable.clear()
            if self.board is not None:
                self.board.close()
                self.board = None
            self._peer_segments.close()
            self._held.clear()
            for pipe in self._outbound.values():
                pipe.close()
            self._outbound.clear()
            if self._inbound is not None:
                self._inbound.close()
                self._inbound = None

    def wait(self, future: Any) -> None:
        """Block until the send is written to the connection, or a lent array has been read by the
        peer: its buffer is free again."""
        if isinstance(future, _Lent):
            self.box.take(
                future.peer,
                future.free_tag,
                self.timeout,
                waiting_for=f"rank {future.peer} ({self.peers[future.peer]}) to finish reading rank {self.rank}'s shared memory",
                check=self._checker(future.peer, future.free_tag),
            )
            return
        info = self._pending.pop(future, (-1, "?"))
        deadline = time.monotonic() + self.timeout
        while not future.done():
            concurrent.futures.wait([future], timeout=WAIT_SLICE)
            if future.done():
                break
            if self.box.reason is not None:
                raise Aborted(self.box.reason)
            if time.monotonic() > deadline:
                future.cancel()
                self._send_failed(info, None)
        try:
            future.result()
        except Exception as exc:  # includes a cancelled send
            self._send_failed(info, exc)

    def cancel_sends(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pending.clear()

    def _check_sends(self) -> None:
        """Fail fast while waiting for a receive when one of this rank's sends already failed."""
        for future, info in list(self._pending.items()):
            if future.done() and (future.cancelled() or future.exception() is not None):
                del self._pending[future]
                self._send_failed(info, None if future.cancelled() else future.exception())

    def _send_failed(self, info: tuple[int, str], exc: BaseException | None) -> NoReturn:
        if self.box.reason is not None:  # the job was aborted: the failed send is a consequence
            raise Aborted(self.box.reason) from exc
        peer, tag = info
        what = f"did not complete within {self.timeout:g} s" if exc is None else f"failed ({type(exc).__name__}: {exc})"
        raise CommError(
            f"Rank {self.rank} of job {self.job_id!r}: sending {tag!r} to rank {peer} ({self.peers[peer]}) {what}. "
            "That worker is gone, unreachable, or has no dtrain plugin; abort the job and restart it."
        ) from exc


_SENT: concurrent.futures.Future = concurrent.futures.Future()  # what a send through a pipe returns: done
_SENT.set_result(None)


@dataclass(frozen=True)
class _Lent:
    """What a lending send returns: waiting for it is waiting for the peer's free notice."""

    peer: int
    free_tag: str


def _checked_verdict(got: Any) -> int:
    if not (isinstance(got, np.ndarray) and got.shape == (1,)):
        raise CommError(f"Expected a one-number verdict while connecting the ranks, received {type(got).__name__}.")
    return int(got[0])


def _free_tag(slot: int, use: int) -> str:
    """The tag of a peer's notice that it has read use ``use`` of this rank's shared slot ``slot``."""
    return f"shm.free.{slot}.{use}"


class DaskCommunicator(TransportCommunicator):
    """CPU collectives between the rank tasks of one job; build it inside the rank task.

    ``peers`` are the workers' addresses in rank order (this rank's own address at ``peers[rank]``);
    ``timeout`` bounds every single wait, so a dead peer is a :class:`CommError` within ``timeout``
    seconds, never a hang. ``allow_ring`` (default: when the peers span several hosts) lets large
    buffers on 3+ ranks use the ring allreduce; on one machine recursive doubling is faster.
    ``shared_memory`` (default on) sends to peers on the same machine through shared memory and
    pipes (:mod:`dtrain.comm.shm`, :mod:`dtrain.comm.pipes`) where both sides can use them, and
    over TCP otherwise.
    Close it (or use it as a context manager) when the rank finishes.
    """

    name = "dask"
    _transport: _DaskTransport  # what TransportCommunicator holds as a Transport, with its extras

    def __init__(
        self,
        job_id: str,
        rank: int,
        peers: list[str],
        timeout: float = 60.0,
        worker: Worker | None = None,
        *,
        allow_ring: bool | None = None,
        shared_memory: bool = True,
    ) -> None:
        plugin = get_plugin(worker)
        worker = plugin.worker
        peers = list(peers)
        if not isinstance(rank, int) or not 0 <= rank < len(peers):
            raise ValueError(f"rank={rank!r} is not in [0, {len(peers)}) for {len(peers)} peers.")
        if peers[rank] != worker.address:
            raise ValueError(
                f"Rank {rank} is running on worker {worker.address} but peers[{rank}] is {peers[rank]}: pin each rank "
                "task to its worker with client.submit(..., workers=[address], allow_other_workers=False)."
            )
        if len(set(peers)) != len(peers):
            raise ValueError(f"Two ranks share a worker in peers={peers}: run exactly one rank per worker.")
        self.job_id = job_id
        self.timeout = timeout
        self._box = plugin.mailbox(job_id)
        self._jobs = plugin._jobs
        if allow_ring is None:
            allow_ring = len({get_address_host(address) for address in peers}) > 1
        self.shared_memory = shared_memory
        super().__init__(_DaskTransport(worker, self._box, job_id, rank, peers, timeout), allow_ring=allow_ring)

    def _connect(self) -> None:
        self._transport.connect_shared_memory(self.shared_memory)

    def _sum_small(self, source: np.ndarray, out: np.ndarray) -> bool:
        return self._transport.sum_small(source, out)

    def shared_array(self, size: int, dtype: Any) -> np.ndarray | None:
        """Memory the peers on this machine read uncopied (after the first collective; None before,
        or when no peer shares memory with this rank). Every call makes a new segment, kept until
        :meth:`close`: ask once per buffer."""
        return self._transport.shared_array(size, dtype)

    @property
    def mailbox(self) -> Mailbox:
        """This rank's mailbox of the job; ``mailbox.is_set()`` is the job's abort flag."""
        return self._box

    def set_timeout(self, seconds: float) -> None:
        self.timeout = self._transport.timeout = float(seconds)

    def check_abort(self) -> None:
        reason = self._box.reason
        if reason is not None:
            raise Aborted(reason)
        worker = self._transport.worker
        if worker.status in _LEAVING:
            # A worker closes when it loses its scheduler (Dask does not reconnect) or is shut down.
            # Its rank must not train on alone: peers on its machine still answer through shared
            # memory, and the run would go on writing checkpoints beside the one that resumes it.
            raise CommError(
                f"Worker {worker.address} is {worker.status.name.replace('_', ' ')} (it lost its scheduler, "
                "or is being shut down): its rank stops, and so does the run; resume it from its checkpoints."
            )

    def abort(self, reason: str) -> None:
        """Abort the job here and on every peer (best effort, ABORT_GRACE at most, never raises)."""
        t = self._transport
        message = failure_message(self.rank, f" ({t.peers[self.rank]})", reason)
        try:
            self._jobs.abort(self.job_id, message)
            futures = {
                peer: asyncio.run_coroutine_threadsafe(self._send_abort(address, message), t.loop)
                for peer, address in enumerate(t.peers)
                if peer != self.rank
            }
            # Not waited for: a peer that let a receive time out (frozen or cut off) never answers.
            waited = [future for peer, future in futures.items() if peer not in t.unanswered]
            if waited and not _on_loop_thread(t.loop):  # never block the event loop waiting for itself
                concurrent.futures.wait(waited, timeout=ABORT_GRACE)
        except Exception:  # best effort: the caller is already failing
            pass

    async def _send_abort(self, address: str, reason: str) -> None:  # event loop
        await self._transport.worker.rpc(address).dtrain_abort(job_id=self.job_id, reason=reason)

    def close(self) -> None:
        self._transport.cancel_sends()  # after a failed collective: sends that will never complete
        self._transport.close_shared_memory(grace=min(self.timeout, CLOSE_GRACE))
        self._jobs.close(self.job_id)

    def __repr__(self) -> str:
        return f"<DaskCommunicator job {self.job_id!r} rank {self.rank} of {self.size}>"


_LEAVING = (Status.closing, Status.closing_gracefully, Status.closed, Status.failed)


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
