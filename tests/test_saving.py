"""model.save / dtrain.load_model: a safetensors file (nothing in it is executed) that brings back
the architecture, weights, compile settings and optimizer state; anything else is refused."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
from conftest import blobs, one_hot, small_model

import dtrain
from dtrain import optimizers
from dtrain.layers import Dense
from dtrain.models import Sequential

safetensors_numpy = pytest.importorskip("safetensors.numpy")


def _trained(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=("accuracy",), dtype=None, epochs=2):
    x, labels = blobs(96)
    model = small_model(dtype=dtype)
    model.compile(optimizer=optimizer, loss=loss, metrics=list(metrics))
    y = one_hot(labels, 3) if loss == "categorical_crossentropy" else labels
    model.fit(x, y, epochs=epochs, batch_size=16, verbose=0, seed=0)
    return model, x, y


def test_save_and_load_give_identical_predictions_weights_and_settings(tmp_path):
    model, x, y = _trained(optimizer=optimizers.Adam(learning_rate=0.003, beta_1=0.8))
    path = tmp_path / "m.safetensors"
    model.save(path)
    loaded = dtrain.load_model(path)
    assert isinstance(loaded, Sequential)
    assert loaded.get_config() == model.get_config()
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert isinstance(loaded.optimizer, optimizers.Adam)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert loaded.optimizer.iterations == model.optimizer.iterations == 12
    assert type(loaded.loss) is type(model.loss)
    assert [m.name for m in loaded.metrics] == ["accuracy"]
    assert loaded.evaluate(x, y) == model.evaluate(x, y)
    for k, v in model.optimizer.slots.items():
        np.testing.assert_array_equal(loaded.optimizer.slots[k], v)
    # The loaded model owns its flat buffers like any other.
    assert all(np.shares_memory(layer.kernel, loaded.params) for layer in loaded.layers)


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda: optimizers.SGD(learning_rate=0.05, momentum=0.9),
        lambda: optimizers.SGD(learning_rate=0.05, momentum=0.9, nesterov=True),
        lambda: optimizers.Adam(learning_rate=0.01),
        lambda: optimizers.RMSprop(learning_rate=0.01, momentum=0.5),
    ],
)
def test_continued_training_equals_uninterrupted_training_bitwise(tmp_path, optimizer):
    x, labels = blobs(96)

    def fresh():
        model = small_model()
        model.compile(optimizer=optimizer(), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.build(seed=1)
        return model

    straight = fresh()
    straight_history = straight.fit(x, labels, epochs=3, batch_size=16, verbose=0, seed=7).history

    first = fresh()
    h1 = first.fit(x, labels, epochs=1, batch_size=16, verbose=0, seed=7).history
    first.save(tmp_path / "ckpt.safetensors")
    resumed = dtrain.load_model(tmp_path / "ckpt.safetensors")
    h2 = resumed.fit(x, labels, epochs=3, initial_epoch=1, batch_size=16, verbose=0, seed=7).history

    for a, b in zip(resumed.get_weights(), straight.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert h1["loss"] + h2["loss"] == straight_history["loss"]


def test_without_optimizer_state_training_restarts_the_optimizer(tmp_path):
    model, x, y = _trained(optimizer=optimizers.SGD(0.05, momentum=0.9))
    model.save(tmp_path / "m.safetensors", include_optimizer=False)
    loaded = dtrain.load_model(tmp_path / "m.safetensors")
    assert loaded.optimizer.iterations == 0
    assert not loaded.optimizer.slots["momentum"].any()
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_path_can_be_a_directory(tmp_path):
    model, x, _ = _trained()
    folder = tmp_path / "run"
    folder.mkdir()
    model.save(folder)
    assert (folder / "model.safetensors").is_file()
    assert sorted(os.listdir(folder)) == ["model.safetensors"]  # no temporary files left behind
    np.testing.assert_array_equal(dtrain.load_model(folder).predict(x), model.predict(x))
    np.testing.assert_array_equal(dtrain.load_model(str(folder / "model.safetensors")).predict(x), model.predict(x))


def test_saving_overwrites_atomically(tmp_path):
    model, x, _ = _trained()
    path = tmp_path / "m.safetensors"
    model.save(path)
    model.fit(x, np.arange(96) % 3, epochs=1, verbose=0)
    model.save(path)
    np.testing.assert_array_equal(dtrain.load_model(path).predict(x), model.predict(x))
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]


def test_float64_uncompiled_and_lazy_models_roundtrip(tmp_path):
    model, x, _ = _trained(dtype="float64")
    model.save(tmp_path / "f64.safetensors")
    loaded = dtrain.load_model(tmp_path / "f64.safetensors")
    assert loaded.dtype == "float64" and loaded.params.dtype == np.float64
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))

    plain = Sequential([Dense(4, activation="sigmoid"), Dense(2)], name="plain")
    plain.build(6, seed=0)
    plain.save(tmp_path / "plain.safetensors")
    again = dtrain.load_model(tmp_path / "plain.safetensors")
    assert not again.compiled and again.name == "plain" and again.input_dim == 6
    for a, b in zip(again.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not dtrain.load_model(tmp_path / "f64.safetensors", compile=False).compiled


def test_the_file_is_plain_safetensors_with_json_metadata(tmp_path):
    model, _, _ = _trained(loss="categorical_crossentropy")
    path = tmp_path / "m.safetensors"
    model.save(path)
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])  # only JSON and raw little-endian arrays
    meta = header["__metadata__"]
    assert meta["format"] == "dtrain.model" and meta["format_version"] == "1"
    assert json.loads(meta["config"]) == model.get_config()
    assert json.loads(meta["compile"])["loss"] == "categorical_crossentropy"
    assert b"pickle" not in raw and b"\x80\x04" not in raw[: 8 + header_len]
    tensors = safetensors_numpy.load_file(str(path))  # other safetensors readers can read the weights
    np.testing.assert_array_equal(tensors["weights.0000"], model.get_weights()[0])
    assert {k for k in tensors if k.startswith("optimizer.")} == {"optimizer.m", "optimizer.v", "optimizer.iterations"}


# -- files that are not dtrain models --------------------------------------------------------------
def _assert_not_a_model(path, match="is not a dtrain model file"):
    with pytest.raises(ValueError, match=match) as info:
        dtrain.load_model(path)
    assert str(path) in str(info.value)


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    _assert_not_a_model(path)


def test_a_json_file_is_refused(tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps({"format": "dtrain.model", "layers": []}))
    _assert_not_a_model(path)


def test_an_empty_or_tiny_file_is_refused(tmp_path):
    for content in (b"", b"abc"):
        path = tmp_path / "tiny.safetensors"
        path.write_bytes(content)
        _assert_not_a_model(path)


def test_a_safetensors_file_without_our_metadata_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    safetensors_numpy.save_file({"w": np.zeros((2, 2), np.float32)}, str(path))
    _assert_not_a_model(path, match="format=None")
    safetensors_numpy.save_file({"w": np.zeros(2, np.float32)}, str(path), metadata={"format": "pt"})
    _assert_not_a_model(path, match="format='pt'")


def test_a_truncated_file_is_refused(tmp_path):
    model, _, _ = _trained()
    path = tmp_path / "m.safetensors"
    model.save(path)
    raw = path.read_bytes()
    for cut in (len(raw) - 100, len(raw) // 2, 20):
        path.write_bytes(raw[:cut])
        _assert_not_a_model(path)


def test_a_wrong_format_version_is_refused(tmp_path):
    path = tmp_path / "future.safetensors"
    model, _, _ = _trained()
    model.save(path)
    tensors = safetensors_numpy.load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = dict(f.metadata())
    meta["format_version"] = "99"
    safetensors_numpy.save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ValueError, match="format version '99'.*reads version 1"):
        dtrain.load_model(path)


def test_a_file_whose_weights_do_not_fit_the_architecture_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    model, _, _ = _trained()
    model.save(path)
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["weights.0000"] = tensors["weights.0000"][:, :5]
    safetensors_numpy.save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ValueError, match="damaged or inconsistent.*shape"):
        dtrain.load_model(path)
    del tensors["weights.0003"]
    tensors["weights.0000"] = model.get_weights()[0]
    safetensors_numpy.save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ValueError, match="damaged or inconsistent.*expected 4 arrays"):
        dtrain.load_model(path)
    safetensors_numpy.save_file(tensors, str(path), metadata={**meta, "config": "{not json"})
    _assert_not_a_model(path, match="no valid model config")


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="No model file"):
        dtrain.load_model(tmp_path / "nothing.safetensors")
    with pytest.raises(FileNotFoundError, match="No model file"):
        dtrain.load_model(tmp_path)  # a folder without model.safetensors
    model, _, _ = _trained()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model.save(tmp_path / "no" / "such" / "m.safetensors")


def test_an_unbuilt_model_cannot_be_saved(tmp_path):
    with pytest.raises(RuntimeError, match="needs the model's weights"):
        Sequential([Dense(3)]).save(tmp_path / "m.safetensors")


def test_load_model_checks_the_device_name(tmp_path):
    model, _, _ = _trained()
    model.save(tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="Unknown device 'tpu'"):
        dtrain.load_model(tmp_path / "m.safetensors", device="tpu")
    assert dtrain.load_model(tmp_path / "m.safetensors", device="cpu").device == "cpu"


def test_saved_file_has_the_usual_permissions(tmp_path):
    model, _, _ = _trained()
    path = tmp_path / "m.safetensors"
    old = os.umask(0o022)
    try:
        model.save(path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_metric_instances_and_their_settings_survive_saving(tmp_path):
    from dtrain import metrics

    model = Sequential([Dense(1, activation="sigmoid", input_dim=3)])
    model.compile(
        optimizer="sgd",
        loss="binary_crossentropy",
        metrics=[metrics.BinaryAccuracy("strict", threshold=0.9), "mae", "accuracy"],
    )
    model.save(tmp_path / "m.safetensors")
    loaded = dtrain.load_model(tmp_path / "m.safetensors")
    assert loaded.metrics_names == ["loss", "strict", "mae", "accuracy"]
    assert loaded.metrics[0].threshold == 0.9
    x = np.random.default_rng(0).standard_normal((16, 3))
    y = (x[:, :1] > 0).astype("float32")
    assert loaded.evaluate(x, y) == model.evaluate(x, y)
