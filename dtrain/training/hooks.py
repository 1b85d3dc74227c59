"""What the training loop tells the world, and the instruments tests put into it.

``Progress`` is the loop's audience: the callbacks of a single-process fit
(:class:`CallbackProgress`), or rank 0's live reports to the client on a cluster
(``dtrain.cluster.rank``). It is also who decides to stop (EarlyStopping...).

``StepHook`` is an instrument called around every step: the tests install them (fault
injection, hashes of the replicas' weights, in :mod:`dtrain.testing`) with :func:`installed`,
and the run carries the installed ones to every rank as plain objects. Production code passes
none; the loop then calls nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..callbacks import Callback, CallbackList, History, ProgressBar
from ..config import FitConfig
from ..network import Network, Totals
from ..sampling import ShardPlan


class Progress:
    """The loop's audience. Every method has a default that does nothing."""

    def epoch_begin(self, epoch: int) -> None: ...

    def batch_begin(self, step: int) -> None: ...

    def batch_end(self, epoch: int, step: int, last: bool, totals: Totals) -> None:
        """After every step; ``last``: the epoch's last step; ``totals``: this rank's sums so far."""

    def stop_within_epoch(self) -> bool:
        """After every step: stop now (a callback set ``model.stop_training``)?"""
        return False

    def epoch_times(self, epoch: int, medians: dict[str, float]) -> None:
        """After every epoch, before ``epoch_end``: this rank's median seconds per step over the
        epoch's steps (``compute``, ``allreduce``, ``step``; {} when none was timed)."""

    def epoch_end(self, epoch: int, logs: dict[str, float], seconds: float) -> bool:
        """After every epoch, with its global logs (validation included): stop training now?
        Every rank must return the same answer."""
        return False

    @property
    def wants_whole_state(self) -> bool:
        """Whether the whole optimizer state must be current on every rank at each epoch's end
        (the client's callbacks read the model then: ModelCheckpoint)."""
        return False


@dataclass(frozen=True)
class StepContext:
    """Where the loop is: which rank, which start of the run (0, then 1 at the first restart...)."""

    rank: int
    attempt: int
    epoch: int
    step: int


class StepHook:
    """An instrument around every step (tests). Runs where the rank runs: on a Dask worker, a
    copy of the object installed on the client. ``result()`` travels back to the client, where
    the installed object receives every rank's through ``collect(rank, result)``."""

    def before_step(self, ctx: StepContext, network: Network) -> None: ...

    def after_backward(self, ctx: StepContext, network: Network) -> None: ...

    def after_step(self, ctx: StepContext, network: Network) -> None: ...

    def before_checkpoint(self, ctx: StepContext, network: Network) -> None:
        """Every rank, as a checkpoint at (epoch, step) begins (rank 0 then writes it)."""

    def result(self) -> Any:
        return None

    def collect(self, rank: int, result: Any) -> None: ...


_installed: list[StepHook] = []


def installed_hooks() -> list[StepHook]:
    """The hooks installed now, in order (copied: a run keeps the ones it started with)."""
    return list(_installed)


@contextlib.contextmanager
def installed(*hooks: StepHook) -> Iterator[tuple[StepHook, ...]]:
    """Install ``hooks`` into every run started in this process meanwhile (and into its ranks)."""
    _installed.extend(hooks)
    try:
        yield hooks
    finally:
        for hook in hooks:
            _installed.remove(hook)


class CallbackProgress(Progress):
    """A single-process run's audience: the Keras callbacks, called at every step."""

    def __init__(self, callbacks: CallbackList, model: Any) -> None:
        self.callbacks, self.model = callbacks, model

    def epoch_begin(self, epoch: int) -> None:
        self.callbacks.on_epoch_begin(epoch)

    def batch_begin(self, step: int) -> None:
        self.callbacks.on_train_batch_begin(step)

    def batch_end(self, epoch: int, step: int, last: bool, totals: Totals) -> None:
        self.callbacks.on_train_batch_end(step, totals.logs())

    def stop_within_epoch(self) -> bool:
        return bool(self.model.stop_training)

    def epoch_end(self, epoch: int, logs: dict[str, float], seconds: float) -> bool:
        self.callbacks.on_epoch_end(epoch, logs)
        return bool(self.model.stop_training)


def callback_list(
    model: Any, callbacks: Sequence[Callback], history: History, config: FitConfig, plan: ShardPlan, workers: int = 1
) -> CallbackList:
    """The user's callbacks, then History, then the progress bar (checks their types).
    ``workers``: the run's at its start (1 in one process)."""
    hooks = [*callbacks, history]
    if config.verbose:
        hooks.append(ProgressBar(config.verbose))
    params = {
        "epochs": config.epochs,
        "steps": plan.steps,
        "batch_size": plan.batch_size,
        "samples": plan.rows,
        "shards": plan.shards,
        "seed": config.seed,
        "workers": workers,
        "verbose": config.verbose,
    }
    return CallbackList(hooks, model, params)


def check_callbacks(callbacks: Any) -> list[Callback]:
    """``fit(callbacks=)`` as a list (each one's type is checked by CallbackList)."""
    if callbacks is None:
        return []
    if not isinstance(callbacks, (list, tuple)):
        raise TypeError(
            f"fit() expected callbacks as a list of dtrain.callbacks.Callback, received "
            f"{type(callbacks).__name__} {callbacks!r}."
        )
    return list(callbacks)
