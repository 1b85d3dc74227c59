"""The errors a cluster run raises on the client (exported as ``dtrain.WorkerLostError``...)."""

from __future__ import annotations


class WorkerLostError(RuntimeError):
    """A worker running a rank left the cluster during training."""


class SchedulerLostError(ConnectionError):
    """The client lost its Dask scheduler during training (a restart cannot help: resume from
    the latest checkpoint on a new cluster)."""


class JobCancelled(RuntimeError):
    """Training was stopped on request (the ``stop`` event of a cluster run's RunControl was set: a cancelled job)."""
