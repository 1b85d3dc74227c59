"""Every Keras 3 loss for dense outputs (issue 17): values against real Keras (float64),
gradients against finite differences (float64), on probabilities and on logits, training
against Keras per epoch, and a Python function refused with what is supported."""

from __future__ import annotations

import numpy as np
import pytest
from keras_oracle import keras_or_skip, max_relative_difference
from test_activations import numeric_vjp

import dtrain
from dtrain import losses
from dtrain.layers import Dense, Input

# (dtrain identifier, Keras class name, Keras arguments, targets: "onehot" | "binary" | "real" | "positive")
CASES = [
    ("huber", "Huber", {}, "real"),
    ({"class_name": "huber", "config": {"delta": 0.3}}, "Huber", {"delta": 0.3}, "real"),
    ("log_cosh", "LogCosh", {}, "real"),
    ("mean_absolute_percentage_error", "MeanAbsolutePercentageError", {}, "real"),
    ("mean_squared_logarithmic_error", "MeanSquaredLogarithmicError", {}, "positive"),
    ("poisson", "Poisson", {}, "positive"),
    ("kl_divergence", "KLDivergence", {}, "onehot"),
    ("hinge", "Hinge", {}, "binary"),
    ("squared_hinge", "SquaredHinge", {}, "binary"),
    ("categorical_hinge", "CategoricalHinge", {}, "onehot"),
    ("cosine_similarity", "CosineSimilarity", {}, "real"),
    ("binary_focal_crossentropy", "BinaryFocalCrossentropy", {}, "binary"),
    ({"class_name": "binary_focal_crossentropy", "config": {"apply_class_balancing": True, "alpha": 0.4,
      "gamma": 1.5, "label_smoothing": 0.1}}, "BinaryFocalCrossentropy",
     {"apply_class_balancing": True, "alpha": 0.4, "gamma": 1.5, "label_smoothing": 0.1}, "binary"),
    ({"class_name": "binary_focal_crossentropy", "config": {"from_logits": True}}, "BinaryFocalCrossentropy",
     {"from_logits": True}, "binary"),
    ("categorical_focal_crossentropy", "CategoricalFocalCrossentropy", {}, "onehot"),
    ({"class_name": "categorical_focal_crossentropy", "config": {"from_logits": True, "gamma": 3.0}},
     "CategoricalFocalCrossentropy", {"from_logits": True, "gamma": 3.0}, "onehot"),
    ({"class_name": "categorical_crossentropy", "config": {"label_smoothing": 0.2}}, "CategoricalCrossentropy",
     {"label_smoothing": 0.2}, "onehot"),
    ({"class_name": "categorical_crossentropy", "config": {"label_smoothing": 0.2, "from_logits": True}},
     "CategoricalCrossentropy", {"label_smoothing": 0.2, "from_logits": True}, "onehot"),
    ({"class_name": "binary_crossentropy", "config": {"label_smoothing": 0.1}}, "BinaryCrossentropy",
     {"label_smoothing": 0.1}, "binary"),
]  # fmt: skip


def _ids(case):
    return case if isinstance(case, str) else f"{case['class_name']}{case['config']}"


def _data(kind, logits, seed=0, shape=(7, 4)):
    rng = np.random.default_rng(seed)
    if kind == "onehot":
        y = np.eye(shape[1])[rng.integers(0, shape[1], shape[0])]
    elif kind == "binary":
        y = rng.integers(0, 2, shape).astype(np.float64)
    elif kind == "positive":
        y = rng.uniform(0.1, 3.0, shape)
    else:
        y = rng.standard_normal(shape)
    z = rng.standard_normal(shape)
    if logits or kind in ("real",):
        return y, z
    if kind == "onehot":
        e = np.exp(z)
        return y, e / e.sum(axis=1, keepdims=True)
    return y, 1.0 / (1.0 + np.exp(-z)) if kind == "binary" else np.exp(z)


@pytest.mark.parametrize("case, keras_name, kwargs, kind", CASES, ids=[_ids(c[0]) for c in CASES])
def test_values_match_keras(case, keras_name, kwargs, kind):
    keras = keras_or_skip()
    loss = losses.get(case)
    y, out = _data(kind, loss.from_logits)
    theirs = getattr(keras.losses, keras_name)(reduction=None, **kwargs)(y, out)
    np.testing.assert_allclose(loss.per_sample(np, loss.prepare_targets(y, 4), out), np.asarray(theirs), rtol=1e-12)


@pytest.mark.parametrize("case, keras_name, kwargs, kind", CASES, ids=[_ids(c[0]) for c in CASES])
def test_gradient_matches_finite_differences(case, keras_name, kwargs, kind):
    loss = losses.get(case)
    y, out = _data(kind, loss.from_logits, seed=1)
    y = loss.prepare_targets(y, 4)
    analytic = loss.gradient(np, y, out, 0.5)
    numeric = numeric_vjp(lambda o: 0.5 * loss.per_sample(np, y, o), out, np.ones(len(out)), h=1e-6)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "case", ["huber", "log_cosh", "poisson", "cosine_similarity", "categorical_focal_crossentropy"]
)
def test_training_matches_keras(case):
    keras = keras_or_skip()
    keras.utils.set_random_seed(4)
    last = "softplus" if case == "poisson" else ("softmax" if "focal" in case else "linear")
    theirs = keras.Sequential([keras.layers.Input((5,)), keras.layers.Dense(6, activation="tanh"),
                               keras.layers.Dense(4, activation=last)])  # fmt: skip
    theirs.compile(optimizer=keras.optimizers.SGD(0.05), loss=case)
    ours = dtrain.Sequential(
        [Input(shape=(5,)), Dense(6, activation="tanh"), Dense(4, activation=last)], dtype="float64"
    )
    ours.compile(optimizer=dtrain.optimizers.SGD(0.05), loss=case)
    ours.set_weights(theirs.get_weights())
    rng = np.random.default_rng(2)
    x = rng.standard_normal((30, 5))
    y = np.eye(4)[rng.integers(0, 4, 30)] if "focal" in case else np.abs(rng.standard_normal((30, 4)))
    for _ in range(3):
        theirs.fit(x, y, batch_size=10, epochs=1, shuffle=False, verbose=0)
        ours.fit(x, y, batch_size=10, epochs=1, shuffle=False, verbose=0)
        assert max_relative_difference(ours.get_weights(), theirs.get_weights()) < 1e-9


def test_a_python_function_as_a_loss_says_what_is_supported():
    model = dtrain.Sequential([Input(shape=(2,)), Dense(1)])
    with pytest.raises(ValueError, match="no automatic differentiation.*Known losses: binary_crossentropy"):
        model.compile(loss=lambda y, p: (y - p) ** 2)
    with pytest.raises(ValueError, match=r"label_smoothing in \[0, 1\]"):
        losses.get({"class_name": "categorical_crossentropy", "config": {"label_smoothing": 2}})
    with pytest.raises(ValueError, match="delta > 0"):
        losses.Huber(delta=0)
