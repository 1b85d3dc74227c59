"""fit(sample_weight=, class_weight=) (issue 18): Keras' weighted loss (the weighted sum over the
batch size), its reported loss and val_loss, unweighted metrics; against real Keras 3 per epoch
in float64; on 2 workers equal to one process; bad weights refused before any work."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import blobs, shared_client
from keras_oracle import keras_or_skip, max_relative_difference

import dtrain
from dtrain.layers import Dense, Input


def _data(n=60, classes=3):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 5)), rng.integers(0, classes, n), rng.uniform(0.0, 3.0, n)


@pytest.mark.parametrize(
    "case",
    ["sample_weight sparse", "sample_weight one-hot + validation_split", "class_weight sparse",
     "class_weight one-hot", "class_weight binary", "sample_weight mse",
     "class_weight + weighted validation_data"],
)  # fmt: skip
def test_weighted_training_matches_keras_every_epoch(case):
    keras = keras_or_skip()
    keras.utils.set_random_seed(0)
    x, labels, w = _data()
    units, activation, loss, y = 3, "softmax", "sparse_categorical_crossentropy", labels
    if "one-hot" in case:
        loss, y = "categorical_crossentropy", np.eye(3)[labels]
    if "binary" in case:
        units, activation, loss, y = 1, "sigmoid", "binary_crossentropy", (labels > 0).astype(np.float64)[:, None]
    if "mse" in case:
        units, activation, loss, y = 3, None, "mse", np.eye(3)[labels]
    kwargs: dict = {"sample_weight": w} if "sample_weight" in case else {"class_weight": {0: 0.5, 1: 2.0}}
    extra: dict = {"validation_split": 0.25} if "validation_split" in case else {}
    if "validation_data" in case:  # (x_val, y_val, val_sample_weight): the weights weigh val_loss only
        xv, lv, wv = _data(n=21)
        extra = {"validation_data": (xv + 0.5, lv, wv)}
    K = keras.layers
    theirs = keras.Sequential([K.Input((5,)), K.Dense(8, activation="tanh"), K.Dense(units, activation=activation)])
    theirs.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss, metrics=["accuracy"])
    ours = dtrain.Sequential(
        [Input(shape=(5,)), Dense(8, activation="tanh"), Dense(units, activation=activation)], dtype="float64"
    )
    ours.compile(optimizer=dtrain.optimizers.Adam(0.01), loss=loss, metrics=["accuracy"])
    ours.set_weights(theirs.get_weights())
    for _ in range(3):
        h_theirs = theirs.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, **kwargs, **extra)
        h_ours = ours.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, **kwargs, **extra)
        assert max_relative_difference(ours.get_weights(), theirs.get_weights()) < 1e-10
        for key, values in h_theirs.history.items():
            np.testing.assert_allclose(h_ours.history[key], values, rtol=1e-9, err_msg=key)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sample_weight": np.ones(5)}, r"sample_weight must hold one weight per sample: 60 of them"),
        ({"sample_weight": np.r_[np.ones(59), np.nan]}, r"sample_weight contains NaN or infinite values"),
        ({"sample_weight": -np.ones(60)}, r"sample_weight must not be negative"),
        ({"class_weight": {0: 1.0, 7: 2.0}}, r"class_weight has class 7, which the model's 3 output\(s\) do not have"),
        ({"class_weight": {0: -1.0}}, r"class_weight\[0\] must be a number >= 0"),
        ({"class_weight": [1.0, 2.0]}, r"class_weight must be a dict"),
        ({"class_weight": {0: 1.0}, "sample_weight": np.ones(60)}, r"cannot `class_weight` and `sample_weight`"),
        ({"validation_data": (np.zeros((4, 5)), np.zeros(4), np.ones(3))},
         r"validation sample_weight must hold one weight per sample: 4 of them"),
        ({"validation_data": (np.zeros((4, 5)), np.zeros(4), -np.ones(4))}, r"validation sample_weight must not be neg"),
        ({"validation_data": (np.zeros((4, 5)),)}, r"validation_data must be a tuple \(x_val, y_val\) or"),
    ],
)  # fmt: skip
def test_bad_weights_are_refused_before_any_work(kwargs, match):
    x, labels, _ = _data()
    model = dtrain.Sequential([Input(shape=(5,)), Dense(3, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy")
    before = model.get_weights()
    with pytest.raises(ValueError, match=match):
        model.fit(x, labels, verbose=0, **kwargs)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    assert model.optimizer.iterations == 0


@pytest.mark.cluster
@pytest.mark.parametrize(
    "how", ["sample_weight", "class_weight", "dask sample_weight + validation_split", "dask weighted validation_data"]
)
def test_weights_on_two_workers_equal_one_process(how):
    client = shared_client(2)
    x, labels = blobs(120, features=12)
    weights = np.random.default_rng(3).uniform(0.1, 2.0, len(x))

    def model():
        m = dtrain.Sequential(
            [Input(shape=(12,)), Dense(16, activation="relu"), Dense(3, activation="softmax")], dtype="float64"
        )
        m.compile(loss="sparse_categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
        return m

    local, distributed = model(), model()
    distributed.set_weights(local.get_weights())
    kwargs: dict = dict(batch_size=24, epochs=3, seed=4, shards=2, verbose=0)
    if how == "class_weight":
        kwargs["class_weight"] = {0: 3.0, 2: 0.25}
        h_local = local.fit(x, labels, **kwargs)
        h_dist = distributed.fit(x, labels, client=client, **kwargs)
    else:
        if "validation_split" in how:
            kwargs["validation_split"] = 0.2
        if "validation_data" in how:  # 30 weighted validation rows, split 15/15 between the ranks
            x, labels, weights, xv, lv, wv = x[:90], labels[:90], weights[:90], x[90:], labels[90:], weights[90:]
            kwargs["validation_data"] = (xv, lv, wv)
        h_local = local.fit(x, labels, sample_weight=weights, **kwargs)
        sw = weights
        if "dask" in how:
            import dask.array as da

            x, labels, sw = (
                da.from_array(x, chunks=50),
                da.from_array(labels, chunks=50),
                da.from_array(weights, chunks=40),
            )
            if "validation_data" in how:
                kwargs["validation_data"] = (xv, da.from_array(lv, chunks=7), da.from_array(wv, chunks=11))
        h_dist = distributed.fit(x, labels, sample_weight=sw, client=client, **kwargs)
    for a, b in zip(distributed.get_weights(), local.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    assert h_dist.history.keys() == h_local.history.keys()
    for key, values in h_local.history.items():
        np.testing.assert_allclose(h_dist.history[key], values, rtol=1e-9, err_msg=key)
