"""MLflow (issue 19): dtrain.callbacks.MLflowLogger and a job file's output.mlflow, read back
from a real local MLflow store (the file store, under tmp_path) through MLflow's own client:
in one process, with fit(client=) on 2 workers, a real job on a `dask scheduler` with `dask
worker` processes; a tracking server that is down; a scheduler without MLflow."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import blobs, shared_client
from processes import ROOT, SEED_JOB, DaskProcesses, dtrain_cli, free_port, json_of, long_job_args, wait_for_state

import dtrain
from dtrain.callbacks import LambdaCallback, MLflowLogger
from dtrain.jobs.spec import JobError, load_job
from dtrain.jobs.tracking import check_tracking
from dtrain.layers import Dense, Input

# MLflow 3 keeps its file store only on request (it prefers a database, which needs SQLAlchemy:
# not in the client-only mlflow-skinny); a store on disk is what these tests read back.
FILE_STORE = {"MLFLOW_ALLOW_FILE_STORE": "true"}


@pytest.fixture(scope="module")
def mlflow():
    """The MLflow client (the tests that read a store back skip where it is not installed)."""
    return pytest.importorskip("mlflow")


@pytest.fixture(autouse=True)
def _file_store(monkeypatch):
    for key, value in FILE_STORE.items():
        monkeypatch.setenv(key, value)


def _model(schedule: bool = False) -> dtrain.Sequential:
    rate = dtrain.optimizers.schedules.ExponentialDecay(0.1, decay_steps=3, decay_rate=0.5) if schedule else 0.05
    model = dtrain.Sequential(
        [Input(shape=(12,)), Dense(16, activation="relu"), Dense(3, activation="softmax")], dtype="float64"
    )
    model.compile(
        optimizer=dtrain.optimizers.SGD(rate, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _metrics(client: Any, run_id: str) -> dict[str, list[float]]:
    """Every metric's values in step order, and the steps are the epochs 0, 1, ..."""
    found = {}
    for key in client.get_run(run_id).data.metrics:
        points = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        assert [p.step for p in points] == list(range(len(points)))
        found[key] = [p.value for p in points]
    return found


def _logged_model(client: Any, run_id: str, where) -> dtrain.Sequential:
    assert [a.path for a in client.list_artifacts(run_id, "model")] == ["model/model.safetensors"]
    return dtrain.load_model(client.download_artifacts(run_id, "model/model.safetensors", str(where)))


# -- the callback -------------------------------------------------------------------------------------


