"""``Sequential.fit(..., client=)``: check, plan, launch, supervise, restart, collect.

1. probe the workers (identity, host, GPU, memory) and order the ranks (host, then GPU index);
2. plan the logical shards and global batches; check the data where it is (NumPy on the
   client; files and Dask arrays on the workers, metadata only) and that every rank's shards fit
   its worker's memory — all before any task is submitted, so a bad call fails fast and
   changes nothing;
3. launch one pinned, long-lived rank task per worker (:func:`dtrain.cluster.rank.run_rank`);
4. supervise them (:class:`~dtrain.cluster.supervisor.Supervisor`); a failure a restart can
   cure restarts every rank on the workers left, from the most advanced state a survivor holds
   in memory (:mod:`~dtrain.cluster.memory`), else from the latest checkpoint, else from the start;
5. put the trained weights and optimizer state into the client's model, return a History.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .. import comm as comm_module
from ..backend import host_copy
from ..callbacks import Callback, CallbackList, History, reporting_failure
from ..checkpoints import CheckpointError, global_step_of, list_checkpoints
from ..comm import CommError
from ..config import CheckpointPolicy, FitConfig
from ..network import Network
from ..sampling import ShardPlan
from ..training.checkpointing import ResumePoint, folder_lease, resolve_seed_and_shards, resume_point, start_of_run
from ..training.hooks import StepHook, callback_list, installed_hooks
from ..training.sync import NonFiniteError
from . import memory
from .errors import JobCancelled, SchedulerLostError, WorkerLostError
from .placement import (
    Rows,
    check_access,
    check_checkpoint_folder,
    check_memory,
    place_shards,
    split_rows,
    training_sources,
)
from .probe import WorkerInfo, choose_communicator, choose_device, cluster_ranks, scheduler_workers
from .rank import RankSpec, run_rank
from .supervisor import Supervisor, silent_workers


@dataclass
class RunControl:
    """How a caller steers a cluster run beyond its FitConfig (the job service does):

    ``stop``: once set, every rank is aborted within a moment and JobCancelled is raised;
    ``on_restart(count, record)`` hears of each restart (its ``history.restart_log`` entry, whose
    ``recovered_s`` is filled in when the restarted run first reports); ``restart_workers(usable)`` picks the
    workers of a restart (or of an elastic run's regrouping) among those usable, instead of all
    of them; ``joinable(workers)``: of workers outside an elastic run, those it may take in;
    ``on_rank_times(epoch, rank, worker, times)`` hears each rank's median step times (seconds:
    compute, allreduce, step) after each epoch, as they arrive; ``on_incident(incident)`` hears
    where every rank was when a step missed its deadline (dtrain.cluster.incidents), before the
    ranks are aborted."""

    stop: threading.Event | None = None
    on_restart: Callable[[int, dict], None] | None = None
    restart_workers: Callable[[list[str]], list[str]] | None = None
    joinable: Callable[[list[str]], list[str]] | None = None
    on_rank_times: Callable[[int, int, str, dict[str, float]], None] | None = None
    on_incident: Callable[[dict], None] | None = None


def fit_on_cluster(
    model: Network,
    x: Any,
    y: Any,
    validation_data: Sequence[Any] | None,
    callbacks: Sequence[Callback],
    config: FitConfig,
    *,
    client: Any,
    control: RunControl | None = None,
    sample_weight: Any = None,
) -> History:
    """Train ``model`` on the workers of ``client``'s cluster (see the module docstring).

    A run that fails in a way a restart can cure (a lost or stuck worker, a broken connection,
    a step past its deadline) restarts on the workers then alive, up to ``config.max_restarts``
    times: from the state after the last step a survivor completed, kept in its memory; else
    from the latest checkpoint of ``config.checkpoint``; else from the run's start."""
    control = control or RunControl()
    for cb in callbacks:
        if getattr(cb, "needs_model", False) and getattr(cb, "save_freq", "epoch") != "epoch":
            raise ValueError(
                f"{type(cb).__name__}(save_freq={cb.save_freq!r}) saves within epochs; with client= the model "  # type: ignore[attr-defined]
                "lives on the workers and reaches the client's callbacks at each epoch's end only. Use "
                "save_freq='epoch', or checkpoint_dir= with checkpoint_every=N for checkpoints every N steps."
            )
    config = resolve_seed_and_shards(config)
    if config.elastic and config.shards is None:
        config = replace(config, shards=config.max_workers)  # the most workers the run can grow to
    ranks = cluster_ranks(client, config.workers)
    if len(ranks) < config.min_workers:
        ranks = _surviving_ranks(client, config, [], [], "waiting for min_workers", None)
    train, validation = training_sources(
        model, x, y, config.validation_split, validation_data, client, sample_weight=sample_weight
    )
    if control.stop is not None and control.stop.is_set():  # preparing the sources can take a while
        raise JobCancelled("training was cancelled before it started")
    # The plan (shard count included) is fixed for the whole run, restarts too: that is what
    # keeps the maths the same when a restart has fewer workers.
    config = replace(config, shards=config.shards or len(ranks))
    assert config.shards is not None
    plan = ShardPlan(train.count, config.shards, config.batch_size)
    run_id = f"run-{uuid.uuid4().hex[:12]}"
    if config.verbose:
        _say_where_to_watch(client)
    with folder_lease(config.checkpoint, run_id), reporting_failure(callbacks):  # one writer per checkpoint folder
        return _train_to_the_end(model, callbacks, config, plan, train, validation, ranks, client, control, run_id)


