"""Data-parallel training on a local Dask cluster against PyTorch DDP (gloo), same run.

    python -m benchmarks.distributed                  # 784-1024-1024-10, global batch 512
    python -m benchmarks.distributed --rounds 5 --steps 30

Each round, in fresh processes, one after the other so all see the same machine load:

- dtrain ``fit(..., client=)`` on ``dtrain.local_cluster`` (a LocalCluster with dtrain's Dask
  settings) of 1 worker and of 2 workers, 1 thread each
  (Dask's nanny pins BLAS to one thread per worker): samples/s from the second epoch's time
  per step as measured inside the ranks (the slower rank's; the first epoch warms up);
- the PyTorch peer ``../shared/peers/torch_mlp.py --world 2`` (DDP over gloo, 2 ranks x 1
  thread; needs ``pip install torch==2.13.0``);
- the per-step cost of being distributed: a tiny network (32-16-2, global batch 64) on
  2 workers, whose step is almost all communication and bookkeeping.

Reports throughput ratio (dtrain 2 workers / DDP 2 ranks), scaling efficiency (2-worker
throughput / twice the 1-worker throughput) and the tiny model's step split. Results go to
benchmarks/results/distributed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .single_process import machine_record

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PEER = ROOT.parent / "shared" / "peers" / "torch_mlp.py"


def measure_dtrain(layers: list[int], batch: int, steps: int, workers: int) -> dict:
    """Runs in a fresh process: a LocalCluster with ``workers`` single-threaded workers."""
    import numpy as np
    from distributed import Client

    from dtrain.clusters import local_cluster

    from .single_process import build_mlp

    model = build_mlp(layers)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch * steps, layers[0])).astype(np.float32)
    y = rng.integers(0, layers[-1], size=batch * steps)
    with local_cluster(workers, dashboard_address=":0") as cluster, Client(cluster) as client:
        start = time.perf_counter()
        history = model.fit(x, y, batch_size=batch, epochs=2, verbose=0, seed=0, client=client)
        wall = time.perf_counter() - start
    timed = {name: values[:, steps:] for name, values in history.step_times.items() if name != "position"}  # epoch 2
    # Throughput is the epoch's wall time per step, as each rank lives it: a rank that leaves an
    # allreduce later starts the next step later, so per-step maxima would count that skew twice.
    step = float(timed["step"].mean(axis=1).max())
    median_step = float(np.median(timed["step"].max(axis=0)))
    parts = {
        f"{name}_ms": round(float(np.median(values.mean(axis=0))) * 1e3, 3)
        for name, values in timed.items()
        if name != "step"
    }
    return {
        "system": f"dtrain-{workers}w",
        "workers": workers,
        "step_ms": round(step * 1e3, 3),
        "median_of_slowest_step_ms": round(median_step * 1e3, 3),
        "samples_per_s": round(batch / step, 1),
        "fit_wall_s": round(wall, 2),
        **parts,
    }


def _run_json(cmd: list[str]) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _have_peer(path: Path) -> bool:
    import importlib.util

    return path.exists() and importlib.util.find_spec("torch") is not None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", default="784,1024,1024,10")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=20, help="steps per epoch (2 epochs; the second is timed)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--peer", type=Path, default=DEFAULT_PEER)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "distributed.json")
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    layers = [int(s) for s in args.layers.split(",")]

    if args.worker:  # child process
        print(json.dumps(measure_dtrain(layers, args.batch, args.steps, args.worker)))
        return 0

    have_peer = _have_peer(args.peer)
    if not have_peer:
        print(
            f"note: PyTorch peer not available ({args.peer}; pip install torch==2.13.0): dtrain only", file=sys.stderr
        )
    me = [sys.executable, "-m", "benchmarks.distributed"]
    common = ["--layers", args.layers, "--batch", str(args.batch), "--steps", str(args.steps)]
    rounds = []
    for r in range(args.rounds):
        one = _run_json([*me, *common, "--worker", "1"])
        two = _run_json([*me, *common, "--worker", "2"])
        tiny = _run_json([*me, "--layers", "32,16,2", "--batch", "64", "--steps", "200", "--worker", "2"])
        row = {
            "round": r + 1,
            "dtrain_1w_samples_per_s": one["samples_per_s"],
            "dtrain_2w_samples_per_s": two["samples_per_s"],
            "dtrain_2w_step_ms": two["step_ms"],
            "dtrain_2w_compute_ms": two["compute_ms"],
            "dtrain_2w_communication_ms": two["communication_ms"],
            "dtrain_2w_waiting_ms": two["waiting_ms"],
            "scaling_efficiency": round(two["samples_per_s"] / (2 * one["samples_per_s"]), 3),
            "tiny_2w_step_ms": tiny["step_ms"],
            "tiny_2w_compute_ms": tiny["compute_ms"],
            "tiny_2w_distributed_overhead_ms": round(tiny["step_ms"] - tiny["compute_ms"], 3),
        }
        if have_peer:
            ddp = _run_json([sys.executable, str(args.peer), *common, "--world", "2", "--steps", "30"])
            row["ddp_2r_samples_per_s"] = ddp["samples_per_s"]
            row["throughput_vs_ddp"] = round(two["samples_per_s"] / ddp["samples_per_s"], 3)
        rounds.append(row)
        print(json.dumps(row), flush=True)

    summary = {key: round(statistics.median(r[key] for r in rounds), 3) for key in rounds[0] if key != "round"}
    report = {
        "benchmark": "distributed_fit",
        "command": "python -m benchmarks.distributed " + " ".join(sys.argv[1:]),
        "layers": args.layers,
        "global_batch": args.batch,
        "dtype": "float32",
        "optimizer": "sgd",
        "machine": machine_record(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "rounds": rounds,
        "median": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"median": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
