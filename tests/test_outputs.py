"""A job's output location: every file written (locally and on an fsspec filesystem) and
parseable, the model loadable from the location itself, and the report read back from it."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time

import numpy as np
import pytest
from conftest import blobs, small_model

import dtrain
from dtrain.jobs import outputs
from dtrain.jobs.outputs import format_summary, read_summary, write_outputs, write_record

fsspec = pytest.importorskip("fsspec")

EPOCHS = 4
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JOB_YAML = "name: tiny\nmodel:\n  layers: [16, 3]\ntraining:\n  epochs: 4\n"


def _record(**changes) -> dict:
    now = time.time()
    record = {
        "job_id": "job-0123abcd",
        "name": "tiny",
        "state": "succeeded",
        "epochs": EPOCHS,
        "submitted_at": now - 80,
        "started_at": now - 75,
        "ended_at": now,
        "workers": ["tcp://10.0.0.1:4001", "tcp://10.0.0.2:4001"],
        "device": "cpu",
        "error": None,
    }
    return {**record, **changes}


@pytest.fixture(scope="module")
def trained():
    """A tiny model trained with validation, and its history with step times as a 2-rank
    cluster fit records them (name -> (ranks, steps) seconds)."""
    x, y = blobs(200)
    model = small_model(20)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, batch_size=50, epochs=EPOCHS, validation_split=0.2, seed=1, verbose=0)
    steps = history.params["steps"]
    rng = np.random.default_rng(0)
    history.step_times = {
        name: rng.uniform(0.001, 0.01, size=(2, EPOCHS * steps))
        for name in ("compute", "communication", "waiting", "overhead", "step")
    }
    return model, history


@pytest.fixture
def memory_output():
    url = f"memory://dtrain-test-outputs/{os.urandom(4).hex()}"
    yield url
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _check_files(read, trained, files_written: dict[str, str]) -> None:
    """Every file present and parseable; ``read(name)`` gives a file's bytes."""
    model, history = trained
    assert set(files_written) == {"model", "history", "steps", "job", "plot", "result"}

    rows = _read_csv(read("history.csv").decode())
    assert len(rows) == EPOCHS and list(rows[0]) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"]
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    np.testing.assert_array_equal([float(r["val_loss"]) for r in rows], history.history["val_loss"])  # exact: repr

    steps = _read_csv(read("steps.csv").decode())
    per_epoch = history.params["steps"]
    assert len(steps) == EPOCHS * per_epoch
    assert list(steps[0]) == ["epoch", "step", "step_ms", "compute_ms", "communication_ms", "waiting_ms", "overhead_ms"]
    assert [(int(r["epoch"]), int(r["step"])) for r in steps[: per_epoch + 1]] == [
        (1, s) for s in range(1, per_epoch + 1)
    ] + [(2, 1)]
    times = history.step_times
    np.testing.assert_allclose([float(r["step_ms"]) for r in steps], times["step"].max(axis=0) * 1e3, atol=1e-4)
    np.testing.assert_allclose(
        [float(r["compute_ms"]) for r in steps], np.median(times["compute"], axis=0) * 1e3, atol=1e-4
    )

    assert read("job.yaml").decode() == JOB_YAML
    png = read("training.png")
    assert png.startswith(PNG_MAGIC)
    from matplotlib import image

    pixels = image.imread(io.BytesIO(png), format="png")
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 400
    assert pixels.std() > 0.05  # something is drawn

    result = json.loads(read("result.json"))
    assert result["job_id"] == "job-0123abcd" and result["state"] == "succeeded"
    assert result["final"] == {k: v[-1] for k, v in history.history.items()}
    assert result["files"] == {
        "model": "model.safetensors",
        "history": "history.csv",
        "steps": "steps.csv",
        "job": "job.yaml",
        "plot": "training.png",
        "result": "result.json",
    }


def _same_weights(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights())) and len(a.get_weights()) == len(
        b.get_weights()
    )


def test_outputs_in_a_new_local_directory(tmp_path, trained):
    out = tmp_path / "runs" / "tiny"  # created, parents included
    pyplot_loaded = "matplotlib.pyplot" in sys.modules
    files = write_outputs(out, model=trained[0], history=trained[1], job_yaml=JOB_YAML, record=_record())
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_loaded  # the user's plotting session is left alone
    assert files["model"] == str(out / "model.safetensors") and files["result"] == str(out / "result.json")
    _check_files(lambda name: (out / name).read_bytes(), trained, files)
    assert sorted(os.listdir(out)) == sorted(
        ["model.safetensors", "history.csv", "steps.csv", "job.yaml", "training.png", "result.json"]
    )
    loaded = dtrain.load_model(out)  # the output directory itself
    assert _same_weights(loaded, trained[0]) and loaded.optimizer.iterations == trained[0].optimizer.iterations
    # written again: replaced in place, no temporary files left behind
    write_outputs(str(out), model=trained[0], history=trained[1], job_yaml=JOB_YAML, record=_record(state="succeeded"))
    assert len(os.listdir(out)) == 6


