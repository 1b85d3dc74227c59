"""Collectives: the algorithms in memory (ranks as threads), the Dask transport on real clusters
(worker processes, the shared fixtures of conftest.py), the factory and the GPU wrappers' CPU parts."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import threading
import time
import uuid

import numpy as np
import pytest

pytest.importorskip("distributed")  # a base dependency; without it there is nothing to test

from dtrain.comm import Aborted, CommError, LocalCommunicator, Mailbox, algorithms, make_communicator
from dtrain.comm import board as board_mod
from dtrain.comm.dask import (
    PLUGIN_NAME,
    DaskCommunicator,
    DtrainWorkerPlugin,
    abort_on_worker,
    deliver_on_worker,
    ensure_plugin,
    get_plugin,
)
from dtrain.comm.memory import MemoryGroup
from dtrain.comm.nccl import HostStagedCommunicator, decode_unique_id, encode_unique_id


def run_ranks(size: int, body, timeout: float = 5.0) -> list:
    """Run ``body(comm)`` for every rank of a MemoryGroup, one thread each; return the results in rank order."""
    group = MemoryGroup(size, timeout=timeout)
    results: list = [None] * size
    errors: list = []

    def target(rank: int) -> None:
        try:
            results[rank] = body(group.communicator(rank))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    if errors:
        raise errors[0]
    return results


def rank_data(rank: int, n: int, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(1000 + rank).standard_normal(n).astype(dtype)


def assert_allreduced(outputs: list[np.ndarray], inputs: list[np.ndarray]) -> None:
    first = outputs[0].tobytes()
    assert all(out.tobytes() == first for out in outputs), "ranks disagree bitwise"
    exact = np.sum(np.stack(inputs).astype(np.float64), axis=0)
    rtol = 1e-5 if outputs[0].dtype == np.float32 else 1e-12
    np.testing.assert_allclose(outputs[0], exact, rtol=rtol, atol=rtol * len(inputs))


# -- algorithms, in memory ------------------------------------------------------------------------


@pytest.fixture
def small_buckets(monkeypatch):
    """Buckets of 256 bytes, so that the lengths below span several buckets."""
    monkeypatch.setattr(algorithms, "BUCKET_BYTES", 256)


@pytest.mark.parametrize("algorithm", ["doubling", "ring"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_allreduce_sums_bitwise_identically(size, dtype, algorithm, small_buckets, monkeypatch):
    monkeypatch.setattr(algorithms, "RING_MIN_BYTES", 0 if algorithm == "ring" else 2**62)
    monkeypatch.setattr(algorithms, "RING_MIN_SIZE", 2 if algorithm == "ring" else 3)
    lengths = [0, 1, 7, 1000, 4099]  # 1000 and 4099 span several 256-byte buckets

    def body(comm):
        out = []
        for n in lengths:
            buf = rank_data(comm.rank, n, dtype)
            comm.allreduce(buf)
            out.append(buf)
        return out

    results = run_ranks(size, body)
    for i, n in enumerate(lengths):
        assert_allreduced([r[i] for r in results], [rank_data(rank, n, dtype) for rank in range(size)])


@pytest.mark.parametrize("algorithm", ["doubling", "ring"])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_allreduce_into_leaves_the_source_and_gives_the_same_bits_as_in_place(
    size, algorithm, small_buckets, monkeypatch
):
    monkeypatch.setattr(algorithms, "RING_MIN_BYTES", 0 if algorithm == "ring" else 2**62)
    monkeypatch.setattr(algorithms, "RING_MIN_SIZE", 2 if algorithm == "ring" else 3)
    lengths = [0, 1, 7, 1000, 4099]

    def body(comm):
        results = []
        for n in lengths:
            source, out, in_place = rank_data(comm.rank, n), np.full(n, np.nan, np.float32), rank_data(comm.rank, n)
            comm.allreduce_into(source, out)
            comm.allreduce(in_place)
            results.append((source, out, in_place))
        return results

    results = run_ranks(size, body)
    for i, n in enumerate(lengths):
        for rank, (source, out, in_place) in enumerate(r[i] for r in results):
            np.testing.assert_array_equal(source, rank_data(rank, n))
            assert out.tobytes() == in_place.tobytes()
        assert_allreduced([r[i][1] for r in results], [rank_data(rank, n) for rank in range(size)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_reduce_scatter_then_allgather_sums_every_part_once_and_shares_it(size, dtype, small_buckets):
    """The sharded step's collectives: each rank gets the sum of its own part (the parts cover
    the buffer, in rank order, aligned); the rest of its output and its source stay as they
    were; the allgather then gives every rank every part, bitwise alike, equal to an allreduce."""
    lengths = [0, 1, 7, 1000, 4099]  # 1000 and 4099 span several 256-byte buckets

    def body(comm):
        results = []
        for n in lengths:
            source, out = rank_data(comm.rank, n, dtype), np.full(n, np.nan, dtype)
            part = comm.reduce_scatter_into(source, out)
            outside = np.ones(n, bool)
            outside[part] = False
            summed = out.copy()
            gathered = np.full(n, np.nan, dtype)
            gathered[part] = out[part]
            comm.allgather(gathered)
            reference = rank_data(comm.rank, n, dtype)
            comm.allreduce(reference)
            results.append((part, source, summed, outside, gathered, reference))
        return results

    results = run_ranks(size, body)
    for i, n in enumerate(lengths):
        parts = [r[i][0] for r in results]
        assert parts == [algorithms.part_of(n, rank, size) for rank in range(size)]
        assert parts[0].start == 0 and parts[-1].stop == n
        assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
        assert all(p.start % algorithms.PART_ALIGN == 0 or p.start == n for p in parts)
        inputs = [rank_data(rank, n, dtype) for rank in range(size)]
        for rank, (_part, source, summed, outside, gathered, reference) in enumerate(r[i] for r in results):
            np.testing.assert_array_equal(source, inputs[rank])
            assert np.isnan(summed[outside]).all()
            if n:
                assert_allreduced([gathered], inputs)
            assert gathered.tobytes() == results[0][i][4].tobytes()
            if size <= 2:  # one addition: the same bits as the allreduce
                assert gathered.tobytes() == reference.tobytes()


def test_local_communicator_reduce_scatter_is_the_whole_buffer():
    comm = LocalCommunicator()
    source, out = np.arange(5.0), np.zeros(5)
    assert comm.reduce_scatter_into(source, out) == slice(0, 5)
    np.testing.assert_array_equal(out, source)
    comm.allgather(out)
    np.testing.assert_array_equal(out, source)


def test_allreduce_into_refuses_buffers_that_do_not_match():
    def body(comm):
        for source, out in [(np.ones(4, np.float32), np.ones(5, np.float32)), (np.ones(4), np.ones(4, np.float32))]:
            with pytest.raises(ValueError, match="two separate buffers of one size and dtype"):
                comm.allreduce_into(source, out)
        both = np.ones(8, np.float32)
        with pytest.raises(ValueError, match="overlap"):
            comm.allreduce_into(both[:4], both[2:6])

    run_ranks(2, body)


@pytest.mark.parametrize("size", [2, 3, 5])
def test_allreduce_accepts_any_contiguous_shape_and_integers(size):
    def body(comm):
        a = np.arange(12, dtype=np.int64).reshape(3, 4) * (comm.rank + 1)
        comm.allreduce(a)
        return a

    for a in run_ranks(size, body):
        np.testing.assert_array_equal(a, np.arange(12).reshape(3, 4) * sum(range(1, size + 1)))


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_broadcast_from_every_root(size, small_buckets):
    def body(comm):
        out = []
        for root in range(size):
            buf = rank_data(comm.rank, 300, np.float64)
            comm.broadcast(buf, root=root)
            out.append(buf)
        comm.barrier()
        return out

    results = run_ranks(size, body)
    for root in range(size):
        for r in results:
            assert r[root].tobytes() == rank_data(root, 300, np.float64).tobytes()


def test_a_peer_that_never_answers_is_a_comm_error_within_the_timeout():
    group = MemoryGroup(2, timeout=0.5)
    comm = group.communicator(0)
    start = time.monotonic()
    with pytest.raises(CommError, match=r"0\.5 s waiting for rank 1") as info:
        comm.allreduce(np.ones(10, np.float32))
    assert 0.45 < time.monotonic() - start < 2.0
    assert not isinstance(info.value, Aborted)


def test_abort_wakes_a_waiting_rank_at_once():
    group = MemoryGroup(3, timeout=30)
    waiting, failing = group.communicator(0), group.communicator(2)
    caught: list = []

    def wait_in_allreduce():
        try:
            waiting.allreduce(np.ones(10))
        except BaseException as exc:
            caught.append((exc, time.monotonic()))

    thread = threading.Thread(target=wait_in_allreduce)
    thread.start()
    time.sleep(0.2)
    aborted_at = time.monotonic()
    failing.abort("out of memory")
    thread.join(5)
    exc, when = caught[0]
    assert isinstance(exc, Aborted) and "rank 2 failed: out of memory" in exc.reason
    assert when - aborted_at < 0.5  # the timeout was 30 s
    with pytest.raises(Aborted):
        waiting.check_abort()


def test_ranks_out_of_step_are_an_error():
    def body(comm):
        comm.allreduce(np.ones(10 + comm.rank, np.float32))

    with pytest.raises(CommError, match="same size"):
        run_ranks(2, body)


def test_buffers_are_checked():
    comm = MemoryGroup(1).communicator(0)
    with pytest.raises(TypeError, match="NumPy arrays, received list"):
        comm.allreduce([1.0, 2.0])
    with pytest.raises(ValueError, match="not contiguous"):
        comm.allreduce(np.ones((4, 4))[:, 0])
    read_only = np.ones(3)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        comm.allreduce(read_only)
    with pytest.raises(ValueError, match=r"root=1 is not a rank"):
        comm.broadcast(np.ones(3), root=1)


def test_mailbox_keeps_early_items_and_drops_late_ones():
    box = Mailbox()
    box.put(1, "b", "second")
    box.put(1, "a", "first")
    assert box.take(1, "a", 0.1) == "first" and box.take(1, "b", 0.1) == "second"
    box.close()
    box.put(1, "c", "late")
    with pytest.raises(CommError, match="closed"):
        box.take(1, "c", 0.1)


def test_local_communicator_and_its_abort_event():
    event = threading.Event()
    comm = LocalCommunicator(event)
    a = np.arange(4.0)
    comm.allreduce(a)
    comm.broadcast(a)
    comm.barrier()
    comm.check_abort()
    np.testing.assert_array_equal(a, np.arange(4.0))
    event.set()
    with pytest.raises(Aborted):
        comm.check_abort()
    comm2 = LocalCommunicator()
    comm2.abort("disk full")
    with pytest.raises(Aborted, match="disk full"):
        comm2.check_abort()


def test_errors_pickle_with_their_reason():
    exc = pickle.loads(pickle.dumps(Aborted("rank 1 failed: boom")))
    assert isinstance(exc, Aborted) and exc.reason == "rank 1 failed: boom" and "boom" in str(exc)


def test_make_communicator_checks_its_arguments():
    with pytest.raises(ValueError, match="'local', 'dask', 'nccl', 'host-staged'"):
        make_communicator("mpi", job_id="j", rank=0, size=1)
    with pytest.raises(ValueError, match="exactly one rank"):
        make_communicator("local", job_id="j", rank=0, size=2)
    with pytest.raises(ValueError, match="rank=2, size=2"):
        make_communicator("dask", job_id="j", rank=2, size=2)
    assert isinstance(make_communicator("local", job_id="j", rank=0, size=1), LocalCommunicator)


# -- the GPU wrappers' CPU parts ------------------------------------------------------------------


class FakeDeviceArray:
    """Stands in for a CuPy array on a CPU machine: ``get(out=)`` and ``set()`` are the copies."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.flags, self.dtype, self.size = array.flags, array.dtype, array.size

    def reshape(self, *shape):
        return FakeDeviceArray(self.array.reshape(*shape))

    def get(self, out):
        out[...] = self.array

    def set(self, host):
        self.array[...] = host


