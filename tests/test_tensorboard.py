"""dtrain.callbacks.TensorBoard and the event files of dtrain.tensorboard (issue 19), read back with
TensorBoard's own reader: Keras 3's tags and layout, in one process, with client= on 2 workers,
on an fsspec URL, in every job's output (equal to its history.csv); a folder that cannot be
written is an error before any step; Keras' arguments dtrain cannot honour are refused by name."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import blobs, shared_client, small_model
from test_jobs import SEED_JOB, dtrain_cli, json_of

import dtrain
from dtrain import tensorboard
from dtrain.callbacks import LearningRateScheduler, TensorBoard
from dtrain.optimizers import SGD
from dtrain.optimizers.schedules import ExponentialDecay

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

EPOCHS, BATCH = 3, 40  # 480 training rows (validation_split=0.2 of 600): 12 steps an epoch


def read_run(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a TensorBoard run folder, by TensorBoard's reader: tag -> [(step, value)]."""
    reader = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0})
    reader.Reload()
    return {tag: [(e.step, e.value) for e in reader.Scalars(tag)] for tag in reader.Tags()["scalars"]}


def f32(values) -> list[float]:
    """Values as TensorBoard keeps scalars (float32)."""
    return [float(np.float32(v)) for v in values]


def compiled(optimizer=None, **kwargs) -> dtrain.Sequential:
    model = small_model(**kwargs)
    model.compile(optimizer=optimizer or SGD(0.05), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def check_epochs(log_dir, history: dict[str, list[float]], steps: int) -> dict[str, dict]:
    """The epoch scalars are the history's, in Keras' layout; returns both runs' scalars."""
    train, validation = read_run(os.path.join(log_dir, "train")), read_run(os.path.join(log_dir, "validation"))
    epochs = list(range(len(history["loss"])))
    for key, values in history.items():
        run, name = (validation, key[4:]) if key.startswith("val_") else (train, key)
        assert run[f"epoch_{name}"] == list(zip(epochs, f32(values))), key
        if run is validation:  # Keras' evaluation tags, at the step count of each epoch's end
            assert run[f"evaluation_{name}_vs_iterations"] == [
                ((e + 1) * steps, v) for e, v in zip(epochs, f32(values))
            ]
    return {"train": train, "validation": validation}


# -- the event files ------------------------------------------------------------------------------------


def test_records_carry_tensorboards_own_checksums():
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    assert tensorboard.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    rng = np.random.default_rng(0)
    for size in (0, 1, 7, 8, 100, 4096):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert tensorboard.masked_crc32c(data) == masked_crc32c(data)


def test_dtrain_writes_event_files_without_tensorflow_or_tensorboard(tmp_path):
    """In a process where importing tensorboard or tensorflow fails, fit writes; this process reads."""
    program = """
import sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorboard", "tensorflow"):
            raise ImportError(f"{name} is not to be imported")

sys.meta_path.insert(0, Refuse())
import numpy as np
import dtrain
from dtrain.callbacks import TensorBoard
from dtrain.layers import Dense

model = dtrain.Sequential([Dense(2, input_dim=3)])
model.compile(optimizer="sgd", loss="mse")
history = model.fit(np.ones((8, 3)), np.zeros((8, 2)), epochs=2, verbose=0, callbacks=[TensorBoard(sys.argv[1])])
print(history.history["loss"])
"""
    proc = subprocess.run(
        [sys.executable, "-c", program, str(tmp_path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    losses = json.loads(proc.stdout.strip().splitlines()[-1])
    assert read_run(tmp_path / "train")["epoch_loss"] == list(zip([0, 1], f32(losses)))
    assert all(name.startswith("events.out.tfevents.") for name in os.listdir(tmp_path / "train"))


# -- one process -----------------------------------------------------------------------------------------


def test_one_process_writes_keras_tags_and_layout(tmp_path):
    x, y = blobs(600)
    model = compiled()
    callback = TensorBoard(log_dir=tmp_path, update_freq=3, write_steps_per_second=True)
    history = model.fit(
        x, y, batch_size=BATCH, epochs=EPOCHS, validation_split=0.2, seed=0, verbose=0, callbacks=[callback]
    )
    steps = history.params["steps"]
    assert steps == 12
    runs = check_epochs(tmp_path, history.history, steps)
    train = runs["train"]
    assert train["epoch_learning_rate"] == list(zip(range(EPOCHS), f32([0.05] * EPOCHS)))
    assert [s for s, _ in train["epoch_steps_per_second"]] == list(range(EPOCHS))
    # update_freq=3: the running figures every 3rd step, counted from the run's start
    assert [s for s, _ in train["batch_loss"]] == list(range(3, EPOCHS * steps + 1, 3))
    assert [s for s, _ in train["batch_accuracy"]] == [s for s, _ in train["batch_loss"]]
    assert [s for s, _ in train["batch_steps_per_second"]] == [s for s, _ in train["batch_loss"]]
    assert all(v > 0 for _, v in train["batch_steps_per_second"] + train["epoch_steps_per_second"])
    # An epoch's last step (a multiple of 3) shows the running loss of the whole epoch: the epoch's loss.
    at = dict(train["batch_loss"])
    assert [at[(e + 1) * steps] for e in range(EPOCHS)] == f32(history.history["loss"])
    # one process records no step times: no step_time/ tags
    assert not [tag for tag in train if tag.startswith(("step_time/", "timing/"))]
    assert set(train) == {
        *(f"epoch_{k}" for k in ("loss", "accuracy", "learning_rate", "steps_per_second")),
        *(f"batch_{k}" for k in ("loss", "accuracy", "steps_per_second")),
    }


def test_update_freq_epoch_writes_epochs_only_and_write_graph_the_model(tmp_path):
    x, y = blobs(600)
    model = compiled()
    model.fit(x, y, batch_size=BATCH, epochs=2, seed=0, verbose=0, callbacks=[TensorBoard(tmp_path)])
    assert set(read_run(tmp_path / "train")) == {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"}
    assert not (tmp_path / "validation").exists()  # no validation data: no validation run, as Keras
    reader = event_accumulator.EventAccumulator(str(tmp_path / "train"))
    reader.Reload()
    (written,) = reader.Tensors("keras")  # Keras' conceptual graph: the model's JSON, for the Graphs tab
    assert written.step == 0 and json.loads(written.tensor_proto.string_val[0]) == json.loads(model.to_json())
    from tensorboard.plugins.graph import keras_util

    graph = keras_util.keras_model_to_graph_def(json.loads(written.tensor_proto.string_val[0]))
    drawn = [node.name.split("/")[-1] for node in graph.node]  # (Keras' JSON starts with its InputLayer)
    assert drawn[-len(model.layers) :] == [layer.name for layer in model.layers]
    # write_graph=False: no graph
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[TensorBoard(tmp_path / "b", write_graph=False)])
    reader = event_accumulator.EventAccumulator(str(tmp_path / "b" / "train"))
    reader.Reload()
    assert reader.Tags()["tensors"] == []


def test_the_learning_rate_is_logged_as_it_changes(tmp_path):
    x, y = blobs(600)
    model = compiled()
    halve = LearningRateScheduler(lambda epoch, lr: lr if epoch == 0 else lr * 0.5)
    history = model.fit(
        x, y, batch_size=BATCH, epochs=EPOCHS, seed=0, verbose=0, callbacks=[halve, TensorBoard(tmp_path)]
    )
    assert read_run(tmp_path / "train")["epoch_learning_rate"] == list(
        zip(range(EPOCHS), f32(history.history["learning_rate"]))
    )
    assert f32(history.history["learning_rate"]) == f32([0.05, 0.025, 0.0125])


def test_batch_reports_are_written_as_they_pass_multiples_of_update_freq_and_never_twice(tmp_path):
    """Driven by hand as the supervisor drives it with client=: sparse reports of the step within
    the epoch; after a restart, an epoch's reports come again from an earlier step."""
    model = compiled()
    model.build()
    callback = TensorBoard(tmp_path, update_freq=4, write_graph=False)
    callback.set_model(model)
    callback.set_params({"steps": 10})
    callback.on_train_begin()
    callback.on_epoch_begin(0)
    for batch in (2, 4, 6, 3, 5, 8, 9):  # steps 3, 5, 7, then 4 and 6 again (a restart), 9, 10
        callback.on_train_batch_end(batch, {"loss": float(batch)})
    callback.on_epoch_begin(1)
    callback.on_train_batch_end(1, {"loss": 11.0})  # step 12
    callback.on_train_end()
    assert read_run(tmp_path / "train")["batch_loss"] == [(5, 4.0), (9, 8.0), (12, 11.0)]


# -- with client= on 2 workers -------------------------------------------------------------------------


@pytest.mark.cluster
def test_on_two_workers_the_callback_writes_epochs_reports_and_the_step_time_breakdown(tmp_path):
    client = shared_client(2)
    x, y = blobs(600)
    schedule = ExponentialDecay(0.1, decay_steps=5, decay_rate=0.5)
    runs = {}
    for where, kwargs in (("one", {"shards": 2}), ("two", {"client": client})):
        model = compiled(SGD(schedule))
        callback = TensorBoard(tmp_path / where, update_freq=1)
        history = model.fit(
            x,
            y,
            batch_size=BATCH,
            epochs=EPOCHS,
            validation_split=0.2,
            seed=0,
            verbose=0,
            callbacks=[callback],
            **kwargs,
        )
        runs[where] = (history, check_epochs(tmp_path / where, history.history, 12))
    history, scalars = runs["two"]
    train = scalars["train"]
    # a schedule's rate after each epoch, as one process logs it (the workers count the steps there)
    expected = f32([schedule((e + 1) * 12) for e in range(EPOCHS)])
    assert train["epoch_learning_rate"] == list(zip(range(EPOCHS), expected))
    assert runs["one"][1]["train"]["epoch_learning_rate"] == train["epoch_learning_rate"]
    # batch reports: rank 0's, as they arrived (every 0.25 s, and each epoch's last step), in step order
    reported = [s for s, _ in train["batch_loss"]]
    assert reported == sorted(set(reported)) and set(range(12, EPOCHS * 12 + 1, 12)) <= set(reported)
    assert all(1 <= s <= EPOCHS * 12 for s in reported)
    # the step-time breakdown: at each recorded step, the median over the workers (step: the slowest)
    times = history.step_times
    steps = [int(p) + 1 for p in times["position"]]
    assert steps == list(range(1, EPOCHS * 12 + 1))
    for part in ("compute", "communication", "waiting", "overhead"):
        assert train[f"step_time/{part}_ms"] == list(zip(steps, f32(np.median(times[part], axis=0) * 1e3))), part
    assert train["step_time/step_ms"] == list(zip(steps, f32(times["step"].max(axis=0) * 1e3)))
    for name, value in history.timing.items():
        assert train[f"timing/{name}"] == [(steps[-1], f32([value])[0])], name


# -- where the files go --------------------------------------------------------------------------------


def test_an_fsspec_url_gets_a_whole_file_at_every_flush(tmp_path):
    import fsspec

    url = f"memory://tensorboard-{uuid.uuid4().hex}/logs"
    x, y = blobs(600)
    model = compiled()
    history = model.fit(
        x, y, batch_size=BATCH, epochs=EPOCHS, validation_split=0.2, seed=0, verbose=0, callbacks=[TensorBoard(url)]
    )
    fs = fsspec.filesystem("memory")
    try:
        names = [path.rsplit("/", 1)[-1] for path in fs.ls(url + "/train", detail=False)]
        # the file's first event (written as training starts), the model (write_graph), each epoch's end
        assert len(names) == 2 + EPOCHS and all(n.startswith("events.out.tfevents.") for n in names)
        assert not [n for n in names if n.startswith(".")]  # no temporary file left
        check_epochs(url, history.history, 12)  # TensorBoard reads the URL itself
    finally:
        fs.rm(url.split("/logs")[0], recursive=True)


@pytest.mark.parametrize("where", ["one process", pytest.param("2 workers", marks=pytest.mark.cluster)])
def test_a_log_dir_that_cannot_be_written_is_an_error_before_any_step(tmp_path, where):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    x, y = blobs(600)
    model = compiled()
    before = model.get_weights()
    kwargs = {"client": shared_client(2)} if where == "2 workers" else {}
    with pytest.raises(OSError, match=r"TensorBoard cannot write its event files to .*a-file/logs/train"):
        model.fit(
            x, y, batch_size=BATCH, epochs=2, seed=0, verbose=0, callbacks=[TensorBoard(blocker / "logs")], **kwargs
        )
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert model.optimizer.iterations == 0


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"histogram_freq": 1}, "histogram_freq=1"),
        ({"write_images": True}, "write_images=True"),
        ({"profile_batch": (2, 5)}, "profile_batch=(2, 5)"),
        ({"embeddings_freq": 1}, "embeddings_freq=1"),
        ({"embeddings_metadata": "meta.tsv"}, "embeddings_metadata='meta.tsv'"),
    ],
)
def test_keras_arguments_dtrain_cannot_honour_are_refused_by_name(kwargs, named):
    with pytest.raises(ValueError, match=f"TensorBoard cannot honour {named}".replace("(", r"\(").replace(")", r"\)")):
        TensorBoard(**kwargs)


