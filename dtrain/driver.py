"""Client side of data-parallel training: check, plan, launch, supervise, collect.

``fit_on_cluster`` is what ``Sequential.fit(..., client=client)`` runs:

1. check the client and the workers (one quick probe each: identity, host, GPU, memory);
2. order the ranks (host, then GPU index) and plan the logical shards and global batches;
3. check the data where it is (NumPy on the client; files and Dask arrays on the workers,
   metadata only), and that every rank's shards fit its worker's memory — all before any
   task is submitted, so a bad call fails fast and changes nothing;
4. launch one pinned, long-lived rank task per worker (``dtrain.worker.run_rank``);
5. supervise: feed live progress to the callbacks, watch for failed ranks and lost workers,
   abort every rank on the first failure or on Ctrl-C and raise the original error;
6. put the trained weights and optimizer state into the client's model, return a History.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import numpy as np

from . import callbacks as callbacks_module
from . import recovery
from .backend import device_info, host_copy
from .sampling import ShardPlan
from .worker import RankSpec, event_topic, run_rank

DEFAULT_TIMEOUT_S = 60.0
LIVENESS_INTERVAL_S = 0.5  # how often the driver checks that every rank's worker is alive
ABORT_GRACE_S = 10.0  # how long aborted ranks get to return before their tasks are released


class WorkerLostError(RuntimeError):
    """A worker running a rank left the cluster during training."""


class SchedulerLostError(ConnectionError):
    """The client lost its Dask scheduler during training (a restart cannot help: resume from
    the latest checkpoint on a new cluster)."""


class JobCancelled(RuntimeError):
    """Training was stopped on request (the ``stop`` event of :func:`fit_on_cluster` was set)."""


# -- the workers ------------------------------------------------------------------------------
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


def _probe_worker(dask_worker) -> dict[str, Any]:
    """Runs on each worker's event loop (client.run): quick facts only."""
    import dask

    from .comm.dask import PLUGIN_NAME

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
        "has_plugin": PLUGIN_NAME in dask_worker.plugins,
    }


def _check_client(client) -> None:
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


def scheduler_workers(client) -> list[str]:
    """The workers' addresses, asked of the scheduler itself. (``Client.scheduler_info()`` answers
    from a cached copy, which a CI run once saw empty while both workers were there.)"""
    return list(client.sync(client.scheduler.identity, n_workers=-1)["workers"])


