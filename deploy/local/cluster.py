#!/usr/bin/env python3
"""A dtrain cluster on this machine: one ``dask scheduler`` with the job service, N workers.

    python deploy/local/cluster.py start --workers 2        # prints the scheduler's address
    dtrain submit examples/jobs/seed_network.yaml --scheduler tcp://127.0.0.1:8786
    dtrain list --scheduler-file /tmp/dtrain-local-$USER/scheduler.json   # or by its scheduler file
    python deploy/local/cluster.py status
    python deploy/local/cluster.py stop

The dashboard is the scheduler's, on 127.0.0.1:8787 (``--dashboard-port``): dtrain's page is
http://127.0.0.1:8787/dtrain (jobs, curves, per-rank step times), Dask's own at /status.
``start`` prints both links and records them in ``STATE/cluster.json`` (``dashboard``,
``dtrain_page``), with the scheduler file's path (``scheduler_file``).

``start`` runs ``dask scheduler --preload dtrain.jobs.service`` (the job service is there from
the start) and N ``dask worker ADDRESS --nthreads 1`` processes, or one ``dask cuda worker``
(one worker per GPU) where dask-cuda is installed and GPUs are visible. Every process is
detached (its own session and process group), logs to a file in the state directory and
outlives this script; their PIDs are recorded in ``STATE/cluster.json``. ``start`` returns once
every worker is connected and the job service answers, or fails with the end of the logs.
``stop`` ends them (SIGTERM, then SIGKILL after a grace period) and removes the state file.

Everything listens on 127.0.0.1 unless ``--host`` says otherwise: whoever can reach the
scheduler can run code as you (see deploy/README.md).

From Python (the tests do this)::

    from deploy.local.cluster import LocalDeployment     # or load this file by path
    with LocalDeployment(workers=2, device="cpu") as address:
        ...                                              # address: "tcp://127.0.0.1:PORT"

Run it with the Python environment where dtrain is installed: the processes are started with
``sys.executable -m dask ...``, so they use the same environment as this script.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

STATE_FILE = "cluster.json"
SCHEDULER_FILE = "scheduler.json"
STATE_ENV = "DTRAIN_LOCAL_STATE"
DEFAULT_PORT = 8786
DEFAULT_DASHBOARD_PORT = 8787
DTRAIN_PAGE = "/dtrain"  # dtrain's page on the scheduler's dashboard (Dask's own: /status)
LOG_TAIL_LINES = 30


class DeploymentError(RuntimeError):
    """The cluster could not be started, checked or stopped; the message says why."""


def default_state_dir() -> Path:
    """``$DTRAIN_LOCAL_STATE``, else ``<tmp>/dtrain-local-<user>``."""
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV])
    user = os.environ.get("USER") or str(os.getuid())
    return Path(tempfile.gettempdir()) / f"dtrain-local-{user}"


# -- processes ------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (Linux), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell it from a reused PID."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    """Whether process ``pid`` runs (a zombie does not count; with ``start_time``, it must be
    the same process that was started then, not a later one given the same PID)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat_fields(pid)
    if fields is None:
        return True  # not Linux: kill(0) is all we know
    if fields[0] in ("Z", "X"):
        return False
    return start_time is None or int(fields[19]) == start_time


