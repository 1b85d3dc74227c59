"""Callbacks that change the optimizer (issue 18): LearningRateScheduler and ReduceLROnPlateau
against real Keras 3; with client=, what a callback changes between epochs reaches every worker
before the next epoch (2 workers equal one process with the same shards), and what cannot reach
them (a change inside an epoch, a change of the optimizer's kind) is an error that says why."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import blobs, shared_client
from keras_oracle import keras_or_skip, max_relative_difference

import dtrain
from dtrain.callbacks import Callback, CSVLogger, LearningRateScheduler, ReduceLROnPlateau
from dtrain.layers import Dense, Input


def _halve_after_first(epoch, lr):
    return lr if epoch == 0 else lr * 0.5


@pytest.mark.parametrize("which", ["scheduler", "plateau"])
def test_learning_rate_callbacks_match_keras(which):
    keras = keras_or_skip()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((48, 5)), np.eye(3)[rng.integers(0, 3, 48)]
    theirs = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)])
    theirs.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.5), loss="mse")
    ours = dtrain.Sequential([Input(shape=(5,)), Dense(8, activation="tanh"), Dense(3)], dtype="float64")
    ours.compile(optimizer=dtrain.optimizers.SGD(0.1, momentum=0.5), loss="mse")
    ours.set_weights(theirs.get_weights())
    if which == "scheduler":
        k_cb, d_cb = (
            keras.callbacks.LearningRateScheduler(_halve_after_first),
            LearningRateScheduler(_halve_after_first),
        )
    else:  # min_delta larger than any improvement: a plateau every other epoch
        kwargs = dict(monitor="loss", factor=0.5, patience=1, min_delta=10.0, cooldown=1)
        k_cb, d_cb = keras.callbacks.ReduceLROnPlateau(**kwargs), ReduceLROnPlateau(**kwargs)
    h_theirs = theirs.fit(x, y, batch_size=16, epochs=5, shuffle=False, verbose=0, callbacks=[k_cb])
    h_ours = ours.fit(x, y, batch_size=16, epochs=5, shuffle=False, verbose=0, callbacks=[d_cb])
    assert max_relative_difference(ours.get_weights(), theirs.get_weights()) < 1e-10
    np.testing.assert_allclose(h_ours.history["learning_rate"], h_theirs.history["learning_rate"], rtol=1e-12)
    assert len(set(h_ours.history["learning_rate"])) > 1  # it did change


class SetsTheRateItself(Callback):
    """The workaround issue 18 found ignored on clusters: assign the rate (and momentum) by hand."""

    def on_epoch_begin(self, epoch, logs=None):
        self.model.optimizer.learning_rate = 0.05 / (1 + epoch)

    def on_epoch_end(self, epoch, logs=None):
        self.model.optimizer.momentum = 0.5 if epoch == 0 else 0.8


def _model(optimizer=None):
    m = dtrain.Sequential(
        [Input(shape=(12,)), Dense(16, activation="relu"), Dense(3, activation="softmax")], dtype="float64"
    )
    m.compile(loss="sparse_categorical_crossentropy", optimizer=optimizer or dtrain.optimizers.SGD(0.05, momentum=0.9))
    return m


@pytest.mark.cluster
@pytest.mark.parametrize("make_callback", [lambda: LearningRateScheduler(_halve_after_first), SetsTheRateItself])
def test_a_callback_that_changes_the_optimizer_reaches_every_worker(make_callback):
    client = shared_client(2)
    x, labels = blobs(120, features=12)
    kwargs = dict(batch_size=24, epochs=4, seed=4, shards=2, verbose=0)
    local, distributed, untouched = _model(), _model(), _model()
    for m in (distributed, untouched):
        m.set_weights(local.get_weights())
    h_local = local.fit(x, labels, callbacks=[make_callback()], **kwargs)
    h_dist = distributed.fit(x, labels, client=client, callbacks=[make_callback()], **kwargs)
    untouched.fit(x, labels, client=client, **kwargs)
    for a, b in zip(distributed.get_weights(), local.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(h_dist.history["loss"], h_local.history["loss"], rtol=1e-9)
    assert not np.allclose(untouched.get_weights()[0], distributed.get_weights()[0])  # the change did count
    assert distributed.optimizer.learning_rate == local.optimizer.learning_rate
    assert distributed.optimizer.momentum == local.optimizer.momentum


class ChangesWithinTheEpoch(Callback):
    def on_train_batch_end(self, batch, logs=None):
        self.model.optimizer.learning_rate = 0.001


class TurnsOnNesterov(Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.model.optimizer.nesterov = True


@pytest.mark.cluster
@pytest.mark.parametrize(
    "callback, match",
    [
        (ChangesWithinTheEpoch(), r"changed the optimizer \(learning_rate\) in on_train_batch_end during epoch 1"),
        (TurnsOnNesterov(), r"The optimizer's nesterov from False to True changed during training; on a cluster"),
    ],
)
def test_what_cannot_reach_the_workers_is_an_error_not_ignored(callback, match):
    client = shared_client(2)
    x, labels = blobs(120, features=12)
    model = _model()
    with pytest.raises(ValueError, match=match):
        model.fit(x, labels, client=client, batch_size=8, epochs=3, seed=4, verbose=0, callbacks=[callback])


def test_csv_logger_writes_a_row_per_epoch_and_appends(tmp_path):
    x, labels = blobs(60, features=12)
    path = tmp_path / "log.csv"
    model = _model()
    model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd", metrics=["accuracy"])
    scheduler = LearningRateScheduler(_halve_after_first)  # (before the logger: it adds learning_rate to the logs)
    model.fit(x, labels, epochs=2, verbose=0, callbacks=[scheduler, CSVLogger(path)])
    model.fit(x, labels, epochs=1, verbose=0, callbacks=[scheduler, CSVLogger(path, append=True)])
    rows = list(csv.DictReader(path.open()))
    assert [r["epoch"] for r in rows] == ["0", "1", "0"]
    assert list(rows[0]) == ["epoch", "accuracy", "learning_rate", "loss"]
    assert [float(r["learning_rate"]) for r in rows] == pytest.approx([0.01, 0.005, 0.005])
    assert all(float(r["loss"]) > 0 for r in rows)
