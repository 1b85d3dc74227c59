"""What each optimizer's update costs on the flat parameter buffer of 784-1024-1024-10
(1.86M float32 parameters), and what it allocates per step (issue 18's target: one vectorised
pass, no per-step allocation, also with weight decay, clipping by norm and a schedule).

    python -m benchmarks.optimizers                     # 2 BLAS threads, 30 steps, median
    python -m benchmarks.optimizers --json benchmarks/results/optimizers.json

For each configuration, in this process: the optimizer is built on the buffer, 5 warm-up
steps are taken, then ``--steps`` calls of ``Optimizer.apply`` (the whole update: accumulation,
clipping, weight decay, the rule, the moving average) are timed one by one on a fixed random
gradient; a final window of steps runs under ``tracemalloc`` (NumPy reports its data
allocations to it), and the report gives the bytes still allocated after the steps and the peak
of traced memory during them: the largest temporary a step makes. Per configuration:
``update_ms`` (median), ``passes`` (update_ms over the time of one in-place ``w += g`` on the
same buffer: how many sweeps of the buffer the update is worth), ``alive_bytes`` and
``peak_temporary_bytes`` per step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from .single_process import machine_record

LAYERS = [784, 1024, 1024, 10]


def _configs():
    from dtrain import optimizers as o
    from dtrain.optimizers import schedules as s

    cosine = s.CosineDecay(1e-3, decay_steps=1000, warmup_target=2e-3, warmup_steps=10)
    return {
        "sgd": o.SGD(0.01),
        "sgd momentum": o.SGD(0.01, momentum=0.9),
        "adam": o.Adam(),
        "adam amsgrad": o.Adam(amsgrad=True),
        "adamw + clipnorm + cosine schedule": o.AdamW(cosine, clipnorm=1.0),
        "adamw + global_clipnorm + ema": o.AdamW(global_clipnorm=1.0, use_ema=True),
        "adam + accumulation 2 + clipvalue": o.Adam(gradient_accumulation_steps=2, clipvalue=0.5),
        "rmsprop centered": o.RMSprop(centered=True, momentum=0.9),
        "adagrad": o.Adagrad(),
        "adadelta": o.Adadelta(),
        "adamax": o.Adamax(),
        "nadam": o.Nadam(),
        "lion": o.Lion(),
        "ftrl": o.Ftrl(l1_regularization_strength=1e-4, beta=0.1),
    }


def _spans(layers: list[int]) -> list[tuple[int, int]]:
    spans, at = [], 0
    for fan_in, units in zip(layers, layers[1:]):
        for size in (fan_in * units, units):
            spans.append((at, at + size))
            at += size
    return spans


def measure(steps: int) -> dict:
    spans = _spans(LAYERS)
    size = spans[-1][1]
    rng = np.random.default_rng(0)
    params0 = rng.standard_normal(size).astype(np.float32) * 0.05
    grads = rng.standard_normal(size).astype(np.float32) * 0.01
    w = params0.copy()
    sweep = []
    for _ in range(steps):
        t = time.perf_counter()
        w += grads
        sweep.append(time.perf_counter() - t)
    one_pass = statistics.median(sweep)
    report = {"parameters": size, "one_pass_ms": one_pass * 1e3, "configs": {}}
    for name, optimizer in _configs().items():
        params = params0.copy()
        optimizer.build(np, params, spans)
        g = grads.copy()
        for _ in range(5):
            optimizer.apply(params, g)
            g[...] = grads  # (clipping writes into the gradient)
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            optimizer.apply(params, g)
            times.append(time.perf_counter() - t)
            g[...] = grads
        tracemalloc.start()
        tracemalloc.clear_traces()
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(4):
            optimizer.apply(params, g)
        alive, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        g[...] = grads
        update = statistics.median(times)
        report["configs"][name] = {
            "update_ms": round(update * 1e3, 3),
            "passes": round(update / one_pass, 1),
            "alive_bytes": int(alive - before),
            "peak_temporary_bytes": int(peak - before),
            "finite": bool(np.isfinite(params).all()),
        }
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    with threadpool_limits(args.threads):
        report = {"benchmark": "optimizers", **measure(args.steps), "machine": machine_record()}
    text = json.dumps(report, indent=1)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