def test_host_staged_sums_device_arrays_through_one_reused_host_buffer():
    def body(comm):
        staged = HostStagedCommunicator(comm)
        device = FakeDeviceArray(rank_data(comm.rank, 1000).reshape(10, 100))
        staged.allreduce(device)
        buffer = staged._host
        again = FakeDeviceArray(rank_data(comm.rank, 500, np.float64))
        staged.allreduce(again)  # 4000 bytes fit in the 4000 already there
        host = rank_data(comm.rank, 5)
        staged.allreduce(host)  # NumPy arrays go straight through
        staged.broadcast(device, root=2)
        assert staged._host is buffer
        return again.array, host, device.array

    results = run_ranks(3, body)
    assert_allreduced([r[0] for r in results], [rank_data(r, 500, np.float64) for r in range(3)])
    assert_allreduced([r[1] for r in results], [rank_data(r, 5) for r in range(3)])
    assert all(r[2].tobytes() == results[2][2].tobytes() for r in results)


def test_nccl_unique_id_travels_as_bytes():
    uid = tuple((i * 37) % 256 - 128 for i in range(128))  # signed C chars, as CuPy returns them
    data = encode_unique_id(uid)
    assert isinstance(data, bytes) and len(data) == 128
    assert decode_unique_id(data) == uid
    assert decode_unique_id(list(uid)) == uid
    with pytest.raises(ValueError, match="128 bytes"):
        decode_unique_id(b"short")