def _train_to_the_end(
    model: Network,
    callbacks: Sequence[Callback],
    config: FitConfig,
    plan: ShardPlan,
    train: Rows,
    validation: Rows | None,
    ranks: list[WorkerInfo],
    client: Any,
    control: RunControl,
    run_id: str,
) -> History:
    """The run from its start: every attempt (restarts, an elastic run's regroupings), then the
    trained model back in the client's hands."""
    input_dim = math.prod(train.x.row_shape)  # (flattened, where the model starts with Flatten)
    # The model's starting point is built here, exactly as single-process fit builds it.
    history = History()
    cbs = callback_list(model, callbacks, history, config, plan, workers=len(ranks[: config.most_workers]))
    start, meta = start_of_run(model, plan, config, input_dim)
    start.params = host_copy(model.params)
    start.optimizer = model.compiled_optimizer.get_state() if model.compiled_optimizer.iterations else None
    history.restore(start.history or [])
    run = _Run(
        run_id=run_id,
        client=client,
        model=model,
        cbs=cbs,
        config=config,
        plan=plan,
        train=train,
        validation=validation,
        input_dim=input_dim,
        stop=control.stop,
        # Rank 0 waits for the client's word after each epoch where a callback may stop the
        # run, or where an elastic run may take in workers there.
        wait_for_client=config.elastic or any(not getattr(cb, "observes_only", False) for cb in callbacks),
        # ... and reads rank 0's model then, for callbacks that save or keep it (ModelCheckpoint)
        share_model=any(getattr(cb, "needs_model", False) for cb in callbacks),
        meta=meta,
        hooks=installed_hooks(),
        joinable=control.joinable,
        on_rank_times=control.on_rank_times,
        on_incident=control.on_incident,
    )
    run.epochs_done = set(range(start.epoch))  # a resumed run's earlier epochs belong to an earlier fit
    model.stop_training = False
    cbs.on_train_begin()
    point, restarts, restart_log, membership = start, list[str](), list[dict](), list[dict]()
    attempts = 0
    try:
        while True:
            attempts += 1
            try:
                results, supervisor = run.attempt(ranks, point, attempt=attempts - 1)
            except BaseException as exc:
                noticed = time.monotonic()
                if len(restarts) >= config.max_restarts or not _recoverable(exc):
                    raise
                reason = f"{type(exc).__name__}: {exc}"
                restarts.append(reason)
                ranks = _surviving_ranks(client, config, run.stuck, run.silent, reason, control.restart_workers)
                kept = _memory_point(client, run.run_id, ranks[: config.most_workers])
                point, whence = _restart_point(config.checkpoint, meta, start, plan, kept)
                record = _restart_record(reason, run, point, whence, noticed)
                restart_log.append(record)
                run.on_first_report = _recovery_timer(record, noticed)
                if control.on_restart is not None:
                    control.on_restart(len(restarts), record)
                continue
            if not results[0].get("regroup"):
                break
            # An elastic run took a break at an epoch's end for workers that joined: it goes on
            # from rank 0's state with them (not a restart: nothing failed, nothing is trained again).
            point = _handed_over(point, results[0])
            before = list(run.ranks)
            ranks = _surviving_ranks(client, config, [], run.silent, "regrouping", control.restart_workers)
            now = [w.address for w in ranks[: config.most_workers]]
            membership.append(
                {
                    "epoch": point.epoch,
                    "workers": now,
                    "joined": [w for w in now if w not in before],
                    "left": [w for w in before if w not in now],
                }
            )
    finally:  # the survivors' states of this run are of no more use: free their memory
        memory.forget_everywhere(client, run.run_id)

    # -- the trained model back in the client's hands -----------------------------------------
    rank0 = results[0]
    model.params[...] = model.backend.asarray(rank0["params"])
    model.compiled_optimizer.set_state(rank0["optimizer"])
    for index, hook in enumerate(run.hooks):
        for result in results:
            hook.collect(result["rank"], result["hooks"][index])
    history.timing, history.step_times = _timing(results, plan)
    history.stragglers = stragglers(history.step_times, run.ranks)
    history.workers = list(run.ranks)
    history.placement = dict(run.placement)  # logical shards per worker
    history.device, history.communicator = run.device, run.comm_kind
    history.restarts = restarts
    history.restart_log = restart_log
    history.membership = membership
    history.incidents = list(run.incidents)
    history.skipped_steps = int(rank0.get("skipped_steps", 0))
    history.sharded_step = bool(rank0.get("sharded_step", False))
    cbs.on_train_end(supervisor.logs)  # after the weights are back: callbacks may save the model
    return history


