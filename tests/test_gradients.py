"""Whole-model gradient checks in float64: ``model.compute_gradients`` (forward, loss, backward
through every layer, into the flat ``model.grads``) against central differences of the mean
loss with respect to the flat ``model.params``, for every activation and every loss, on the
fused paths (softmax + categorical/sparse CE, sigmoid + binary CE: the loss is computed from
the last layer's logits), the unfused ones (Keras' clipped formulas on probabilities) and
``from_logits=True`` with a linear last layer."""

from __future__ import annotations

import numpy as np
import pytest

from dtrain import Dense, Sequential, losses

N, INPUT_DIM = 7, 4
MARGIN = 0.02  # relu pre-activations and mae residuals stay this far from their kinks


def reference_forward(model, x):
    """An independent NumPy forward pass from get_weights(): [(z, a)] per layer."""
    weights = model.get_weights()
    out, i = [], 0
    for layer in model.layers:
        z = x @ weights[i]
        i += 1
        if layer.use_bias:
            z = z + weights[i]
            i += 1
        act = layer.activation.name
        if act == "relu":
            a = np.maximum(z, 0.0)
        elif act == "sigmoid":
            a = np.exp(-np.logaddexp(0.0, -z))
        elif act == "tanh":
            a = np.tanh(z)
        elif act == "softmax":
            e = np.exp(z - z.max(axis=1, keepdims=True))
            a = e / e.sum(axis=1, keepdims=True)
        else:
            a = z
        out.append((z, a))
        x = a
    return out


def features_away_from_relu_kinks(model, rng):
    """Draw x, redrawing the rows where some relu unit's input is within MARGIN of 0."""
    x = rng.normal(size=(N, INPUT_DIM))
    relu = [i for i, layer in enumerate(model.layers) if layer.activation.name == "relu"]
    for _ in range(1000):
        passes = reference_forward(model, x)
        bad = np.zeros(N, bool)
        for i in relu:
            bad |= (np.abs(passes[i][0]) < MARGIN).any(axis=1)
        if not bad.any():
            return x
        x[bad] = rng.normal(size=(int(bad.sum()), INPUT_DIM))
    raise AssertionError("could not draw data away from the relu kinks")


def targets(kind, model, x, rng):
    units = model.output_units
    if kind == "labels":
        return rng.integers(0, units, N)
    if kind == "one_hot":
        return np.eye(units)[rng.integers(0, units, N)]
    if kind == "soft":
        e = np.exp(rng.normal(size=(N, units)))
        return e / e.sum(axis=1, keepdims=True)
    if kind == "binary":
        return rng.integers(0, 2, (N, units)).astype(float)
    if kind == "binary_soft":
        return rng.uniform(0.0, 1.0, (N, units))
    if kind == "real":
        return rng.normal(size=(N, units))
    if kind == "away":  # for mae: |out - y| >= 0.1 everywhere, so no kink is crossed
        out = reference_forward(model, x)[-1][1]
        return out + rng.uniform(0.1, 1.0, out.shape) * rng.choice([-1.0, 1.0], out.shape)
    raise AssertionError(kind)


def build(layers, loss, seed=0):
    model = Sequential(
        [Dense(units, activation=act, use_bias=bias) for units, act, bias in layers], dtype="float64", device="cpu"
    )
    model.compile(optimizer="sgd", loss=loss)
    model.build(INPUT_DIM, seed=seed)
    return model


def mean_loss(model, x, y):
    return float(model.evaluate(x, y, batch_size=len(x)))


def numeric_gradient(model, x, y, h=1e-4):
    """Fourth-order central differences of the mean loss, perturbing model.params in place."""
    params = model.params
    grad = np.zeros_like(params)
    for i in range(params.size):
        saved = params[i]
        values = []
        for step in (2 * h, h, -h, -2 * h):
            params[i] = saved + step
            values.append(mean_loss(model, x, y))
        params[i] = saved
        f2, f1, m1, m2 = values
        grad[i] = (8.0 * (f1 - m1) - (f2 - m2)) / (12.0 * h)
    return grad


