"""Helpers for the tests that run dtrain as users do: the `dtrain` CLI as a subprocess, and real
`dask scheduler` / `dask worker` processes (imported by the test modules, as keras_oracle is)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEED_JOB = ROOT / "examples" / "jobs" / "seed_network.yaml"


def dtrain_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m dtrain ARGS`` from the repository root; ``env`` adds to this process's environment."""
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


def dask_script() -> str:
    """The `dask` console script of this environment (next to the interpreter), else the one on PATH."""
    bindir = Path(sys.executable).parent
    return str(bindir / "dask") if (bindir / "dask").exists() else "dask"


class DaskProcesses:
    """A real `dask scheduler` on 127.0.0.1 and ``workers`` single-threaded `dask worker`
    processes (2 GiB each), started and connected when this returns.

    ``nanny=False``: workers without a nanny (a killed worker stays dead). ``scheduler_file``:
    the scheduler also writes its scheduler file there (``dask scheduler --scheduler-file``), and
    the workers find it through that file, as Dask's own CLIs do. ``scheduler_env`` adds to the
    scheduler's environment; ``scheduler_args`` to its command line (after the defaults, which
    they may override: ``--dashboard-address``...)."""

    def __init__(
        self,
        workers: int,
        *,
        nanny: bool = True,
        scheduler_file: str | Path | None = None,
        scheduler_env: dict | None = None,
        scheduler_args: list[str] | tuple[str, ...] = (),
    ):
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.scheduler_file = None if scheduler_file is None else Path(scheduler_file)
        dask = dask_script()
        quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        by_file = ["--scheduler-file", str(self.scheduler_file)] if self.scheduler_file else []
        self.scheduler = subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--dashboard-address", ":0", *by_file]
            + list(scheduler_args),
            env={**os.environ, **(scheduler_env or {})},
            **quiet,
        )
        self._worker_command = [
            dask,
            "worker",
            *(by_file or [self.address]),
            "--nthreads",
            "1",
            *([] if nanny else ["--no-nanny"]),
            "--no-dashboard",
            "--memory-limit",
            "2GiB",
        ]
        self.workers: list[subprocess.Popen] = []
        try:
            self.workers = [subprocess.Popen(self._worker_command, **quiet) for _ in range(workers)]
            self.wait_for_workers(workers)
        except BaseException:
            self.close()
            raise

    def wait_for_workers(self, count: int) -> None:
        from distributed import Client

        with Client(self.address, timeout="30s", set_as_default=False) as client:
            client.wait_for_workers(count, timeout=60)

    def add_worker(self) -> None:
        self.workers.append(
            subprocess.Popen(self._worker_command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )

    def kill(self) -> None:
        """SIGKILL everything (what a crash does)."""
        for proc in [*self.workers, self.scheduler]:
            if proc.poll() is None:
                proc.kill()
        for proc in [*self.workers, self.scheduler]:
            proc.wait(timeout=15)

    def close(self) -> None:
        """SIGTERM the workers, then the scheduler (a clean stop); SIGKILL what is left after 15 s."""
        for proc in [*reversed(self.workers), self.scheduler]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self.workers, self.scheduler]:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)

    def __enter__(self) -> DaskProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the job service's tests -------------------------------------------------------------------------


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
    """The job's record once it is in one of ``states`` (or when ``timeout`` has passed)."""
    deadline = time.monotonic() + timeout
    while True:
        record = json_of(dtrain_cli("status", job_id, "--scheduler", address, "--json"))
        if record["state"] in states or time.monotonic() > deadline:
            return record
        time.sleep(0.5)
