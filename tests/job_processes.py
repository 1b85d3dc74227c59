"""Real processes for the job service's tests: the `dtrain` CLI as a subprocess, and a `dask
scheduler` with `dask worker` processes (test_jobs.py's `scheduler` fixture, test_mlflow.py)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEED_JOB = ROOT / "examples" / "jobs" / "seed_network.yaml"


def dtrain_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dtrain", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def json_of(proc: subprocess.CompletedProcess) -> dict:
    """The one JSON document a --json command prints on stdout."""
    return json.loads(proc.stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def dask_cluster(workers: int = 2, scheduler_env: dict | None = None) -> Iterator[str]:
    """A real `dask scheduler` (with ``scheduler_env`` added to its environment) and ``workers``
    single-threaded `dask worker` processes; yields the scheduler's address."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bindir = Path(sys.executable).parent
    dask = str(bindir / "dask") if (bindir / "dask").exists() else "dask"
    procs = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"],
            env={**os.environ, **(scheduler_env or {})},
            **quiet,
        )
    ]
    try:
        procs += [
            subprocess.Popen(
                [dask, "worker", address, "--nthreads", "1", "--memory-limit", "2GiB", "--no-dashboard"], **quiet
            )
            for _ in range(workers)
        ]
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(workers, timeout=60)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def long_job_args(output: Path, workers: int = 1) -> list[str]:
    """The seed job made long enough to be cancelled while it runs."""
    return [
        "--set",
        f"output.dir={output}",
        "--set",
        f"cluster.workers={workers}",
        "--set",
        "fit.epochs=200",
        "--set",
        "data.train.samples=20000",
    ]


def wait_for_state(address: str, job_id: str, states: tuple[str, ...], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        record = json_of(dtrain_cli("status", job_id, "--scheduler", address, "--json"))
        if record["state"] in states or time.monotonic() > deadline:
            return record
        time.sleep(0.5)
