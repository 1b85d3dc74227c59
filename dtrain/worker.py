"""The per-worker training loop: one long-lived "rank" task per Dask worker (SPMD).

Every rank runs the same program on its own shards of the data:

    check identity -> load shards -> build replica -> broadcast weights from rank 0 ->
    for each step: forward, loss, backward (model.compute_gradients), sum the flat gradient
    buffer over the ranks, optimizer step (model.apply_gradients) -> epoch metrics (allreduce
    of sums) -> report -> return the weights (rank 0) and step timings (every rank).

The sum and the step are *sharded* on CPU communicators (see ``_gradient_buffers``): each rank
sums only its part of the gradient (reduce-scatter), updates only that part of the weights,
and the ranks then copy each other's updated parts (allgather). It moves the bytes of one
allreduce, and each rank adds and updates 1/size of the buffer instead of all of it.

Everything a rank needs arrives as plain data (``RankSpec``: model config, compile config,
plan, not pickled model objects) plus shard readers; the client-side launch and supervision
live in ``driver``. This module runs inside the task thread of a Dask worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backend import host_copy
from .data import BatchGatherer, check_features, check_targets
from .model import Sequential, Totals
from .recovery import FiniteCheck, take_step
from .recovery import write as write_checkpoint
from .sampling import EpochSampler, ShardPlan

PROGRESS_INTERVAL_S = 0.25  # rank 0 reports progress at most this often (events go via the scheduler)
STARTUP_TIMEOUT_S = 600.0  # how long ranks wait for each other while loading their shards
# Gradients smaller than this are summed with one allreduce and every rank updates all of the
# weights: a sharded step has three round trips (reduce-scatter, the finite verdict, allgather)
# where the allreduce has one, and saves the add, the check and the update of (size-1)/size of
# the buffer. Measured on 2 workers (2 cores, batch 512, sharded against not, two alternating
# runs each): 784-64-10 (0.2 MB of gradient) 1.60/1.75 against 1.12/1.25 ms a step;
# 784-256-256-10 (1.07 MB) 4.9/5.1 against 4.9/8.0 ms (with Adam 5.4/5.5 against 5.8/5.1);
# 784-512-512-10 (2.7 MB) 11.4/10.9 against 12.0 (and 19.2, a noisy run) ms (Adam 13.0/12.0
# against 13.6/15.2); 784-1024-1024-10 (7.4 MB) 1.7 ms a step faster.
SHARDED_STEP_MIN_BYTES = 2 * 2**20
CHECKPOINT_TIMEOUT_S = 600.0  # how long ranks wait for rank 0 to write a checkpoint


@dataclass
class RankSpec:
    """What one rank needs to know, as plain data."""

    job_id: str
    rank: int
    peers: list[str]  # worker addresses in rank order
    worker_id: str  # Worker.id at launch: a restarted worker must not re-run the rank
    model_config: dict[str, Any]
    compile_config: dict[str, Any]
    input_dim: int
    device: str  # "cpu" | "gpu"
    comm: str  # communicator kind (see dtrain.comm)
    timeout: float
    rows: int  # training rows (the plan)
    shards: int
    batch_size: int
    owned: list[int]  # logical shards this rank trains on, in this order
    seed: int
    shuffle: bool
    epochs: int
    initial_epoch: int
    start_step: int = 0  # steps of initial_epoch already done (resuming from a checkpoint)
    has_validation: bool = False  # the job validates (every rank joins the allreduce)
    wait_for_client: bool = False  # rank 0 waits for the client's continue/stop after each epoch
    record_replica_hashes: bool = False  # tests: a hash of the weights after every step
    nccl_id: Any = None
    checkpoint: Any = None  # a recovery.CheckpointPolicy: rank 0 writes checkpoints
    checkpoint_meta: dict | None = None  # what a checkpoint records about the run (recovery.checkpoint_meta)
    on_nonfinite: str = "stop"  # "stop" | "skip" a step whose summed gradient is not finite
    faults: list = field(default_factory=list)  # tests only: injected failures (see _inject)

    @property
    def size(self) -> int:
        return len(self.peers)

    @property
    def topic(self) -> str:
        return event_topic(self.job_id)


def event_topic(job_id: str) -> str:
    return f"dtrain-{job_id}"


class StepTimes:
    """Seconds per step: local work (batch, forward, backward, update), collectives (the
    allreduce, or a sharded step's reduce-scatter, verdict and allgather; recorded as
    "allreduce"), whole step.
    Preallocated for every step the run can take, so recording them allocates nothing per step."""

    def __init__(self, steps: int) -> None:
        self._table = np.zeros((3, max(steps, 0)), dtype=np.float64)
        self.count = 0

    def record(self, compute: float, allreduce: float, step: float) -> None:
        self._table[:, self.count] = (compute, allreduce, step)
        self.count += 1

    def as_arrays(self) -> dict[str, np.ndarray]:
        used = self._table[:, : self.count]
        return {"compute": used[0].copy(), "allreduce": used[1].copy(), "step": used[2].copy()}


def run_rank(spec: RankSpec, readers: dict[str, list], dependencies: dict[str, list], initial: dict | None) -> dict:
    """The rank task (runs in a worker's task thread). ``readers`` holds the shard readers
    ("x", "y", "val_x", "val_y"), ``dependencies`` the values Dask resolved for them, and
    ``initial`` (rank 0 only) the client model's weights and optimizer state."""
    from distributed import get_worker

    from .comm import Aborted, make_communicator
    from .comm.dask import get_plugin

    worker = get_worker()
    # A worker that died and came back at the same address makes the scheduler re-run its
    # pinned task from scratch, alone: refuse, the driver reports the lost worker.
    if worker.id != spec.worker_id:
        raise RuntimeError(
            f"Rank {spec.rank} of job {spec.job_id} was started again on a restarted worker "
            f"({worker.address}); a restarted worker never re-runs a rank. Run fit again."
        )
    plugin = get_plugin(worker)
    plugin.open_job(spec.job_id)
    comm = None
    try:
        # Start-up waits (for the slowest rank to load its rows) may be long; the driver watches
        # the workers meanwhile. Between steps every wait is bounded by spec.timeout.
        comm = make_communicator(
            spec.comm,
            job_id=spec.job_id,
            rank=spec.rank,
            size=spec.size,
            peers=spec.peers,
            timeout=max(spec.timeout, STARTUP_TIMEOUT_S),
            nccl_id=spec.nccl_id,
        )
        with _blas_threads(worker), _quiet_monitoring(worker):
            return _train(spec, comm, worker, readers, dependencies, initial)
    except Aborted:
        raise
    except BaseException as exc:  # tell the peers at once, so that they stop waiting for this rank
        reason = f"rank {spec.rank} on {worker.address} failed: {type(exc).__name__}: {exc}"
        if comm is not None:
            comm.abort(reason)
        else:
            plugin.abort_job(spec.job_id, reason)
        raise
    finally:
        if comm is not None:
            comm.close()
        plugin.close_job(spec.job_id)


def _gradient_buffers(model: Sequential, comm) -> tuple[Any, bool]:
    """Where the summed gradient goes, and whether the step is sharded.

    Where the communicator has memory its peers on this machine read uncopied, the gradients
    move into it (the backward pass writes them there and the peers add from there) and the sum
    gets a buffer of its own. Measured on 2 cores (784-1024-1024-10, 2 workers, alternating
    runs), without the copy of the 7.4 MB gradient into shared memory the allreduce took
    1.17-1.28 ms a step instead of 1.38-1.63 ms.

    A sharded step (CPU communicators, 2+ ranks, gradients of SHARDED_STEP_MIN_BYTES or more)
    also moves the weights into shared memory, where the peers copy this rank's updated part
    from. Otherwise the sum is made in ``model.grads`` itself when nothing is shared."""
    sharded = (
        comm.size > 1 and getattr(comm, "has_reduce_scatter", False) and model.grads.nbytes >= SHARDED_STEP_MIN_BYTES
    )
    shared = comm.shared_array(model.grads.size, model.grads.dtype)
    if shared is not None:
        model.use_gradient_buffer(shared)
    if sharded:
        shared_params = comm.shared_array(model.params.size, model.params.dtype)
        if shared_params is not None:
            model.use_parameter_buffer(shared_params)
    if shared is None and not sharded:
        return model.grads, False
    return model.backend.xp.empty_like(model.grads), sharded


class _Stopwatch:
    """Adds up the seconds spent in its ``with`` blocks; :meth:`take` returns the sum and resets it."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.seconds += time.perf_counter() - self._start

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def _blas_threads(worker):
    """The rank's BLAS uses as many threads as its worker has (``--nthreads``), no more.

    Dask's nanny means to start workers with one BLAS thread, but an OMP_NUM_THREADS or
    OPENBLAS_NUM_THREADS set where the cluster was started wins over it: measured on 2 cores
    with OPENBLAS_NUM_THREADS=2 in the client's environment, two workers of 1 thread each ran
    2 BLAS threads each and their step took 63 ms instead of 34 ms. The rank owns its
    worker's only task slot, so the worker's thread count is its share of the machine."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=max(1, int(worker.state.nthreads)), user_api="blas")


# While a rank runs, its worker samples less: Dask's statistical profiler wakes the worker's event
# loop every 10 ms to walk the rank thread's stack (taking the GIL from it), and the event-loop
# "tick" check runs every 20 ms. On 2 cores, with both cores busy with ranks, every such wake-up
# preempts a rank: measured with 2 workers each running the 256-row step of 784-1024-1024-10
# with no communication, the step's computation took 31-36 ms under Dask's defaults and
# 30-31 ms with these callbacks (and the monitors) slowed, against 29 ms in bare processes.
# The profile of a one-task-per-worker training job is one stack anyway; both come back after.
QUIET_CALLBACKS = {"profile": None, "tick": 1000.0}  # None: stopped; a number: its period in ms
_quiet_lock = threading.Lock()  # held while a worker's callbacks change: enter and exit never interleave
_quiet_ranks: dict[int, list] = {}  # id(worker) -> [ranks running, {name: period before the first}]


@contextlib.contextmanager
def _quiet_monitoring(worker):
    """Stop the worker's profiler and slow its tick while ranks run on it; the last rank out
    puts them back. (Reference-counted: two fits may share a worker.)"""
    with _quiet_lock:
        entry = _quiet_ranks.setdefault(id(worker), [0, {}])
        entry[0] += 1
        if entry[0] == 1:
            entry[1] = _on_loop(worker, _set_callbacks, worker, QUIET_CALLBACKS)
    try:
        yield
    finally:
        with _quiet_lock:
            entry[0] -= 1
            if entry[0] == 0:
                del _quiet_ranks[id(worker)]
                if entry[1]:
                    _on_loop(worker, _set_callbacks, worker, entry[1])


def _set_callbacks(worker, settings: dict) -> dict:
    """Apply ``settings`` to the worker's periodic callbacks (event loop); return what they were."""
    before = {}
    for name, period in settings.items():
        callback = worker.periodic_callbacks.get(name)
        if callback is None:
            continue
        before[name] = callback.callback_time if callback.is_running() else None
        if period is None:
            callback.stop()
        else:
            callback.callback_time = period
            if not callback.is_running():
                callback.start()
    return before


def _on_loop(worker, fn, *args):
    """Run ``fn(*args)`` on the worker's event loop and return its result (from the task thread)."""

    async def call():
        return fn(*args)

    future = asyncio.run_coroutine_threadsafe(call(), worker.loop.asyncio_loop)
    try:
        return future.result(timeout=10)
    except Exception:  # a closing worker: monitoring is not worth failing the rank for
        future.cancel()  # not applied later with nothing recorded to undo it
        return {}


def _load(readers: Sequence, dependencies: Sequence) -> list[np.ndarray]:
    return [reader.load(deps) for reader, deps in zip(readers, dependencies)]


def _rows_label(readers: Sequence) -> str:
    spans = [f"{r.start}..{r.stop - 1}" for r in readers]
    return "rows " + ", ".join(spans) if spans else "no rows"


def _load_checked(model: Sequential, spec: RankSpec, readers, dependencies, x_key: str, y_key: str, what: str):
    """This rank's rows of x and y, checked like single-process fit checks them."""
    xs, ys = _load(readers[x_key], dependencies[x_key]), _load(readers[y_key], dependencies[y_key])
    where = f"{what} {_rows_label(readers[x_key])}"
    if not xs or sum(len(part) for part in xs) == 0:
        return None, None
    x = np.concatenate(xs) if len(xs) > 1 else xs[0]
    y = np.concatenate(ys) if len(ys) > 1 else ys[0]
    x = check_features(x, spec.input_dim, model.dtype, name=f"x ({where})")
    y = check_targets(
        y, len(x), model.loss, model.output_units, model.dtype, name=f"y ({where})", x_name=f"x ({where})"
    )
    # Aligned rows (a copy only where the transport left them misaligned): every batch is
    # gathered from them, and a misaligned gather costs ~10% of a step.
    return np.require(x, requirements=["C", "A"]), np.require(y, requirements=["C", "A"])


def _build_replica(model: Sequential, spec: RankSpec, comm, initial: dict | None) -> None:
    """The same network on every rank: rank 0 sets the client's weights (and optimizer state),
    then broadcasts them, so all replicas start bitwise identical."""
    model.build(spec.input_dim, seed=spec.seed)
    if spec.rank == 0 and initial is not None:
        model.params[...] = model.backend.asarray(initial["params"])
        if initial.get("optimizer"):
            model.optimizer.set_state(initial["optimizer"])
    comm.broadcast(model.params, root=0)
    for slot in model.optimizer.slots.values():
        comm.broadcast(slot, root=0)
    iterations = np.array([model.optimizer.iterations], dtype=np.float64)
    comm.broadcast(iterations, root=0)
    model.optimizer.iterations = int(iterations[0])


class _Reporter:
    """Rank 0's live progress, as Dask events (Worker.log_event) the client subscribes to."""

    def __init__(self, spec: RankSpec, worker):
        self.enabled, self.topic, self.worker = spec.rank == 0, spec.topic, worker
        self._last = 0.0

    def progress(self, epoch: int, step: int, logs: dict[str, float]) -> None:
        now = time.monotonic()
        if self.enabled and now - self._last >= PROGRESS_INTERVAL_S:
            self._last = now
            self.worker.log_event(self.topic, {"kind": "progress", "epoch": epoch, "step": step, "logs": logs})

    def epoch_end(self, epoch: int, logs: dict[str, float], seconds: float) -> None:
        if self.enabled:
            self.worker.log_event(self.topic, {"kind": "epoch", "epoch": epoch, "logs": logs, "seconds": seconds})


def _train(spec: RankSpec, comm, worker, readers, dependencies, initial) -> dict:
    # -- this rank's data, then the replica -----------------------------------------------------
    model = Sequential.from_config(spec.model_config, device=spec.device)
    model.compile(**spec.compile_config)  # the loss decides the form of the targets
    x, y = _load_checked(model, spec, readers, dependencies, "x", "y", "training")
    val_x = val_y = None
    if spec.has_validation:
        val_x, val_y = _load_checked(model, spec, readers, dependencies, "val_x", "val_y", "validation")
    _build_replica(model, spec, comm, initial)  # waits for every rank to have loaded
    comm.set_timeout(spec.timeout)
    xp = model.backend.xp
    gradient_sum, sharded = _gradient_buffers(model, comm)
    talking = _Stopwatch()  # time spent in collectives during a step
    plan = ShardPlan(spec.rows, spec.shards, spec.batch_size)
    sampler = EpochSampler(plan, spec.owned, spec.seed, spec.shuffle)
    if x is None or len(x) != sampler.rows:
        raise ValueError(
            f"Rank {spec.rank} received {0 if x is None else len(x)} training rows for shards {spec.owned}, "
            f"expected {sampler.rows}: the data changed between planning and loading."
        )
    on_device = model.backend.device != "cpu"
    if on_device:  # the shard lives on the GPU; batches are gathered there
        x_all, y_all = xp.asarray(x), xp.asarray(y)
    else:
        x_rows, y_rows = BatchGatherer(x), BatchGatherer(y)

    def batch(rows):
        if isinstance(rows, slice):
            return (x_all[rows], y_all[rows]) if on_device else (x[rows], y[rows])
        if on_device:
            index = xp.asarray(rows)
            return x_all[index], y_all[index]
        return x_rows.take(rows), y_rows.take(rows)

    reporter = _Reporter(spec, worker)
    names = [m.name for m in model.metrics]
    times = StepTimes((spec.epochs - spec.initial_epoch) * plan.steps - spec.start_step)
    replica_hashes: list[str] = []
    resumed = initial or {}
    history: list[dict[str, float]] = []  # the epochs this run trains
    before: list[dict[str, float]] = list(resumed.get("history") or [])  # epochs done before a resume
    stop = np.zeros(1, dtype=np.float64)
    finite = FiniteCheck(xp, model.grads)
    verdict = np.zeros(1)
    policy = spec.checkpoint
    skipped = 0

    def sum_gradients() -> slice:
        """The summed gradient in ``gradient_sum``; returns the part of it this rank updates."""
        with talking:
            if sharded:
                return comm.reduce_scatter_into(model.grads, gradient_sum)
            if gradient_sum is model.grads:
                comm.allreduce(model.grads)
            else:
                comm.allreduce_into(model.grads, gradient_sum)
            return slice(None)

    def every_part_finite(finite_here: bool) -> bool:
        """A sharded step's verdict: every rank checked its own part; all must be finite."""
        with talking:
            verdict[0] = 0.0 if finite_here else 1.0
            comm.allreduce(verdict)
            return verdict[0] == 0.0

    agree = every_part_finite if sharded else None

    def gather_optimizer_state() -> None:
        """After sharded steps each rank's optimizer state is current in its own part only:
        every rank calls this before rank 0 reads the whole state."""
        if sharded:
            for slot in model.optimizer.slots.values():
                comm.allgather(slot)

    def checkpoint(epoch: int, step: int, totals_so_far) -> None:
        """Every rank calls it at the same points (mid-epoch ones sum the epoch's metrics so far);
        rank 0 writes. A non-finite state is refused by the writer and fails the job."""
        if totals_so_far is not None:
            totals_so_far = totals_so_far.to_array()
            comm.allreduce(totals_so_far)
        gather_optimizer_state()
        if spec.rank == 0:
            write_checkpoint(
                policy,
                model,
                epoch=epoch,
                step=step,
                position=epoch * plan.steps + step,
                totals=totals_so_far,
                history=before + history,
                meta=spec.checkpoint_meta or {},
                on_nonfinite=spec.on_nonfinite,
            )
        # The others wait while rank 0 writes (to an object store, that can outlast the step
        # deadline): wait for it here, with a deadline of its own, so a slow write is not
        # mistaken for a dead rank 0.
        comm.set_timeout(max(spec.timeout, CHECKPOINT_TIMEOUT_S))
        comm.barrier()
        comm.set_timeout(spec.timeout)

    # -- the loop -------------------------------------------------------------------------------
    for epoch in range(spec.initial_epoch, spec.epochs):
        epoch_start = time.perf_counter()
        first_step = spec.start_step if epoch == spec.initial_epoch else 0
        totals = Totals(names)
        if first_step and spec.rank == 0 and resumed.get("totals") is not None:
            totals = Totals.from_array(names, np.asarray(resumed["totals"]))  # all ranks' sums of the steps before
        for step, (rows, global_count) in enumerate(sampler.epoch(epoch, first_step), start=first_step):
            comm.check_abort()
            _inject(spec, epoch, step, model)
            t0 = time.perf_counter()
            local_count = (rows.stop - rows.start) if isinstance(rows, slice) else len(rows)
            sums = None
            if local_count:
                # scale 1/global batch: the allreduced sum is the gradient of the global mean loss.
                xb, yb = batch(rows)
                sums = model.compute_gradients(xb, yb, scale=1.0 / global_count)
            else:  # this rank's shards give nothing to this step; it still joins the allreduce
                model.grads.fill(0)
            _inject(spec, epoch, step, model, after_backward=True)
            model.backend.synchronize()  # GPU: the backward kernels belong to compute, not to the allreduce
            part = sum_gradients()
            # Every rank sees the same summed gradient (or, sharded, every rank's verdict on its
            # part), so every rank decides alike, at once.
            if take_step(model, finite, spec.on_nonfinite, epoch, step, gradient_sum, part=part, agree=agree):
                if sharded:
                    with talking:
                        comm.allgather(model.params)  # the other ranks' updated parts
                if sums is not None:
                    totals.add(*sums)
            else:
                skipped += 1
            model.backend.synchronize()
            t1 = time.perf_counter()
            allreduce = talking.take()
            compute = (t1 - t0) - allreduce
            if spec.record_replica_hashes:
                replica_hashes.append(hashlib.blake2b(host_copy(model.params).tobytes(), digest_size=16).hexdigest())
            reporter.progress(epoch, step, totals.logs())
            times.record(compute, allreduce, time.perf_counter() - t0)
            if policy is not None and policy.due_within_epoch(step + 1, plan.steps):
                checkpoint(epoch, step + 1, totals)

        # Epoch metrics over the whole global batch: every rank's sums, added up.
        summed = totals.to_array()
        comm.allreduce(summed)
        logs = Totals.from_array(names, summed).logs()
        if spec.has_validation:
            local = model._evaluation_totals(val_x, val_y, spec.batch_size) if val_x is not None else Totals(names)
            summed = local.to_array()
            comm.allreduce(summed)
            logs.update({f"val_{k}": v for k, v in Totals.from_array(names, summed).logs().items()})
        history.append(logs)
        if policy is not None:
            checkpoint(epoch + 1, 0, None)
        reporter.epoch_end(epoch, logs, time.perf_counter() - epoch_start)

        # Client callbacks (EarlyStopping...) decide after each epoch; every rank must agree.
        if spec.wait_for_client:
            if spec.rank == 0:
                from .comm.dask import get_plugin

                stop[0] = float(
                    get_plugin(worker).wait_for(
                        spec.job_id,
                        "driver",
                        f"epoch-{epoch}",
                        spec.timeout,
                        waiting_for=f"the client's callbacks after epoch {epoch + 1} (a callback slower than "
                        f"timeout={spec.timeout:g} s, or the client is gone)",
                    )
                )
            # The others wait while rank 0 waits for the client: give them longer, so that a slow
            # callback is reported by rank 0 as such, not as a dead rank 0.
            comm.set_timeout(2 * spec.timeout)
            comm.broadcast(stop, root=0)
            comm.set_timeout(spec.timeout)
            if stop[0]:
                break

    # -- results --------------------------------------------------------------------------------
    gather_optimizer_state()
    result: dict[str, Any] = {
        "rank": spec.rank,
        "times": times.as_arrays(),
        "replica_hashes": replica_hashes,
        "skipped_steps": skipped,
        "sharded_step": sharded,
    }
    if spec.rank == 0:
        result.update(params=host_copy(model.params), optimizer=model.optimizer.get_state(), history=history)
    return result


def _inject(spec: RankSpec, epoch: int, step: int, model: Sequential, after_backward: bool = False) -> None:
    """Failures injected by the tests at a known (rank, epoch, step): a hang (a sleep that
    ignores aborts, as a deadlock would), a crash, or a NaN in this rank's gradient."""
    for fault in spec.faults:
        if (fault["rank"], fault["epoch"], fault["step"]) != (spec.rank, epoch, step):
            continue
        kind = fault["kind"]
        if kind == "nan" and after_backward:
            model.grads[fault.get("index", 0)] = np.nan
        elif kind == "hang" and not after_backward:
            time.sleep(fault.get("seconds", 3600))
        elif kind == "crash" and not after_backward:
            raise RuntimeError(f"injected crash at epoch {epoch + 1}, step {step + 1}")
