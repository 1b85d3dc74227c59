"""GPU collectives: NCCL through ``cupy.cuda.nccl``, and host staging over the Dask path.

NCCL blocks forever when a peer dies, so no call here blocks without a deadline: each collective
is enqueued on the current CUDA stream, then this rank polls a CUDA event, NCCL's asynchronous
error, and the job's abort flag until the event completes; on a timeout or an abort it calls
``ncclCommAbort`` (which makes the communicator unusable) and raises :class:`CommError` or
:class:`Aborted`.

CuPy's wrapper has no non-blocking init (``ncclCommInitRankConfig`` with ``blocking=0`` is not
exposed), so ``ncclCommInitRank`` runs in a helper thread that this rank waits for with the same
deadline and abort checks. If a peer never joins, the helper thread stays blocked inside NCCL
until the worker process exits: restart the workers if that happens repeatedly.

CuPy is reached only through :mod:`dtrain.backend` (which owns the guarded import); the NCCL
submodule is loaded from it by name.
"""

from __future__ import annotations

import importlib
import threading
import time
from types import ModuleType
from typing import Any, NoReturn

import numpy as np

from .. import backend
from .base import WAIT_SLICE, Aborted, CommError, Communicator, DeadlineMissed, Mailbox, abort_reason, failure_message
from .collectives import flat_view

ABORT_DEADLINE_S = 10.0  # how long a rank waits for ncclCommAbort before it gives up on it

UNIQUE_ID_BYTES = 128

_NCCL_DTYPES = {
    "float16": "NCCL_FLOAT16",
    "float32": "NCCL_FLOAT32",
    "float64": "NCCL_FLOAT64",
    "int8": "NCCL_INT8",
    "uint8": "NCCL_UINT8",
    "int32": "NCCL_INT32",
    "uint32": "NCCL_UINT32",
    "int64": "NCCL_INT64",
    "uint64": "NCCL_UINT64",
}


def _cupy() -> ModuleType:
    return backend.get_backend("gpu").xp  # a RuntimeError that says why when there is no GPU


def _nccl(cupy: ModuleType) -> ModuleType:
    try:
        nccl = importlib.import_module(f"{cupy.__name__}.cuda.nccl")
    except ImportError as exc:  # pragma: no cover - depends on the CuPy build
        nccl, reason = None, str(exc)
    else:
        reason = "CuPy could not load the NCCL library"
    if nccl is None or not getattr(nccl, "available", False):
        raise RuntimeError(
            f"NCCL cannot be used: {reason}. Install the NCCL wheel that matches CuPy "
            "(pip install nvidia-nccl-cu12, part of 'dtrain[gpu]'), or use the 'host-staged' communicator."
        )
    return nccl


def make_unique_id() -> bytes:
    """A new NCCL unique id, as 128 bytes (msgpack- and pickle-friendly). Call it on rank 0's
    worker for every (re)start of a job and hand it to every rank."""
    return encode_unique_id(_nccl(_cupy()).get_unique_id())


def encode_unique_id(uid: tuple[int, ...]) -> bytes:
    """CuPy's id (a tuple of C ``char`` values, signed on most platforms) as bytes."""
    return bytes(v & 0xFF for v in uid)


def decode_unique_id(uid: bytes | bytearray | tuple | list, *, signed: bool = True) -> tuple[int, ...]:
    """Bytes (or CuPy's tuple) back to the tuple that ``NcclCommunicator`` takes."""
    if isinstance(uid, (bytes, bytearray)):
        values = [v - 256 if signed and v > 127 else v for v in uid]
    elif isinstance(uid, (tuple, list)):
        values = [int(v) for v in uid]
    else:
        raise TypeError(f"Expected the NCCL unique id as bytes (from make_unique_id()), received {type(uid).__name__}.")
    if len(values) != UNIQUE_ID_BYTES:
        raise ValueError(f"An NCCL unique id has {UNIQUE_ID_BYTES} bytes, received {len(values)}.")
    return tuple(values)


