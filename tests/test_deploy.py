"""The deploy/ recipes.

- local/: started as a user starts it (the script as a subprocess): a real scheduler with the
  job service and real workers; `dtrain submit` runs a job on it; `stop` leaves no process.
- docker/: no Docker engine here. The compose files parse; every command they run is parsed by
  the real CLI's own parser (`dask scheduler`, `dask worker`, `dask cuda worker` where dask-cuda
  is installed, else its option list copied below); the Dockerfile copies files that exist; and
  the TLS variant's commands and environment, with make-certs.sh's certificates, run here as
  plain processes (no containers) and train a job over TLS.
- kubernetes/: no Kubernetes here. Plain YAML checks always; where dask-kubernetes is installed
  (it is not in the test extra: ~45 packages), the DaskCluster is checked against the operator's
  own CRD schema and `make_cluster_spec`, and the objects the operator would build from it, and
  the other manifests, go through the Kubernetes client's models.
- slurm/: no SLURM here. dask-jobqueue builds the cluster (its scheduler runs in this process,
  nothing is submitted): the job script and the scheduler's job service are checked.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from processes import dtrain_cli, free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SEED_JOB = ROOT / "examples" / "jobs" / "seed_network.yaml"
LOCAL_SCRIPT = DEPLOY / "local" / "cluster.py"
MAKE_CERTS = DEPLOY / "docker" / "make-certs.sh"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


local = _load(LOCAL_SCRIPT, "dtrain_deploy_local")


# -- command lines, checked by the real parsers ---------------------------------------------------

# `dask cuda worker`'s options, copied from dask-cuda 26.10.0 (`dask cuda worker --help`, the same
# list as https://docs.rapids.ai/api/dask-cuda/stable/ "Worker" CLI reference), for where
# dask-cuda is not installed (it is in the gpu extra only). True: takes a value.
# Where dask-cuda is installed, the real parser is used and this list is checked against it.
DASK_CUDA_WORKER_OPTIONS = {
    "--host": True,
    "--worker-port": True,
    "--listen-address": True,
    "--contact-address": True,
    "--nthreads": True,
    "--name": True,
    "--memory-limit": True,
    "--device-memory-limit": True,
    "--enable-cudf-spill": False,
    "--disable-cudf-spill": False,
    "--cudf-spill-stats": True,
    "--rmm-pool-size": True,
    "--rmm-maximum-pool-size": True,
    "--rmm-managed-memory": False,
    "--no-rmm-managed-memory": False,
    "--rmm-async": False,
    "--no-rmm-async": False,
    "--set-rmm-allocator-for-libs": True,
    "--rmm-release-threshold": True,
    "--rmm-log-directory": True,
    "--rmm-track-allocations": False,
    "--no-rmm-track-allocations": False,
    "--pid-file": True,
    "--resources": True,
    "--dashboard": False,
    "--no-dashboard": False,
    "--dashboard-address": True,
    "--local-directory": True,
    "--scheduler-file": True,
    "--protocol": True,
    "--interface": True,
    "--preload": True,
    "--death-timeout": True,
    "--dashboard-prefix": True,
    "--tls-ca-file": True,
    "--tls-cert": True,
    "--tls-key": True,
    "--enable-tcp-over-ucx": False,
    "--disable-tcp-over-ucx": False,
    "--enable-infiniband": False,
    "--disable-infiniband": False,
    "--enable-nvlink": False,
    "--disable-nvlink": False,
    "--enable-rdmacm": False,
    "--disable-rdmacm": False,
    "--worker-class": True,
    "--pre-import": True,
    "--multiprocessing-method": True,
}


def _dask_subcommand(name: str):
    """The click command `dask NAME` runs: the `dask_cli` entry point, as the `dask` CLI loads it."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="dask_cli"):
        if ep.name == name:
            return ep.load()
    return None


def _check_against_option_list(args: list[str]) -> None:
    positional = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            option, _, inline = arg.partition("=")
            assert option in DASK_CUDA_WORKER_OPTIONS, f"dask cuda worker has no option {option}"
            if DASK_CUDA_WORKER_OPTIONS[option] and not inline:
                assert i + 1 < len(args), f"{option} needs a value"
                if option == "--nthreads":
                    int(args[i + 1])
                i += 1
        else:
            positional.append(arg)
        i += 1
    assert len(positional) <= 1, f"dask cuda worker takes one SCHEDULER, got {positional}"


def check_command(argv: list[str]) -> dict | None:
    """Parse a command line with the real CLI's parser (nothing runs); returns the parsed
    parameters (None where only the copied option list could be used). Raises on any error."""
    argv = list(argv)
    if argv[:2] in ([sys.executable, "-m"], ["python", "-m"], ["python3", "-m"]):
        argv = argv[2:]
        if argv[0] == "distributed.cli.dask_worker":  # dask-jobqueue's worker command
            argv = ["dask", "worker", *argv[1:]]
    if argv[0] == "dtrain":
        import click

        from dtrain.cli import _parse

        try:
            return _parse(argv[1:])  # the real click commands, with nothing run
        except click.ClickException as exc:  # click's way of refusing (`dtrain` exits 2)
            raise AssertionError(f"dtrain refuses {shlex.join(argv)}: {exc.format_message()}") from exc
    assert argv[0] == "dask", argv
    if argv[1:3] == ["cuda", "worker"]:
        command = _dask_subcommand("cuda")
        if command is None:  # dask-cuda is not installed: its documented options
            _check_against_option_list(argv[3:])
            return None
        command = command.get_command(None, "worker")
        real = {name for param in command.params for name in (*param.opts, *param.secondary_opts)}
        assert set(DASK_CUDA_WORKER_OPTIONS) <= real, set(DASK_CUDA_WORKER_OPTIONS) - real
        rest = argv[3:]
    else:
        command = _dask_subcommand(argv[1])
        assert command is not None, f"no `dask {argv[1]}` command"
        rest = argv[2:]
    ctx = command.make_context(shlex.join(argv[:3]), list(rest))  # raises click's UsageError/BadParameter
    # These commands pass unknown options on to --preload modules: none may be left over.
    assert not ctx.params.get("preload_argv"), f"not options of {argv[:3]}: {ctx.params['preload_argv']}"
    return ctx.params


