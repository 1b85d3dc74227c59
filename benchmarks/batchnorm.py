"""What synchronised batch normalisation costs: 784-1024-1024-10 with BatchNormalization after
each hidden layer, on 2 workers, against the same network without it (issue 17's target: the
synchronised statistics cost <= 0.3 ms per BN layer per step).

    python -m benchmarks.batchnorm                   # batch 512, 2 workers, 3 rounds
    python -m benchmarks.batchnorm --rounds 3 --json benchmarks/results/batchnorm.json

Each round trains both networks (SGD, 8 steps of a global batch of 512 per epoch, 3 epochs,
first epoch dropped as warm-up), alternating, on one 2-worker LocalCluster (1 thread each),
and in one process: per-step medians from ``history.step_times``. The BN layers' own sums are
timed where they run: every call of the layers' reducer (the allreduce of the forward sums and
of the backward sums) on every rank: per call, the rank that waited least (what the collective
costs) and the one that waited most (that plus the ranks' skew, time the step would otherwise
wait at the gradient's sum), summed per layer and step. What a user pays in all is the
difference of the step times, which also holds the layers' arithmetic.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from .single_process import machine_record

LAYERS = [784, 1024, 1024, 10]


def _model(batchnorm: bool, layers: list[int]):
    from dtrain.layers import Activation, BatchNormalization, Dense, Input
    from dtrain.models import Sequential

    stack: list = [Input(shape=(layers[0],))]
    for units in layers[1:-1]:
        if batchnorm:  # (the usual pattern: no bias before a BN layer, the activation after it)
            stack += [Dense(units, use_bias=False), BatchNormalization(), Activation("relu")]
        else:
            stack.append(Dense(units, activation="relu"))
    stack.append(Dense(layers[-1], activation="softmax"))
    model = Sequential(stack, device="cpu")
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


class _TimedReducer:
    """Seconds of every call of the layers' reducer in this worker process, in call order."""

    calls: list[float] = []


def _timed_network_reducer() -> None:
    """Installed in every worker process (client.run): time each BN reducer call."""
    from dtrain.network import Network

    if getattr(Network, "_bench_wrapped", False):
        return
    original = Network.set_batch_reducer

    def set_batch_reducer(self, reduce=None):
        if reduce is None:
            return original(self, None)

        def timed(values):
            start = time.perf_counter()
            reduce(values)
            _TimedReducer.calls.append(time.perf_counter() - start)

        return original(self, timed)

    Network.set_batch_reducer = set_batch_reducer  # type: ignore[method-assign]
    Network._bench_wrapped = True  # type: ignore[attr-defined]


def _reducer_calls() -> list[float]:
    calls, _TimedReducer.calls = _TimedReducer.calls, []
    return calls


def _median_step_ms(steps) -> float:
    """Per-step seconds (ranks x steps, the slowest rank per step) -> median ms, warm-up epoch dropped."""
    steps = np.asarray(steps)
    steps = steps.max(axis=0) if steps.ndim == 2 else steps
    per_epoch = len(steps) // 3
    return float(np.median(steps[per_epoch:])) * 1e3


def _one_process_steps(model, x, y, fit) -> list[float]:
    """Step times in one process, from a callback around each batch."""
    from dtrain.callbacks import Callback

    class Steps(Callback):
        def __init__(self):
            super().__init__()
            self.times: list[float] = []

        def on_train_batch_begin(self, batch, logs=None):
            self._start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self._start)

    steps = Steps()
    model.fit(x, y, callbacks=[steps], **fit)
    return steps.times


def main(argv: list[str] | None = None) -> dict:
    from distributed import Client, LocalCluster

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8 * args.batch, LAYERS[0])).astype(np.float32)
    y = rng.integers(0, LAYERS[-1], len(x))
    fit = dict(batch_size=args.batch, epochs=3, seed=0, verbose=0, shards=2)
    # (by reference: run as __main__, the functions would travel by value, each call its own counters)
    from benchmarks import batchnorm as this

    rounds = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            client.run(this._timed_network_reducer)
            for _ in range(args.rounds):
                record = {}
                for name, batchnorm in (("plain", False), ("batchnorm", True)):
                    client.run(this._reducer_calls)
                    history = _model(batchnorm, LAYERS).fit(x, y, client=client, **fit)
                    record[f"{name}_2_workers_ms"] = _median_step_ms(history.step_times["step"])
                    if batchnorm:
                        ranks = np.array(list(client.run(this._reducer_calls).values()))  # (2, calls)
                        layer_steps = ranks.shape[1] / 2  # two sums per layer per step
                        # The rank that arrives last at a sum waits least: its time is what the
                        # collective itself costs; the other's also holds the ranks' skew.
                        record["sync_per_layer_step_ms"] = ranks.min(axis=0).sum() / layer_steps * 1e3
                        record["sync_with_skew_per_layer_step_ms"] = ranks.max(axis=0).sum() / layer_steps * 1e3
                        record["sum_call_median_ms"] = float(np.median(ranks.min(axis=0))) * 1e3
                    one = _one_process_steps(_model(batchnorm, LAYERS), x, y, fit)
                    record[f"{name}_1_process_ms"] = _median_step_ms(one)
                rounds.append(record)
    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    layers = len(LAYERS) - 2
    median["bn_cost_per_layer_2_workers_ms"] = (
        median["batchnorm_2_workers_ms"] - median["plain_2_workers_ms"]
    ) / layers
    median["bn_cost_per_layer_1_process_ms"] = (
        median["batchnorm_1_process_ms"] - median["plain_1_process_ms"]
    ) / layers
    report = {
        "benchmark": "batchnorm",
        "command": "python -m benchmarks.batchnorm " + " ".join(argv or []),
        "layers": LAYERS,
        "batch": args.batch,
        "rounds": rounds,
        "median": median,
        "machine": machine_record(),
    }
    print(json.dumps(median, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