class NcclCommunicator:
    """One rank of an NCCL communicator on this process's current CUDA device.

    ``abort_event`` is the job's abort flag (a ``threading.Event`` or the job's :class:`Mailbox`);
    ``control`` (optional, a Dask communicator of the same job) carries ``abort`` to the peers,
    which NCCL itself cannot do. Accepts CuPy arrays, and NumPy arrays (staged through the device:
    meant for small ones such as metric sums). ``timeout`` bounds every wait, init included.
    """

    name = "nccl"
    has_reduce_scatter = False  # the training loop sums whole gradients with allreduce_into

    def __init__(
        self,
        job_id: str,
        rank: int,
        size: int,
        unique_id: bytes | tuple,
        timeout: float = 60.0,
        abort_event: threading.Event | Mailbox | None = None,
        *,
        control: Communicator | None = None,
    ) -> None:
        self._cp = _cupy()
        self._nccl = _nccl(self._cp)
        if not 0 <= rank < size:
            raise ValueError(f"Expected 0 <= rank < size, received rank={rank}, size={size}.")
        self.job_id, self.rank, self.size, self.timeout = job_id, rank, size, timeout
        self._abort = abort_event if abort_event is not None else threading.Event()
        self._reason: str | None = None
        self._control = control
        self._device_id = self._cp.cuda.Device().id
        self._comm = self._init(unique_id)
        self._event = self._cp.cuda.Event(block=False, disable_timing=True)

    # -- setup: task thread, with a helper thread for the blocking init ---------------------------

    def _init(self, unique_id: bytes | tuple) -> Any:
        result: dict[str, Any] = {}

        def init() -> None:  # helper thread: ncclCommInitRank blocks until every rank has joined
            try:
                with self._cp.cuda.Device(self._device_id):
                    try:
                        result["comm"] = self._nccl.NcclCommunicator(self.size, decode_unique_id(unique_id), self.rank)
                    except OverflowError:  # C char is unsigned on this platform
                        uid = decode_unique_id(unique_id, signed=False)
                        result["comm"] = self._nccl.NcclCommunicator(self.size, uid, self.rank)
            except BaseException as exc:  # handed to the waiting rank
                result["error"] = exc

        thread = threading.Thread(target=init, name=f"dtrain-nccl-init-{self.job_id}-r{self.rank}", daemon=True)
        thread.start()
        deadline = time.monotonic() + self.timeout
        while thread.is_alive():
            thread.join(WAIT_SLICE)
            self.check_abort()
            if thread.is_alive() and time.monotonic() > deadline:
                raise CommError(
                    f"NCCL init of job {self.job_id!r} (rank {self.rank} of {self.size}) did not complete within "
                    f"{self.timeout:g} s: some rank did not join with the same unique id, or two ranks share a GPU. "
                    "Abort the job; restart the workers if this repeats (the init thread stays blocked in NCCL)."
                )
        if "error" in result:
            exc = result["error"]
            raise CommError(
                f"NCCL init of job {self.job_id!r} failed on rank {self.rank}: {type(exc).__name__}: {exc}. Check that "
                "every rank got the same unique id (new for every start) and runs on its own GPU."
            ) from exc
        return result["comm"]

    # -- collectives: task thread -----------------------------------------------------------------

    def allreduce(self, array: Any) -> None:
        self._collective(
            "allreduce", array, lambda comm, ptr, n, dt, s: comm.allReduce(ptr, ptr, n, dt, self._nccl.NCCL_SUM, s)
        )

    def allreduce_into(self, array: Any, out: Any) -> None:
        out[...] = array
        self.allreduce(out)

    def shared_array(self, size: int, dtype: Any) -> None:
        return None

    def reduce_scatter_into(self, array: Any, out: Any) -> slice:
        _no_sharding(self.name, "reduce_scatter_into")

    def allgather(self, array: Any) -> None:
        _no_sharding(self.name, "allgather")

    def broadcast(self, array: Any, root: int = 0) -> None:
        if not isinstance(root, int) or not 0 <= root < self.size:
            raise ValueError(f"root={root!r} is not a rank: expected an integer in [0, {self.size}).")
        self._collective(f"broadcast from {root}", array, lambda comm, ptr, n, dt, s: comm.bcast(ptr, n, dt, root, s))

    def barrier(self) -> None:
        self.allreduce(self._cp.zeros(1, dtype=self._cp.float32))

    def _collective(self, op: str, array: Any, launch: Any) -> None:
        self.check_abort()
        if self._comm is None:
            raise CommError(f"The NCCL communicator of job {self.job_id!r} was aborted; build a new one to go on.")
        host = array if isinstance(array, np.ndarray) else None
        if host is not None:  # small host arrays: to the device and back
            device = self._cp.asarray(flat_view(host, "nccl"))
        else:
            if not array.flags.c_contiguous:
                raise ValueError(
                    "NCCL collectives work in place on one contiguous buffer; received a non-contiguous array."
                )
            device = array.reshape(-1)
        dtype = _NCCL_DTYPES.get(device.dtype.name)
        if dtype is None:
            raise TypeError(f"NCCL cannot reduce dtype {device.dtype}; expected one of {', '.join(_NCCL_DTYPES)}.")
        if device.size:
            stream = self._cp.cuda.get_current_stream()
            launch(self._comm, device.data.ptr, device.size, getattr(self._nccl, dtype), stream.ptr)
            self._complete(op, stream)
        if host is not None:
            device.get(out=host.reshape(-1))

    def _complete(self, op: str, stream: Any) -> None:
        """Poll until the work enqueued on ``stream`` is done, within the deadline (see module doc)."""
        self._event.record(stream)
        deadline = time.monotonic() + self.timeout
        polls = 0
        while not self._event.done:
            if self._abort.is_set():
                self._abort_nccl()
                self.check_abort()
            try:
                self._comm.check_async_error()
            except Exception as exc:
                self._abort_nccl()
                raise CommError(
                    f"NCCL {op} of job {self.job_id!r} failed on rank {self.rank}: {exc}. A peer is lost or its GPU "
                    "failed; abort the job and restart it."
                ) from exc
            if time.monotonic() > deadline:
                self._abort_nccl()
                raise DeadlineMissed(
                    f"NCCL {op} of job {self.job_id!r} did not complete on rank {self.rank} within {self.timeout:g} s: "
                    "a peer is dead, stuck, or not running the same collectives; abort the job and restart it.",
                    waiting_for=f"the other ranks in NCCL {op}",
                )
            polls += 1
            time.sleep(0 if polls < 200 else 0.0005)  # spin briefly (a step's allreduce is short), then back off

    def _abort_nccl(self) -> None:
        comm, self._comm = self._comm, None
        if comm is None:
            return

        def abort() -> None:
            try:
                comm.abort()
            except Exception:  # already broken: nothing more to release
                pass

        # ncclCommAbort itself has been seen to hang when peers are gone (NCCL issues #863,
        # #1777): give it a daemon thread and a deadline, so the rank still fails and frees its worker.
        thread = threading.Thread(target=abort, name=f"nccl-abort-{self.job_id}", daemon=True)
        thread.start()
        thread.join(ABORT_DEADLINE_S)

    # -- abort and close --------------------------------------------------------------------------

    def set_timeout(self, seconds: float) -> None:
        self.timeout = float(seconds)
        if self._control is not None:
            self._control.set_timeout(seconds)

    def check_abort(self) -> None:
        if self._abort.is_set():
            raise Aborted(self._reason or abort_reason(self._abort))

    def abort(self, reason: str) -> None:
        try:
            message = failure_message(self.rank, "", reason)
            self._reason = self._reason or message
            if isinstance(self._abort, Mailbox):
                self._abort.abort(message)
            else:
                self._abort.set()
            if self._control is not None:
                self._control.abort(message)  # tells the peers, who may be blocked inside NCCL with us
            self._abort_nccl()
        except Exception:  # best effort: the caller is already failing
            pass

    def close(self) -> None:
        if self._abort.is_set():
            # Peers are gone or out of step: ncclCommDestroy could wait for them forever.
            self._abort_nccl()
        comm, self._comm = self._comm, None
        if comm is not None:
            comm.destroy()
        if self._control is not None:
            self._control.close()

    def __repr__(self) -> str:
        return f"<NcclCommunicator job {self.job_id!r} rank {self.rank} of {self.size}, device {self._device_id}>"