def with_container_files(argv: list[str], tmp_path: Path) -> list[str]:
    """The parsers check that --tls-* files exist: stand-ins for the container's /certs/ files."""
    out = []
    for arg in argv:
        if arg.startswith("/certs/"):
            stand_in = tmp_path / "certs" / arg.removeprefix("/certs/")
            stand_in.parent.mkdir(parents=True, exist_ok=True)
            stand_in.touch()
            arg = str(stand_in)
        out.append(arg)
    return out


def test_check_command_refuses_what_the_clis_refuse():
    assert check_command(["dask", "scheduler", "--port", "8786", "--preload", "dtrain.jobs.service"])["preload"] == (
        "dtrain.jobs.service",
    )
    assert check_command(["dtrain", "submit", "job.yaml", "--scheduler", "tcp://x:8786"])["scheduler"] == "tcp://x:8786"
    for bad in (
        ["dask", "scheduler", "--no-such-option"],
        ["dask", "worker", "tcp://x:8786", "--nthreads", "two"],
        ["dask", "scheduler", "--preload", "dtrain.jobs.service", "--bogus", "1"],
        ["dtrain", "submit", "job.yaml", "--schedulr", "tcp://x:8786"],
    ):
        with pytest.raises(Exception):  # noqa: B017 (click's UsageError or the check's AssertionError)
            check_command(bad)
    with pytest.raises(AssertionError):
        _check_against_option_list(["tcp://x:8786", "--nthread", "1"])


# -- local/ ---------------------------------------------------------------------------------------


def _group_alive(pgid: int) -> bool:
    return bool(local.group_members(pgid))


@pytest.mark.cluster
def test_local_cluster_start_submit_stop(tmp_path):
    state = tmp_path / "state"
    script = [sys.executable, str(LOCAL_SCRIPT)]
    start = subprocess.run(
        [
            *script,
            "start",
            "--workers",
            "2",
            "--device",
            "cpu",
            "--scheduler-port",
            "0",
            "--dashboard-port",
            "0",
            "--state-dir",
            str(state),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert start.returncode == 0, start.stderr
    info = json.loads(start.stdout)
    address, pids = info["address"], info["pids"]
    pgids = [p["pgid"] for p in info["processes"]]
    try:
        assert address.startswith("tcp://127.0.0.1:") and len(pids) == 3
        assert all(local.pid_alive(pid) for pid in pids)
        assert info["dashboard"].startswith("http://127.0.0.1:") and info["dashboard"].endswith("/status")
        # dtrain's page is on the same port; the port is the scheduler's web server
        dashboard = info["dashboard"].removesuffix("/status")
        assert info["dtrain_page"] == dashboard + "/dtrain"
        assert json.loads((state / "cluster.json").read_text())["dtrain_page"] == info["dtrain_page"]
        assert urllib.request.urlopen(dashboard + "/health", timeout=10).read() == b"ok"
        with urllib.request.urlopen(info["dtrain_page"], timeout=10) as page:  # the job service's page is there
            assert b"<title>dtrain jobs</title>" in page.read()
        with urllib.request.urlopen(info["dtrain_page"] + "/api/jobs", timeout=10) as api:
            assert json.loads(api.read())["jobs"] == []
        said = local.started_message(local.LocalDeployment.from_state(state), state)
        assert info["dtrain_page"] in said and f"--scheduler-file {info['scheduler_file']}" in said
        # its scheduler file names it, and dtrain finds it there
        assert json.loads(Path(info["scheduler_file"]).read_text())["address"] == address
        by_file = dtrain_cli("list", "--scheduler-file", info["scheduler_file"], "--json")
        assert by_file.returncode == 0 and json.loads(by_file.stdout)["scheduler"] == address, by_file.stderr

        # The job service is there from the start (--preload), before anything was submitted.
        status = json.loads(
            subprocess.run(
                [*script, "status", "--state-dir", str(state), "--json"], capture_output=True, text=True, timeout=60
            ).stdout
        )
        assert status["running"] and status["job_service"] is True and status["workers_connected"] == 2
        listed = dtrain_cli("list", "--scheduler", address, "--json")
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout) == {"scheduler": address, "jobs": []}
        from distributed import Client

        with Client(address, timeout="10s", set_as_default=False) as client:  # dtrain.clusters' settings
            assert set(
                client.run(lambda dask_worker: dask_worker.periodic_callbacks["tick"].callback_time).values()
            ) == {1000}
            assert (
                client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.periodic_callbacks["tick"].callback_time)
                == 1000
            )

        again = subprocess.run(
            [*script, "start", "--workers", "1", "--state-dir", str(state)], capture_output=True, text=True, timeout=60
        )
        assert again.returncode == 1 and "already running" in again.stderr and "stop" in again.stderr

        out = tmp_path / "out"
        submitted = dtrain_cli(
            "submit",
            str(SEED_JOB),
            "--scheduler",
            address,
            "--set",
            "fit.epochs=1",
            "--set",
            f"output.dir={out}",
            "--json",
        )
        assert submitted.returncode == 0, submitted.stderr
        record = json.loads(submitted.stdout)
        assert record["state"] == "succeeded" and len(record["workers"]) == 2
        assert (Path(record["output"]) / "model.safetensors").is_file() and record["output_dir"] == str(out)
    finally:
        stop = subprocess.run(
            [*script, "stop", "--state-dir", str(state), "--json"], capture_output=True, text=True, timeout=120
        )
    assert stop.returncode == 0, stop.stderr
    assert json.loads(stop.stdout)["killed"] == []  # all closed on SIGTERM
    assert not any(local.pid_alive(pid) for pid in pids)
    assert not any(_group_alive(pgid) for pgid in pgids)  # the nannies' worker processes too
    assert not (state / "cluster.json").exists()
    gone = subprocess.run([*script, "status", "--state-dir", str(state)], capture_output=True, text=True, timeout=60)
    assert gone.returncode == 1


