"""How fast a cluster run notices a lost worker and trains again, and how much it trains twice.

    python -m benchmarks.recovery                   # every scenario, 3 rounds each
    python -m benchmarks.recovery --rounds 1 --scenarios kill

Each round starts a fresh local cluster of 3 worker processes (``dtrain.local_cluster``, with
nannies), trains 784-256-256-10 (or, for ``kill-sharded``, 784-1024-1024-10, whose step is
sharded) with Adam on synthetic data, no checkpoints, and in the middle of epoch 2 does to one
worker:

- ``kill``: SIGKILL (rank 1's): the run goes on from the survivors' memory;
- ``kill-sharded``: the same on the sharded step (memory of the epoch's start);
- ``kill-rank0``: SIGKILL of rank 0's worker (the rank that reports to the client);
- ``sigstop``: SIGSTOP (a frozen worker) with ``timeout=5``: noticed at the step deadline.

Figures per round, from the client (seconds, ``time.monotonic``):

- ``restart_s``: from the failure to the restart's decision (abort done, survivors asked);
- ``next_step_s``: from the failure to the first step the restarted run reports (rank 0
  reports every 0.25 s, so this is late by up to that);
- ``steps_lost``: steps trained again (where the failure struck minus where the restart began,
  from ``history.restart_log``: ``at`` is where the client last heard of the run);
- ``source``: memory, checkpoint or start.

Prints one JSON line and writes benchmarks/results/recovery.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import threading
import time
from pathlib import Path

import numpy as np

from .single_process import machine_record

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("kill", "kill-rank0", "kill-sharded", "sigstop")


def one_round(scenario: str, rows: int, batch: int) -> dict:
    from distributed import Client

    import dtrain
    from dtrain.callbacks import Callback
    from dtrain.cluster.launch import RunControl, fit_on_cluster
    from dtrain.config import FitConfig

    hidden = 1024 if scenario == "kill-sharded" else 256
    x, y = dtrain.datasets.make_classification(rows, n_features=784, n_classes=10, seed=0)
    model = dtrain.Sequential(
        [
            dtrain.Dense(hidden, activation="relu", input_dim=784),
            dtrain.Dense(hidden, activation="relu"),
            dtrain.Dense(10, activation="softmax"),
        ]
    )
    model.compile(loss="categorical_crossentropy", optimizer="adam")
    times: dict[str, float] = {}

    class Watch(Callback):
        observes_only = True  # the ranks do not wait for the client between epochs

        def __init__(self, victim_pid: int) -> None:
            super().__init__()
            self.victim_pid = victim_pid

        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1 and "failed" not in times:
                threading.Timer(0.5, self.strike).start()  # in the middle of epoch 2

        def strike(self):
            os.kill(self.victim_pid, signal.SIGSTOP if scenario == "sigstop" else signal.SIGKILL)
            times["failed"] = time.monotonic()

        def on_train_batch_end(self, batch, logs=None):
            if "restart" in times and "next_step" not in times:
                times["next_step"] = time.monotonic()

    def on_restart(count: int, record: dict) -> None:
        times.setdefault("restart", time.monotonic())

    with dtrain.local_cluster(3, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            pids = client.run(os.getpid)
            victim = sorted(pids)[0 if scenario == "kill-rank0" else 1]  # rank order: host, then address
            options = dict(epochs=3, batch_size=batch, seed=0, max_restarts=1, shards=3, verbose=0)
            if scenario == "sigstop":
                options["timeout"] = 5
            config = FitConfig.make(**options)
            try:
                history = fit_on_cluster(
                    model,
                    x,
                    y,
                    None,
                    [Watch(pids[victim])],
                    config,
                    client=client,
                    control=RunControl(on_restart=on_restart),
                )
            finally:
                if scenario == "sigstop":
                    os.kill(pids[victim], signal.SIGCONT)
    [record] = history.restart_log
    at, resumed = record["at"], record["resumed_from"]
    steps = -(-rows // batch)
    lost = (at["epoch"] * steps + at["step"]) - (resumed["epoch"] * steps + resumed["step"])
    return {
        "restart_s": times["restart"] - times["failed"],
        "next_step_s": times["next_step"] - times["failed"],
        "steps_lost": max(lost, 0),
        "source": resumed["source"],
        "sharded_step": history.sharded_step,
        "detected_s": record["detected_s"],
        "recovered_s": record["recovered_s"],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--rows", type=int, default=24000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "recovery.json"))
    args = parser.parse_args(argv)
    results: dict = {"machine": machine_record(), "rows": args.rows, "batch": args.batch, "scenarios": {}}
    for scenario in args.scenarios:
        rounds = [one_round(scenario, args.rows, args.batch) for _ in range(args.rounds)]
        summary = {key: statistics.median(r[key] for r in rounds) for key in ("restart_s", "next_step_s", "steps_lost")}
        results["scenarios"][scenario] = {"median": summary, "rounds": rounds}
    line = json.dumps(results, default=lambda v: v.tolist() if isinstance(v, np.ndarray) else str(v))
    print(line)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(line + "\n")
    return results


if __name__ == "__main__":
    main()