def test_outputs_on_an_fsspec_url(memory_output, trained):
    files = write_outputs(memory_output, model=trained[0], history=trained[1], job_yaml=JOB_YAML, record=_record())
    fs, root = fsspec.core.url_to_fs(memory_output)
    assert all(location.startswith("memory://") for location in files.values())
    _check_files(lambda name: fs.cat_file(f"{root}/{name}"), trained, files)
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)) == sorted(
        ["model.safetensors", "history.csv", "steps.csv", "job.yaml", "training.png", "result.json"]
    )  # no temporary names left
    for where in (memory_output, memory_output + "/", files["model"]):  # the directory URL or the file's
        assert _same_weights(dtrain.load_model(where), trained[0])
    assert _same_weights(dtrain.load_model(memory_output), dtrain.load_model(files["model"]))


def test_a_fit_without_step_times_writes_no_steps_file(tmp_path):
    x, y = blobs(60)
    model = small_model(20)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    history = model.fit(x, y, epochs=2, verbose=0, seed=0)  # one process: no step times, no val_
    files = write_outputs(tmp_path, model=model, history=history, job_yaml="{}", record=_record(epochs=2))
    assert "steps" not in files and not (tmp_path / "steps.csv").exists()
    assert _read_csv((tmp_path / "history.csv").read_text())[1].keys() == {"epoch", "loss", "seconds"}
    assert (tmp_path / "training.png").read_bytes().startswith(PNG_MAGIC)
    summary = read_summary(tmp_path)
    assert summary["best"] == {} and summary["median_step_ms"] is None and "steps.csv" not in summary["files"]


def test_epoch_seconds_come_from_the_history_or_the_record(tmp_path, trained):
    model, history = trained
    rows = [{"epoch": e + 1, "seconds": 1.5 + e} for e in range(EPOCHS)]
    write_outputs(tmp_path / "a", model=model, history=history, job_yaml="", record=_record(history=rows))
    assert [r["seconds"] for r in _read_csv((tmp_path / "a" / "history.csv").read_text())] == [
        "1.5",
        "2.5",
        "3.5",
        "4.5",
    ]
    history.epoch_seconds = [0.25] * EPOCHS
    try:
        write_outputs(tmp_path / "b", model=model, history=history, job_yaml="", record=_record())
    finally:
        del history.epoch_seconds
    assert {r["seconds"] for r in _read_csv((tmp_path / "b" / "history.csv").read_text())} == {"0.25"}


def test_summary_reads_back_the_job(tmp_path, trained):
    model, history = trained
    write_outputs(tmp_path, model=model, history=history, job_yaml=JOB_YAML, record=_record())
    summary = read_summary(str(tmp_path))
    json.dumps(summary)  # what `dtrain report --json` prints
    assert (summary["name"], summary["job_id"], summary["state"]) == ("tiny", "job-0123abcd", "succeeded")
    assert summary["epochs"] == summary["epochs_planned"] == EPOCHS and summary["duration_s"] == pytest.approx(
        75, abs=1
    )
    assert summary["final"] == {k: v[-1] for k, v in history.history.items()}
    val_loss, val_acc = history.history["val_loss"], history.history["val_accuracy"]
    assert summary["best"]["val_loss"] == {"value": min(val_loss), "epoch": int(np.argmin(val_loss)) + 1}
    assert summary["best"]["val_accuracy"] == {"value": max(val_acc), "epoch": int(np.argmax(val_acc)) + 1}
    assert summary["median_step_ms"] == pytest.approx(np.median(history.step_times["step"].max(axis=0)) * 1e3, abs=1e-3)
    assert summary["files"] == [
        "result.json",
        "model.safetensors",
        "history.csv",
        "steps.csv",
        "job.yaml",
        "training.png",
    ]
    assert [row["epoch"] for row in summary["history"]] == [1, 2, 3, 4]

    text = format_summary(summary)
    lines = text.splitlines()
    assert lines[0].split() == ["job", "tiny", "(job-0123abcd)"] and lines[1].split() == ["state", "succeeded"]
    assert f"val_loss {min(val_loss):.4f} (epoch {int(np.argmin(val_loss)) + 1})" in text
    assert "workers  2: tcp://10.0.0.1:4001, tcp://10.0.0.2:4001 (cpu)" in text and "ms (median)" in text
    table = lines[lines.index("") + 1 :]
    assert table[0].split() == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]  # no seconds: none known
    assert len(table) == 1 + EPOCHS and table[-1].split()[0] == "4"


