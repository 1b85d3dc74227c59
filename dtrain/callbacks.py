"""Callbacks: hooks called by ``fit`` (Keras' protocol), plus History, EarlyStopping,
TerminateOnNaN, ModelCheckpoint, LearningRateScheduler, ReduceLROnPlateau, CSVLogger, TensorBoard, MLflowLogger and a
progress bar that works in terminals and notebooks (tqdm)."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from . import mlflow_logging
from .storage import Location
from .tensorboard import EventFile, keras_model_event


def _mode(monitor: str, mode: str) -> str:
    """A monitoring callback's direction: "auto" is "max" for accuracies and AUC, else "min"."""
    if mode != "auto":
        return mode
    name = monitor.lower()
    return "max" if ("acc" in name or "auc" in name) else "min"


class Callback:
    """Override any of the hooks. ``self.model`` is the model being trained and ``self.params``
    holds ``epochs``, ``steps`` (per epoch), ``batch_size``, ``samples`` and ``seed``.
    Set ``self.model.stop_training = True`` to stop after the current batch."""

    # With fit(..., client=), the workers wait at the end of each epoch for the client's callbacks
    # to decide whether to go on (EarlyStopping...). A callback that never stops training nor
    # changes the model sets this, and the workers then go straight on.
    observes_only = False

    def __init__(self):
        self.model: Any = None  # the model being trained (set by fit; None before)
        self.params: dict[str, Any] = {}

    def set_model(self, model) -> None:
        self.model = model

    def set_params(self, params: dict[str, Any]) -> None:
        self.params = params

    def on_train_begin(self, logs=None): ...
    def on_train_end(self, logs=None): ...
    def on_epoch_begin(self, epoch, logs=None): ...
    def on_epoch_end(self, epoch, logs=None): ...
    def on_batch_begin(self, batch, logs=None): ...
    def on_batch_end(self, batch, logs=None): ...

    def on_train_failed(self, error: BaseException) -> None:
        """dtrain's own hook (Keras has none): ``fit`` is raising ``error`` (Ctrl-C included), so
        ``on_train_end`` will not come. Called once fit's training has begun (``on_train_begin``
        may not have run yet), on the thread that runs the other hooks."""

    # As in Keras, the training-batch hooks call the older on_batch_* names by default, so a
    # callback written against either name works.
    def on_train_batch_begin(self, batch, logs=None):
        self.on_batch_begin(batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self.on_batch_end(batch, logs)


class CallbackList:
    """Calls every callback's hook in order, always passing ``logs`` (a dict, as Keras does), so
    that hooks written as ``lambda epoch, logs: ...`` work."""

    def __init__(self, callbacks: Iterable[Callback], model, params: dict[str, Any]):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(
                    f"callbacks must be dtrain.callbacks.Callback instances, received {type(cb).__name__} {cb!r}."
                )
            cb.set_model(model)
            cb.set_params(params)

    def _call(self, hook: str, *args: Any, logs: dict[str, Any] | None) -> None:
        logs = {} if logs is None else logs
        for cb in self.callbacks:
            getattr(cb, hook)(*args, logs)

    def on_train_begin(self, logs=None):
        self._call("on_train_begin", logs=logs)

    def on_train_end(self, logs=None):
        self._call("on_train_end", logs=logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._call("on_epoch_begin", epoch, logs=logs)

    def on_epoch_end(self, epoch, logs=None):
        self._call("on_epoch_end", epoch, logs=logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._call("on_train_batch_begin", batch, logs=logs)

    def on_train_batch_end(self, batch, logs=None):
        self._call("on_train_batch_end", batch, logs=logs)


@contextlib.contextmanager
def reporting_failure(callbacks: Iterable[Callback]) -> Iterator[None]:
    """Training inside this block that raises: every callback's ``on_train_failed(error)`` hears
    of it, then the error goes on (a hook that fails itself is a warning: the error is the news)."""
    try:
        yield
    except BaseException as error:
        for cb in callbacks:
            hook = getattr(cb, "on_train_failed", None)  # (fit refuses what is not a Callback: that error goes on)
            try:
                if hook is not None:
                    hook(error)
            except Exception as exc:
                warnings.warn(
                    f"{type(cb).__name__}.on_train_failed failed ({type(exc).__name__}: {exc}) while fit was raising "
                    f"{type(error).__name__}: {error}",
                    UserWarning,
                    stacklevel=3,
                )
        raise


class History(Callback):
    """Records the epoch logs: ``history.history["loss"]`` is the list of per-epoch losses.

    ``fit`` also records how the run went: ``restarts`` (the reason of each) and ``restart_log``
    (each restart's record: see the README's Restarts), ``membership`` (an elastic run's changes
    of workers: ``{"epoch", "workers", "joined", "left"}``, from that epoch on), ``skipped_steps``
    (non-finite steps left out), ``sharded_step``; with ``client=``, ``workers`` (in rank order),
    ``placement`` (logical shards per worker), ``device``, ``communicator``, ``timing`` (median
    milliseconds per step: compute, communication, waiting, overhead), ``step_times`` (seconds,
    per rank and step), ``stragglers`` (the ranks whose steps computed markedly slower than
    the others', last attempt) and ``incidents`` (each step that missed its deadline: where every
    rank was, what it waited for, its threads' stacks, which ranks did not answer; see
    ``dtrain.cluster.incidents``)."""

    observes_only = True

    def __init__(self):
        super().__init__()
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self._before: list[dict[str, float]] = []
        self.restarts: list[str] = []
        self.restart_log: list[dict[str, Any]] = []
        self.membership: list[dict[str, Any]] = []
        self.incidents: list[dict[str, Any]] = []
        self.stragglers: list[dict[str, Any]] = []
        self.skipped_steps = 0
        self.sharded_step = False
        self.workers: list[str] | None = None
        self.placement: dict[str, list[int]] | None = None
        self.device: str | None = None
        self.communicator: str | None = None
        self.timing: dict[str, float] = {}
        self.step_times: dict[str, Any] = {}

    def restore(self, epochs: list[dict[str, float]]) -> None:
        """Start from these finished epochs' logs (a run resumed from a checkpoint, or restarted
        from one after a failure: the epochs after it are trained, and recorded, again)."""
        self._before = [dict(logs) for logs in epochs]
        self.on_train_begin()

    def on_train_begin(self, logs=None):
        if self.model is not None:  # other callbacks find the run's History there (Keras sets it at epoch ends)
            self.model.history = self
        self.epoch = []
        self.history = {}
        for epoch, logs in enumerate(self._before):
            self.on_epoch_end(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)


class TerminateOnNaN(Callback):
    """Stops training as soon as the loss of a batch is NaN or infinite."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            print(f"Batch {batch}: invalid loss {loss}, terminating training", file=sys.stderr)
            self.model.stop_training = True


class EarlyStopping(Callback):
    """Stops training when ``monitor`` has stopped improving (Keras' rules and arguments).

    An epoch improves when ``monitor`` beats the best value by more than ``min_delta`` (lower is
    better in "min" mode, higher in "max"; "auto" picks "max" for accuracies). Training stops
    after ``patience`` epochs without improvement; ``restore_best_weights`` then puts back the
    weights of the best epoch (at the end of training, as Keras 3 does).
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0.0,
        patience: int = 0,
        verbose: int = 0,
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
    ):
        super().__init__()
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(
                f"EarlyStopping expected monitor to be a log key such as 'val_loss', received {monitor!r}."
            )
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"EarlyStopping expected mode in ('auto', 'min', 'max'), received mode={mode!r}.")
        if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 0:
            raise ValueError(f"EarlyStopping expected a non-negative integer patience, received {patience!r}.")
        self.monitor = monitor
        self.min_delta = abs(float(min_delta))
        self.patience = patience
        self.verbose = verbose
        self.baseline = baseline
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch
        self.mode = _mode(monitor, mode)
        self.stopped_epoch = 0
        self.best_epoch = 0
        self.on_train_begin()  # usable even when driven by hand, without fit()

    @property
    def needs_model(self) -> bool:
        """With client=, the client's model is brought up to date at each epoch's end: it keeps the best weights."""
        return self.restore_best_weights

    def _improves(self, value: float, reference: float) -> bool:
        if self.mode == "min":
            return value + self.min_delta < reference
        return value - self.min_delta > reference

    def on_train_begin(self, logs=None):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_weights = None
        self.best_epoch = 0

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None:
            warnings.warn(
                f"EarlyStopping is monitoring {self.monitor!r}, which is not in the logs "
                f"(available: {', '.join(sorted(logs or {}))}). Pass validation data for 'val_*' keys.",
                stacklevel=2,
            )
            return
        if epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            # Before any improvement, the current weights are the best seen.
            self.best_weights = self.model.get_weights()
            self.best_epoch = epoch
        self.wait += 1
        if self._improves(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            # Keras 3: an improvement never stops training; it restarts the wait only once
            # the baseline is beaten too.
            if self.baseline is None or self._improves(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(Callback):
    """Saves the model (``.keras``) or its weights (``save_weights_only=True``: ``.weights.h5``)
    at each epoch's end, or every ``save_freq`` batches, to ``filepath`` formatted with the
    epoch (from 1), the batch and the logs (``"model-{epoch:02d}-{val_loss:.3f}.keras"``);
    ``save_best_only``: only when ``monitor`` improves on the best so far (``mode``: "min",
    "max", or "auto": "max" for accuracies, else "min"; ``initial_value_threshold`` the best to
    beat at first). Keras' arguments and rules; every file is written whole or not at all (a
    temporary file renamed). With ``client=`` the model comes from the workers at each epoch's
    end, with the optimizer's state: ``save_freq`` must then be "epoch"."""

    needs_model = True  # with client=, the client's model is brought up to date before it runs

    def __init__(
        self,
        filepath,
        monitor: str = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        save_weights_only: bool = False,
        mode: str = "auto",
        save_freq: Any = "epoch",
        initial_value_threshold: float | None = None,
    ):
        super().__init__()
        self.filepath = os.fspath(filepath)
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1):
            raise ValueError(f"Unrecognized save_freq: {save_freq!r}. Expected save_freq are 'epoch' or integer values")
        if save_weights_only and not self.filepath.endswith(".weights.h5"):
            raise ValueError(
                "When using `save_weights_only=True` in `ModelCheckpoint`, the filepath provided must end in "
                f"`.weights.h5` (Keras weights format). Received: filepath={self.filepath}"
            )
        if not save_weights_only and not self.filepath.endswith(".keras"):
            raise ValueError(
                f"The filepath provided must end in `.keras` (Keras model format). Received: filepath={self.filepath}"
            )
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"ModelCheckpoint expected mode in ('auto', 'min', 'max'), received mode={mode!r}.")
        self.monitor, self.verbose, self.save_best_only = monitor, verbose, save_best_only
        self.save_weights_only, self.save_freq = save_weights_only, save_freq
        self.mode = _mode(monitor, mode)
        self.best: float | None = initial_value_threshold
        self._epoch = 0
        self._batches = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        self._batches += 1
        if self._batches >= self.save_freq:
            self._batches = 0
            self._save(self._epoch, batch, logs or {})

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch, None, logs or {})

    def _improves(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def _save(self, epoch: int, batch: int | None, logs: dict) -> None:
        fields = {"epoch": epoch + 1, **logs} if batch is None else {"epoch": epoch + 1, "batch": batch + 1, **logs}
        try:
            path = self.filepath.format(**fields)
        except KeyError as exc:
            raise KeyError(f'Failed to format this callback filepath: "{self.filepath}". Reason: {exc}') from None
        if self.save_best_only:
            current = logs.get(self.monitor)
            if current is None:
                warnings.warn(f"Can save best model only with {self.monitor} available.", stacklevel=2)
            elif not self._improves(current):
                if self.verbose > 0:
                    print(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}")
                return
            else:
                self.best = current
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        if os.path.isdir(path):
            raise OSError(
                f"Please specify a non-directory filepath for ModelCheckpoint. Filepath used is an existing directory: {path}"
            )
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: saving model to {path}")


class BackupAndRestore(Callback):
    """Keras' BackupAndRestore on dtrain's checkpoints: ``fit`` writes a checkpoint to
    ``backup_dir`` at each epoch's end (or every ``save_freq`` steps), and a ``fit`` that finds
    one there goes on from it, exactly as an uninterrupted run would have (weights, optimizer
    state, position, the sample order); with ``client=``, on any cluster. When training ends,
    ``delete_checkpoint`` removes the checkpoints (other files in ``backup_dir`` stay).
    ``double_checkpoint`` keeps the two newest. It takes the place of ``checkpoint_dir=`` and
    ``resume_from=``: pass one or the other."""

    observes_only = True  # (fit turns it into its checkpoint options, and deletes them when it returns)

    def __init__(
        self, backup_dir, save_freq: Any = "epoch", double_checkpoint: bool = False, delete_checkpoint: bool = True
    ):
        super().__init__()
        if not backup_dir:
            raise ValueError("Empty `backup_dir` argument passed")
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1):
            raise ValueError(
                f"Invalid value for argument `save_freq`. Received: save_freq={save_freq!r}. Expected either 'epoch' "
                "or an integer value."
            )
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq, self.double_checkpoint, self.delete_checkpoint = save_freq, double_checkpoint, delete_checkpoint

    def fit_options(self, has_backup: bool) -> dict[str, Any]:
        """What it means for ``fit`` (which finds out whether ``backup_dir`` holds a backup)."""
        return {
            "checkpoint_dir": self.backup_dir,
            "checkpoint_every": self.save_freq,
            "keep_checkpoints": 2 if self.double_checkpoint else 1,
            "resume_from": self.backup_dir if has_backup else None,
        }


class LearningRateScheduler(Callback):
    """Sets the learning rate at each epoch's begin to ``schedule(epoch, lr)`` (or
    ``schedule(epoch)``), as Keras does; ``logs["learning_rate"]`` at each epoch's end. With
    ``client=``, the rate reaches every worker before the epoch starts."""

    def __init__(self, schedule, verbose: int = 0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"LearningRateScheduler expected a function of the epoch, received {schedule!r}.")
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.model.optimizer
        try:  # Keras' newer form, then its older one
            rate = self.schedule(epoch, float(optimizer.learning_rate))
        except TypeError:
            rate = self.schedule(epoch)
        if not isinstance(rate, (float, np.floating)):
            raise ValueError(f"The output of the `schedule` function should be a float. Got: {rate!r}")
        optimizer.learning_rate = float(rate)
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {rate}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate)


