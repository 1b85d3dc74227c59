"""The job service: training jobs run by the Dask scheduler itself.

A :class:`JobService` is a scheduler plugin (registered by the first ``dtrain submit``, or at
start-up with ``dask scheduler --preload dtrain.jobs.service``). It keeps the table of jobs,
gives each job the workers it asked for (or every free one), queues the jobs that cannot get
theirs yet, and runs each started job in a thread of the scheduler process: a Dask client of
that scheduler trains the job exactly as ``fit(..., client=)`` does and writes its outputs.
So a job outlives the process that submitted it, and the scheduler is the only server a user
runs. Clients talk to it through one scheduler handler, ``dtrain_jobs`` (see
:mod:`dtrain.jobs.client`).

Where code runs: the handler and the plugin hooks on the scheduler's event loop; each job's
driver in its own thread. They share the table under one lock, held only for short updates.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import secrets
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from distributed.diagnostics.plugin import SchedulerPlugin

from ..callbacks import Callback
from ..checkpoints import list_checkpoints
from ..cluster.errors import JobCancelled
from ..cluster.incidents import write_incident
from ..cluster.launch import RunControl, describe_resume, fit_on_cluster, stragglers
from ..leases import EXPIRES_S, Lease
from ..runs import RUN_NAME, new_run_name, run_location, run_names
from ..storage import Location
from ..training.checkpointing import restore, resume_point
from . import dashboard
from .outputs import history_of, tensorboard_callback, write_outputs, write_record
from .spec import job_from_dict
from .tracking import check_tracking, tracking_callbacks

if TYPE_CHECKING:
    from distributed import Scheduler

SERVICE_NAME = "dtrain-jobs"
HANDLER = "dtrain_jobs"
# A job's states: queued -> running -> succeeded | failed | cancelled (or queued -> cancelled).
TERMINAL = ("succeeded", "failed", "cancelled")
MAX_LOG_LINES = 10_000  # per job; older lines are dropped (the count of dropped ones is kept)
MAX_CURVE_POINTS = 2_000  # per job: the live loss curve is thinned to half when it reaches this
MAX_TIMED_EPOCHS = 1_000  # per job: the per-rank step times of its most recent epochs
KEEP_FINISHED = 1_000  # finished jobs remembered per scheduler; the oldest are forgotten
# Once the oldest queued job has waited this long, no later job starts before it (no more
# backfill): a stream of small jobs never starves a wide one. $DTRAIN_BACKFILL_WAIT_S sets it.
BACKFILL_WAIT_S = float(os.environ.get("DTRAIN_BACKFILL_WAIT_S", "30"))


@dataclass
class JobRecord:
    """One job as the service knows it. ``public()`` is what ``dtrain status --json`` prints."""

    job_id: str
    name: str
    spec: dict
    output: str  # this run's folder (dtrain.runs): where its files go
    requested: Any  # None (all free workers), a count, or a list of addresses
    epochs: int
    output_dir: str = ""  # the job's output location (output.dir), which holds its runs' folders
    run: str = ""  # the run folder's name ("": an output written before run folders, resumed in place)
    output_identity: str = ""  # output.dir itself (symlinks, file:// resolved): one job writes it at a time
    max_workers: int | None = None  # with requested None: no more than this (the job's shard count)
    min_workers: int = 1  # with requested None: no fewer than this (cluster.min_workers of an elastic job)
    elastic: bool = False  # it takes in free workers at its epochs' ends (cluster.elastic)
    resume: bool = False  # continue from the latest checkpoint in the output location
    state: str = "queued"
    submitted_at: float = field(default_factory=time.time)
    started_at: float | None = None
    ended_at: float | None = None
    workers: list[str] = field(default_factory=list)
    epoch: int = 0  # the epoch under way or last finished, counted from 1
    step: int = 0  # steps done in that epoch
    steps: int = 0  # steps per epoch
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    restarts: int = 0
    restart_reasons: list[str] = field(default_factory=list)
    restart_log: list[dict] = field(default_factory=list)  # history.restart_log's records, as they happen
    # The live view (the dashboard page): [epochs done, loss] as training reports it; each epoch's
    # per-rank step times (ms: compute, communication, waiting, step) and its slow ranks
    curve: list[list[float]] = field(default_factory=list)
    step_times: list[dict] = field(default_factory=list)
    stragglers: list[dict] = field(default_factory=list)
    # Each step that missed its deadline: its summary, where each rank was, and the folder of its report
    incidents: list[dict] = field(default_factory=list)
    error: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    waiting_for: str | None = None  # why a queued job has not started
    queue_position: int | None = None  # 1 for the oldest queued job
    lines: list[tuple[float, str]] = field(default_factory=list)
    logged: int = 0  # lines ever logged; lines[0] is line number logged - len(lines)
    cancel: threading.Event = field(default_factory=threading.Event)
    _log_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def log(self, text: str) -> None:
        with self._log_lock:  # the event loop and the job's thread both log
            self.lines.append((time.time(), text))
            self.logged += 1
            if len(self.lines) > MAX_LOG_LINES:
                del self.lines[: len(self.lines) - MAX_LOG_LINES]

    def log_since(self, since: int) -> tuple[list[tuple[float, str]], int]:
        """The lines logged from line number ``since`` on (those still kept), and the next number."""
        with self._log_lock:
            first = self.logged - len(self.lines)
            return self.lines[max(since - first, 0) :], self.logged

    def public(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "name": self.name,
            "state": self.state,
            "epoch": self.epoch,
            "epochs": self.epochs,
            "step": self.step,
            "steps": self.steps,
            "metrics": dict(self.metrics),
            "history": [dict(row) for row in self.history],
            "restarts": self.restarts,
            "restart_reasons": list(self.restart_reasons),
            "restart_log": [dict(entry) for entry in self.restart_log],
            "curve": [list(point) for point in self.curve],
            "step_times": [{**row, "ranks": [dict(r) for r in row["ranks"]]} for row in self.step_times],
            "stragglers": [dict(s) for s in self.stragglers],
            "incidents": [dict(i) for i in self.incidents],
            "error": self.error,
            "output": self.output,
            "output_dir": self.output_dir,
            "run": self.run,
            "files": dict(self.files),
            "workers": list(self.workers),
            "requested_workers": self.requested,
            "waiting_for": self.waiting_for,
            "queue_position": self.queue_position,
            "submitted_at": self.submitted_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
        }


class _JobTable:
    """Every job of one scheduler, and which workers the running ones hold."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[str, JobRecord] = {}  # in submission order
        self.busy: dict[str, str] = {}  # worker address -> job id


