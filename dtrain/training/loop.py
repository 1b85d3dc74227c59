"""The training loop: the one place in dtrain that iterates an epoch's batches.

One process and every rank of a cluster run this same function; one process is a one-rank
communicator (``LocalCommunicator``: every collective is a no-op). Read top to bottom:

    choose the gradient sync (after the weights' broadcast: see sync.choose_sync)
    for each epoch:
        for each step (this rank's rows of the global batch):
            forward, loss, backward           network.compute_gradients
            sum over the ranks, check, update sync.step (the step's loss and metric sums too)
            report progress, checkpoint when due
        epoch metrics (every rank holds the global sums), validation (one allreduce of sums)
        checkpoint, report the epoch, stop if the audience says so
    gather the optimizer state (sharded steps), return what the run did

A run that fails hands ``keep_on_failure`` this rank's state after its last completed step
(``training.recovery``): a restart can go on from a survivor's memory.

The caller prepares everything before: the network built, compiled and identical on every
rank; this rank's rows; the plan; where to start (``ResumePoint``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..comm import Communicator
from ..config import FitConfig
from ..data import BatchGatherer
from ..leases import Lease
from ..network import Network, Totals
from ..randomness import StepNoise
from ..sampling import EpochSampler, ShardPlan
from . import checkpointing
from .hooks import Progress, StepContext, StepHook
from .recovery import KeepState, Survivor
from .sync import choose_sync

CHECKPOINT_TIMEOUT_S = 600.0  # how long ranks wait for rank 0 to write a checkpoint


class Batches:
    """This rank's rows, and the rows of one step as device arrays.

    ``stage_on_device``: on a GPU, the rows move to the device once and batches are gathered
    there (the ranks of a cluster); otherwise each batch is gathered on the host into a reused
    buffer (or is a view, for a contiguous batch) and moved (one process, as Keras does)."""

    def __init__(
        self,
        network: Network,
        x: np.ndarray,
        y: np.ndarray,
        stage_on_device: bool = False,
        sample_weight: np.ndarray | None = None,
    ) -> None:
        self.backend, self.rows = network.backend, len(x)
        # The weights in the model's dtype, once: a step multiplies its loss gradient by them.
        w = None if sample_weight is None else np.ascontiguousarray(sample_weight, dtype=network.dtype)
        self._x, self._y, self._w = x, y, w
        self._on_device = stage_on_device and network.backend.device != "cpu"
        if self._on_device:
            self._x, self._y = self.backend.asarray(x), self.backend.asarray(y)
            self._w = None if w is None else self.backend.asarray(w)
        else:
            self._x_rows, self._y_rows = BatchGatherer(x), BatchGatherer(y)
            self._w_rows = None if w is None else BatchGatherer(w)

    def scale(self, global_count: int, batch_rows: int) -> float:
        """The factor of a step's summed loss gradient: 1 / the global batch (so the ranks' sum
        is the gradient of the global mean loss)."""
        return 1.0 / global_count

    def noise_rows(self, sampler: EpochSampler, rows: np.ndarray | slice, batch_rows: int) -> np.ndarray:
        """The global rows random layers draw for (a row's mask follows the row, not the rank)."""
        return sampler.global_rows(rows)

    def take(self, rows: np.ndarray | slice) -> tuple[Any, Any, Any]:
        """(x, y, sample weights or None) of ``rows``, on the device."""
        if isinstance(rows, slice):  # in order: a view, nothing to copy
            xb, yb, wb = self._x[rows], self._y[rows], None if self._w is None else self._w[rows]
        elif self._on_device:
            index = self.backend.xp.asarray(rows)
            return self._x[index], self._y[index], None if self._w is None else self._w[index]
        else:
            xb, yb = self._x_rows.take(rows), self._y_rows.take(rows)
            wb = None if self._w_rows is None else self._w_rows.take(rows)
        return self.backend.asarray(xb), self.backend.asarray(yb), None if wb is None else self.backend.asarray(wb)


STEP_RECORDS = 8192  # per-step timings kept (the most recent steps): bounded, however long the run


class StepTimes:
    """Seconds per step: local work (batch, forward, backward, update), collectives (the
    allreduce, or a sharded step's reduce-scatter, verdict and allgather; recorded as
    "allreduce"), whole step; and each step's position (epoch x steps per epoch + step).
    The most recent STEP_RECORDS steps are kept, in a table allocated once: recording allocates
    nothing per step, and a run of a million steps holds no more than a short one."""

    def __init__(self, steps: int) -> None:
        self._table = np.zeros((4, min(max(steps, 0), STEP_RECORDS)), dtype=np.float64)
        self.count = 0  # steps recorded, kept or not

    def record(self, position: int, compute: float, allreduce: float, step: float) -> None:
        self._table[:, self.count % self._table.shape[1]] = (compute, allreduce, step, position)
        self.count += 1

    def medians_since(self, position: int) -> dict[str, float]:
        """Median seconds of the kept steps at ``position`` or later (an epoch's, say)."""
        kept = self._table[:, : min(self.count, self._table.shape[1])]
        recent = kept[:, kept[3] >= position]
        if recent.shape[1] == 0:
            return {}
        compute, allreduce, step = np.median(recent[:3], axis=1)
        return {"compute": float(compute), "allreduce": float(allreduce), "step": float(step)}

    def as_arrays(self) -> dict[str, np.ndarray]:
        """The kept steps, oldest first."""
        kept = min(self.count, self._table.shape[1])
        used = np.roll(self._table, -(self.count % self._table.shape[1]), axis=1) if self.count > kept else self._table
        used = used[:, :kept]
        return {
            "compute": used[0].copy(),
            "allreduce": used[1].copy(),
            "step": used[2].copy(),
            "position": used[3].astype(np.int64),
        }


@dataclass
class TrainResult:
    """What one rank's run did."""

    history: list[dict[str, float]]  # the logs of the epochs this run completed
    logs: dict[str, float]  # the last epoch's logs (completed or stopped within), {} without epochs
    skipped_steps: int
    sharded_step: bool
    times: dict[str, np.ndarray]
    hook_results: list[Any] = field(default_factory=list)


def train(
    network: Network,
    comm: Communicator,
    batches: Batches,
    validation: tuple[np.ndarray, ...] | None,
    *,
    config: FitConfig,
    plan: ShardPlan,
    owned: Sequence[int],
    start: checkpointing.ResumePoint,
    meta: dict[str, Any],
    progress: Progress,
    has_validation: bool = False,
    hooks: Sequence[StepHook] = (),
    attempt: int = 0,
    keep_on_failure: KeepState | None = None,
    lease: Lease | None = None,
) -> TrainResult:
    """Train ``network`` from ``start`` to ``config.epochs`` on this rank's ``batches`` of the
    shards ``owned``; ``validation`` holds this rank's validation rows (None: none here, while
    ``has_validation`` says whether the run validates, so that every rank joins the sums).
    ``start.totals`` holds the global sums of the steps of ``start.epoch`` done before.
    ``lease``: the checkpoint folder's, held by the writer (rank 0), renewed as it trains."""
    assert config.seed is not None, "the run's seed is fixed before training (checkpointing.resolve_seed_and_shards)"
    sync = choose_sync(network, comm, config.on_nonfinite)
    sampler = EpochSampler(plan, owned, config.seed, config.shuffle)
    if batches.rows != sampler.rows:
        raise ValueError(
            f"Rank {comm.rank} received {batches.rows} training rows for shards {list(owned)}, "
            f"expected {sampler.rows}: the data changed between planning and loading."
        )
    metrics = network.metrics
    times = StepTimes((config.epochs - start.epoch) * plan.steps - start.step)
    trained: list[dict[str, float]] = []  # the epochs this run completed
    before = list(start.history or [])  # epochs done before it (a resumed run)
    survivor = Survivor(network, sync, start.epoch, start.step, before, trained)
    skipped = 0
    logs: dict[str, float] = {}
    no_rows = (0, 0.0, [0.0] * network.metric_state_size)  # the sums of a rank with no rows in a step
    uses_noise = network.uses_noise

    def checkpoint(epoch: int, step: int, totals: Totals | None) -> None:
        """Every rank calls it at the same points (mid-epoch ones with the epoch's sums so far);
        rank 0 writes. A non-finite state is refused by the writer and fails the run."""
        assert config.checkpoint is not None
        for hook in hooks:  # (tests only)
            hook.before_checkpoint(StepContext(comm.rank, attempt, epoch, step), network)
        sync.gather_optimizer_state()
        if comm.rank == 0:
            if lease is not None:  # still this run's folder (LeaseLostError otherwise: write nothing)
                lease.renew()
            checkpointing.write(
                config.checkpoint,
                network,
                epoch=epoch,
                step=step,
                position=epoch * plan.steps + step,
                totals=None if totals is None else totals.to_array(),
                history=before + trained,
                meta=meta,
                on_nonfinite=config.on_nonfinite,
            )
        # The others wait while rank 0 writes (to an object store, that can outlast the step
        # deadline): wait for it here, with a deadline of its own, so a slow write is not
        # mistaken for a dead rank 0.
        comm.set_timeout(max(config.timeout, CHECKPOINT_TIMEOUT_S))
        comm.barrier()
        comm.set_timeout(config.timeout)

    network.set_batch_reducer(comm.allreduce)  # BatchNormalization: the global batch's statistics
    try:
        for epoch in range(start.epoch, config.epochs):
            epoch_start = time.perf_counter()
            progress.epoch_begin(epoch)
            first_step = start.step if epoch == start.epoch else 0
            totals = Totals(metrics)
            if first_step and start.totals is not None:
                totals = Totals.from_array(metrics, np.asarray(start.totals))  # the global sums of the steps before
            survivor.step_done(epoch, first_step, totals)
            completed = True
            for step, (rows, global_count) in enumerate(sampler.epoch(epoch, first_step), start=first_step):
                comm.check_abort()
                progress.batch_begin(step)
                if hooks:  # (tests only: production runs make nothing here)
                    ctx = StepContext(comm.rank, attempt, epoch, step)
                for hook in hooks:
                    hook.before_step(ctx, network)
                t0 = time.perf_counter()
                local_count = (rows.stop - rows.start) if isinstance(rows, slice) else len(rows)
                sums = no_rows
                if local_count:
                    xb, yb, wb = batches.take(rows)
                    n = len(xb)
                    # Random layers draw from (seed, epoch, global row): any rank gives a row the same mask.
                    noise = StepNoise(config.seed, epoch, batches.noise_rows(sampler, rows, n)) if uses_noise else None
                    # scale 1/global batch: the summed gradient is the gradient of the global mean loss.
                    sums = network.compute_gradients(xb, yb, wb, scale=batches.scale(global_count, n), noise=noise)
                else:  # this rank's shards give nothing to this step; it still joins the sums
                    network.join_step_without_rows()
                for hook in hooks:
                    hook.after_backward(ctx, network)
                network.backend.synchronize()  # GPU: the backward kernels belong to compute, not to the sum
                summed = sync.step(epoch, step, sums)  # None: skipped (a non-finite gradient)
                if summed is not None:
                    totals.add(*summed)
                else:
                    skipped += 1
                survivor.step_done(epoch, step + 1, totals)
                if lease is not None:
                    lease.keep()
                network.backend.synchronize()
                talking, compute = sync.talking.take(), time.perf_counter() - t0
                for hook in hooks:
                    hook.after_step(ctx, network)
                progress.batch_end(epoch, step, step + 1 == plan.steps, totals)
                # The step's time beyond compute and collectives is the loop's own (reports, hooks).
                times.record(epoch * plan.steps + step, compute - talking, talking, time.perf_counter() - t0)
                if config.checkpoint is not None and config.checkpoint.due_within_epoch(step + 1, plan.steps):
                    checkpoint(epoch, step + 1, totals)
                if progress.stop_within_epoch():
                    completed = step + 1 == plan.steps
                    break

            logs = totals.logs()  # over the whole global batch: the steps' sums are global
            if has_validation and config.validates_after(epoch):
                local = (
                    Totals(metrics)
                    if validation is None
                    else network.evaluation_totals(validation[0], validation[1], config.batch_size, *validation[2:])
                )
                val_sums = local.to_array()
                comm.allreduce(val_sums)
                logs.update({f"val_{k}": v for k, v in Totals.from_array(metrics, val_sums).logs().items()})
            if completed:
                trained.append(logs)
                if config.checkpoint is not None:
                    checkpoint(epoch + 1, 0, None)
                survivor.epoch_done(epoch)
            if progress.wants_whole_state:  # (a sharded step's ranks each hold their part of it)
                sync.gather_optimizer_state()
            progress.epoch_times(epoch, times.medians_since(epoch * plan.steps))
            if progress.epoch_end(epoch, logs, time.perf_counter() - epoch_start) or not completed:
                break
    except BaseException:
        if keep_on_failure is not None:
            _keep(survivor, keep_on_failure)
        raise
    finally:
        network.set_batch_reducer(None)  # (the model outlives the communicator)

    sync.gather_optimizer_state()
    network.finalize_weights()  # (use_ema: the moving average, on every rank alike)
    return TrainResult(
        history=trained,
        logs=logs,
        skipped_steps=skipped,
        sharded_step=sync.sharded,
        times=times.as_arrays(),
        hook_results=[hook.result() for hook in hooks],
    )


def _keep(survivor: Survivor, keep: KeepState) -> None:
    """Hand this rank's state to ``keep`` as the run fails; a copy that fails too (a device in
    error) leaves nothing to recover from here, and must not hide the run's own error."""
    try:
        point = survivor.state()
        if point is not None:
            keep(point)
    except Exception:
        pass
