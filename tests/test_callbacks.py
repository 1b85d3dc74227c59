"""The callback protocol, EarlyStopping (Keras' rules), TerminateOnNaN and the progress bar."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import blobs, small_model

from dtrain import callbacks, optimizers
from dtrain.callbacks import EarlyStopping, LambdaCallback, ProgressBar, TerminateOnNaN
from dtrain.layers import Dense
from dtrain.models import Sequential


class Recorder(callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.calls = []

    def on_train_begin(self, logs=None):
        self.calls.append(("train_begin",))

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("epoch_begin", epoch))

    def on_train_batch_begin(self, batch, logs=None):
        self.calls.append(("batch_begin", batch))

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("batch_end", batch, dict(logs)))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch_end", epoch, dict(logs)))

    def on_train_end(self, logs=None):
        self.calls.append(("train_end", dict(logs)))


def _fit(epochs=2, n=40, batch_size=20, extra=(), **kwargs):
    x, labels = blobs(n)
    model = small_model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    recorder = Recorder()
    history = model.fit(
        x, labels, epochs=epochs, batch_size=batch_size, verbose=0, seed=0, callbacks=[recorder, *extra], **kwargs
    )
    return model, history, recorder.calls


# -- protocol --------------------------------------------------------------------------------------
def test_hooks_are_called_in_keras_order():
    x, labels = blobs(40)
    _, history, calls = _fit(validation_data=(x[:10], labels[:10]))
    assert [c[:2] if c[0] != "train_begin" else c for c in calls if c[0] != "train_end"] == [
        ("train_begin",),
        ("epoch_begin", 0),
        ("batch_begin", 0),
        ("batch_end", 0),
        ("batch_begin", 1),
        ("batch_end", 1),
        ("epoch_end", 0),
        ("epoch_begin", 1),
        ("batch_begin", 0),
        ("batch_end", 0),
        ("batch_begin", 1),
        ("batch_end", 1),
        ("epoch_end", 1),
    ]
    assert calls[-1][0] == "train_end"
    batch_logs = [c[2] for c in calls if c[0] == "batch_end"]
    assert all(set(logs) == {"loss", "accuracy"} for logs in batch_logs)
    epoch_logs = [c[2] for c in calls if c[0] == "epoch_end"]
    assert all(set(logs) == {"loss", "accuracy", "val_loss", "val_accuracy"} for logs in epoch_logs)
    # The epoch logs are what History records; train_end gets the last epoch's logs.
    assert [logs["loss"] for logs in epoch_logs] == history.history["loss"]
    assert calls[-1][1] == epoch_logs[-1]
    # The last batch's running logs of an epoch are the epoch's training logs.
    assert batch_logs[1]["loss"] == pytest.approx(epoch_logs[0]["loss"])


def test_lambda_callback_hooks_receive_logs():
    seen = []
    cb = LambdaCallback(
        on_train_begin=lambda logs: seen.append(("train_begin", logs)),
        on_epoch_end=lambda epoch, logs: seen.append(("epoch_end", epoch, sorted(logs))),
        on_train_batch_end=lambda batch, logs: seen.append(("batch_end", batch)),
        on_train_end=lambda logs: seen.append(("train_end", sorted(logs))),
    )
    _fit(epochs=1, extra=[cb])
    assert seen == [
        ("train_begin", {}),
        ("batch_end", 0),
        ("batch_end", 1),
        ("epoch_end", 0, ["accuracy", "loss"]),
        ("train_end", ["accuracy", "loss"]),
    ]
    with pytest.raises(ValueError, match="unknown hook 'on_epoch_finish'"):
        LambdaCallback(on_epoch_finish=print)


# -- EarlyStopping, driven with given logs ---------------------------------------------------------
class FakeModel:
    """Stands in for a model: its 'weights' are the epoch number they were taken at."""

    def __init__(self):
        self.stop_training = False
        self.epoch = 0
        self.restored = None

    def get_weights(self):
        return [np.array(self.epoch)]

    def set_weights(self, weights):
        self.restored = int(weights[0])


def _drive(cb, values, key="loss"):
    """Run ``cb`` over epochs whose logs hold ``values``; return the epoch it stopped at (or None)."""
    model = FakeModel()
    cb.set_model(model)
    cb.on_train_begin({})
    stopped = None
    for epoch, value in enumerate(values):
        model.epoch = epoch
        cb.on_epoch_end(epoch, {key: value})
        if model.stop_training:
            stopped = epoch
            break
    cb.on_train_end({})
    return stopped, model


def test_early_stopping_patience():
    assert _drive(EarlyStopping(monitor="loss", patience=2), [1.0, 0.9, 0.95, 0.92, 0.8])[0] == 3
    assert _drive(EarlyStopping(monitor="loss", patience=0), [1.0, 0.9, 0.95, 0.8])[0] == 2
    assert _drive(EarlyStopping(monitor="loss", patience=3), [1.0, 0.9, 0.95, 0.92, 0.8, 0.85])[0] is None
    assert _drive(EarlyStopping(monitor="loss", patience=1), [1.0, 0.9, 0.8, 0.7, 0.6])[0] is None
    # Equal is not better.
    assert _drive(EarlyStopping(monitor="loss", patience=1), [1.0, 1.0, 1.0])[0] == 1


def test_early_stopping_min_delta():
    values = [1.0, 0.97, 0.94, 0.91, 0.88]  # steps of 0.03
    assert _drive(EarlyStopping(monitor="loss", patience=1, min_delta=0.05), values)[0] == 1
    assert _drive(EarlyStopping(monitor="loss", patience=1, min_delta=-0.05), values)[0] == 1  # abs(min_delta)
    assert _drive(EarlyStopping(monitor="loss", patience=1, min_delta=0.01), values)[0] is None
    # min_delta=0.04: epoch 1 does not count (0.03 better), epoch 2 does (0.06 better than epoch 0).
    assert _drive(EarlyStopping(monitor="loss", patience=1, min_delta=0.04), values)[0] == 1
    assert _drive(EarlyStopping(monitor="loss", patience=2, min_delta=0.04), values)[0] is None


def test_early_stopping_mode_auto_maximises_accuracies():
    rising = [0.5, 0.6, 0.7, 0.8]
    assert EarlyStopping(monitor="val_accuracy").mode == "max"
    assert EarlyStopping(monitor="acc").mode == "max"
    assert EarlyStopping(monitor="val_loss").mode == "min"
    assert EarlyStopping(monitor="val_mse").mode == "min"
    assert _drive(EarlyStopping(monitor="val_accuracy", patience=0), rising, key="val_accuracy")[0] is None
    assert _drive(EarlyStopping(monitor="val_accuracy", patience=0, mode="min"), rising, key="val_accuracy")[0] == 1
    assert _drive(EarlyStopping(monitor="loss", patience=0, mode="max"), [1.0, 0.9], key="loss")[0] == 1
    with pytest.raises(ValueError, match="mode='maximum'"):
        EarlyStopping(mode="maximum")


def test_early_stopping_restore_best_weights_at_the_end():
    stopped, model = _drive(EarlyStopping(monitor="loss", patience=2, restore_best_weights=True), [1.0, 0.7, 0.9, 0.8])
    assert stopped == 3 and model.restored == 1
    # Without stopping, the best weights come back all the same (Keras 3).
    stopped, model = _drive(EarlyStopping(monitor="loss", patience=5, restore_best_weights=True), [1.0, 0.7, 0.9])
    assert stopped is None and model.restored == 1
    stopped, model = _drive(EarlyStopping(monitor="loss", patience=1), [1.0, 2.0, 3.0])
    assert stopped == 1 and model.restored is None


def test_early_stopping_baseline():
    # Keras 3's rule: an improvement never stops training, even short of the baseline...
    stopped, model = _drive(
        EarlyStopping(monitor="loss", patience=2, baseline=0.5, restore_best_weights=True), [1.0, 0.9, 0.8, 0.7]
    )
    assert stopped is None and model.restored == 3
    # ...but it does not restart the wait either: the first epoch without improvement stops it.
    stopped, model = _drive(
        EarlyStopping(monitor="loss", patience=2, baseline=0.5, restore_best_weights=True), [1.0, 0.9, 0.8, 0.7, 0.75]
    )
    assert stopped == 4 and model.restored == 3
    # Beating the baseline resets the wait as usual.
    assert _drive(EarlyStopping(monitor="loss", patience=2, baseline=0.95), [1.0, 0.9, 0.85, 0.8, 0.9, 0.9])[0] == 5
    assert (
        _drive(
            EarlyStopping(monitor="val_accuracy", patience=1, baseline=0.9),
            [0.5, 0.95, 0.97, 0.96, 0.96],
            key="val_accuracy",
        )[0]
        == 3
    )


def test_early_stopping_start_from_epoch_and_reuse():
    cb = EarlyStopping(monitor="loss", patience=0, start_from_epoch=2)
    assert _drive(cb, [1.0, 2.0, 3.0, 4.0])[0] == 3
    assert _drive(cb, [1.0, 0.5, 0.4])[0] is None  # state resets at on_train_begin


def test_early_stopping_warns_when_the_monitor_is_missing():
    with pytest.warns(UserWarning, match="val_loss.*not in the logs"):
        stopped, _ = _drive(EarlyStopping(), [1.0, 2.0, 3.0], key="loss")
    assert stopped is None


# -- EarlyStopping in fit --------------------------------------------------------------------------
def test_early_stopping_in_fit_keras_docstring_example():
    """keras.callbacks.EarlyStopping's example: loss grows every epoch, patience=3 -> 4 epochs."""
    model = Sequential([Dense(10)])
    model.compile(optimizers.SGD(), loss="mse")
    x = np.arange(100, dtype=np.float32).reshape(5, 20)
    with np.errstate(over="ignore", invalid="ignore"):
        history = model.fit(
            x,
            np.zeros((5, 10)),
            epochs=10,
            batch_size=1,
            verbose=0,
            seed=0,
            callbacks=[EarlyStopping(monitor="loss", patience=3)],
        )
    assert len(history.history["loss"]) == 4