# One table per scheduler, shared by every instance of the plugin: registering it again (a second
# client racing the first) must not lose the jobs.
_TABLES: weakref.WeakKeyDictionary[Scheduler, _JobTable] = weakref.WeakKeyDictionary()
_TABLES_LOCK = threading.Lock()


def _table(scheduler: Scheduler) -> _JobTable:
    with _TABLES_LOCK:
        table = _TABLES.get(scheduler)
        if table is None:
            table = _TABLES[scheduler] = _JobTable()
        return table


class JobService(SchedulerPlugin):
    """dtrain's job table and runner on the scheduler. Register it with
    ``client.register_plugin(JobService())`` (once is enough; again is a no-op)."""

    name = SERVICE_NAME
    idempotent = True

    async def start(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.table = _table(scheduler)
        scheduler.handlers[HANDLER] = self.handle
        dashboard.install(scheduler, self)  # the /dtrain page and its API on the scheduler's web server

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        if hasattr(self, "table"):  # (with --preload, workers may register before start() ran)
            self._schedule()  # a queued job may fit now

    # -- the handler: event loop --------------------------------------------------------------------

    async def handle(self, action: str, **kwargs: Any) -> dict[str, Any]:
        """Answers with a job record (or list, or log), or ``{"refused": why, "kind": ...}``.
        ("op" would be the natural name of ``action``, but Dask's RPC uses it for the handler's.)"""
        operations: dict[str, Callable[..., dict[str, Any]]] = {
            "submit": self._submit,
            "status": self._status,
            "list": self._list,
            "cancel": self._cancel,
            "logs": self._logs,
        }
        if action not in operations:
            return {"refused": f"unknown action {action!r}: expected one of {', '.join(operations)}"}
        try:
            inspect.signature(operations[action]).bind(**kwargs)
        except TypeError as exc:  # a client of another version
            return {"refused": f"bad request for {action!r}: {exc}"}
        if action == "submit":  # validation may import fsspec backends: off the event loop
            return await asyncio.to_thread(self._submit, **kwargs)
        return operations[action](**kwargs)

    def handle_now(self, action: str, **kwargs: Any) -> dict[str, Any]:
        """A read-only action (status, list, logs) answered in the caller's thread (the page's)."""
        reads: dict[str, Callable[..., dict[str, Any]]] = {
            "status": self._status,
            "list": self._list,
            "logs": self._logs,
        }
        return reads[action](**kwargs)

    def _submit(self, spec: dict, source: str | None = None, resume: bool | str = False) -> dict[str, Any]:
        """Queue a job. ``resume``: True continues the newest run in the job's output location,
        a run's name continues that run; else the job is a new run in a folder of its own."""
        try:
            job = job_from_dict(spec, check_files=False, source=source)
            run, output = _run_folder(job.output_dir, resume)
            check_tracking(job)  # output.mlflow: the MLflow client must be here, where the job runs
        except ValueError as exc:  # (JobError is one: an invalid job; or no such run to resume)
            return {"refused": str(exc), "kind": "invalid"}
        with self.table.lock:
            identity = Location(job.output_dir).identity  # a symlink or a file:// URL names the same folder
            holder = next(
                (r for r in self.table.jobs.values() if r.output_identity == identity and r.state not in TERMINAL),
                None,
            )
            if holder is not None:
                return {
                    "refused": f"job {holder.job_id} ({holder.state}) already writes to {job.output_dir}: wait for it, "
                    "cancel it, or choose another output.dir",
                    "kind": "invalid",
                }
            job_id = _new_job_id(job.name)
            while job_id in self.table.jobs:
                job_id = _new_job_id(job.name)
            config = job.fit_config()
            record = JobRecord(
                job_id=job_id,
                name=job.name,
                spec=job.to_dict(),
                output=output,
                output_dir=job.output_dir,
                run=run,
                output_identity=identity,
                requested=job.workers,
                epochs=job.epochs,
                max_workers=config.most_workers,
                min_workers=config.min_workers,
                elastic=config.elastic,
                resume=resume is not False,  # (the run it continues is decided: run, output)
            )
            record.log(f"submitted{f' from {source}' if source else ''}; output: {record.output}")
            self.table.jobs[record.job_id] = record
            self._forget_old()
        self._schedule_soon()
        return record.public()

    def _status(self, job_id: str) -> dict[str, Any]:
        record = self.table.jobs.get(job_id)
        return record.public() if record else _unknown(job_id)

    def _list(self) -> dict[str, Any]:
        with self.table.lock:
            records = list(self.table.jobs.values())
        return {"jobs": [_brief(r) for r in records]}

    def _cancel(self, job_id: str) -> dict[str, Any]:
        record = self.table.jobs.get(job_id)
        if record is None:
            return _unknown(job_id)
        with self.table.lock:
            if record.state in TERMINAL:
                return record.public()
            record.cancel.set()
            if record.state == "queued":  # nothing runs yet: cancelled at once
                record.state, record.ended_at, record.waiting_for = "cancelled", time.time(), None
                record.log("cancelled while queued")
            else:
                record.log("cancel requested: stopping every rank")
        return record.public()

    def _logs(self, job_id: str, since: int = 0) -> dict[str, Any]:
        """Log lines from number ``since`` (of all lines ever logged), and the next number to ask for."""
        record = self.table.jobs.get(job_id)
        if record is None:
            return _unknown(job_id)
        state = record.state  # before the lines: a job's last line is logged before its final state is set
        lines, next_line = record.log_since(since)
        return {
            "job_id": job_id,
            "state": state,
            "lines": [{"time": t, "text": text} for t, text in lines],
            "next": next_line,
        }

    # -- scheduling: any thread -----------------------------------------------------------------------

    def _schedule(self) -> None:
        """Start every queued job whose workers are free, in submission order. A job that cannot
        start holds back later ones only once it has waited BACKFILL_WAIT_S: until then a later job
        that asks for other or fewer workers starts first (backfill); after, the workers that free
        up are kept for it, so that a stream of small jobs never starves a wide one."""
        started: list[JobRecord] = []
        now = time.time()
        with self.table.lock:
            present = [address for address, ws in self.scheduler.workers.items() if ws.status.name == "running"]
            head: JobRecord | None = None  # the oldest queued job that cannot start now
            position = 0
            for record in self.table.jobs.values():
                if record.state != "queued":
                    continue
                position += 1
                record.queue_position = position
                if head is not None and now - head.submitted_at > BACKFILL_WAIT_S:
                    reason = (
                        f"behind job {head.job_id}, queued {now - head.submitted_at:.0f} s ago: no job starts before "
                        f"one that has waited {BACKFILL_WAIT_S:g} s"
                    )
                    if reason.split(" queued")[0] != (record.waiting_for or "").split(" queued")[0]:
                        record.log(f"queued: {reason}")
                    record.waiting_for = reason
                    continue
                free = [address for address in present if address not in self.table.busy]
                workers, reason = _claim(record.requested, free, present, record.max_workers, record.min_workers)
                if workers is None:
                    # Only a job the cluster could run if every worker were free holds the others
                    # back: one asking for more workers than there are must not block the queue.
                    fits = _claim(record.requested, present, present, record.max_workers, record.min_workers)[0]
                    if head is None and fits is not None:
                        head = record
                    if reason != record.waiting_for:
                        record.waiting_for = reason
                        record.log(f"queued: {reason}")
                    continue
                record.queue_position = None
                for address in workers:
                    self.table.busy[address] = record.job_id
                record.state, record.workers, record.waiting_for = "running", workers, None
                record.started_at = time.time()
                started.append(record)
        for record in started:
            threading.Thread(target=self._run, args=(record,), name=f"dtrain-job-{record.job_id}", daemon=True).start()

    def _reallocate(self, record: JobRecord, usable: list[str]) -> list[str]:
        """A restart's workers: the job's own that are still usable, plus free ones that joined
        meanwhile where the job asked for all free workers or for more than it has left."""
        with self.table.lock:
            for address in record.workers:
                if address not in usable and self.table.busy.get(address) == record.job_id:
                    del self.table.busy[address]  # gone (or stuck and being restarted)
            kept = [a for a in record.workers if a in usable]
            free = [a for a in usable if a not in self.table.busy]
            if record.requested is None:
                wanted = len(kept) + len(free) if record.max_workers is None else record.max_workers
            elif isinstance(record.requested, int):
                wanted = record.requested
            else:
                wanted = len(kept)  # named workers: only those
            workers = kept + free[: max(0, wanted - len(kept))]
            for address in workers:
                self.table.busy[address] = record.job_id
            record.workers = workers
        record.log(
            f"{'training' if record.elastic else 'restarting'} on {len(workers)} worker(s): {', '.join(workers)}"
        )
        return workers

    def _free(self, workers: list[str]) -> list[str]:
        with self.table.lock:
            return [address for address in workers if address not in self.table.busy]

    def _release(self, record: JobRecord) -> None:
        with self.table.lock:
            for address in record.workers:
                if self.table.busy.get(address) == record.job_id:
                    del self.table.busy[address]
        self._schedule_soon()

    def _schedule_soon(self) -> None:
        """Schedule on the event loop: the scheduler's worker table is only safe to read there."""
        self.scheduler.loop.add_callback(self._schedule)

    def _forget_old(self) -> None:
        finished = [job_id for job_id, r in self.table.jobs.items() if r.state in TERMINAL]
        for job_id in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self.table.jobs[job_id]

    # -- one job: its own thread ----------------------------------------------------------------------

    def _run(self, record: JobRecord) -> None:

        record.log(f"started on {len(record.workers)} worker(s): {', '.join(record.workers)}")
        try:
            files = self._train(record)  # frees the workers as soon as training has ended
        except JobCancelled:
            self._finish(record, "cancelled", "cancelled: every rank was stopped")
        except BaseException as exc:  # the job fails; the service goes on
            error = f"{type(exc).__name__}: {exc}"
            for line in traceback.format_exception(exc)[-12:]:
                for text in line.rstrip().splitlines():
                    record.log(f"  {text}")
            self._finish(record, "failed", f"failed: {error}", error=error)
        else:
            record.files = files
            self._finish(record, "succeeded", f"succeeded; outputs in {record.output}")
        finally:
            self._release(record)  # (again: a no-op once freed)

    def _train(self, record: JobRecord) -> dict[str, str]:
        """The job's whole life in its output folder, holding the folder's lease (dtrain.leases):
        no other job, also from another scheduler, writes there meanwhile."""

        def waiting(held: dict) -> None:
            record.log(
                f"the output folder is held by {held.get('run')} (on {held.get('holder')}): waiting up to "
                f"{EXPIRES_S:g} s for a sign of life before taking it over"
            )

        def lost(message: str) -> None:
            record.log(f"stopping: {message}")
            record.cancel.set()

        with Lease(record.output_dir, f"job-{record.job_id}").held(on_wait=waiting, on_lost=lost):
            return self._train_holding_the_folder(record)

    def _train_holding_the_folder(self, record: JobRecord) -> dict[str, str]:
        from distributed import Client

        job = job_from_dict(record.spec, check_files=False)
        # The job file first: a job that dies with its scheduler is resumed from it (dtrain resume).
        write_record(record.output, record.public(), job_yaml=job.to_yaml())
        model = job.build_model()
        data = job.data()
        # The workers it was given; an elastic job takes in free ones as well (joinable, below).
        config = replace(job.fit_config(resume=record.resume, run_dir=record.output), workers=tuple(record.workers))
        if config.resume_from is not None:
            record.log(f"resuming from the latest checkpoint in {config.resume_from}")
        control = RunControl(
            stop=record.cancel,
            on_restart=lambda count, reason: _restarted(record, count, reason),
            restart_workers=lambda usable: self._reallocate(record, usable),
            joinable=lambda workers: self._free(workers),
            on_rank_times=lambda epoch, rank, worker, times: _rank_timed(record, epoch, rank, worker, times),
            on_incident=lambda incident: _incident(record, incident),
        )
        try:
            with Client(
                self.scheduler.address, security=_client_security(self.scheduler), set_as_default=False, timeout="30s"
            ) as client:
                if record.cancel.is_set():
                    raise JobCancelled(f"job {record.job_id} was cancelled")
                history = fit_on_cluster(
                    model,
                    data["x"],
                    data["y"],
                    data["validation_data"],
                    [
                        _Recorder(record),
                        tensorboard_callback(record.output),
                        *tracking_callbacks(job, record.job_id, record.log),
                    ],
                    config,
                    client=client,
                    control=control,
                )
        except BaseException as exc:
            self._release(record)  # the workers are free as soon as training has ended
            _keep_what_was_done(record, job, model, exc)  # (still holding the folder)
            raise
        self._release(record)
        if record.cancel.is_set():
            record.log("cancel came too late: training had finished; writing the outputs")
        for straggler in history.stragglers:  # slow but alive: reported, not stopped
            record.log(f"straggler: {straggler['message']}")
        record.log(f"trained: {_format_metrics(record.metrics)}; writing outputs")
        done = record.public()
        # result.json also says how the job's workers changed (elastic jobs) and which were slow
        done.update(
            state="succeeded",
            ended_at=time.time(),
            membership=list(history.membership),
            stragglers=[{k: v for k, v in s.items() if k != "message"} for s in history.stragglers],
        )
        return write_outputs(record.output, model=model, history=history, job_yaml=job.to_yaml(), record=done)

    def _finish(self, record: JobRecord, state: str, message: str, error: str | None = None) -> None:
        """result.json first (a successful job wrote it with its outputs), then the last log line,
        then the state: a client that sees the final state finds the record and the log complete."""

        ended = time.time()
        if state != "succeeded" and not record.files:  # (one that kept what it did wrote result.json with them)
            final = record.public()
            final.update(state=state, ended_at=ended, error=error)
            try:
                write_record(record.output, final)
            except Exception as exc:  # the job's own error matters more
                record.log(f"could not write result.json to {record.output}: {type(exc).__name__}: {exc}")
        record.log(message)
        with self.table.lock:
            record.error, record.state, record.ended_at = error, state, ended


def _keep_what_was_done(record: JobRecord, job: Any, model: Any, exc: BaseException) -> None:
    """A cancelled or failed job's outputs: the epochs it finished (history.csv, the plot) and
    its latest checkpoint's weights as its model, with result.json saying how it ended. Nothing
    here may hide the job's own error: a failure to write is logged."""
    state = "cancelled" if isinstance(exc, JobCancelled) else "failed"
    rows = [dict(row) for row in record.history]
    point = None
    directory = job.checkpoint_dir(record.output)
    try:
        if directory is not None and list_checkpoints(directory):
            point = resume_point(directory, {})  # (this run's: a run's checkpoints are in its own folder)
    except Exception as problem:  # noqa: BLE001 - reported, and the rest is still kept
        record.log(f"its latest checkpoint could not be read ({type(problem).__name__}: {problem}): no model kept")
    if not rows and point is None:
        return  # nothing done: result.json alone says how it ended (_finish)
    final = record.public()
    final.update(
        state=state, ended_at=time.time(), error=None if state == "cancelled" else f"{type(exc).__name__}: {exc}"
    )
    kept = None
    if point is not None and model.built and point.params is not None and point.params.shape == model.params.shape:
        restore(model, point)
        kept = model
        final["model_from"] = {"checkpoint": point.source, "epoch": point.epoch, "step": point.step}
    try:
        record.files = write_outputs(
            record.output, model=kept, history=history_of(rows), job_yaml=job.to_yaml(), record=final
        )
    except Exception as problem:  # noqa: BLE001 - the job's own error matters more
        record.log(f"could not write what the job did to {record.output}: {type(problem).__name__}: {problem}")
        return
    where = f"; its model is its latest checkpoint's ({_position(point)})" if kept is not None else ""
    record.log(f"{state} after {len(rows)} of {record.epochs} epochs: history and plot written{where}")


def _position(point: Any) -> str:
    return f"after epoch {point.epoch}" if not point.step else f"epoch {point.epoch + 1}, step {point.step}"


class _Recorder(Callback):
    """Keeps a job's record up to date from fit's callbacks (it never changes the training)."""

    observes_only = True  # the workers need not wait for it at the end of an epoch

    def __init__(self, record: JobRecord) -> None:
        super().__init__()
        self.record = record

    def on_train_begin(self, logs=None):
        self.record.steps = int(self.params.get("steps", 0))

    def on_epoch_begin(self, epoch, logs=None):
        self.record.epoch, self.record.step = epoch + 1, 0
        self._epoch_start = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        r = self.record
        r.step, r.metrics = batch + 1, dict(logs or {})
        if "loss" in r.metrics and r.steps:
            with r._log_lock:  # (the page reads it from the event loop)
                r.curve.append([r.epoch - 1 + r.step / r.steps, float(r.metrics["loss"])])
                if len(r.curve) >= MAX_CURVE_POINTS:  # every other point: a bounded curve of the whole run
                    r.curve[:] = r.curve[::2]

    def on_epoch_end(self, epoch, logs=None):
        r = self.record
        r.epoch, r.step, r.metrics = epoch + 1, r.steps, dict(logs or {})
        seconds = time.monotonic() - getattr(self, "_epoch_start", time.monotonic())
        r.history.append({"epoch": epoch + 1, **r.metrics, "seconds": round(seconds, 3)})
        r.log(f"epoch {epoch + 1}/{r.epochs}: {_format_metrics(r.metrics)} ({seconds:.1f} s)")


def _client_security(scheduler: Scheduler) -> Any:
    """The job drivers' client talks to its own scheduler: with TLS and no client certificate
    configured, it presents the scheduler's (the same identity, trusted by the same CA)."""
    security = getattr(scheduler, "security", None)
    if security is None or not getattr(security, "tls_scheduler_cert", None) or security.tls_client_cert:
        return security
    from distributed.security import Security

    return Security(
        tls_ca_file=security.tls_ca_file,
        tls_client_cert=security.tls_scheduler_cert,
        tls_client_key=security.tls_scheduler_key,
        require_encryption=True,
    )


def _rank_timed(record: JobRecord, epoch: int, rank: int, worker: str, times: dict[str, float]) -> None:
    """One rank's step times of an epoch: into the epoch's row (made by its first rank), with
    each rank's waiting (for the slowest rank's compute) and communication split as steps.csv
    splits them, and the epoch's slow ranks."""
    with record._log_lock:
        rows = record.step_times
        row = next((r for r in reversed(rows[-4:]) if r["epoch"] == epoch + 1), None)  # (ranks report apart)
        if row is None:
            row = {"epoch": epoch + 1, "ranks": []}
            rows.append(row)
            rows.sort(key=lambda r: r["epoch"])
            del rows[: max(0, len(rows) - MAX_TIMED_EPOCHS)]
        ranks = row["ranks"]
        ranks[:] = [r for r in ranks if r["rank"] != rank]
        ms = {f"{name}_ms": float(value) * 1e3 for name, value in times.items()}  # compute, allreduce, step
        ranks.append({"rank": rank, "worker": worker, **ms})
        ranks.sort(key=lambda r: r["rank"])
        slowest = max(r["compute_ms"] for r in ranks)
        for r in ranks:
            r["waiting_ms"] = min(max(slowest - r["compute_ms"], 0.0), r["allreduce_ms"])
            r["communication_ms"] = r["allreduce_ms"] - r["waiting_ms"]
        compute = np.array([[r["compute_ms"] / 1e3] for r in ranks])
        slow = stragglers({"compute": compute}, [r["worker"] for r in ranks])
        record.stragglers = [{**s, "epoch": epoch + 1} for s in slow]


def _incident(record: JobRecord, incident: dict) -> None:
    """A step missed its deadline: the report to the run's incidents/<time>/ (every rank's
    stacks), a line in the log, and its summary in the record (status --json, the page)."""
    try:
        folder: str | None = write_incident(record.output, incident)
    except Exception as problem:  # noqa: BLE001 - the summary still reaches the log and the record
        folder = None
        record.log(f"could not write the incident report to {record.output}: {type(problem).__name__}: {problem}")
    keep = ("rank", "worker", "answered", "epoch", "step", "waiting_for", "why")
    entry = {
        "time": incident["time"],
        "summary": incident["summary"],
        "folder": folder,
        "ranks": [{k: r[k] for k in keep if k in r} for r in incident["ranks"]],
        "not_answering": list(incident["not_answering"]),
    }
    with record._log_lock:
        record.incidents.append(entry)
    record.log(f"incident: {incident['summary']}" + (f" (every rank's stacks: {folder})" if folder else ""))


def _restarted(record: JobRecord, count: int, restart: dict) -> None:
    record.restarts = count
    record.restart_reasons.append(restart["reason"])
    record.restart_log.append(restart)  # its recovered_s is filled in when training goes on
    record.log(f"restart {count}: {restart['reason']}; {describe_resume(restart['resumed_from'])}, on the workers left")


def _claim(
    requested: Any, free: list[str], present: list[str], cap: int | None, least: int = 1
) -> tuple[list[str] | None, str]:
    """The workers a job gets now, or (None, why it waits). ``cap``: at most that many of "every
    free worker" (a job with fewer shards than workers could use no more); ``least``: no fewer."""
    if requested is None:
        if len(free) >= least:
            return free[:cap], ""
        if free:
            return None, f"waiting for {least} free workers (cluster.min_workers; {len(free)} free of {len(present)})"
        return (
            None,
            f"waiting for a free worker (the cluster has {len(present)}, all busy)"
            if present
            else "waiting for workers to join the cluster",
        )
    if isinstance(requested, int):
        if len(free) >= requested:
            return free[:requested], ""
        short = (
            f"; the cluster has only {len(present)}: add workers or lower cluster.workers"
            if len(present) < requested
            else ""
        )
        return None, f"waiting for {requested} free workers ({len(free)} free of {len(present)} in the cluster{short})"
    missing = [a for a in requested if a not in present]
    busy = [a for a in requested if a in present and a not in free]
    if not missing and not busy:
        return list(requested), ""
    parts = ([f"not in the cluster: {', '.join(missing)}"] if missing else []) + (
        [f"busy: {', '.join(busy)}"] if busy else []
    )
    return None, f"waiting for its workers ({'; '.join(parts)})"


def _run_folder(output_dir: str, resume: bool | str) -> tuple[str, str]:
    """(the run's name, its folder) for a job writing to ``output_dir``: a new run, or the run
    that ``resume`` continues (True: the newest; an output written before run folders is
    continued in place, with the name "")."""
    if resume is False:
        run = new_run_name()
        return run, run_location(output_dir, run)
    runs = run_names(output_dir)
    if resume is True:
        if runs:
            return runs[-1], run_location(output_dir, runs[-1])
        return "", output_dir
    if not isinstance(resume, str) or not RUN_NAME.match(resume) or resume not in runs:
        known = ", ".join(runs[-5:]) or "none"
        raise ValueError(f"resume: {output_dir} has no run {resume!r} (its newest runs: {known})")
    return resume, run_location(output_dir, resume)


def _new_job_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"


def _unknown(job_id: str) -> dict[str, Any]:
    return {
        "refused": f"no job {job_id!r} on this scheduler (see `dtrain list`; a restarted scheduler forgets its jobs)",
        "kind": "unknown",
    }


def _brief(record: JobRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in record.public().items()
        if key not in ("history", "files", "restart_reasons", "restart_log", "curve", "step_times", "incidents")
    }


def _format_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{name}={value:.4g}" for name, value in metrics.items()) or "no metrics yet"


def dask_setup(scheduler: Scheduler) -> None:
    """``dask scheduler --preload dtrain.jobs.service``: the service is there from the start."""
    scheduler.add_plugin(JobService(), name=SERVICE_NAME, idempotent=True)