def _say_where_to_watch(client: Any) -> None:
    """With a progress bar: where the cluster's dashboard is (its task stream, workers' load)."""
    try:
        link = client.dashboard_link
    except Exception:  # noqa: BLE001 - a scheduler without a dashboard: nothing to point at
        return
    if link:
        print(f"Dask dashboard: {link}")


@dataclass
class _Run:
    """What stays the same across the attempts of one fit (a first start and its restarts)."""

    run_id: str
    client: Any
    model: Network
    cbs: CallbackList
    config: FitConfig
    plan: ShardPlan
    train: Rows
    validation: Rows | None
    input_dim: int
    stop: threading.Event | None
    wait_for_client: bool
    share_model: bool
    meta: dict
    hooks: list[StepHook]
    joinable: Callable[[list[str]], list[str]] | None = None
    # set by each attempt
    ranks: list[str] = field(default_factory=list)
    placement: dict[str, list[int]] = field(default_factory=dict)
    device: str = "cpu"
    comm_kind: str = "local"
    stuck: list[str] = field(default_factory=list)  # workers whose rank did not stop when aborted
    silent: list[str] = field(default_factory=list)  # workers that stopped answering (frozen, cut off)
    epochs_done: set[int] = field(default_factory=set)
    optimizer_configs: dict[int, dict] = field(default_factory=dict)  # epoch -> the optimizer's hyperparameters
    epoch_open: int | None = None  # the epoch whose begin the callbacks saw and whose end they did not
    # where the last attempt was when last heard of, and when; a restart's timer of its first report
    position: tuple[int, int] | None = None
    heard_at: float | None = None
    on_first_report: Callable[[float], None] | None = None
    on_rank_times: Callable[[int, int, str, dict[str, float]], None] | None = None
    on_incident: Callable[[dict], None] | None = None
    incidents: list[dict] = field(default_factory=list)  # every missed deadline of the run (its attempts)

    @property
    def sources(self) -> list[Any]:
        """Every distinct source of the run (validation rows may share the training sources)."""
        sources = [self.train.x, self.train.y]
        if self.validation is not None:
            sources += [self.validation.x, self.validation.y]
        return list({id(s): s for s in sources}.values())

    def _incident(self, incident: dict) -> None:
        """A step missed its deadline: kept for ``history.incidents``, said as a warning, and
        handed to the caller's ``on_incident`` (the job service writes it to the job's output)."""
        self.incidents.append(incident)
        warnings.warn(
            f"dtrain: {incident['summary']} (history.incidents has every rank's stacks)", UserWarning, stacklevel=2
        )
        if self.on_incident is not None:
            self.on_incident(incident)

    def attempt(self, ranks: list[WorkerInfo], point: ResumePoint, attempt: int) -> tuple[list[dict], Supervisor]:
        """Launch every rank from ``point`` and follow them to the end; returns their results."""
        client, plan, model, validation = self.client, self.plan, self.model, self.validation
        ranks = ranks[: self.config.most_workers]  # one shard each at least (and max_workers at most)
        self.device = choose_device(model.requested_device, ranks)
        self.comm_kind = choose_communicator(self.device, ranks)
        check_access(client, self.sources, ranks)
        if self.config.checkpoint is not None:
            check_checkpoint_folder(client, ranks[0].address, self.config.checkpoint.directory)
        owned = place_shards(plan, ranks, self.train, client)
        val_split = split_rows(validation.count, len(ranks)) if validation is not None else None
        check_memory(model, plan, owned, ranks, self.train, validation, val_split)
        self.ranks = [w.address for w in ranks]
        self.placement = {w.address: owned[r] for r, w in enumerate(ranks)}

        if not all(w.has_plugin for w in ranks):  # a peer without it would never answer
            client.register_plugin(comm_module.DtrainWorkerPlugin(), name=comm_module.PLUGIN_NAME)
        job_id = f"fit-{uuid.uuid4().hex[:12]}"  # new for every attempt: new task keys, events, NCCL id
        nccl_id = None
        if self.comm_kind == "nccl":
            from ..comm.nccl import make_unique_id  # (CuPy: only where the ranks have GPUs)

            nccl_id = client.submit(make_unique_id, workers=[ranks[0].address], pure=False).result()

        # Every rank starts from the source rank's weights: the survivor's that holds them in
        # memory, else rank 0's, sent from here.
        source = next(r for r, w in enumerate(ranks) if w.address == point.memory) if point.memory else 0
        initial = None if point.memory else {"params": point.params, "optimizer": point.optimizer}
        supervisor = Supervisor(
            client, job_id, ranks, self.cbs, model, self.config.timeout, self.wait_for_client, self.stop
        )
        supervisor.share_model = self.share_model
        # The callbacks see each epoch once. Epochs after the checkpoint are trained again but
        # not reported again; epochs the checkpoint holds whose end never reached the client
        # (rank 0 died between writing and reporting) are reported now.
        supervisor.epochs_done = self.epochs_done
        supervisor.epoch_open = self.epoch_open  # a restart within an epoch does not begin it again
        supervisor.optimizer_configs = self.optimizer_configs
        supervisor.on_first_report = self.on_first_report
        supervisor.on_rank_times = self.on_rank_times
        supervisor.on_incident = self._incident
        if self.config.elastic:
            supervisor.should_regroup = self._workers_waiting
        for epoch, logs in enumerate(point.history or []):
            supervisor.report_epoch_end(epoch, logs)
        if point.epoch < self.config.epochs:  # before the launch: what its callbacks set, the ranks start with
            supervisor.begin_epoch(point.epoch)
        compile_config = model.compile_config() or {}
        numbers = supervisor.optimizer_numbers(point.epoch)
        if numbers and compile_config:  # (a restart trains the epoch with the numbers it had)
            compile_config["optimizer"]["config"].update(numbers)
        try:
            with supervisor.running():  # from here on, any error or Ctrl-C aborts every rank
                initial_future = None
                if initial is not None:  # only the source rank receives them; it broadcasts them
                    [initial_future] = client.scatter([initial], workers=[ranks[source].address], hash=False)
                for r, worker in enumerate(ranks):
                    readers: dict[str, list] = {"x": [], "y": [], "w": [], "val_x": [], "val_y": [], "val_w": []}
                    for shard in owned[r]:
                        xr, yr = self.train.readers(*plan.bounds[shard], client, worker.address)
                        readers["x"].append(xr)
                        readers["y"].append(yr)
                        if self.train.w is not None:
                            readers["w"].append(self.train.weight_reader(*plan.bounds[shard], client, worker.address))
                    if validation is not None and val_split is not None and val_split[r][1] > val_split[r][0]:
                        xr, yr = validation.readers(*val_split[r], client, worker.address)
                        readers["val_x"].append(xr)
                        readers["val_y"].append(yr)
                        if validation.w is not None:
                            readers["val_w"].append(validation.weight_reader(*val_split[r], client, worker.address))
                    dependencies = {key: [reader.dependencies for reader in value] for key, value in readers.items()}
                    spec = RankSpec(
                        job_id=job_id,
                        run_id=self.run_id,
                        rank=r,
                        peers=self.ranks,
                        worker_id=worker.worker_id,
                        model_config=model.get_config(),
                        compile_config=compile_config,
                        input_dim=self.input_dim,
                        device=self.device,
                        comm=self.comm_kind,
                        config=self.config,
                        rows=plan.rows,
                        owned=owned[r],
                        start_epoch=point.epoch,
                        start_step=point.step,
                        start_totals=None if point.totals is None else [float(v) for v in point.totals],
                        start_history=point.history,
                        source_rank=source,
                        from_memory=point.memory is not None,
                        has_validation=validation is not None,
                        wait_for_client=self.wait_for_client,
                        share_model=self.share_model,
                        checkpoint_meta=self.meta,
                        attempt=attempt,
                        hooks=self.hooks,
                        nccl_id=nccl_id,
                    )
                    supervisor.futures.append(
                        client.submit(
                            run_rank,
                            spec,
                            readers,
                            dependencies,
                            initial_future if r == source else None,
                            key=f"dtrain-{job_id}-rank-{r}",
                            workers=[worker.address],
                            allow_other_workers=False,
                            pure=False,
                            retries=0,
                        )
                    )
                results = supervisor.follow(point.epoch, self.config.epochs)
        finally:
            self.stuck, self.silent = supervisor.stuck, supervisor.silent
            self.epoch_open = supervisor.epoch_open
            self.position = supervisor.position
            self.heard_at = supervisor.heard_at if supervisor.heard_at is not None else supervisor.started_at
        return results, supervisor

    def _workers_waiting(self) -> bool:
        """An elastic run, at an epoch's end: whether a worker it could take in is in the cluster."""
        most = self.config.most_workers
        if most is not None and len(self.ranks) >= most:
            return False
        try:
            present = scheduler_workers(self.client)
        except Exception:  # the scheduler is unreachable: the run finds out on its own
            return False
        if self.silent:  # a worker heard from again (woken up, its link back) may join again
            self.silent = sorted(silent_workers(self.client, self.silent))
        waiting = [w for w in present if w not in self.ranks and w not in self.silent]
        if self.joinable is not None:  # the caller's word (the job service: the workers no other job holds)
            return bool(waiting and self.joinable(waiting))
        allowed = self.config.workers
        return any(allowed is None or w in allowed for w in waiting)


