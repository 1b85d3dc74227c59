"""Follows the rank tasks of one attempt from the client: progress events to the callbacks,
failed ranks and lost workers, a cancel or Ctrl-C; on the first failure every rank is aborted
within a moment and the original error is raised."""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import comm as comm_module
from ..callbacks import CallbackList
from ..comm import Aborted
from ..network import Network
from . import incidents
from .errors import JobCancelled, SchedulerLostError, WorkerLostError
from .probe import WorkerInfo, run_with_deadline, scheduler_workers
from .rank import EPOCH_GO_ON, EPOCH_REGROUP, EPOCH_STOP, event_topic, live_model_state

LIVENESS_INTERVAL_S = 0.5  # how often the driver checks that every rank's worker is alive
ABORT_GRACE_S = 10.0  # how long aborted ranks get to return before their tasks are released
ABORT_SEND_S = 1.0  # how long an abort waits for the workers to take it (a silent one never does)
SILENT_HEARTBEATS = 6  # a worker unheard of for this many heartbeat intervals (3 s at least) is silent


class Supervisor:
    """Follows the rank tasks from the client: progress events to callbacks, failures, lost
    workers, Ctrl-C. Runs in the caller's thread; Dask events arrive on the client's event
    loop and are handed over through a queue."""

    def __init__(
        self,
        client: Any,
        job_id: str,
        ranks: list[WorkerInfo],
        cbs: CallbackList,
        model: Network,
        timeout: float,
        wait_for_client: bool,
        stop: threading.Event | None = None,
    ) -> None:
        self.client, self.job_id, self.ranks = client, job_id, ranks
        self.cbs, self.model, self.timeout, self.wait_for_client = cbs, model, timeout, wait_for_client
        self.futures: list[Any] = []
        self.stop = stop
        self.stuck: list[str] = []  # workers whose rank was still running after an abort
        self.silent: list[str] = []  # workers that stopped answering the scheduler (frozen, cut off)
        self.events: queue.Queue[tuple[Any, dict]] = queue.Queue()
        self.epoch_open: int | None = None
        self.epochs_done: set[int] = set()
        # The optimizer's hyperparameters each epoch trains with, as the callbacks left them at
        # its begin (shared by the attempts of a run: a restart trains an epoch again with its own).
        self.optimizer_configs: dict[int, dict[str, Any]] = {}
        # Callbacks read the model at epoch ends (ModelCheckpoint...): it is fetched from rank 0
        # before they run, while rank 0 waits for the answer.
        self.share_model = False
        self.epochs = 0
        self.logs: dict[str, float] = {}
        # The ranks' reports (rank 0's progress, every PROGRESS_INTERVAL_S, and epoch ends): where
        # training was and when the client last heard of it; ``on_first_report`` hears the first.
        self.started_at = time.monotonic()
        self.heard_at: float | None = None
        self.position: tuple[int, int] | None = None  # (epoch, step) of the last report
        self.on_first_report: Callable[[float], None] | None = None
        # Each rank's median step times of each epoch (events of kind "times"), for a live view:
        # on_rank_times(epoch, rank, worker address, {compute, allreduce, step} seconds).
        self.on_rank_times: Callable[[int, int, str, dict[str, float]], None] | None = None
        # A step that missed its deadline: every rank's whereabouts and stacks (an incident), heard here
        self.on_incident: Callable[[dict], None] | None = None
        # An elastic run: asked at each epoch's end whether workers wait to join; if so, the
        # ranks end this attempt there and the run goes on with them (``regrouping``).
        self.should_regroup: Callable[[], bool] | None = None
        self.regrouping = False

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
        reason = (
            "interrupted on the client (Ctrl-C)"
            if isinstance(exc, KeyboardInterrupt)
            else f"{type(exc).__name__}: {exc}"
        )
        try:  # only the workers still there: a call to a dead one waits for the connect timeout
            alive: set[str] | None = self._alive_addresses()
        except Exception:  # the scheduler is unreachable: the ranks' own deadlines stop them
            alive = None
        # (a failure while the ranks were being launched leaves the later ones without a task)
        launched = self.ranks[: len(self.futures)]
        present = [r for r, w in enumerate(launched) if alive is not None and w.address in alive]
        # Silent workers (frozen: SIGSTOP, a paused VM; or cut off) answer nobody: they get the
        # abort without anyone waiting for it (they take it if they wake), and their ranks are not
        # waited for.
        silent = self._silent_workers([self.ranks[r].address for r in present if not self.futures[r].done()])
        if self.on_incident is not None and incidents.deadline_missed(exc) is not None:  # before the abort
            gone = {w.address for w in launched} - (alive or set())
            self._report_incident(exc, [w.address for w in launched], silent | gone)
        message = f"training aborted: {reason}"
        self._send_abort([self.ranks[r].address for r in present if self.ranks[r].address not in silent], message)
        if silent:
            self._send_abort(sorted(silent), message, wait_s=0.0)
        self._release(present, silent)

    def _report_incident(self, exc: BaseException, workers: list[str], silent: set[str]) -> None:
        """A step missed its deadline: where every rank was (dtrain.cluster.incidents), to
        ``on_incident``. Nothing here may keep the abort from going out: a failure is printed."""
        assert self.on_incident is not None
        try:
            self.on_incident(incidents.collect(self.client, self.job_id, workers, silent, exc, self.timeout))
        except Exception as problem:  # noqa: BLE001 - the report is a help, the abort is a must
            print(f"dtrain: no incident report ({type(problem).__name__}: {problem})", file=sys.stderr)

    def _send_abort(self, targets: list[str], reason: str, wait_s: float = ABORT_SEND_S) -> None:
        """Tell the ranks on ``targets`` to stop, waiting ``wait_s`` at most: the call returns only
        once every worker has answered, and a worker that froze a moment ago would never answer.
        The call goes on in the background meanwhile."""
        if targets:  # (the scheduler gone: the ranks' own deadlines stop them)
            run_with_deadline(
                self.client,
                comm_module.abort_on_worker,
                self.job_id,
                reason,
                workers=targets,
                wait_s=wait_s,
                name=f"dtrain-abort-{self.job_id}",
            )

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
        if message["kind"] == "times":  # (says nothing of where training is: not a report)
            rank = message["rank"]
            if self.on_rank_times is not None and 0 <= rank < len(self.ranks):
                self.on_rank_times(message["epoch"], rank, self.ranks[rank].address, message["times"])
            return
        epoch = message["epoch"]
        first = self.heard_at is None
        self.heard_at = time.monotonic()
        self.position = (epoch, message["step"] + 1) if message["kind"] == "progress" else (epoch + 1, 0)
        if first and self.on_first_report is not None:
            self.on_first_report(self.heard_at)
        if epoch in self.epochs_done:  # trained again after a restart: its callbacks ran the first time
            if message["kind"] == "epoch":
                self._answer(epoch)
            return
        self._begin(epoch)
        if message["kind"] == "progress":
            self.cbs.on_train_batch_end(message["step"], message["logs"])
            self._check_unchanged_within(epoch)
        else:
            self._epoch_end(epoch, message["logs"], notify=True)

    def report_epoch_end(self, epoch: int, logs: dict) -> None:
        """An epoch's end that reached the client before this attempt (a checkpoint's history)."""
        self._epoch_end(epoch, logs, notify=False)

    def _epoch_end(self, epoch: int, logs: dict, notify: bool) -> None:
        if epoch in self.epochs_done:
            return
        self._begin(epoch)
        if notify and self.share_model:
            self._fetch_model()
        self.cbs.on_epoch_end(epoch, logs)
        self.epochs_done.add(epoch)
        self.epoch_open = None
        self.logs = logs
        if notify and not self.model.stop_training and epoch + 1 < self.epochs:
            # The next epoch's begin before the answer, as one process runs them: what its
            # callbacks change (LearningRateScheduler) goes to the ranks with the answer.
            self.begin_epoch(epoch + 1)
        if notify:
            self._answer(epoch)

    def _fetch_model(self) -> None:
        """The client's model takes rank 0's weights and optimizer state at this epoch's end."""
        address = self.ranks[0].address
        answers = run_with_deadline(
            self.client, live_model_state, self.job_id, workers=[address], wait_s=self.timeout, name="dtrain-model"
        )
        state = (answers or {}).get(address)
        if state is None:
            raise RuntimeError(f"Rank 0 of job {self.job_id} no longer holds its model at an epoch's end.")
        self.model.params[...] = self.model.backend.asarray(state["params"])
        self.model.compiled_optimizer.set_state(state["optimizer"])

    def begin_epoch(self, epoch: int) -> None:
        """The callbacks' begin of ``epoch`` (once), and the optimizer's hyperparameters it trains
        with: checked against the epoch before's (a callback may change numbers, nothing else)."""
        self._begin(epoch)
        if epoch in self.optimizer_configs:
            return
        optimizer = self.model.compiled_optimizer
        before = self.optimizer_configs.get(epoch - 1)
        if before is not None:
            optimizer.changes_since(before)  # (ValueError for what the ranks cannot take)
        self.optimizer_configs[epoch] = optimizer.hyperparameters()

    def _check_unchanged_within(self, epoch: int) -> None:
        """The ranks are already further on than a batch callback sees: what it changes in the
        optimizer cannot reach the step it meant. An error that says where to change it."""
        now = self.optimizer_configs.get(epoch)
        if now is None:
            return
        try:
            changed = sorted(self.model.compiled_optimizer.changes_since(now))
        except ValueError as exc:
            changed = [str(exc)]
        if changed:
            raise ValueError(
                f"A callback changed the optimizer ({', '.join(changed)}) in on_train_batch_end during epoch "
                f"{epoch + 1}; with client= the workers run ahead of the client's batch callbacks, so such a change "
                "cannot reach the batch it was meant for. Change it in on_epoch_begin or on_epoch_end (it then "
                "reaches every worker before the next epoch), use a learning-rate schedule "
                "(dtrain.optimizers.schedules) for changes within epochs, or train in one process."
            )

    def optimizer_numbers(self, epoch: int) -> dict[str, float] | None:
        """The optimizer's numbers ``epoch`` trains with (None: not recorded)."""
        config = self.optimizer_configs.get(epoch)
        return None if config is None else self.model.compiled_optimizer.numbers(config)

    def _answer(self, epoch: int) -> None:
        """Rank 0 waits for this answer before it starts the next epoch: go on, stop (a callback
        set model.stop_training: EarlyStopping...) or end this attempt here to regroup; and the
        optimizer's numbers for the next epoch (a callback may have changed the learning rate)."""
        if not self.wait_for_client:
            return
        verdict = EPOCH_STOP if self.model.stop_training else EPOCH_GO_ON
        if verdict == EPOCH_GO_ON and epoch + 1 < self.epochs and self.should_regroup is not None:
            if self.should_regroup():
                verdict, self.regrouping = EPOCH_REGROUP, True
        answer = {"verdict": verdict, "optimizer": self.optimizer_numbers(epoch + 1)}
        # Waited for up to the run's timeout: a rank 0 that froze meanwhile would never answer (it
        # fails its own wait instead), and a gone one is the supervisor's to notice.
        run_with_deadline(
            self.client,
            comm_module.deliver_on_worker,
            self.job_id,
            "driver",
            f"epoch-{epoch}",
            answer,
            workers=[self.ranks[0].address],
            wait_s=self.timeout,
            name=f"dtrain-answer-{self.job_id}",
        )

    def _begin(self, epoch: int) -> None:
        if self.epoch_open != epoch and epoch not in self.epochs_done:
            self.cbs.on_epoch_begin(epoch)
            self.epoch_open = epoch

    def _first_error(self) -> BaseException:
        """The original error: a rank's own failure rather than a peer's resulting abort."""
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

    def _silent_workers(self, addresses: list[str]) -> set[str]:
        return silent_workers(self.client, addresses)

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

    def _release(self, present: list[int], silent: set[str]) -> None:
        """Give the aborted ranks a moment to return, then release every task of the job.

        Waited for: the ranks on workers still there (``present``) that answer the scheduler. Not
        waited for: a rank whose worker left (the scheduler keeps a task pinned to a gone worker
        in no-worker for ever, which cost every lost worker the whole grace), nor one on a
        ``silent`` worker, which cannot return before it wakes."""
        waited = [r for r in present if self.ranks[r].address not in silent]
        deadline = time.monotonic() + ABORT_GRACE_S
        while time.monotonic() < deadline and not all(self.futures[r].done() for r in waited):
            time.sleep(0.05)
        # A rank still running now ignores the abort (stuck in a step): its worker's thread is
        # taken until it returns, so a restart must not count on that worker (it is restarted).
        self.stuck = [self.ranks[r].address for r in waited if not self.futures[r].done()]
        # A silent worker is left out of a restart and left alone: restarting it would wait on it too.
        self.silent = sorted(silent)
        try:
            self.client.cancel(self.futures)
        except Exception:
            pass


def silent_workers(client: Any, addresses: list[str]) -> set[str]:
    """Those of ``addresses`` the scheduler has not heard from for SILENT_HEARTBEATS heartbeat
    intervals (none when it cannot be asked)."""
    if not addresses:
        return set()
    try:
        return set(client.run_on_scheduler(_silent_on_scheduler, addresses, SILENT_HEARTBEATS))
    except Exception:
        return set()


def _silent_on_scheduler(addresses: list[str], heartbeats: int, dask_scheduler: Any = None) -> list[str]:
    """Runs on the scheduler (client.run_on_scheduler): the workers of ``addresses`` whose last
    heartbeat is older than ``heartbeats`` of the intervals the scheduler asks of them (0.5 s up
    to 10 workers, longer on larger clusters), and 3 s at least."""
    from distributed.scheduler import heartbeat_interval

    limit = max(3.0, heartbeats * heartbeat_interval(len(dask_scheduler.workers)))
    now = time.time()  # the scheduler stamps heartbeats with time()
    return [a for a in addresses if a in dask_scheduler.workers and now - dask_scheduler.workers[a].last_seen > limit]
