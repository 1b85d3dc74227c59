"""dtrain: dense neural networks trained with synchronous data parallelism on Dask.

from dtrain.models import Sequential
from dtrain.layers import Dense
"""

from __future__ import annotations

from . import (
    activations,
    callbacks,
    constraints,
    datasets,
    initializers,
    layers,
    losses,
    metrics,
    optimizers,
    regularizers,
    utils,
)
from ._version import __version__ as __version__
from .backend import floatx, get_backend, gpu_available, set_default_device, set_floatx
from .cluster.errors import JobCancelled, SchedulerLostError, WorkerLostError
from .clusters import TRAINING_DASK_CONFIG, local_cluster, training_environment
from .layers import Dense, Input
from .models import Sequential, load_model
from .sources import from_csv, from_npy, from_npz, from_parquet, from_synthetic
from .training.sync import NonFiniteError

__all__ = [
    "Dense",
    "Input",
    "Sequential",
    "load_model",
    "NonFiniteError",
    "WorkerLostError",
    "SchedulerLostError",
    "JobCancelled",
    "from_csv",
    "from_npy",
    "from_npz",
    "from_parquet",
    "from_synthetic",
    "local_cluster",
    "training_environment",
    "TRAINING_DASK_CONFIG",
    "activations",
    "callbacks",
    "constraints",
    "regularizers",
    "datasets",
    "initializers",
    "layers",
    "losses",
    "metrics",
    "optimizers",
    "utils",
    "floatx",
    "get_backend",
    "gpu_available",
    "set_default_device",
    "set_floatx",
]
