"""ModelCheckpoint (issue 18): Keras' arguments and rules, loadable files written whole; with
client= the files hold the workers' model at each epoch's end (optimizer state included) and
equal one process's; EarlyStopping(restore_best_weights=True) works with client= too."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import blobs, shared_client

import dtrain
from dtrain.callbacks import EarlyStopping, ModelCheckpoint
from dtrain.layers import Dense, Input


def _model():
    m = dtrain.Sequential(
        [Input(shape=(12,)), Dense(16, activation="relu"), Dense(3, activation="softmax")], dtype="float64"
    )
    m.compile(loss="sparse_categorical_crossentropy", optimizer=dtrain.optimizers.Adam(0.01), metrics=["accuracy"])
    return m


class Snapshots(dtrain.callbacks.Callback):
    """The model's weights at each epoch's end, as the callbacks see them."""

    needs_model = True

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())


def test_every_epoch_and_the_best_only_as_keras_names_them(tmp_path):
    x, labels = blobs(90, features=12)
    snapshots = Snapshots()
    every = ModelCheckpoint(tmp_path / "every" / "m-{epoch:02d}-{loss:.3f}.keras")
    best = ModelCheckpoint(
        tmp_path / "best.weights.h5", monitor="val_loss", save_best_only=True, save_weights_only=True
    )
    history = _model().fit(
        x, labels, epochs=4, batch_size=16, validation_split=0.2, seed=1, verbose=0, callbacks=[snapshots, every, best]
    )
    files = sorted((tmp_path / "every").iterdir())
    assert [f.name for f in files] == [
        f"m-{e:02d}-{loss:.3f}.keras" for e, loss in enumerate(history.history["loss"], 1)
    ]
    for path, weights in zip(files, snapshots.weights):
        loaded = dtrain.load_model(path)
        for a, b in zip(loaded.get_weights(), weights):
            np.testing.assert_array_equal(a, b)
    best_epoch = int(np.argmin(history.history["val_loss"]))
    restored = _model()
    restored.load_weights(tmp_path / "best.weights.h5")
    for a, b in zip(restored.get_weights(), snapshots.weights[best_epoch]):
        np.testing.assert_array_equal(a, b)
    assert not [p for p in tmp_path.rglob("*.tmp")]  # every file written whole


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"filepath": "m.h5"}, r"must end in `.keras`"),
        ({"filepath": "m.keras", "save_weights_only": True}, r"must end in `.weights.h5`"),
        ({"filepath": "m.keras", "save_freq": "batch"}, r"Unrecognized save_freq"),
        ({"filepath": "m.keras", "mode": "up"}, r"expected mode in"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelCheckpoint(**kwargs)


def test_save_freq_in_batches(tmp_path):
    x, labels = blobs(64, features=12)
    _model().fit(x, labels, epochs=2, batch_size=16, seed=1, verbose=0,
                 callbacks=[ModelCheckpoint(tmp_path / "m-{epoch}-{batch}.keras", save_freq=3)])  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-1-3.keras", "m-2-2.keras"]  # every 3rd of 8 batches


@pytest.mark.cluster
def test_on_two_workers_the_files_hold_the_workers_model_and_equal_one_process(tmp_path):
    client = shared_client(2)
    x, labels = blobs(120, features=12)
    kwargs = dict(batch_size=24, epochs=4, seed=4, shards=2, verbose=0, validation_split=0.2)
    local, distributed = _model(), _model()
    distributed.set_weights(local.get_weights())
    stop = dict(monitor="val_loss", patience=1, min_delta=10.0, restore_best_weights=True)  # stops after epoch 2
    local.fit(x, labels, callbacks=[ModelCheckpoint(tmp_path / "local-{epoch}.keras"), EarlyStopping(**stop)], **kwargs)
    h_dist = distributed.fit(
        x, labels, client=client, callbacks=[ModelCheckpoint(tmp_path / "dist-{epoch}.keras"), EarlyStopping(**stop)],
        **kwargs,
    )  # fmt: skip
    assert len(h_dist.history["loss"]) == 2
    for epoch in (1, 2):
        ours, theirs = (
            dtrain.load_model(tmp_path / f"dist-{epoch}.keras"),
            dtrain.load_model(tmp_path / f"local-{epoch}.keras"),
        )
        for a, b in zip(ours.get_weights(), theirs.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
        assert ours.optimizer.iterations == theirs.optimizer.iterations == epoch * 4
        for name, slot in theirs.optimizer.get_state().items():
            np.testing.assert_allclose(ours.optimizer.get_state()[name], slot, rtol=1e-9, atol=1e-12)
    for a, b in zip(distributed.get_weights(), local.get_weights()):  # restore_best_weights: epoch 1's
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.cluster
def test_saving_within_epochs_is_refused_with_client():
    client = shared_client(2)
    x, labels = blobs(60, features=12)
    with pytest.raises(ValueError, match=r"saves within epochs; with client= the model lives on the workers"):
        _model().fit(x, labels, client=client, verbose=0, callbacks=[ModelCheckpoint("m.keras", save_freq=2)])