def _handed_over(point: ResumePoint, rank0: dict) -> ResumePoint:
    """Where a run goes on after an attempt that ended at an epoch's end to regroup: rank 0's state."""
    return ResumePoint(
        params=rank0["params"],
        optimizer=rank0["optimizer"],
        epoch=point.epoch + len(rank0["history"]),
        step=0,
        history=[*(point.history or []), *rank0["history"]],
    )


def _recoverable(exc: BaseException) -> bool:
    """Failures a restart on the workers left can cure: a lost or stuck worker, a broken
    connection or a deadline (the step deadline of a hung rank). Not: the data, the maths
    (NaN), a cancel, Ctrl-C, or a scheduler that cannot be reached."""
    from distributed import KilledWorker
    from distributed.comm import CommClosedError

    if isinstance(exc, (JobCancelled, NonFiniteError, KeyboardInterrupt, SchedulerLostError)):
        return False
    # Connection failures only: a full disk or a missing file fails the same way again.
    connection = (CommClosedError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError)
    return isinstance(exc, (WorkerLostError, CommError, KilledWorker, TimeoutError, *connection))


def _restart_point(
    policy: CheckpointPolicy | None, meta: dict, start: ResumePoint, plan: ShardPlan, kept: ResumePoint | None
) -> tuple[ResumePoint, str]:
    """Where a restart begins: the state ``kept`` in a survivor's memory, unless this run wrote a
    checkpoint further on (a sharded step's memory is of its epoch's start); else this run's
    latest good checkpoint; else the run's own start, and why, in words."""
    if kept is not None and not _checkpoint_beyond(policy, plan, kept):
        return kept, ""
    point, whence = _checkpoint_or_start(policy, meta, start)
    if kept is not None and (kept.epoch, kept.step) >= (point.epoch, point.step):
        return kept, ""
    return point, whence


