"""dtrain: dense neural networks trained with synchronous data parallelism on Dask.

from dtrain.models import Sequential
from dtrain.layers import Dense
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("dtrain")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

from . import activations, callbacks, datasets, initializers, layers, losses, metrics, optimizers, utils
from .backend import floatx, get_backend, gpu_available, set_default_device, set_floatx
from .clusters import TRAINING_DASK_CONFIG, local_cluster, training_environment
from .layers import Dense
from .model import Sequential
from .saving import load_model
from .sources import from_csv, from_npy, from_npz, from_parquet, from_synthetic

__all__ = [
    "Dense",
    "Sequential",
    "load_model",
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
