"""`--scheduler-file PATH`: every dtrain command that takes --scheduler finds the scheduler in the
JSON file that `dask scheduler --scheduler-file PATH` writes (as Dask's own CLIs do), run as
users run them: `dtrain` subprocesses against a real scheduler and workers started with that file."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from processes import ROOT, DaskProcesses, dtrain_cli, free_port, json_of

pytest.importorskip("distributed")

SEED_JOB = ROOT / "examples" / "jobs" / "seed_network.yaml"
# Commands that name a scheduler, with the arguments they need besides it.
COMMANDS = [
    ["submit", str(SEED_JOB)],
    ["resume", str(ROOT / "no-such-output")],
    ["status", "some-job"],
    ["cancel", "some-job"],
    ["logs", "some-job"],
    ["list"],
]
NO_SCHEDULER_ENV = {"DTRAIN_SCHEDULER": "", "DTRAIN_SCHEDULER_FILE": "", "DASK_SCHEDULER_ADDRESS": ""}


@pytest.fixture(scope="module")
def dask_with_file(tmp_path_factory):
    """`dask scheduler --scheduler-file F` and 2 `dask worker --scheduler-file F` processes."""
    path = tmp_path_factory.mktemp("scheduler") / "scheduler.json"
    with DaskProcesses(2, scheduler_file=path) as cluster:
        yield cluster


def by_file(cluster: DaskProcesses) -> list[str]:
    return ["--scheduler-file", str(cluster.scheduler_file)]


def short_job(output: Path, epochs: int = 1) -> list[str]:
    return ["--set", f"output.dir={output}", "--set", f"fit.epochs={epochs}", "--set", "data.train.samples=800"]


@pytest.mark.cluster
def test_every_command_finds_the_scheduler_by_its_file(dask_with_file, tmp_path):
    cluster = dask_with_file
    # The file is Dask's own: the scheduler wrote it, the workers found the scheduler through it.
    assert json.loads(cluster.scheduler_file.read_text())["address"] == cluster.address

    out = tmp_path / "first"
    submitted = dtrain_cli("submit", str(SEED_JOB), *by_file(cluster), "--json", *short_job(out))
    assert submitted.returncode == 0, submitted.stderr
    first = json_of(submitted)
    assert (
        first["state"] == "succeeded"
        and len(first["workers"]) == 2
        and (Path(first["output"]) / "model.safetensors").is_file()
    )

    # resume: on the scheduler of the file (not a local cluster), one more epoch from the checkpoint
    resumed = dtrain_cli("resume", str(out), *by_file(cluster), "--json", "--set", "fit.epochs=2")
    assert resumed.returncode == 0, resumed.stderr
    second = json_of(resumed)
    assert second["state"] == "succeeded" and second["epoch"] == 2
    assert set(second["workers"]) == set(first["workers"])  # the file's cluster's workers

    long_job = [
        "--set",
        f"output.dir={tmp_path / 'long'}",
        "--set",
        "cluster.workers=1",
        "--set",
        "fit.epochs=200",
        "--set",
        "data.train.samples=20000",
    ]
    detached = dtrain_cli("submit", str(SEED_JOB), *by_file(cluster), "--detach", "--json", *long_job)
    assert detached.returncode == 0, detached.stderr
    job_id = json_of(detached)["job_id"]
    try:
        deadline = time.monotonic() + 120
        while True:
            status = dtrain_cli("status", job_id, *by_file(cluster), "--json")
            assert status.returncode == 0, status.stderr
            if json_of(status)["state"] == "running" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert json_of(status)["state"] == "running"

        listed = dtrain_cli("list", *by_file(cluster), "--json")
        assert listed.returncode == 0, listed.stderr
        assert json_of(listed)["scheduler"] == cluster.address
        assert {first["job_id"], second["job_id"], job_id} <= {job["job_id"] for job in json_of(listed)["jobs"]}

        logs = dtrain_cli("logs", first["job_id"], *by_file(cluster), "--json")
        assert logs.returncode == 0, logs.stderr
        assert any(line["text"].startswith("epoch 1/1:") for line in json_of(logs)["lines"])

        # the file may come from the environment too, as the address may
        by_env = dtrain_cli(
            "status", job_id, "--json", env={**NO_SCHEDULER_ENV, "DTRAIN_SCHEDULER_FILE": str(cluster.scheduler_file)}
        )
        assert by_env.returncode == 0, by_env.stderr
        assert json_of(by_env)["job_id"] == job_id

        cancelled = dtrain_cli("cancel", job_id, *by_file(cluster), "--json")
        assert cancelled.returncode == 0, cancelled.stderr
        assert json_of(cancelled)["state"] == "cancelled"
    finally:
        dtrain_cli("cancel", job_id, "--scheduler", cluster.address)


@pytest.mark.cluster
def test_a_scheduler_file_that_appears_late_is_waited_for(dask_with_file, tmp_path):
    """As Dask's clients do (a scheduler still starting): up to --connect-timeout."""
    late = tmp_path / "late.json"
    text = dask_with_file.scheduler_file.read_text()
    writer = threading.Timer(1.5, lambda: late.write_text(text))
    writer.start()
    try:
        listed = dtrain_cli("list", "--scheduler-file", str(late), "--connect-timeout", "30", "--json")
    finally:
        writer.cancel()
    assert listed.returncode == 0, listed.stderr
    assert json_of(listed)["scheduler"] == dask_with_file.address


