"""The job service and its command line, run as users run them: `dtrain` subprocesses against
real `dask scheduler` / `dask worker` processes (and `dtrain run`'s embedded cluster)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from processes import ROOT, SEED_JOB, DaskProcesses, dtrain_cli, json_of, long_job_args, wait_for_state
from processes import free_port as _free_port

import dtrain
from dtrain.runs import RUN_NAME, resolve_run

pytest.importorskip("distributed")

pytestmark = pytest.mark.cluster


def newest_run(output: Path) -> Path:
    """The newest run folder of a job's output location (dtrain.runs)."""
    return Path(resolve_run(output, "result.json"))


# -- dtrain run: the embedded cluster -----------------------------------------------------------------


def test_run_trains_on_an_embedded_cluster_and_writes_every_output(tmp_path):
    out = tmp_path / "seed"
    proc = dtrain_cli(
        "run", str(SEED_JOB), "--workers", "2", "--json", "--set", f"output.dir={out}", "--set", "fit.epochs=3"
    )
    assert proc.returncode == 0, proc.stderr
    result = json_of(proc)
    run = out / result["run"]  # the run's own folder (dtrain.runs)
    assert result["state"] == "succeeded" and result["job_id"] and result["output"] == str(run)
    assert result["output_dir"] == str(out) and RUN_NAME.match(result["run"])
    assert len(result["workers"]) == 2 and result["epoch"] == 3 and len(result["history"]) == 3
    assert result["metrics"]["val_accuracy"] > 0.8
    for name in ("model.safetensors", "history.csv", "job.yaml", "training.png", "result.json"):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "latest").is_file()  # a run's checkpoints are its own
    model = dtrain.load_model(out)  # from the output directory itself: its newest run
    x, y = dtrain.datasets.make_classification(100, seed=1)
    assert model.predict(x).shape == (100, 10)
    # the resolved job file is a job file again, and it says what ran
    from dtrain.jobs.spec import load_job

    resolved = load_job(run / "job.yaml")
    assert resolved.epochs == 3 and resolved.output_dir == str(out)
    report = dtrain_cli("report", str(out), "--json")
    assert report.returncode == 0, report.stderr
    assert json_of(report)["state"] == "succeeded" and json_of(report)["output"] == str(run)
    human = dtrain_cli("report", str(out))
    assert human.returncode == 0 and "val_accuracy" in human.stdout


def test_running_a_job_again_keeps_the_earlier_run_and_resume_continues_the_newest(tmp_path):
    """Every run has a folder of its own in the output location: a second run keeps the first,
    load_model and report take the newest (or the run folder named), and `dtrain resume OUTPUT`
    continues the newest run in its own folder, from its own checkpoints."""
    out = tmp_path / "seed"
    common = ["--workers", "1", "--json", "--set", f"output.dir={out}", "--set", "data.train.samples=600"]
    first = json_of(dtrain_cli("run", str(SEED_JOB), *common, "--set", "fit.epochs=2"))
    second = json_of(dtrain_cli("run", str(SEED_JOB), *common, "--set", "fit.epochs=3"))
    assert first["run"] != second["run"] and first["state"] == second["state"] == "succeeded"
    assert sorted(p.name for p in out.iterdir() if RUN_NAME.match(p.name)) == [first["run"], second["run"]]
    for record, epochs in ((first, 2), (second, 3)):  # nothing of the first run was touched by the second
        summary = json_of(dtrain_cli("report", record["output"], "--json"))
        assert summary["epochs"] == epochs and summary["job_id"] == record["job_id"]
        assert len(list((Path(record["output"]) / "checkpoints").glob("ckpt-*.json"))) == epochs
    assert json_of(dtrain_cli("report", str(out), "--json"))["job_id"] == second["job_id"]
    newest, oldest = dtrain.load_model(out), dtrain.load_model(first["output"])
    for a, b in zip(newest.get_weights(), dtrain.load_model(second["output"]).get_weights()):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(newest.get_weights(), oldest.get_weights()))
    resumed = json_of(dtrain_cli("resume", str(out), "--workers", "1", "--json", "--set", "fit.epochs=4"))
    assert resumed["state"] == "succeeded" and resumed["run"] == second["run"]  # the newest, in its own folder
    assert len([p for p in out.iterdir() if RUN_NAME.match(p.name)]) == 2
    assert json_of(dtrain_cli("report", str(out), "--json"))["epochs"] == 4
    again = json_of(dtrain_cli("resume", first["output"], "--workers", "1", "--json", "--set", "fit.epochs=3"))
    assert again["run"] == first["run"] and json_of(dtrain_cli("report", first["output"], "--json"))["epochs"] == 3