@pytest.mark.cluster
def test_local_cluster_failed_start_says_why_and_leaves_nothing(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        deployment = local.LocalDeployment(
            1, device="cpu", scheduler_port=port, dashboard_port=None, state_dir=tmp_path, timeout=60
        )
        with pytest.raises(local.DeploymentError, match="(?s)scheduler process exited.*Address already in use"):
            deployment.start()
    assert deployment.processes and not deployment.live_processes()
    assert not (tmp_path / "cluster.json").exists() and (tmp_path / "scheduler.log").exists()


def test_local_cluster_device_choice():
    if local.has_dask_cuda() and local.count_gpus():
        pytest.skip("this machine has GPUs and dask-cuda")
    with pytest.raises(local.DeploymentError, match="dask-cuda|no GPU"):
        local.LocalDeployment(1, device="gpu")._use_gpu()
    assert local.LocalDeployment(1, device="auto")._use_gpu()[0] is False  # CPU workers
    with pytest.raises(local.DeploymentError, match="at least 1"):
        local.LocalDeployment(0)


def test_local_cluster_commands_are_accepted_by_the_clis():
    address = "tcp://127.0.0.1:8786"
    check_command(local.scheduler_command(host="127.0.0.1", port=0, dashboard_port=0, scheduler_file="s.json"))
    check_command(local.scheduler_command(host="127.0.0.1", port=8786, dashboard_port=None, scheduler_file="s.json"))
    params = check_command(local.cpu_worker_command(address, name="local-0", host="127.0.0.1", memory_limit="2GiB"))
    assert params["nthreads"] == 1 and params["scheduler"] == address
    check_command(local.gpu_worker_command(address, host="127.0.0.1", memory_limit="2GiB"))


# -- docker/ --------------------------------------------------------------------------------------

COMPOSE_FILES = ["compose.yaml", "compose.tls.yaml"]


def compose(name: str) -> dict:
    return yaml.safe_load((DEPLOY / "docker" / name).read_text())


def published(service: dict) -> dict[int, str]:
    """container port -> host address it is published on ('' : every interface)."""
    ports = {}
    for item in service.get("ports", []):
        parts = str(item).split(":")
        host = parts[0] if len(parts) == 3 else ""
        ports[int(parts[-1].split("/")[0])] = host
    return ports


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_file(name):
    doc = compose(name)
    services = doc["services"]
    assert set(services) == {"scheduler", "gpu-workers"}
    scheduler, workers = services["scheduler"], services["gpu-workers"]
    sched_cmd, worker_cmd = shlex.split(scheduler["command"]), shlex.split(workers["command"])
    assert sched_cmd[:2] == ["dask", "scheduler"] and "dtrain.jobs.service" in sched_cmd
    assert worker_cmd[:3] == ["dask", "cuda", "worker"]
    # Built from the repo's Dockerfile, the repo as its context.
    for service in services.values():
        build = service["build"]
        assert (
            DEPLOY / "docker" / build["context"] / build["dockerfile"]
        ).resolve() == DEPLOY / "docker" / "Dockerfile"
        assert "runs:/runs" in service["volumes"]
    devices = workers["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    # The dashboard (dtrain's page: /dtrain) listens on 8787 and is published on 127.0.0.1 only;
    # the workers publish nothing.
    assert sched_cmd[sched_cmd.index("--dashboard-address") + 1] == ":8787"
    ports = published(scheduler)
    assert ports[8787] == "127.0.0.1" and "ports" not in workers
    assert "http://127.0.0.1:8787/dtrain" in (DEPLOY / "docker" / name).read_text()  # says how to open it
    if name == "compose.yaml":
        assert ports[8786] == "127.0.0.1"  # no TLS: the scheduler too
        assert worker_cmd[3] == "tcp://scheduler:8786"
    else:
        assert worker_cmd[3] == "tls://scheduler:8786" and sched_cmd[sched_cmd.index("--protocol") + 1] == "tls"
        for cmd, role in ((sched_cmd, "scheduler"), (worker_cmd, "worker")):
            assert cmd[cmd.index("--tls-ca-file") + 1] == "/certs/ca.pem"
            assert cmd[cmd.index("--tls-cert") + 1] == f"/certs/{role}.pem"
            assert cmd[cmd.index("--tls-key") + 1] == f"/certs/{role}-key.pem"
        for service in services.values():
            assert "./certs:/certs:ro" in service["volumes"]
            assert service["environment"]["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
        # dtrain's job threads are clients of the scheduler, from inside it: they need a certificate.
        assert scheduler["environment"]["DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT"] == "/certs/scheduler.pem"


@pytest.mark.parametrize("name", COMPOSE_FILES)
@pytest.mark.parametrize("service", ["scheduler", "gpu-workers"])
def test_compose_commands_are_accepted_by_the_clis(name, service, tmp_path):
    check_command(with_container_files(shlex.split(compose(name)["services"][service]["command"]), tmp_path))


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/docker/Dockerfile, continuation lines joined."""
    lines, current = [], ""
    for raw in (DEPLOY / "docker" / "Dockerfile").read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped.removesuffix("\\").strip() if current else stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            lines.append(current)
            current = ""
    assert not current, "a continuation line at the end"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile():
    instructions = dockerfile_instructions()
    assert instructions[0][0] == "FROM" and instructions[0][1].startswith("nvidia/cuda:12.")
    assert "-runtime-" in instructions[0][1]
    copied = []
    for op, args in instructions:
        if op == "COPY":
            *sources, dest = shlex.split(args)
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repo"
                copied.append(source)
    assert {"pyproject.toml", "README.md", "dtrain"} <= set(copied)
    runs = " ".join(args for op, args in instructions if op == "RUN")
    assert 'pip install "/src[gpu]"' in runs
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["readme"] == "README.md" and "gpu" in project["optional-dependencies"]
    assert any(dep.startswith("dask-cuda") for dep in project["optional-dependencies"]["gpu"])
    # What it imports after the install exists: dtrain's modules here, the others in the gpu extra.
    assert importlib.util.find_spec("dtrain.jobs.service") is not None
    # The build context keeps only what is copied (BuildKit reads Dockerfile.dockerignore).
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert "*" in ignore and {"!pyproject.toml", "!README.md", "!dtrain/"} <= set(ignore)
    # The default command: exec form, accepted by `dask scheduler`.
    cmd = json.loads(dict(instructions)["CMD"])
    assert check_command(cmd)["preload"] == ("dtrain.jobs.service",)
    assert dict(instructions)["USER"] != "root"
    exposed = {port for op, args in instructions if op == "EXPOSE" for port in args.split()}
    assert {"8786", "8787"} <= exposed  # the scheduler and its dashboard
    from dtrain.clusters import training_environment

    env = " ".join(args for op, args in instructions if op == "ENV")
    assert all(f"{name}={value}" in env for name, value in training_environment({}).items())


# -- TLS: make-certs.sh, and compose.tls.yaml's commands run as local processes ------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    base = tmp_path_factory.mktemp("tls")
    made = subprocess.run(["sh", str(MAKE_CERTS), str(base)], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    return base / "certs"


def test_make_certs(certs, tmp_path):
    names = {p.name for p in certs.iterdir()}
    assert names == {"ca.pem", *(f"{r}{s}.pem" for r in ("scheduler", "worker", "client") for s in ("", "-key"))}
    assert (certs.parent / "ca" / "ca-key.pem").is_file()  # not in the mounted folder
    for role in ("scheduler", "worker", "client"):
        assert (certs / f"{role}-key.pem").stat().st_mode & 0o077 == 0
    verified = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(certs / "ca.pem"),
            *(str(certs / f"{r}.pem") for r in ("scheduler", "worker", "client")),
        ],
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    again = subprocess.run(["sh", str(MAKE_CERTS), str(certs.parent)], capture_output=True, text=True)
    assert again.returncode == 1 and "exists" in again.stderr  # never overwrites


def _localise(argv: list[str], certs: Path, port: int, dashboard_port: int = 0) -> list[str]:
    """A container's command line run here: /certs -> the test's certificates, the scheduler
    host `scheduler` -> 127.0.0.1 and a free port, everything on 127.0.0.1, the dashboard on
    ``dashboard_port`` (0: any). `dask cuda worker` becomes `dask worker` (no GPU here); its
    options are the same ones."""
    argv = [a.replace("/certs/", f"{certs}/") for a in argv]
    if argv[:3] == ["dask", "cuda", "worker"]:
        argv = ["dask", "worker", *argv[3:]]
    argv = [a.replace("scheduler:8786", f"127.0.0.1:{port}") for a in argv]
    for option, value in (("--port", str(port)), ("--dashboard-address", f"127.0.0.1:{dashboard_port}")):
        if option in argv:
            argv[argv.index(option) + 1] = value
    return [sys.executable, "-m", *argv, "--host", "127.0.0.1"]


@contextlib.contextmanager
def _processes():
    procs: list[subprocess.Popen] = []
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.mark.cluster
@pytest.mark.parametrize("scheduler_client_cert", [True, False], ids=["as-composed", "scheduler-without-client-cert"])
def test_compose_tls_commands_train_a_job_over_tls(certs, tmp_path, scheduler_client_cert):
    """Also without the scheduler's client-certificate settings: the job service's own client
    then presents the scheduler's certificate."""
    services = compose("compose.tls.yaml")["services"]
    port, dashboard_port = free_port(), free_port()
    address = f"tls://127.0.0.1:{port}"

    def env_of(service: str) -> dict:
        env = {k: str(v).replace("/certs/", f"{certs}/") for k, v in services[service].get("environment", {}).items()}
        if not scheduler_client_cert:
            env = {k: v for k, v in env.items() if "__TLS__CLIENT__" not in k}
        return env

    with _processes() as procs:
        for service in ("scheduler", "gpu-workers"):
            argv = _localise(shlex.split(services[service]["command"]), certs, port, dashboard_port)
            if service == "scheduler":  # and the scheduler file, for `dtrain --scheduler-file`
                argv += ["--scheduler-file", str(tmp_path / "scheduler.json")]
            log = open(tmp_path / f"{service}.log", "wb")
            procs.append(
                subprocess.Popen(
                    argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, **env_of(service)},
                    start_new_session=True,
                )
            )
        client_env = {  # what the compose file's comment tells a user to export
            "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(certs / "ca.pem"),
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": str(certs / "client.pem"),
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": str(certs / "client-key.pem"),
        }
        deadline = time.monotonic() + 60
        while True:  # until the worker has joined
            from distributed import Client
            from distributed.security import Security

            security = Security(
                tls_ca_file=client_env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"],
                tls_client_cert=str(certs / "client.pem"),
                tls_client_key=str(certs / "client-key.pem"),
                require_encryption=True,
            )
            with contextlib.suppress(OSError, TimeoutError):
                with Client(address, security=security, timeout="5s", set_as_default=False) as client:
                    client.wait_for_workers(1, timeout=max(deadline - time.monotonic(), 1))
                    break
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), (
                tmp_path / "scheduler.log"
            ).read_text()[-3000:] + (tmp_path / "gpu-workers.log").read_text()[-3000:]
            time.sleep(0.5)

        out = tmp_path / "out"
        submitted = dtrain_cli(
            "submit",
            str(SEED_JOB),
            "--scheduler",
            address,
            "--set",
            "fit.epochs=1",
            "--set",
            f"output.dir={out}",
            "--json",
            env=client_env,
        )
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        assert json.loads(submitted.stdout)["state"] == "succeeded"
        # The dashboard stays plain HTTP with TLS on (deploy/README.md says so, and the health check relies on it).
        assert urllib.request.urlopen(f"http://127.0.0.1:{dashboard_port}/health", timeout=10).read() == b"ok"
        # The scheduler's own scheduler file names it; dtrain reads it and uses the same TLS client settings.
        scheduler_file = tmp_path / "scheduler.json"
        listed = dtrain_cli("list", "--scheduler-file", str(scheduler_file), "--json", env=client_env)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert json.loads(listed.stdout)["scheduler"] == address
        # without TLS settings: the same error as with --scheduler tls://...
        refused = dtrain_cli("list", "--scheduler-file", str(scheduler_file), "--connect-timeout", "5")
        assert refused.returncode == 3 and f"{address} needs TLS" in refused.stderr, refused.stderr
        # Without TLS, nobody gets in.
        start = time.monotonic()
        plain = dtrain_cli("list", "--scheduler", f"tcp://127.0.0.1:{port}", "--connect-timeout", "5", "--json")
        assert plain.returncode == 3, plain.stdout
        assert "within 5 s" in plain.stdout and "use its tls:// address" in plain.stdout, plain.stdout
        assert time.monotonic() - start < 5 + 10  # the connect timeout, and the interpreter's start


# -- kubernetes/ ----------------------------------------------------------------------------------

K8S = DEPLOY / "kubernetes"


def manifests() -> dict[str, list[dict]]:
    return {p.name: list(yaml.safe_load_all(p.read_text())) for p in sorted(K8S.glob("*.yaml"))}


def of_kind(kind: str) -> list[tuple[str, dict]]:
    return [(name, doc) for name, docs in manifests().items() for doc in docs if doc["kind"] == kind]


def test_kubernetes_manifests():
    docs = manifests()
    assert set(docs) == {
        "daskcluster.yaml",
        "daskcluster-tls.yaml",
        "networkpolicy.yaml",
        "storage.yaml",
        "submit-job.yaml",
        "submit-job-tls.yaml",
    }
    for name, items in docs.items():
        for doc in items:
            assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], name

    def values(node):
        if isinstance(node, dict):
            for item in node.values():
                yield from values(item)
        elif isinstance(node, list):
            for item in node:
                yield from values(item)
        else:
            yield node

    exposed = {"LoadBalancer", "NodePort", "hostPort", "hostNetwork"}
    assert not exposed & set(values(docs)), "nothing is exposed outside the Kubernetes cluster"
    clusters = of_kind("DaskCluster")
    assert len(clusters) == 2
    for name, cluster in clusters:
        tls = "tls" in name
        assert cluster["apiVersion"] == "kubernetes.dask.org/v1" and cluster["metadata"]["name"] == "dtrain"
        spec = cluster["spec"]
        assert spec["scheduler"]["service"]["type"] == "ClusterIP"
        (scheduler,) = spec["scheduler"]["spec"]["containers"]
        assert scheduler["args"][:2] == ["dask", "scheduler"]
        assert scheduler["args"][scheduler["args"].index("--preload") + 1] == "dtrain.jobs.service"
        (worker,) = spec["worker"]["spec"]["containers"]
        assert worker["args"][:3] == ["dask", "cuda", "worker"]
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"  # a string: the CRD says so
        for pod in (spec["scheduler"]["spec"], spec["worker"]["spec"]):
            assert {"name": "runs", "persistentVolumeClaim": {"claimName": "dtrain-runs"}} in pod["volumes"]
            assert pod["securityContext"]["runAsNonRoot"] is True
        # The dashboard (dtrain's page: /dtrain) listens on 8787, declared by the container and
        # exposed by the scheduler's Service; the comments say how to open it.
        args = scheduler["args"]
        assert args[args.index("--dashboard-address") + 1] == ":8787"
        assert {"name": "http-dashboard", "containerPort": 8787, "protocol": "TCP"} in scheduler["ports"]
        service_ports = spec["scheduler"]["service"]["ports"]
        assert {"name": "http-dashboard", "protocol": "TCP", "port": 8787, "targetPort": "http-dashboard"} in (
            service_ports
        )
        assert "http://127.0.0.1:8787/dtrain" in (K8S / name).read_text()
        if tls:
            assert "--tls-cert" in scheduler["args"] and "--tls-cert" in worker["args"]
            env = {e["name"]: e["value"] for e in worker["env"]}
            assert env["DASK_SCHEDULER_ADDRESS"] == "tls://dtrain-scheduler:8786"
            env = {e["name"]: e["value"] for e in scheduler["env"]}
            assert env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT"] == "/certs/scheduler.pem"
    ((_, pvc),) = of_kind("PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == "dtrain-runs" and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    ((_, policy),) = of_kind("NetworkPolicy")
    allowed = policy["spec"]["ingress"][0]["from"]
    assert policy["spec"]["podSelector"]["matchLabels"] == {"dask.org/cluster-name": "dtrain"}
    for rule in policy["spec"]["ingress"]:  # a rule that names ports must let the dashboard through
        assert "ports" not in rule or any(p.get("port") in (8787, "http-dashboard") for p in rule["ports"])

    jobs = of_kind("Job")
    assert len(jobs) == 2
    for name, job in jobs:
        scheme = "tls" if "tls" in name else "tcp"
        pod = job["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        args = container["args"]
        assert args[:3] == ["dtrain", "submit", "/jobs/job.yaml"]
        assert args[args.index("--scheduler") + 1] == f"{scheme}://dtrain-scheduler:8786"
        assert job["spec"]["backoffLimit"] == 0 and pod["spec"]["restartPolicy"] == "Never"
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/jobs")
        volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
        config_map = next(
            doc
            for n, doc in of_kind("ConfigMap")
            if n == name and doc["metadata"]["name"] == volume["configMap"]["name"]
        )
        assert "job.yaml" in config_map["data"]
        # The submitting pod is one the NetworkPolicy lets through.
        labels = pod["metadata"]["labels"]
        assert any(
            set(rule.get("podSelector", {}).get("matchLabels", {"-": "-"}).items()) <= set(labels.items())
            for rule in allowed
        )


@pytest.mark.parametrize("name", ["submit-job.yaml", "submit-job-tls.yaml"])
def test_kubernetes_job_file_is_a_valid_dtrain_job(name, tmp_path):
    (config_map,) = [doc for doc in manifests()[name] if doc["kind"] == "ConfigMap"]
    job = tmp_path / "job.yaml"
    job.write_text(config_map["data"]["job.yaml"])
    checked = dtrain_cli("validate", str(job), "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    resolved = json.loads(checked.stdout)["job"]
    assert resolved["output"]["dir"].startswith("/runs/")  # on the shared volume


def _containers():
    for name, cluster in of_kind("DaskCluster"):
        for role in ("scheduler", "worker"):
            for container in cluster["spec"][role]["spec"]["containers"]:
                yield f"{name}:{role}", container
    for name, job in of_kind("Job"):
        for container in job["spec"]["template"]["spec"]["containers"]:
            yield f"{name}:job", container


@pytest.mark.parametrize("where", [w for w, _ in _containers()])
def test_kubernetes_commands_are_accepted_by_the_clis(where, tmp_path):
    container = dict(_containers())[where]
    # Kubernetes expands $(VAR) from the container's environment (the operator sets this one).
    args = [a.replace("$(DASK_WORKER_NAME)", "dtrain-default-worker-0") for a in container["args"]]
    check_command(with_container_files(args, tmp_path))


def _structural_errors(value, schema: dict, path: str = "") -> list[str]:
    """What the API server's validation of a CRD's structural schema would refuse: unknown
    fields (kubectl apply validates strictly by default), wrong types, missing required fields."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if schema.get("x-kubernetes-int-or-string"):
        return [] if isinstance(value, (int, str)) and not isinstance(value, bool) else [f"{path}: int or string"]
    kind = schema.get("type")
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float)}
    if kind and (not isinstance(value, types[kind]) or (kind in ("integer", "number") and isinstance(value, bool))):
        return [f"{path or '/'}: {kind} expected, got {type(value).__name__} {value!r}"]
    errors = []
    if isinstance(value, dict):
        errors += [f"{path}/{key}: required" for key in schema.get("required", []) if key not in value]
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if properties is not None and key in properties:
                errors += _structural_errors(item, properties[key], f"{path}/{key}")
            elif isinstance(extra, dict):
                errors += _structural_errors(item, extra, f"{path}/{key}")
            elif extra is not True:
                errors.append(f"{path}/{key}: unknown field")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += _structural_errors(item, schema["items"], f"{path}[{i}]")
    return errors


def test_daskcluster_against_the_operator():
    pytest.importorskip("dask_kubernetes.operator", reason="dask-kubernetes is not installed (not in the test extra)")
    import dask_kubernetes
    from dask_kubernetes.operator import make_cluster_spec
    from dask_kubernetes.operator.validation import validate_cluster_name

    crd_path = (
        Path(dask_kubernetes.__file__).parent
        / "operator"
        / "deployment"
        / "helm"
        / "dask-kubernetes-operator"
        / "crds"
        / "daskcluster.yaml"
    )
    crd = yaml.safe_load(crd_path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = version["schema"]["openAPIV3Schema"]
    assert _structural_errors({"spec": {"scheduler": {}, "worker": {"spec": {}}, "typo": 1}}, schema)  # it does refuse

    for name, cluster in of_kind("DaskCluster"):
        assert crd["spec"]["group"] + "/" + version["name"] == cluster["apiVersion"]
        assert crd["spec"]["names"]["kind"] == cluster["kind"]
        validate_cluster_name(cluster["metadata"]["name"])
        body = {k: v for k, v in cluster.items() if k not in ("apiVersion", "kind", "metadata")}
        assert _structural_errors(body, schema) == [], name

        # Same shape as the operator's own cluster spec: the ports and probes it relies on.
        reference = make_cluster_spec(
            "dtrain",
            image="dtrain-gpu:latest",
            n_workers=2,
            resources={"limits": {"nvidia.com/gpu": "1"}},
            worker_command="dask cuda worker",
        )
        ours, theirs = cluster["spec"], reference["spec"]
        assert ours["scheduler"]["service"]["ports"] == theirs["scheduler"]["service"]["ports"]
        assert ours["scheduler"]["service"]["selector"] == theirs["scheduler"]["service"]["selector"]
        assert ours["scheduler"]["service"]["type"] == theirs["scheduler"]["service"]["type"] == "ClusterIP"
        ref_sched = theirs["scheduler"]["spec"]["containers"][0]
        our_sched = ours["scheduler"]["spec"]["containers"][0]
        assert our_sched["name"] == ref_sched["name"] and our_sched["ports"] == ref_sched["ports"]
        assert our_sched["readinessProbe"] == ref_sched["readinessProbe"]
        assert our_sched["livenessProbe"] == ref_sched["livenessProbe"]
        ref_worker = theirs["worker"]["spec"]["containers"][0]
        our_worker = ours["worker"]["spec"]["containers"][0]
        assert our_worker["name"] == ref_worker["name"] and our_worker["ports"] == ref_worker["ports"]
        assert our_worker["args"][:5] == ref_worker["args"][:5]  # dask cuda worker --name $(DASK_WORKER_NAME)
        assert set(ref_worker["args"]) <= set(our_worker["args"])  # and its dashboard on the port it declares

        # What the operator builds from it: valid Deployments and a Service (Kubernetes' models).
        from dask_kubernetes.operator.controller.controller import (
            build_scheduler_deployment_spec,
            build_scheduler_service_spec,
            build_worker_deployment_spec,
        )

        built = [
            (build_scheduler_deployment_spec("dtrain", ours["scheduler"]["spec"], {}, {}), "V1Deployment"),
            (build_scheduler_service_spec("dtrain", ours["scheduler"]["service"], {}, {}), "V1Service"),
            (
                build_worker_deployment_spec(
                    "dtrain-default", "default", "dtrain", "abc", ours["worker"]["spec"], {}, {}
                ),
                "V1Deployment",
            ),
        ]
        for obj, model in built:
            _round_trip(obj, model)
        worker_env = {e["name"]: e["value"] for e in built[2][0]["spec"]["template"]["spec"]["containers"][0]["env"]}
        expected = (
            "tls://dtrain-scheduler:8786" if "tls" in name else "tcp://dtrain-scheduler.default.svc.cluster.local:8786"
        )
        assert worker_env["DASK_SCHEDULER_ADDRESS"] == expected


def _round_trip(obj: dict, model: str) -> None:
    """Through the Kubernetes client's model and back: a misspelt field is dropped, a wrong
    type converted or refused, so the result differs from the input."""
    from kubernetes.client import ApiClient

    api = ApiClient()
    typed = api._ApiClient__deserialize(obj, model)
    assert api.sanitize_for_serialization(typed) == obj, model


def test_kubernetes_manifests_against_the_kubernetes_models():
    pytest.importorskip("kubernetes", reason="the kubernetes client is not installed (dask-kubernetes brings it)")
    models = {
        "ConfigMap": "V1ConfigMap",
        "Job": "V1Job",
        "NetworkPolicy": "V1NetworkPolicy",
        "PersistentVolumeClaim": "V1PersistentVolumeClaim",
    }
    seen = set()
    for _name, docs in manifests().items():
        for doc in docs:
            if doc["kind"] in models:
                _round_trip(doc, models[doc["kind"]])
                seen.add(doc["kind"])
    assert seen == set(models)


# -- slurm/ ---------------------------------------------------------------------------------------


@pytest.fixture
def slurm():
    pytest.importorskip("dask_jobqueue")
    return _load(DEPLOY / "slurm" / "cluster.py", "dtrain_deploy_slurm")


def _worker_command(script: str) -> list[str]:
    (line,) = [line for line in script.splitlines() if "distributed.cli.dask_worker" in line]
    return shlex.split(line)


def test_slurm_job_script(slurm, tmp_path):
    from dtrain.jobs.service import HANDLER, SERVICE_NAME

    cluster = slurm.make_cluster(
        partition="gpu",
        account="proj",
        walltime="02:00:00",
        cpus_per_gpu=8,
        memory="64GB",
        host="127.0.0.1",
        scheduler_port=0,
        dashboard_address="127.0.0.1:0",
        scheduler_file=tmp_path / "scheduler.json",
    )
    try:
        script = cluster.job_script()
        directives = [line.split(None, 1)[1] for line in script.splitlines() if line.startswith("#SBATCH")]
        for expected in ("--gres=gpu:1", "-p gpu", "-A proj", "-n 1", "--cpus-per-task=8", "-t 02:00:00"):
            assert expected in directives, (expected, directives)
        argv = _worker_command(script)
        assert argv[:3] == [sys.executable, "-m", "distributed.cli.dask_worker"]
        params = check_command(argv)  # the real `dask worker` parser
        assert params["nthreads"] == 1 and params["scheduler"] == cluster.scheduler_address
        # the training settings of dtrain.clusters, unless the node's environment has its own
        (setting,) = [line for line in script.splitlines() if "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL" in line]
        show = f"{setting}; echo $DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
        assert subprocess.run(["bash", "-c", show], env=clean, capture_output=True, text=True).stdout.strip() == "1s"
        mine = {**clean, "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "5ms"}
        assert subprocess.run(["bash", "-c", show], env=mine, capture_output=True, text=True).stdout.strip() == "5ms"
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        # The scheduler (in this process) has the job service from the start; nothing was submitted.
        assert HANDLER in cluster.scheduler.handlers and SERVICE_NAME in cluster.scheduler.plugins
        assert not cluster.workers
        # The dashboard: on 127.0.0.1, dtrain's page beside Dask's, on the scheduler's web server.
        page = slurm.dtrain_page(cluster.dashboard_link)
        port = cluster.scheduler.http_server.port
        assert page == f"http://127.0.0.1:{port}/dtrain"
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10).read() == b"ok"
        # Its scheduler file names it (for `dtrain --scheduler-file` from the nodes).
        assert json.loads((tmp_path / "scheduler.json").read_text())["address"] == cluster.scheduler_address
    finally:
        cluster.close()


def test_slurm_tls_job_script(slurm, certs):
    cluster = slurm.make_cluster(
        partition="gpu", host="127.0.0.1", scheduler_port=0, dashboard_address="127.0.0.1:0", tls_dir=certs
    )
    try:
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        argv = _worker_command(cluster.job_script())
        params = check_command(argv)
        assert params["scheduler"] == cluster.scheduler_address
        assert (params["tls_ca_file"], params["tls_cert"], params["tls_key"]) == (
            str(certs / "ca.pem"),
            str(certs / "worker.pem"),
            str(certs / "worker-key.pem"),
        )
        # The scheduler's own client (dtrain's job threads) has a certificate.
        assert cluster.scheduler.security.tls_client_cert == str(certs / "scheduler.pem")
    finally:
        cluster.close()
    with pytest.raises(FileNotFoundError, match="make-certs.sh"):
        slurm.tls_security(certs.parent)


# -- the dashboard in the docs -------------------------------------------------------------------


def test_every_recipe_says_how_to_open_dtrains_page():
    readme = (DEPLOY / "README.md").read_text()
    sections = {title: text for title, text in (part.split("\n", 1) for part in readme.split("\n## ")[1:])}
    for recipe in ("local/", "docker/", "kubernetes/", "slurm/"):
        (text,) = [text for title, text in sections.items() if title.startswith(recipe)]
        assert "http://127.0.0.1:8787/dtrain" in text, recipe
    dashboard = next(text for title, text in sections.items() if title.startswith("The dashboard"))
    assert "/dtrain/api/jobs" in dashboard and "plain HTTP" in dashboard
    assert "DASK_DISTRIBUTED__SCHEDULER__DASHBOARD__TLS__CERT" in dashboard
    for script in (LOCAL_SCRIPT, DEPLOY / "slurm" / "cluster.py"):
        assert "http://127.0.0.1:8787/dtrain" in script.read_text(), script


@pytest.mark.cluster
def test_the_dashboard_over_https_as_the_readme_says(certs, tmp_path):
    """deploy/README.md's way to serve the dashboard over https: the scheduler's certificate in
    Dask's dashboard settings. Then https answers (verified against ca.pem) and plain HTTP does not."""
    import ssl

    readme = (DEPLOY / "README.md").read_text()
    settings = dict(
        line.removeprefix("export ").split("=", 1)
        for line in readme.splitlines()
        if line.startswith("export DASK_DISTRIBUTED__SCHEDULER__DASHBOARD__TLS__")
    )
    assert set(settings) == {
        "DASK_DISTRIBUTED__SCHEDULER__DASHBOARD__TLS__CERT",
        "DASK_DISTRIBUTED__SCHEDULER__DASHBOARD__TLS__KEY",
    }
    env = {**os.environ, **{k: v.replace("/certs/", f"{certs}/") for k, v in settings.items()}}
    dashboard_port = free_port()
    argv = [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0"]
    argv += ["--dashboard-address", f"127.0.0.1:{dashboard_port}"]
    trusted = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    with _processes() as procs:
        log = open(tmp_path / "scheduler.log", "wb")
        procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
        deadline = time.monotonic() + 60
        while True:
            try:
                health = urllib.request.urlopen(
                    f"https://127.0.0.1:{dashboard_port}/health", context=trusted, timeout=5
                )
                break
            except OSError:
                assert time.monotonic() < deadline and procs[0].poll() is None, (tmp_path / "scheduler.log").read_text()
                time.sleep(0.5)
        assert health.read() == b"ok"
        with pytest.raises(OSError):  # (a reset connection, or an error page: not the dashboard)
            urllib.request.urlopen(f"http://127.0.0.1:{dashboard_port}/health", timeout=5).read()