@pytest.mark.gpu
def test_nccl_single_rank_allreduce_and_host_arrays():
    import cupy

    from dtrain.comm.nccl import NcclCommunicator, make_unique_id

    comm = NcclCommunicator("gpu-test", 0, 1, make_unique_id(), timeout=10)
    try:
        device = cupy.arange(10, dtype=cupy.float32)
        comm.allreduce(device)
        host = np.arange(3.0)
        comm.allreduce(host)
        comm.broadcast(device)
        comm.barrier()
        np.testing.assert_array_equal(device.get(), np.arange(10, dtype=np.float32))
        np.testing.assert_array_equal(host, np.arange(3.0))
    finally:
        comm.close()


@pytest.mark.gpu
def test_nccl_init_without_peers_times_out():
    from dtrain.comm.nccl import NcclCommunicator, make_unique_id

    start = time.monotonic()
    with pytest.raises(CommError, match="did not complete"):
        NcclCommunicator("gpu-test-2", 0, 2, make_unique_id(), timeout=1.0)
    assert time.monotonic() - start < 3


# -- the Dask transport on real clusters ----------------------------------------------------------


@contextlib.contextmanager
def bucket_bytes(nbytes):
    """Buckets of ``nbytes`` in this worker process only, restored afterwards."""
    saved = algorithms.BUCKET_BYTES
    algorithms.BUCKET_BYTES = nbytes or saved
    try:
        yield
    finally:
        algorithms.BUCKET_BYTES = saved


def plugged(client):
    """The client, with dtrain's worker plugin registered (registering again is safe)."""
    client.register_plugin(DtrainWorkerPlugin(), name=PLUGIN_NAME)
    ensure_plugin(client)
    return client


def launch(client, fn, *args, ranks=None, job_id=None):
    """One pinned task per worker: ``fn(job_id, rank, peers, *args)``; returns (job_id, peers, futures)."""
    peers = sorted(client.scheduler_info()["workers"])
    job_id = job_id or f"test-{uuid.uuid4().hex}"
    futures = [
        client.submit(
            fn,
            job_id,
            rank,
            peers,
            *args,
            workers=[peers[rank]],
            allow_other_workers=False,
            pure=False,
            key=f"{job_id}-rank{rank}",
        )
        for rank in (range(len(peers)) if ranks is None else ranks)
    ]
    return job_id, peers, futures


def _rank_collectives(job_id, rank, peers, n, bucket_nbytes, ring):
    with bucket_bytes(bucket_nbytes):
        with DaskCommunicator(job_id, rank, peers, timeout=20, allow_ring=ring) as comm:
            assert comm.allow_ring is bool(ring)  # automatic: no ring when all peers are on one host
            grads = rank_data(rank, n)
            comm.allreduce(grads)
            weights = np.full(5, float(rank))
            comm.broadcast(weights, root=len(peers) - 1)
            comm.barrier()
            metric = np.array([rank + 0.5])
            comm.allreduce(metric)
            return hashlib.sha1(grads.tobytes()).hexdigest(), grads, weights, metric


@pytest.mark.cluster
@pytest.mark.parametrize(
    "workers, n, bucket_nbytes, ring",
    [
        (2, 1001, None, None),
        (2, 5000, 4096, None),
        (3, 1001, None, None),
        (3, 1_200_000, None, True),
        (3, 5000, 4096, None),
    ],
    ids=["2-doubling", "2-buckets", "3-fold", "3-ring", "3-buckets"],
)
def test_dask_collectives_are_correct_and_bitwise_identical(workers, n, bucket_nbytes, ring, request):
    client = plugged(request.getfixturevalue(f"client{workers}"))
    _, peers, futures = launch(client, _rank_collectives, n, bucket_nbytes, ring)
    _wait_done(futures, 30)
    results = client.gather(futures)
    assert len({digest for digest, *_ in results}) == 1
    assert_allreduced([grads for _, grads, _, _ in results], [rank_data(r, n) for r in range(workers)])
    for _, _, weights, metric in results:
        np.testing.assert_array_equal(weights, np.full(5, workers - 1.0))
        assert metric[0] == sum(r + 0.5 for r in range(workers))