def test_summary_of_a_failed_job_and_of_a_long_one(memory_output):
    write_record(memory_output, _record(state="failed", error="WorkerLostError: worker tcp://x left", ended_at=None))
    summary = read_summary(memory_output)
    assert summary["state"] == "failed" and summary["epochs"] == 0 and summary["files"] == ["result.json"]
    text = format_summary(summary)
    assert "error    WorkerLostError: worker tcp://x left" in text and "epoch" not in text.splitlines()[-1]

    class LongHistory:  # 40 epochs: the table shows the start and the end
        history = {"loss": list(np.linspace(2, 0.1, 40)), "val_loss": list(np.linspace(2.1, 0.3, 40))}
        epoch = list(range(40))
        params = {"steps": 3}

    fs, root = fsspec.core.url_to_fs(memory_output)
    fs.pipe_file(f"{root}/history.csv", outputs._history_csv(LongHistory, {}).encode())
    table = format_summary(read_summary(memory_output)).split("\n\n")[1].splitlines()
    assert len(table) == 1 + outputs._TABLE_ROWS and table[4].split() == ["...", "...", "..."]
    assert [row.split()[0] for row in table[1:4]] + [table[-1].split()[0]] == ["1", "2", "3", "40"]


def test_write_record_replaces_result_json_alone(tmp_path):
    location = write_record(tmp_path / "new" / "dir", _record(state="running", ended_at=None))
    assert location == str(tmp_path / "new" / "dir" / "result.json") and os.listdir(tmp_path / "new" / "dir") == [
        "result.json"
    ]
    write_record(str(tmp_path / "new" / "dir"), _record(state="cancelled", score=np.float32(0.5), loss=float("nan")))
    record = json.loads((tmp_path / "new" / "dir" / "result.json").read_text())  # strict JSON: NaN -> null
    assert record["state"] == "cancelled" and record["score"] == 0.5 and record["loss"] is None
    assert os.listdir(tmp_path / "new" / "dir") == ["result.json"]


def test_errors_say_what_output_should_be(tmp_path, trained):
    with pytest.raises(
        FileNotFoundError, match=r"result.json does not exist, so .* is not a job's output location. OUTPUT should be"
    ):
        read_summary(tmp_path)
    with pytest.raises(FileNotFoundError, match="result.json does not exist"):
        read_summary("memory://dtrain-test-outputs/nothing-here")
    (tmp_path / "result.json").write_text("{not json")
    with pytest.raises(ValueError, match="result.json is not valid JSON"):
        read_summary(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file; give a directory"):
        write_record(tmp_path / "file", _record())
    with pytest.raises(FileNotFoundError, match="No model file at 'memory:///dtrain-test-outputs/nothing-here'"):
        dtrain.load_model("memory://dtrain-test-outputs/nothing-here")


def test_load_model_checks_a_downloaded_file_like_a_local_one(memory_output, trained, tmp_path):
    fs, root = fsspec.core.url_to_fs(memory_output)
    for content, message in (
        (b"", "do not hold a safetensors header"),
        (b"\x10" + b"\0" * 7 + b"{not json}......", "not a readable safetensors file"),
    ):
        fs.pipe_file(f"{root}/model.safetensors", content)
        with pytest.raises(ValueError, match=f"is not a dtrain model file: .*{message}"):
            dtrain.load_model(memory_output)
    from safetensors.numpy import save

    fs.pipe_file(f"{root}/model.safetensors", save({"w": np.zeros(2, np.float32)}, metadata={"format": "pt"}))
    with pytest.raises(ValueError, match="format='pt'"):
        dtrain.load_model(memory_output)
    from safetensors import safe_open

    trained[0].save(tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), framework="numpy") as f:
        metadata, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    fs.pipe_file(f"{root}/model.safetensors", save(tensors, metadata={**metadata, "format_version": "99"}))
    with pytest.raises(ValueError, match="format version '99'.*reads version 1"):
        dtrain.load_model(memory_output)
    tensors["weights.0000"] = tensors["weights.0000"][:, :5]
    fs.pipe_file(f"{root}/model.safetensors", save(tensors, metadata=metadata))
    with pytest.raises(ValueError, match="damaged or inconsistent.*shape"):
        dtrain.load_model(memory_output + "/model.safetensors")