def test_one_process_logs_params_metrics_and_the_model(tmp_path, mlflow):
    uri = (tmp_path / "mlruns").as_uri()
    x, labels = blobs(150, features=12)
    model = _model()
    logger = MLflowLogger(
        uri, experiment="digits", run_name="first", tags={"team": "ml"}, params={"data": {"rows": 150}}
    )
    history = model.fit(x, labels, epochs=3, batch_size=32, seed=7, validation_split=0.2, verbose=0, callbacks=[logger])

    client = mlflow.MlflowClient(uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "first"
    assert client.get_experiment(run.info.experiment_id).name == "digits"
    params = run.data.params
    expected = {"epochs": "3", "batch_size": "32", "steps": "4", "samples": "120", "shards": "1", "seed": "7"}
    assert {key: params[key] for key in expected} == expected
    assert params["workers"] == "1" and params["model.params"] == str(model.count_params()) == "259"
    assert (
        params["model.layers"] == "InputLayer(Nonex12) > Dense(16, relu) > Dense(3, softmax)"
        and params["model.dtype"] == "float64"
    )
    assert params["optimizer"] == "sgd" and params["optimizer.learning_rate"] == "0.05"
    assert params["optimizer.momentum"] == "0.9" and params["loss"] == "sparse_categorical_crossentropy"
    assert params["metrics"] == "accuracy" and params["data.rows"] == "150"
    assert run.data.tags["team"] == "ml" and run.data.tags["dtrain.version"] == dtrain.__version__

    logged = _metrics(client, logger.run_id)
    assert logged.pop("learning_rate") == [0.05] * 3
    assert logged == history.history  # every epoch's loss, metrics and val_*, exactly
    assert set(logged) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    again = _logged_model(client, logger.run_id, tmp_path / "download")
    np.testing.assert_array_equal(again.predict(x), model.predict(x))
    np.testing.assert_array_equal(again.get_weights()[0], model.get_weights()[0])


@pytest.mark.cluster
def test_two_workers_log_what_one_process_logs(tmp_path, mlflow):
    """With client= the callback runs on the client; the run equals one process's (same shards),
    the learning rate of a schedule included, though the client's optimizer does not step."""
    uri = (tmp_path / "mlruns").as_uri()
    x, labels = blobs(144, features=12)
    kwargs = dict(epochs=3, batch_size=24, seed=3, shards=2, verbose=0)
    local, distributed = _model(schedule=True), _model(schedule=True)
    one, two = MLflowLogger(uri, experiment="e", run_name="local"), MLflowLogger(uri, experiment="e")
    h_local = local.fit(x, labels, callbacks=[one], **kwargs)
    h_dist = distributed.fit(x, labels, client=shared_client(2), callbacks=[two], **kwargs)

    client = mlflow.MlflowClient(uri)
    m_local, m_dist = _metrics(client, one.run_id), _metrics(client, two.run_id)
    steps = 144 // 24
    rates = [0.1 * 0.5 ** ((epoch + 1) * steps / 3) for epoch in range(3)]
    np.testing.assert_allclose(m_local["learning_rate"], rates, rtol=1e-12)
    np.testing.assert_allclose(m_dist["learning_rate"], rates, rtol=1e-12)
    assert {k: v for k, v in m_local.items() if k != "learning_rate"} == h_local.history
    assert {k: v for k, v in m_dist.items() if k != "learning_rate"} == h_dist.history
    np.testing.assert_allclose(m_dist["loss"], m_local["loss"], rtol=1e-9)
    p_local, p_dist = client.get_run(one.run_id).data.params, client.get_run(two.run_id).data.params
    assert p_dist.pop("workers") == "2" and p_local.pop("workers") == "1"
    assert p_dist == p_local
    assert client.get_run(two.run_id).info.status == "FINISHED"
    again = _logged_model(client, two.run_id, tmp_path / "download")
    np.testing.assert_array_equal(again.predict(x), distributed.predict(x))


def test_a_run_that_fails_ends_failed_and_keeps_its_epochs(tmp_path, mlflow):
    uri = (tmp_path / "mlruns").as_uri()
    x, labels = blobs(96, features=12)

    def fail_in_second_epoch(epoch, logs):
        if epoch == 1:
            raise RuntimeError("broken on purpose")

    logger = MLflowLogger(uri)
    with pytest.raises(RuntimeError, match="broken on purpose"):
        _model().fit(
            x, labels, epochs=4, verbose=0, callbacks=[logger, LambdaCallback(on_epoch_end=fail_in_second_epoch)]
        )
    client = mlflow.MlflowClient(uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FAILED" and run.info.experiment_id == "0"  # MLflow's Default experiment
    assert [m.step for m in client.get_metric_history(logger.run_id, "loss")] == [0, 1]
    assert client.list_artifacts(logger.run_id) == []  # no trained model: training did not end

    interrupted = MLflowLogger(uri)

    def interrupt(epoch, logs):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _model().fit(x, labels, epochs=2, verbose=0, callbacks=[interrupted, LambdaCallback(on_epoch_begin=interrupt)])
    assert client.get_run(interrupted.run_id).info.status == "KILLED"


def test_an_active_run_is_joined_and_left_to_its_owner(tmp_path, mlflow, monkeypatch):
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    x, labels = blobs(96, features=12)
    logger = MLflowLogger()
    with mlflow.start_run() as active:
        mlflow.log_param("mine", "yes")
        _model().fit(x, labels, epochs=2, verbose=0, callbacks=[logger])
        assert logger.run_id == active.info.run_id
        assert mlflow.MlflowClient(uri).get_run(active.info.run_id).info.status == "RUNNING"  # its owner ends it
    run = mlflow.MlflowClient(uri).get_run(active.info.run_id)
    assert run.info.status == "FINISHED" and run.data.params["mine"] == "yes" and run.data.params["epochs"] == "2"
    assert len(mlflow.MlflowClient(uri).get_metric_history(active.info.run_id, "loss")) == 2


def test_a_tracking_server_that_is_down_warns_once_and_training_goes_on(mlflow):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    x, labels = blobs(96, features=12)
    plain, logged = _model(), _model()
    logged.set_weights(plain.get_weights())
    plain.fit(x, labels, epochs=3, seed=1, verbose=0)
    started = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = logged.fit(x, labels, epochs=3, seed=1, verbose=0, callbacks=[MLflowLogger(uri, experiment="e")])
    took = time.monotonic() - started
    mine = [w for w in caught if "MLflow" in str(w.message)]
    assert len(mine) == 1 and mine[0].category is UserWarning
    assert uri in str(mine[0].message) and "refused" in str(mine[0].message).lower()
    assert len(history.history["loss"]) == 3 and took < 10, took  # (MLflow's own retries would take minutes)
    for a, b in zip(logged.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_tracking_server_that_never_answers_costs_at_most_the_timeout(mlflow):
    """A server that takes the connection and says nothing: training waits for it only at its
    end, ``timeout`` seconds at most, then warns and returns."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # (the kernel completes the connections; nobody reads or answers)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        x, labels = blobs(96, features=12)
        started = time.monotonic()
        with pytest.warns(UserWarning, match=f"MLflow at {uri} did not take this run's last records within 2 s"):
            _model().fit(x, labels, epochs=2, verbose=0, callbacks=[MLflowLogger(uri, timeout=2)])
        assert time.monotonic() - started < 6


def test_bad_arguments_are_refused_when_the_logger_is_made(mlflow):
    with pytest.raises(ValueError, match="MLflow cannot use the tracking URI 'nosuch://x'"):
        MLflowLogger("nosuch://x")
    with pytest.raises(ValueError, match="timeout"):
        MLflowLogger("file:///tmp/x", timeout=0)
    with pytest.raises(ValueError, match="experiment"):
        MLflowLogger("file:///tmp/x", experiment="")


def test_without_mlflow_the_logger_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as where it is not installed
    with pytest.raises(ImportError, match=r'pip install "dtrain\[mlflow\]"'):
        MLflowLogger()


def test_importing_dtrain_imports_no_mlflow():
    code = "import sys, dtrain, dtrain.callbacks, dtrain.jobs.tracking; print('mlflow' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


# -- job files ----------------------------------------------------------------------------------------


def _job_file(tmp_path, mlflow_section) -> str:
    spec = yaml.safe_load(SEED_JOB.read_text())
    spec["output"] = {"dir": str(tmp_path / "out"), "mlflow": mlflow_section}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_output_mlflow_is_resolved_with_its_defaults(tmp_path):
    job = load_job(_job_file(tmp_path, {"tracking_uri": "mlruns"}))
    assert job.mlflow == {"tracking_uri": str(tmp_path / "mlruns"), "experiment": "seed_network", "run_name": None}
    job = load_job(_job_file(tmp_path, {"tracking_uri": "http://mlflow:5000", "experiment": "x", "run_name": "r"}))
    assert job.mlflow == {"tracking_uri": "http://mlflow:5000", "experiment": "x", "run_name": "r"}
    assert load_job(SEED_JOB).mlflow is None
    assert load_job(_job_file(tmp_path, {"tracking_uri": "databricks"})).mlflow["tracking_uri"] == "databricks"


@pytest.mark.parametrize(
    "section, key, message",
    [
        (True, "output.mlflow", "expected a mapping with keys tracking_uri, experiment, run_name, got true"),
        ({"experiment": "x"}, "output.mlflow", "missing required key 'tracking_uri'"),
        ({"tracking_uri": 5000}, "output.mlflow.tracking_uri", "expected a tracking URI"),
        (
            {"tracking_uri": "http://m", "experiment_name": "x"},
            "output.mlflow.experiment_name",
            "did you mean 'experiment'?",
        ),
        ({"tracking_uri": "http://m", "experiment": ""}, "output.mlflow.experiment", "expected an experiment name"),
        ({"tracking_uri": "http://m", "run_name": ["a"]}, "output.mlflow.run_name", "expected a run name"),
    ],
)
def test_a_bad_output_mlflow_is_refused_naming_the_key(tmp_path, section, key, message):
    with pytest.raises(JobError) as caught:
        load_job(_job_file(tmp_path, section))
    (line,) = str(caught.value).splitlines()
    assert f": {key} (line " in line and message in line


def test_a_tracking_uri_mlflow_cannot_use_is_refused_at_submission(tmp_path, mlflow, monkeypatch):
    """What the job service checks before it queues a job (here MLflow 3's file store, not allowed)."""
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    job = load_job(_job_file(tmp_path, {"tracking_uri": "mlruns"}))
    with pytest.raises(JobError, match="output.mlflow.tracking_uri: MLflow cannot use the tracking URI .*ALLOW_FILE"):
        check_tracking(job)
    check_tracking(load_job(_job_file(tmp_path, {"tracking_uri": "http://127.0.0.1:9"})))  # (no server is asked)


def test_dtrain_validate_refuses_a_bad_output_mlflow():
    proc = dtrain_cli("validate", str(SEED_JOB), "--set", "output.mlflow={tracking_uri: 5}", "--json")
    assert proc.returncode == 2
    assert "output.mlflow.tracking_uri" in json_of(proc)["error"]


@pytest.fixture(scope="module")
def scheduler(mlflow):
    """A `dask scheduler` (whose MLflow may use a file store) and 2 `dask worker` processes."""
    with DaskProcesses(2, scheduler_env=FILE_STORE) as cluster:
        yield cluster.address


@pytest.mark.cluster
def test_a_job_logs_its_job_file_metrics_and_model(scheduler, tmp_path, mlflow):
    uri = (tmp_path / "mlruns").as_uri()
    out = tmp_path / "out"
    settings = f"output.mlflow={{tracking_uri: '{uri}', experiment: jobs}}"
    proc = dtrain_cli(
        "submit", str(SEED_JOB), "--scheduler", scheduler, "--json",
        "--set", f"output.dir={out}", "--set", "fit.epochs=2", "--set", settings,
    )  # fmt: skip
    result = json_of(proc)
    assert proc.returncode == 0 and result["state"] == "succeeded", proc.stderr

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("jobs")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == result["job_id"]
    assert run.data.tags["dtrain.job_id"] == result["job_id"] and run.data.tags["dtrain.job_name"] == "seed_network"
    params = run.data.params
    assert params["fit.epochs"] == "2" and params["model.layers.0.units"] == "64" and params["name"] == "seed_network"
    assert params["output.mlflow.tracking_uri"] == uri and params["cluster.workers"] == "null"
    assert params["data.validation.split"] == "0.2" and params["workers"] == "2" and params["epochs"] == "2"
    job_yaml = client.download_artifacts(run.info.run_id, "job.yaml", str(tmp_path / "dl"))
    assert open(job_yaml).read() == (Path(result["output"]) / "job.yaml").read_text()  # (the run's folder)
    logged = _metrics(client, run.info.run_id)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert logged[key] == [row[key] for row in result["history"]], key
    assert logged["learning_rate"] == [0.01, 0.01]  # sgd's default
    model = _logged_model(client, run.info.run_id, tmp_path / "dl")
    trained = dtrain.load_model(out)
    x = np.random.default_rng(0).standard_normal((20, 100)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(x), trained.predict(x))
    log = json_of(dtrain_cli("logs", result["job_id"], "--scheduler", scheduler, "--json"))
    assert any(f"mlflow: run {run.info.run_id}" in line["text"] for line in log["lines"])


@pytest.mark.cluster
def test_a_cancelled_job_ends_its_run_killed_with_the_epochs_it_did(scheduler, tmp_path, mlflow):
    uri = (tmp_path / "mlruns").as_uri()
    proc = dtrain_cli(
        "submit", str(SEED_JOB), "--scheduler", scheduler, "--detach", "--json", *long_job_args(tmp_path / "out"),
        "--set", f"output.mlflow={{tracking_uri: '{uri}'}}",
    )  # fmt: skip
    job_id = json_of(proc)["job_id"]
    deadline = time.monotonic() + 120
    while json_of(dtrain_cli("status", job_id, "--scheduler", scheduler, "--json"))["epoch"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    dtrain_cli("cancel", job_id, "--scheduler", scheduler)
    assert wait_for_state(scheduler, job_id, ("cancelled",))["state"] == "cancelled"
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("seed_network").experiment_id])
    assert run.info.status == "KILLED" and run.info.run_name == job_id
    assert len(client.get_metric_history(run.info.run_id, "loss")) >= 1
    assert client.list_artifacts(run.info.run_id, "model") == []


@pytest.mark.cluster
def test_a_scheduler_without_mlflow_refuses_such_a_job_at_submission(tmp_path):
    blocked = tmp_path / "blocked" / "mlflow"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'mlflow'\", name='mlflow')\n")
    path = os.pathsep.join(p for p in (str(blocked.parent), os.environ.get("PYTHONPATH", "")) if p)
    with DaskProcesses(1, scheduler_env={"PYTHONPATH": path}) as cluster:
        address = cluster.address
        proc = dtrain_cli(
            "submit", str(SEED_JOB), "--scheduler", address, "--json",
            "--set", f"output.dir={tmp_path / 'out'}", "--set", f"output.mlflow={{tracking_uri: '{tmp_path.as_uri()}'}}",
        )  # fmt: skip
        assert proc.returncode == 2, proc.stdout + proc.stderr
        error = json_of(proc)["error"]
        assert "output.mlflow" in error and 'pip install "dtrain[mlflow]"' in error
        listed = json_of(dtrain_cli("list", "--scheduler", address, "--json"))
        assert listed["jobs"] == []  # refused: never queued, no worker taken
    assert not (tmp_path / "out").exists()