def _rank_factory(job_id, rank, peers, kind):
    comm = make_communicator(kind, job_id=job_id, rank=rank, size=len(peers), peers=peers, timeout=10)
    try:
        data = np.full(3, rank + 1.0)
        comm.allreduce(data)
        comm.barrier()
        return comm.name, data.tolist()
    finally:
        comm.close()


def _rank_local_until_aborted(job_id):
    comm = make_communicator("local", job_id=job_id, rank=0, size=1)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # a training loop: check_abort every step
            try:
                comm.check_abort()
            except Aborted as exc:
                return exc.reason
            time.sleep(0.01)
        return "not aborted"
    finally:
        get_plugin().close_job(job_id)  # the job's abort flag lives in the plugin


@pytest.mark.cluster
def test_make_communicator_on_workers(client2):
    client = plugged(client2)
    for kind in ("dask", "host-staged"):
        _, _, futures = launch(client, _rank_factory, kind)
        assert client.gather(futures) == [(kind, [3.0, 3.0, 3.0])] * 2
    # one rank: no peers to talk to, but the driver can still stop it
    job_id = f"test-{uuid.uuid4().hex}"
    worker = sorted(client.scheduler_info()["workers"])[0]
    future = client.submit(_rank_local_until_aborted, job_id, workers=[worker], pure=False)
    time.sleep(0.3)
    client.run(abort_on_worker, job_id, "stopped", workers=[worker])
    assert future.result(timeout=5) == "stopped"


def _rank_sends_large(job_id, rank, peers):
    with DaskCommunicator(job_id, rank, peers, timeout=20) as comm:
        transport = comm._transport
        if rank == 0:
            transport.wait(transport.send(1, "big", np.ones(2**18, np.float32)))
            return None
        got = transport.recv(0, "big")
        return got.flags.aligned and got.ctypes.data % 16 == 0


@pytest.mark.cluster
def test_large_arrays_arrive_aligned(client2):
    """Misaligned arrays make NumPy's additions 2-3x slower; the Dask transport sends a lead
    buffer so that Dask gives large arrays an allocation of their own (see _send_array)."""
    client = plugged(client2)
    _, _, futures = launch(client, _rank_sends_large)
    assert client.gather(futures) == [None, True]


def _rank_shared_memory(job_id, rank, peers, off_ranks, bucket_nbytes):
    # several messages per collective: the slots are reused under pressure
    with bucket_bytes(bucket_nbytes):
        with DaskCommunicator(job_id, rank, peers, timeout=20, shared_memory=rank not in off_ranks) as comm:
            digests = []
            for step, n in enumerate([300_000, 20_000, 300_000, 2_000_000, 2_000_000, 300_000]):
                grads = rank_data(rank + 10 * step, n)
                comm.allreduce(grads)
                digests.append(hashlib.sha1(grads.tobytes()).hexdigest())
                weights = np.full(n, float(rank), np.float32)
                comm.broadcast(weights, root=step % len(peers))
                assert (weights == step % len(peers)).all()
            transport = comm._transport
            slots = {peer: len(slots) for peer, slots in transport._slots.items()}
            return digests, grads, sorted(transport.shared_peers), slots


@pytest.mark.cluster
@pytest.mark.parametrize("off_ranks", [(), (1,), (0, 1, 2)], ids=["all-shared", "rank1-tcp", "all-tcp"])
def test_large_arrays_between_workers_of_one_machine_go_through_shared_memory(off_ranks, client3):
    """Same sums, bitwise identical, whichever way the bytes travel; a rank that declines shared
    memory is reached over TCP in both directions while the others still share; slots are reused."""
    from dtrain.comm.dask import SHARED_SLOTS_PER_PEER

    client = plugged(client3)
    _, _, futures = launch(client, _rank_shared_memory, off_ranks, 2**20)
    _wait_done(futures, 60)
    results = client.gather(futures)
    for step_digests in zip(*(digests for digests, *_ in results)):
        assert len(set(step_digests)) == 1
    assert_allreduced([grads for _, grads, _, _ in results], [rank_data(r + 50, 300_000) for r in range(3)])
    for rank, (_, _, shared_peers, slots) in enumerate(results):
        expected = [] if rank in off_ranks else [p for p in range(3) if p != rank and p not in off_ranks]
        assert shared_peers == expected
        assert sorted(slots) == expected and all(1 <= count <= SHARED_SLOTS_PER_PEER for count in slots.values())


def _rank_lends_its_gradients(job_id, rank, peers, n, steps):
    with DaskCommunicator(job_id, rank, peers, timeout=20) as comm:
        assert comm.shared_array(n, np.float32) is None  # before the first collective: nothing agreed yet
        comm.barrier()
        grads = comm.shared_array(n, np.float32)
        sums, digests = np.empty(n, np.float32), []
        for step in range(steps):
            grads[...] = rank_data(rank + 10 * step, n)  # the backward pass writes here, then:
            comm.allreduce_into(grads, sums)
            np.testing.assert_array_equal(grads, rank_data(rank + 10 * step, n))  # left as it was
            digests.append(hashlib.sha1(sums.tobytes()).hexdigest())
        comm.allreduce(grads)  # in place, the same memory: copied, never lent (no deadlock)
        transport = comm._transport
        lent_uses = [slot.use for slot in transport._lendable]
        copied = {peer: [slot.use for slot in slots] for peer, slots in transport._slots.items()}
        return digests, sums, grads.copy(), lent_uses, copied


@pytest.mark.cluster
@pytest.mark.parametrize("workers", [2, 3])
def test_gradients_in_shared_memory_are_lent_to_the_peers_not_copied(workers, request):
    """On 2 ranks (a power of two) the first exchange reads the peer's gradient buffer itself; on
    3 the folding ranks need a copy. Either way: the same sums on every rank, the source intact."""
    client = plugged(request.getfixturevalue(f"client{workers}"))
    n, steps = 300_000, 4
    _, _, futures = launch(client, _rank_lends_its_gradients, n, steps)
    _wait_done(futures, 60)
    results = client.gather(futures)
    for step_digests in zip(*(digests for digests, *_ in results)):
        assert len(set(step_digests)) == 1
    assert_allreduced([sums for _, sums, *_ in results], [rank_data(r + 10 * (steps - 1), n) for r in range(workers)])
    assert_allreduced(
        [grads for _, _, grads, *_ in results], [rank_data(r + 10 * (steps - 1), n) for r in range(workers)]
    )
    for _, _, _, lent_uses, copied in results:
        if workers == 2:
            assert lent_uses == [steps]  # every step lent, uncopied; only the in-place allreduce copied
            assert sum(sum(uses) for uses in copied.values()) == 1
        else:
            assert lent_uses == [0]


