"""Every option of a training run, in one typed, frozen object with one validation.

``Sequential.fit`` builds a :class:`FitConfig` from its keyword arguments, the job service from
a job file's ``fit:`` section (``dtrain.jobs``), and a resumed run from the checkpoint it
continues (:meth:`FitConfig.resolved`). The ranks of a cluster receive it as plain data. The
defaults and the allowed values live here and nowhere else.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from .data import check_batch_size, check_seed

NONFINITE_POLICIES = ("stop", "skip", "ignore")  # ignore: apply the step anyway, as Keras does
VERBOSITIES = ("auto", 0, 1, 2)
DEFAULT_BATCH_SIZE = 32  # Keras' default
DEFAULT_TIMEOUT_S = 60.0  # the deadline of every wait on another worker
MAX_TIMEOUT_S = 1e6  # (11.6 days) longer deadlines overflow the clocks of thread waits


def _is_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def check_verbose(verbose: Any) -> int:
    """``"auto"``, 0, 1 or 2 as the integer 0, 1 or 2 (``"auto"`` is 1, as in Keras)."""
    if verbose == "auto":
        return 1
    if verbose not in (0, 1, 2) or isinstance(verbose, bool):
        raise ValueError(f"Expected verbose in ('auto', 0, 1, 2), received verbose={verbose!r}.")
    return int(verbose)


def check_timeout(timeout: Any) -> float:
    """A positive number of seconds; None is the default, DEFAULT_TIMEOUT_S."""
    if timeout is None:
        return DEFAULT_TIMEOUT_S
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"Expected timeout to be a positive number of seconds, received timeout={timeout!r}.")
    if timeout > MAX_TIMEOUT_S:
        raise ValueError(f"Expected timeout to be at most {MAX_TIMEOUT_S:,.0f} seconds, received timeout={timeout!r}.")
    return float(timeout)


def check_nonfinite_policy(value: Any) -> str:
    if value not in NONFINITE_POLICIES:
        raise ValueError(f"on_nonfinite must be one of {', '.join(map(repr, NONFINITE_POLICIES))}, received {value!r}.")
    return str(value)


def check_workers(workers: Any) -> tuple[str, ...] | None:
    """Worker addresses to train on (None: every worker of the cluster)."""
    if workers is None:
        return None
    if isinstance(workers, str) or not isinstance(workers, Sequence) or not workers:
        raise ValueError(f"workers= expects a non-empty list of worker addresses, received {workers!r}.")
    if not all(isinstance(w, str) for w in workers):
        raise ValueError(f"workers= expects a non-empty list of worker addresses, received {workers!r}.")
    if len(set(workers)) != len(workers):
        raise ValueError(f"workers= lists a worker twice: {list(workers)!r}; one rank runs per worker.")
    return tuple(workers)


def check_elastic(elastic: Any, min_workers: Any, max_workers: Any, shards: Any) -> tuple[int, int | None]:
    """(min_workers, max_workers) of an elastic run, checked; 1 and None by default."""
    if not isinstance(elastic, bool):
        raise ValueError(f"Expected elastic to be True or False, received elastic={elastic!r}.")
    if not elastic and (min_workers is not None or max_workers is not None):
        raise ValueError(
            "min_workers= and max_workers= bound an elastic run's workers: pass elastic=True as well "
            "(without it the run trains on the workers it starts with)."
        )
    for name, value in (("min_workers", min_workers), ("max_workers", max_workers)):
        if value is not None and (not _is_int(value) or value < 1):
            raise ValueError(f"Expected {name} to be a positive integer, received {name}={value!r}.")
    low = 1 if min_workers is None else int(min_workers)
    high = None if max_workers is None else int(max_workers)
    if high is not None and high < low:
        raise ValueError(f"max_workers={high} is below min_workers={low}.")
    if elastic and shards is None and high is None:
        raise ValueError(
            "elastic=True needs shards= (or max_workers=): the logical shards are fixed for the whole run, "
            "which keeps its result independent of the workers, and each worker trains at least one, so "
            "the shard count is the most workers the run can grow to. E.g. shards=8 for up to 8 workers."
        )
    if elastic and shards is not None and low > shards:
        raise ValueError(f"min_workers={low} is more than the {shards} shards: each worker needs at least one.")
    return low, high


@dataclass(frozen=True)
class CheckpointPolicy:
    """Where and how often checkpoints are written: ``every`` is "epoch" (at the end of every
    epoch) or a number of steps N (every N steps, and at the end of every epoch)."""

    directory: str
    every: str | int = "epoch"
    keep: int = 3

    @classmethod
    def make(cls, directory: Any, every: Any = "epoch", keep: Any = 3) -> CheckpointPolicy | None:
        """Checked arguments of ``fit(checkpoint_dir=, checkpoint_every=, keep_checkpoints=)``."""
        if directory is None:
            return None
        if not isinstance(directory, (str, os.PathLike)) or not os.fspath(directory):
            raise ValueError(f"checkpoint_dir must be a directory path or URL, received {directory!r}.")
        if every != "epoch" and (not _is_int(every) or every < 1):
            raise ValueError(f'checkpoint_every must be "epoch" or a positive number of steps, received {every!r}.')
        if not _is_int(keep) or keep < 1:
            raise ValueError(f"keep_checkpoints must be a positive integer, received {keep!r}.")
        return cls(str(os.fspath(directory)), every if every == "epoch" else int(every), int(keep))

    def due_within_epoch(self, steps_done_in_epoch: int, steps_per_epoch: int) -> bool:
        """After this many steps of an epoch, a checkpoint is due (the epoch's last step excluded:
        the end-of-epoch checkpoint, with the epoch's metrics, covers it)."""
        return (
            self.every != "epoch"
            and steps_done_in_epoch < steps_per_epoch
            and steps_done_in_epoch % int(self.every) == 0
        )


@dataclass(frozen=True)
class FitConfig:
    """The options of one training run (``Sequential.fit``'s keyword arguments, checked).

    ``seed`` and ``shards`` may be None until the run starts: a resumed run takes them from its
    checkpoint, a fresh one draws a seed and has one shard per worker
    (``dtrain.training.checkpointing.resolve_seed_and_shards``). ``workers`` selects Dask workers
    and needs a client. Data (x, y, validation_data) and callbacks are not options: they are
    passed beside the configuration.
    """

    batch_size: int = DEFAULT_BATCH_SIZE
    epochs: int = 1
    verbose: int = 1
    validation_split: float = 0.0
    shuffle: bool = True
    initial_epoch: int = 0
    seed: int | None = None
    shards: int | None = None
    workers: tuple[str, ...] | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    checkpoint: CheckpointPolicy | None = None
    resume_from: str | None = None
    max_restarts: int = 0
    on_nonfinite: str = "stop"
    elastic: bool = False  # workers that join are taken in at the next epoch's start
    min_workers: int = 1  # an elastic run waits (up to timeout) for this many, or fails
    max_workers: int | None = None  # an elastic run trains on at most this many
    # Keras' class_weight, checked against the model's outputs: (class, weight) pairs; each
    # rank weighs its own rows' losses by their class (data.class_weights_of)
    class_weight: tuple[tuple[int, float], ...] | None = None
    # Keras' validation_freq: validate after every N-th epoch (an int), or after the epochs
    # listed (counted from 1)
    validation_freq: int | tuple[int, ...] = 1
    # Recorded in (and required to match when resuming from) every checkpoint: a job's identity.
    checkpoint_extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def make(
        cls,
        *,
        batch_size: Any = None,
        epochs: Any = 1,
        verbose: Any = "auto",
        validation_split: Any = 0.0,
        shuffle: Any = True,
        initial_epoch: Any = 0,
        seed: Any = None,
        shards: Any = None,
        workers: Any = None,
        timeout: Any = None,
        checkpoint_dir: Any = None,
        checkpoint_every: Any = "epoch",
        keep_checkpoints: Any = 3,
        resume_from: Any = None,
        max_restarts: Any = 0,
        on_nonfinite: Any = "stop",
        elastic: Any = False,
        min_workers: Any = None,
        max_workers: Any = None,
        checkpoint_extra: dict[str, Any] | None = None,
        class_weight: dict[int, float] | None = None,
        validation_freq: Any = 1,
    ) -> FitConfig:
        """Every option checked, with an error that names it and what was received; nothing is
        read or built here, so a bad call changes nothing."""
        batch_size = check_batch_size(batch_size, DEFAULT_BATCH_SIZE)
        for arg, value in (("epochs", epochs), ("initial_epoch", initial_epoch)):
            if not _is_int(value) or value < 0:
                raise ValueError(f"Expected {arg} to be a non-negative integer, received {arg}={value!r}.")
        verbose = check_verbose(verbose)
        if not isinstance(shuffle, bool):
            raise ValueError(f"Expected shuffle to be True or False, received shuffle={shuffle!r}.")
        seed = check_seed(seed)
        if (
            isinstance(validation_split, bool)
            or not isinstance(validation_split, (int, float))
            or not 0 <= validation_split < 1
        ):
            raise ValueError(f"Expected validation_split in [0, 1), received validation_split={validation_split!r}.")
        if shards is not None and (not _is_int(shards) or shards < 1):
            raise ValueError(f"Expected shards to be a positive integer or None, received shards={shards!r}.")
        checkpoint = CheckpointPolicy.make(checkpoint_dir, checkpoint_every, keep_checkpoints)
        on_nonfinite = check_nonfinite_policy(on_nonfinite)
        if not _is_int(max_restarts) or max_restarts < 0:
            raise ValueError(
                f"Expected max_restarts to be a non-negative integer, received max_restarts={max_restarts!r}."
            )
        min_workers, max_workers = check_elastic(elastic, min_workers, max_workers, shards)
        if resume_from is not None and (not isinstance(resume_from, (str, os.PathLike)) or not os.fspath(resume_from)):
            raise ValueError(f"resume_from must be a checkpoint directory path or URL, received {resume_from!r}.")
        return cls(
            batch_size=batch_size,
            epochs=int(epochs),
            verbose=verbose,
            validation_split=float(validation_split),
            shuffle=shuffle,
            initial_epoch=int(initial_epoch),
            seed=seed,
            shards=None if shards is None else int(shards),
            workers=check_workers(workers),
            timeout=check_timeout(timeout),
            checkpoint=checkpoint,
            resume_from=None if resume_from is None else str(os.fspath(resume_from)),
            max_restarts=int(max_restarts),
            on_nonfinite=on_nonfinite,
            elastic=elastic,
            min_workers=min_workers,
            max_workers=max_workers,
            checkpoint_extra=dict(checkpoint_extra or {}),
            class_weight=None if not class_weight else tuple(sorted(class_weight.items())),
            validation_freq=check_validation_freq(validation_freq),
        )

    def validates_after(self, epoch: int) -> bool:
        """Whether the run validates after ``epoch`` (from 0), by ``validation_freq``."""
        if isinstance(self.validation_freq, int):
            return (epoch + 1) % self.validation_freq == 0
        return epoch + 1 in self.validation_freq

    @property
    def class_weights(self) -> dict[int, float] | None:
        return None if self.class_weight is None else dict(self.class_weight)

    @property
    def most_workers(self) -> int | None:
        """How many workers can train at once: one per shard at most, and at most max_workers."""
        limits = [n for n in (self.shards, self.max_workers) if n is not None]
        return min(limits) if limits else None


def check_validation_freq(value: Any) -> int | tuple[int, ...]:
    """Keras' validation_freq: a positive int, or a list of epochs (from 1)."""
    if _is_int(value) and value >= 1:
        return int(value)
    if isinstance(value, (list, tuple, set, range)) and value and all(_is_int(v) and v >= 1 for v in value):
        return tuple(sorted(int(v) for v in value))
    raise ValueError(
        f"Expected validation_freq to be a positive integer (validate after every N-th epoch) or a list of epochs "
        f"counted from 1, received validation_freq={value!r}."
    )


def option_defaults(*names: str) -> dict[str, Any]:
    """FitConfig's defaults of these options, for the job files' schema (which adds its own
    job-level defaults on top: a fixed seed, restarts)."""
    known = {f.name: f for f in fields(FitConfig)}
    return {name: known[name].default for name in names}