def check(layers, loss, target_kind, seed=0):
    rng = np.random.default_rng(seed + 100)
    model = build(layers, loss, seed)
    x = features_away_from_relu_kinks(model, rng)
    y = model.loss.prepare_targets(targets(target_kind, model, x, rng), model.output_units)
    if model.loss.integer_targets:
        assert y.dtype == np.int64
    before = model.params.copy()
    n, loss_sum, _ = model.compute_gradients(x, y)
    analytic = model.grads.copy()
    np.testing.assert_array_equal(model.params, before)  # computing gradients changes no weight
    assert n == N
    assert loss_sum / N == pytest.approx(mean_loss(model, x, y), rel=1e-13)
    numeric = numeric_gradient(model, x, y)
    assert np.abs(analytic).max() > 1e-3  # a real signal reaches the parameters
    np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-10)
    return model, x, y


ACTIVATIONS = [None, "linear", "relu", "sigmoid", "tanh", "softmax"]


@pytest.mark.parametrize("hidden", ACTIVATIONS)
def test_every_activation_as_a_hidden_layer(hidden):
    check([(5, hidden, True), (3, None, True)], "mse", "real")


@pytest.mark.parametrize("last", ACTIVATIONS)
@pytest.mark.parametrize(
    "loss, target", [("mean_squared_error", "real"), ("mse", "away"), ("mean_absolute_error", "away"), ("mae", "away")]
)
def test_every_activation_as_the_output_with_regression_losses(last, loss, target):
    check([(5, "tanh", True), (3, last, True)], loss, target)


FUSED = [
    ("softmax", "categorical_crossentropy", "one_hot", 3),
    ("softmax", "categorical_crossentropy", "soft", 3),
    ("softmax", "sparse_categorical_crossentropy", "labels", 3),
    ("sigmoid", "binary_crossentropy", "binary", 1),
    ("sigmoid", "binary_crossentropy", "binary", 3),
    ("sigmoid", "binary_crossentropy", "binary_soft", 3),
]


@pytest.mark.parametrize("last, loss, target, units", FUSED)
@pytest.mark.parametrize("hidden", ["relu", "tanh"])
def test_fused_crossentropy_on_logits(hidden, last, loss, target, units):
    assert losses.get(loss).fuses_with(last)
    check([(6, hidden, True), (units, last, True)], loss, target)


UNFUSED = [
    # probabilities that do not come from the loss's own activation: Keras' formula on the
    # outputs (categorical: renormalise rows, clip), differentiated through the activation
    ("sigmoid", "categorical_crossentropy", "one_hot", 3),
    ("sigmoid", "categorical_crossentropy", "soft", 3),
    ("sigmoid", "sparse_categorical_crossentropy", "labels", 3),
    ("softmax", "binary_crossentropy", "binary", 3),
    ("softmax", "binary_crossentropy", "binary_soft", 3),
]


@pytest.mark.parametrize("last, loss, target, units", UNFUSED)
def test_unfused_crossentropy_on_probabilities(last, loss, target, units):
    assert not losses.get(loss).fuses_with(last)
    check([(6, "relu", True), (units, last, True)], loss, target)


FROM_LOGITS = [
    ("categorical_crossentropy", "one_hot", 3),
    ("categorical_crossentropy", "soft", 3),
    ("sparse_categorical_crossentropy", "labels", 3),
    ("binary_crossentropy", "binary", 1),
    ("binary_crossentropy", "binary_soft", 3),
]


@pytest.mark.parametrize("loss, target, units", FROM_LOGITS)
@pytest.mark.parametrize("last", [None, "linear"])
def test_from_logits_with_a_linear_last_layer(last, loss, target, units):
    config = {"class_name": loss, "config": {"from_logits": True}}
    check([(6, "relu", True), (units, last, True)], config, target)


