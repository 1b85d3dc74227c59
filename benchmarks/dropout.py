"""What dropout's masks cost: 784-1024-1024-10 with Dropout(0.5) after each hidden layer, one
process, against the same step without dropout (issue 17's target: mask generation <= 5% of
the single-process step).

    python -m benchmarks.dropout                  # batch 512, 2 BLAS threads, 5 rounds
    python -m benchmarks.dropout --rounds 3 --steps 20 --json benchmarks/results/dropout.json

Each round times, in this process and one after the other (so both see the same load):
``plain``, a training step (forward, loss, backward, SGD update) of the network without
dropout; ``dropout``, the same step with the two Dropout layers (masks from the counter-based
hash of (seed, layer, epoch, global row, unit), applied forward and backward); and ``masks``,
the hashing alone for both layers' (512, 1024) blocks. Medians over rounds; the ratios are
masks / plain (the target) and dropout / plain (what a user pays in all).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from .single_process import machine_record


def _model(dropout: bool, layers: list[int]):
    from dtrain.layers import Dense, Dropout, Input
    from dtrain.models import Sequential

    stack: list = [Input(shape=(layers[0],))]
    for units in layers[1:-1]:
        stack.append(Dense(units, activation="relu"))
        if dropout:
            stack.append(Dropout(0.5))
    stack.append(Dense(layers[-1], activation="softmax"))
    model = Sequential(stack, device="cpu")
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.build(seed=0)
    return model


def _median_ms(fn, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure(layers: list[int], batch: int, steps: int, warmup: int) -> dict[str, float]:
    from dtrain import randomness
    from dtrain.randomness import StepNoise

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, layers[0])).astype(np.float32)
    y = rng.integers(0, layers[-1], size=batch)
    plain, dropped = _model(False, layers), _model(True, layers)
    rows = np.arange(batch)
    epoch = [0]

    def step_plain() -> None:
        plain.compute_gradients(x, y)
        plain.apply_gradients()

    def step_dropout() -> None:
        epoch[0] += 1  # new masks every step, as in training
        dropped.compute_gradients(x, y, noise=StepNoise(0, epoch[0], rows))
        dropped.apply_gradients()

    blocks = [(np.empty((batch, units), np.uint32), np.empty((batch, units), np.uint32)) for units in layers[1:-1]]

    def masks() -> None:
        epoch[0] += 1
        for i, (out, scratch) in enumerate(blocks):
            randomness.bits(np, randomness.stream_key(0, i, epoch[0]), rows, out.shape[1], out, scratch)

    return {
        "plain_ms": _median_ms(step_plain, steps, warmup),
        "dropout_ms": _median_ms(step_dropout, steps, warmup),
        "masks_ms": _median_ms(masks, steps, warmup),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", default="784,1024,1024,10")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    layers = [int(n) for n in args.layers.split(",")]
    rounds = []
    with threadpool_limits(args.threads):
        for _ in range(args.rounds):
            rounds.append(measure(layers, args.batch, args.steps, args.warmup))
    result = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    result["masks_share_of_step"] = result["masks_ms"] / result["plain_ms"]
    result["dropout_over_plain"] = result["dropout_ms"] / result["plain_ms"]
    report = {
        "benchmark": "dropout",
        "command": "python -m benchmarks.dropout " + " ".join(argv or []),
        "layers": layers,
        "batch": args.batch,
        "threads": args.threads,
        "rounds": rounds,
        "median": result,
        "machine": machine_record(),
    }
    print(
        f"{args.layers}, batch {args.batch}, {args.threads} threads, median of {args.rounds} rounds: step "
        f"{result['plain_ms']:.1f} ms without dropout, {result['dropout_ms']:.1f} ms with Dropout(0.5) x"
        f"{len(layers) - 2}; masks {result['masks_ms']:.2f} ms = {100 * result['masks_share_of_step']:.1f}% of the "
        f"step (target <= 5%); dropout / plain {result['dropout_over_plain']:.3f}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