def _rank_shards_a_step(job_id, rank, peers, n, steps):
    """A sharded step over shared memory: reduce-scatter of the gradients, each rank updates its
    part of the weights, allgather of the weights."""
    with DaskCommunicator(job_id, rank, peers, timeout=20) as comm:
        comm.barrier()
        grads, weights = comm.shared_array(n, np.float32), comm.shared_array(n, np.float32)
        sums = np.empty(n, np.float32)
        weights[...] = 1.0
        for step in range(steps):
            grads[...] = rank_data(rank + 10 * step, n)
            part = comm.reduce_scatter_into(grads, sums)
            np.testing.assert_array_equal(grads, rank_data(rank + 10 * step, n))  # left as it was
            weights[part] -= sums[part]
            comm.allgather(weights)
        transport = comm._transport
        lent_uses = [slot.use for slot in transport._lendable]
        copied = sum(slot.use for slots in transport._slots.values() for slot in slots)
        return weights.copy(), lent_uses, copied


@pytest.mark.cluster
@pytest.mark.parametrize("workers", [2, 3])
def test_a_sharded_step_lends_gradients_and_weights_and_copies_nothing(workers, request):
    client = plugged(request.getfixturevalue(f"client{workers}"))
    n, steps = 300_001, 3
    _, _, futures = launch(client, _rank_shards_a_step, n, steps)
    _wait_done(futures, 60)
    results = client.gather(futures)
    assert len({weights.tobytes() for weights, *_ in results}) == 1
    expected = np.ones(n)
    for step in range(steps):
        expected -= np.sum([rank_data(r + 10 * step, n).astype(np.float64) for r in range(workers)], axis=0)
    np.testing.assert_allclose(results[0][0], expected, rtol=1e-5, atol=1e-4 * workers * steps)
    for _, lent_uses, copied in results:
        # every step lends (workers - 1) parts of the gradients and as many of the weights
        assert lent_uses == [(workers - 1) * steps] * 2
        assert copied == 0


def _sharded_sum(comm, rank, n):
    """Reduce-scatter of private buffers, then allgather of the parts: every rank's result."""
    source, out = rank_data(rank, n), np.zeros(n, np.float32)
    part = comm.reduce_scatter_into(source, out)
    gathered = np.zeros(n, np.float32)
    gathered[part] = out[part]
    comm.allgather(gathered)
    return gathered


def _rank_shards_over_tcp(job_id, rank, peers, n):
    with bucket_bytes(2**16), DaskCommunicator(job_id, rank, peers, timeout=20, shared_memory=False) as comm:
        comm.barrier()  # several messages per part
        assert comm.shared_array(n, np.float32) is None and not comm._transport.shared_peers
        return _sharded_sum(comm, rank, n)


@pytest.mark.cluster
def test_sharded_collectives_over_tcp(client3):
    """Workers on different machines (here: shared memory turned off) shard the step over Dask's comms."""
    client = plugged(client3)
    n = 100_003
    _, _, futures = launch(client, _rank_shards_over_tcp, n)
    _wait_done(futures, 30)
    results = client.gather(futures)
    assert len({w.tobytes() for w in results}) == 1
    assert_allreduced(results, [rank_data(r, n) for r in range(3)])


def _rank_shards_private_buffers_in_many_buckets(job_id, rank, peers, n):
    # each part spans ~6 buckets of 64 KiB; private memory is sent as copies, as the optimizer
    # state is when it is gathered for a checkpoint
    with bucket_bytes(2**16), DaskCommunicator(job_id, rank, peers, timeout=10) as comm:
        return _sharded_sum(comm, rank, n), bool(comm._transport.shared_peers)


@pytest.mark.cluster
def test_sharded_collectives_of_private_buffers_larger_than_the_peers_segments(client2):
    """Copies to a peer on the same machine go through at most 4 segments per peer: a part of more
    buckets than that is sent one bucket at a time, or both ranks would wait for a free segment."""
    client = plugged(client2)
    n = 2 * 6 * 2**14
    _, _, futures = launch(client, _rank_shards_private_buffers_in_many_buckets, n)
    _wait_done(futures, 30)
    results = client.gather(futures)
    assert all(shared for _, shared in results)
    assert_allreduced([state for state, _ in results], [rank_data(r, n) for r in range(2)])


def _rank_root_leaves_early(job_id, rank, peers):
    with DaskCommunicator(job_id, rank, peers, timeout=20) as comm:
        comm.barrier()  # agrees on shared memory
        if rank != 0:
            time.sleep(0.5)  # the root has sent, returned and is closing before this rank looks
        weights = np.full(1_000_000, float(rank), np.float32)
        comm.broadcast(weights, root=0)
        shared = bool(comm._transport.shared_peers)
    return shared, float(weights.min()), float(weights.max())


@pytest.mark.cluster
def test_a_rank_that_finishes_first_keeps_its_shared_memory_until_the_peers_have_read_it(client3):
    client = plugged(client3)
    _, _, futures = launch(client, _rank_root_leaves_early)
    _wait_done(futures, 30)
    assert client.gather(futures) == [(True, 0.0, 0.0)] * 3


def _rank_arrives_after_the_root_closed(job_id, rank, peers):
    with DaskCommunicator(job_id, rank, peers, timeout=20) as comm:
        weights = np.full(1_000_000, float(rank), np.float32)
        comm.broadcast(weights, root=0)  # the root's slot is made and mapped
        comm.barrier()
        if rank == 1:
            time.sleep(2.0)  # past the root's 1 s grace: it has closed its pipe when this rank reads
        weights[...] = rank
        comm.broadcast(weights, root=0)
        return float(weights.min()), float(weights.max())


