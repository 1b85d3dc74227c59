"""The layers Keras programs use besides Dense (issue 17): trained against real Keras 3 per
epoch in float64 (same initial weights, shuffle=False), finite differences for the random
layers with their noise fixed, the noise's own properties, and N workers equal to one process."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import blobs, shared_client
from keras_oracle import keras_or_skip, max_relative_difference
from test_activations import numeric_vjp

import dtrain
from dtrain import randomness
from dtrain.layers import (
    Activation,
    BatchNormalization,
    Dense,
    Dropout,
    Flatten,
    GaussianNoise,
    Input,
    LeakyReLU,
    ReLU,
    Softmax,
)
from dtrain.randomness import StepNoise

EPOCHS = 3


def _pair(keras, case: str):
    """(Keras layers, dtrain layers, input shape, loss, Keras optimizer, dtrain optimizer)."""
    K = keras.layers
    if case == "images: Input, Flatten, LeakyReLU, Softmax layer":
        return (
            [K.Input((4, 3)), K.Flatten(), K.Dense(8), K.LeakyReLU(), K.Dense(3), K.Softmax()],
            [Input(shape=(4, 3)), Flatten(), Dense(8), LeakyReLU(), Dense(3), Softmax()],
            (4, 3), "categorical_crossentropy", keras.optimizers.Adam(0.01), dtrain.optimizers.Adam(0.01),
        )  # fmt: skip
    if case == "channels_first Flatten, Activation layers":
        return (
            [K.Input((2, 3, 2)), K.Flatten(data_format="channels_first"), K.Dense(6), K.Activation("gelu"),
             K.Dense(3), K.Activation("softmax")],
            [Input(shape=(2, 3, 2)), Flatten(data_format="channels_first"), Dense(6), Activation("gelu"),
             Dense(3), Activation("softmax")],
            (2, 3, 2), "categorical_crossentropy", keras.optimizers.SGD(0.1, momentum=0.9),
            dtrain.optimizers.SGD(0.1, momentum=0.9),
        )  # fmt: skip
    if case == "ReLU layer with every argument, new Dense activations":
        return (
            [K.Input((5,)), K.Dense(8), K.ReLU(max_value=1.5, negative_slope=0.1, threshold=0.2),
             K.Dense(8, activation="selu"), K.Dense(6, activation="mish"), K.Dense(6, activation="elu"),
             K.Dense(3, activation="softplus")],
            [Input(shape=(5,)), Dense(8), ReLU(max_value=1.5, negative_slope=0.1, threshold=0.2),
             Dense(8, activation="selu"), Dense(6, activation="mish"), Dense(6, activation="elu"),
             Dense(3, activation="softplus")],
            (5,), "mse", keras.optimizers.RMSprop(0.01), dtrain.optimizers.RMSprop(0.01),
        )  # fmt: skip
    if case == "silu, hard_silu, tanh_shrink, log_softmax":
        return (
            [K.Input((5,)), K.Dense(8, activation="silu"), K.Dense(8, activation="hard_silu"),
             K.Dense(6, activation="tanh_shrink"), K.Dense(3, activation="log_softmax")],
            [Input(shape=(5,)), Dense(8, activation="silu"), Dense(8, activation="hard_silu"),
             Dense(6, activation="tanh_shrink"), Dense(3, activation="log_softmax")],
            (5,), "mse", keras.optimizers.SGD(0.05), dtrain.optimizers.SGD(0.05),
        )  # fmt: skip
    raise AssertionError(case)


CASES = [
    "images: Input, Flatten, LeakyReLU, Softmax layer",
    "channels_first Flatten, Activation layers",
    "ReLU layer with every argument, new Dense activations",
    "silu, hard_silu, tanh_shrink, log_softmax",
]


@pytest.mark.parametrize("case", CASES)
def test_training_matches_keras_every_epoch(case):
    keras = keras_or_skip()
    keras.utils.set_random_seed(0)
    k_layers, d_layers, shape, loss, k_opt, d_opt = _pair(keras, case)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((48, *shape))
    y = np.eye(3)[rng.integers(0, 3, 48)]
    theirs = keras.Sequential(k_layers)
    theirs.compile(optimizer=k_opt, loss=loss)
    ours = dtrain.Sequential(d_layers, dtype="float64")
    ours.compile(optimizer=d_opt, loss=loss)
    ours.set_weights(theirs.get_weights())  # (built from Input: weights exist before fit)
    for _ in range(EPOCHS):
        theirs.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        ours.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        assert max_relative_difference(ours.get_weights(), theirs.get_weights()) < 1e-10
    np.testing.assert_allclose(ours.predict(x, verbose=0), theirs.predict(x, verbose=0), rtol=1e-10, atol=1e-13)


def test_dropout_and_gaussian_noise_are_the_identity_outside_training_as_in_keras():
    keras = keras_or_skip()
    K = keras.layers
    theirs = keras.Sequential([K.Input((6,)), K.Dense(5), K.Dropout(0.5), K.GaussianNoise(1.0), K.Dense(2)])
    ours = dtrain.Sequential([Input(shape=(6,)), Dense(5), Dropout(0.5), GaussianNoise(1.0), Dense(2)], dtype="float64")
    ours.set_weights(theirs.get_weights())
    x = np.random.default_rng(1).standard_normal((7, 6))
    np.testing.assert_allclose(ours.predict(x, verbose=0), theirs.predict(x, verbose=0), rtol=1e-13)


# -- the random layers: finite differences with the noise fixed, and the noise itself -----------------


def _network_with_noise(layer):
    model = dtrain.Sequential([Input(shape=(6,)), Dense(7, activation="tanh"), layer, Dense(3)], dtype="float64")
    model.compile(loss="mse", optimizer="sgd")
    model.build(seed=0)
    return model


@pytest.mark.parametrize("layer", [Dropout(0.4), GaussianNoise(0.3)], ids=["Dropout", "GaussianNoise"])
def test_gradients_with_the_noise_fixed_match_finite_differences(layer):
    model = _network_with_noise(layer)
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((9, 6)), rng.standard_normal((9, 3))
    noise = StepNoise(seed=5, epoch=2, rows=np.arange(100, 109))
    model.compute_gradients(x, y, noise=noise)
    analytic = model.grads.copy()

    def loss(params):
        saved = model.params.copy()
        model.params[...] = params
        layer.set_noise(noise, 1)
        out = model.forward(x, training=True)
        model.params[...] = saved
        return np.mean(np.mean((out - y) ** 2, axis=1))

    numeric = numeric_vjp(loss, model.params.copy(), np.ones(()), h=1e-5)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-9)
    # (the noise did something: without it the gradient differs)
    model.compile(loss="mse", optimizer="sgd")
    plain = dtrain.Sequential([Input(shape=(6,)), Dense(7, activation="tanh"), Dense(3)], dtype="float64")
    plain.compile(loss="mse")
    plain.build(seed=0)
    plain.compute_gradients(x, y)
    assert not np.allclose(plain.grads[: plain.params.size], analytic[: plain.params.size])


def test_a_rows_mask_depends_on_the_row_not_on_its_batch():
    layer = Dropout(0.5)
    model = _network_with_noise(layer)
    x = np.ones((8, 6))
    hidden = model.layers[0].forward(x)
    first = _masked(layer, hidden, StepNoise(1, 0, np.arange(8)))
    # The same global rows in another order and another batch: the same mask for each row.
    order = np.array([5, 2, 7])
    again = _masked(layer, hidden[order], StepNoise(1, 0, order))
    np.testing.assert_array_equal(again, first[order])
    # Another epoch, seed or layer position: other masks.
    assert not np.array_equal(_masked(layer, hidden, StepNoise(1, 1, np.arange(8))), first)
    assert not np.array_equal(_masked(layer, hidden, StepNoise(2, 0, np.arange(8))), first)
    layer.set_noise(StepNoise(1, 0, np.arange(8)), 7)
    assert not np.array_equal(layer.forward(hidden.copy(), training=True) != 0, first)


def _masked(layer, hidden, noise):
    layer.set_noise(noise, 1)
    return layer.forward(hidden.copy(), training=True) != 0


def test_dropout_drops_the_rate_and_keeps_the_expectation():
    layer = Dropout(0.3)
    model = dtrain.Sequential([Input(shape=(1000,)), layer], dtype="float64")
    model.build(seed=0)
    x = np.ones((400, 1000))
    layer.set_noise(StepNoise(0, 0, np.arange(400)), 0)
    out = layer.forward(x, training=True)
    kept = out != 0
    assert abs(kept.mean() - 0.7) < 0.003  # 400k draws: 5 standard deviations are 0.0036
    np.testing.assert_allclose(out[kept], 1 / 0.7)
    assert abs(out.mean() - 1.0) < 0.005
    # no structure along rows or units: the per-unit and per-row rates look binomial
    assert kept.mean(axis=0).std() < 2 * np.sqrt(0.21 / 400) and kept.mean(axis=1).std() < 2 * np.sqrt(0.21 / 1000)


def test_gaussian_noise_has_the_asked_moments():
    layer = GaussianNoise(0.5)
    model = dtrain.Sequential([Input(shape=(500,)), layer], dtype="float64")
    model.build(seed=0)
    layer.set_noise(StepNoise(3, 1, np.arange(400)), 0)
    noise = layer.forward(np.zeros((400, 500)), training=True)
    assert abs(noise.mean()) < 0.005 and abs(noise.std() - 0.5) < 0.005
    kurtosis = np.mean((noise / noise.std()) ** 4)
    assert abs(kurtosis - 3.0) < 0.05  # Gaussian, not uniform (1.8)


def test_the_hash_is_the_same_in_float32_and_float64_models_and_for_any_batch_split():
    key = randomness.stream_key(1, 2, 3)
    rows = np.array([0, 7, 2**40 + 3])
    out, scratch = np.empty((3, 5), np.uint32), np.empty((3, 5), np.uint32)
    whole = randomness.bits(np, key, rows, 5, out, scratch).copy()
    part = randomness.bits(np, key, rows[1:], 5, out[:2], scratch[:2])
    np.testing.assert_array_equal(part, whole[1:])


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match=r"Dropout expected rate in \[0.0, 1.0\], received rate=1.5"):
        Dropout(1.5)
    with pytest.raises(ValueError, match="noise_shape"):
        Dropout(0.5, noise_shape=(None, 1))
    with pytest.raises(ValueError, match="GaussianNoise expected stddev in"):
        GaussianNoise(-1)
    with pytest.raises(ValueError, match="seed to be None or an integer"):
        Dropout(0.1, seed="x")
    with pytest.raises(ValueError, match="start it with Flatten"):
        dtrain.Sequential([Input(shape=(28, 28)), Dense(3)])
    with pytest.raises(ValueError, match="must be the first element"):
        dtrain.Sequential([Dense(3, input_dim=2), Input(shape=(2,))])
    with pytest.raises(ValueError, match="declares input_dim=4, but the model's input has 5 units"):
        dtrain.Sequential([Input(shape=(5,)), Dense(3, input_dim=4)])
    model = dtrain.Sequential([Input(shape=(4, 3)), Flatten(), Dense(2)])
    model.compile(loss="mse")
    with pytest.raises(ValueError, match=r"x has samples of shape \(3, 4\)"):
        model.fit(np.zeros((5, 3, 4)), np.zeros((5, 2)), verbose=0)
    with pytest.raises(ValueError, match="Start the model with Flatten"):
        dtrain.Sequential([Dense(2, input_dim=9)]).predict(np.zeros((2, 3, 3)))


def test_configs_round_trip_with_every_layer():
    model = dtrain.Sequential(
        [Input(shape=(2, 3)), Flatten(), Dense(4), ReLU(max_value=6.0), Dropout(0.2, seed=3), GaussianNoise(0.1),
         LeakyReLU(0.1), Dense(3), Activation({"class_name": "elu", "config": {"alpha": 0.5}}), Softmax()]
    )  # fmt: skip
    config = model.get_config()
    clone = dtrain.Sequential.from_config(config)
    assert clone.get_config() == config
    assert config["layers"][0] == {"class_name": "InputLayer", "config": {"batch_shape": [None, 2, 3]}}
    assert clone.input_shape == (2, 3) and len(clone.get_weights()) == 4


# -- N workers give the result of one process ----------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.parametrize("shuffle", [False, True])
def test_dropout_and_noise_on_two_workers_equal_one_process(shuffle):
    client = shared_client(2)
    x, labels = blobs(200, features=12)

    def model():
        return dtrain.Sequential(
            [Input(shape=(12,)), Dense(16, activation="relu"), Dropout(0.3), GaussianNoise(0.2),
             Dense(16, activation="relu"), Dropout(0.5, seed=11), Dense(3, activation="softmax")],
            dtype="float64",
        )  # fmt: skip

    local, distributed = model(), model()
    for m in (local, distributed):
        m.compile(loss="sparse_categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    kwargs = dict(batch_size=20, epochs=3, seed=4, shards=2, shuffle=shuffle, verbose=0)
    h_local = local.fit(x, labels, **kwargs)
    h_dist = distributed.fit(x, labels, client=client, **kwargs)
    for a, b in zip(distributed.get_weights(), local.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(h_dist.history["loss"], h_local.history["loss"], rtol=1e-9)
    # and the dropout did change training: without it the weights differ
    plain = dtrain.Sequential(
        [
            Input(shape=(12,)),
            Dense(16, activation="relu"),
            Dense(16, activation="relu"),
            Dense(3, activation="softmax"),
        ],
        dtype="float64",
    )
    plain.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
    plain.fit(x, labels, **kwargs)
    assert not np.allclose(plain.get_weights()[0], local.get_weights()[0])


def test_a_flatten_model_built_from_data_saves_and_loads_its_sample_shape(tmp_path):
    model = dtrain.Sequential([Flatten(), Dense(4), Dense(2)], dtype="float64")
    model.compile(loss="mse")
    x = np.random.default_rng(0).standard_normal((10, 3, 2))
    model.fit(x, np.zeros((10, 2)), epochs=1, verbose=0, seed=0)
    assert model.input_shape == (3, 2)
    for name in ("m.safetensors", "m.keras"):
        model.save(tmp_path / name)
        again = dtrain.load_model(tmp_path / name)
        np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.cluster
def test_image_shaped_data_on_two_workers_equals_one_process():
    """Flatten without a declared shape: the client takes the shape from the data, flattens the
    rows it sends, and the ranks take them as they come."""
    client = shared_client(2)
    x = np.random.default_rng(0).standard_normal((60, 4, 3))
    labels = np.random.default_rng(1).integers(0, 3, 60)

    def model():
        m = dtrain.Sequential(
            [
                Flatten(),
                Dense(8, activation="relu"),
                BatchNormalization(),
                Dropout(0.3),
                Dense(3, activation="softmax"),
            ],
            dtype="float64",
        )
        m.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return m

    local, distributed = model(), model()
    h_local = local.fit(x, labels, epochs=2, batch_size=16, seed=3, shards=2, verbose=0)
    h_dist = distributed.fit(x, labels, epochs=2, batch_size=16, seed=3, client=client, verbose=0)
    for a, b in zip(distributed.get_weights(), local.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(h_dist.history[key], h_local.history[key], rtol=1e-9)
    assert distributed.input_shape == (4, 3)
    np.testing.assert_allclose(distributed.predict(x, client=client), local.predict(x, verbose=0), rtol=1e-9)