def _checkpoint_beyond(policy: CheckpointPolicy | None, plan: ShardPlan, point: ResumePoint) -> bool:
    """Whether the checkpoint folder holds one past ``point`` (from the names alone: no file is read)."""
    if policy is None:
        return False
    try:
        names = list_checkpoints(policy.directory)
    except Exception:  # unreadable here: it has nothing to offer
        return False
    return bool(names) and global_step_of(names[-1]) > point.epoch * plan.steps + point.step


def _checkpoint_or_start(policy: CheckpointPolicy | None, meta: dict, start: ResumePoint) -> tuple[ResumePoint, str]:
    if policy is None:
        return start, "the run writes no checkpoints"
    try:
        with warnings.catch_warnings():  # other runs' checkpoints in the folder are expected here
            warnings.simplefilter("ignore")
            point = resume_point(policy.directory, meta, same_run=True)
    except CheckpointError:  # none of this run is good (or none yet): from the start
        return start, f"no good checkpoint of this run in {policy.directory} (none written yet, or none readable here)"
    if (point.epoch, point.step) >= (start.epoch, start.step):
        return point, ""
    return start, f"the latest checkpoint of this run in {policy.directory} is older than the run's start"


def _memory_point(client: Any, run_id: str, ranks: Sequence[WorkerInfo]) -> ResumePoint | None:
    """The most advanced state of the run that a worker of the restart holds in memory, if any."""
    found = memory.best_memory(client, run_id, [w.address for w in ranks])
    if found is None:
        return None
    address, kept = found
    totals = None if kept["totals"] is None else np.asarray(kept["totals"], dtype=np.float64)
    return ResumePoint(epoch=kept["epoch"], step=kept["step"], totals=totals, history=kept["history"], memory=address)


