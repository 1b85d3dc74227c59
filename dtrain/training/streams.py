"""Training from a batch stream in this process: a generator, an iterator, or a Keras
``PyDataset``/``Sequence``-style object (``__len__`` and ``__getitem__`` giving batches), taken
as Keras takes them: batch by batch, as they come, never gathered.

The one training loop (:func:`dtrain.training.loop.train`) runs it unchanged: the plan has one
"row" per batch (``ShardPlan(steps, 1 shard, batch 1)``, in order), and :class:`StreamBatches`
gives the loop the batch of a step, its gradient's scale (1 / the batch's own rows: the batch's
mean loss, as Keras) and the rows random layers draw for. An epoch is ``len(sequence)`` batches
(or ``steps_per_epoch``); a generator needs ``steps_per_epoch`` (an endless one would never end
an epoch) and runs on across epochs, as Keras runs it. A stream cannot be sharded across workers
nor read again from a position: with ``client=``, and with checkpoints, it is refused. A
sequence's batch order is shuffled each epoch (``shuffle=True``, by the run's seed, as Keras
shuffles a PyDataset's); an iterator's order is its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..data import check_sample_weight, class_weights_of
from ..network import Network

ROW_STRIDE = 2**24  # the rows random layers draw for: step * ROW_STRIDE + row (unique within an epoch)


def is_sequence(data: Any) -> bool:
    return hasattr(data, "__getitem__") and hasattr(data, "__len__")


class BatchStream:
    """The batches of ``data``, ``steps`` of them per epoch."""

    def __init__(self, data: Any, steps_per_epoch: int | None) -> None:
        self.data = data
        self._iterator: Any = None
        self._pending: Any = None
        if is_sequence(data):
            size = len(data)
            if size < 1:
                raise ValueError(f"x is an empty batch sequence ({type(data).__name__} of length {size}).")
            if steps_per_epoch is not None and steps_per_epoch > size:
                raise ValueError(
                    f"steps_per_epoch={steps_per_epoch} is more than the {size} batches of the sequence x "
                    f"({type(data).__name__}): an epoch takes at most len(x) batches."
                )
            self.steps = steps_per_epoch or size
        else:
            if steps_per_epoch is None:
                raise ValueError(
                    f"x is {type(data).__name__}, a stream whose length is unknown: pass steps_per_epoch (the batches "
                    "of one epoch), or an endless generator would never end an epoch."
                )
            self._iterator = iter(data)
            self.steps = steps_per_epoch
        self._taken = 0  # batches taken from an iterator so far

    @property
    def indexable(self) -> bool:
        """A sequence (any batch, in any order) rather than an iterator."""
        return self._iterator is None

    def first(self) -> tuple:
        """The first batch (to check the data and build the model), without using it up."""
        if self._iterator is None:
            return _unpack(self.data[0], 0)
        if self._pending is None:
            self._pending = self._next()
        return self._pending

    def batch(self, step: int) -> tuple:
        if self._iterator is None:
            return _unpack(self.data[step], step)
        if self._pending is not None:
            batch, self._pending = self._pending, None
            return batch
        return self._next()

    def _next(self) -> tuple:
        try:
            value = next(self._iterator)
        except StopIteration:
            raise ValueError(
                f"x ran out of batches after {self._taken} of them; steps_per_epoch={self.steps} x the epochs asks for "
                "more. Lower steps_per_epoch or epochs, or make the generator endless."
            ) from None
        self._taken += 1
        return _unpack(value, self._taken - 1)

    def epoch_end(self) -> None:
        """Keras calls a sequence's ``on_epoch_end`` after every epoch (to reshuffle, say)."""
        hook = getattr(self.data, "on_epoch_end", None)
        if self._iterator is None and callable(hook):
            hook()


def _unpack(value: Any, index: int) -> tuple:
    if not isinstance(value, (tuple, list)) or len(value) not in (2, 3):
        raise ValueError(
            f"Batch {index} of x is {type(value).__name__}; a batch is a tuple (x, y) or (x, y, sample_weight)."
        )
    return tuple(value) if len(value) == 3 else (value[0], value[1], None)


class StreamBatches:
    """What the loop asks of its rows, for a stream: each plan "row" is a batch."""

    def __init__(self, network: Network, stream: BatchStream, class_weight: dict[int, float] | None) -> None:
        self.network, self.stream, self.class_weight = network, stream, class_weight
        self.rows = stream.steps

    def take(self, rows: np.ndarray | slice) -> tuple[Any, Any, Any]:
        step = rows.start if isinstance(rows, slice) else int(rows[0])
        x, y, w = self.stream.batch(step)
        x, y = self.network.check_xy(x, y, name=f"batch {step} of ")
        if w is not None:
            if self.class_weight is not None:
                raise ValueError(
                    "You cannot `class_weight` and `sample_weight` at the same time (as in Keras): pass one."
                )
            w = check_sample_weight(w, len(x), name=f"the sample weights of batch {step}")
        elif self.class_weight is not None:
            w = class_weights_of(y, self.class_weight)
        backend = self.network.backend
        wb = None if w is None else backend.asarray(np.asarray(w, dtype=self.network.dtype))
        return backend.asarray(x), backend.asarray(y), wb

    def scale(self, global_count: int, batch_rows: int) -> float:
        return 1.0 / batch_rows  # (each batch's mean loss, as Keras: the batches are not one global batch)

    def noise_rows(self, sampler: Any, rows: np.ndarray | slice, batch_rows: int) -> np.ndarray:
        step = rows.start if isinstance(rows, slice) else int(rows[0])
        return step * ROW_STRIDE + np.arange(batch_rows)