@pytest.mark.cluster
def test_a_free_notice_to_a_peer_that_has_closed_is_dropped_not_an_error(client2):
    """The root of a last broadcast returns and closes; the late rank still reads the data (its
    mapping holds it) and its "free" notice, which nobody will read, is no error."""
    client = plugged(client2)
    _, _, futures = launch(client, _rank_arrives_after_the_root_closed)
    _wait_done(futures, 30)
    assert client.gather(futures) == [(0.0, 0.0), (0.0, 0.0)]


def test_shared_segments_are_checked_before_they_are_read():
    from dtrain.comm import shm

    if not shm.available():
        pytest.skip("shared memory between processes needs Linux memfd and /proc")
    segment = shm.Segment(shm.slot_capacity(4000))
    peers = shm.PeerSegments()
    try:
        data = np.arange(1000, dtype=np.float32)
        segment.write(data)
        ref = segment.ref(data.dtype, data.size, 0, 1)
        got = peers.array(ref)
        np.testing.assert_array_equal(got, data)
        assert not got.flags.writeable and got.ctypes.data % 64 == 0
        with pytest.raises(OSError, match="token mismatch"):
            shm.PeerSegments().array(shm.SharedRef(**{**ref.to_msg(), "token": "00" * shm.TOKEN_BYTES}))
        with pytest.raises(OSError, match="bytes, expected"):
            shm.PeerSegments().array(shm.SharedRef(**{**ref.to_msg(), "size": ref.size + 1}))
        with pytest.raises(OSError):
            shm.PeerSegments().array(shm.SharedRef(**{**ref.to_msg(), "fd": 10_000}))
        assert shm.SharedRef.from_msg(ref.to_msg()) == ref
        # an array inside a segment is found where it is, and read there by the peer
        inner = segment.data[64 : 64 + 400].view(np.float32)
        inner[...] = np.arange(100)
        assert segment.offset_of(inner) == 64 and segment.offset_of(data) is None
        np.testing.assert_array_equal(peers.array(segment.ref(inner.dtype, inner.size, -1, 1, offset=64)), inner)
        with pytest.raises(OSError, match="does not fit"):
            peers.array(segment.ref(inner.dtype, inner.size, -1, 1, offset=segment.capacity - 8))
    finally:
        peers.close()
        segment.close()


def test_pipe_frames_carry_descriptors_small_arrays_and_notices_in_order():
    """Frames split anywhere across reads arrive whole, in order; a peer's exit ends its pipe."""
    from dtrain.comm import pipes, shm

    if not shm.available():
        pytest.skip("pipes between processes need Linux and /proc")
    box = Mailbox()
    inbound = pipes.Inbound(box, [0, 1], name="test-pipes")
    try:
        out = pipes.Outbound(os.getpid(), inbound.write_end(1), "rank 1")
        ref = shm.SharedRef(pid=1, fd=2, token="ab" * 16, size=64, dtype="<f4", count=0, slot=3, use=4)
        small = np.arange(7, dtype=np.float64).reshape(7, 1)
        frames = [("a", ref), ("b", small), ("c", None)]
        # the reader's parser, fed one byte at a time
        data = b"".join(pipes.encode(tag, value) for tag, value in frames)
        buffer = bytearray()
        for i in range(len(data)):
            inbound._deliver(1, buffer, data[i : i + 1])
        assert box.poll(1, "c") and box.take(1, "a", 1) == ref
        got = box.take(1, "b", 1)
        assert got.flags.writeable and got.dtype == np.float64 and got.shape == (7, 1)
        np.testing.assert_array_equal(got, small)
        # and through the pipe, read by whoever takes from the mailbox
        inbound.keep_only({1})
        for tag, value in frames:
            out.send(tag, value, timeout=1, abort=box)
        assert box.take(1, "a", 2) == ref and box.take(1, "c", 2) is None
        assert not inbound.ended_check(1)()
        out.close()  # the only write end left: the next read sees the end
        deadline = time.monotonic() + 2
        while 1 not in inbound.ended and time.monotonic() < deadline:
            box.drain()
            time.sleep(0.01)
        check = inbound.ended_check(1)
        assert check() is False and check() is True  # one more look at the mailbox first
    finally:
        inbound.close()


def test_a_broken_frame_fails_the_reading_rank_with_the_cause_and_aborts_the_job():
    from dtrain.comm import pipes, shm

    if not shm.available():
        pytest.skip("pipes between processes need Linux and /proc")
    box = Mailbox()
    inbound = pipes.Inbound(box, [1], name="rank 0's pipes")
    out = pipes.Outbound(os.getpid(), inbound.write_end(1), "rank 1")
    try:
        inbound.keep_only({1})
        os.write(out.fd, (5).to_bytes(pipes.HEADER, "little") + b"\xc1junk")  # 0xc1: never valid msgpack
        with pytest.raises(CommError, match="rank 0's pipes could not read a message from rank 1"):
            box.take(1, "x", 5)
        assert box.reason and "could not read" in box.reason  # the job is aborted: the others stop waiting
    finally:
        out.close()
        inbound.close()


def test_a_pipe_whose_reader_stopped_reading_fails_the_send_at_its_deadline():
    from dtrain.comm import pipes, shm

    if not shm.available():
        pytest.skip("pipes between processes need Linux and /proc")
    box = Mailbox()
    inbound = pipes.Inbound(box, [0], name="test-pipes")  # never attached to the mailbox: nobody drains it
    out = pipes.Outbound(os.getpid(), inbound.write_end(0), "rank 0 (stuck)")
    try:
        start = time.monotonic()
        with pytest.raises(CommError, match=r"rank 0 \(stuck\) did not complete within 0.3 s"):
            while time.monotonic() - start < 10:
                out.send("x", np.zeros(4096, np.float32), timeout=0.3, abort=box)
        assert time.monotonic() - start < 5
        box.abort("cancelled")
        with pytest.raises(Aborted, match="cancelled"):
            out.send("x", np.zeros(4096, np.float32), timeout=30, abort=box)
        with pytest.raises(OSError, match="not a pipe"):
            pipes.Outbound(os.getpid(), os.open(os.devnull, os.O_RDONLY), "rank 0")
    finally:
        out.close()
        inbound.close()


