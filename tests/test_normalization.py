"""BatchNormalization and LayerNormalization (issue 17): against real Keras 3 per epoch in
float64 (weights, moving statistics, predictions), finite differences of the training-mode
gradients, and synchronised statistics: N workers equal one process, also when a rank has no
rows in a step (it still joins the sums)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import blobs, shared_client
from keras_oracle import keras_or_skip, max_relative_difference
from test_activations import numeric_vjp

import dtrain
from dtrain.layers import Activation, BatchNormalization, Dense, Dropout, Input, LayerNormalization

CASES = {
    # (a Dense right before a BatchNormalization has no bias, as usual: its gradient would be
    # zero, and Adam would turn the rounding noise of a zero into steps of 1e-13)
    "BatchNormalization defaults": lambda L: [L.Dense(8, use_bias=False), L.BatchNormalization(), L.Activation("relu")],
    "BatchNormalization momentum 0.5, no center": lambda L: [
        L.Dense(8, activation="tanh"),
        L.BatchNormalization(momentum=0.5, epsilon=0.01, center=False),
    ],
    "BatchNormalization no scale, then LayerNormalization": lambda L: [
        L.Dense(8, use_bias=False),
        L.BatchNormalization(scale=False, momentum=0.9),
        L.Dense(6, activation="elu"),
        L.LayerNormalization(),
    ],
    "LayerNormalization epsilon, no center": lambda L: [
        L.Dense(8, activation="relu"),
        L.LayerNormalization(epsilon=1e-5, center=False),
    ],
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("rows", [48, 50], ids=["whole batches", "a last batch of 2"])
def test_training_matches_keras_every_epoch(case, rows):
    keras = keras_or_skip()
    keras.utils.set_random_seed(2)
    theirs = keras.Sequential(
        [keras.layers.Input((5,)), *CASES[case](keras.layers), keras.layers.Dense(3, activation="softmax")]
    )
    theirs.compile(optimizer=keras.optimizers.Adam(0.02), loss="categorical_crossentropy")
    ours = dtrain.Sequential(
        [Input(shape=(5,)), *CASES[case](dtrain.layers), Dense(3, activation="softmax")], dtype="float64"
    )
    ours.compile(optimizer=dtrain.optimizers.Adam(0.02), loss="categorical_crossentropy")
    assert [w.shape for w in ours.get_weights()] == [w.shape for w in theirs.get_weights()]
    ours.set_weights(theirs.get_weights())
    rng = np.random.default_rng(3)
    x, y = 2.0 + 3.0 * rng.standard_normal((rows, 5)), np.eye(3)[rng.integers(0, 3, rows)]
    for _ in range(3):
        theirs.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        ours.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        assert max_relative_difference(ours.get_weights(), theirs.get_weights()) < 1e-9
    np.testing.assert_allclose(ours.predict(x, verbose=0), theirs.predict(x, verbose=0), rtol=1e-9, atol=1e-12)


def test_weight_order_is_keras():
    model = dtrain.Sequential(
        [
            Input(shape=(3,)),
            BatchNormalization(name="batch_normalization"),
            LayerNormalization(name="layer_normalization"),
        ]
    )
    model.build(seed=0)
    names = [name for layer in model.layers for name, _ in layer.weight_views()]
    assert names == [
        "batch_normalization/gamma",
        "batch_normalization/beta",
        "batch_normalization/moving_mean",
        "batch_normalization/moving_variance",
        "layer_normalization/gamma",
        "layer_normalization/beta",
    ]


@pytest.mark.parametrize(
    "layer",
    [BatchNormalization(momentum=0.9), BatchNormalization(center=False, epsilon=0.1), LayerNormalization()],
    ids=["batch", "batch without center", "layer"],
)
def test_training_gradients_match_finite_differences(layer):
    model = dtrain.Sequential([Input(shape=(4,)), Dense(5, activation="tanh"), layer, Dense(2)], dtype="float64")
    model.compile(loss="mse", optimizer="sgd")
    model.build(seed=5)
    rng = np.random.default_rng(6)
    # perturb gamma and beta away from 1 and 0
    model.set_weights([w + 0.3 * rng.standard_normal(w.shape) if "moving" not in n else w
                       for w, (n, _) in zip(model.get_weights(), model._weight_views())])  # fmt: skip
    x, y = rng.standard_normal((7, 4)), rng.standard_normal((7, 2))
    model.compute_gradients(x, y)
    analytic = model.grads.copy()

    def loss(params):
        saved = model.params.copy()
        model.params[...] = params
        out = model.forward(x, training=True)
        model.params[...] = saved
        return np.mean(np.mean((out - y) ** 2, axis=1))

    numeric = numeric_vjp(loss, model.params.copy(), np.ones(()), h=1e-5)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-10)


def test_moving_statistics_follow_keras_formula_and_a_skipped_step_leaves_them():
    layer = BatchNormalization(momentum=0.8)
    model = dtrain.Sequential([Input(shape=(3,)), layer], dtype="float64")
    model.compile(loss="mse", optimizer="sgd")
    model.build(seed=0)
    x = np.random.default_rng(7).standard_normal((10, 3)) * 2 + 1
    model.compute_gradients(x, np.zeros((10, 3)))
    model.apply_gradients()
    np.testing.assert_allclose(layer.moving_mean, 0.2 * x.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(layer.moving_variance, 0.8 + 0.2 * x.var(axis=0), rtol=1e-13)
    before = layer.moving_mean.copy()
    model.compute_gradients(x + 5, np.zeros((10, 3)))  # computed, never applied: a skipped step
    model.compute_gradients(x, np.zeros((10, 3)))
    np.testing.assert_array_equal(layer.moving_mean, before)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match=r"BatchNormalization expected momentum in \[0.0, 1.0\]"):
        BatchNormalization(momentum=1.5)
    with pytest.raises(ValueError, match="a bool for synchronized"):
        BatchNormalization(synchronized=1)
    with pytest.raises(ValueError, match="axis=-1"):
        LayerNormalization(axis=0)
    with pytest.raises(ValueError, match="epsilon > 0"):
        LayerNormalization(epsilon=0)
    with pytest.raises(ValueError, match="a bool for center"):
        BatchNormalization(center="yes")


def _normalized_model(units=16, features=12):
    return dtrain.Sequential(
        [Input(shape=(features,)), Dense(units), BatchNormalization(momentum=0.9), Activation("relu"), Dropout(0.2),
         Dense(units), LayerNormalization(), BatchNormalization(center=False), Dense(3, activation="softmax")],
        dtype="float64",
    )  # fmt: skip


@pytest.mark.cluster
@pytest.mark.parametrize("wide", [False, True], ids=["allreduce", "sharded"])
def test_two_workers_equal_one_process_with_synchronised_statistics(wide):
    """121 rows in global batches of 20: the last step has one row, so one rank has none and
    still joins the statistics' sums (else the other would wait forever)."""
    client = shared_client(2)
    features, units = (1024, 1024) if wide else (12, 16)
    x, labels = blobs(121, features=features)
    local, distributed = _normalized_model(units, features), _normalized_model(units, features)
    for m in (local, distributed):
        m.compile(loss="sparse_categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
        m.build(seed=8)
    kwargs = dict(batch_size=20, epochs=2, seed=4, shards=2, verbose=0)
    h_local = local.fit(x, labels, **kwargs)
    h_dist = distributed.fit(x, labels, client=client, **kwargs)
    assert h_dist.sharded_step == wide
    for a, b in zip(distributed.get_weights(), local.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(h_dist.history["loss"], h_local.history["loss"], rtol=1e-9)
    moving_mean = local.layers[1].get_weights()[2]
    assert np.abs(moving_mean).max() > 1e-3  # the statistics did move
    np.testing.assert_allclose(distributed.predict(x, verbose=0), local.predict(x, verbose=0), rtol=1e-9, atol=1e-12)
