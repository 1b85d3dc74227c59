"""Hostile submissions to a real `dask scheduler` running the job service (issue 16), sent past the
command line's own checks, straight to the service: each is refused (or, if valid, costs nothing
to take) within seconds, the scheduler runs under an address-space limit and its memory stays
flat, a job already training keeps training, and no file outside the jobs' folders is touched."""

from __future__ import annotations

import copy
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_bounded_inputs import ALIAS_BOMB
from test_jobs import SEED_JOB, _free_port, dtrain_cli, json_of, long_job_args, wait_until
from test_jobspec import MINIMAL

from dtrain.jobs.client import JobsClient, JobServiceError
from dtrain.jobs.spec import load_job

pytest.importorskip("distributed")
pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SCHEDULER_ADDRESS_SPACE_MIB = 3072  # a scheduler with dtrain loaded maps ~1.3 GiB; a bomb would need far more


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.fixture()
def limited_cluster():
    """`dask scheduler` under RLIMIT_AS, and two `dask worker` processes."""

    def limit() -> None:
        size = SCHEDULER_ADDRESS_SPACE_MIB << 20
        resource.setrlimit(resource.RLIMIT_AS, (size, size))

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    bindir = Path(sys.executable).parent
    dask = str(bindir / "dask") if (bindir / "dask").exists() else "dask"
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scheduler = subprocess.Popen(
        [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"],
        preexec_fn=limit,
        **quiet,
    )
    workers = [
        subprocess.Popen(
            [dask, "worker", address, "--nthreads", "1", "--no-dashboard", "--memory-limit", "2GiB"], **quiet
        )
        for _ in range(2)
    ]
    try:
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address, scheduler
    finally:
        for proc in [*workers, scheduler]:
            proc.terminate()
        for proc in [*workers, scheduler]:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def _nested(depth: int) -> dict:
    root: dict = {}
    inner = root
    for _ in range(depth):
        inner["a"] = {}
        inner = inner["a"]
    return root


def _hostile_specs(valid: dict, running_output: Path, user_folder: Path) -> dict[str, tuple[dict, str]]:
    """name -> (a spec as the service receives it, what the refusal must say)."""

    def changed(**sections: dict) -> dict:
        spec = copy.deepcopy(valid)
        for section, values in sections.items():
            if isinstance(values, dict) and isinstance(spec.get(section), dict):
                spec[section].update(values)
            else:
                spec[section] = values
        return spec

    link = user_folder / "link"
    link.symlink_to(running_output, target_is_directory=True)
    return {
        "deep": (changed(extra=_nested(300)), "more than 64 deep"),
        "many values": (changed(extra=list(range(1_000_000))), "more than 100,000 values"),
        "many layers": (
            changed(model={"layers": [{"units": 4}] * 5000}),
            "5,000 layers: a job's model has at most 4,096",
        ),
        "huge integer": (changed(fit={"epochs": 2**63}), "fit.epochs: expected an integer <= 9,007,199,254,740,992"),
        "huge timeout": (changed(fit={"timeout": 1e300}), "at most 1,000,000 seconds"),
        "dot-dot name": (changed(name=".."), "name: expected a name of letters, digits"),
        "a running job's folder through a symlink": (
            changed(output={"dir": str(link)}),
            "already writes to",
        ),
        "a running job's folder as a file:// URL": (
            changed(output={"dir": f"file://{running_output}"}),
            "already writes to",
        ),
    }


def test_hostile_submissions_are_refused_at_once_while_a_job_trains(limited_cluster, tmp_path):
    address, scheduler = limited_cluster
    running_output = tmp_path / "running"
    user_folder = tmp_path / "user"
    user_folder.mkdir()
    (user_folder / "job.yaml").write_text("# the user's own, commented job file\n" + MINIMAL)
    (user_folder / "bomb.yaml").write_text(MINIMAL + ALIAS_BOMB)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in user_folder.iterdir()}

    proc = dtrain_cli("submit", str(SEED_JOB), "--scheduler", address, "--detach", "--json",
                      *long_job_args(running_output, workers=1))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    training = json_of(proc)["job_id"]
    reached = wait_until(address, training, lambda r: r["epoch"] >= 2)
    assert reached["state"] == "running", reached
    rss_before = _rss_mib(scheduler.pid)

    # The command line refuses the 1 KB alias bomb before it reaches the scheduler.
    start = time.monotonic()
    proc = dtrain_cli("submit", str(user_folder / "bomb.yaml"), "--scheduler", address, "--detach")
    assert proc.returncode == 2 and "expands to more than 100,000 values" in proc.stderr, proc.stderr
    assert time.monotonic() - start < 30

    valid = load_job(SEED_JOB, [f"output.dir={tmp_path / 'other'}"]).to_dict()
    with JobsClient(address) as jobs:
        for name, (spec, message) in _hostile_specs(valid, running_output, user_folder).items():
            start = time.monotonic()
            with pytest.raises(JobServiceError) as refused:
                jobs._call("submit", spec=spec, source=str(user_folder / "job.yaml"))
            assert message in str(refused.value) and len(refused.value.args[0].splitlines()) == 1, (name, refused.value)
            assert refused.value.kind == "invalid", name
            assert time.monotonic() - start < 5, name

        # A valid job over a billion rows is planned in O(shards): taken at once, then it fails
        # on its worker with a clear error about memory, not in the scheduler.
        start = time.monotonic()
        huge = copy.deepcopy(valid)
        huge["data"]["train"]["samples"] = 10**9
        huge["output"]["dir"] = str(tmp_path / "huge")
        huge["cluster"]["workers"] = 1
        record = jobs._call("submit", spec=huge, source=None)
        assert time.monotonic() - start < 5
        ended = jobs.wait(record["job_id"], poll=0.5)
        assert ended["state"] == "failed", ended
        assert ended["error"].startswith("MemoryError: Rank 0 on worker") and "800000000 rows" in ended["error"], ended
        assert time.monotonic() - start < 30

        status = jobs.status(training)
    assert status["state"] == "running" and status["epoch"] > reached["epoch"], status  # it kept training
    assert _rss_mib(scheduler.pid) - rss_before < 150
    assert scheduler.poll() is None
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in user_folder.iterdir() if p.name != "link"}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge", "running", "user"]
    dtrain_cli("cancel", training, "--scheduler", address)
