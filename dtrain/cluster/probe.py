"""The workers of a cluster: a quick probe of each, the ranks in order, the device and the
communicator every rank uses."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from .. import comm as comm_module
from ..backend import device_info
from ..config import check_workers


@dataclass(frozen=True)
class WorkerInfo:
    address: str
    worker_id: str
    host: str
    gpu: bool
    gpu_index: int | None
    gpu_uid: str | None  # PCI bus id: which physical GPU
    nccl: bool
    memory_limit: int | None  # bytes; None: no limit
    memory_used: int  # process memory now
    pause_fraction: float | None  # Dask pauses the worker above this fraction of memory_limit
    has_plugin: bool


def probe_worker(dask_worker: Any) -> dict[str, Any]:
    """Runs on each worker's event loop (client.run): quick facts only."""
    import dask

    pause = dask.config.get("distributed.worker.memory.pause", 0.8)
    info = device_info()
    return {
        "worker_id": dask_worker.id,
        "gpu": info["gpu"],
        "gpu_index": info["gpu_index"],
        "gpu_uid": info["gpu_uid"],
        "nccl": info["nccl"],
        "memory_limit": dask_worker.memory_manager.memory_limit or None,
        "memory_used": int(dask_worker.monitor.get_process_memory()),
        "pause_fraction": float(pause) if pause else None,
        "has_plugin": comm_module.PLUGIN_NAME in dask_worker.plugins,
    }


def check_client(client: Any) -> None:
    from distributed import Client

    if not isinstance(client, Client):
        raise TypeError(f"client= expects a distributed.Client, received {type(client).__name__} {client!r}.")
    if client.status != "running":
        where = getattr(client.scheduler, "address", None) if client.scheduler is not None else None
        hint = (
            f" (it cannot reach the scheduler at {where}: is the scheduler running?)"
            if client.status == "connecting"
            else ""
        )
        raise RuntimeError(
            f"The Dask client is {client.status}, not running{hint}: pass a client connected to a running "
            "scheduler, e.g. distributed.Client('tcp://scheduler:8786')."
        )


def scheduler_workers(client: Any) -> list[str]:
    """The workers' addresses, asked of the scheduler itself. (``Client.scheduler_info()`` answers
    from a cached copy, which a CI run once saw empty while both workers were there.)"""
    return list(client.sync(client.scheduler.identity, n_workers=-1)["workers"])


def cluster_ranks(client: Any, workers: Sequence[str] | None = None) -> list[WorkerInfo]:
    """The workers to train on, in rank order: by host, then GPU index, then address."""
    check_client(client)
    try:
        known = scheduler_workers(client)
    except OSError as exc:
        raise ConnectionError(f"Cannot reach the Dask scheduler at {client.scheduler.address}: {exc}") from None
    if not known:
        raise RuntimeError(
            "The Dask cluster has no workers: start some (e.g. `dask worker SCHEDULER_ADDRESS`) "
            "or wait for them with client.wait_for_workers(n)."
        )
    workers = check_workers(workers)
    if workers is not None:
        missing = [w for w in workers if w not in known]
        if missing:
            raise ValueError(f"Workers {missing} are not in the cluster; known workers: {sorted(known)}.")
        known = list(workers)
    probes = client.run(probe_worker, workers=known)
    infos = [
        WorkerInfo(address=address, host=urlparse(address).hostname or address, **probes[address]) for address in known
    ]
    return sorted(infos, key=lambda w: (w.host, -1 if w.gpu_index is None else w.gpu_index, w.address))


def choose_device(requested: str, ranks: Sequence[WorkerInfo]) -> str:
    """The device every rank trains on: all the same, or the ranks would not agree."""
    all_gpu = all(w.gpu for w in ranks)
    if requested == "gpu" and not all_gpu:
        lacking = [w.address for w in ranks if not w.gpu]
        raise RuntimeError(
            f"The model asks for device='gpu' but workers {lacking} have no usable GPU (CuPy and a CUDA "
            "device are needed on every worker: install dtrain[gpu] there), or use device='cpu'."
        )
    return "gpu" if requested in ("gpu", "auto") and all_gpu else "cpu"


def choose_communicator(device: str, ranks: Sequence[WorkerInfo]) -> str:
    if len(ranks) == 1:
        return "local"
    if device == "cpu":
        return "dask"
    gpus = [(w.host, w.gpu_uid) for w in ranks]
    # NCCL refuses two ranks on one GPU; without NCCL, or when GPUs are shared, stage through host memory.
    return "nccl" if all(w.nccl for w in ranks) and len(set(gpus)) == len(gpus) else "host-staged"


def run_with_deadline(
    client: Any, function: Any, *args: Any, workers: list[str] | None, wait_s: float, name: str = "dtrain-run"
) -> dict[str, Any] | None:
    """``client.run(function, *args, workers=workers)`` from a thread of its own, waited for
    ``wait_s`` seconds at most: client.run has no deadline, and a worker that froze a moment ago
    never answers (the call goes on in the background). Every worker's answer (those that failed
    left out), or None when they did not all come in time or the scheduler is gone."""
    answers: dict[str, Any] = {}
    answered = threading.Event()
    done = threading.Event()

    def call() -> None:
        try:
            answers.update(client.run(function, *args, workers=workers, on_error="return"))
            answered.set()
        except Exception:  # the scheduler went away meanwhile
            pass
        finally:
            done.set()

    threading.Thread(target=call, name=name, daemon=True).start()
    if not done.wait(wait_s) or not answered.is_set():
        return None
    return {address: value for address, value in answers.items() if not isinstance(value, BaseException)}
