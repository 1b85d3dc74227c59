"""The Keras-style model: ``Sequential`` (add, compile, fit, evaluate, predict, save).

A ``Sequential`` is a :class:`dtrain.network.Network` (layers over flat buffers, the maths of
a step) with Keras' API on top. ``fit`` checks its arguments into one
:class:`~dtrain.config.FitConfig` and trains in this process
(:func:`dtrain.training.local.fit_in_process`) or, with ``client=``, on every worker of a Dask
cluster (:func:`dtrain.cluster.launch.fit_on_cluster`); both run the same training loop
(:mod:`dtrain.training.loop`).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import callbacks as callbacks_module
from .backend import to_numpy
from .checkpoints import delete_checkpoints, list_checkpoints
from .cluster.inference import evaluate_on_cluster, predict_on_cluster
from .cluster.launch import fit_on_cluster
from .config import FitConfig, check_verbose
from .data import check_batch_size, check_class_weight, refuse_streams, stream_kind
from .keras_arguments import refuse_keras_arguments
from .keras_files import keras_config, load_keras, load_weights_h5, save_keras, save_weights_h5
from .network import Network, Totals
from .saving import read_model, save_model
from .training.hooks import check_callbacks
from .training.local import fit_in_process, fit_stream_in_process


class Sequential(Network):
    """A linear stack of layers, built and trained like Keras' ``Sequential``.

    ``device`` is "auto" (GPU when CuPy and a CUDA device are present), "cpu" or "gpu";
    ``dtype`` is "float32" (default) or "float64".
    """

    history: callbacks_module.History | None = None

    def fit(
        self,
        x: Any = None,
        y: Any = None,
        batch_size: int | None = None,
        epochs: int = 1,
        verbose: int | str = "auto",
        callbacks: Sequence[callbacks_module.Callback] | None = None,
        validation_split: float = 0.0,
        validation_data: tuple[Any, ...] | None = None,
        shuffle: bool = True,
        initial_epoch: int = 0,
        seed: int | None = None,
        *,
        shards: int | None = None,
        client: Any = None,
        workers: Sequence[str] | None = None,
        timeout: float | None = None,
        checkpoint_dir: str | None = None,
        checkpoint_every: int | str = "epoch",
        keep_checkpoints: int = 3,
        resume_from: str | None = None,
        max_restarts: int = 0,
        on_nonfinite: str = "stop",
        elastic: bool = False,
        min_workers: int | None = None,
        max_workers: int | None = None,
        sample_weight: Any = None,
        class_weight: dict[int, float] | None = None,
        validation_freq: Any = 1,
        steps_per_epoch: int | None = None,
        **keras_arguments: Any,
    ) -> callbacks_module.History:
        """Train for ``epochs`` epochs of global batches of ``batch_size`` (default 32) samples.

        Returns a ``History`` whose ``.history`` maps "loss", each metric and "val_*" to lists
        of per-epoch values. ``seed`` fixes the initial weights (when fit builds the model) and
        the shuffling.

        The data is cut into ``shards`` logical shards (default: 1 here, one per worker with a
        client); each step takes every shard's share of the global batch, and a shard's order
        in epoch e depends only on (seed, e, shard) (see ``dtrain.sampling``).

        With ``client=`` (a ``distributed.Client``) the model trains across the cluster's
        workers (all of them, or the addresses in ``workers``), one replica per worker, and
        the result equals this method's single-process result for the same ``shards`` and
        ``seed`` to float rounding. ``x`` and ``y`` may then also be Dask arrays or file
        sources (``dtrain.from_npy``, ``from_parquet``, ``from_csv``). ``timeout`` (seconds,
        default 60) bounds every wait on another worker: a lost worker fails the job within it.

        Checkpoints: with ``checkpoint_dir`` (a directory or fsspec URL) the weights, optimizer
        state and position are written at the end of every epoch (``checkpoint_every="epoch"``)
        or also every N steps (``checkpoint_every=N``), the last ``keep_checkpoints`` kept
        (see ``dtrain.checkpoints``). ``resume_from`` (such a directory) continues from its
        latest good checkpoint, and the final weights equal an uninterrupted run's. With
        ``client=``, a run that loses a worker (or whose step exceeds ``timeout``) restarts
        from the latest checkpoint on the workers left, up to ``max_restarts`` times (one
        process has nothing to restart: there it is accepted and unused).
        ``on_nonfinite``: "stop" (raise NonFiniteError naming the epoch and step, before the
        update), "skip" (leave out the steps whose summed gradient holds NaN or inf) or
        "ignore" (apply them, as Keras does; pair it with the TerminateOnNaN callback).

        ``elastic=True`` (with ``client=``): workers that join the cluster, or come back, are
        taken into the run at the next epoch's start, up to ``max_workers`` and one per shard
        (so it needs ``shards`` or ``max_workers``); a lost worker is a restart on the others (it
        counts against ``max_restarts``), which waits up to ``timeout`` for ``min_workers``. The
        logical shards never change, so the result is that of a fixed cluster.
        """
        refuse_keras_arguments("fit", keras_arguments)
        stream = stream_kind(x)
        if stream is not None:  # batch by batch, in this process (dtrain.training.streams)
            _check_stream_arguments(stream, y, sample_weight, client, steps_per_epoch)
        elif steps_per_epoch is not None:
            raise ValueError(
                "steps_per_epoch applies to a generator or batch sequence as x; with arrays an epoch is one pass over "
                "the rows (pass fewer rows, x[:n], for shorter epochs)."
            )
        for name, value in (("x", None if stream else x), ("y", y), ("sample_weight", sample_weight)):
            refuse_streams(value, name)
        self.require_compiled("fit")
        self.check_trainable_compiled()
        if sample_weight is not None and class_weight is not None:
            raise ValueError("You cannot `class_weight` and `sample_weight` at the same time (as in Keras): pass one.")
        callbacks = check_callbacks(callbacks)
        backup = _backup_of(callbacks)
        if backup is not None:
            if checkpoint_dir is not None or resume_from is not None:
                raise ValueError(
                    "BackupAndRestore writes and resumes from its backup_dir: pass it or checkpoint_dir=/resume_from=, "
                    "not both."
                )
            options = backup.fit_options(has_backup=bool(list_checkpoints(backup.backup_dir)))
            checkpoint_dir, checkpoint_every = options["checkpoint_dir"], options["checkpoint_every"]
            keep_checkpoints, resume_from = options["keep_checkpoints"], options["resume_from"]
        config = FitConfig.make(
            class_weight=None if class_weight is None else check_class_weight(class_weight, self.output_units),
            validation_freq=validation_freq,
            batch_size=batch_size,
            epochs=epochs,
            verbose=verbose,
            validation_split=validation_split,
            shuffle=shuffle,
            initial_epoch=initial_epoch,
            seed=seed,
            shards=shards,
            workers=workers,
            timeout=timeout,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
            keep_checkpoints=keep_checkpoints,
            resume_from=resume_from,
            max_restarts=max_restarts,
            on_nonfinite=on_nonfinite,
            elastic=elastic,
            min_workers=min_workers,
            max_workers=max_workers,
        )
        if validation_data is not None and (
            not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3)
        ):
            raise ValueError(
                "validation_data must be a tuple (x_val, y_val) or (x_val, y_val, val_sample_weight), received "
                + type(validation_data).__name__
                + (f" of length {len(validation_data)}." if isinstance(validation_data, (tuple, list)) else ".")
            )
        for i, value in enumerate(validation_data or ()):
            refuse_streams(value, f"validation_data[{i}]")
        if client is None and stream is None:
            client = _default_client_for("fit", x, y, sample_weight, verbose=config.verbose)
        if stream is not None:
            history = fit_stream_in_process(self, x, validation_data, callbacks, config, steps_per_epoch)
        elif client is not None:
            history = fit_on_cluster(
                self, x, y, validation_data, callbacks, config, client=client, sample_weight=sample_weight
            )
        elif config.workers is not None:
            raise ValueError("workers= selects Dask workers and needs client= as well.")
        elif config.elastic:
            raise ValueError("elastic=True lets the workers of a Dask cluster come and go: it needs client= as well.")
        else:
            history = fit_in_process(self, x, y, validation_data, callbacks, config, sample_weight)
        self.history = history
        if backup is not None and backup.delete_checkpoint:  # (trained to the end: the backup has done its job)
            delete_checkpoints(backup.backup_dir)
        return history

    def train_on_batch(self, x: Any, y: Any) -> float | list[float]:
        """One optimizer step on one batch; returns its loss (and metrics), as Keras does."""
        self.require_compiled("train_on_batch")
        self.check_trainable_compiled()
        x, y = self.check_xy(x, y)
        self.build(x.shape[1])
        totals = Totals(self.metrics)
        totals.add(*self.compute_gradients(self.backend.asarray(x), self.backend.asarray(y)))
        self.apply_gradients()
        return _as_result(totals.logs(), self.metrics)

    # -- evaluate / predict -------------------------------------------------------------------
    def evaluate(
        self,
        x: Any = None,
        y: Any = None,
        batch_size: int | None = None,
        verbose: int | str = 0,
        return_dict: bool = False,
        *,
        client: Any = None,
        workers: Sequence[str] | None = None,
        **keras_arguments: Any,
    ) -> float | list[float] | dict[str, float]:
        """The mean loss over (x, y), or [loss, *metrics] when metrics were compiled. With
        ``client=``, the workers evaluate their parts of the rows where the data is."""
        refuse_keras_arguments("evaluate", keras_arguments)
        for name, value in (("x", x), ("y", y)):
            refuse_streams(value, name)
        self.require_compiled("evaluate")
        self.require_built("evaluate")
        check_verbose(verbose)
        batch_size = check_batch_size(batch_size)
        if client is None:
            client = _default_client_for("evaluate", x, y, verbose=verbose)
        if client is not None:
            logs = evaluate_on_cluster(self, x, y, client=client, workers=workers, batch_size=batch_size)
        else:
            logs = self.evaluation_totals(*self.check_xy(x, y), batch_size).logs()
        if verbose:
            print(callbacks_module.format_logs(logs))
        return logs if return_dict else _as_result(logs, self.metrics)

    def __call__(self, x: Any, training: bool = False) -> np.ndarray:
        """The model's output for ``x`` in one pass (Keras' ``model(x)``), as a NumPy array;
        ``training=True`` runs the layers as in training (dropout on, this batch's statistics)."""
        if not isinstance(training, bool):
            raise ValueError(f"training must be True or False, received {training!r}.")
        self.require_built("__call__")
        out = self.forward(self.backend.asarray(self.check_x(x)), training=training)
        return to_numpy(out).copy()

    def predict(
        self,
        x: Any,
        batch_size: int | None = None,
        verbose: int | str = 0,
        *,
        client: Any = None,
        workers: Sequence[str] | None = None,
        **keras_arguments: Any,
    ) -> np.ndarray:
        """Model outputs for ``x`` as a NumPy array of shape (n, units). With ``client=``, the
        workers predict their parts of the rows and the client receives the outputs."""
        refuse_keras_arguments("predict", keras_arguments)
        refuse_streams(x, "x")
        self.require_built("predict")
        check_verbose(verbose)
        batch_size = check_batch_size(batch_size)
        if client is None:
            client = _default_client_for("predict", x, verbose=verbose)
        if client is not None:
            return predict_on_cluster(self, x, client=client, workers=workers, batch_size=batch_size)
        return self.predict_rows(self.check_x(x), batch_size)

    # -- saving ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, include_optimizer: bool = True) -> None:
        """Save the model to one file; ``dtrain.load_model`` reads it back.

        - ``*.keras``: a real Keras 3 archive (``keras.models.load_model`` opens it and goes on
          training): the architecture, the weights, the compile settings, the optimizer's state;
        - anything else (a ``.safetensors`` file, or a folder: ``model.safetensors`` inside):
          dtrain's format, with the optimizer's state, for resuming training.

        Neither format is pickle: loading never executes anything. ``.h5`` (Keras' legacy
        HDF5 model format) is refused rather than written in another format under that name."""
        suffix = _suffix(path)
        if suffix == ".weights.h5":
            raise ValueError(f"{str(path)!r} is a weights file name: use model.save_weights({str(path)!r}).")
        if suffix in (".h5", ".hdf5"):
            raise ValueError(_LEGACY_H5.format(path=str(path), stem=Path(path).with_suffix("").name))
        if suffix == ".keras":
            self.require_built("save")
            save_keras(self, path, include_optimizer=include_optimizer)
        else:
            save_model(self, path, include_optimizer=include_optimizer)

    def to_json(self, **kwargs: Any) -> str:
        """The architecture as Keras serialises it (``json.dumps`` arguments pass through):
        ``dtrain.models.model_from_json`` and ``keras.models.model_from_json`` both read it."""
        return json.dumps(keras_config(self, with_compile=False), **kwargs)

    def save_weights(self, path: str | os.PathLike) -> None:
        """The weights alone, as Keras 3 writes them: ``path`` must end in ``.weights.h5``
        (Keras' rule); Keras' ``load_weights`` reads the file too."""
        if _suffix(path) != ".weights.h5":
            raise ValueError(
                f"save_weights expected a file name ending in .weights.h5 (Keras 3's weights format), received "
                f"{str(path)!r}; model.save(...) writes the whole model."
            )
        save_weights_h5(self, path)

    def load_weights(self, path: str | os.PathLike) -> None:
        """Weights from a ``.weights.h5`` file (Keras' or dtrain's), a ``.keras`` archive or a
        dtrain model file, by layer name, every array checked against this model before any
        is written."""
        self.require_built("load_weights")
        suffix = _suffix(path)
        if suffix == ".weights.h5":
            load_weights_h5(self, path)
        elif suffix == ".keras":
            other = load_keras(path, Sequential, device="cpu", compile=False)
            self.set_weights(other.get_weights())
        else:
            other = read_model(path, Sequential, device="cpu", compile=False)
            self.set_weights(other.get_weights())


_LEGACY_H5 = (
    "{path!r}: Keras' legacy HDF5 model format (.h5) is not supported; save as '{stem}.keras' (Keras 3's "
    "format, which keras.models.load_model reads) or '{stem}.safetensors' (dtrain's, with the optimizer state)."
)


def _suffix(path: str | os.PathLike) -> str:
    name = Path(path).name.lower()
    if name.endswith(".weights.h5"):
        return ".weights.h5"
    return Path(name).suffix


def _as_result(logs: dict[str, float], metrics: list) -> float | list[float]:
    values = list(logs.values())
    return values[0] if not metrics else values


def _backup_of(callbacks: Any) -> callbacks_module.BackupAndRestore | None:
    """The BackupAndRestore among ``callbacks`` (one at most)."""
    found = [cb for cb in callbacks or () if isinstance(cb, callbacks_module.BackupAndRestore)]
    if len(found) > 1:
        raise ValueError("fit() received two BackupAndRestore callbacks: pass one.")
    return found[0] if found else None


def _default_client_for(method: str, *data: Any, verbose: Any = 0) -> Any:
    """With Dask arrays and no ``client=``: the default Dask client, as dask-ml and
    xgboost.dask use it (the data stays on its cluster, and so does the training), said when
    ``verbose``; without one, None, and a warning that the arrays are computed into this process."""
    if not any(hasattr(value, "__dask_graph__") for value in data if value is not None):
        return None
    try:
        from distributed import default_client

        client = default_client()
    except (ImportError, ValueError):  # no client: Dask computes the arrays here
        warnings.warn(
            f"{method}() received Dask arrays and there is no Dask client: they are computed into this process's "
            "memory. Create a distributed.Client (or pass client=) to work where the data is.",
            stacklevel=3,
        )
        return None
    if verbose:
        print(f"{method}() on the default Dask client's cluster ({client.scheduler.address}): the data are Dask arrays")
    return client


def _check_stream_arguments(kind: str, y: Any, sample_weight: Any, client: Any, steps_per_epoch: Any) -> None:
    """What fit takes with a batch stream as x, as Keras takes it (y and sample weights come in
    the batches), and what it cannot do with one (spread it over a cluster)."""
    if client is not None:
        raise TypeError(
            f"x is {kind}: a stream is read batch by batch in one process and cannot be sharded over a cluster's "
            "workers. With client= pass NumPy arrays, Dask arrays or files (dtrain.from_npy, from_parquet, from_csv)."
        )
    if y is not None:
        raise ValueError(f"x is {kind}, whose batches hold the targets: leave y out (as Keras asks).")
    if sample_weight is not None:
        raise ValueError(
            f"x is {kind}: give the sample weights in its batches, (x, y, sample_weight), not as sample_weight=."
        )
    if steps_per_epoch is not None and (
        isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1
    ):
        raise ValueError(f"Expected steps_per_epoch to be a positive integer, received {steps_per_epoch!r}.")
