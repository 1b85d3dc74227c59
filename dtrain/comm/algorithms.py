"""Collective algorithms over point-to-point messages, written against a small :class:`Transport`
so that they run the same over Dask's worker-to-worker comms and in memory between threads.

- allreduce: recursive doubling (log2 p rounds of whole-buffer exchanges; non-power-of-two sizes
  fold the extra ranks into a partner first and send them the result at the end) for small
  buffers and for 2 ranks; ring reduce-scatter + allgather (2(p-1) rounds of 1/p of the buffer)
  for large buffers on 3 or more ranks, where link bandwidth matters more than round trips (the
  Dask communicator allows it only when the ranks span several hosts).
- reduce-scatter and allgather, for the sharded optimizer step (each rank sums and updates only
  its own part of the buffer, then the ranks swap the updated parts): direct exchanges, each
  rank sends every peer the peer's part and adds what it receives in rank order.
- broadcast: binomial tree from the root.

Bitwise identity: every rank ends with the same bits. In recursive doubling both partners compute
``mine + theirs``, and IEEE addition commutes, so ``a + b`` and ``b + a`` are the same bits; the
folded ranks and the ring's allgather receive copies of sums made once. Nothing reassociates.
A reduce-scatter sums each part once, on the part's owner, always in rank order; the allgather
hands out copies of it.
(Two different NaN payloads are the one exception: x86 keeps the first operand's.)

A buffer handed to ``send`` may be read until ``wait`` returns (Dask sends zero-copy, and so does
shared memory for a buffer the transport allocated), so every algorithm waits for a send before
it writes to the memory it sent; and a received array may be the sender's shared memory, so every
algorithm releases it once it has been read. :func:`allreduce_into` leaves its source as it was:
its first exchange adds straight from the source into the output, so a source in shared memory is
never copied (the ranks read each other's and release them before they wait for their own).

Buffers are processed in buckets of at most :data:`BUCKET_BYTES` (Dask splits larger frames and
merges them again with a copy). Tests shrink the module constants; they are read at call time.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from .base import CommError

BUCKET_BYTES = 64 * 2**20  # largest message: Dask's frame shard size (distributed.comm.shard)
RING_MIN_BYTES = 4 * 2**20  # ring allreduce from this many bytes per bucket ...
RING_MIN_SIZE = 3  # ... on this many ranks or more
PART_ALIGN = 16  # parts start on multiples of 16 elements (64 bytes of float32): whole SIMD lines


class Transport(Protocol):
    """Point-to-point messages between the ranks of one job, in rank numbers."""

    rank: int
    size: int

    def send(self, peer: int, tag: str, array: np.ndarray, lend: bool = False) -> Any:
        """Start sending ``array`` to ``peer`` under ``tag``; return a handle for :meth:`wait`.
        ``lend``: the peer may read ``array``'s own memory (where it is shared) until it releases
        it, which :meth:`wait` then waits for; only for arrays the caller will not write first."""

    def recv(self, peer: int, tag: str) -> np.ndarray:
        """Block until the array that ``peer`` sent under ``tag`` arrives (read-only use)."""

    def wait(self, handle: Any) -> None:
        """Block until the send is complete: its buffer may be written again."""

    def release(self, peer: int, tag: str) -> None:
        """The array received from ``peer`` under ``tag`` is no longer read (it may live in the
        sender's shared memory, which the sender can then reuse)."""


def allreduce(t: Transport, array: np.ndarray, tag: str, *, allow_ring: bool = True) -> None:
    """Sum the contiguous 1-D ``array`` over all ranks of ``t``, in place.

    ``allow_ring=False`` keeps recursive doubling for every size: right when all ranks share one
    machine, where "bandwidth" is CPU time spent copying, the same total for both algorithms, and
    the ring's extra rounds only add latency (measured: benchmarks/allreduce.py).
    """
    if t.size == 1 or array.size == 0:
        return
    for i, bucket in enumerate(_buckets(array)):
        btag = f"{tag}.b{i}"
        if allow_ring and t.size >= RING_MIN_SIZE and bucket.nbytes >= RING_MIN_BYTES:
            _ring_allreduce(t, bucket, btag)
        else:
            _doubling_allreduce(t, bucket, btag)


def allreduce_into(t: Transport, source: np.ndarray, out: np.ndarray, tag: str, *, allow_ring: bool = True) -> None:
    """``out`` = the sum over all ranks of ``source`` (contiguous 1-D, same size and dtype, not
    overlapping); ``source`` is left as it was, and may be written again when this returns."""
    if t.size == 1 or source.size == 0:
        out[...] = source
        return
    pof2 = 1 << (t.size.bit_length() - 1)
    for i, (src, bucket) in enumerate(zip(_buckets(source), _buckets(out))):
        btag = f"{tag}.b{i}"
        if allow_ring and t.size >= RING_MIN_SIZE and bucket.nbytes >= RING_MIN_BYTES:
            bucket[...] = src
            _ring_allreduce(t, bucket, btag)
        elif pof2 == t.size:  # no folded ranks: the first exchange reads the source itself
            _doubling_allreduce(t, bucket, btag, source=src)
        else:
            bucket[...] = src
            _doubling_allreduce(t, bucket, btag)


def part_of(n: int, rank: int, size: int) -> slice:
    """The contiguous part of an ``n``-element buffer that ``rank`` of ``size`` owns in a
    reduce-scatter: equal parts (the last may be shorter, or empty), aligned to PART_ALIGN."""
    per = -(-n // size)
    per = -(-per // PART_ALIGN) * PART_ALIGN
    start = min(n, rank * per)
    return slice(start, min(n, start + per))


def reduce_scatter_into(t: Transport, source: np.ndarray, out: np.ndarray, tag: str) -> slice:
    """``out[part]`` = the sum over all ranks of ``source[part]``, for this rank's ``part``
    (:func:`part_of`, returned); the rest of ``out`` is left as it was, and so is ``source``.

    Every rank lends each peer the peer's part of its source and adds the parts it receives into
    its own, in rank order (so the sum is the same whichever rank owns a part). Each rank moves
    and adds 1/size of the buffer from every peer: what the ring's reduce-scatter moves, in one
    round instead of size - 1. Where the source is shared memory, nothing is copied."""
    r, p = t.rank, t.size
    parts = [part_of(source.size, q, p) for q in range(p)]
    mine = parts[r]
    if p == 1:
        out[mine] = source[mine]
        return mine
    sending = {q: _buckets(source[parts[q]]) for q in range(p) if q != r}
    own, sums = _buckets(source[mine]), _buckets(out[mine])
    for i in range(max(len(b) for b in [own, *sending.values()])):
        ptag = f"{tag}.c{i}"
        handles = _send_bucket(t, sending, i, ptag)
        if i < len(sums):
            acc = sums[i]
            # In rank order, whoever owns the part. (No closures here: a frame of a failed step that
            # a traceback keeps would keep its closure's buffers, which live in shared memory.)
            np.add(_addend(t, own[i], 0, ptag, acc), _addend(t, own[i], 1, ptag, acc), out=acc)
            _done_with(t, 0, ptag)
            _done_with(t, 1, ptag)
            for q in range(2, p):
                np.add(acc, _addend(t, own[i], q, ptag, acc), out=acc)
                _done_with(t, q, ptag)
        for h in handles:
            t.wait(h)  # the peers have read this bucket of their parts of our source
    return mine


def allgather(t: Transport, array: np.ndarray, tag: str) -> None:
    """Every rank's part (:func:`part_of`) of ``array`` overwrites the other ranks' copies of that
    part, in place: afterwards ``array`` is bitwise identical on every rank. Each rank lends its
    own part to every peer (uncopied where ``array`` is shared memory)."""
    r, p = t.rank, t.size
    if p == 1:
        return
    parts = [part_of(array.size, q, p) for q in range(p)]
    own = _buckets(array[parts[r]])
    sending = {q: own for q in range(p) if q != r}
    receiving = {q: _buckets(array[parts[q]]) for q in range(p) if q != r}
    for i in range(max(len(b) for b in [own, *receiving.values()])):
        ptag = f"{tag}.c{i}"
        handles = _send_bucket(t, sending, i, ptag)
        for q, pieces in receiving.items():
            if i < len(pieces):
                _receive_into(t, pieces[i], q, ptag, copy=True)
        for h in handles:
            t.wait(h)  # the peers have copied this bucket of our part: we may write it again


def _send_bucket(t: Transport, sending: dict[int, list[np.ndarray]], i: int, tag: str) -> list:
    """Lend bucket ``i`` of each peer's pieces to that peer. One bucket at a time, waited for
    before the next: a peer on the same machine is sent copies of what is not shared memory
    through a few segments per peer (comm/dask.py), so sending every bucket at once could wait
    for a segment that the peer, itself still sending, would never free."""
    return [t.send(q, tag, pieces[i], lend=True) for q, pieces in sending.items() if i < len(pieces)]


def broadcast(t: Transport, array: np.ndarray, root: int, tag: str) -> None:
    """Overwrite the contiguous 1-D ``array`` with rank ``root``'s copy, in place (binomial tree)."""
    if t.size == 1 or array.size == 0:
        return
    p, vr = t.size, (t.rank - root) % t.size  # vr: rank relative to the root
    for i, bucket in enumerate(_buckets(array)):
        btag = f"{tag}.b{i}"
        mask = 1
        while mask < p:  # receive once, from the parent: vr with its lowest set bit cleared
            if vr & mask:
                parent = (vr - mask + root) % p
                _receive_into(t, bucket, parent, btag, copy=True)
                break
            mask <<= 1
        handles = []
        mask >>= 1
        while mask > 0:  # then forward to the children, all at once
            if vr + mask < p:
                handles.append(t.send((vr + mask + root) % p, btag, bucket))
            mask >>= 1
        for h in handles:
            t.wait(h)


# -- internals ------------------------------------------------------------------------------------


def _buckets(array: np.ndarray) -> list[np.ndarray]:
    per = max(1, BUCKET_BYTES // array.itemsize)
    return [array[i : i + per] for i in range(0, array.size, per)]


def _addend(t: Transport, own: np.ndarray, q: int, tag: str, like: np.ndarray) -> np.ndarray:
    """Rank ``q``'s part of a reduce-scatter bucket: this rank's own, or what ``q`` sent."""
    return own if q == t.rank else _checked(t, t.recv(q, tag), like, q, tag)


def _done_with(t: Transport, q: int, tag: str) -> None:
    """Tell rank ``q`` that what it sent for ``tag`` has been added (its slot is free again)."""
    if q != t.rank:
        t.release(q, tag)


def _checked(t: Transport, got: Any, like: np.ndarray, peer: int, tag: str) -> np.ndarray:
    """``got`` if it matches ``like`` in size and dtype; otherwise the ranks are out of step."""
    if isinstance(got, np.ndarray) and got.shape == like.shape and got.dtype == like.dtype:
        return got
    what = f"{got.size} {got.dtype}" if isinstance(got, np.ndarray) else type(got).__name__
    raise CommError(
        f"Rank {t.rank} expected {like.size} {like.dtype} values from rank {peer} for {tag!r} but received "
        f"{what}: every rank must call the same collectives, in the same order, with buffers of the same "
        "size and dtype."
    )


def _receive_into(t: Transport, out: np.ndarray, peer: int, tag: str, *, copy: bool) -> None:
    """Receive from ``peer`` and copy it over ``out`` (or add it into ``out``)."""
    got = _checked(t, t.recv(peer, tag), out, peer, tag)
    if copy:
        out[...] = got
    else:
        np.add(out, got, out=out)
    t.release(peer, tag)


def _doubling_allreduce(t: Transport, buf: np.ndarray, tag: str, source: np.ndarray | None = None) -> None:
    """In place in ``buf``; or, with ``source`` (power-of-two sizes only), ``buf`` = the sum of ``source``."""
    r, p = t.rank, t.size
    pof2 = 1 << (p.bit_length() - 1)
    extra = p - pof2  # ranks 0, 2, .., 2*extra-2 hand their data to the next odd rank and sit out
    assert source is None or extra == 0, "an out-of-place allreduce needs a power-of-two number of ranks"
    if r < 2 * extra:
        if r % 2 == 0:
            t.wait(t.send(r + 1, f"{tag}.fold", buf))
            _receive_into(t, buf, r + 1, f"{tag}.unfold", copy=True)
            return
        _receive_into(t, buf, r - 1, f"{tag}.fold", copy=False)
        vr = r // 2
    else:
        vr = r - extra
    mask = 1
    while mask < pof2:
        vpeer = vr ^ mask
        peer = 2 * vpeer + 1 if vpeer < extra else vpeer + extra
        rtag = f"{tag}.d{mask}"
        if source is not None:  # out of place: the peer may read our source while we add
            h = t.send(peer, rtag, source, lend=True)
            got = _checked(t, t.recv(peer, rtag), buf, peer, rtag)
            np.add(source, got, out=buf)
            t.release(peer, rtag)
            t.wait(h)  # the peer has read our source (and we released theirs first: no deadlock)
            source = None
        else:
            h = t.send(peer, rtag, buf)
            got = _checked(t, t.recv(peer, rtag), buf, peer, rtag)
            t.wait(h)  # our buffer is on the wire until then
            np.add(buf, got, out=buf)
            t.release(peer, rtag)
        mask <<= 1
    if r < 2 * extra:
        t.wait(t.send(r - 1, f"{tag}.unfold", buf))


def _ring_allreduce(t: Transport, buf: np.ndarray, tag: str) -> None:
    r, p = t.rank, t.size
    bounds = [k * buf.size // p for k in range(p + 1)]
    chunks = [buf[bounds[k] : bounds[k + 1]] for k in range(p)]
    right, left = (r + 1) % p, (r - 1) % p
    # reduce-scatter: after step s, chunk (r-s-1) holds the sum over ranks r-s-1 .. r; at the end
    # this rank owns the complete chunk (r+1) % p
    for s in range(p - 1):
        h = t.send(right, f"{tag}.rs{s}", chunks[(r - s) % p])
        _receive_into(t, chunks[(r - s - 1) % p], left, f"{tag}.rs{s}", copy=False)
        t.wait(h)
    # allgather: pass the complete chunks around the ring, copying them in
    for s in range(p - 1):
        h = t.send(right, f"{tag}.ag{s}", chunks[(r + 1 - s) % p])
        _receive_into(t, chunks[(r - s) % p], left, f"{tag}.ag{s}", copy=True)
        t.wait(h)
