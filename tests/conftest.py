"""Shared fixtures and the `gpu` marker hook: tests marked ``@pytest.mark.gpu`` are skipped
where CuPy cannot see a CUDA device (``dtrain.gpu_available()`` is False)."""

from __future__ import annotations

import numpy as np
import pytest

import dtrain
from dtrain import backend


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items or dtrain.gpu_available():
        return
    reason = backend._probe_cupy()[1] or "no usable GPU"
    skip = pytest.mark.skip(reason=f"needs a GPU: {reason}")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_backend_defaults():
    """Tests that change the process-wide float type or device put them back."""
    floatx, device = backend.floatx(), backend.get_default_device()
    yield
    backend.set_floatx(floatx)
    backend.set_default_device(device)


def blobs(n: int = 600, features: int = 20, classes: int = 3, seed: int = 0, spread: float = 1.0):
    """A learnable classification problem: Gaussian clusters around random centres.
    Returns (x float32 (n, features), integer labels (n,))."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.0, size=(classes, features))
    labels = rng.integers(0, classes, n)
    x = centres[labels] + spread * rng.normal(size=(n, features))
    return x.astype(np.float32), labels


def one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[labels]


def small_model(input_dim: int | None = 20, hidden: int = 16, classes: int = 3, **kwargs) -> dtrain.Sequential:
    from dtrain.layers import Dense

    first = Dense(hidden, activation="relu", input_dim=input_dim) if input_dim else Dense(hidden, activation="relu")
    return dtrain.Sequential([first, Dense(classes, activation="softmax")], **kwargs)


# -- real Dask clusters ---------------------------------------------------------------------------
# Worker processes (not threads), as users run them. One cluster per worker count is shared by
# the tests of a module (starting one costs a second or two) and closed when the module ends, so
# no cluster's background threads run during other modules (allocation tests trace all threads).
# Tests that kill or restart workers must start their own cluster instead.
_CLUSTERS: dict[int, tuple] = {}


def shared_client(n_workers: int):
    """A Client on a LocalCluster with ``n_workers`` single-threaded worker processes. The client
    is not made Dask's default, so code under test must use the client it is given."""
    from distributed import Client, LocalCluster

    if n_workers not in _CLUSTERS:
        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0", memory_limit="2GiB"
        )
        _CLUSTERS[n_workers] = (cluster, Client(cluster, set_as_default=False))
    return _CLUSTERS[n_workers][1]


@pytest.fixture
def client2():
    return shared_client(2)


@pytest.fixture
def client3():
    return shared_client(3)


@pytest.fixture(autouse=True, scope="module")
def _close_shared_clusters():
    yield
    for cluster, client in _CLUSTERS.values():
        client.close()
        cluster.close()
    _CLUSTERS.clear()


# -- a real `dask scheduler` with `dask worker` processes (the job service's tests) ------------------


@pytest.fixture(scope="module")
def scheduler():
    """A real `dask scheduler` and 2 single-threaded `dask worker` processes; yields the address."""
    from processes import DaskProcesses

    with DaskProcesses(2) as cluster:
        yield cluster.address