def _rank_dies_after_connecting(job_id, rank, peers):
    with DaskCommunicator(job_id, rank, peers, timeout=30) as comm:
        comm.barrier()  # the ranks have agreed on shared memory and pipes
        shared = sorted(comm._transport.shared_peers)
        if rank == 1:
            os._exit(1)  # as a kill would: no goodbye, no close
        time.sleep(0.5)
        start = time.monotonic()
        try:
            comm.allreduce(np.ones(1_000_000, np.float32))
        except CommError as exc:
            return shared, str(exc), time.monotonic() - start
    return shared, "returned", time.monotonic() - start


@pytest.mark.cluster
def test_a_peer_on_the_same_machine_that_dies_is_an_error_at_once_not_at_the_deadline():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        _, peers, futures = launch(plugged(client), _rank_dies_after_connecting)
        shared, message, elapsed = futures[0].result(timeout=20)
    assert shared == [1]
    assert f"rank 1 ({peers[1]})" in message and ("died" in message or "exited" in message), message
    assert elapsed < 3  # the deadline is 30 s


def _rank_wait_forever(job_id, rank, peers, timeout):
    with DaskCommunicator(job_id, rank, peers, timeout=timeout) as comm:
        start = time.monotonic()
        try:
            comm.allreduce(np.ones(100, np.float32))
        except CommError as exc:
            return type(exc).__name__, str(exc), time.monotonic() - start
    return "returned", "", time.monotonic() - start


@pytest.mark.cluster
def test_abort_on_worker_wakes_a_blocked_rank(client2):
    client = plugged(client2)
    job_id, _, [future] = launch(client, _rank_wait_forever, 30, ranks=[0])  # rank 1 never comes
    time.sleep(0.5)  # let rank 0 block in its receive
    client.run(abort_on_worker, job_id, "stopped by the driver")
    _wait_done([future], 5)
    kind, message, elapsed = future.result()
    assert kind == "Aborted" and "stopped by the driver" in message
    assert elapsed < 3


def _rank_fail_or_wait(job_id, rank, peers, timeout):
    if rank == 1:
        raise ValueError("no data for this shard")
    return _rank_wait_forever(job_id, rank, peers, timeout)


@pytest.mark.cluster
def test_a_peer_that_fails_before_communicating_means_an_error_not_a_hang(client2):
    client = plugged(client2)
    # without a driver: the deadline
    _, _, futures = launch(client, _rank_fail_or_wait, 1.0)
    _wait_done(futures, 10)
    kind, message, elapsed = futures[0].result()
    assert kind == "DeadlineMissed" and "rank 1" in message and 0.9 < elapsed < 3  # (a CommError: the deadline)
    # with a driver that aborts the job on the first error: at once
    job_id, _, futures = launch(client, _rank_fail_or_wait, 30)
    deadline = time.monotonic() + 10
    while not any(f.status == "error" for f in futures) and time.monotonic() < deadline:
        time.sleep(0.02)
    failed = next(f for f in futures if f.status == "error")
    client.run(abort_on_worker, job_id, f"rank failed: {failed.exception()}")
    _wait_done(futures, 5)
    kind, message, elapsed = futures[0].result()
    assert kind == "Aborted" and "no data for this shard" in message and elapsed < 3


def _rank_aborts(job_id, rank, peers):
    comm = DaskCommunicator(job_id, rank, peers, timeout=30)
    try:
        if rank == 0:
            start = time.monotonic()
            comm.abort("loss is NaN")
            return "aborted", time.monotonic() - start
        try:
            comm.allreduce(np.ones(3))
        except Aborted as exc:
            return "Aborted", exc.reason
        return "returned", None
    finally:
        comm.close()


@pytest.mark.cluster
def test_a_failing_rank_aborts_its_peers(client3):
    client = plugged(client3)
    _, peers, futures = launch(client, _rank_aborts)
    _wait_done(futures, 10)
    results = client.gather(futures)
    assert results[0][0] == "aborted" and results[0][1] < 1.5
    for kind, reason in results[1:]:
        assert kind == "Aborted" and f"rank 0 ({peers[0]}) failed: loss is NaN" in reason


def _rank_reads_control(job_id, rank, peers):
    comm = DaskCommunicator(job_id, rank, peers, timeout=5)
    try:
        comm.check_abort()
        return get_plugin().wait_for(job_id, "driver", "stop-after-epoch", timeout=5)
    except Aborted as exc:
        return exc.reason
    finally:
        comm.close()


@pytest.mark.cluster
def test_control_values_and_aborts_that_arrive_before_the_job_opens(client2):
    client = plugged(client2)
    early = f"test-{uuid.uuid4().hex}"
    client.run(deliver_on_worker, early, "driver", "stop-after-epoch", 3)
    _, _, futures = launch(client, _rank_reads_control, job_id=early)
    assert client.gather(futures) == [3, 3]
    aborted = f"test-{uuid.uuid4().hex}"
    client.run(abort_on_worker, aborted, "cancelled before start")
    _, _, futures = launch(client, _rank_reads_control, job_id=aborted)
    assert all("cancelled before start" in r for r in client.gather(futures))


def _rank_on_wrong_worker(job_id, rank, peers):
    try:
        DaskCommunicator(job_id, 1 - rank, peers)
    except ValueError as exc:
        return str(exc)


@pytest.mark.cluster
def test_dask_communicator_checks_where_it_runs(client2):
    with pytest.raises(RuntimeError, match="inside a task running on a Dask worker"):
        get_plugin()
    client = plugged(client2)
    _, _, futures = launch(client, _rank_on_wrong_worker)
    assert all("pin each rank task to its worker" in msg for msg in client.gather(futures))


