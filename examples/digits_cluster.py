"""Real data on a Dask cluster: scikit-learn's digits, trained data-parallel on 2 local workers.

    pip install scikit-learn && python examples/digits_cluster.py [SCHEDULER_ADDRESS]

Without an address it starts a LocalCluster of 2 single-threaded worker processes. Each worker
trains on its own shard of the rows; their gradients are summed every step. The script checks
the core promise (the weights equal a single-process run with the same seed and shard count)
and asserts at least 95% held-out accuracy.
"""

import sys
import time

import numpy as np
from distributed import Client, LocalCluster
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from dtrain.layers import Dense
from dtrain.models import Sequential


def make_model() -> Sequential:
    model = Sequential([Dense(64, activation="relu", input_dim=64), Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


if __name__ == "__main__":  # worker processes re-import this file: start the cluster only here
    digits = load_digits()
    x = digits.data.astype("float32") / 16.0
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.25, random_state=0, stratify=digits.target
    )

    cluster = None if len(sys.argv) > 1 else LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0")
    with Client(sys.argv[1] if len(sys.argv) > 1 else cluster) as client:
        workers = len(client.scheduler_info()["workers"])
        model = make_model()
        start = time.perf_counter()
        history = model.fit(x_train, y_train, epochs=30, batch_size=64, seed=0, client=client, verbose=2)
        seconds = time.perf_counter() - start
        loss, accuracy = model.evaluate(x_test, y_test, client=client)
        print(
            f"{workers} workers: held-out accuracy {accuracy:.4f} after {seconds:.1f}s; median step "
            f"{history.timing['step_ms']:.2f} ms ({history.timing['communication_ms']:.2f} ms communication)"
        )
    if cluster is not None:
        cluster.close()

    single = make_model()
    single.fit(x_train, y_train, epochs=30, batch_size=64, seed=0, shards=workers, verbose=0)
    gap = max(float(np.max(np.abs(a - b))) for a, b in zip(model.get_weights(), single.get_weights()))
    print(f"largest weight difference from one process with shards={workers}: {gap:.2e}")
    assert gap < 1e-4, gap
    assert accuracy >= 0.95, f"expected >= 95% held-out accuracy, got {accuracy:.4f}"
