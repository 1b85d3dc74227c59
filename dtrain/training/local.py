"""Training in this process: ``Sequential.fit`` without a client.

The same loop as every rank of a cluster (:func:`dtrain.training.loop.train`), on a one-rank
communicator, with the Keras callbacks as its audience at every step.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ..callbacks import Callback, History, reporting_failure
from ..comm import LocalCommunicator
from ..config import FitConfig
from ..data import check_sample_weight, class_weights_of
from ..leases import Lease
from ..network import Network
from ..sampling import ShardPlan
from .checkpointing import folder_lease, new_run_id, resolve_seed_and_shards, start_of_run
from .hooks import CallbackProgress, callback_list, installed_hooks
from .loop import Batches, train
from .streams import BatchStream, StreamBatches


def validation_split_at(rows: int, validation_split: float) -> int:
    """Where Keras' validation split begins: the last rows are for validation, taken before any
    shuffling."""
    split_at = int(math.floor(rows * (1.0 - validation_split)))
    if split_at == 0 or split_at == rows:
        raise ValueError(
            f"validation_split={validation_split} of {rows} samples leaves "
            f"{split_at} for training and {rows - split_at} for validation; both need at least one."
        )
    return split_at


def checked_validation(model: Network, validation_data: Sequence[Any], input_dim: int) -> tuple[np.ndarray, ...]:
    """``(x_val, y_val)`` or ``(x_val, y_val, val_sample_weight)`` checked: the weights weigh
    val_loss as Keras weighs it (metrics stay unweighted)."""
    x, y = model.check_xy(validation_data[0], validation_data[1], name="validation ", input_dim=input_dim)
    if len(validation_data) < 3 or validation_data[2] is None:
        return x, y
    return x, y, check_sample_weight(validation_data[2], len(x), "validation sample_weight")


def fit_in_process(
    model: Network,
    x: Any,
    y: Any,
    validation_data: Sequence[Any] | None,
    callbacks: Sequence[Callback],
    config: FitConfig,
    sample_weight: Any = None,
) -> History:
    """Check the data, build the model (or restore it from ``config.resume_from``), train."""
    # Every check runs before the model is built or touched: a bad call changes nothing.
    x, y = model.check_xy(x, y)
    weights = None if sample_weight is None else check_sample_weight(sample_weight, len(x))
    validation: tuple[np.ndarray, ...] | None = None
    if validation_data is not None:
        validation = checked_validation(model, validation_data, x.shape[1])
    elif config.validation_split:
        split_at = validation_split_at(len(x), config.validation_split)
        # Keras splits the weights with the rows: the validation rows' weights weigh val_loss
        validation = (x[split_at:], y[split_at:]) + (() if weights is None else (weights[split_at:],))
        x, y = x[:split_at], y[:split_at]
        weights = None if weights is None else weights[:split_at]
    if config.class_weights is not None:  # (the training rows only, as Keras)
        weights = class_weights_of(y, config.class_weights)
    config = resolve_seed_and_shards(config)
    shards = config.shards or 1
    config = replace(config, shards=shards)
    plan = ShardPlan(len(x), shards, config.batch_size)
    with folder_lease(config.checkpoint, new_run_id()) as lease, reporting_failure(callbacks):  # one writer per folder
        batches = Batches(model, x, y, sample_weight=weights)
        return _train(model, batches, x.shape[1], validation, callbacks, config, plan, lease)


def fit_stream_in_process(
    model: Network,
    data: Any,
    validation_data: Sequence[Any] | None,
    callbacks: Sequence[Callback],
    config: FitConfig,
    steps_per_epoch: int | None,
) -> History:
    """``fit`` on a batch stream (``dtrain.training.streams``): its first batch checked and the
    model built from it before any training; then the one loop, a batch per step, in order."""
    if config.checkpoint is not None or config.resume_from is not None:
        raise ValueError(
            "Checkpoints and resuming need data that can be read again from a position: not a batch stream. "
            "Pass arrays or files (dtrain.from_npy, ...), or train without checkpoint_dir / resume_from."
        )
    if config.validation_split:
        raise ValueError(
            "validation_split needs arrays (it takes their last rows); with a batch stream pass validation_data."
        )
    stream = BatchStream(data, steps_per_epoch)
    x0, y0, _ = stream.first()
    x0, _ = model.check_xy(x0, y0, name="batch 0 of ")
    validation = None if validation_data is None else checked_validation(model, validation_data, x0.shape[1])
    # A sequence's batches are shuffled (their order, by the run's seed) as Keras shuffles them;
    # an iterator's order is its own, and shuffle=True (fit's default) says so, as Keras does.
    if config.shuffle and not stream.indexable:
        warnings.warn(
            f"shuffle=True is ignored: x is {type(data).__name__}, a stream whose batches come in its own order "
            "(shuffle them in the generator, or pass shuffle=False to train in that order without this warning).",
            UserWarning,
            stacklevel=3,
        )
    config = replace(resolve_seed_and_shards(config), shards=1, shuffle=config.shuffle and stream.indexable)
    plan = ShardPlan(stream.steps, 1, 1)  # one plan "row" per batch
    batches = StreamBatches(model, stream, config.class_weights)
    with reporting_failure(callbacks):
        return _train(model, batches, x0.shape[1], validation, [*callbacks, _EpochEnd(stream)], config, plan, None)


class _EpochEnd(Callback):
    """Calls the stream's ``on_epoch_end`` after every epoch, as Keras does for a PyDataset."""

    observes_only = True

    def __init__(self, stream: BatchStream) -> None:
        super().__init__()
        self.stream = stream

    def on_epoch_end(self, epoch, logs=None):
        self.stream.epoch_end()


def _train(
    model: Network,
    batches: Any,
    input_dim: int,
    validation: tuple[np.ndarray, ...] | None,
    callbacks: Sequence[Callback],
    config: FitConfig,
    plan: ShardPlan,
    lease: Lease | None,
) -> History:
    history = History()
    cbs = callback_list(model, callbacks, history, config, plan)
    start, meta = start_of_run(model, plan, config, input_dim)
    history.restore(start.history or [])

    model.stop_training = False
    hooks = installed_hooks()
    cbs.on_train_begin()
    result = train(
        model,
        LocalCommunicator(),
        batches,
        validation,
        config=config,
        plan=plan,
        owned=range(plan.shards),
        start=start,
        meta=meta,
        progress=CallbackProgress(cbs, model),
        has_validation=validation is not None,
        hooks=hooks,
        lease=lease,
    )
    for hook, hook_result in zip(hooks, result.hook_results):
        hook.collect(0, hook_result)
    history.restarts, history.skipped_steps, history.sharded_step = [], result.skipped_steps, False
    cbs.on_train_end(result.logs)
    return history
