"""What a rank changes on its Dask worker while it runs: the BLAS thread count and the worker's
own monitoring. Both come back when the last rank on the worker ends."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from threadpoolctl import threadpool_limits


def blas_threads(worker: Any) -> Any:
    """The rank's BLAS uses as many threads as its worker has (``--nthreads``), no more.

    Dask's nanny means to start workers with one BLAS thread, but an OMP_NUM_THREADS or
    OPENBLAS_NUM_THREADS set where the cluster was started wins over it: measured on 2 cores
    with OPENBLAS_NUM_THREADS=2 in the client's environment, two workers of 1 thread each ran
    2 BLAS threads each and their step took 63 ms instead of 34 ms. The rank owns its
    worker's only task slot, so the worker's thread count is its share of the machine."""
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
_quiet_ranks: dict[int, list[Any]] = {}  # id(worker) -> [ranks running, {name: period before the first}]


@contextlib.contextmanager
def quiet_monitoring(worker: Any) -> Iterator[None]:
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


def _set_callbacks(worker: Any, settings: dict) -> dict:
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


def _on_loop(worker: Any, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` on the worker's event loop and return its result (from the task thread)."""

    async def call():
        return fn(*args)

    future = asyncio.run_coroutine_threadsafe(call(), worker.loop.asyncio_loop)
    try:
        return future.result(timeout=10)
    except Exception:  # a closing worker: monitoring is not worth failing the rank for
        future.cancel()  # not applied later with nothing recorded to undo it
        return {}