def group_members(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (the nanny's worker process included)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members


_ERROR_LINE = re.compile(r"^[\w.]*(Error|Exception)\b|- (ERROR|CRITICAL) -")


def _log_tail(path: str | Path, lines: int = LOG_TAIL_LINES) -> str:
    """The end of a log, after the error lines above it (a traceback can push those out)."""
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    tail = text[-lines:]
    errors = [line for line in text[:-lines] if _ERROR_LINE.search(line)][-5:]
    return "\n".join([*errors, *(["..."] if errors else []), *tail]) or "(empty log)"


def dtrain_page(dashboard: str | None) -> str | None:
    """dtrain's page on the dashboard whose link is ``dashboard`` (any page of it, e.g. Dask's
    ``http://HOST:8787/status``): ``http://HOST:8787/dtrain``; None without a dashboard."""
    if not dashboard:
        return None
    parts = urlsplit(dashboard)
    return f"{parts.scheme}://{parts.netloc}{DTRAIN_PAGE}"


def count_gpus() -> int:
    """GPUs this machine shows: ``nvidia-smi -L``, else CuPy's device count, else 0."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
            if out.returncode == 0:
                return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


def has_dask_cuda() -> bool:
    return importlib.util.find_spec("dask_cuda") is not None


# -- commands -------------------------------------------------------------------------------------


def scheduler_command(
    *, host: str, port: int, dashboard_port: int | None, scheduler_file: Path | str, python: str = sys.executable
) -> list[str]:
    """``dask scheduler`` with dtrain's job service preloaded (``dashboard_port`` None: no dashboard)."""
    dashboard = ["--no-dashboard"] if dashboard_port is None else ["--dashboard-address", f"{host}:{dashboard_port}"]
    return [
        python,
        "-m",
        "dask",
        "scheduler",
        "--host",
        host,
        "--port",
        str(port),
        *dashboard,
        "--scheduler-file",
        str(scheduler_file),
        "--preload",
        "dtrain.jobs.service",
    ]


def cpu_worker_command(
    address: str, *, name: str, host: str, memory_limit: str | None = None, python: str = sys.executable
) -> list[str]:
    """One single-threaded ``dask worker`` (with its nanny, which restarts it if it dies)."""
    memory = ["--memory-limit", memory_limit] if memory_limit else []
    return [
        python,
        "-m",
        "dask",
        "worker",
        address,
        "--nthreads",
        "1",
        "--name",
        name,
        "--host",
        host,
        "--no-dashboard",
        *memory,
    ]


def gpu_worker_command(
    address: str, *, host: str, memory_limit: str | None = None, python: str = sys.executable
) -> list[str]:
    """``dask cuda worker``: one single-threaded worker per visible GPU (CUDA_VISIBLE_DEVICES)."""
    memory = ["--memory-limit", memory_limit] if memory_limit else []
    return [
        python,
        "-m",
        "dask",
        "cuda",
        "worker",
        address,
        "--nthreads",
        "1",
        "--host",
        host,
        "--no-dashboard",
        *memory,
    ]


# -- the deployment -------------------------------------------------------------------------------


class LocalDeployment:
    """A scheduler with dtrain's job service and ``workers`` worker processes on this machine.

    ``device``: "cpu" (``dask worker`` processes), "gpu" (``dask cuda worker`` on the first
    ``workers`` GPUs; needs dask-cuda and GPUs) or "auto" (gpu where both are there).
    ``scheduler_port`` / ``dashboard_port``: 0 picks a free one; ``dashboard_port=None``: none.
    ``state_dir``: where the logs, the scheduler file and ``cluster.json`` go (default: a new
    temporary directory, removed by :meth:`stop`).
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        device: str = "auto",
        host: str = "127.0.0.1",
        scheduler_port: int = 0,
        dashboard_port: int | None = 0,
        state_dir: str | Path | None = None,
        memory_limit: str | None = None,
        timeout: float = 60.0,
        grace: float = 20.0,
    ) -> None:
        if device not in ("auto", "cpu", "gpu"):
            raise DeploymentError(f"device must be auto, cpu or gpu, not {device!r}")
        if workers is not None and workers < 1:
            raise DeploymentError(f"--workers must be at least 1, not {workers}")
        self.workers = workers
        self.device = device
        self.host = host
        self.scheduler_port = scheduler_port
        self.dashboard_port = dashboard_port
        self._own_state_dir = state_dir is None
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.memory_limit = memory_limit
        self.timeout = timeout
        self.grace = grace
        self.address: str | None = None
        self.dashboard: str | None = None
        self.scheduler_file: str | None = None
        self.processes: list[dict[str, Any]] = []
        self._popen: dict[int, subprocess.Popen] = {}

    # state ---------------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        assert self.state_dir is not None
        return self.state_dir / STATE_FILE

    def state(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "dashboard": self.dashboard,
            "dtrain_page": dtrain_page(self.dashboard),
            "scheduler_file": self.scheduler_file,
            "device": self.device,
            "workers": self.workers,
            "state_dir": str(self.state_dir),
            "processes": self.processes,
        }

    @classmethod
    def from_state(cls, state_dir: str | Path) -> LocalDeployment:
        """The deployment recorded in ``state_dir`` (raises DeploymentError when there is none)."""
        path = Path(state_dir) / STATE_FILE
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            raise DeploymentError(
                f"no local cluster recorded in {state_dir} (nothing started, or already stopped)"
            ) from None
        except (OSError, ValueError) as exc:
            raise DeploymentError(f"cannot read {path}: {exc}") from exc
        self = cls(state.get("workers"), device=state.get("device", "auto"), state_dir=state_dir)
        self._own_state_dir = False
        self.address, self.dashboard = state.get("address"), state.get("dashboard")
        self.scheduler_file = state.get("scheduler_file")
        self.processes = list(state.get("processes", []))
        return self

    def live_processes(self) -> list[dict[str, Any]]:
        return [p for p in self.processes if pid_alive(p["pid"], p.get("start_time"))]

    # start ---------------------------------------------------------------------------------------
    def _check_environment(self) -> None:
        missing = [name for name in ("distributed", "dtrain") if importlib.util.find_spec(name) is None]
        if missing:
            raise DeploymentError(
                f"{' and '.join(missing)} cannot be imported by {sys.executable}: run this script with the Python "
                "environment where dtrain is installed (pip install -e .)"
            )

    def _use_gpu(self) -> tuple[bool, int]:
        if self.device == "cpu":
            return False, 0
        gpus = count_gpus()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:  # nvidia-smi lists every GPU; the workers get only these
            gpus = min(gpus, len([d for d in visible.split(",") if d.strip()]))
        cuda = has_dask_cuda()
        if self.device == "gpu":
            if not cuda:
                raise DeploymentError("--device gpu needs dask-cuda: pip install 'dtrain[gpu]'")
            if gpus == 0:
                raise DeploymentError("--device gpu: no GPU found (nvidia-smi -L lists none, CuPy sees none)")
        if cuda and gpus > 0:
            if self.workers is not None and self.workers > gpus:
                raise DeploymentError(
                    f"--workers {self.workers} on GPUs, but this machine has {gpus}: one worker per GPU"
                )
            return True, gpus
        return False, gpus

    def _spawn(self, role: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        from dtrain.clusters import training_environment  # Dask settings for training (yours win)

        assert self.state_dir is not None
        log = self.state_dir / f"{role}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own session and process group: survives this script, stopped as a group
                env={**os.environ, "PYTHONUNBUFFERED": "1", **training_environment(), **(env or {})},
            )
        self._popen[proc.pid] = proc
        self.processes.append(
            {
                "role": role,
                "pid": proc.pid,
                "pgid": proc.pid,
                "start_time": _start_time(proc.pid),
                "command": cmd,
                "log": str(log),
            }
        )
        self._write_state()

    def _write_state(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state(), indent=2))
        tmp.replace(self.state_file)

    def _fail_if_exited(self) -> None:
        for p in self.processes:
            if not pid_alive(p["pid"], p.get("start_time")):
                proc = self._popen.get(p["pid"])
                code = proc.poll() if proc is not None else None
                raise DeploymentError(
                    f"the {p['role']} process exited during start-up"
                    + (f" (exit code {code})" if code is not None else "")
                    + f"; end of {p['log']}:\n{_log_tail(p['log'])}"
                )

    def start(self) -> str:
        """Start everything, wait until it all answers; returns the scheduler's address."""
        self._check_environment()
        if self.state_dir is None:
            self.state_dir = Path(tempfile.mkdtemp(prefix="dtrain-local-"))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.state_file.exists():
            previous = LocalDeployment.from_state(self.state_dir)
            if previous.live_processes():
                raise DeploymentError(
                    f"a local cluster is already running from {self.state_dir} (scheduler {previous.address}, "
                    f"{len(previous.live_processes())} live processes): stop it first with "
                    f"`python {Path(__file__).as_posix()} stop --state-dir {self.state_dir}`, or use another --state-dir"
                )
            self.state_file.unlink()  # a stale record: its processes are gone
        scheduler_file = self.state_dir / SCHEDULER_FILE
        scheduler_file.unlink(missing_ok=True)
        gpu, gpus = self._use_gpu()
        self.device = "gpu" if gpu else "cpu"
        if self.workers is None:
            self.workers = gpus if gpu else (os.cpu_count() or 1)
        deadline = time.monotonic() + self.timeout
        try:
            self._spawn(
                "scheduler",
                scheduler_command(
                    host=self.host,
                    port=self.scheduler_port,
                    dashboard_port=self.dashboard_port,
                    scheduler_file=scheduler_file,
                ),
            )
            info = self._wait_for_scheduler(scheduler_file, deadline)
            self.address = info["address"]
            self.scheduler_file = str(scheduler_file)
            dashboard_port = info.get("services", {}).get("dashboard")
            self.dashboard = f"http://{self.host}:{dashboard_port}/status" if dashboard_port else None
            self._write_state()
            if gpu:
                visible = os.environ.get("CUDA_VISIBLE_DEVICES")
                devices = [d.strip() for d in visible.split(",")] if visible else [str(i) for i in range(gpus)]
                env = {"CUDA_VISIBLE_DEVICES": ",".join(devices[: self.workers])}
                self._spawn(
                    "workers-gpu", gpu_worker_command(self.address, host=self.host, memory_limit=self.memory_limit), env
                )
            else:
                for i in range(self.workers):
                    self._spawn(
                        f"worker-{i}",
                        cpu_worker_command(
                            self.address,
                            name=f"local-{i}",
                            host=self.host,
                            memory_limit=self.memory_limit,
                        ),
                    )
            self._wait_for_workers(deadline)
        except BaseException:
            self.stop(remove_state_dir=False)  # keep the logs the message points to
            raise
        return self.address

    def _wait_for_scheduler(self, scheduler_file: Path, deadline: float) -> dict[str, Any]:
        while True:
            if scheduler_file.exists():
                try:
                    return json.loads(scheduler_file.read_text())
                except ValueError:
                    pass  # being written
            self._fail_if_exited()
            if time.monotonic() > deadline:
                log = self.processes[0]["log"]
                raise DeploymentError(
                    f"the scheduler did not start within {self.timeout:g} s; end of {log}:\n{_log_tail(log)}"
                )
            time.sleep(0.1)

    def _wait_for_workers(self, deadline: float) -> None:
        from distributed import Client

        from dtrain.jobs.client import JobsClient

        with Client(
            self.address, timeout=f"{max(deadline - time.monotonic(), 1):.0f}s", set_as_default=False
        ) as client:
            while True:
                try:
                    client.wait_for_workers(self.workers, timeout=1)
                    break
                except TimeoutError:
                    pass
                self._fail_if_exited()
                if time.monotonic() > deadline:
                    have = len(client.scheduler_info(n_workers=-1)["workers"])
                    logs = "\n".join(f"--- end of {p['log']}:\n{_log_tail(p['log'], 10)}" for p in self.processes[1:])
                    raise DeploymentError(
                        f"{have} of {self.workers} workers connected within {self.timeout:g} s\n{logs}"
                    )
            if not JobsClient(client=client).has_service():
                log = self.processes[0]["log"]
                raise DeploymentError(
                    "the scheduler runs without dtrain's job service (--preload dtrain.jobs.service did not "
                    f"register it); end of {log}:\n{_log_tail(log)}"
                )

    # stop ----------------------------------------------------------------------------------------
    def stop(self, *, remove_state_dir: bool | None = None) -> list[int]:
        """Stop the workers, then the scheduler: SIGTERM to each (a clean close), SIGKILL to any
        process of their groups still there after the grace period. Returns the PIDs that had to
        be killed. Removes the state file (and the state directory if it was a temporary one)."""
        killed: list[int] = []
        workers = [p for p in self.processes if p["role"] != "scheduler"]
        schedulers = [p for p in self.processes if p["role"] == "scheduler"]
        for phase in (workers, schedulers):  # workers first: they would wait for a scheduler that went away
            for p in phase:
                if pid_alive(p["pid"], p.get("start_time")):
                    try:
                        os.kill(p["pid"], signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + self.grace
            for p in phase:
                self._wait_gone(p, deadline)
        for p in workers + schedulers:  # whatever is left, in the group too (a nanny's worker process)
            members = group_members(p["pgid"]) if p.get("pgid") else []
            if pid_alive(p["pid"], p.get("start_time")) and p["pid"] not in members:
                members.append(p["pid"])
            for pid in members:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
            self._wait_gone(p, time.monotonic() + 5)
        if self.state_dir is not None:
            for name in (STATE_FILE, SCHEDULER_FILE):
                (self.state_dir / name).unlink(missing_ok=True)
            if remove_state_dir if remove_state_dir is not None else self._own_state_dir:
                shutil.rmtree(self.state_dir, ignore_errors=True)
        return killed

    def _wait_gone(self, p: dict[str, Any], deadline: float) -> None:
        proc = self._popen.get(p["pid"])
        while time.monotonic() < deadline:
            if proc is not None:
                try:
                    proc.wait(timeout=0.05)  # reap our own child (else it lingers as a zombie)
                except subprocess.TimeoutExpired:
                    pass
            if not pid_alive(p["pid"], p.get("start_time")) and not group_members(p.get("pgid") or p["pid"]):
                return
            if proc is None:
                time.sleep(0.05)

    # status --------------------------------------------------------------------------------------
    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        """What runs: the processes, and what the scheduler says (workers, job service)."""
        report: dict[str, Any] = {
            "address": self.address,
            "dashboard": self.dashboard,
            "dtrain_page": dtrain_page(self.dashboard),
            "scheduler_file": self.scheduler_file,
            "device": self.device,
            "state_dir": str(self.state_dir),
            "processes": [
                {**{k: p[k] for k in ("role", "pid", "log")}, "alive": pid_alive(p["pid"], p.get("start_time"))}
                for p in self.processes
            ],
            "running": False,
            "workers_connected": None,
            "job_service": None,
        }
        if not any(p["alive"] for p in report["processes"] if p["role"] == "scheduler"):
            return report
        try:
            from distributed import Client

            from dtrain.jobs.client import JobsClient

            with Client(self.address, timeout=f"{timeout}s", set_as_default=False) as client:
                report["workers_connected"] = len(client.scheduler_info(n_workers=-1)["workers"])
                report["job_service"] = JobsClient(client=client).has_service()
                report["running"] = True
        except (OSError, TimeoutError) as exc:
            report["error"] = f"cannot reach the scheduler at {self.address}: {exc}"
        return report

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# -- command line ---------------------------------------------------------------------------------


def started_message(deployment: LocalDeployment, state_dir: Path | str) -> str:
    """What ``start`` says after the address: the workers, the dashboard links, how to submit and stop."""
    page = dtrain_page(deployment.dashboard)
    return "\n".join(
        [
            f"  {deployment.workers} {deployment.device} worker(s)",
            f"  dtrain's page: {page} (Dask's dashboard: {deployment.dashboard})" if page else "  no dashboard",
            f"  dtrain submit JOB --scheduler {deployment.address}",
            f"  dtrain submit JOB --scheduler-file {deployment.scheduler_file}",
            f"  python {Path(__file__).as_posix()} stop --state-dir {state_dir}",
        ]
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cluster.py",
        description="Start, check and stop a local dtrain cluster (a Dask scheduler with the "
        "job service and N workers on this machine).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=f"where the PIDs, logs and scheduler file go (default: ${STATE_ENV}, else {default_state_dir()})",
    )
    common.add_argument("--json", action="store_true", help="print one JSON document on stdout")

    start = commands.add_parser("start", parents=[common], help="start a scheduler and N workers, print the address")
    start.add_argument(
        "--workers",
        "-n",
        type=int,
        default=None,
        help="worker processes (default: one per CPU core, or one per GPU with dask-cuda)",
    )
    start.add_argument(
        "--device",
        choices=["auto", "cpu", "gpu"],
        default="auto",
        help="gpu: `dask cuda worker` (one worker per GPU); auto: gpu where dask-cuda and GPUs are there",
    )
    start.add_argument(
        "--host", default="127.0.0.1", help="the interface everything listens on (default 127.0.0.1: this machine only)"
    )
    start.add_argument(
        "--scheduler-port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0: any free port"
    )
    start.add_argument(
        "--dashboard-port",
        type=int,
        default=DEFAULT_DASHBOARD_PORT,
        help=f"the dashboard's port (dtrain's page: http://HOST:PORT{DTRAIN_PAGE}); default {DEFAULT_DASHBOARD_PORT}; "
        "0: any free port",
    )
    start.add_argument("--no-dashboard", action="store_true", help="no dashboard")
    start.add_argument("--memory-limit", default=None, help="per worker, e.g. 4GiB (default: Dask's auto)")
    start.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for everything (default 60)")

    stop = commands.add_parser("stop", parents=[common], help="stop the cluster (SIGTERM, then SIGKILL)")
    stop.add_argument("--grace", type=float, default=20.0, help="seconds before SIGKILL (default 20)")
    commands.add_parser("status", parents=[common], help="is it running? how many workers?")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    state_dir = args.state_dir or default_state_dir()

    def emit(doc: dict[str, Any], text: str, code: int) -> int:
        print(json.dumps(doc) if args.json else text, flush=True)
        return code

    try:
        if args.command == "start":
            deployment = LocalDeployment(
                args.workers,
                device=args.device,
                host=args.host,
                scheduler_port=args.scheduler_port,
                dashboard_port=None if args.no_dashboard else args.dashboard_port,
                state_dir=state_dir,
                memory_limit=args.memory_limit,
                timeout=args.timeout,
            )
            address = deployment.start()
            doc = {**deployment.state(), "pids": [p["pid"] for p in deployment.processes]}
            if not args.json:  # the address alone on stdout (for scripts); what to do next on stderr
                print(started_message(deployment, state_dir), file=sys.stderr, flush=True)
            return emit(doc, address, 0)
        if args.command == "stop":
            deployment = LocalDeployment.from_state(state_dir)
            deployment.grace = args.grace
            pids = [p["pid"] for p in deployment.processes]
            killed = deployment.stop()
            left = [p["pid"] for p in deployment.live_processes()]
            doc = {"stopped": pids, "killed": killed, "left": left}
            if left:
                return emit(doc, f"could not stop processes {left}", 1)
            return emit(
                doc,
                f"stopped {deployment.address} ({len(pids)} processes"
                + (f"; {len(killed)} needed SIGKILL" if killed else "")
                + ")",
                0,
            )
        deployment = LocalDeployment.from_state(state_dir)
        report = deployment.status()
        text = (
            f"{report['address']}: {report['workers_connected']} workers, job service "
            f"{'on' if report['job_service'] else 'off'}"
            if report["running"]
            else f"not running (state in {state_dir})"
        )
        return emit(report, text, 0 if report["running"] else 1)
    except DeploymentError as exc:
        if args.json:
            print(json.dumps({"error": str(exc), "exit_code": 1}), flush=True)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
