"""Two checkouts of dtrain side by side: the training step of one and the other, alternating.

    git worktree add /tmp/base <commit>       # the code to compare against
    python -m benchmarks.compare --base /tmp/base --rounds 6

Each round runs, in fresh processes, the single-process measurement of
``benchmarks.single_process`` (one resident batch, and ``fit`` over shuffled data; 2 BLAS
threads) and the 2-worker ``fit(..., client=)`` of ``benchmarks.distributed``, once with each
checkout's package (``PYTHONPATH``), in alternating order (base first in odd rounds, this
checkout first in even ones), so both see the same machine load. The report gives per-round
figures, medians and the ratio this / base (lower is faster) for: ``step_ms`` (one resident
batch), ``fit_step_ms`` (fit's time per step, one process), ``2w_step_ms`` (the slower rank's
time per step, epoch 2) and ``2w_fit_wall_s`` (the whole 2-epoch fit, cluster start excluded).
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


def _run(tree: Path, args: list[str], threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, cwd=tree)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} in {tree} failed:\n{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(tree: Path, layers: str, batch: int, steps: int, parts: str) -> dict:
    common = ["--layers", layers, "--batch", str(batch), "--steps", str(steps)]
    figures = {}
    if parts in ("both", "single"):
        one = _run(tree, ["benchmarks.single_process", *common, "--warmup", "3", "--worker"], threads=2)
        figures.update(step_ms=one["step_ms"], fit_step_ms=one["fit_step_ms"])
    if parts in ("both", "distributed"):
        two = _run(tree, ["benchmarks.distributed", *common, "--worker", "2"], threads=1)
        figures.update({"2w_step_ms": two["step_ms"], "2w_fit_wall_s": two["fit_wall_s"]})
    return figures


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, required=True, help="the other checkout (e.g. a git worktree)")
    p.add_argument("--layers", default="784,1024,1024,10")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--parts", choices=("both", "single", "distributed"), default="both")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compare.json")
    args = p.parse_args()
    trees = {"base": args.base.resolve(), "this": ROOT}
    rounds = []
    for r in range(args.rounds):
        order = ["base", "this"] if r % 2 == 0 else ["this", "base"]
        row: dict = {"round": r + 1, "order": order}
        for name in order:
            row[name] = measure(trees[name], args.layers, args.batch, args.steps, args.parts)
        print(json.dumps(row), flush=True)
        rounds.append(row)
    keys = list(rounds[0]["base"])
    median = {name: {key: round(statistics.median(r[name][key] for r in rounds), 3) for key in keys} for name in trees}
    ratio = {key: round(median["this"][key] / median["base"][key], 3) for key in keys}
    report = {
        "benchmark": "compare",
        "command": "python -m benchmarks.compare " + " ".join(sys.argv[1:]),
        "base": str(trees["base"]),
        "base_commit": _commit(trees["base"]),
        "this_commit": _commit(ROOT),
        "layers": args.layers,
        "global_batch": args.batch,
        "machine": machine_record(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "rounds": rounds,
        "median": median,
        "ratio_this_over_base": ratio,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"median": median, "ratio_this_over_base": ratio}, indent=2))
    return 0


def _commit(tree: Path) -> str:
    proc = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain"], capture_output=True, text=True)
    return proc.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


if __name__ == "__main__":
    sys.exit(main())
