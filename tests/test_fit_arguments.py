"""More of Keras' fit (issue 18): validation_freq, BackupAndRestore on dtrain's exact resume, and
Dask arrays with no client= (the default client's cluster, as dask-ml does; a warning without one)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import blobs, shared_client
from keras_oracle import keras_or_skip

import dtrain
from dtrain.callbacks import BackupAndRestore, Callback
from dtrain.checkpoints import list_checkpoints
from dtrain.layers import Dense, Input


def _model():
    m = dtrain.Sequential(
        [Input(shape=(12,)), Dense(16, activation="relu"), Dense(3, activation="softmax")], dtype="float64"
    )
    m.compile(loss="sparse_categorical_crossentropy", optimizer=dtrain.optimizers.Adam(0.01), metrics=["accuracy"])
    return m


@pytest.mark.parametrize("freq", [2, [1, 4]])
def test_validation_freq_as_keras(freq):
    keras = keras_or_skip()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 12)), rng.integers(0, 3, 40)
    theirs = keras.Sequential([keras.Input((12,)), keras.layers.Dense(3, activation="softmax")])
    theirs.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    ours = dtrain.Sequential([Input(shape=(12,)), Dense(3, activation="softmax")], dtype="float64")
    ours.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    ours.set_weights(theirs.get_weights())
    kwargs = dict(epochs=4, batch_size=8, shuffle=False, verbose=0, validation_split=0.25, validation_freq=freq)
    h_theirs, h_ours = theirs.fit(x, y, **kwargs), ours.fit(x, y, **kwargs)
    assert len(h_ours.history["val_loss"]) == len(h_theirs.history["val_loss"]) == 2
    np.testing.assert_allclose(h_ours.history["val_loss"], h_theirs.history["val_loss"], rtol=1e-9)
    with pytest.raises(ValueError, match="validation_freq to be a positive integer"):
        ours.fit(x, y, validation_freq=0)


@pytest.mark.cluster
def test_validation_freq_on_two_workers_equals_one_process():
    client = shared_client(2)
    x, labels = blobs(120, features=12)
    local, distributed = _model(), _model()
    distributed.set_weights(local.get_weights())
    kwargs = dict(batch_size=24, epochs=4, seed=4, shards=2, verbose=0, validation_split=0.2, validation_freq=2)
    h_local, h_dist = local.fit(x, labels, **kwargs), distributed.fit(x, labels, client=client, **kwargs)
    assert len(h_dist.history["val_loss"]) == 2
    for key, values in h_local.history.items():
        np.testing.assert_allclose(h_dist.history[key], values, rtol=1e-9, err_msg=key)


class Interrupt(Callback):
    """Stops the process's training after an epoch, as a crash would (no on_train_end)."""

    def __init__(self, after_epoch):
        super().__init__()
        self.after_epoch = after_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.after_epoch:
            raise RuntimeError("interrupted")


@pytest.mark.parametrize("where", ["one process", "cluster"])
def test_backup_and_restore_goes_on_where_it_stopped_and_ends_as_an_uninterrupted_run(tmp_path, where):
    x, labels = blobs(120, features=12)
    extra = {"client": shared_client(2)} if where == "cluster" else {}
    kwargs = dict(batch_size=24, epochs=5, seed=4, shards=2, verbose=0, **extra)
    uninterrupted, interrupted = _model(), _model()
    interrupted.set_weights(uninterrupted.get_weights())
    start = uninterrupted.get_weights()
    expected = uninterrupted.fit(x, labels, **kwargs)
    backup = BackupAndRestore(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="interrupted"):
        interrupted.fit(x, labels, callbacks=[backup, Interrupt(after_epoch=2)], **kwargs)
    assert list_checkpoints(tmp_path / "backup")  # the epochs done are backed up
    (tmp_path / "backup" / "notes.txt").write_text("mine")
    again = _model()  # a new process would start from a fresh model
    again.set_weights(start)
    history = again.fit(x, labels, callbacks=[backup], **kwargs)
    for a, b in zip(again.get_weights(), uninterrupted.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(history.history["loss"], expected.history["loss"], rtol=1e-9)
    assert not list_checkpoints(tmp_path / "backup")  # deleted at the end: the backup did its job
    assert (tmp_path / "backup" / "notes.txt").read_text() == "mine"  # and nothing else


def test_backup_and_restore_arguments(tmp_path):
    with pytest.raises(ValueError, match="Empty `backup_dir`"):
        BackupAndRestore("")
    with pytest.raises(ValueError, match="Invalid value for argument `save_freq`"):
        BackupAndRestore(tmp_path, save_freq="batch")
    x, labels = blobs(40, features=12)
    with pytest.raises(ValueError, match="pass it or checkpoint_dir=/resume_from=, not both"):
        _model().fit(x, labels, verbose=0, checkpoint_dir=str(tmp_path / "c"), callbacks=[BackupAndRestore(tmp_path)])


def test_dask_arrays_without_a_client_are_computed_here_with_a_warning():
    da = pytest.importorskip("dask.array")
    from distributed import default_client

    try:
        default_client()
        pytest.skip("a default Dask client exists in this process")
    except ValueError:
        pass
    x, labels = blobs(60, features=12)
    with pytest.warns(UserWarning, match="received Dask arrays and there is no Dask client"):
        _model().fit(da.from_array(x, chunks=20), da.from_array(labels, chunks=20), verbose=0, epochs=1)


@pytest.mark.cluster
def test_dask_arrays_train_on_the_default_clients_cluster():
    da = pytest.importorskip("dask.array")
    from distributed import Client, LocalCluster

    x, labels = blobs(120, features=12)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,  # the default client, as a user makes it
    ):
        model = _model()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning: the data stay on the cluster
            history = model.fit(da.from_array(x, chunks=30), da.from_array(labels, chunks=30), epochs=2, verbose=0)
        assert sorted(history.workers) == sorted(client.scheduler_info()["workers"])