@pytest.mark.parametrize(
    "loss, target",
    [("categorical_crossentropy", "one_hot"), ("sparse_categorical_crossentropy", "labels"), ("mse", "real")],
)
def test_deep_network_without_some_biases(loss, target):
    layers = [(6, "relu", True), (5, "tanh", False), (4, "sigmoid", True), (4, None, False), (3, "softmax", True)]
    check(layers, loss, target, seed=3)


def test_scale_multiplies_the_gradient():
    """compute_gradients(scale=s) gives the gradient of s * sum(per-sample losses): the
    data-parallel workers pass 1 / global batch size."""
    model, x, y = check([(5, "relu", True), (3, "softmax", True)], "categorical_crossentropy", "one_hot")
    model.compute_gradients(x, y)
    mean_grads = model.grads.copy()
    model.compute_gradients(x, y, scale=0.125)
    np.testing.assert_allclose(model.grads, mean_grads * N * 0.125, rtol=1e-13, atol=1e-300)


def test_gradients_of_split_batches_add_up_to_the_full_batch():
    """Summing the gradients of two halves, each scaled by 1 / full batch size, gives the full
    batch's gradient: what the allreduce of data-parallel training relies on."""
    model, x, y = check([(5, "tanh", True), (3, "softmax", True)], "sparse_categorical_crossentropy", "labels")
    model.compute_gradients(x, y)
    full = model.grads.copy()
    model.compute_gradients(x[:3], y[:3], scale=1.0 / N)
    part = model.grads.copy()
    model.compute_gradients(x[3:], y[3:], scale=1.0 / N)
    np.testing.assert_allclose(part + model.grads, full, rtol=1e-12, atol=1e-15)


def test_model_loss_matches_an_independent_forward_pass():
    model = build([(5, "relu", True), (4, "tanh", True), (3, "softmax", True)], "categorical_crossentropy")
    rng = np.random.default_rng(7)
    x = rng.normal(size=(N, INPUT_DIM))
    y = np.eye(3)[rng.integers(0, 3, N)]
    p = reference_forward(model, x)[-1][1]
    expected = -np.mean(np.log(np.sum(y * p, axis=1)))
    assert mean_loss(model, x, y) == pytest.approx(expected, rel=1e-13)
    np.testing.assert_allclose(model.predict(x), p, rtol=1e-13)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "last, loss, target",
    [
        ("softmax", "categorical_crossentropy", "one_hot"),
        ("softmax", "sparse_categorical_crossentropy", "labels"),
        ("sigmoid", "binary_crossentropy", "binary"),
        (None, {"class_name": "categorical_crossentropy", "config": {"from_logits": True}}, "one_hot"),
        (None, {"class_name": "binary_crossentropy", "config": {"from_logits": True}}, "binary"),
    ],
)
def test_huge_logits_give_finite_loss_and_gradients(dtype, last, loss, target):
    """Weights scaled so that the logits reach ~1e4: loss and gradients stay finite (no
    overflow warning either: pyproject makes RuntimeWarnings errors)."""
    model = Sequential([Dense(3, activation=last)], dtype=dtype, device="cpu")
    model.compile(optimizer="sgd", loss=loss)
    model.build(INPUT_DIM, seed=0)
    model.params[...] *= 1e4
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, INPUT_DIM)).astype(dtype)
    y = model.loss.prepare_targets(targets(target, model, x, rng), 3)
    if not model.loss.integer_targets:
        y = y.astype(dtype)
    assert np.abs(model.predict(x) if last is None else reference_forward(model, x)[-1][0]).max() > 1e3
    n, loss_sum, _ = model.compute_gradients(x, y)
    assert np.isfinite(loss_sum) and loss_sum > 1e3  # confidently wrong somewhere: a huge, finite loss
    assert np.isfinite(model.grads).all()
    model.apply_gradients()
    assert np.isfinite(model.params).all()
