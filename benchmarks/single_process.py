"""Single-process training step: dtrain against PyTorch on the same dense network, same run.

    python -m benchmarks.single_process                       # 784-1024-1024-10, batch 512, 2 threads
    python -m benchmarks.single_process --rounds 5 --steps 30

Each round runs dtrain and the PyTorch peer (../shared/peers/torch_mlp.py, needs
`pip install torch==2.13.0`) one after the other in fresh processes with the same BLAS thread
count, so both see the same machine load; the report gives per-round medians and the ratio
dtrain / PyTorch (lower is better). Two dtrain figures are reported:

- ``step``: forward + loss + backward + SGD update on one resident batch: what the peer
  script measures for PyTorch (like for like);
- ``fit``: the time per step of ``model.fit`` over shuffled data, including batch gathering
  and the callback/bookkeeping of the training loop: what a user sees.

Results are written to benchmarks/results/single_process.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PEER = ROOT.parent / "shared" / "peers" / "torch_mlp.py"


def machine_record() -> dict:
    """The machine a benchmark ran on, as its JSON results record it."""
    import numpy

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
    }


def _thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def build_mlp(layers: list[int]):
    """The peers' network: relu hidden layers, softmax output, SGD, sparse cross-entropy, on CPU."""
    from dtrain.layers import Dense
    from dtrain.models import Sequential

    model = Sequential(device="cpu")
    for i, units in enumerate(layers[1:]):
        last = i == len(layers) - 2
        model.add(Dense(units, activation="softmax" if last else "relu", input_dim=layers[0] if i == 0 else None))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


def measure_dtrain(layers: list[int], batch: int, steps: int, warmup: int) -> dict:
    """Runs inside a fresh process whose BLAS thread count was set by the environment."""
    import numpy as np

    model = build_mlp(layers)
    model.build(seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, layers[0])).astype(np.float32)
    y = rng.integers(0, layers[-1], size=batch)

    def step():
        model.compute_gradients(x, y)
        model.apply_gradients()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)

    # The same network through fit(): shuffled epochs over steps * batch samples.
    xs = rng.standard_normal((batch * steps, layers[0])).astype(np.float32)
    ys = rng.integers(0, layers[-1], size=batch * steps)
    model.fit(xs[: batch * warmup], ys[: batch * warmup], batch_size=batch, epochs=1, verbose=0, seed=1)
    start = time.perf_counter()
    model.fit(xs, ys, batch_size=batch, epochs=1, verbose=0, seed=1)
    fit_s = (time.perf_counter() - start) / steps
    return {
        "system": "dtrain",
        "step_ms": round(step_s * 1e3, 3),
        "fit_step_ms": round(fit_s * 1e3, 3),
        "samples_per_s": round(batch / step_s, 1),
    }


def _run_json(cmd: list[str], threads: int) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_thread_env(threads), cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", default="784,1024,1024,10")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--peer", type=Path, default=DEFAULT_PEER, help="path to torch_mlp.py")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "single_process.json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    layers = [int(s) for s in args.layers.split(",")]

    if args.worker:  # child process: measure dtrain only
        print(json.dumps(measure_dtrain(layers, args.batch, args.steps, args.warmup)))
        return 0

    have_peer = args.peer.exists()
    if have_peer:
        try:
            import importlib.util

            have_peer = importlib.util.find_spec("torch") is not None
        except Exception:
            have_peer = False
    if not have_peer:
        print(
            f"note: PyTorch peer not available ({args.peer}; pip install torch==2.13.0): dtrain only", file=sys.stderr
        )

    common = [
        "--layers",
        args.layers,
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ]
    rounds = []
    for r in range(args.rounds):
        mine = _run_json([sys.executable, "-m", "benchmarks.single_process", "--worker", *common], args.threads)
        peer = None
        if have_peer:
            peer = _run_json([sys.executable, str(args.peer), *common, "--threads", str(args.threads)], args.threads)
        row = {"round": r + 1, "dtrain_step_ms": mine["step_ms"], "dtrain_fit_step_ms": mine["fit_step_ms"]}
        if peer:
            row["torch_step_ms"] = peer["step_ms"]
            row["ratio_step"] = round(mine["step_ms"] / peer["step_ms"], 3)
            row["ratio_fit"] = round(mine["fit_step_ms"] / peer["step_ms"], 3)
        rounds.append(row)
        print(json.dumps(row), flush=True)

    summary = {key: round(statistics.median(r[key] for r in rounds), 3) for key in rounds[0] if key != "round"}
    report = {
        "benchmark": "single_process_step",
        "command": "python -m benchmarks.single_process " + " ".join(sys.argv[1:]),
        "layers": args.layers,
        "batch": args.batch,
        "threads": args.threads,
        "dtype": "float32",
        "optimizer": "sgd",
        "machine": machine_record(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "rounds": rounds,
        "median": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("\n| system | step (ms, median of rounds) | vs PyTorch |")
    print("|---|---|---|")
    if "torch_step_ms" in summary:
        print(f"| PyTorch {args.threads} threads | {summary['torch_step_ms']} | 1.00x |")
    for label, key, ratio in (
        ("dtrain step", "dtrain_step_ms", "ratio_step"),
        ("dtrain fit()", "dtrain_fit_step_ms", "ratio_fit"),
    ):
        print(f"| {label} | {summary[key]} | {str(summary[ratio]) + 'x' if ratio in summary else 'n/a'} |")
    print(f"\nwritten to {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