def cluster_ranks(client, workers: Sequence[str] | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> list[WorkerInfo]:
    """The workers to train on, in rank order: by host, then GPU index, then address."""
    _check_client(client)
    try:
        known = scheduler_workers(client)
    except OSError as exc:
        raise ConnectionError(f"Cannot reach the Dask scheduler at {client.scheduler.address}: {exc}") from None
    if not known:
        raise RuntimeError(
            "The Dask cluster has no workers: start some (e.g. `dask worker SCHEDULER_ADDRESS`) "
            "or wait for them with client.wait_for_workers(n)."
        )
    if workers is not None:
        if isinstance(workers, str) or not all(isinstance(w, str) for w in workers) or not workers:
            raise ValueError(f"workers= expects a non-empty list of worker addresses, received {workers!r}.")
        if len(set(workers)) != len(workers):
            raise ValueError(f"workers= lists a worker twice: {list(workers)!r}; one rank runs per worker.")
        missing = [w for w in workers if w not in known]
        if missing:
            raise ValueError(f"Workers {missing} are not in the cluster; known workers: {sorted(known)}.")
        known = list(workers)
    probes = client.run(_probe_worker, workers=known)
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


# -- the data ---------------------------------------------------------------------------------
@dataclass
class _Rows:
    """Rows [start, start + count) of a pair of sources: the training or the validation set."""

    x: Any
    y: Any
    start: int
    count: int

    def readers(self, lo: int, hi: int, client, worker: str):
        return (
            self.x.shard(self.start + lo, self.start + hi, client, worker),
            self.y.shard(self.start + lo, self.start + hi, client, worker),
        )


def _numpy_like(value: Any) -> bool:
    from .sources import Source

    if isinstance(value, (np.ndarray, list, tuple)):
        return True
    return not isinstance(value, (str, Source)) and not hasattr(value, "dask") and not hasattr(value, "__fspath__")


def _sources(model, x, y, validation_split: float, validation_data, client) -> tuple[_Rows, _Rows | None]:
    """Training and validation rows as sources, checked as far as the client can without
    reading files or computing Dask arrays."""
    from .sources import ArraySource, as_source, check_same_rows

    def pair(xv, yv, prefix: str, input_dim: int | None):
        if _numpy_like(xv) and _numpy_like(yv):  # in client memory: check everything here
            xa, ya = model._check_xy(xv, yv, name=prefix, input_dim=input_dim)
            return ArraySource(xa), ArraySource(ya)
        # Metadata only: a file's header or footers; table lengths and Dask chunks are counted
        # (persisted) on the cluster. Nothing of the data comes to the client.
        xs, ys = as_source(xv, f"{prefix}x").prepare(client), as_source(yv, f"{prefix}y").prepare(client)
        if len(xs.row_shape) != 1:
            raise ValueError(
                f"{prefix}x must be 2-D (samples, features); {xs.describe()} has rows of shape {xs.row_shape}."
            )
        expected = input_dim if input_dim is not None else model.input_dim
        if expected is not None and xs.row_shape[0] != expected:
            raise ValueError(
                f"{prefix}x has {xs.row_shape[0]} features per sample ({xs.describe()}), but the model expects "
                f"input_dim={expected}."
            )
        check_same_rows(xs, ys)
        if xs.n_rows == 0:
            raise ValueError(f"{prefix}x is empty ({xs.describe()}): it has no samples.")
        return xs, ys

    if x is None or y is None:
        raise ValueError("fit(..., client=) needs both x and y (arrays, Dask arrays or dtrain.from_* sources).")
    xs, ys = pair(x, y, "", None)
    train = _Rows(xs, ys, 0, xs.n_rows)
    validation = None
    if validation_data is not None:
        vx, vy = pair(*validation_data, "validation ", xs.row_shape[0])
        validation = _Rows(vx, vy, 0, vx.n_rows)
    elif validation_split:
        split_at = int(math.floor(train.count * (1.0 - validation_split)))  # the last rows, as Keras
        if split_at == 0 or split_at == train.count:
            raise ValueError(
                f"validation_split={validation_split} of {train.count} samples leaves {split_at} for training "
                f"and {train.count - split_at} for validation; both need at least one."
            )
        validation = _Rows(xs, ys, split_at, train.count - split_at)
        train = _Rows(xs, ys, 0, split_at)
    return train, validation


def _place_shards(plan: ShardPlan, ranks: Sequence[WorkerInfo], train: _Rows, client) -> list[list[int]]:
    """Which logical shards each rank trains on: as even a count as possible, each shard where
    most of its rows already are (Dask arrays), else consecutive shards per rank."""
    n = len(ranks)
    capacity = [plan.shards // n + (1 if r < plan.shards % n else 0) for r in range(n)]
    local = [train.x.locality(train.start + lo, train.start + hi, client) for lo, hi in plan.bounds]
    if not any(local):
        owned, next_shard = [], 0
        for count in capacity:
            owned.append(list(range(next_shard, next_shard + count)))
            next_shard += count
        return owned
    index = {w.address: r for r, w in enumerate(ranks)}
    owned = [[] for _ in ranks]
    preferences = sorted(
        (
            (-nbytes, shard, index[addr])
            for shard, held in enumerate(local)
            for addr, nbytes in held.items()
            if addr in index
        )
    )
    placed: set[int] = set()
    for _, shard, r in preferences:
        if shard not in placed and len(owned[r]) < capacity[r]:
            owned[r].append(shard)
            placed.add(shard)
    for shard in range(plan.shards):  # shards held nowhere (or only on full ranks)
        if shard not in placed:
            r = next(r for r in range(n) if len(owned[r]) < capacity[r])
            owned[r].append(shard)
    return [sorted(o) for o in owned]


def _split(count: int, parts: int) -> list[tuple[int, int]]:
    cuts = [p * count // parts for p in range(parts + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def _check_access(client, sources, ranks: Sequence[WorkerInfo]) -> None:
    """Every file is readable from every worker that will read it (a header at most)."""
    for source in sources:
        check = source.access_check()
        if check is None:
            continue
        answers = client.run(check, workers=[w.address for w in ranks])
        problems = [f"{addr}: {why}" for addr, why in answers.items() if why]
        if problems:
            raise FileNotFoundError(f"{source.describe()} cannot be read on every worker: " + "; ".join(problems))


def _model_bytes(model, local_batch: int) -> int:
    """Parameters, gradients, the summed gradient, the optimizer's scratch and slots, and the
    activations of one local batch."""
    itemsize = np.dtype(model.dtype).itemsize
    params = int(model.params.size) if model.built else 0
    slots = len(model.optimizer.slot_names)
    widths = sum(layer.units for layer in model.layers)
    return itemsize * (params * (4 + slots) + 4 * local_batch * widths)


def _check_memory(model, plan: ShardPlan, owned, ranks, train: _Rows, validation, val_split) -> None:
    """Refuse, before anything runs, a rank whose rows and model will not fit its worker."""
    for r, worker in enumerate(ranks):
        if worker.memory_limit is None:
            continue
        row_bytes = train.x.row_nbytes(model.dtype) + train.y.row_nbytes(model.dtype)
        rows = plan.local_rows(owned[r])
        need = rows * row_bytes
        if validation is not None:
            lo, hi = val_split[r]
            need += (hi - lo) * (validation.x.row_nbytes(model.dtype) + validation.y.row_nbytes(model.dtype))
        local_batch = max(1, -(-plan.batch_size * rows // plan.rows))
        need += _model_bytes(model, local_batch)
        usable = int(worker.memory_limit * (worker.pause_fraction or 1.0)) - worker.memory_used
        if need > usable:
            raise MemoryError(
                f"Rank {r} on worker {worker.address} needs about {_gib(need)} for its {rows} rows (shards "
                f"{owned[r]}) and the model, but the worker has {_gib(max(usable, 0))} usable (memory limit "
                f"{_gib(worker.memory_limit)}, Dask pauses it at {int((worker.pause_fraction or 1) * 100)}%, "
                f"{_gib(worker.memory_used)} in use). Use more workers, workers with more memory "
                "(dask worker --memory-limit), or less data per worker."
            )


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**27 else f"{nbytes / 2**20:.1f} MiB"


def _check_timeout(timeout: Any) -> float:
    if timeout is None:
        return DEFAULT_TIMEOUT_S
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"Expected timeout to be a positive number of seconds, received timeout={timeout!r}.")
    return float(timeout)


# -- fit ----------------------------------------------------------------------------------------
def fit_on_cluster(
    model,
    x: Any,
    y: Any,
    *,
    client,
    workers: Sequence[str] | None,
    shards: int | None,
    batch_size: int,
    epochs: int,
    verbose: int,
    callbacks: list,
    validation_split: float,
    validation_data,
    shuffle: bool,
    initial_epoch: int,
    seed: int,
    timeout: float | None,
    record_replica_hashes: bool = False,
    stop: threading.Event | None = None,
    checkpoints: recovery.CheckpointPolicy | None = None,
    resume_from: str | None = None,
    max_restarts: int = 0,
    on_nonfinite: str = "stop",
    checkpoint_extra: dict | None = None,
    on_restart: Callable[[int, str], None] | None = None,
    restart_workers: Callable[[list[str]], list[str]] | None = None,
    faults: list | None = None,
) -> callbacks_module.History:
    """``Sequential.fit(..., client=client)``: see the module docstring for the phases.

    ``stop`` (used by the job service): once set, every rank is aborted within a moment and
    :class:`JobCancelled` is raised. A run that fails in a way a restart can cure (a lost or
    stuck worker, a broken connection) restarts from the latest checkpoint in ``checkpoints``
    (else from its start) on the workers then alive, up to ``max_restarts`` times;
    ``on_restart(count, reason)`` hears of each; ``restart_workers(usable)`` (the job service)
    picks the workers of a restart among those usable, instead of all of them. ``checkpoint_extra`` is recorded in (and must
    match when resuming from) every checkpoint; ``faults`` are injected failures (tests)."""
    timeout = _check_timeout(timeout)
    for cb in callbacks:
        if getattr(cb, "restore_best_weights", False):
            raise ValueError(
                "EarlyStopping(restore_best_weights=True) is not supported with client= yet: during "
                "distributed training the weights live on the workers, and the client's model receives "
                "them only when fit returns. Use it without client=, or drop restore_best_weights."
            )
    ranks = cluster_ranks(client, workers)
    train, validation = _sources(model, x, y, validation_split, validation_data, client)
    if stop is not None and stop.is_set():  # preparing the sources can take a while
        raise JobCancelled("training was cancelled before it started")
    # The plan (shard count included) is fixed for the whole run, restarts too: that is what
    # keeps the maths the same when a restart has fewer workers.
    plan = ShardPlan(train.count, len(ranks) if shards is None else shards, batch_size)
    input_dim = train.x.row_shape[0]
    sources = [train.x, train.y] + ([validation.x, validation.y] if validation else [])
    sources = list({id(s): s for s in sources}.values())

    # The model's starting point is built here, exactly as single-process fit builds it.
    history = callbacks_module.History()
    cbs = model._callback_list(callbacks, history, verbose, plan, epochs, seed)
    model.build(input_dim, seed)
    meta = recovery.checkpoint_meta(model, plan, seed, shuffle, checkpoint_extra)
    if resume_from is not None:
        start = recovery.resume_point(resume_from, meta)
        recovery.restore(model, start)
    else:
        start = recovery.ResumePoint(epoch=initial_epoch)
    meta["run"] = start.run or recovery.new_run_id()  # a resumed run continues its lineage
    start.params = host_copy(model.params)
    start.optimizer = model.optimizer.get_state() if model.optimizer.iterations else None
    history.restore(start.history or [])
    run = _Run(
        client=client,
        model=model,
        cbs=cbs,
        plan=plan,
        train=train,
        validation=validation,
        sources=sources,
        input_dim=input_dim,
        timeout=timeout,
        seed=seed,
        shuffle=shuffle,
        epochs=epochs,
        stop=stop,
        wait_for_client=any(not getattr(cb, "observes_only", False) for cb in callbacks),
        record_replica_hashes=record_replica_hashes,
        checkpoints=checkpoints,
        meta=meta,
        on_nonfinite=on_nonfinite,
        faults=list(faults or []),
    )

    run.epochs_done = set(range(start.epoch))  # a resumed run's earlier epochs belong to an earlier fit
    model.stop_training = False
    cbs.on_train_begin()
    point, restarts = start, []
    while True:
        try:
            results, supervisor = run.attempt(ranks, point)
            break
        except BaseException as exc:
            if len(restarts) >= max_restarts or not _recoverable(exc):
                raise
            reason = f"{type(exc).__name__}: {exc}"
            restarts.append(reason)
            point = _restart_point(checkpoints, meta, start)
            if on_restart is not None:
                on_restart(len(restarts), reason)
            ranks = _surviving_ranks(client, workers, run.stuck, reason, restart_workers)

    # -- the trained model back in the client's hands -----------------------------------------
    rank0 = results[0]
    model.params[...] = model.backend.asarray(rank0["params"])
    model.optimizer.set_state(rank0["optimizer"])
    history.timing, history.step_times = _timing(results, plan)
    history.replica_hashes = [r["replica_hashes"] for r in results] if record_replica_hashes else None
    history.workers = list(run.ranks)
    history.placement = dict(run.placement)  # logical shards per worker
    history.device, history.communicator = run.device, run.comm_kind
    history.restarts = restarts
    history.skipped_steps = int(rank0.get("skipped_steps", 0))
    history.sharded_step = bool(rank0.get("sharded_step", False))
    model.history = history
    cbs.on_train_end(supervisor.logs)  # after the weights are back: callbacks may save the model
    return history


@dataclass
class _Run:
    """What stays the same across the attempts of one fit (a first start and its restarts)."""

    client: Any
    model: Any
    cbs: Any
    plan: ShardPlan
    train: Any
    validation: Any
    sources: list
    input_dim: int
    timeout: float
    seed: int
    shuffle: bool
    epochs: int
    stop: threading.Event | None
    wait_for_client: bool
    record_replica_hashes: bool
    checkpoints: Any
    meta: dict
    on_nonfinite: str
    faults: list
    # set by each attempt
    ranks: list = field(default_factory=list)
    placement: dict = field(default_factory=dict)
    device: str = "cpu"
    comm_kind: str = "local"
    stuck: list = field(default_factory=list)  # workers whose rank did not stop when aborted
    epochs_done: set = field(default_factory=set)

    def attempt(self, ranks: list[WorkerInfo], point: recovery.ResumePoint) -> tuple[list[dict], _Supervisor]:
        """Launch every rank from ``point`` and follow them to the end; returns their results."""
        from .comm.dask import PLUGIN_NAME, DtrainWorkerPlugin

        client, plan, model, validation = self.client, self.plan, self.model, self.validation
        ranks = ranks[: plan.shards]  # more workers than shards: the extra ones would have nothing to train on
        self.device = choose_device(model.requested_device, ranks)
        self.comm_kind = choose_communicator(self.device, ranks)
        _check_access(client, self.sources, ranks)
        owned = _place_shards(plan, ranks, self.train, client)
        val_split = _split(validation.count, len(ranks)) if validation is not None else None
        _check_memory(model, plan, owned, ranks, self.train, validation, val_split)
        self.ranks = [w.address for w in ranks]
        self.placement = {w.address: owned[r] for r, w in enumerate(ranks)}

        if not all(w.has_plugin for w in ranks):  # a peer without it would never answer
            client.register_plugin(DtrainWorkerPlugin(), name=PLUGIN_NAME)
        job_id = f"fit-{uuid.uuid4().hex[:12]}"  # new for every attempt: new task keys, events, NCCL id
        nccl_id = None
        if self.comm_kind == "nccl":
            from .comm.nccl import make_unique_id

            nccl_id = client.submit(make_unique_id, workers=[ranks[0].address], pure=False).result()

        initial = {
            "params": point.params,
            "optimizer": point.optimizer,
            "totals": point.totals,
            "history": point.history,
        }
        supervisor = _Supervisor(client, job_id, ranks, self.cbs, model, self.timeout, self.wait_for_client, self.stop)
        # The callbacks see each epoch once. Epochs after the checkpoint are trained again but
        # not reported again; epochs the checkpoint holds whose end never reached the client
        # (rank 0 died between writing and reporting) are reported now.
        supervisor.epochs_done = self.epochs_done
        for epoch, logs in enumerate(point.history or []):
            supervisor._epoch_end(epoch, logs, notify=False)
        try:
            with supervisor.running():  # from here on, any error or Ctrl-C aborts every rank
                # Only rank 0 receives the weights; it broadcasts them to the others.
                [initial_future] = client.scatter([initial], workers=[ranks[0].address], hash=False)
                for r, worker in enumerate(ranks):
                    readers: dict[str, list] = {"x": [], "y": [], "val_x": [], "val_y": []}
                    for shard in owned[r]:
                        xr, yr = self.train.readers(*plan.bounds[shard], client, worker.address)
                        readers["x"].append(xr)
                        readers["y"].append(yr)
                    if validation is not None and val_split[r][1] > val_split[r][0]:
                        xr, yr = validation.readers(*val_split[r], client, worker.address)
                        readers["val_x"].append(xr)
                        readers["val_y"].append(yr)
                    dependencies = {key: [reader.dependencies for reader in value] for key, value in readers.items()}
                    spec = RankSpec(
                        job_id=job_id,
                        rank=r,
                        peers=self.ranks,
                        worker_id=worker.worker_id,
                        model_config=model.get_config(),
                        compile_config=model.compile_config(),
                        input_dim=self.input_dim,
                        device=self.device,
                        comm=self.comm_kind,
                        timeout=self.timeout,
                        rows=plan.rows,
                        shards=plan.shards,
                        batch_size=plan.batch_size,
                        owned=owned[r],
                        seed=self.seed,
                        shuffle=self.shuffle,
                        epochs=self.epochs,
                        initial_epoch=point.epoch,
                        start_step=point.step,
                        has_validation=validation is not None,
                        wait_for_client=self.wait_for_client,
                        record_replica_hashes=self.record_replica_hashes,
                        nccl_id=nccl_id,
                        checkpoint=self.checkpoints,
                        checkpoint_meta=self.meta,
                        on_nonfinite=self.on_nonfinite,
                        faults=self.faults,
                    )
                    supervisor.futures.append(
                        client.submit(
                            run_rank,
                            spec,
                            readers,
                            dependencies,
                            initial_future if r == 0 else None,
                            key=f"dtrain-{job_id}-rank-{r}",
                            workers=[worker.address],
                            allow_other_workers=False,
                            pure=False,
                            retries=0,
                        )
                    )
                self.faults = []  # injected failures strike once, not again after a restart
                results = supervisor.follow(point.epoch, self.epochs)
        finally:
            self.stuck = supervisor.stuck
        return results, supervisor


def _recoverable(exc: BaseException) -> bool:
    """Failures a restart on the workers left can cure: a lost or stuck worker, a broken
    connection or a deadline (the step deadline of a hung rank). Not: the data, the maths
    (NaN), a cancel, Ctrl-C, or a scheduler that cannot be reached."""
    from distributed import KilledWorker
    from distributed.comm import CommClosedError

    from .comm import CommError

    if isinstance(exc, (JobCancelled, recovery.NonFiniteError, KeyboardInterrupt, SchedulerLostError)):
        return False
    # Connection failures only: a full disk or a missing file fails the same way again.
    connection = (CommClosedError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError)
    return isinstance(exc, (WorkerLostError, CommError, KilledWorker, TimeoutError, *connection))


def _restart_point(policy, meta: dict, start: recovery.ResumePoint) -> recovery.ResumePoint:
    """Where a restart begins: this run's latest good checkpoint, else the run's own start."""
    from .checkpoints import CheckpointError

    if policy is None:
        return start
    try:
        with warnings.catch_warnings():  # other runs' checkpoints in the folder are expected here
            warnings.simplefilter("ignore")
            point = recovery.resume_point(policy.directory, meta, same_run=True)
    except CheckpointError:  # none of this run is good (or none yet): from the start
        return start
    return point if (point.epoch, point.step) >= (start.epoch, start.step) else start


def _surviving_ranks(client, workers, stuck: list[str], reason: str, choose=None) -> list[WorkerInfo]:
    """The workers a restart runs on: those still in the cluster (of ``workers=``, when given),
    joined ones included, minus those whose rank did not stop (they are restarted, and serve
    again at a later restart); ``choose`` may narrow them (the job service's allocation)."""
    alive = set(scheduler_workers(client))
    if stuck:
        try:
            client.restart_workers([w for w in stuck if w in alive], timeout=60, raise_for_error=False)
        except Exception:
            pass
    usable = [w for w in sorted(alive) if w not in stuck]
    if choose is not None:
        candidates = [w for w in choose(usable) if w in usable]
    else:
        candidates = [w for w in (workers or usable) if w in usable]
    if not candidates:
        raise WorkerLostError(f"No worker left to restart on after: {reason}")
    return cluster_ranks(client, candidates)


# -- supervision --------------------------------------------------------------------------------
class _Supervisor:
    """Follows the rank tasks from the client: progress events to callbacks, failures, lost
    workers, Ctrl-C. Runs in the caller's thread; Dask events arrive on the client's event
    loop and are handed over through a queue."""

    def __init__(self, client, job_id, ranks, cbs, model, timeout, wait_for_client: bool, stop=None):
        self.client, self.job_id, self.ranks = client, job_id, ranks
        self.cbs, self.model, self.timeout, self.wait_for_client = cbs, model, timeout, wait_for_client
        self.futures: list = []
        self.stop = stop
        self.stuck: list[str] = []  # workers whose rank was still running after an abort
        self.events: queue.Queue = queue.Queue()
        self.epoch_open: int | None = None
        self.epochs_done: set[int] = set()
        self.epochs = 0
        self.logs: dict[str, float] = {}

    @contextlib.contextmanager
    def running(self):
        """Subscribed to the job's events; on any exception (Ctrl-C included) every rank is
        aborted and every task of the job released before the exception goes on."""
        topic = event_topic(self.job_id)
        self.client.subscribe_topic(topic, self.events.put)
        try:
            yield
        except BaseException as exc:
            self._abort(exc)
            raise
        finally:
            self.client.unsubscribe_topic(topic)

    def follow(self, initial_epoch: int, epochs: int) -> list[dict]:
        """Until every rank has returned; then every rank's result."""
        self.epochs = epochs
        if initial_epoch < epochs:  # the workers start the first epoch now
            self._begin(initial_epoch)
        self._follow()
        # Finished futures hold results on their workers; a worker that dies right now would
        # leave the fetch waiting for a re-run that cannot happen: bound it.
        results = [f.result(timeout=self.timeout) for f in self.futures]
        # Epochs whose events did not arrive (they travel separately from results) still reach
        # the callbacks, from rank 0's own record.
        for offset, logs in enumerate(results[0]["history"]):
            self._epoch_end(initial_epoch + offset, logs, notify=False)
        return results

    def _abort(self, exc: BaseException) -> None:
        from .comm.dask import abort_on_worker

        reason = (
            "interrupted on the client (Ctrl-C)"
            if isinstance(exc, KeyboardInterrupt)
            else f"{type(exc).__name__}: {exc}"
        )
        try:  # only the workers still there: a call to a dead one waits for the connect timeout
            alive = self._alive_addresses()
            targets = [w.address for w in self.ranks if w.address in alive]
        except Exception:
            targets = [w.address for w in self.ranks]
        try:
            self.client.run(
                abort_on_worker, self.job_id, f"training aborted: {reason}", workers=targets, on_error="ignore"
            )
        except Exception:  # the scheduler is unreachable: the ranks' own deadlines stop them
            pass
        self._release()

    def _follow(self) -> None:
        next_liveness = time.monotonic()
        while True:
            try:
                _, message = self.events.get(timeout=0.05)
                self._on_event(message)
                continue
            except queue.Empty:
                pass
            if self.stop is not None and self.stop.is_set():
                raise JobCancelled("training was cancelled")
            statuses = [f.status for f in self.futures]
            gone = [r for r, status in enumerate(statuses) if status in ("cancelled", "lost")]
            if "error" in statuses or gone:
                if "error" in statuses:
                    error = self._first_error()
                else:
                    error = RuntimeError(
                        f"The task of rank {gone[0]} was {statuses[gone[0]]} by the scheduler (did the client lose "
                        "its connection, or was the task cancelled elsewhere?); training was stopped on every rank."
                    )
                try:  # caused by a lost worker (the scheduler also cancels tasks whose data died): say that
                    self._check_workers_alive()
                except WorkerLostError as lost:
                    raise lost from error
                raise error
            if all(status == "finished" for status in statuses):
                return
            if time.monotonic() >= next_liveness:
                self._check_workers_alive()
                next_liveness = time.monotonic() + LIVENESS_INTERVAL_S

    def _on_event(self, message: dict) -> None:
        epoch = message["epoch"]
        if epoch in self.epochs_done:  # trained again after a restart: its callbacks ran the first time
            if message["kind"] == "epoch":
                self._answer(epoch)
            return
        self._begin(epoch)
        if message["kind"] == "progress":
            self.cbs.on_train_batch_end(message["step"], message["logs"])
        else:
            self._epoch_end(epoch, message["logs"], notify=True)

    def _epoch_end(self, epoch: int, logs: dict, notify: bool) -> None:
        if epoch in self.epochs_done:
            return
        self._begin(epoch)
        self.cbs.on_epoch_end(epoch, logs)
        self.epochs_done.add(epoch)
        self.epoch_open = None
        self.logs = logs
        if notify:
            self._answer(epoch)
        if notify and not self.model.stop_training and epoch + 1 < self.epochs:
            self._begin(epoch + 1)  # the workers go straight on: the progress bar times from here

    def _answer(self, epoch: int) -> None:
        """Rank 0 waits for this answer before it starts the next epoch (EarlyStopping...)."""
        from .comm.dask import deliver_on_worker

        if self.wait_for_client:
            self.client.run(
                deliver_on_worker,
                self.job_id,
                "driver",
                f"epoch-{epoch}",
                bool(self.model.stop_training),
                workers=[self.ranks[0].address],
            )

    def _begin(self, epoch: int) -> None:
        if self.epoch_open != epoch and epoch not in self.epochs_done:
            self.cbs.on_epoch_begin(epoch)
            self.epoch_open = epoch

    def _first_error(self) -> BaseException:
        """The original error: a rank's own failure rather than a peer's resulting abort."""
        from .comm import Aborted

        deadline = time.monotonic() + 2.0
        while True:
            errors = [f.exception() for f in self.futures if f.status == "error"]
            original = [e for e in errors if not isinstance(e, Aborted)]
            if original or time.monotonic() > deadline or all(f.done() for f in self.futures):
                break
            time.sleep(0.05)
        chosen = original[0] if original else errors[0]
        future = next(f for f in self.futures if f.status == "error" and f.exception() is chosen)
        return chosen.with_traceback(future.traceback())

    def _alive_addresses(self) -> set[str]:
        # A client that lost its scheduler answers from a stale (or emptied) copy of the worker
        # list: ask whether it is still connected first, or a lost scheduler looks like lost workers.
        # (Client.scheduler_info() would not do: it answers from its cache when the call fails.)
        problem = None
        if self.client.status != "running":
            problem = f"the client is {self.client.status}"
        else:
            try:
                alive = set(scheduler_workers(self.client))
            except OSError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if self.client.status == "running":
                    return alive
                problem = f"the client is {self.client.status}"
        raise SchedulerLostError(
            f"Lost the Dask scheduler at {self.client.scheduler.address} during training ({problem}). Start a new "
            "cluster and fit again with resume_from= the checkpoint directory (jobs: `dtrain resume OUTPUT`) to go "
            "on from the latest checkpoint."
        )

    def _check_workers_alive(self) -> None:
        alive = self._alive_addresses()
        lost = [(r, w.address) for r, w in enumerate(self.ranks) if w.address not in alive]
        if lost:
            r, address = lost[0]
            raise WorkerLostError(
                f"Worker {address} (rank {r}) left the cluster during training; the job was stopped on every "
                "rank. Check that worker's logs (memory limit? killed?), then run fit again."
            )

    def _release(self) -> None:
        """Give aborted ranks a moment to return, then release every task of the job."""
        deadline = time.monotonic() + ABORT_GRACE_S
        while time.monotonic() < deadline and not all(f.done() for f in self.futures):
            time.sleep(0.05)
        # A rank still running now ignores the abort (stuck in a step): its worker's thread is
        # taken until it returns, so a restart must not count on that worker.
        self.stuck = [self.ranks[r].address for r, f in enumerate(self.futures) if not f.done()]
        try:
            self.client.cancel(self.futures)
        except Exception:
            pass


def _timing(results: list[dict], plan: ShardPlan) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Per-step time split into compute, communication and waiting, from every rank's record.

    Steps start together on every rank (each leaves the same allreduce), so a rank waits for
    the slowest one: waiting = slowest compute - own compute; the rest of its allreduce time
    is communication; overhead is what the step spent outside both (bookkeeping, reporting).
    """
    compute = np.stack([r["times"]["compute"] for r in results])
    allreduce = np.stack([r["times"]["allreduce"] for r in results])
    step = np.stack([r["times"]["step"] for r in results])
    if compute.shape[1] == 0:
        return {}, {}
    waiting = np.minimum(compute.max(axis=0, keepdims=True) - compute, allreduce)
    communication = allreduce - waiting
    overhead = np.maximum(step - compute - allreduce, 0.0)
    per_step = {
        "compute": compute,
        "communication": communication,
        "waiting": waiting,
        "overhead": overhead,
        "step": step,
    }
    median_step = float(np.median(step.max(axis=0)))
    summary = {f"{name}_ms": float(np.median(values.mean(axis=0))) * 1e3 for name, values in per_step.items()}
    summary["samples_per_s"] = plan.batch_size / median_step if median_step > 0 else float("nan")
    return summary, per_step


# -- evaluate and predict -----------------------------------------------------------------------
def _replica_for_inference(config: dict, compile_config: dict | None, params: np.ndarray, input_dim: int, device: str):
    from .model import Sequential

    model = Sequential.from_config(config, device=device)
    if compile_config is not None:
        model.compile(**compile_config)
    model.build(input_dim, seed=0)
    model.params[...] = model.backend.asarray(params)
    return model


def _evaluate_part(config, compile_config, params, input_dim, device, batch_size, readers, dependencies) -> np.ndarray:
    """Runs on a worker: loss and metric sums over one part of the rows."""
    from .data import check_features, check_targets

    model = _replica_for_inference(config, compile_config, params, input_dim, device)
    (x_reader, y_reader), (x_deps, y_deps) = readers, dependencies
    where = f"rows {x_reader.start}..{x_reader.stop - 1}"
    x = check_features(x_reader.load(x_deps), input_dim, model.dtype, name=f"x ({where})")
    y = check_targets(y_reader.load(y_deps), len(x), model.loss, model.output_units, model.dtype, name=f"y ({where})")
    return model._evaluation_totals(x, y, batch_size).to_array()


def _predict_part(config, params, input_dim, device, batch_size, reader, dependencies) -> np.ndarray:
    from .data import check_features

    model = _replica_for_inference(config, None, params, input_dim, device)
    x = check_features(
        reader.load(dependencies), input_dim, model.dtype, name=f"x (rows {reader.start}..{reader.stop - 1})"
    )
    return model.predict(x, batch_size=batch_size)


def _inference_parts(model, client, workers, rows: _Rows):
    """Even row ranges, one per worker, with the weights sent once to each of those workers."""
    ranks = cluster_ranks(client, workers)
    ranks = ranks[: rows.count]
    device = choose_device(model.requested_device, ranks)
    _check_access(client, {id(s): s for s in (rows.x, rows.y) if s is not None}.values(), ranks)
    [params] = client.scatter([host_copy(model.params)], workers=[w.address for w in ranks], broadcast=True, hash=False)
    return ranks, device, params, _split(rows.count, len(ranks))


def evaluate_on_cluster(model, x, y, *, client, workers, batch_size: int) -> dict[str, float]:
    """``Sequential.evaluate(..., client=client)``: each worker evaluates its part of the rows
    where the data is; the client adds up the sums (in a fixed order: same result every run)."""
    from .model import Totals

    rows, _ = _sources(model, x, y, 0.0, None, client)
    ranks, device, params, parts = _inference_parts(model, client, workers, rows)
    futures = []
    for worker, (lo, hi) in zip(ranks, parts):
        readers = rows.readers(lo, hi, client, worker.address)
        futures.append(
            client.submit(
                _evaluate_part,
                model.get_config(),
                model.compile_config(),
                params,
                model.input_dim,
                device,
                batch_size,
                readers,
                [r.dependencies for r in readers],
                workers=[worker.address],
                pure=False,
            )
        )
    total = np.sum(client.gather(futures), axis=0)
    return Totals.from_array([m.name for m in model.metrics], total).logs()


def predict_on_cluster(model, x, *, client, workers, batch_size: int) -> np.ndarray:
    """``Sequential.predict(..., client=client)``: each worker predicts its part of the rows;
    the outputs come back to the client as one NumPy array, in row order."""
    from .sources import ArraySource, as_source

    if _numpy_like(x):
        from .data import check_features

        source = ArraySource(check_features(x, model.input_dim, model.dtype))
    else:
        source = as_source(x, "x").prepare(client)
        if source.row_shape != (model.input_dim,):
            raise ValueError(
                f"x has rows of shape {source.row_shape} ({source.describe()}), but the model expects "
                f"input_dim={model.input_dim}."
            )
        if source.n_rows == 0:
            raise ValueError(f"x is empty ({source.describe()}): there is nothing to predict.")
    rows = _Rows(source, None, 0, source.n_rows)
    ranks, device, params, parts = _inference_parts(model, client, workers, rows)
    futures = []
    for worker, (lo, hi) in zip(ranks, parts):
        reader = source.shard(lo, hi, client, worker.address)
        futures.append(
            client.submit(
                _predict_part,
                model.get_config(),
                params,
                model.input_dim,
                device,
                batch_size,
                reader,
                reader.dependencies,
                workers=[worker.address],
                pure=False,
            )
        )
    return np.concatenate(client.gather(futures))