class ReduceLROnPlateau(Callback):
    """Multiplies the learning rate by ``factor`` when ``monitor`` has not improved (by more than
    ``min_delta``) for ``patience`` epochs, then waits ``cooldown`` epochs; never below
    ``min_lr``. Keras' rules and arguments; ``logs["learning_rate"]`` at each epoch's end."""

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        verbose: int = 0,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
        **kwargs: Any,
    ):
        super().__init__()
        if kwargs:
            raise TypeError(f"ReduceLROnPlateau got unexpected arguments {sorted(kwargs)}.")
        if not 0 < factor < 1:
            raise ValueError(f"ReduceLROnPlateau does not support a factor >= 1.0 (or <= 0). Received factor={factor}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"ReduceLROnPlateau expected mode in ('auto', 'min', 'max'), received mode={mode!r}.")
        self.monitor, self.factor, self.patience, self.verbose = monitor, float(factor), patience, verbose
        self.min_delta, self.cooldown, self.min_lr = abs(float(min_delta)), cooldown, float(min_lr)
        self.mode = _mode(monitor, mode)
        self._reset()

    def _reset(self) -> None:
        self.best: float | None = None
        self.cooldown_counter = 0
        self.wait = 0

    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def _improves(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value + self.min_delta < self.best
        return value - self.min_delta > self.best

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        optimizer = self.model.optimizer
        logs["learning_rate"] = float(optimizer.learning_rate)
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(
                f"Learning rate reduction is conditioned on metric `{self.monitor}` which is not available. "
                f"Available metrics are: {','.join(logs)}.",
                stacklevel=2,
            )
            return
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improves(current):
            self.best, self.wait = current, 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience:
                old = float(optimizer.learning_rate)
                if old > np.float32(self.min_lr):
                    new = max(old * self.factor, self.min_lr)
                    optimizer.learning_rate = new
                    if self.verbose > 0:
                        print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new}.")
                    self.cooldown_counter, self.wait = self.cooldown, 0


class CSVLogger(Callback):
    """Writes each epoch's logs as a row of a CSV file (Keras' columns: epoch, then the keys in
    sorted order); ``append=True`` adds to an existing file. Each row is flushed as written."""

    observes_only = True

    def __init__(self, filename, separator: str = ",", append: bool = False):
        super().__init__()
        self.filename, self.sep, self.append = os.fspath(filename), separator, append
        self._file: Any = None
        self._writer: Any = None
        self._keys: list[str] | None = None

    def on_train_begin(self, logs=None):
        import csv

        has_rows = self.append and os.path.exists(self.filename) and os.path.getsize(self.filename) > 0
        self._file = open(self.filename, "a" if self.append else "w", newline="", encoding="utf-8")  # noqa: SIM115
        self._csv, self._keys, self._writer = csv, None, None
        self._header_written = has_rows

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if self._keys is None:
            self._keys = sorted(logs)
        if self._writer is None:
            self._writer = self._csv.DictWriter(self._file, fieldnames=["epoch", *self._keys], delimiter=self.sep)
            if not self._header_written:
                self._writer.writeheader()
        row = {"epoch": epoch, **{key: logs.get(key, "NA") for key in self._keys}}
        self._writer.writerow(row)
        self._file.flush()

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
            self._file = self._writer = None


# Keras' TensorBoard arguments that dtrain cannot honour: their default (what it can), and why.
_TENSORBOARD_REFUSED: dict[str, tuple[Any, str]] = {
    "histogram_freq": (0, "dtrain writes no weight histograms"),
    "write_images": (False, "dtrain writes no weight images"),
    "profile_batch": (0, "dtrain has no profiler; history.step_times times every step on a cluster"),
    "embeddings_freq": (0, "dtrain has no Embedding layers"),
    "embeddings_metadata": (None, "dtrain has no Embedding layers"),
}


class TensorBoard(Callback):
    """Writes TensorBoard's event files, as Keras 3's TensorBoard (its arguments, defaults, tags
    and layout; no TensorFlow needed): ``tensorboard --logdir LOG_DIR`` shows them.

    ``log_dir/train`` receives ``epoch_<name>`` at each epoch's end (step: the epoch, from 0)
    for the logs without ``val_``, with ``epoch_learning_rate``; ``log_dir/validation`` the
    ``val_`` logs without the prefix, and ``evaluation_<name>_vs_iterations`` at the step count.
    ``update_freq=N`` (``"batch"``: 1) adds ``batch_<name>`` (the epoch's running figures) every
    N steps; ``write_steps_per_second`` adds ``epoch_steps_per_second`` (and
    ``batch_steps_per_second``); ``write_graph`` writes the model's Keras JSON, which
    TensorBoard's Graphs tab draws. After training on a cluster, ``train`` also receives the
    step-time breakdown of ``history.step_times``, as steps.csv has it: ``step_time/<part>_ms``
    for compute, communication, waiting and overhead (the median over the workers) and step (the
    slowest worker's) at each recorded step, and ``timing/<name>`` (``history.timing``) at the
    last one.

    Steps are counted from the start of epoch 0: the steps of epoch ``e`` are ``e * steps + 1``
    to ``(e + 1) * steps`` (Keras counts this fit's batches, and the optimizer's iterations: the
    same numbers for a model's first fit from epoch 0). With ``client=``, batch figures arrive
    from rank 0 every 0.25 s, not every step: a report is written when it passes a multiple of
    N, at its own step, with rank 0's running figures.

    ``log_dir`` is a folder or an fsspec URL (``memory://``, ``s3://``...: each flush, at every
    epoch's end, then writes a file of its own there, since files cannot be appended to). A
    folder that cannot be written is an error as training starts, before any step. Keras'
    ``histogram_freq``, ``write_images``, ``profile_batch`` and ``embeddings_*`` are refused
    unless left at their defaults."""

    observes_only = True
    _STEP_PARTS = ("compute", "communication", "waiting", "overhead")  # of history.step_times

    def __init__(
        self,
        log_dir="logs",
        histogram_freq: int = 0,
        write_graph: bool = True,
        write_images: bool = False,
        write_steps_per_second: bool = False,
        update_freq: Any = "epoch",
        profile_batch: Any = 0,
        embeddings_freq: int = 0,
        embeddings_metadata: Any = None,
    ):
        super().__init__()
        given = {
            "histogram_freq": histogram_freq,
            "write_images": write_images,
            "profile_batch": profile_batch,
            "embeddings_freq": embeddings_freq,
            "embeddings_metadata": embeddings_metadata,
        }
        problems = [
            f"{name}={value!r} ({_TENSORBOARD_REFUSED[name][1]}: leave it at {_TENSORBOARD_REFUSED[name][0]!r})"
            for name, value in given.items()
            if value != _TENSORBOARD_REFUSED[name][0]
        ]
        if problems:
            raise ValueError(f"TensorBoard cannot honour {'; '.join(problems)}.")
        if update_freq == "batch":
            update_freq = 1
        if update_freq != "epoch" and (
            isinstance(update_freq, bool) or not isinstance(update_freq, (int, np.integer)) or update_freq < 1
        ):
            raise ValueError(
                f"TensorBoard expected update_freq 'epoch', 'batch' or an integer >= 1, received {update_freq!r}."
            )
        self.log_dir = str(log_dir)
        if not self.log_dir:
            raise ValueError("TensorBoard expected log_dir to be a folder or an fsspec URL, received ''.")
        self.write_graph, self.write_steps_per_second = bool(write_graph), bool(write_steps_per_second)
        self.update_freq = update_freq
        self._writers: dict[str, EventFile] = {}

    def _writer(self, run: str) -> EventFile:
        """The event file of ``log_dir/<run>`` ("train" or "validation"), made when first needed."""
        if run not in self._writers:
            folder = Location(self.log_dir, what="a TensorBoard log_dir").where(run)
            try:
                self._writers[run] = EventFile(folder)
            except OSError as exc:
                raise OSError(
                    f"TensorBoard cannot write its event files to {folder} ({exc}). Give log_dir a folder (or URL) "
                    "this process can create and write to."
                ) from exc
        return self._writers[run]

    def _close(self) -> None:
        writers, self._writers = self._writers, {}
        for writer in writers.values():
            writer.close()

    def on_train_begin(self, logs=None):
        self._close()  # (a callback used by an earlier fit starts new files)
        self._steps = int(self.params.get("steps") or 0)
        self._iterations = self.model.optimizer.iterations
        self._first_epoch: int | None = None
        self._epoch, self._seen = 0, 0  # the current epoch; the step count of the latest batch report
        self._epoch_began = self._mark = time.perf_counter()
        self._mark_step = 0
        train = self._writer("train")  # before any step: a log_dir that cannot be written fails here
        if self.write_graph:
            train.add(keras_model_event(self.model.to_json()))
        train.flush()

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch is None:
            self._first_epoch = epoch
        self._epoch = epoch
        self._epoch_began = self._mark = time.perf_counter()
        self._mark_step = epoch * self._steps

    def on_train_batch_begin(self, batch, logs=None):
        # (one process only: with client= the batch reports are their ends)
        self._mark, self._mark_step = time.perf_counter(), self._epoch * self._steps + batch

    def on_train_batch_end(self, batch, logs=None):
        step = self._epoch * self._steps + batch + 1
        now = time.perf_counter()
        rate = (step - self._mark_step) / (now - self._mark) if step > self._mark_step and now > self._mark else None
        self._mark, self._mark_step = now, step
        previous, self._seen = self._seen, max(self._seen, step)
        # Written when it passes a multiple of update_freq; a report at or before one already
        # seen (an epoch trained again after a restart) is not written twice.
        if self.update_freq == "epoch" or step // self.update_freq <= previous // self.update_freq:
            return
        train = self._writer("train")
        for name, value in (logs or {}).items():
            train.scalar(f"batch_{name}", value, step)
        if self.write_steps_per_second and rate is not None:
            train.scalar("batch_steps_per_second", rate, step)
        train.flush()

    def _learning_rate(self, epoch: int) -> float:
        """The learning rate at this epoch's end (Keras logs the optimizer's: the next step's)."""
        optimizer = self.model.optimizer
        schedule = optimizer.schedule
        if schedule is None or optimizer.iterations != self._iterations:
            return float(optimizer.learning_rate)
        # A schedule, and a client's optimizer that has not moved: with client= the workers
        # count the steps, and the client's model gets their state when training ends. Count them here.
        first = self._first_epoch if self._first_epoch is not None else epoch
        return float(schedule(self._iterations + (epoch + 1 - first) * self._steps))

    def on_epoch_end(self, epoch, logs=None):
        if not logs:
            return
        train_logs = {name: value for name, value in logs.items() if not name.startswith("val_")}
        val_logs = {name[4:]: value for name, value in logs.items() if name.startswith("val_")}
        train_logs["learning_rate"] = self._learning_rate(epoch)
        if self.write_steps_per_second:
            train_logs["steps_per_second"] = self._steps / max(time.perf_counter() - self._epoch_began, 1e-9)
        train = self._writer("train")
        for name, value in train_logs.items():
            train.scalar(f"epoch_{name}", value, epoch)
        train.flush()
        if val_logs:
            validation = self._writer("validation")
            for name, value in val_logs.items():
                validation.scalar(f"epoch_{name}", value, epoch)
                validation.scalar(f"evaluation_{name}_vs_iterations", value, (epoch + 1) * self._steps)
            validation.flush()

    def on_train_end(self, logs=None):
        history = getattr(self.model, "history", None)
        times = getattr(history, "step_times", None) or {}
        if len(times.get("position", ())):  # after training on a cluster: where each step's time went
            train = self._writer("train")
            steps = [int(p) + 1 for p in times["position"]]
            # (as steps.csv: the median over the workers, and a step as long as its slowest worker's)
            parts = {part: np.median(np.asarray(times[part]), axis=0) for part in self._STEP_PARTS}
            parts["step"] = np.asarray(times["step"]).max(axis=0)
            for part, seconds in parts.items():
                for step, value in zip(steps, (seconds * 1e3).tolist()):
                    train.scalar(f"step_time/{part}_ms", value, step)
            for name, value in getattr(history, "timing", {}).items():
                train.scalar(f"timing/{name}", value, steps[-1])
        self._close()


class MLflowLogger(Callback):
    """Logs the run to MLflow (``pip install "dtrain[mlflow]"``): at its begin the fit's
    parameters (epochs, batch_size, steps, samples, shards, seed, workers; the model's name,
    dtype, device, layers and parameter count; the optimizer and its configuration, the loss,
    the metrics) and ``params``; at each epoch's end its logs (loss, metrics, ``val_*``) and
    ``learning_rate`` as metrics, with step = the epoch (from 0, as ``history.epoch``); at its
    end the trained model (dtrain's model file, ``model/model.safetensors``: ``dtrain.load_model``
    reads it). The run is started at train begin and ended FINISHED, or FAILED (KILLED for
    Ctrl-C) when fit raises. In a thread with an active MLflow run (``with mlflow.start_run():``)
    and no ``tracking_uri``, ``experiment`` or ``run_name`` given, it logs into that run and
    leaves ending it to its owner.

    ``tracking_uri``: None is MLflow's own (``$MLFLOW_TRACKING_URI``); ``experiment``: a name
    (made if missing; None is ``$MLFLOW_EXPERIMENT_NAME`` or MLflow's Default); ``run_name``:
    None lets MLflow name it; ``tags``: {name: value}; ``texts``: {artifact file: text} logged at
    the start; ``log_model``: False to leave the model out. Works in one process and with
    ``client=`` (it runs on the client; the workers never wait for it). Training never waits for
    the tracking server but at its end, ``timeout`` seconds at most: a server that is down or
    fails costs one warning (naming the URI and the error), never the training. ``run_id``: the
    run's id, once it is made."""

    observes_only = True  # it never changes the model nor stops training: the workers go straight on
    killed_by: tuple[type[BaseException], ...] = (KeyboardInterrupt,)  # errors that end a run KILLED, not FAILED

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        run_name: str | None = None,
        *,
        tags: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        texts: dict[str, str] | None = None,
        log_model: bool = True,
        timeout: float = 30.0,
    ):
        super().__init__()
        self.run = mlflow_logging.MLflowRun(
            tracking_uri, experiment, run_name, tags=tags, timeout=timeout, warn=self.warn
        )
        self.extra_params = mlflow_logging.flatten(params or {})
        self.texts = dict(texts or {})
        self.log_model = bool(log_model)
        self._steps = 0
        self._iterations = 0

    @property
    def run_id(self) -> str | None:
        return self.run.run_id

    @property
    def tracking_uri(self) -> str:
        return self.run.tracking_uri

    def warn(self, message: str) -> None:
        """How the logger reports a problem with MLflow: a UserWarning (override to send it elsewhere)."""
        warnings.warn(message, UserWarning, stacklevel=3)

    def on_train_begin(self, logs=None):
        self._steps, self._iterations = 0, self.model.optimizer.iterations
        params = {**mlflow_logging.fit_params(self.model, self.params), **self.extra_params}
        self.run.start(params, self.texts)

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        self._steps += int(self.params.get("steps", 0))
        logs.setdefault("learning_rate", self._learning_rate())
        self.run.log_metrics(mlflow_logging.epoch_metrics(logs), step=epoch)

    def _learning_rate(self) -> float:
        """The optimizer's rate at the epoch's end. With client= the client's optimizer does not
        count the workers' steps while they train: a schedule is read at the steps done."""
        optimizer = self.model.optimizer
        if optimizer.schedule is None:
            return float(optimizer.learning_rate)
        moved = optimizer.iterations != self._iterations  # (in one process it counts every step)
        return float(optimizer.schedule(optimizer.iterations if moved else self._iterations + self._steps))

    def on_train_end(self, logs=None):
        if self.log_model and self.run.active:
            self.run.log_model(self.model)
        self.run.end("FINISHED")

    def on_train_failed(self, error):
        self.run.end("KILLED" if isinstance(error, self.killed_by) else "FAILED")