@pytest.mark.parametrize("command", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_scheduler_and_scheduler_file_together_are_a_usage_error(command, tmp_path):
    start = time.monotonic()
    proc = dtrain_cli(*command, "--scheduler", "tcp://127.0.0.1:1", "--scheduler-file", str(tmp_path / "s.json"))
    assert proc.returncode == 2, proc.stderr
    assert "--scheduler and --scheduler-file" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert time.monotonic() - start < 30  # refused before any connection is tried


def test_a_missing_scheduler_file_is_an_error_within_the_connect_timeout(tmp_path):
    start = time.monotonic()
    proc = dtrain_cli("list", "--scheduler-file", str(tmp_path / "nowhere.json"), "--connect-timeout", "1", "--json")
    assert proc.returncode == 3, proc.stderr
    assert f"no scheduler file at {tmp_path / 'nowhere.json'}" in proc.stderr
    assert json_of(proc)["exit_code"] == 3 and "Traceback" not in proc.stderr
    assert time.monotonic() - start < 1 + 20  # the wait, and the interpreter's start


@pytest.mark.parametrize(
    "content, message",
    [
        ("tcp://127.0.0.1:8786", "not JSON"),  # an address where the file should be
        ('{"type": "Scheduler", "id": "x"}', 'no "address"'),
        ('["tcp://127.0.0.1:8786"]', 'no "address"'),
        ('{"address": 8786}', 'no "address"'),
        (None, "cannot read the scheduler file"),  # a folder
    ],
)
def test_a_malformed_scheduler_file_is_a_usage_error_before_connecting(content, message, tmp_path):
    path = tmp_path / "scheduler.json"
    if content is None:
        path.mkdir()
    else:
        path.write_text(content)
    proc = dtrain_cli("status", "some-job", "--scheduler-file", str(path))
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and str(path) in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_both_environment_variables_set_is_a_usage_error(tmp_path):
    path = tmp_path / "scheduler.json"
    path.write_text(json.dumps({"address": f"tcp://127.0.0.1:{free_port()}"}))
    env = {**NO_SCHEDULER_ENV, "DTRAIN_SCHEDULER": "tcp://127.0.0.1:1", "DTRAIN_SCHEDULER_FILE": str(path)}
    proc = dtrain_cli("list", env=env)
    assert proc.returncode == 2, proc.stderr
    assert "$DTRAIN_SCHEDULER and $DTRAIN_SCHEDULER_FILE" in proc.stderr
    # an option on the command line names the scheduler whatever the environment says
    gone = dtrain_cli("list", "--scheduler-file", str(path), "--connect-timeout", "2", env=env)
    assert gone.returncode == 3 and "cannot reach the Dask scheduler at tcp://127.0.0.1:" in gone.stderr
    nothing = dtrain_cli("list", env=NO_SCHEDULER_ENV)
    assert nothing.returncode == 3 and "--scheduler-file" in nothing.stderr
