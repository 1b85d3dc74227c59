"""Every optimizer, Keras' common optimizer arguments and every learning-rate schedule (issue 18)
against real Keras 3 in float64: same initial weights, same data, shuffle=False, the weights
compared after every epoch; and the same runs on two workers against one process."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import blobs, shared_client
from keras_oracle import keras_or_skip, max_relative_difference

import dtrain
from dtrain.layers import BatchNormalization, Dense, Input

SCHEDULES = {
    "ExponentialDecay": dict(initial_learning_rate=0.1, decay_steps=2, decay_rate=0.7),
    "ExponentialDecay staircase": dict(initial_learning_rate=0.1, decay_steps=2, decay_rate=0.7, staircase=True),
    "PiecewiseConstantDecay": dict(boundaries=[2, 5], values=[0.1, 0.05, 0.01]),
    "PolynomialDecay": dict(initial_learning_rate=0.1, decay_steps=5, end_learning_rate=0.01, power=2.0),
    "PolynomialDecay cycle": dict(initial_learning_rate=0.1, decay_steps=4, power=0.5, cycle=True),
    "InverseTimeDecay": dict(initial_learning_rate=0.1, decay_steps=3, decay_rate=0.5, staircase=True),
    "CosineDecay": dict(initial_learning_rate=0.1, decay_steps=7, alpha=0.1),
    "CosineDecay warmup": dict(initial_learning_rate=0.0, decay_steps=5, warmup_target=0.1, warmup_steps=3),
    "CosineDecayRestarts": dict(initial_learning_rate=0.1, first_decay_steps=2, t_mul=2.0, m_mul=0.8, alpha=0.05),
    "CosineDecayRestarts t_mul 1": dict(initial_learning_rate=0.1, first_decay_steps=3, t_mul=1.0),
}

CONFIGS = [
    ("SGD", dict(learning_rate=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adam", dict(learning_rate=0.01, amsgrad=True)),
    ("Adam", dict(learning_rate=0.01, clipnorm=0.05)),
    ("Adam", dict(learning_rate=0.01, global_clipnorm=0.05)),
    ("Adam", dict(learning_rate=0.01, clipvalue=0.01)),
    ("AdamW", dict(learning_rate=0.01)),
    ("AdamW", dict(learning_rate=0.01, weight_decay=0.1, amsgrad=True)),
    ("RMSprop", dict(learning_rate=0.01, centered=True, momentum=0.5, weight_decay=0.05)),
    ("Adagrad", dict(learning_rate=0.1)),
    ("Adagrad", dict(learning_rate=0.1, initial_accumulator_value=0.5, weight_decay=0.01, clipnorm=0.1)),
    ("Adadelta", dict(learning_rate=1.0)),
    ("Adamax", dict(learning_rate=0.02)),
    ("Nadam", dict(learning_rate=0.01)),
    ("Lion", dict(learning_rate=0.003)),
    ("Ftrl", dict(learning_rate=0.1)),
    ("Ftrl", dict(learning_rate=0.1, learning_rate_power=-0.7, l1_regularization_strength=0.01,
                  l2_regularization_strength=0.01, l2_shrinkage_regularization_strength=0.01, beta=0.1)),
    ("Adam", dict(learning_rate=0.01, use_ema=True, ema_momentum=0.9)),
    ("SGD", dict(learning_rate=0.05, use_ema=True, ema_overwrite_frequency=2)),
    ("Adam", dict(learning_rate=0.01, gradient_accumulation_steps=2)),
    ("Adam", dict(learning_rate=0.01, gradient_accumulation_steps=3, global_clipnorm=0.05)),
    *[("SGD", dict(learning_rate=("schedule", name), momentum=0.5)) for name in SCHEDULES],
    ("AdamW", dict(learning_rate=("schedule", "CosineDecay warmup"), clipnorm=0.1)),
]  # fmt: skip


def _ids(config):
    name, kwargs = config
    return f"{name}({', '.join(f'{k}={v[1] if isinstance(v, tuple) else v}' for k, v in kwargs.items())})"


def _make(module, name, kwargs):
    kwargs = dict(kwargs)
    lr = kwargs.get("learning_rate")
    if isinstance(lr, tuple):
        schedule = lr[1]
        kwargs["learning_rate"] = getattr(module.optimizers.schedules, schedule.split()[0])(**SCHEDULES[schedule])
    return getattr(module.optimizers, name)(**kwargs)


def _data(n=48):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 5))
    return x, np.eye(3)[rng.integers(0, 3, n)]


@pytest.mark.parametrize("config", CONFIGS, ids=[_ids(c) for c in CONFIGS])
def test_optimizer_matches_keras_every_epoch(config):
    keras = keras_or_skip()
    keras.utils.set_random_seed(0)
    name, kwargs = config
    K = keras.layers
    theirs = keras.Sequential(
        [K.Input((5,)), K.Dense(8, activation="tanh"), K.BatchNormalization(), K.Dense(3, activation="softmax")]
    )
    # (jit_compile=False: compiled, Keras 3.1x on JAX donates a buffer twice with use_ema)
    theirs.compile(optimizer=_make(keras, name, kwargs), loss="categorical_crossentropy", jit_compile=False)
    ours = dtrain.Sequential(
        [Input(shape=(5,)), Dense(8, activation="tanh"), BatchNormalization(), Dense(3, activation="softmax")],
        dtype="float64",
    )
    ours.compile(optimizer=_make(dtrain, name, kwargs), loss="categorical_crossentropy")
    ours.set_weights(theirs.get_weights())
    x, y = _data()
    for _ in range(3):
        theirs.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        ours.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        assert max_relative_difference(ours.get_weights(), theirs.get_weights()) < 1e-10
    assert ours.optimizer.iterations == int(theirs.optimizer._iterations.numpy())
    assert (
        abs(ours.optimizer.learning_rate - float(theirs.optimizer.learning_rate))
        <= 1e-12 * ours.optimizer.learning_rate
    )


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedules_give_keras_values_at_every_step(name):
    keras = keras_or_skip()
    cls = name.split()[0]
    ours = getattr(dtrain.optimizers.schedules, cls)(**SCHEDULES[name])
    theirs = getattr(keras.optimizers.schedules, cls)(**SCHEDULES[name])
    for step in range(40):
        assert ours(step) == pytest.approx(float(theirs(step)), rel=1e-13, abs=1e-15), step
    again = dtrain.optimizers.schedules.get(dtrain.optimizers.schedules.serialize(ours))
    assert again == ours and again.get_config() == ours.get_config()


@pytest.mark.cluster
@pytest.mark.parametrize(
    "optimizer, layers",
    [
        ("adamw-global-clip-schedule", [12, 16, 3]),
        ("nadam-clipnorm-ema-accumulation", [12, 16, 3]),
        ("ftrl-clipnorm", [12, 16, 3]),
        ("adamw-clipnorm-sharded", [12, 800, 800, 3]),  # over 2 MiB of float64 gradient: the sharded step
        ("lion-global-clip-accumulation-sharded", [12, 800, 800, 3]),
    ],
)
def test_optimizers_on_two_workers_equal_one_process(optimizer, layers):
    client = shared_client(2)
    x, labels = blobs(120, features=12)

    def make():
        schedule = dtrain.optimizers.schedules.CosineDecay(0.01, decay_steps=10, warmup_target=0.02, warmup_steps=3)
        return {
            "adamw-global-clip-schedule": dtrain.optimizers.AdamW(schedule, global_clipnorm=0.5),
            "nadam-clipnorm-ema-accumulation": dtrain.optimizers.Nadam(
                0.01, clipnorm=0.1, use_ema=True, ema_momentum=0.8, gradient_accumulation_steps=2
            ),
            "ftrl-clipnorm": dtrain.optimizers.Ftrl(0.1, clipnorm=0.2, l1_regularization_strength=0.001),
            "adamw-clipnorm-sharded": dtrain.optimizers.AdamW(0.003, clipnorm=0.05),
            "lion-global-clip-accumulation-sharded": dtrain.optimizers.Lion(
                0.001, global_clipnorm=0.1, gradient_accumulation_steps=2
            ),
        }[optimizer]

    def model():
        stack = [Input(shape=(layers[0],))]
        stack += [Dense(units, activation="relu") for units in layers[1:-1]]
        stack.append(Dense(layers[-1], activation="softmax"))
        m = dtrain.Sequential(stack, dtype="float64")
        m.compile(loss="sparse_categorical_crossentropy", optimizer=make(), metrics=["accuracy"])
        return m

    local, distributed = model(), model()
    distributed.set_weights(local.get_weights())
    kwargs = dict(batch_size=24, epochs=3, seed=4, shards=2, verbose=0)
    h_local = local.fit(x, labels, **kwargs)
    h_dist = distributed.fit(x, labels, client=client, **kwargs)
    assert h_dist.sharded_step == ("sharded" in optimizer)
    for a, b in zip(distributed.get_weights(), local.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(h_dist.history["loss"], h_local.history["loss"], rtol=1e-9)
    assert distributed.optimizer.iterations == local.optimizer.iterations
    for name, slot in local.optimizer.get_state().items():
        np.testing.assert_allclose(distributed.optimizer.get_state()[name], slot, rtol=1e-9, atol=1e-12)