def _restart_record(reason: str, run: _Run, point: ResumePoint, whence: str, noticed: float) -> dict:
    """A restart as ``history.restart_log`` and the job service record it (README: Restarts)."""
    epoch, step = run.position if run.position is not None else (None, None)
    resumed: dict[str, Any] = {"epoch": point.epoch, "step": point.step}
    if point.memory is not None:
        resumed["source"] = "memory"
    else:
        resumed["source"] = "checkpoint" if point.source is not None else "start"
        if whence:
            resumed["why"] = whence
    return {
        "reason": reason,
        "at": None if epoch is None else {"epoch": epoch, "step": step},
        "resumed_from": resumed,
        "detected_s": round(noticed - run.heard_at, 3) if run.heard_at is not None else None,
        "recovered_s": None,  # filled in when the restarted run first reports
    }


def describe_resume(resumed_from: dict) -> str:
    """A restart record's ``resumed_from`` in words (the job service's log line)."""
    where = f"epoch {resumed_from['epoch'] + 1}, step {resumed_from['step']}"
    if resumed_from["source"] == "memory":
        return f"continuing from a survivor's memory at {where}"
    if resumed_from["source"] == "checkpoint":
        return f"continuing from the checkpoint at {where}"
    if resumed_from["epoch"] == 0 and resumed_from["step"] == 0:
        return f"starting again from the beginning ({resumed_from.get('why', 'no checkpoint')})"
    return f"starting again from the run's start at {where} ({resumed_from.get('why', 'no checkpoint')})"


