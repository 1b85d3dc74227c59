"""Real Keras 3 files both ways (issue 17): ``model.save("m.keras")`` opens in
``keras.models.load_model`` and predicts identically; ``dtrain.load_model`` reads a Keras-saved
Sequential dense model; ``.weights.h5`` both ways; nothing executed, unsupported content named,
``.h5`` never written under a wrong format."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from keras_oracle import keras_or_skip, max_relative_difference

import dtrain
from dtrain import constraints, regularizers
from dtrain.keras_files import KerasFileError
from dtrain.layers import (
    Activation,
    BatchNormalization,
    Dense,
    Dropout,
    Flatten,
    GaussianNoise,
    Input,
    LayerNormalization,
    LeakyReLU,
    ReLU,
    Softmax,
)


def _dtrain_model(dtype="float64"):
    model = dtrain.Sequential(
        [Input(shape=(3, 2)), Flatten(), Dense(8, activation="gelu", kernel_regularizer="l2",
         kernel_constraint=constraints.MaxNorm(2.0)), BatchNormalization(momentum=0.9), ReLU(max_value=6.0),
         Dropout(0.25, seed=3), GaussianNoise(0.1), LayerNormalization(), LeakyReLU(0.2),
         Dense(4, activity_regularizer=regularizers.L1(0.01)), Activation("elu"), Dense(3), Softmax()],
        dtype=dtype,
        name="everything",
    )  # fmt: skip
    model.compile(optimizer=dtrain.optimizers.Adam(0.01), loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 2)), np.eye(3)[rng.integers(0, 3, n)]


def test_a_dtrain_keras_file_opens_in_keras_and_predicts_identically(tmp_path):
    keras = keras_or_skip()
    model = _dtrain_model()
    x, y = _data()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, seed=0)
    model.save(tmp_path / "m.keras")
    theirs = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(theirs.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-10, atol=1e-13)
    assert [w.shape for w in theirs.get_weights()] == [w.shape for w in model.get_weights()]
    assert theirs.optimizer.__class__.__name__ == "Adam" and theirs.loss == "categorical_crossentropy"
    # and back: the same model, compiled
    again = dtrain.load_model(tmp_path / "m.keras")
    for a, b in zip(again.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert again.get_config() == model.get_config() and again.compiled


def test_a_keras_saved_model_loads_and_trains_on(tmp_path):
    keras = keras_or_skip()
    K = keras.layers
    theirs = keras.Sequential(
        [K.Input((5,)), K.Dense(6, activation="relu", kernel_initializer="he_normal"), K.BatchNormalization(),
         K.Dropout(0.1), K.Dense(4, activation="tanh", kernel_regularizer=keras.regularizers.L2(0.001)),
         K.LayerNormalization(), K.Dense(2, activation="softmax")],
        name="from_keras",
    )  # fmt: skip
    theirs.compile(optimizer=keras.optimizers.RMSprop(0.005), loss="categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((32, 5)).astype("float32"), np.eye(2)[rng.integers(0, 2, 32)]
    theirs.fit(x, y, epochs=1, verbose=0)
    theirs.save(tmp_path / "k.keras")
    ours = dtrain.load_model(tmp_path / "k.keras")
    assert ours.name == "from_keras" and ours.dtype == keras.config.floatx() and ours.compiled
    assert isinstance(ours.compiled_optimizer, dtrain.optimizers.RMSprop)
    np.testing.assert_allclose(ours.predict(x, verbose=0), theirs.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    ours.fit(x, y, epochs=1, verbose=0, seed=0)  # it trains on


def test_weights_files_both_ways_and_mismatches_change_nothing(tmp_path):
    keras = keras_or_skip()
    K = keras.layers
    theirs = keras.Sequential(
        [K.Input((4,)), K.Dense(5, name="a"), K.BatchNormalization(name="b"), K.Dense(2, name="c")]
    )
    ours = dtrain.Sequential(
        [Input(shape=(4,)), Dense(5, name="a"), BatchNormalization(name="b"), Dense(2, name="c")], dtype="float32"
    )
    ours.build(seed=4)
    ours.save_weights(tmp_path / "ours.weights.h5")
    theirs.load_weights(tmp_path / "ours.weights.h5")
    for a, b in zip(theirs.get_weights(), ours.get_weights()):
        np.testing.assert_array_equal(a, b)
    theirs.set_weights([w * 2 for w in theirs.get_weights()])
    theirs.save_weights(tmp_path / "theirs.weights.h5")
    ours.load_weights(tmp_path / "theirs.weights.h5")
    for a, b in zip(theirs.get_weights(), ours.get_weights()):
        np.testing.assert_array_equal(a, b)
    other = dtrain.Sequential([Input(shape=(4,)), Dense(5, name="a"), Dense(2, name="c")])
    other.build(seed=0)
    before = other.get_weights()
    with pytest.raises(KerasFileError, match=r"has layers the model lacks: batch_normalization \(b\)"):
        other.load_weights(tmp_path / "theirs.weights.h5")
    for a, b in zip(other.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_unsupported_and_custom_content_is_named_and_never_run(tmp_path):
    keras_or_skip()
    model = _dtrain_model()
    model.build(seed=0)
    model.save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as archive:
        config = json.loads(archive.read("config.json"))
        weights = archive.read("model.weights.h5")

    def rewrite(name, change):
        changed = json.loads(json.dumps(config))
        change(changed["config"]["layers"])
        with zipfile.ZipFile(tmp_path / name, "w") as archive:
            archive.writestr("config.json", json.dumps(changed))
            archive.writestr("model.weights.h5", weights)
        return tmp_path / name

    conv = rewrite("conv.keras", lambda layers: layers.__setitem__(2, {"class_name": "Conv2D", "config": {}}))
    with pytest.raises(KerasFileError, match="dtrain has no 'Conv2D' layer; it reads Sequential models of these"):
        dtrain.load_model(conv)
    custom = rewrite(
        "custom.keras",
        lambda layers: layers.__setitem__(2, {"module": "my.module", "class_name": "Lambda", "config": {},
                                              "registered_name": "Custom>Lambda"}),
    )  # fmt: skip
    with pytest.raises(KerasFileError, match="custom object.*never runs code"):
        dtrain.load_model(custom)


def test_h5_is_refused_and_suffixes_say_what_to_use(tmp_path):
    model = dtrain.Sequential([Input(shape=(2,)), Dense(1)])
    model.build(seed=0)
    with pytest.raises(ValueError, match="legacy HDF5.*m.keras"):
        model.save(tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()
    with pytest.raises(ValueError, match=r"save_weights.*\.weights\.h5"):
        model.save_weights(tmp_path / "w.bin")
    with pytest.raises(ValueError, match="legacy HDF5"):
        dtrain.load_model(tmp_path / "m.h5")


def test_an_activation_keras_cannot_hold_is_refused_on_save(tmp_path):
    model = dtrain.Sequential([Input(shape=(2,)), Dense(1, activation={"class_name": "elu", "config": {"alpha": 0.5}})])
    model.build(seed=0)
    with pytest.raises(KerasFileError, match="has arguments, which a Keras file cannot hold"):
        model.save(tmp_path / "m.keras")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "optimizer",
    [("Adam", {"learning_rate": 0.01}), ("SGD", {"learning_rate": 0.05, "momentum": 0.9}),
     ("RMSprop", {"learning_rate": 0.01, "momentum": 0.5, "centered": True}),
     ("AdamW", {"learning_rate": 0.01, "amsgrad": True, "clipnorm": 0.1}),
     ("Adagrad", {"learning_rate": 0.05, "global_clipnorm": 0.2}), ("Adadelta", {"learning_rate": 1.0}),
     ("Adamax", {"learning_rate": 0.01, "weight_decay": 0.01}), ("Nadam", {"learning_rate": 0.01}),
     ("Lion", {"learning_rate": 0.002, "clipvalue": 0.05}),
     ("Ftrl", {"learning_rate": 0.05, "l1_regularization_strength": 0.001, "beta": 0.1}),
     ("SGD", {"learning_rate": ("CosineDecay", {"initial_learning_rate": 0.05, "decay_steps": 10, "alpha": 0.1})}),
     ("Adam", {"learning_rate": 0.01, "use_ema": True, "ema_momentum": 0.9, "gradient_accumulation_steps": 3})],
    ids=["adam", "sgd-momentum", "rmsprop-centered", "adamw-amsgrad-clipnorm", "adagrad-global-clipnorm",
         "adadelta", "adamax-weight-decay", "nadam", "lion-clipvalue", "ftrl", "sgd-cosine-decay",
         "adam-ema-accumulation"],
)  # fmt: skip
def test_training_goes_on_across_the_two_libraries_with_the_optimizer_state(tmp_path, optimizer):
    """dtrain trains, saves .keras; Keras loads it and trains one more epoch; so does dtrain
    from the same file: the same weights (the optimizer's moments crossed over too). And back."""
    keras = keras_or_skip()
    name, settings = optimizer
    settings = dict(settings)
    if isinstance(settings["learning_rate"], tuple):
        schedule, arguments = settings["learning_rate"]
        settings["learning_rate"] = getattr(dtrain.optimizers.schedules, schedule)(**arguments)
    model = dtrain.Sequential(
        [Input(shape=(5,)), Dense(6, activation="tanh"), BatchNormalization(), Dense(3, activation="softmax")],
        dtype="float64",
    )
    model.compile(optimizer=getattr(dtrain.optimizers, name)(**settings), loss="categorical_crossentropy")
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((40, 5)), np.eye(3)[rng.integers(0, 3, 40)]
    model.fit(x, y, epochs=2, batch_size=10, shuffle=False, verbose=0, seed=1)
    model.save(tmp_path / "a.keras")
    theirs = keras.models.load_model(tmp_path / "a.keras")
    theirs.jit_compile = False  # (compiled, Keras 3.1x on JAX donates a buffer twice with use_ema)
    ours = dtrain.load_model(tmp_path / "a.keras")
    assert type(theirs.optimizer).__name__ == name
    assert theirs.optimizer.get_config() == {**theirs.optimizer.get_config(), **settings_of(ours)}
    assert int(theirs.optimizer._iterations) == ours.compiled_optimizer.iterations == 8
    theirs.fit(x, y, epochs=1, batch_size=10, shuffle=False, verbose=0)
    ours.fit(x, y, epochs=1, batch_size=10, shuffle=False, verbose=0)
    assert max_relative_difference(ours.get_weights(), theirs.get_weights()) < 1e-9
    theirs.save(tmp_path / "b.keras")
    back = dtrain.load_model(tmp_path / "b.keras")
    theirs.fit(x, y, epochs=1, batch_size=10, shuffle=False, verbose=0)
    back.fit(x, y, epochs=1, batch_size=10, shuffle=False, verbose=0)
    assert max_relative_difference(back.get_weights(), theirs.get_weights()) < 1e-9


def settings_of(model):
    """The dtrain optimizer's arguments as Keras states them (a schedule as its config)."""
    config = model.compiled_optimizer.get_config()
    if isinstance(config["learning_rate"], dict):
        config["learning_rate"] = {"module": "keras.optimizers.schedules", **config["learning_rate"],
                                   "registered_name": None}  # fmt: skip
    return config


def test_to_json_round_trips_and_keras_reads_it():
    keras = keras_or_skip()
    model = _dtrain_model()
    text = model.to_json()
    again = dtrain.models.model_from_json(text)
    assert again.get_config() == model.get_config() and not again.compiled
    theirs = keras.models.model_from_json(text)
    assert [type(layer).__name__ for layer in theirs.layers] == [type(layer).__name__ for layer in model.layers]
    unbuilt = dtrain.Sequential([Dense(3), Dropout(0.1)])
    assert dtrain.models.model_from_json(unbuilt.to_json()).get_config() == unbuilt.get_config()
    with pytest.raises(ValueError, match="model_from_json expected a JSON string"):
        dtrain.models.model_from_json("{nope")
