"""Regularizers and constraints (issue 17): against real Keras 3 per epoch in float64 (weights
and the reported loss, which includes the penalties), finite differences of the penalised loss,
and N workers equal to one process, also on the sharded step (constraints after its allgather)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import blobs, shared_client
from keras_oracle import keras_or_skip, max_relative_difference
from test_activations import numeric_vjp

import dtrain
from dtrain import constraints, regularizers
from dtrain.layers import Dense, Input


def _stack(layers, arguments: dict):
    return [
        layers.Input((5,)) if layers is not dtrain.layers else Input(shape=(5,)),
        layers.Dense(8, activation="tanh", **arguments),
        layers.Dense(3, activation="softmax", **arguments),
    ]


CASES = {
    "L2 kernel": {"kernel_regularizer": "l2"},
    "L1 kernel, L2 bias": {"kernel_regularizer": regularizers.L1(0.02), "bias_regularizer": regularizers.L2(0.05)},
    "L1L2 activity": {"activity_regularizer": regularizers.L1L2(l1=0.01, l2=0.02)},
    "MaxNorm kernel, NonNeg bias": {"kernel_constraint": constraints.MaxNorm(0.8), "bias_constraint": "non_neg"},
    "UnitNorm": {"kernel_constraint": constraints.UnitNorm()},
    "MinMaxNorm": {"kernel_constraint": constraints.MinMaxNorm(0.5, 0.9, rate=0.7)},
}


def _keras_arguments(keras, arguments):
    """The same arguments as Keras objects (dtrain instances -> their Keras namesakes)."""
    out = {}
    for key, value in arguments.items():
        if isinstance(value, (regularizers.Regularizer, constraints.Constraint)):
            module = keras.regularizers if isinstance(value, regularizers.Regularizer) else keras.constraints
            value = getattr(module, type(value).__name__)(**value.get_config())
        out[key] = value
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_training_with_penalties_and_constraints_matches_keras(case):
    keras = keras_or_skip()
    keras.utils.set_random_seed(1)
    theirs = keras.Sequential(_stack(keras.layers, _keras_arguments(keras, CASES[case])))
    theirs.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    ours = dtrain.Sequential(_stack(dtrain.layers, CASES[case]), dtype="float64")
    ours.compile(optimizer=dtrain.optimizers.SGD(0.1), loss="categorical_crossentropy")
    ours.set_weights(theirs.get_weights())
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 5)), np.eye(3)[rng.integers(0, 3, 40)]
    for _ in range(3):
        k_loss = theirs.fit(x, y, batch_size=10, epochs=1, shuffle=False, verbose=0).history["loss"][0]
        d_loss = ours.fit(x, y, batch_size=10, epochs=1, shuffle=False, verbose=0).history["loss"][0]
        assert max_relative_difference(ours.get_weights(), theirs.get_weights()) < 1e-10
        assert abs(d_loss - k_loss) <= 1e-6 * abs(k_loss)  # (Keras clips its cross-entropy's log at 1e-7)
    assert abs(ours.evaluate(x, y, verbose=0) - theirs.evaluate(x, y, verbose=0)) <= 1e-6


@pytest.mark.parametrize(
    "arguments",
    [
        {"kernel_regularizer": regularizers.L1L2(0.03, 0.05), "bias_regularizer": "l2"},
        {"activity_regularizer": regularizers.L1L2(0.02, 0.04)},
    ],
    ids=["weights", "activity"],
)
def test_the_penalised_gradient_matches_finite_differences(arguments):
    model = dtrain.Sequential(
        [Input(shape=(4,)), Dense(5, activation="tanh", **arguments), Dense(2, **arguments)], dtype="float64"
    )
    model.compile(loss="mse", optimizer="sgd")
    model.build(seed=3)
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((6, 4)), rng.standard_normal((6, 2))
    count, loss_sum, _ = model.compute_gradients(x, y)
    analytic = model.grads.copy()

    def loss(params):
        saved = model.params.copy()
        model.params[...] = params
        total, _ = model._loss_and_metric_sums(y, model.forward(x, training=False))
        model.params[...] = saved
        return total / len(x)

    assert abs(loss(model.params.copy()) - loss_sum / count) < 1e-15
    numeric = numeric_vjp(loss, model.params.copy(), np.ones(()), h=1e-5)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-10)


def test_names_configs_and_clear_errors():
    assert isinstance(regularizers.get("l1_l2"), regularizers.L1L2)
    assert regularizers.get({"class_name": "L2", "config": {"l2": 0.001}}).l2 == 0.001
    assert isinstance(constraints.get("max_norm"), constraints.MaxNorm)
    assert isinstance(constraints.get({"class_name": "NonNeg", "config": {}}), constraints.NonNeg)
    layer = Dense(3, kernel_regularizer="l2", kernel_constraint=constraints.MaxNorm(3.0))
    clone = Dense.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert layer.get_config()["kernel_regularizer"] == {"class_name": "L2", "config": {"l2": 0.01}}
    assert "kernel_regularizer" not in Dense(3).get_config()  # plain layers' configs are unchanged
    with pytest.raises(ValueError, match="Unknown regularizer 'l3'. Known regularizers: l1, l1_l2, l2"):
        Dense(3, kernel_regularizer="l3")
    with pytest.raises(ValueError, match="L2 expected a non-negative number for l2, received l2=-1"):
        regularizers.L2(-1)
    with pytest.raises(ValueError, match="MinMaxNorm expected min_value <= max_value"):
        constraints.MinMaxNorm(2.0, 1.0)
    with pytest.raises(ValueError, match="Unknown constraint 'maxnorm2'"):
        Dense(3, kernel_constraint="maxnorm2")


def _regularized(dtype="float64", units=16, features=12):
    return dtrain.Sequential(
        [Input(shape=(features,)),
         Dense(units, activation="relu", kernel_regularizer=regularizers.L1L2(1e-3, 1e-2), bias_regularizer="l2",
               kernel_constraint=constraints.MaxNorm(1.5)),
         Dense(3, activation="softmax", activity_regularizer=regularizers.L2(1e-3),
               kernel_constraint=constraints.UnitNorm())],
        dtype=dtype,
    )  # fmt: skip


@pytest.mark.cluster
@pytest.mark.parametrize("wide", [False, True], ids=["allreduce", "sharded"])
def test_penalties_and_constraints_on_two_workers_equal_one_process(wide):
    from dtrain.training.sync import SHARDED_STEP_MIN_BYTES

    client = shared_client(2)
    features = 1024 if wide else 12
    x, labels = blobs(120, features=features)
    local, distributed = _regularized(units=1024 if wide else 16, features=features), None
    distributed = _regularized(units=1024 if wide else 16, features=features)
    for m in (local, distributed):
        m.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
        m.build(seed=2)
    assert (distributed.params.nbytes >= SHARDED_STEP_MIN_BYTES) == wide
    kwargs = dict(batch_size=20, epochs=2, seed=4, shards=2, verbose=0)
    h_local = local.fit(x, labels, **kwargs)
    h_dist = distributed.fit(x, labels, client=client, **kwargs)
    assert h_dist.sharded_step == wide
    for a, b in zip(distributed.get_weights(), local.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(h_dist.history["loss"], h_local.history["loss"], rtol=1e-9)
    assert np.linalg.norm(local.get_weights()[0], axis=0).max() <= 1.5 + 1e-9
