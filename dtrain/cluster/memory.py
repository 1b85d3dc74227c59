"""Recovery from the survivors' memory: where a failed rank leaves its state, and how the driver
finds the best one.

When a run fails, every rank still alive leaves its state (``training.recovery.MemoryPoint``:
weights, optimizer state, position, the epoch's sums, the finished epochs' logs) in its worker
process, under the run's id. The driver asks the workers of the restart what they hold
(:func:`best_memory`: positions only, no arrays), and the rank of the restart on the worker with
the most advanced state loads it there (:func:`take`) and broadcasts it to the others: nothing
is read from a checkpoint, and the arrays never travel through the driver.

A worker keeps one state per run, replaced by a newer one of the same run, and drops it when the
driver says the run is over (:func:`forget`) or, should the driver be gone, after
``KEEP_FOR_S``. Each state costs the worker one copy of the model's weights and optimizer state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from ..training.recovery import MemoryPoint
from .probe import run_with_deadline

KEEP_FOR_S = 30 * 60.0  # a state no driver asked for within this long is dropped
QUERY_TIMEOUT_S = 5.0  # how long the driver waits for the workers' answers

# -- on the workers (the rank tasks and client.run calls run in the worker process) -----------------
_kept: dict[str, tuple[float, MemoryPoint]] = {}
_lock = threading.Lock()


def keep(run_id: str, point: MemoryPoint) -> None:
    """Keep ``point`` for ``run_id`` in this process, unless it holds a more advanced one."""
    now = time.monotonic()
    with _lock:
        for key in [k for k, (at, _) in _kept.items() if now - at > KEEP_FOR_S]:
            del _kept[key]
        held = _kept.get(run_id)
        if held is None or (point.epoch, point.step) >= (held[1].epoch, held[1].step):
            _kept[run_id] = (now, point)


def take(run_id: str, epoch: int, step: int) -> MemoryPoint:
    """The state of ``run_id`` at (epoch, step) kept in this process (it stays kept: should the
    restart fail before its first step, it is still the run's best state)."""
    with _lock:
        held = _kept.get(run_id)
    if held is None or (held[1].epoch, held[1].step) != (epoch, step):
        raise RuntimeError(
            f"The state of run {run_id} at epoch {epoch + 1}, step {step} is no longer in this worker's memory"
        )
    return held[1]


def describe(run_id: str) -> dict[str, Any] | None:
    """What this process holds of ``run_id`` (no arrays), or None (runs in client.run)."""
    with _lock:
        held = _kept.get(run_id)
    return None if held is None else held[1].summary()


def forget(run_id: str) -> None:
    """Drop what this process holds of ``run_id`` (runs in client.run)."""
    with _lock:
        _kept.pop(run_id, None)


# -- on the driver -----------------------------------------------------------------------------------
def best_memory(client: Any, run_id: str, workers: Sequence[str]) -> tuple[str, dict[str, Any]] | None:
    """The worker among ``workers`` holding the most advanced state of ``run_id``, and that state's
    summary; None when none holds one (or none answered within QUERY_TIMEOUT_S)."""
    answers = run_with_deadline(client, describe, run_id, workers=list(workers), wait_s=QUERY_TIMEOUT_S) or {}
    held = [(address, summary) for address, summary in answers.items() if summary is not None]
    if not held:
        return None
    return max(held, key=lambda item: (item[1]["epoch"], item[1]["step"]))


def forget_everywhere(client: Any, run_id: str) -> None:
    """Tell every worker to drop ``run_id``'s state, without waiting for the answers."""
    run_with_deadline(client, forget, run_id, workers=None, wait_s=0.0, name="dtrain-forget")
