"""Planning the batches of a large dataset: time and memory of what the driver and the job
service do with a plan, which must not grow with the rows.

    python -m benchmarks.planning                    # 1e6 .. 1e12 rows, 2 shards (batch 32), 64 (batch 64)

For each size: ``ShardPlan(rows, shards, batch)`` and the rows of the first, middle and last
steps (``taken_at``), timed with ``time.perf_counter`` and measured with ``tracemalloc`` (peak
bytes allocated by Python and NumPy), median of 5. Also ``dtrain validate`` of a synthetic job of
1e9 rows, as a subprocess (wall seconds, peak RSS). Target (issue 16): 1e9 rows in <= 50 ms and
<= 10 MB. Prints one JSON line; writes benchmarks/results/planning.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from dtrain.sampling import ShardPlan

from .single_process import machine_record

ROOT = Path(__file__).resolve().parent.parent

JOB = """\
model:
  layers:
    - {units: 8, activation: relu}
    - {units: 3, activation: softmax}
compile:
  loss: categorical_crossentropy
data:
  train: {format: synthetic, samples: ROWS, features: 4, classes: 3}
fit: {batch_size: 32}
"""


def plan_once(rows: int, shards: int, batch: int) -> tuple[float, int]:
    tracemalloc.start()
    start = time.perf_counter()
    plan = ShardPlan(rows, shards, batch)
    plan.taken_at([0, 1, plan.steps // 2, plan.steps])
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak


def validate(rows: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "big.yaml"
        path.write_text(JOB.replace("ROWS", str(rows)))
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "dtrain", "validate", str(path)], capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"rows": rows, "seconds": round(seconds, 3), "peak_rss_mib_children": round(peak_kib / 1024, 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "planning.json"))
    args = parser.parse_args(argv)
    rows_list = [10**6, 10**8, 10**9, 10**12]
    plans = []
    for rows in rows_list:
        for shards in (2, 64):
            runs = [plan_once(rows, shards, max(32, shards)) for _ in range(5)]
            plans.append(
                {
                    "rows": rows,
                    "shards": shards,
                    "ms": round(statistics.median(r[0] for r in runs) * 1e3, 3),
                    "peak_kib": round(statistics.median(r[1] for r in runs) / 1024, 1),
                }
            )
    result = {"machine": machine_record(), "plans": plans, "validate": validate(10**9)}
    line = json.dumps(result)
    print(line)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(line + "\n")
    return result


if __name__ == "__main__":
    main()
