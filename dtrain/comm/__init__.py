"""Collectives for the ranks of one training job: one small interface, backends chosen by name.

    comm = make_communicator("dask", job_id=job, rank=r, size=n, peers=addresses, timeout=60)
    comm.broadcast(params, root=0)
    ...
    comm.allreduce(flat_grads)   # in-place sum, bitwise identical on every rank
    comm.check_abort()           # every step: raises Aborted when the job was aborted

Backends: "local" (one rank, no-ops), "dask" (NumPy arrays over Dask's worker-to-worker comms),
"nccl" (CuPy arrays over NCCL), "host-staged" (CuPy arrays copied through host memory and summed
over the Dask path: the fallback without NCCL). The Dask-based backends need the
:class:`~dtrain.comm.dask.DtrainWorkerPlugin` registered on the cluster.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from .base import Aborted, CommError, Communicator, DeadlineMissed, LocalCommunicator, Mailbox

KINDS = ("local", "dask", "nccl", "host-staged")


def make_communicator(
    kind: str,
    *,
    job_id: str,
    rank: int,
    size: int,
    peers: Sequence[str] | None = None,
    timeout: float = 60.0,
    nccl_id: bytes | tuple | None = None,
    abort_event: threading.Event | Mailbox | None = None,
) -> Communicator:
    """Build this rank's communicator of kind ``kind`` (one of :data:`KINDS`).

    ``peers`` (worker addresses in rank order) is needed by the Dask-based kinds; ``nccl_id`` (from
    :func:`dtrain.comm.nccl.make_unique_id`, made afresh on rank 0's worker for every start) by
    "nccl". Inside a Dask worker with the plugin registered, the job's abort flag (set by
    ``abort_on_worker``) is used for "local" and "nccl" unless ``abort_event`` is given.
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown communicator kind {kind!r}: expected one of {', '.join(map(repr, KINDS))}.")
    if not isinstance(size, int) or size < 1 or not isinstance(rank, int) or not 0 <= rank < size:
        raise ValueError(f"Expected 0 <= rank < size, received rank={rank!r}, size={size!r}.")
    if kind == "local":
        if size != 1:
            raise ValueError(
                f"The 'local' communicator has exactly one rank, received size={size}; use 'dask' or 'nccl'."
            )
        return LocalCommunicator(abort_event if abort_event is not None else _job_flag(job_id))

    from . import dask as dask_comm

    def dask_communicator() -> dask_comm.DaskCommunicator:
        if peers is None or len(peers) != size:
            raise ValueError(
                f"The {kind!r} communicator needs peers: the {size} worker addresses in rank order, "
                f"received {None if peers is None else len(peers)}."
            )
        return dask_comm.DaskCommunicator(job_id, rank, list(peers), timeout)

    if kind == "dask":
        return dask_communicator()

    from . import nccl

    if kind == "host-staged":
        return nccl.HostStagedCommunicator(dask_communicator())
    if nccl_id is None:
        raise ValueError(
            "The 'nccl' communicator needs nccl_id: call dtrain.comm.nccl.make_unique_id() on rank 0's worker "
            "(new for every start of the job) and pass the result to every rank."
        )
    control = dask_communicator() if peers is not None else None
    if abort_event is None and control is not None:
        abort_event = control.mailbox
    try:
        return nccl.NcclCommunicator(job_id, rank, size, nccl_id, timeout, abort_event, control=control)
    except BaseException:
        if control is not None:
            control.close()
        raise


def _job_flag(job_id: str) -> Mailbox | None:
    """The job's abort flag on this Dask worker, or None outside a worker or without the plugin."""
    try:
        from distributed import get_worker

        from .dask import PLUGIN_NAME, DtrainWorkerPlugin

        plugin = get_worker().plugins.get(PLUGIN_NAME)
    except (ImportError, ValueError):
        return None
    return plugin.mailbox(job_id) if isinstance(plugin, DtrainWorkerPlugin) else None


_DASK_NAMES = (
    "DaskCommunicator",
    "DtrainWorkerPlugin",
    "PLUGIN_NAME",
    "abort_on_worker",
    "deliver_on_worker",
    "get_plugin",
)


def __getattr__(name: str) -> Any:
    """``DaskCommunicator`` and friends load lazily: importing dtrain.comm does not import distributed."""
    if name in _DASK_NAMES:
        from . import dask as dask_comm

        return getattr(dask_comm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "KINDS",
    "Aborted",
    "CommError",
    "Communicator",
    "DeadlineMissed",
    "LocalCommunicator",
    "Mailbox",
    "make_communicator",
]