def test_early_stopping_in_fit_restores_the_best_epoch_weights():
    x, labels = blobs(200, spread=3.0)
    snapshots = {}
    snap = LambdaCallback(
        on_epoch_end=lambda epoch, logs: snapshots.__setitem__(epoch, (logs["val_loss"], model.get_weights()))
    )
    model = small_model()
    model.compile(optimizer=optimizers.Adam(0.05), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    stopper = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    history = model.fit(
        x[:100],
        labels[:100],
        epochs=40,
        batch_size=10,
        verbose=0,
        seed=2,
        validation_data=(x[100:], labels[100:]),
        callbacks=[snap, stopper],
    )
    val = history.history["val_loss"]
    ran = len(val)
    assert ran < 40, "the small noisy problem should overfit and stop early"
    best = int(np.argmin(val))
    assert stopper.best_epoch == best and stopper.stopped_epoch == ran - 1 == best + 2
    for got, want in zip(model.get_weights(), snapshots[best][1]):
        np.testing.assert_array_equal(got, want)
    assert model.evaluate(x[100:], labels[100:])[0] == pytest.approx(min(val), rel=1e-6)


# -- TerminateOnNaN --------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_terminate_on_nan_stops_at_the_batch_where_loss_becomes_nan():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    y = rng.normal(size=(64, 1)).astype(np.float32)
    model = Sequential([Dense(8, activation="relu", input_dim=5), Dense(1)])
    model.compile(optimizer=optimizers.SGD(learning_rate=1e6), loss="mse")  # diverges within a few steps
    recorder = Recorder()
    history = model.fit(
        x,
        y,
        epochs=5,
        batch_size=4,
        shuffle=False,
        verbose=0,
        seed=0,
        callbacks=[recorder, TerminateOnNaN()],
        on_nonfinite="ignore",
    )  # Keras' behaviour
    batch_losses = [c[2]["loss"] for c in recorder.calls if c[0] == "batch_end"]
    first_bad = next(i for i, v in enumerate(batch_losses) if not math.isfinite(v))
    assert first_bad > 0 and len(batch_losses) == first_bad + 1  # stopped right after it
    assert model.optimizer.iterations == first_bad + 1
    assert len(history.history["loss"]) == 1 and not math.isfinite(history.history["loss"][0])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_terminate_on_nan_with_weights_that_overflow(capsys):
    model = Sequential([Dense(2, input_dim=3)])
    model.compile(optimizer="sgd", loss="mse")
    model.set_weights([np.full((3, 2), 3e38), np.zeros(2)])
    x = np.ones((8, 3), dtype=np.float32)
    history = model.fit(
        x, np.zeros((8, 2)), epochs=3, batch_size=2, verbose=0, callbacks=[TerminateOnNaN()], on_nonfinite="ignore"
    )
    assert model.optimizer.iterations == 1
    assert len(history.history["loss"]) == 1
    assert "invalid loss" in capsys.readouterr().err


def test_terminate_on_nan_leaves_finite_training_alone():
    model, history, _ = _fit(epochs=3, extra=[TerminateOnNaN()])
    assert len(history.history["loss"]) == 3


# -- progress output -------------------------------------------------------------------------------
def _fit_verbose(verbose, epochs=2, validation=False):
    x, labels = blobs(60)
    model = small_model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    kwargs = {"validation_split": 0.25} if validation else {}
    return model.fit(x, labels, epochs=epochs, batch_size=16, verbose=verbose, seed=0, **kwargs)


def test_verbose_1_shows_a_tqdm_bar_per_epoch_on_stderr(capsys):
    _fit_verbose(1, epochs=2)
    captured = capsys.readouterr()
    assert "Epoch 1/2" in captured.err and "Epoch 2/2" in captured.err
    assert "4/4" in captured.err  # ceil(60 / 16) steps, all done
    assert "loss=" in captured.err and "accuracy=" in captured.err
    assert captured.out == ""


def test_verbose_auto_is_1(capsys):
    _fit_verbose("auto", epochs=1)
    assert "Epoch 1/1" in capsys.readouterr().err


def test_verbose_2_prints_one_line_per_epoch(capsys):
    history = _fit_verbose(2, epochs=3, validation=True)
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        assert line.startswith(f"Epoch {i + 1}/3")
        assert f"loss: {history.history['loss'][i]:.4f}" in line
        assert f"val_accuracy: {history.history['val_accuracy'][i]:.4f}" in line
    assert captured.err == ""


def test_verbose_0_is_silent(capsys):
    _fit_verbose(0)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_progress_bar_closes_when_training_stops_mid_epoch(capsys):
    bar = ProgressBar(1)
    stop = LambdaCallback(on_train_batch_end=lambda batch, logs: setattr(stop.model, "stop_training", batch == 1))
    x, labels = blobs(64)
    model = small_model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(x, labels, epochs=3, batch_size=8, verbose=0, callbacks=[stop, bar])
    assert bar._bar is None
    assert "2/8" in capsys.readouterr().err


def test_evaluate_verbose_prints_the_results(capsys):
    x, labels = blobs(30)
    model = small_model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    loss, acc = model.evaluate(x, labels, verbose=1)
    assert f"loss: {loss:.4f} - accuracy: {acc:.4f}" in capsys.readouterr().out


def test_older_on_batch_hooks_are_called_as_in_keras():
    seen = []

    class Old(callbacks.Callback):
        def on_batch_end(self, batch, logs=None):
            seen.append(batch)

    _fit(epochs=1, extra=[Old(), LambdaCallback(on_batch_begin=lambda batch, logs: seen.append(-batch - 1))])
    assert seen == [-1, 0, -2, 1]


def test_early_stopping_patience_must_be_a_non_negative_integer():
    assert EarlyStopping(patience=np.int64(2)).patience == 2
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="patience"):
            EarlyStopping(patience=bad)
