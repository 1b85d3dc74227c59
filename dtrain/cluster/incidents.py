"""Where every rank was when a step missed its deadline: an incident report.

A rank whose wait on a peer passes the run's ``timeout`` raises ``DeadlineMissed``. Before its
stack unwinds, the rank task records a snapshot on its worker (:func:`keep_snapshot`): the
waiting thread's stack at the deadline (the exception's traceback), every other thread's stack,
the epoch and step, and what it waited for. The client, seeing that failure and before it
aborts the ranks, asks every rank's worker for its snapshot (:func:`collect`, a short
``client.run`` per worker, in parallel): a rank that did not miss the deadline answers with a
live one (all its threads, now). A worker that does not answer within a second (frozen by
SIGSTOP, stuck outside Python, cut off) or that the scheduler already counts as silent is
named as not answering. The report (:func:`summary_line`, :func:`write_incident`) is what the
user sees: a warning and ``history.incidents`` for ``fit(client=)``, files under the job's
``incidents/<time>/`` and a line in its log for a job.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..comm import DeadlineMissed
from ..storage import Location

ANSWER_WITHIN_S = 1.0  # how long the client waits for a worker's snapshot
KEEP_SNAPSHOTS = 16  # per worker: the jobs whose snapshot at a deadline is kept


# -- on the worker ----------------------------------------------------------------------------------


@dataclass
class Whereabouts:
    """Where a rank of a job is on this worker: updated by the rank as it trains."""

    rank: int
    thread: int  # the rank task's thread
    epoch: int = -1  # -1: before the first epoch
    step: int = -1


_RUNNING: dict[str, Whereabouts] = {}  # job id -> the rank it runs here
_AT_DEADLINE: dict[str, dict] = {}  # job id -> this worker's snapshot when its rank failed (a deadline, an abort)


def rank_started(job_id: str, rank: int) -> Whereabouts:
    where = _RUNNING[job_id] = Whereabouts(rank=rank, thread=threading.get_ident())
    _AT_DEADLINE.pop(job_id, None)  # (a new attempt: an earlier snapshot is stale)
    return where


def rank_ended(job_id: str) -> None:
    _RUNNING.pop(job_id, None)


def deadline_missed(exc: BaseException | None) -> DeadlineMissed | None:
    """The DeadlineMissed behind ``exc`` (itself, or what it was raised from or while handling)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, DeadlineMissed):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def keep_snapshot(job_id: str, exc: BaseException) -> None:
    """In the rank task, as it fails with ``exc`` and before its frames are cleared: keep where
    this rank was for the client to collect (its own deadline missed, or stopped by a peer's
    abort while it waited: the traceback is where it waited, ``waiting_for`` for what)."""
    where = _RUNNING.get(job_id)
    if where is None:
        return
    missed = deadline_missed(exc)
    cause = missed if missed is not None else exc
    when = "at its deadline" if missed is not None else f"when it stopped ({type(exc).__name__})"
    waiting = "".join(traceback.format_exception(type(cause), cause, cause.__traceback__))
    snapshot = _snapshot(where, skip_thread=where.thread)
    snapshot["stacks"] = {f"rank task ({where.thread}), {when}": waiting, **snapshot["stacks"]}
    snapshot.update(
        waiting_for=getattr(cause, "waiting_for", ""), source=when, error=f"{type(cause).__name__}: {cause}"
    )
    _AT_DEADLINE[job_id] = snapshot
    for old in list(_AT_DEADLINE)[:-KEEP_SNAPSHOTS]:
        del _AT_DEADLINE[old]


def rank_snapshot(job_id: str, dask_worker: Any = None) -> dict | None:
    """What the client's ``collect`` asks each worker (through ``client.run``, on the worker's
    event loop): the snapshot kept at the deadline, else a live one of the rank running here,
    else None (no rank of this job here)."""
    kept = _AT_DEADLINE.get(job_id)
    if kept is not None:
        return kept
    where = _RUNNING.get(job_id)
    if where is None:
        return None
    snapshot = _snapshot(where)
    snapshot.update(waiting_for="", source="live")
    return snapshot


def _snapshot(where: Whereabouts, skip_thread: int | None = None) -> dict:
    names = {t.ident: t.name for t in threading.enumerate()}
    stacks = {
        f"{names.get(ident, 'thread')} ({ident})" + (" (the rank task)" if ident == where.thread else ""): "".join(
            traceback.format_stack(frame)
        )
        for ident, frame in sys._current_frames().items()
        if ident != skip_thread
    }
    return {
        "rank": where.rank,
        "epoch": where.epoch,
        "step": where.step,
        "pid": os.getpid(),
        "time": time.time(),
        "stacks": stacks,
    }


# -- on the client ----------------------------------------------------------------------------------