def test_run_shows_progress_and_a_summary(tmp_path):
    proc = dtrain_cli(
        "run", str(SEED_JOB), "--workers", "1", "--set", f"output.dir={tmp_path}", "--set", "fit.epochs=2"
    )
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1/2:" in proc.stdout and "epoch 2/2:" in proc.stdout
    assert "succeeded" in proc.stdout and str(tmp_path) in proc.stdout


def test_the_real_data_example_job_reaches_95_percent(tmp_path):
    proc = dtrain_cli(
        "run",
        str(ROOT / "examples" / "jobs" / "digits.yaml"),
        "--workers",
        "2",
        "--json",
        "--set",
        f"output.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr
    result = json_of(proc)
    assert result["metrics"]["val_accuracy"] >= 0.95, result["metrics"]


def test_a_job_reads_npy_files_relative_to_its_own_folder(tmp_path):
    x, y = dtrain.datasets.make_classification(600, n_features=12, n_classes=3, seed=4, one_hot=False)
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "x.npy", x)
    np.save(tmp_path / "data" / "y.npy", y)
    (tmp_path / "job.yaml").write_text(
        "model:\n  layers: [{units: 16, activation: relu}, {units: 3, activation: softmax}]\n"
        "compile: {loss: sparse_categorical_crossentropy, optimizer: adam, metrics: [accuracy]}\n"
        "data:\n  train: {format: npy, x: data/x.npy, y: data/y.npy}\n"
        "fit: {epochs: 10, batch_size: 50, seed: 1}\n"
    )
    proc = dtrain_cli("run", str(tmp_path / "job.yaml"), "--workers", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json_of(proc)
    assert result["output_dir"] == str(tmp_path / "runs" / "job")  # the default: runs/<name> next to the job file
    assert result["metrics"]["accuracy"] > 0.8
    # the same job in one process (same seed, one shard per worker) gives the same weights
    model = dtrain.load_model(tmp_path / "runs" / "job")
    from dtrain.jobs.spec import load_job

    job = load_job(tmp_path / "job.yaml")
    alone = job.build_model()
    options = {**job.fit_options(), "shards": 2}
    options.pop("timeout")
    alone.fit(x, y, verbose=0, **options)
    for got, expected in zip(model.get_weights(), alone.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_an_invalid_job_exits_2_naming_the_key_and_runs_nothing(tmp_path):
    proc = dtrain_cli("run", str(SEED_JOB), "--set", "fit.epochs=-1", "--set", f"output.dir={tmp_path / 'never'}")
    assert proc.returncode == 2
    assert "fit.epochs" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "never").exists()
    as_json = dtrain_cli("validate", str(SEED_JOB), "--set", "fit.epochs=-1", "--json")
    assert as_json.returncode == 2 and "fit.epochs" in json_of(as_json)["error"]
    ok = dtrain_cli("validate", str(SEED_JOB), "--json")
    assert ok.returncode == 0 and json_of(ok)["valid"] is True


# -- dtrain submit and friends: a real scheduler ------------------------------------------------------


def test_a_detached_job_outlives_its_submitter(scheduler, tmp_path):
    out = tmp_path / "detached"
    proc = dtrain_cli(
        "submit",
        str(SEED_JOB),
        "--scheduler",
        scheduler,
        "--detach",
        "--json",
        "--set",
        f"output.dir={out}",
        "--set",
        "fit.epochs=2",
    )
    assert proc.returncode == 0, proc.stderr
    job_id = json_of(proc)["job_id"]  # the submitting process has exited
    followed = dtrain_cli("logs", job_id, "--scheduler", scheduler, "--follow")  # returns when the job ends
    assert followed.returncode == 0 and "epoch 2/2:" in followed.stdout and "succeeded" in followed.stdout
    record = wait_for_state(scheduler, job_id, ("succeeded", "failed", "cancelled"))
    assert record["state"] == "succeeded", record["error"]
    assert record["epoch"] == 2 and record["restarts"] == 0 and record["error"] is None
    assert record["started_at"] <= record["ended_at"] and record["output_dir"] == str(out)
    assert (Path(record["output"]) / "model.safetensors").is_file()
    logs = json_of(dtrain_cli("logs", job_id, "--scheduler", scheduler, "--json"))
    texts = [line["text"] for line in logs["lines"]]
    assert any(t.startswith("epoch 2/2:") for t in texts) and any("succeeded" in t for t in texts)
    listed = json_of(dtrain_cli("list", "--scheduler", scheduler, "--json"))["jobs"]
    assert job_id in [job["job_id"] for job in listed]
    # the address may come from the environment instead
    by_env = dtrain_cli("status", job_id, "--json", env={"DTRAIN_SCHEDULER": scheduler})
    assert by_env.returncode == 0 and json_of(by_env)["state"] == "succeeded"


def test_submit_follows_the_job_and_prints_one_json_document(scheduler, tmp_path):
    proc = dtrain_cli(
        "submit",
        str(SEED_JOB),
        "--scheduler",
        scheduler,
        "--json",
        "--set",
        f"output.dir={tmp_path}",
        "--set",
        "fit.epochs=1",
    )
    assert proc.returncode == 0, proc.stderr
    result = json_of(proc)
    assert result["state"] == "succeeded" and result["output_dir"] == str(tmp_path) and result["job_id"]


def test_jobs_queue_for_workers_and_cancelling_frees_them(scheduler, tmp_path):
    ids = []
    for name in ("a", "b", "c"):
        proc = dtrain_cli(
            "submit", str(SEED_JOB), "--scheduler", scheduler, "--detach", "--json", *long_job_args(tmp_path / name)
        )
        assert proc.returncode == 0, proc.stderr
        ids.append(json_of(proc)["job_id"])
    a, b, c = ids
    try:
        assert wait_for_state(scheduler, a, ("running",))["state"] == "running"
        assert wait_for_state(scheduler, b, ("running",))["state"] == "running"
        queued = json_of(dtrain_cli("status", c, "--scheduler", scheduler, "--json"))
        assert queued["state"] == "queued" and "waiting for 1 free workers" in queued["waiting_for"]
        # a and b run side by side on one worker each
        running = [json_of(dtrain_cli("status", j, "--scheduler", scheduler, "--json")) for j in (a, b)]
        assert len({w for r in running for w in r["workers"]}) == 2
        start = time.monotonic()
        cancelled = dtrain_cli("cancel", a, "--scheduler", scheduler, "--json")
        assert cancelled.returncode == 0, cancelled.stderr
        assert json_of(cancelled)["state"] == "cancelled"
        assert time.monotonic() - start < 20
        # the freed worker goes to the queued job
        assert wait_for_state(scheduler, c, ("running",), timeout=30)["state"] == "running"
    finally:
        for job_id in ids:
            dtrain_cli("cancel", job_id, "--scheduler", scheduler)
    for job_id in ids:
        assert wait_for_state(scheduler, job_id, ("cancelled", "succeeded", "failed"))["state"] == "cancelled"
    assert json.loads((newest_run(tmp_path / "a") / "result.json").read_text())["state"] == "cancelled"


def test_a_cancelled_job_keeps_its_epochs_and_its_latest_checkpoint_as_its_model(scheduler, tmp_path):
    """Cancelled after 3 of 200 epochs: its report shows those epochs, history.csv and the plot
    hold them, and model.safetensors is its latest checkpoint's, marked as such."""
    out = tmp_path / "cancelled"
    proc = dtrain_cli("submit", str(SEED_JOB), "--scheduler", scheduler, "--detach", "--json", *long_job_args(out))
    job_id = json_of(proc)["job_id"]
    try:
        reached = wait_until(scheduler, job_id, lambda r: len(r["history"]) >= 3 or r["state"] != "running")
        assert reached["state"] == "running", reached["error"]
    finally:
        cancelled = json_of(dtrain_cli("cancel", job_id, "--scheduler", scheduler, "--json"))
    assert cancelled["state"] == "cancelled"
    done = len(cancelled["history"])
    summary = json_of(dtrain_cli("report", str(out), "--json"))
    assert summary["state"] == "cancelled" and summary["epochs"] == done >= 3 and summary["epochs_planned"] == 200
    assert [row["epoch"] for row in summary["history"]] == list(range(1, done + 1))
    for name in ("model.safetensors", "history.csv", "training.png", "job.yaml", "result.json"):
        assert name in summary["files"], summary["files"]
    source = summary["model_from"]  # the checkpoint at an epoch's end, or one within the next epoch
    assert source["epoch"] >= done - 1 and source["checkpoint"].startswith(str(newest_run(out) / "checkpoints"))
    from dtrain.checkpoints import load_checkpoint

    model = dtrain.load_model(out)
    np.testing.assert_array_equal(model.params, load_checkpoint(source["checkpoint"]).arrays["params"])
    human = dtrain_cli("report", str(out)).stdout
    assert re.search(rf"epochs +{done} of 200", human) and re.search(r"state +cancelled", human), human
    assert "from its latest checkpoint" in human


@pytest.mark.slow
def test_a_wide_job_is_not_starved_by_later_small_ones(tmp_path, monkeypatch):
    """Backfill lets a later 1-worker job start on a free worker while a 2-worker job waits, but
    only until the waiting job has been queued DTRAIN_BACKFILL_WAIT_S (2 s here): then the free
    worker is kept for it, and it starts as soon as the second frees up."""
    monkeypatch.setenv("DTRAIN_BACKFILL_WAIT_S", "2")  # the scheduler process inherits it
    cluster = Cluster(2)
    address, ids = cluster.address, {}
    try:
        # A job asking for more workers than the cluster has never holds the queue back.
        proc = dtrain_cli(
            "submit",
            str(SEED_JOB),
            "--scheduler",
            address,
            "--detach",
            "--json",
            *long_job_args(tmp_path / "huge", workers=5),
        )
        ids["huge"] = json_of(proc)["job_id"]
        time.sleep(3)
        for name, workers in (("first", 1), ("wide", 2)):
            proc = dtrain_cli(
                "submit",
                str(SEED_JOB),
                "--scheduler",
                address,
                "--detach",
                "--json",
                *long_job_args(tmp_path / name, workers=workers),
            )
            ids[name] = json_of(proc)["job_id"]
        assert wait_for_state(address, ids["first"], ("running",))["state"] == "running"
        time.sleep(3)  # the wide job has waited longer than the backfill allows
        proc = dtrain_cli(
            "submit", str(SEED_JOB), "--scheduler", address, "--detach", "--json", *long_job_args(tmp_path / "small")
        )
        ids["small"] = json_of(proc)["job_id"]
        time.sleep(2)
        small = json_of(dtrain_cli("status", ids["small"], "--scheduler", address, "--json"))
        assert small["state"] == "queued" and f"behind job {ids['wide']}" in small["waiting_for"], small
        assert small["queue_position"] == 3
        listed = dtrain_cli("list", "--scheduler", address).stdout
        assert f"#2 in the queue: {ids['wide']}" in listed and f"#3 in the queue: {ids['small']}" in listed, listed
        assert f"#1 in the queue: {ids['huge']}: waiting for 5 free workers" in listed, listed
        dtrain_cli("cancel", ids["first"], "--scheduler", address)
        assert wait_for_state(address, ids["wide"], ("running",), timeout=60)["state"] == "running"
        assert json_of(dtrain_cli("status", ids["small"], "--scheduler", address, "--json"))["state"] == "queued"
    finally:
        for job_id in ids.values():
            dtrain_cli("cancel", job_id, "--scheduler", address)
        cluster.kill()


@pytest.mark.slow
def test_a_scheduler_running_a_job_stops_promptly_on_sigterm(tmp_path):
    """Whatever a job is doing (here: training), SIGTERM ends the scheduler within seconds; its
    job threads never hold the process."""
    cluster = Cluster(1)
    try:
        submit_and_reach(cluster.address, long_job_args(tmp_path / "out"), epoch=1)
        start = time.monotonic()
        cluster.scheduler.send_signal(signal.SIGTERM)
        cluster.scheduler.wait(timeout=30)
        assert time.monotonic() - start < 10
    finally:
        cluster.kill()


def test_a_failing_job_reports_its_error(scheduler, tmp_path):
    proc = dtrain_cli(
        "submit",
        str(SEED_JOB),
        "--scheduler",
        scheduler,
        "--set",
        f"output.dir={tmp_path}",
        "--set",
        "cluster.device=gpu",
        "--set",
        "fit.epochs=1",
    )
    assert proc.returncode == 1
    assert "failed" in proc.stderr and "GPU" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads((newest_run(tmp_path) / "result.json").read_text())["state"] == "failed"


def test_ctrl_c_on_submit_cancels_the_job(scheduler, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "dtrain", "submit", str(SEED_JOB), "--scheduler", scheduler, *long_job_args(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        job_id = proc.stdout.readline().split()[-1]  # "job <id>"
        assert wait_for_state(scheduler, job_id, ("running",))["state"] == "running"
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert wait_for_state(scheduler, job_id, ("cancelled",), timeout=30)["state"] == "cancelled"


def test_unknown_jobs_and_unreachable_schedulers_are_one_line_errors(scheduler):
    unknown = dtrain_cli("status", "no-such-job", "--scheduler", scheduler)
    assert unknown.returncode == 1 and "no-such-job" in unknown.stderr and len(unknown.stderr.strip().splitlines()) == 1
    as_json = dtrain_cli("cancel", "no-such-job", "--scheduler", scheduler, "--json")
    assert as_json.returncode == 1 and json_of(as_json)["exit_code"] == 1
    start = time.monotonic()
    gone = dtrain_cli("list", "--scheduler", f"tcp://127.0.0.1:{_free_port()}", "--connect-timeout", "2")
    assert gone.returncode == 3 and "cannot reach" in gone.stderr and len(gone.stderr.strip().splitlines()) == 1
    assert time.monotonic() - start < 30
    nowhere = dtrain_cli("list", env={"DTRAIN_SCHEDULER": "", "DASK_SCHEDULER_ADDRESS": ""})
    assert nowhere.returncode == 3 and "--scheduler" in nowhere.stderr


# -- losing workers and schedulers ----------------------------------------------------------------------


class Cluster(DaskProcesses):
    """A real `dask scheduler` and `dask worker --no-nanny` processes (a killed worker stays dead)."""

    def __init__(self, workers: int):
        super().__init__(workers, nanny=False)


def uninterrupted(job_file: Path, overrides: list[str], shards: int):
    """The same job trained in one process with the same logical shards: what every restart must reproduce."""
    from dtrain.jobs.spec import load_job

    job = load_job(job_file, overrides[1::2])  # overrides: ["--set", "key=value", ...]
    model = job.build_model()
    data = job.data()
    n = data["x"].n_rows
    options = {**job.fit_options(), "shards": shards}
    for key in ("timeout", "max_restarts"):
        options.pop(key)
    model.fit(data["x"].read(0, n), data["y"].read(0, n), verbose=0, **options)
    return model


def wait_until(address: str, job_id: str, predicate, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        record = json_of(dtrain_cli("status", job_id, "--scheduler", address, "--json"))
        if predicate(record) or time.monotonic() > deadline:
            return record
        time.sleep(0.3)


def recovery_job(out: Path) -> list[str]:
    return [
        "--set",
        f"output.dir={out}",
        "--set",
        "data.validation=null",
        "--set",
        "fit.epochs=12",
        "--set",
        "data.train.samples=6000",
        "--set",
        "fit.batch_size=16",
    ]


def submit_and_reach(address: str, overrides: list[str], epoch: int) -> str:
    """Submit the seed job detached; return its id once it is running epoch ``epoch`` (from 1)."""
    proc = dtrain_cli("submit", str(SEED_JOB), "--scheduler", address, "--detach", "--json", *overrides)
    assert proc.returncode == 0, proc.stderr
    job_id = json_of(proc)["job_id"]
    assert wait_until(address, job_id, lambda r: r["epoch"] >= epoch)["state"] == "running"
    return job_id


@pytest.mark.slow
def test_a_worker_killed_with_sigkill_costs_a_restart_from_memory_and_not_the_result(tmp_path):
    out = tmp_path / "out"
    overrides = recovery_job(out)
    cluster = Cluster(3)
    try:
        job_id = submit_and_reach(cluster.address, overrides, epoch=3)
        cluster.workers[1].send_signal(signal.SIGKILL)
        record = wait_until(cluster.address, job_id, lambda r: r["state"] in ("succeeded", "failed", "cancelled"), 300)
    finally:
        cluster.kill()
    assert record["state"] == "succeeded", record["error"]
    assert record["restarts"] == 1 and len(record["workers"]) == 2  # it finished on the two left
    assert "left the cluster" in record["restart_reasons"][0] or "Error" in record["restart_reasons"][0]
    [restart] = record["restart_log"]  # dtrain status --json: where it was, where it went on from, how fast
    assert restart["reason"] == record["restart_reasons"][0] and restart["at"]["epoch"] >= 2
    resumed = restart["resumed_from"]  # the survivors' memory: from the step the kill interrupted, no checkpoint read
    assert resumed["source"] == "memory" and (resumed["epoch"], resumed["step"]) >= (
        restart["at"]["epoch"],
        restart["at"]["step"],
    )
    assert 0 <= restart["detected_s"] < 3 and 0 < restart["recovered_s"] < 5
    model = dtrain.load_model(out)
    expected = uninterrupted(SEED_JOB, overrides, shards=3)
    for got, want in zip(model.get_weights(), expected.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)


@pytest.mark.slow
def test_an_elastic_job_grows_and_shrinks_and_ends_as_a_fixed_one(tmp_path):
    """cluster.elastic: a worker started while the job runs is taken in at an epoch's end; a
    worker killed later is dropped (the job goes on from the survivors' memory); the weights are
    those of one process with the job's 3 shards."""
    out = tmp_path / "out"
    # 30 epochs: room for a worker's start and a kill while the job runs (its epochs take well under a second)
    overrides = [*recovery_job(out), "--set", "cluster.elastic=true", "--set", "fit.shards=3", "--set", "fit.epochs=30"]
    cluster = Cluster(2)
    try:
        job_id = submit_and_reach(cluster.address, overrides, epoch=2)
        cluster.add_worker()
        grown = wait_until(cluster.address, job_id, lambda r: len(r["workers"]) == 3 or r["state"] != "running")
        assert grown["state"] == "running" and len(grown["workers"]) == 3, grown
        epoch = grown["epoch"]
        wait_until(cluster.address, job_id, lambda r: r["epoch"] > epoch + 1 or r["state"] != "running")
        cluster.workers[0].send_signal(signal.SIGKILL)
        record = wait_until(cluster.address, job_id, lambda r: r["state"] in ("succeeded", "failed", "cancelled"), 300)
        logs = dtrain_cli("logs", job_id, "--scheduler", cluster.address).stdout
    finally:
        cluster.kill()
    assert record["state"] == "succeeded", record["error"]
    assert len(record["workers"]) == 2 and record["restarts"] == 1, record
    assert record["restart_log"][0]["resumed_from"]["source"] == "memory"
    assert "training on 3 worker(s)" in logs, logs
    result = json.loads((newest_run(out) / "result.json").read_text())
    assert any(len(change["workers"]) == 3 and change["joined"] for change in result["membership"]), result
    model = dtrain.load_model(out)
    expected = uninterrupted(SEED_JOB, overrides, shards=3)
    for got, want in zip(model.get_weights(), expected.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)


@pytest.mark.slow
def test_one_job_writes_an_output_folder_whatever_it_is_called_and_from_any_scheduler(tmp_path):
    """A job's output folder is one job's: another job naming it through a symlink or a file://
    URL is refused by the same scheduler; a job on another scheduler waits for a sign of life of
    the folder's lease, sees the first job renew it, and fails saying so. The first job is unharmed."""
    out = tmp_path / "out"
    overrides = [*recovery_job(out), "--set", "fit.epochs=1000"]  # still running at the end
    first, second = Cluster(1), Cluster(1)
    try:
        job_id = submit_and_reach(first.address, overrides, epoch=2)
        alias = tmp_path / "alias"
        alias.symlink_to(out, target_is_directory=True)
        for name in (str(alias), f"file://{out}", f"{tmp_path}/./x/../out"):
            other = [*overrides, "--set", f"output.dir={name}"]
            proc = dtrain_cli("submit", str(SEED_JOB), "--scheduler", first.address, "--detach", "--json", *other)
            assert proc.returncode != 0 and f"job {job_id} (running) already writes to" in proc.stderr, proc.stderr
        proc = dtrain_cli("submit", str(SEED_JOB), "--scheduler", second.address, "--json", *overrides)
        assert proc.returncode == 1 and "is writing to" in proc.stderr and f"job-{job_id}" in proc.stderr, proc.stderr
        assert wait_until(first.address, job_id, lambda r: True)["state"] == "running"
        assert dtrain_cli("cancel", job_id, "--scheduler", first.address).returncode == 0
    finally:
        first.kill()
        second.kill()


@pytest.mark.slow
def test_cancelling_a_job_with_a_frozen_worker_takes_seconds(tmp_path):
    """A worker in SIGSTOP answers nobody. `dtrain cancel` used to give up after 30 s while the job
    thread waited on it; the abort no longer waits for a silent worker."""
    overrides = recovery_job(tmp_path / "out")
    cluster = Cluster(2)
    try:
        job_id = submit_and_reach(cluster.address, overrides, epoch=2)
        cluster.workers[1].send_signal(signal.SIGSTOP)
        time.sleep(4)  # silent: no heartbeat for 3 s
        start = time.monotonic()
        cancelled = dtrain_cli("cancel", job_id, "--scheduler", cluster.address, "--json")
        assert cancelled.returncode == 0, cancelled.stderr
        assert json_of(cancelled)["state"] == "cancelled"
        assert time.monotonic() - start < 15
    finally:
        cluster.workers[1].send_signal(signal.SIGCONT)
        cluster.kill()


@pytest.mark.slow
def test_a_frozen_worker_leaves_an_incident_report_with_every_ranks_stacks(tmp_path):
    """A step that misses its deadline (fit.timeout) because a worker froze (SIGSTOP): before the
    ranks are aborted, the job collects where each rank was; the report is in the run's
    incidents/<time>/ (a summary, each answering rank's stacks), in `status --json` and the log."""
    out = tmp_path / "out"
    overrides = [*recovery_job(out), "--set", "fit.timeout=5", "--set", "fit.max_restarts=0"]
    cluster = Cluster(2)
    try:
        job_id = submit_and_reach(cluster.address, overrides, epoch=2)
        cluster.workers[1].send_signal(signal.SIGSTOP)
        record = wait_until(cluster.address, job_id, lambda r: r["state"] != "running", timeout=60)
        logs = "\n".join(
            line["text"]
            for line in json_of(dtrain_cli("logs", job_id, "--scheduler", cluster.address, "--json"))["lines"]
        )
    finally:
        cluster.workers[1].send_signal(signal.SIGCONT)
        cluster.kill()
    assert record["state"] == "failed" and "Timed out after 5 s" in record["error"], record["error"]
    [incident] = record["incidents"]
    [silent] = incident["not_answering"]  # the frozen worker's rank (rank order is by address)
    frozen, other = silent["rank"], 1 - silent["rank"]
    assert silent["worker"] == record["workers"][frozen]
    assert incident["summary"].startswith(f"step deadline (5 s) missed: rank {other} at epoch ")
    assert f"waiting for rank {frozen}" in incident["summary"]
    assert f"did not answer: rank {frozen} on {silent['worker']}" in incident["summary"]
    assert f"incident: {incident['summary']}" in logs
    folder = Path(incident["folder"])
    assert folder.parent == Path(record["output"]) / "incidents"
    assert sorted(p.name for p in folder.iterdir()) == [f"rank-{other}.txt", "summary.json", "summary.txt"]
    assert "did not answer" in (folder / "summary.txt").read_text()
    stacks = (folder / f"rank-{other}.txt").read_text()
    assert "DeadlineMissed" in stacks and "dtrain/training/loop.py" in stacks and "--- " in stacks
    assert json.loads((folder / "summary.json").read_text())["not_answering"][0]["worker"] == silent["worker"]
    # the failed job kept what it did: its epochs and its latest checkpoint's model
    summary = json_of(dtrain_cli("report", str(out), "--json"))
    assert summary["state"] == "failed" and summary["epochs"] >= 1 and summary["epochs"] == len(record["history"])
    assert "model.safetensors" in summary["files"] and summary["model_from"]["epoch"] >= summary["epochs"] - 1


@pytest.mark.slow
@pytest.mark.parametrize("sizes", [(2, 2), (3, 2)], ids=["same-size", "on-fewer-workers"])
def test_after_losing_the_whole_cluster_dtrain_resume_finishes_the_job(sizes, tmp_path):
    """The job leaves fit.shards unset: the resumed run takes the shard count from the checkpoint
    (one per worker of the first cluster), also on a cluster of another size."""
    out = tmp_path / "out"
    overrides = recovery_job(out)
    first = Cluster(sizes[0])
    try:
        job_id = submit_and_reach(first.address, overrides, epoch=4)
    finally:
        first.kill()
    start = time.monotonic()
    gone = dtrain_cli("status", job_id, "--scheduler", first.address, "--json", "--connect-timeout", "3")
    assert gone.returncode == 3 and time.monotonic() - start < 30
    second = Cluster(sizes[1])
    try:
        resumed = dtrain_cli("resume", str(out), "--scheduler", second.address, "--json")
    finally:
        second.kill()
    assert resumed.returncode == 0, resumed.stderr
    result = json_of(resumed)
    assert result["state"] == "succeeded" and result["epoch"] == 12
    # it went on from a checkpoint (at least the one after epoch 3), not from the start
    first = result["history"][0]["epoch"]
    assert first >= 4 and [row["epoch"] for row in result["history"]] == list(range(first, 13))
    model = dtrain.load_model(out)
    expected = uninterrupted(SEED_JOB, overrides, shards=sizes[0])
    for got, want in zip(model.get_weights(), expected.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)


@pytest.mark.slow
def test_killing_the_scheduler_stops_every_rank_and_dtrain_resume_goes_on(tmp_path):
    """The ranks talk to each other, not through the scheduler: with it gone they used to train on
    to the end, writing checkpoints beside the run that resumes the job. A worker that loses its
    scheduler closes, and its rank stops at the next step; `dtrain resume` on a new cluster (of
    another size) then ends with the uninterrupted weights."""
    out = tmp_path / "out"
    overrides = [*recovery_job(out), "--set", "fit.timeout=5", "--set", "output.checkpoint.every=25"]
    first = Cluster(2)
    try:
        submit_and_reach(first.address, overrides, epoch=3)
        first.scheduler.kill()
        killed = time.monotonic()
        for worker in first.workers:  # (no nanny: a worker process ends when its worker closes)
            worker.wait(timeout=60)
        stopped = time.monotonic() - killed
    finally:
        first.kill()
    assert stopped < 5 + 2, stopped
    second = Cluster(3)
    try:
        resumed = dtrain_cli("resume", str(out), "--scheduler", second.address, "--json")
    finally:
        second.kill()
    assert resumed.returncode == 0, resumed.stderr
    assert json_of(resumed)["state"] == "succeeded"
    model = dtrain.load_model(out)
    expected = uninterrupted(SEED_JOB, overrides, shards=2)
    for got, want in zip(model.get_weights(), expected.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)


@pytest.mark.slow
def test_fit_on_a_cluster_whose_scheduler_dies_fails_soon_and_says_so():
    from distributed import Client

    from dtrain.cluster.errors import SchedulerLostError

    cluster = Cluster(2)
    client = Client(cluster.address, timeout="10s", set_as_default=False)
    x, y = dtrain.datasets.make_classification(20000, seed=0)
    model = dtrain.Sequential(
        [dtrain.Dense(64, activation="relu", input_dim=100), dtrain.Dense(10, activation="softmax")]
    )
    model.compile(loss="categorical_crossentropy", optimizer="sgd")
    outcome = {}

    def train():
        try:
            model.fit(x, y, epochs=100, batch_size=16, verbose=0, client=client)
            outcome["result"] = "finished"
        except BaseException as exc:
            outcome["result"] = exc

    thread = threading.Thread(target=train, daemon=True)
    try:
        thread.start()
        time.sleep(4)
        killed_at = time.monotonic()
        cluster.scheduler.kill()
        thread.join(60)
        took = time.monotonic() - killed_at
    finally:
        client.close(timeout=5)
        cluster.kill()
    assert not thread.is_alive(), "fit did not return within 60 s of losing its scheduler"
    assert isinstance(outcome["result"], SchedulerLostError), outcome["result"]
    assert "resume_from" in str(outcome["result"]) and took < 45


@pytest.mark.slow
def test_following_a_job_whose_scheduler_dies_is_one_line_and_exit_3(tmp_path):
    cluster = Cluster(2)
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dtrain",
                "submit",
                str(SEED_JOB),
                "--scheduler",
                cluster.address,
                *long_job_args(tmp_path, workers=2),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        job_id = proc.stdout.readline().split()[-1]
        assert wait_for_state(cluster.address, job_id, ("running",))["state"] == "running"
        killed_at = time.monotonic()
        cluster.scheduler.kill()
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - killed_at
    finally:
        cluster.kill()
    assert proc.returncode == 3 and took < 30
    said = [line for line in err.strip().splitlines() if not line.startswith("watch it on the dashboard: ")]
    assert len(said) == 1 and "lost the Dask scheduler" in said[0], err
