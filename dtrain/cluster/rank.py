"""The rank task: one long-lived task per Dask worker (SPMD), run in the worker's task thread.

    check identity -> connect to the peers -> load and check this rank's rows -> build the
    replica and broadcast the source rank's weights (rank 0's from the client, or a survivor's
    from its worker's memory) -> the training loop (dtrain.training.loop.train) -> return the
    weights (rank 0), the step timings and what the hooks recorded (every rank); a failed run
    leaves this rank's state in its worker's memory for a restart (``memory``)

Everything a rank needs arrives as plain data (``RankSpec``: model config, compile config,
the run's FitConfig, the plan's size, not pickled model objects) plus shard readers; the
client-side launch and supervision live in ``launch`` and ``supervisor``.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import comm as comm_module
from ..backend import host_copy
from ..comm import Aborted, Communicator, make_communicator
from ..config import FitConfig
from ..data import check_sample_weight, check_targets, class_weights_of
from ..leases import Lease
from ..network import Network, Totals
from ..sampling import ShardPlan
from ..training.checkpointing import ResumePoint
from ..training.hooks import Progress, StepHook
from ..training.loop import Batches, train
from . import incidents, memory
from .worker_env import blas_threads, quiet_monitoring

PROGRESS_INTERVAL_S = 0.25  # rank 0 reports progress at most this often (events go via the scheduler)
STARTUP_TIMEOUT_S = 600.0  # how long ranks wait for each other while loading their shards
EPOCH_GO_ON, EPOCH_STOP, EPOCH_REGROUP = 0.0, 1.0, 2.0  # the client's answer after each epoch


@dataclass
class RankSpec:
    """What one rank needs to know, as plain data."""

    job_id: str  # this attempt's
    run_id: str  # the fit's, the same across its restarts
    rank: int
    peers: list[str]  # worker addresses in rank order
    worker_id: str  # Worker.id at launch: a restarted worker must not re-run the rank
    model_config: dict[str, Any]
    compile_config: dict[str, Any]
    input_dim: int
    device: str  # "cpu" | "gpu"
    comm: str  # communicator kind (see dtrain.comm)
    config: FitConfig  # the run's options, its seed and shard count fixed
    rows: int  # training rows (the plan)
    owned: list[int]  # logical shards this rank trains on, in this order
    start_epoch: int = 0
    start_step: int = 0  # steps of start_epoch already done (resuming)
    start_totals: list[float] | None = None  # the global sums of those steps (Totals.to_array)
    start_history: list[dict[str, float]] | None = None  # the logs of the epochs before start_epoch
    source_rank: int = 0  # whose weights every rank starts from: the client's (initial) or, with
    from_memory: bool = False  # from_memory, those this run left in source_rank's worker
    has_validation: bool = False  # the run validates (every rank joins the sums)
    wait_for_client: bool = False  # rank 0 waits for the client's continue/stop after each epoch
    share_model: bool = False  # ... and meanwhile lets the client read the model (live_model_state)
    checkpoint_meta: dict = field(default_factory=dict)  # what a checkpoint records of the run
    attempt: int = 0  # 0, then 1 at the first restart...
    hooks: list[StepHook] = field(default_factory=list)  # instruments the tests installed
    nccl_id: Any = None

    @property
    def size(self) -> int:
        return len(self.peers)

    @property
    def topic(self) -> str:
        return event_topic(self.job_id)


def event_topic(job_id: str) -> str:
    return f"dtrain-{job_id}"


def run_rank(spec: RankSpec, readers: dict[str, list], dependencies: dict[str, list], initial: dict | None) -> dict:
    """The rank task (runs in a worker's task thread). ``readers`` holds the shard readers
    ("x", "y", "val_x", "val_y"), ``dependencies`` the values Dask resolved for them, and
    ``initial`` (the source rank only, unless from memory) the weights and optimizer state to
    start from."""
    from distributed import get_worker

    worker = get_worker()
    # A worker that died and came back at the same address makes the scheduler re-run its
    # pinned task from scratch, alone: refuse, the driver reports the lost worker.
    if worker.id != spec.worker_id:
        raise RuntimeError(
            f"Rank {spec.rank} of job {spec.job_id} was started again on a restarted worker "
            f"({worker.address}); a restarted worker never re-runs a rank. Run fit again."
        )
    plugin = comm_module.get_plugin(worker)
    plugin.open_job(spec.job_id)
    where = incidents.rank_started(spec.job_id, spec.rank)  # (for an incident report: where it is)
    comm = None
    try:
        # Start-up waits (for the slowest rank to load its rows) may be long; the driver watches
        # the workers meanwhile. Between steps every wait is bounded by the run's timeout.
        comm = make_communicator(
            spec.comm,
            job_id=spec.job_id,
            rank=spec.rank,
            size=spec.size,
            peers=spec.peers,
            timeout=max(spec.config.timeout, STARTUP_TIMEOUT_S),
            nccl_id=spec.nccl_id,
        )
        with blas_threads(worker), quiet_monitoring(worker):
            return _run(spec, comm, worker, readers, dependencies, initial, where)
    except BaseException as exc:
        incidents.keep_snapshot(spec.job_id, exc)  # a missed deadline: where this rank was, for the client
        if not isinstance(exc, Aborted):  # tell the peers at once, so that they stop waiting for this rank
            reason = f"rank {spec.rank} on {worker.address} failed: {type(exc).__name__}: {exc}"
            if comm is not None:
                comm.abort(reason)
            else:
                plugin.abort_job(spec.job_id, reason)
        # The tracebacks' finished frames hold the replica, whose weights and gradients live in
        # shared memory: cleared, closing the communicator below unmaps that memory now, not at
        # the worker's next full garbage collection (the frames and the exception form a cycle).
        _clear_frames(exc)
        raise
    finally:
        incidents.rank_ended(spec.job_id)
        _LIVE_MODELS.pop(spec.job_id, None)
        if comm is not None:
            comm.close()
        plugin.close_job(spec.job_id)


# Rank 0's network of each job whose client callbacks read the model at epoch ends (ModelCheckpoint,
# EarlyStopping(restore_best_weights=True)), by job id, on this worker.
_LIVE_MODELS: dict[str, Network] = {}


def live_model_state(job_id: str) -> dict[str, Any] | None:
    """The weights and optimizer state of rank 0's network of ``job_id`` (runs on the worker's
    event loop, through ``client.run``, while rank 0 waits for the client's answer after an
    epoch: the model then holds that epoch's end, the optimizer state gathered whole)."""
    network = _LIVE_MODELS.get(job_id)
    if network is None:
        return None
    return {"params": host_copy(network.params), "optimizer": network.compiled_optimizer.get_state()}


def _clear_frames(exc: BaseException) -> None:
    """Clear the finished frames of ``exc``'s traceback and of every exception it was raised while
    handling (``__context__``) or from (``__cause__``): an abort raised while a receive failed
    keeps that failure, and its frames, alive too (Dask keeps a failed task's exception)."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        pending += [current.__context__, current.__cause__]


def _run(
    spec: RankSpec,
    comm: Communicator,
    worker: Any,
    readers: dict,
    dependencies: dict,
    initial: dict | None,
    where: incidents.Whereabouts,
) -> dict:
    # -- this rank's data, then the replica -----------------------------------------------------
    network = Network.from_config(spec.model_config, device=spec.device)
    network.compile(**spec.compile_config)  # the loss decides the form of the targets
    x, y = _load_checked(network, spec, readers, dependencies, "x", "y", "training")
    weights = _weights(readers, dependencies, "w", x, y, spec.config.class_weights)
    validation: tuple[np.ndarray, ...] | None = None
    if spec.has_validation:
        val_x, val_y = _load_checked(network, spec, readers, dependencies, "val_x", "val_y", "validation")
        if val_x is not None and val_y is not None:
            val_w = _weights(readers, dependencies, "val_w", val_x, val_y, None)  # (class weights: training only)
            validation = (val_x, val_y) + (() if val_w is None else (val_w,))
    _build_replica(network, spec, comm, initial)  # waits for every rank to have loaded
    comm.set_timeout(spec.config.timeout)
    assert spec.config.shards is not None
    plan = ShardPlan(spec.rows, spec.config.shards, spec.config.batch_size)
    if x is None or y is None:
        raise ValueError(
            f"Rank {spec.rank} received 0 training rows for shards {spec.owned}, "
            f"expected {plan.local_rows(spec.owned)}: the data changed between planning and loading."
        )
    start = ResumePoint(
        epoch=spec.start_epoch,
        step=spec.start_step,
        totals=None if spec.start_totals is None else np.asarray(spec.start_totals, dtype=np.float64),
        history=spec.start_history,
    )

    # -- the loop -------------------------------------------------------------------------------
    reporter = RankReporter(spec, worker, comm, network.compiled_optimizer, where)
    if spec.rank == 0 and spec.share_model:  # read by the client while rank 0 waits for its answer
        _LIVE_MODELS[spec.job_id] = network
    result = train(
        network,
        comm,
        Batches(network, x, y, stage_on_device=True, sample_weight=weights),  # on a GPU the shard lives there
        validation,
        config=spec.config,
        plan=plan,
        owned=spec.owned,
        start=start,
        meta=spec.checkpoint_meta,
        progress=reporter,
        has_validation=spec.has_validation,
        hooks=spec.hooks,
        attempt=spec.attempt,
        keep_on_failure=lambda point: memory.keep(spec.run_id, point),
        # rank 0 writes the checkpoints: it renews the folder's lease, which the driver took for the run
        lease=Lease(spec.config.checkpoint.directory, spec.run_id)
        if spec.rank == 0 and spec.config.checkpoint
        else None,
    )

    # -- results --------------------------------------------------------------------------------
    out: dict[str, Any] = {
        "rank": spec.rank,
        "times": result.times,
        "hooks": result.hook_results,
        "skipped_steps": result.skipped_steps,
        "sharded_step": result.sharded_step,
        "regroup": reporter.regroup,  # the attempt ended at an epoch's end for an elastic run's new workers
    }
    if spec.rank == 0:
        out.update(
            params=host_copy(network.params), optimizer=network.compiled_optimizer.get_state(), history=result.history
        )
    return out


class RankReporter(Progress):
    """The loop's audience on a rank: rank 0's live progress as Dask events (Worker.log_event)
    the client subscribes to, and, after each epoch, the client's answer shared with every
    rank: go on, stop (its callbacks: EarlyStopping...), or end this attempt to regroup (an
    elastic run taking in workers that joined): ``EPOCH_*``; with the optimizer's numbers for
    the next epoch (a callback may have changed the learning rate: every rank takes them)."""

    def __init__(
        self, spec: RankSpec, worker: Any, comm: Communicator, optimizer: Any, where: incidents.Whereabouts
    ) -> None:
        self.spec, self.worker, self.comm, self.optimizer, self.where = spec, worker, comm, optimizer, where
        self.reporting = spec.rank == 0
        self._last = 0.0
        self.regroup = False

    @property
    def wants_whole_state(self) -> bool:
        return self.spec.share_model

    def epoch_begin(self, epoch: int) -> None:
        self.where.epoch, self.where.step = epoch, -1

    def batch_begin(self, step: int) -> None:
        self.where.step = step

    def batch_end(self, epoch: int, step: int, last: bool, totals: Totals) -> None:
        now = time.monotonic()
        # Every epoch's last step is reported, so that the client's progress bar ends at 100%.
        if self.reporting and (last or now - self._last >= PROGRESS_INTERVAL_S):
            self._last = now
            message = {"kind": "progress", "epoch": epoch, "step": step, "logs": totals.logs()}
            self.worker.log_event(self.spec.topic, message)

    def epoch_times(self, epoch: int, medians: dict[str, float]) -> None:
        """Every rank's own step times of the epoch, for the client's live view (the job page):
        one small event per rank and epoch."""
        if medians:
            message = {"kind": "times", "epoch": epoch, "rank": self.spec.rank, "times": medians}
            self.worker.log_event(self.spec.topic, message)

    def epoch_end(self, epoch: int, logs: dict[str, float], seconds: float) -> bool:
        spec = self.spec
        if self.reporting:
            self.worker.log_event(spec.topic, {"kind": "epoch", "epoch": epoch, "logs": logs, "seconds": seconds})
        if not spec.wait_for_client:
            return False
        # Client callbacks (EarlyStopping, LearningRateScheduler...) decide after each epoch;
        # every rank must agree: [verdict, the optimizer's numbers in its own order].
        timeout = spec.config.timeout
        names = list(self.optimizer.numbers(self.optimizer.hyperparameters()))
        answer = np.zeros(1 + len(names), dtype=np.float64)
        if spec.rank == 0:
            got = comm_module.get_plugin(self.worker).wait_for(
                spec.job_id,
                "driver",
                f"epoch-{epoch}",
                timeout,
                waiting_for=f"the client's callbacks after epoch {epoch + 1} (a callback slower than "
                f"timeout={timeout:g} s, or the client is gone)",
            )
            numbers = got.get("optimizer") or {}
            current = self.optimizer.hyperparameters()
            answer[0] = got["verdict"]
            answer[1:] = [numbers.get(name, current[name]) for name in names]
        # The others wait while rank 0 waits for the client: give them longer, so that a slow
        # callback is reported by rank 0 as such, not as a dead rank 0.
        self.comm.set_timeout(2 * timeout)
        self.comm.broadcast(answer, root=0)
        self.comm.set_timeout(timeout)
        self.regroup = answer[0] == EPOCH_REGROUP
        if answer[0] == EPOCH_GO_ON:
            self.optimizer.set_hyperparameters({name: float(v) for name, v in zip(names, answer[1:])})
        return answer[0] != EPOCH_GO_ON


def _load(readers: Sequence, dependencies: Sequence) -> list[np.ndarray]:
    return [reader.load(deps) for reader, deps in zip(readers, dependencies)]


def _rows_label(readers: Sequence) -> str:
    spans = [f"{r.start}..{r.stop - 1}" for r in readers]
    return "rows " + ", ".join(spans) if spans else "no rows"


def _weights(
    readers: dict, dependencies: dict, key: str, x: np.ndarray | None, y: np.ndarray | None, class_weight: Any
) -> np.ndarray | None:
    """This rank's sample weights of the rows ``x``, checked: read (``key``'s readers), or from
    the rows' classes (``class_weight``), or None."""
    if x is None or y is None:
        return None
    if readers.get(key):
        parts = _load(readers[key], dependencies[key])
        w = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return check_sample_weight(w, len(x), name=f"sample_weight ({_rows_label(readers[key])})")
    return None if class_weight is None else class_weights_of(y, class_weight)