def _wait_done(futures, timeout: float) -> None:
    """Until every future is done (finished or failed), at most ``timeout`` seconds. (Unlike
    distributed.wait this needs no default client: the session clusters' clients are not one.)"""
    deadline = time.monotonic() + timeout
    while not all(f.done() for f in futures):
        if time.monotonic() > deadline:
            raise TimeoutError(f"futures not done within {timeout} s: {[f.status for f in futures]}")
        time.sleep(0.02)


# -- the board: small sums between the ranks of one machine, without messages ---------------------


class _Watch:
    """The transport's side of a board wait, for ranks that are threads of this process."""

    def __init__(self, gone=()):
        self.gone_peers, self.stuck_peers = set(gone), set()

    def gone(self, peer):
        return peer in self.gone_peers

    def stuck(self, peer):
        self.stuck_peers.add(peer)

    def describe(self, peer):
        return f"rank {peer} (thread)"


def _boards(size, capacity=4096):
    made = [board_mod.Board(rank, size, capacity) for rank in range(size)]
    for board in made:
        for peer in made:
            if peer is not board:
                board.attach(peer.rank, peer.segment.data)
    return made


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("size", [2, 3, 4, 5, 6])
def test_board_sums_give_the_bits_of_recursive_doubling(size, dtype):
    boards = _boards(size)
    calls = 7  # more than the two slots: each is written again after every peer read it

    def body(comm):  # the same sums through messages (recursive doubling) and on the board
        board = boards[comm.rank]
        results = []
        for call in range(calls):
            data = (rank_data(comm.rank + 10 * call, 1 + 37 * call) * 1000).astype(dtype)
            by_messages, on_board = data.copy(), np.empty_like(data)
            comm.allreduce(by_messages)
            board.allreduce(data, on_board, timeout=5, watch=_Watch())
            in_place = data.copy()
            board.allreduce(in_place, in_place, timeout=5, watch=_Watch())
            results.append((by_messages, on_board, in_place))
        return results

    try:
        per_rank = run_ranks(size, body)
    finally:
        for board in boards:
            board.close()
    for call in range(calls):
        by_messages = per_rank[0][call][0]
        for rank in range(size):
            for got in per_rank[rank][call]:
                assert got.tobytes() == by_messages.tobytes(), (rank, call)


def test_board_sums_of_different_sizes_are_an_error_that_says_why():
    boards = _boards(2)
    errors = []

    def rank(r, n):
        try:
            boards[r].allreduce(np.ones(n), np.empty(n), timeout=2, watch=_Watch())
        except CommError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=rank, args=(0, 10)), threading.Thread(target=rank, args=(1, 11))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(errors) == 2 and all("same size and dtype" in e for e in errors), errors


def test_a_board_wait_ends_at_once_when_the_peer_is_gone_and_at_the_deadline_when_it_is_silent():
    boards = _boards(3)
    start = time.monotonic()
    with pytest.raises(CommError, match=r"rank 1 \(thread\) exited without joining sum number 1"):
        boards[0].allreduce(np.ones(4), np.empty(4), timeout=30, watch=_Watch(gone={1}))
    assert time.monotonic() - start < 1
    watch = _Watch()
    start = time.monotonic()
    with pytest.raises(CommError, match=r"Timed out after 0.3 s waiting for rank 2 \(thread\) to join sum number 1"):
        boards[1].allreduce(np.ones(4), np.empty(4), timeout=0.3, watch=watch)  # rank 0 posted, rank 2 never
    assert 0.3 <= time.monotonic() - start < 1.5 and watch.stuck_peers == {2}
    for board in boards:
        board.close()


def _rank_sums_small_and_large(job_id, rank, peers, die_rank):
    out = {}
    with DaskCommunicator(job_id, rank, peers, timeout=30) as comm:
        values = [rank_data(rank + 5 * k, n, np.float64) for k, n in enumerate((1, 2049, 16384))]
        for value in values:  # small (board), small (board), over the board's 128 KiB
            comm.allreduce(value)
        out["board"] = comm._transport.board is not None
        out["values"] = values
        if rank == die_rank:
            os._exit(1)  # as a kill would: no goodbye, no close
        if die_rank is not None:
            start = time.monotonic()
            try:
                comm.barrier()  # waits on the board for the dead rank
            except CommError as exc:
                return str(exc), time.monotonic() - start
            return "returned", time.monotonic() - start
    with DaskCommunicator(f"{job_id}-tcp", rank, peers, timeout=30, shared_memory=False) as comm:
        values = [rank_data(rank + 5 * k, n, np.float64) for k, n in enumerate((1, 2049, 16384))]
        for value in values:
            comm.allreduce(value)
        out["board_without_shared_memory"] = comm._transport.board is not None
        out["tcp_values"] = values
    return out


@pytest.mark.cluster
@pytest.mark.parametrize("workers", [2, 3])
def test_small_sums_on_the_board_equal_the_message_path_bitwise(workers, request):
    client = plugged(request.getfixturevalue(f"client{workers}"))
    _, _, futures = launch(client, _rank_sums_small_and_large, None)
    _wait_done(futures, 60)
    results = client.gather(futures)
    for result in results:
        assert result["board"] and not result["board_without_shared_memory"]
        for on_board, by_messages in zip(result["values"], result["tcp_values"]):
            assert on_board.tobytes() == by_messages.tobytes()
    for k in range(3):
        assert len({r["values"][k].tobytes() for r in results}) == 1


@pytest.mark.cluster
def test_a_peer_that_dies_while_another_waits_on_the_board_is_an_error_at_once():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        _, peers, futures = launch(plugged(client), _rank_sums_small_and_large, 1)
        message, elapsed = futures[0].result(timeout=30)
    assert f"rank 1 ({peers[1]}) exited without joining sum number" in message, message
    assert elapsed < 3  # the deadline is 30 s
