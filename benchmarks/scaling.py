"""Scaling curve: dtrain's throughput on 1..N Dask workers against PyTorch DDP with as many ranks.

    python -m benchmarks.scaling                          # 784-1024-1024-10, global batch 512, 1..cores
    python -m benchmarks.scaling --max-workers 2 --rounds 3

Each round, for n = 1 .. ``--max-workers`` (default: the cores this process may use), one
after the other in fresh processes so all see the same machine load:

- dtrain ``fit(..., client=)`` on ``dtrain.local_cluster`` of n workers x 1 thread, measured by
  ``benchmarks.distributed.measure_dtrain`` (2 epochs, the second timed; its time per step as
  the slower rank lives it, and the step split into compute, communication, waiting and
  overhead);
- the PyTorch peer ``../shared/peers/torch_mlp.py --world n`` (n = 1: one process with 1
  thread, no DDP wrapper; n >= 2: DDP over gloo, 1 thread per rank), same network, same global
  batch.

Per n it reports samples/s (median of rounds) for both, the ratio dtrain / PyTorch (median of
the per-round ratios) and the scaling efficiency: samples/s on n workers over n times the
1-worker samples/s of the same round (1.0 is the ideal line). ``measure()`` is what
``python -m benchmarks`` calls; this command prints the same dictionary as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from . import distributed

DEFAULT_PEER = distributed.DEFAULT_PEER
BREAKDOWN = ("compute_ms", "communication_ms", "waiting_ms", "overhead_ms")


def cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def have_peer(peer: Path | None) -> bool:
    return peer is not None and distributed._have_peer(Path(peer))


def run_dtrain(layers: str, batch: int, steps: int, workers: int) -> dict[str, Any]:
    """One dtrain measurement on ``workers`` workers, in a fresh process (``benchmarks.distributed``'s child)."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.distributed",
        "--layers",
        layers,
        "--batch",
        str(batch),
        "--steps",
        str(steps),
        "--worker",
        str(workers),
    ]
    return distributed._run_json(cmd)


def run_peer(peer: Path, layers: str, batch: int, steps: int, world: int) -> dict[str, Any]:
    """The PyTorch peer with ``world`` ranks of 1 thread each, in fresh processes."""
    cmd = [
        sys.executable,
        str(peer),
        "--layers",
        layers,
        "--batch",
        str(batch),
        "--steps",
        str(steps),
        "--world",
        str(world),
        "--threads",
        "1",
    ]
    try:
        return distributed._run_json(cmd)
    except RuntimeError:  # gloo's ranks now and then abort on exit ("terminate called ..."): once more
        return distributed._run_json(cmd)


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 4) if values else None


def summarize(rounds: list[dict[str, Any]], workers: list[int]) -> dict[str, Any]:
    """Per worker count, medians over rounds (ratios: medians of the per-round ratios)."""
    per_n: dict[str, Any] = {}
    for n in workers:
        key = str(n)
        rows = [r["dtrain"][key] for r in rounds if key in r["dtrain"]]
        peers = [r["peer"][key] for r in rounds if key in r.get("peer", {})]
        entry: dict[str, Any] = {
            "workers": n,
            "dtrain_samples_per_s": _median([row["samples_per_s"] for row in rows]),
            "dtrain_step_ms": _median([row["step_ms"] for row in rows]),
            "efficiency": _median([r["efficiency"][key] for r in rounds if key in r.get("efficiency", {})]),
        }
        for part in BREAKDOWN:
            entry[f"dtrain_{part}"] = _median([row.get(part) for row in rows])
        if peers:
            entry["peer_samples_per_s"] = _median([p["samples_per_s"] for p in peers])
            entry["peer_step_ms"] = _median([p["step_ms"] for p in peers])
            entry["peer_efficiency"] = _median(
                [r["peer_efficiency"][key] for r in rounds if key in r.get("peer_efficiency", {})]
            )
            entry["ratio_vs_peer"] = _median(
                [r["ratio_vs_peer"][key] for r in rounds if key in r.get("ratio_vs_peer", {})]
            )
        per_n[key] = entry
    return per_n


def measure(
    workers: list[int] | int | None = None,
    rounds: int = 3,
    layers: str = "784,1024,1024,10",
    batch: int = 512,
    steps: int = 20,
    peer_steps: int = 30,
    peer: Path | None = DEFAULT_PEER,
    log=None,
) -> dict[str, Any]:
    """Runs the rounds and returns {"workers", "rounds", "per_workers", "peer", ...} (JSON-able).

    ``workers``: the worker counts (1 is always measured: efficiency is relative to it), or the
    largest count (1..that), or None for 1..cores.
    ``peer=None`` (or a peer that cannot run: no torch) measures dtrain alone and says so in
    ``peer_note``. ``log(str)`` hears one line per measurement."""
    if workers is None or isinstance(workers, int):
        workers = list(range(1, (workers or cores()) + 1))
    workers = sorted(set(workers) | {1})
    use_peer = have_peer(peer)
    out_rounds = []
    for r in range(rounds):
        row: dict[str, Any] = {
            "round": r + 1,
            "dtrain": {},
            "peer": {},
            "efficiency": {},
            "peer_efficiency": {},
            "ratio_vs_peer": {},
        }
        for n in workers:
            mine = run_dtrain(layers, batch, steps, n)
            row["dtrain"][str(n)] = mine
            if use_peer:
                theirs = run_peer(Path(peer), layers, batch, peer_steps, n)
                row["peer"][str(n)] = theirs
                row["ratio_vs_peer"][str(n)] = round(mine["samples_per_s"] / theirs["samples_per_s"], 4)
            if log:
                extra = f", PyTorch {row['peer'][str(n)]['samples_per_s']:,.0f}" if use_peer else ""
                log(f"scaling round {r + 1}: {n} worker(s): dtrain {mine['samples_per_s']:,.0f} samples/s{extra}")
        one = row["dtrain"]["1"]["samples_per_s"]
        for n in workers:
            row["efficiency"][str(n)] = round(row["dtrain"][str(n)]["samples_per_s"] / (n * one), 4)
            if use_peer:
                row["peer_efficiency"][str(n)] = round(
                    row["peer"][str(n)]["samples_per_s"] / (n * row["peer"]["1"]["samples_per_s"]), 4
                )
        out_rounds.append(row)
    return {
        "layers": layers,
        "global_batch": batch,
        "steps": steps,
        "peer_steps": peer_steps,
        "threads_per_worker": 1,
        "workers": workers,
        "peer": "torch_mlp.py --world n --threads 1 (n = 1: one process, no DDP wrapper; n >= 2: DDP over gloo)"
        if use_peer
        else None,
        "peer_note": None
        if use_peer
        else f"PyTorch peer not available ({peer}; needs `pip install torch==2.13.0`): dtrain only",
        "rounds": out_rounds,
        "per_workers": summarize(out_rounds, workers),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", default="784,1024,1024,10")
    p.add_argument("--batch", type=int, default=512, help="global batch")
    p.add_argument("--steps", type=int, default=20, help="steps per epoch (2 epochs; the second is timed)")
    p.add_argument("--peer-steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-workers", type=int, default=None, help="largest worker count (default: the cores)")
    p.add_argument("--peer", type=Path, default=DEFAULT_PEER, help="path to torch_mlp.py")
    args = p.parse_args(argv)
    result = measure(
        args.max_workers,
        args.rounds,
        args.layers,
        args.batch,
        args.steps,
        args.peer_steps,
        args.peer,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