def _load_checked(
    network: Network, spec: RankSpec, readers: dict, dependencies: dict, x_key: str, y_key: str, what: str
) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    """This rank's rows of x and y, checked like single-process fit checks them."""
    xs, ys = _load(readers[x_key], dependencies[x_key]), _load(readers[y_key], dependencies[y_key])
    where = f"{what} {_rows_label(readers[x_key])}"
    if not xs or sum(len(part) for part in xs) == 0:
        return None, None
    x = np.concatenate(xs) if len(xs) > 1 else xs[0]
    y = np.concatenate(ys) if len(ys) > 1 else ys[0]
    x = network.check_x(x, f"x ({where})", spec.input_dim)
    y = check_targets(
        y,
        len(x),
        network.compiled_loss,
        network.output_units,
        network.dtype,
        name=f"y ({where})",
        x_name=f"x ({where})",
    )
    # Aligned rows (a copy only where the transport left them misaligned): every batch is
    # gathered from them, and a misaligned gather costs ~10% of a step.
    return np.require(x, requirements=["C", "A"]), np.require(y, requirements=["C", "A"])


def _build_replica(network: Network, spec: RankSpec, comm: Communicator, initial: dict | None) -> None:
    """The same network on every rank: the source rank sets the weights (and optimizer state)
    to start from, then broadcasts them, so all replicas start bitwise identical."""
    network.build(spec.input_dim, seed=spec.config.seed)
    root = spec.source_rank
    if spec.rank == root and spec.from_memory:
        initial = vars(memory.take(spec.run_id, spec.start_epoch, spec.start_step))
    if spec.rank == root and initial is not None:
        network.params[...] = network.backend.asarray(initial["params"])
        if initial.get("optimizer"):
            network.compiled_optimizer.set_state(initial["optimizer"])
    comm.broadcast(network.params, root=root)
    for slot in network.compiled_optimizer.slots.values():
        comm.broadcast(slot, root=root)
    iterations = np.array([network.compiled_optimizer.iterations], dtype=np.float64)
    comm.broadcast(iterations, root=root)
    network.compiled_optimizer.iterations = int(iterations[0])