def _recovery_timer(record: dict, noticed: float) -> Callable[[float], None]:
    def first_report(at: float) -> None:
        record["recovered_s"] = round(at - noticed, 3)

    return first_report


def _surviving_ranks(
    client: Any,
    config: FitConfig,
    stuck: list[str],
    silent: list[str],
    reason: str,
    choose: Callable[[list[str]], list[str]] | None = None,
) -> list[WorkerInfo]:
    """The workers a restart runs on: those still in the cluster (of ``workers=``, when given),
    joined ones included, minus those whose rank did not stop (they are restarted, and serve
    again at a later restart) and the silent ones (frozen or cut off: left alone, they serve
    again at a later restart if they wake); ``choose`` may narrow them (the job service's
    allocation). Fewer than ``config.min_workers``: it waits up to ``config.timeout`` for more."""
    if stuck:
        try:
            alive = set(scheduler_workers(client))
            client.restart_workers([w for w in stuck if w in alive], timeout=60, raise_for_error=False)
        except Exception:
            pass
    deadline = time.monotonic() + config.timeout
    while True:
        usable = [w for w in sorted(scheduler_workers(client)) if w not in stuck and w not in silent]
        if choose is not None:
            candidates = [w for w in choose(usable) if w in usable]
        else:
            candidates = [w for w in (config.workers or usable) if w in usable]
        if len(candidates) >= config.min_workers or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if not candidates:
        raise WorkerLostError(f"No worker left to restart on after: {reason}")
    if len(candidates) < config.min_workers:
        raise WorkerLostError(
            f"{len(candidates)} worker(s) left, fewer than min_workers={config.min_workers}, and none joined "
            f"within timeout={config.timeout:g} s, after: {reason}"
        )
    return cluster_ranks(client, candidates)


def _timing(results: list[dict], plan: ShardPlan) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Per-step time split into compute, communication and waiting, from every rank's record (of
    the last attempt's most recent steps: training.loop.STEP_RECORDS).

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
    # Which steps these are (epoch x steps per epoch + step): the most recent ones of a long run.
    per_step["position"] = np.asarray(results[0]["times"]["position"])
    return summary, per_step


STRAGGLER_MARGIN = 0.10  # a rank whose median compute is this much above the ranks' median is reported


def stragglers(step_times: dict[str, np.ndarray], workers: Sequence[str]) -> list[dict[str, Any]]:
    """The ranks that computed their steps markedly slower than the others (a busy or weaker
    machine, a thermally throttled GPU): reported, not stopped; a rank is stopped only when a step
    outlasts the run's timeout. Each: rank, worker, its median compute (ms) and how much slower
    than the median of the ranks (``slower``: 0.18 for 18%), with a line that says it."""
    compute = step_times.get("compute")
    if compute is None or compute.ndim != 2 or compute.shape[0] < 2 or compute.shape[1] == 0:
        return []
    per_rank = np.median(compute, axis=1)
    typical = float(np.median(per_rank))
    found = []
    for rank, value in enumerate(per_rank):
        slower = float(value) / typical - 1.0 if typical > 0 else 0.0
        if slower > STRAGGLER_MARGIN:
            worker = workers[rank] if rank < len(workers) else "?"
            found.append(
                {
                    "rank": rank,
                    "worker": worker,
                    "compute_ms": round(float(value) * 1e3, 3),
                    "slower": round(slower, 3),
                    "message": f"rank {rank} on {worker}: compute {slower:.0%} slower than the median",
                }
            )
    return found
