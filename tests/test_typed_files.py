"""Files are checked against what they claim (issue 16): a model or checkpoint whose header
declares another dtype over the bytes, a missing optimizer state, a position its data plan
cannot reach, a FIFO or a folder where a file should be, an oversized `latest`. Each is refused
(a model) or skipped with a warning naming the file and why (a checkpoint), never loaded as
garbage or waited on for ever."""

from __future__ import annotations

import json
import os
import struct
import time
import warnings

import numpy as np
import pytest

import dtrain
from dtrain.checkpoints import Checkpoint, CheckpointWarning, load_latest, write_checkpoint
from dtrain.layers import Dense


def trained_model():
    model = dtrain.Sequential([Dense(4, activation="relu", input_dim=3), Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(20, 3)).astype("float32")
    y = np.eye(2, dtype="float32")[np.arange(20) % 2]
    model.fit(x, y, epochs=1, batch_size=5, verbose=0, seed=0)
    return model


def _rewrite_header(path, change):
    """Rewrite a safetensors file's JSON header with ``change(header)`` (the data bytes kept)."""
    data = path.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + size])
    change(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + size :])


def test_a_model_whose_header_declares_integers_over_float_bytes_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    trained_model().save(path)
    _rewrite_header(path, lambda h: h["weights.0000"].update(dtype="I32"))
    with pytest.raises(ValueError, match=r"array 'weights.0000' is int32, but the model is float32"):
        dtrain.load_model(path)


def test_a_model_saved_with_its_optimizer_state_but_without_the_arrays_is_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    path = tmp_path / "m.safetensors"
    trained_model().save(path)
    with safe_open(str(path), framework="numpy") as f:
        metadata = f.metadata()
    tensors = {k: v for k, v in load_file(str(path)).items() if not k.startswith("optimizer.")}
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ValueError, match="the optimizer state is included, but the file holds none"):
        dtrain.load_model(path)
    left_out = tmp_path / "without.safetensors"  # the writer's choice: loads, with a fresh optimizer
    trained_model().save(left_out, include_optimizer=False)
    assert dtrain.load_model(left_out).optimizer.iterations == 0


def test_a_fifo_in_place_of_a_model_file_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "m.safetensors"
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(ValueError, match="not a regular file"):
        dtrain.load_model(fifo)
    assert time.monotonic() - start < 5


META = {"dtype": "float32", "plan": {"rows": 100, "batch_size": 10, "shards": 1, "seed": 0, "shuffle": True}}


def _good(global_step: int, **changes) -> Checkpoint:
    epoch, step = divmod(global_step, 10)
    fields = dict(
        arrays={"params": np.arange(6, dtype=np.float32), "optimizer.iterations": np.array(global_step, np.int64)},
        epoch=epoch,
        step=step,
        global_step=global_step,
        meta={**META, "history": [{"loss": 1.0}] * epoch},
    )
    return Checkpoint(**{**fields, **changes})


@pytest.mark.parametrize(
    "bad, reason",
    [
        (
            dict(arrays={"params": np.arange(6, dtype=np.int32), "optimizer.iterations": np.array(30)}),
            "array 'params' is int32, but the model is float32",
        ),
        (
            dict(arrays={"params": np.zeros(6, np.float32), "optimizer.iterations": np.array(1.5)}),
            "array 'optimizer.iterations' is float64, expected an integer count",
        ),
        (
            dict(epoch=10**12 // 10, step=0, meta={**META, "history": [{"loss": 1.0}] * 3}),
            "holds the logs of 3 finished epochs",
        ),
        (dict(epoch=2, step=10, meta={**META, "history": [{"loss": 1.0}] * 2}), "is not one its data plan"),
    ],
)
def test_a_checkpoint_that_lies_is_skipped_for_the_one_before(tmp_path, bad, reason):
    write_checkpoint(tmp_path, _good(20))
    write_checkpoint(tmp_path, _good(30, **bad))
    with pytest.warns(CheckpointWarning, match=reason):
        assert load_latest(tmp_path).global_step == 20


def test_a_fifo_or_a_folder_in_a_checkpoint_folder_is_skipped_not_waited_on(tmp_path):
    write_checkpoint(tmp_path, _good(20))
    write_checkpoint(tmp_path, _good(30))
    manifest = tmp_path / "ckpt-0000000030.json"
    manifest.unlink()
    os.mkfifo(manifest)
    (tmp_path / "latest").unlink()
    (tmp_path / "latest").mkdir()
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_latest(tmp_path).global_step == 20
    assert time.monotonic() - start < 5
    messages = " ".join(str(w.message) for w in caught)
    assert "latest cannot be read" in messages and "not a regular file" in messages, messages


def test_a_huge_latest_is_read_in_part_and_quoted_in_part(tmp_path):
    write_checkpoint(tmp_path, _good(20))
    (tmp_path / "latest").write_bytes(b"x" * (100 << 20))
    with pytest.warns(CheckpointWarning) as caught:
        assert load_latest(tmp_path).global_step == 20
    assert all(len(str(w.message)) < 600 for w in caught)
