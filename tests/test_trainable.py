"""``trainable`` (issue 17): frozen layers do not move (also under Adam's momentum), cost no
weight-gradient work, take effect at compile as in Keras (and training after an uncompiled
change is an error), match real Keras per epoch, and train the same on two workers; the model
API around it: summary counts, trainable_weights, get_layer, pop, model(x)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import blobs, shared_client
from keras_oracle import keras_or_skip, max_relative_difference

import dtrain
from dtrain.layers import BatchNormalization, Dense, Dropout, Input


def _stack(L, freeze: str):
    layers = [L.Input((5,)) if L is not dtrain.layers else Input(shape=(5,)),
              L.Dense(8, activation="tanh"), L.BatchNormalization(momentum=0.8), L.Dense(6, activation="relu"),
              L.Dense(3, activation="softmax")]  # fmt: skip
    body = layers[1:]
    if freeze == "first dense":
        body[0].trainable = False
    elif freeze == "batchnorm":
        body[1].trainable = False
    elif freeze == "all but the last":
        for layer in body[:-1]:
            layer.trainable = False
    return layers


@pytest.mark.parametrize("freeze", ["first dense", "batchnorm", "all but the last"])
def test_frozen_layers_train_as_in_keras(freeze):
    keras = keras_or_skip()
    keras.utils.set_random_seed(3)
    theirs = keras.Sequential(_stack(keras.layers, freeze))
    theirs.compile(optimizer=keras.optimizers.Adam(0.05), loss="categorical_crossentropy")
    ours = dtrain.Sequential(_stack(dtrain.layers, freeze), dtype="float64")
    ours.compile(optimizer=dtrain.optimizers.Adam(0.05), loss="categorical_crossentropy")
    ours.set_weights(theirs.get_weights())
    before = ours.get_weights()
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((40, 5)) + 1.0, np.eye(3)[rng.integers(0, 3, 40)]
    for _ in range(3):
        theirs.fit(x, y, batch_size=10, epochs=1, shuffle=False, verbose=0)
        ours.fit(x, y, batch_size=10, epochs=1, shuffle=False, verbose=0)
        assert max_relative_difference(ours.get_weights(), theirs.get_weights()) < 1e-9
    frozen = [layer for layer in ours.layers if not layer.trainable]
    offsets = np.cumsum([0] + [len(layer.get_weights()) for layer in ours.layers])
    for layer in frozen:
        i = ours.layers.index(layer)
        for a, b in zip(ours.get_weights()[offsets[i] : offsets[i + 1]], before[offsets[i] : offsets[i + 1]]):
            np.testing.assert_array_equal(a, b)  # not a bit moved (BatchNormalization's statistics neither)
    assert len(ours.trainable_weights) == len(theirs.trainable_weights)
    assert len(ours.non_trainable_weights) == len(theirs.non_trainable_weights)


def test_freezing_after_momentum_built_up_still_holds_the_weights():
    model = dtrain.Sequential([Input(shape=(4,)), Dense(6, activation="tanh"), Dense(2)], dtype="float64")
    model.compile(optimizer=dtrain.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    x, y = np.random.default_rng(2).standard_normal((32, 4)), np.random.default_rng(3).standard_normal((32, 2))
    model.fit(x, y, epochs=2, verbose=0, seed=0)
    model.layers[0].trainable = False
    with pytest.raises(RuntimeError, match=r"trainable changed since compile\(\) for layer\(s\) 'dense.*compile"):
        model.fit(x, y, epochs=1, verbose=0)
    model.compile(optimizer=dtrain.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    kernel = model.layers[0].get_weights()[0]
    model.fit(x, y, epochs=2, verbose=0, seed=0)
    np.testing.assert_array_equal(model.layers[0].get_weights()[0], kernel)
    assert model.layers[0].kernel_grad.any() == False  # noqa: E712 (no gradient work for it)


def test_summary_counts_and_configs():
    model = dtrain.Sequential([Input(shape=(4,)), Dense(3), BatchNormalization(), Dense(2)])
    model.layers[0].trainable = False
    lines: list[str] = []
    model.build(seed=0)
    model.summary(print_fn=lines.append)
    assert "Total params: 35" in lines and "Trainable params: 14" in lines and "Non-trainable params: 21" in lines
    clone = dtrain.Sequential.from_config(model.get_config())
    assert [layer.trainable for layer in clone.layers] == [False, True, True]
    assert "trainable" not in model.layers[1].get_config()
    model.trainable = False
    assert not any(layer.trainable for layer in model.layers) and not model.trainable


def test_model_api_call_get_layer_pop():
    model = dtrain.Sequential(
        [Input(shape=(4,)), Dense(5, name="hidden"), Dropout(0.5), Dense(2, name="out")], dtype="float64"
    )
    model.build(seed=1)
    x = np.random.default_rng(0).standard_normal((6, 4))
    np.testing.assert_allclose(model(x), model.predict(x, verbose=0))
    assert not np.allclose(model(x, training=True), model(x))  # dropout on
    assert model.get_layer("hidden") is model.layers[0] and model.get_layer(index=-1).name == "out"
    with pytest.raises(ValueError, match="No layer named 'nope'.*Its layers: hidden, dropout"):
        model.get_layer("nope")
    hidden = model.layers[0].get_weights()
    popped = model.pop()
    assert popped.name == "out" and [layer.name for layer in model.layers] == ["hidden", model.layers[1].name]
    for a, b in zip(model.layers[0].get_weights(), hidden):
        np.testing.assert_array_equal(a, b)
    assert model(x).shape == (6, 5)
    unbuilt = dtrain.Sequential([Input(shape=(4,)), Dense(5), Dense(2)])
    unbuilt.pop()
    unbuilt.add(Dense(3, name="new"))
    assert unbuilt.output_units == 3 and len(unbuilt.get_weights()) == 4


@pytest.mark.cluster
def test_frozen_layers_on_two_workers_equal_one_process():
    client = shared_client(2)
    x, labels = blobs(100, features=12)

    def model():
        m = dtrain.Sequential(
            [Input(shape=(12,)), Dense(16, activation="relu"), BatchNormalization(), Dense(8, activation="relu"),
             Dense(3, activation="softmax")],
            dtype="float64",
        )  # fmt: skip
        m.layers[0].trainable = False
        m.layers[1].trainable = False
        m.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
        m.build(seed=3)
        return m

    local, distributed = model(), model()
    kwargs = dict(batch_size=20, epochs=2, seed=1, shards=2, verbose=0)
    local.fit(x, labels, **kwargs)
    distributed.fit(x, labels, client=client, **kwargs)
    for a, b in zip(distributed.get_weights(), local.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(distributed.layers[0].get_weights()[0], model().layers[0].get_weights()[0])