def format_logs(logs: dict[str, float]) -> str:
    return " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())


class ProgressBar(Callback):
    """``verbose=1``: a live bar per epoch (tqdm: text in terminals, a widget in notebooks);
    ``verbose=2``: one line per epoch."""

    observes_only = True

    def __init__(self, verbose: int = 1):
        super().__init__()
        self.verbose = verbose
        self._bar = None
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        if self.verbose == 1:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.params.get("steps"),
                desc=f"Epoch {epoch + 1}/{self.params.get('epochs')}",
                unit="step",
                leave=True,
                dynamic_ncols=True,
            )

    def on_train_batch_end(self, batch, logs=None):
        if self._bar is not None:
            # To the step reported: distributed training reports every few steps, not each one.
            self._bar.update(batch + 1 - self._bar.n)
            # refresh=False: tqdm redraws at its own rate, so a fast step is not slowed down.
            self._bar.set_postfix({k: f"{v:.4f}" for k, v in (logs or {}).items()}, refresh=False)

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4f}" for k, v in (logs or {}).items()}, refresh=False)
            self._bar.close()
            self._bar = None
        elif self.verbose == 2:
            print(
                f"Epoch {epoch + 1}/{self.params.get('epochs')} - {seconds:.2f}s - {format_logs(logs or {})}",
                flush=True,
            )

    def on_train_end(self, logs=None):
        if self._bar is not None:  # training stopped inside an epoch
            self._bar.close()
            self._bar = None


class LambdaCallback(Callback):
    """A callback from plain functions: ``LambdaCallback(on_epoch_end=lambda epoch, logs: ...)``."""

    def __init__(self, **hooks):
        super().__init__()
        for name, fn in hooks.items():
            if not name.startswith("on_") or not hasattr(Callback, name):
                raise ValueError(f"LambdaCallback received an unknown hook {name!r}.")
            setattr(self, name, fn)