@pytest.mark.parametrize("update_freq", [0, -2, "step", 1.5, True])
def test_a_bad_update_freq_is_refused(update_freq):
    with pytest.raises(ValueError, match="update_freq 'epoch', 'batch' or an integer >= 1"):
        TensorBoard(update_freq=update_freq)


# -- every job writes OUTPUT/tensorboard -------------------------------------------------------------------


@pytest.mark.cluster
def test_a_job_writes_tensorboard_files_equal_to_its_history_csv(scheduler, tmp_path):
    out = tmp_path / "job"
    proc = dtrain_cli(
        "submit",
        str(SEED_JOB),
        "--scheduler",
        scheduler,
        "--json",
        "--set",
        f"output.dir={out}",
        "--set",
        "fit.epochs=2",
    )
    assert proc.returncode == 0, proc.stderr
    assert json_of(proc)["state"] == "succeeded"
    out = Path(json_of(proc)["output"])  # the run's own folder in output.dir
    with open(out / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    history = {key: [float(row[key]) for row in rows] for key in rows[0] if key not in ("epoch", "seconds")}
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history)
    with open(out / "steps.csv", newline="") as f:
        steps = [(int(row["epoch"]), int(row["step"])) for row in csv.DictReader(f)]
    per_epoch = max(step for _, step in steps)
    scalars = check_epochs(out / "tensorboard", history, per_epoch)
    train = scalars["train"]
    assert train["epoch_learning_rate"] == list(zip([0, 1], f32([0.01, 0.01])))  # the seed job's SGD
    assert train["batch_loss"] and [s for s, _ in train["step_time/compute_ms"]] == [
        (epoch - 1) * per_epoch + step for epoch, step in steps
    ]
