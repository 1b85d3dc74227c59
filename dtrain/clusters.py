"""Dask clusters set up for training: what dtrain's own clusters use, and what to give yours.

Training keeps every core busy with one long task per worker, so whatever else wakes up on the
machine preempts a rank. Dask's servers (scheduler, nannies, workers) run an event-loop "tick"
every 20 ms to notice a blocked loop. Measured on 2 cores, 784-1024-1024-10, 2 workers on a
LocalCluster, runs alternated with and without (``python -m benchmarks.distributed --worker 2``):
a step took 32.4-33.7 ms with a 1 s tick against 33.7-35.6 ms with Dask's 20 ms. A 1 s tick still
reports any loop blocked for longer than Dask's 3 s warning limit. (A rank also stops its own
worker's profiler and slows its tick while it runs, on any cluster: see ``dtrain.worker``.)

- :func:`local_cluster` starts a LocalCluster with these settings, one process per worker;
- :data:`TRAINING_DASK_CONFIG` is the Dask configuration; :func:`training_environment` the same as
  environment variables, for ``dask scheduler`` / ``dask worker`` processes you start yourself
  (the deploy recipes do).

A value you set yourself (Dask config file or environment) is left alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

TRAINING_DASK_CONFIG: dict[str, Any] = {"distributed.admin.tick.interval": "1s"}
_DASK_DEFAULTS: dict[str, Any] = {"distributed.admin.tick.interval": "20ms"}


def _env_name(key: str) -> str:
    return "DASK_" + key.upper().replace(".", "__").replace("-", "_")


def training_config() -> dict[str, Any]:
    """The settings of :data:`TRAINING_DASK_CONFIG` that are still at Dask's default here."""
    import dask

    return {
        key: value for key, value in TRAINING_DASK_CONFIG.items() if dask.config.get(key, None) == _DASK_DEFAULTS[key]
    }


def training_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment variables for Dask processes: the training settings not already in ``environ``."""
    environ = os.environ if environ is None else environ
    return {_env_name(key): str(value) for key, value in TRAINING_DASK_CONFIG.items() if _env_name(key) not in environ}


def local_cluster(n_workers: int, *, threads_per_worker: int = 1, **kwargs: Any):
    """A ``distributed.LocalCluster`` of ``n_workers`` worker processes of ``threads_per_worker``
    threads each (one rank per worker: 1 thread each leaves the cores to BLAS), with the training
    settings. Other keyword arguments go to LocalCluster (``dashboard_address``, ``memory_limit``...).

        with dtrain.local_cluster(2) as cluster, Client(cluster) as client:
            model.fit(x, y, client=client)
    """
    import dask
    from distributed import LocalCluster

    settings = training_config()
    kwargs.setdefault("processes", True)
    if kwargs["processes"] and settings:  # the nannies pass it on to every worker they (re)start
        kwargs["config"] = {**settings, **kwargs.get("config", {})}
    with dask.config.set(settings):  # read by the scheduler and the nannies as they start
        return LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, **kwargs)
