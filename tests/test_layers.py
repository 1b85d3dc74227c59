"""Dense: arguments, config, forward against NumPy, and backward against finite differences
(through whole models, so the wiring of fused losses is checked too)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dtrain import layers
from dtrain.layers import Dense
from dtrain.models import Sequential

ACTIVATIONS = {
    "linear": lambda z: z,
    "relu": lambda z: np.maximum(z, 0),
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "tanh": np.tanh,
    "softmax": lambda z: (
        np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)
    ),
}


def test_dense_defaults_follow_keras():
    layer = Dense(5)
    assert layer.units == 5 and layer.activation.name == "linear" and layer.use_bias
    assert layer.input_dim is None and not layer.built
    assert layer.name.startswith("dense")
    config = layer.get_config()
    assert config["kernel_initializer"] == "glorot_uniform" and config["bias_initializer"] == "zeros"
    assert Dense(5, activation=None).activation.name == "linear"
    names = {Dense(2).name for _ in range(5)}
    assert len(names) == 5  # automatic names are unique
    assert "units=5" in repr(layer)


def test_dense_config_roundtrip_is_json():
    layer = Dense(
        7,
        activation="sigmoid",
        use_bias=False,
        input_dim=3,
        kernel_initializer="he_uniform",
        bias_initializer={"class_name": "constant", "config": {"value": 0.5}},
        name="d",
    )
    config = json.loads(json.dumps(layer.get_config()))
    clone = layers.from_config({"class_name": "Dense", "config": config})
    assert clone.get_config() == layer.get_config()
    assert clone.name == "d" and clone.input_dim == 3 and not clone.use_bias


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_dense_forward_matches_numpy(name):
    rng = np.random.default_rng(0)
    model = Sequential([Dense(6, activation=name, input_dim=4)], dtype="float64")
    model.build(seed=1)
    kernel, bias = rng.normal(size=(4, 6)), rng.normal(size=6)
    model.set_weights([kernel, bias])
    x = rng.normal(size=(9, 4)) * 3
    np.testing.assert_allclose(model.predict(x), ACTIVATIONS[name](x @ kernel + bias), rtol=1e-12, atol=1e-14)


def test_initializers_and_no_bias():
    model = Sequential(
        [
            Dense(3, input_dim=2, kernel_initializer="ones", bias_initializer="ones"),
            Dense(2, use_bias=False, kernel_initializer="zeros"),
        ]
    )
    model.build(seed=0)
    k1, b1, k2 = model.get_weights()
    assert (k1 == 1).all() and (b1 == 1).all() and (k2 == 0).all()
    assert model.layers[1].bias is None and model.layers[1].bias_grad is None


def test_glorot_uniform_limits():
    model = Sequential([Dense(300, input_dim=200)], dtype="float64")
    model.build(seed=0)
    kernel = model.get_weights()[0]
    limit = np.sqrt(6 / (200 + 300))
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.99 * limit
    assert abs(kernel.std() - limit / np.sqrt(3)) < 0.01 * limit


def test_forward_output_is_a_buffer_reused_per_batch_size():
    model = Sequential([Dense(3, input_dim=2, activation="relu")])
    model.build(seed=0)
    layer = model.layers[0]
    x = np.ones((4, 2), np.float32)
    first = layer.forward(x)
    second = layer.forward(x * 2)
    assert first is second  # documented: overwritten by the next call with the same batch size
    assert layer.forward(np.ones((5, 2), np.float32)) is not first


# -- gradients of whole models against finite differences (float64) --------------------------------
CASES = [
    # (last activation, loss, hidden activation, targets)
    ("softmax", "categorical_crossentropy", "tanh", "onehot"),
    ("softmax", "sparse_categorical_crossentropy", "relu", "labels"),
    ("sigmoid", "binary_crossentropy", "sigmoid", "binary"),
    ("linear", "mse", "tanh", "real"),
    ("linear", "mae", "softmax", "real"),
    ("tanh", "mse", "relu", "real"),
    ("softmax", "mse", "tanh", "onehot"),  # softmax not fused: backward through softmax itself
    ("sigmoid", "mse", "linear", "real"),
    ("linear", {"class_name": "categorical_crossentropy", "config": {"from_logits": True}}, "tanh", "onehot"),
    ("linear", {"class_name": "binary_crossentropy", "config": {"from_logits": True}}, "tanh", "binary"),
]


def _targets(kind, n, units, rng):
    if kind == "onehot":
        return np.eye(units)[rng.integers(0, units, n)]
    if kind == "labels":
        return rng.integers(0, units, n)
    if kind == "binary":
        return rng.integers(0, 2, (n, units)).astype(float)
    return rng.normal(size=(n, units))


@pytest.mark.parametrize("last, loss, hidden, kind", CASES, ids=lambda v: v if isinstance(v, str) else "from_logits")
def test_model_gradients_match_finite_differences(last, loss, hidden, kind):
    rng = np.random.default_rng(0)
    units = 3
    model = Sequential(
        [Dense(5, activation=hidden, input_dim=4), Dense(4, activation="tanh"), Dense(units, activation=last)],
        dtype="float64",
    )
    model.compile(optimizer="sgd", loss=loss)
    model.build(seed=2)
    x = rng.normal(size=(7, 4))
    y = _targets(kind, 7, units, rng)
    x_checked, y_checked = model.check_xy(x, y)

    model.compute_gradients(x_checked, y_checked)
    analytic = model.grads.copy()

    def mean_loss():
        return model.evaluate(x, y, batch_size=7)

    numeric = np.zeros_like(analytic)
    eps = 1e-6
    flat = model.params
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = mean_loss()
        flat[i] = old - eps
        down = mean_loss()
        flat[i] = old
        numeric[i] = (up - down) / (2 * eps)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)
    assert np.abs(analytic).max() > 1e-4  # not trivially zero


def test_layer_get_and_set_weights_are_views_of_the_model():
    first = Dense(4, activation="relu", input_dim=3)
    last = Dense(2, use_bias=False)
    assert first.get_weights() == []  # unbuilt, as Keras
    model = Sequential([first, last])
    model.build(seed=0)
    kernel, bias = first.get_weights()
    assert kernel.shape == (3, 4) and bias.shape == (4,)
    assert [w.shape for w in last.get_weights()] == [(4, 2)]
    first.set_weights([np.ones((3, 4)), np.full(4, 2.0)])
    np.testing.assert_array_equal(model.get_weights()[0], np.ones((3, 4), np.float32))
    np.testing.assert_array_equal(model.get_weights()[1], np.full(4, 2.0, np.float32))
    with pytest.raises(ValueError, match=r"dense.*/kernel must have shape \(3, 4\), received shape \(4, 3\)"):
        first.set_weights([np.zeros((4, 3)), np.zeros(4)])
    np.testing.assert_array_equal(first.get_weights()[0], np.ones((3, 4), np.float32))  # unchanged
    with pytest.raises(RuntimeError, match="no weights yet"):
        Dense(3).set_weights([np.zeros((1, 3)), np.zeros(3)])


def test_metrics_names_follow_evaluate_order():
    model = Sequential([Dense(3, activation="softmax", input_dim=2)])
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["accuracy", "mse"])
    assert model.metrics_names == ["loss", "accuracy", "mse"]
    x = np.random.default_rng(0).standard_normal((8, 2))
    y = np.eye(3)[np.arange(8) % 3]
    assert len(model.evaluate(x, y)) == len(model.metrics_names)