class HostStagedCommunicator:
    """GPU arrays summed over a host communicator (normally Dask): each call copies the array into
    one reusable (pinned, where CuPy can) host buffer, runs the inner collective, and copies the
    result back. The fallback when NCCL is missing, and the only way two ranks can share a GPU.
    NumPy arrays go straight to the inner communicator."""

    name = "host-staged"
    has_reduce_scatter = False  # the training loop sums whole gradients with allreduce_into

    def __init__(self, inner: Communicator) -> None:
        self.inner = inner
        self.rank, self.size = inner.rank, inner.size
        self._host = np.empty(0, dtype=np.uint8)  # grows to the largest buffer seen, then is reused

    def allreduce(self, array: Any) -> None:
        if isinstance(array, np.ndarray):
            return self.inner.allreduce(array)
        host = self._to_host(array)
        self.inner.allreduce(host)
        self._to_device(host, array)

    def allreduce_into(self, array: Any, out: Any) -> None:
        if isinstance(array, np.ndarray) and isinstance(out, np.ndarray):
            return self.inner.allreduce_into(array, out)
        out[...] = array
        self.allreduce(out)

    def shared_array(self, size: int, dtype: Any) -> None:
        return None  # the GPU's buffers are staged through host memory anyway

    def reduce_scatter_into(self, array: Any, out: Any) -> slice:
        _no_sharding(self.name, "reduce_scatter_into")

    def allgather(self, array: Any) -> None:
        _no_sharding(self.name, "allgather")

    def broadcast(self, array: Any, root: int = 0) -> None:
        if isinstance(array, np.ndarray):
            return self.inner.broadcast(array, root)
        host = self._to_host(array)
        self.inner.broadcast(host, root)
        self._to_device(host, array)

    def _to_host(self, array: Any) -> np.ndarray:
        if not array.flags.c_contiguous:
            raise ValueError("Collectives work in place on one contiguous buffer; received a non-contiguous array.")
        nbytes = array.size * array.dtype.itemsize
        if self._host.nbytes < nbytes:
            self._host = _pinned_bytes(nbytes)
        host = self._host[:nbytes].view(array.dtype)
        array.reshape(-1).get(out=host)  # device -> host, synchronous
        return host

    def _to_device(self, host: np.ndarray, array: Any) -> None:
        array.reshape(-1).set(host)
        _synchronize(array)  # the host buffer is reused by the next call: the copy must be done

    def barrier(self) -> None:
        self.inner.barrier()

    def set_timeout(self, seconds: float) -> None:
        self.inner.set_timeout(seconds)

    def check_abort(self) -> None:
        self.inner.check_abort()

    def abort(self, reason: str) -> None:
        self.inner.abort(reason)

    def close(self) -> None:
        self.inner.close()
        self._host = np.empty(0, dtype=np.uint8)

    def __repr__(self) -> str:
        return f"<HostStagedCommunicator over {self.inner!r}>"


def _no_sharding(name: str, method: str) -> NoReturn:
    """The sharded step's collectives: the GPU communicators declare them, as every
    :class:`Communicator` does, but do not have them yet (``has_reduce_scatter`` is False, so
    the training loop never calls them)."""
    raise NotImplementedError(
        f"The {name!r} communicator has no {method} (has_reduce_scatter is False): sum whole buffers with allreduce_into."
    )


def _pinned_bytes(nbytes: int) -> np.ndarray:
    """A host byte buffer, page-locked when CuPy is usable (faster, asynchronous-capable copies)."""
    if backend.gpu_available():
        memory = _cupy().cuda.alloc_pinned_memory(nbytes)
        return np.frombuffer(memory, dtype=np.uint8, count=nbytes)
    return np.empty(nbytes, dtype=np.uint8)


def _synchronize(array: Any) -> None:
    if backend.gpu_available() and type(array).__module__.startswith("cupy"):
        _cupy().cuda.get_current_stream().synchronize()