def collect(
    client: Any, job_id: str, workers: Sequence[str], silent: set[str], error: BaseException, timeout: float
) -> dict:
    """Every rank's snapshot (``workers[r]`` runs rank r), asked in parallel; a silent worker is
    not asked, one that does not answer within ANSWER_WITHIN_S is named. Returns the incident."""
    asked = [(rank, address) for rank, address in enumerate(workers) if address not in silent]
    answers: dict[int, dict] = {}
    failed: dict[int, str] = {}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(asked)), thread_name_prefix="dtrain-incident")
    try:
        calls = {
            pool.submit(client.run, rank_snapshot, job_id, workers=[address], on_error="return"): (rank, address)
            for rank, address in asked
        }
        done, _ = concurrent.futures.wait(calls, timeout=ANSWER_WITHIN_S)
        for call in done:
            rank, address = calls[call]
            try:
                answer = call.result().get(address)
            except Exception as exc:  # noqa: BLE001 - a worker that cannot answer is named, not fatal
                failed[rank] = f"{type(exc).__name__}: {exc}"
                continue
            if isinstance(answer, dict):
                answers[rank] = answer
            elif isinstance(answer, BaseException):
                failed[rank] = f"{type(answer).__name__}: {answer}"
            else:
                failed[rank] = "its rank was no longer running there"
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # (a frozen worker's call is left to its own timeout)
    ranks = []
    for rank, address in enumerate(workers):
        entry: dict[str, Any] = {"rank": rank, "worker": address}
        if rank in answers:
            snapshot = answers[rank]
            entry.update(answered=True, **{k: v for k, v in snapshot.items() if k != "rank"})
        else:
            why = (
                "silent: the scheduler has not heard from it for seconds (frozen, SIGSTOP, or cut off)"
                if address in silent
                else failed.get(rank, f"no answer within {ANSWER_WITHIN_S:g} s (frozen, or stuck outside Python)")
            )
            entry.update(answered=False, why=why)
        ranks.append(entry)
    missed = deadline_missed(error)
    incident = {
        "time": time.time(),
        "deadline_s": timeout,
        "error": f"{type(error).__name__}: {error}",
        "waiting_for": missed.waiting_for if missed is not None else "",
        "ranks": ranks,
        "not_answering": [
            {"rank": r["rank"], "worker": r["worker"], "why": r["why"]} for r in ranks if not r["answered"]
        ],
    }
    incident["summary"] = summary_line(incident)
    return incident


def summary_line(incident: dict) -> str:
    """One line: the deadline, where the answering ranks were and what they waited for, and
    which ranks did not answer."""
    parts = []
    for r in incident["ranks"]:
        if not r["answered"]:
            continue
        where = _position(r)
        waits = f" waiting for {r['waiting_for']}" if r.get("waiting_for") else " in no wait (see its stack)"
        parts.append(f"rank {r['rank']} at {where}{waits}")
    silent = [f"rank {r['rank']} on {r['worker']}" for r in incident["not_answering"]]
    text = f"step deadline ({incident['deadline_s']:g} s) missed: " + ("; ".join(parts) or "no rank answered")
    if silent:
        text += f"; did not answer: {', '.join(silent)}"
    return text


def _position(rank: dict) -> str:
    """Where an answering rank was, counted from 1 (its whereabouts count from 0, -1: not yet)."""
    return f"epoch {rank['epoch'] + 1}, step {rank['step'] + 1}" if rank.get("epoch", -1) >= 0 else "before training"


def write_incident(output: str, incident: dict) -> str:
    """``output``/incidents/<time>/: summary.txt, summary.json (without the stacks) and one
    rank-<r>.txt per rank that answered (every thread's stack). Returns the folder's location."""
    name = time.strftime("%Y%m%d-%H%M%S", time.gmtime(incident["time"])) + f"-{int(incident['time'] * 1000) % 1000:03d}"
    root = Location(output).where("incidents")
    where = Location(Location(root).where(name))
    where.make()
    lines = [incident["summary"], "", f"error: {incident['error']}", ""]
    for r in incident["ranks"]:
        if r["answered"]:
            lines.append(
                f"rank {r['rank']} on {r['worker']} (pid {r.get('pid')}): {_position(r)}; "
                f"{'waiting for ' + r['waiting_for'] if r.get('waiting_for') else 'not in a wait'} "
                f"({r.get('source')}); its stacks: rank-{r['rank']}.txt"
            )
            stacks = "\n".join(f"--- {thread}\n{text}" for thread, text in r.get("stacks", {}).items())
            where.write(f"rank-{r['rank']}.txt", stacks.encode())
        else:
            lines.append(f"rank {r['rank']} on {r['worker']}: did not answer ({r['why']})")
    where.write("summary.txt", ("\n".join(lines) + "\n").encode())
    brief = {**incident, "ranks": [{k: v for k, v in r.items() if k != "stacks"} for r in incident["ranks"]]}
    where.write("summary.json", (json.dumps(brief, indent=2, default=str) + "\n").encode())
    return where.text
