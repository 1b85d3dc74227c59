"""Checkpoints during training, resuming from them, and non-finite steps: the policy that the
single-process loop (``Sequential.fit``) and every rank's loop (``dtrain.worker``) share.

Where a run is in training is its *position*: steps done since the start of epoch 0,
``epoch * steps_per_epoch + step``. The sampling order of every epoch is a function of
(seed, epoch, shard) only (``dtrain.sampling``), so a run restored to the weights, optimizer
state and position of a checkpoint takes exactly the batches the uninterrupted run took from
there, and ends with the same weights. The file format is :mod:`dtrain.checkpoints`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

NONFINITE_POLICIES = ("stop", "skip", "ignore")  # ignore: apply the step anyway, as Keras does


class NonFiniteCheckpointWarning(UserWarning):
    """A checkpoint was not written because the state held NaN or inf (``on_nonfinite="ignore"``)."""


class NonFiniteError(FloatingPointError):
    """A step produced a NaN or infinite gradient (``on_nonfinite="stop"``, the default)."""

    def __init__(self, epoch: int, step: int, message: str | None = None) -> None:
        self.epoch, self.step = epoch, step
        super().__init__(
            message
            or f"Non-finite gradient (NaN or inf) at epoch {epoch + 1}, step {step + 1}: training stopped before "
            "the update, so the weights are those of the step before. Lower the learning rate, check the data "
            "for extreme values, or pass on_nonfinite='skip' to skip such steps."
        )

    def __reduce__(self):  # raised on workers, pickled back to the client
        return (type(self), (self.epoch, self.step, str(self)))


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
        if every != "epoch" and (isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1):
            raise ValueError(f'checkpoint_every must be "epoch" or a positive number of steps, received {every!r}.')
        if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)) or keep < 1:
            raise ValueError(f"keep_checkpoints must be a positive integer, received {keep!r}.")
        return cls(os.fspath(directory), every if every == "epoch" else int(every), int(keep))

    def due_within_epoch(self, steps_done_in_epoch: int, steps_per_epoch: int) -> bool:
        """After this many steps of an epoch, a checkpoint is due (the epoch's last step excluded:
        the end-of-epoch checkpoint, with the epoch's metrics, covers it)."""
        return self.every != "epoch" and steps_done_in_epoch < steps_per_epoch and steps_done_in_epoch % self.every == 0


def check_nonfinite_policy(value: Any) -> str:
    if value not in NONFINITE_POLICIES:
        raise ValueError(f"on_nonfinite must be one of {', '.join(map(repr, NONFINITE_POLICIES))}, received {value!r}.")
    return value


class FiniteCheck:
    """Whether a gradient buffer is all finite, in one pass and without allocating per step.

    The sum of squares ``g . g`` is finite exactly when every entry is (a NaN makes it NaN, an
    infinity makes it infinite, and squares cannot cancel), unless it overflows; only then is
    the exact test run: the dot product with a zero vector, 0 when every entry is finite and NaN
    otherwise (0 * inf is NaN), which cannot overflow. Measured on 1.86M float32 values out of
    cache: 0.23 ms for ``g . g`` against 0.52 ms for ``g . zeros``, which reads twice the memory."""

    def __init__(self, xp: Any, like: Any) -> None:
        self._xp = xp
        self._zeros = None  # allocated the first time the fast test is inconclusive

    def __call__(self, grads: Any) -> bool:
        xp = self._xp
        with np.errstate(over="ignore", invalid="ignore"):  # the answer is the result, not a warning
            if xp.isfinite(xp.dot(grads, grads)):
                return True
            if self._zeros is None or self._zeros.shape != grads.shape or self._zeros.dtype != grads.dtype:
                self._zeros = xp.zeros_like(grads)
            return bool(xp.isfinite(xp.dot(grads, self._zeros)))


def take_step(
    model,
    finite: FiniteCheck,
    on_nonfinite: str,
    epoch: int,
    step: int,
    grads: Any = None,
    *,
    part: slice = slice(None),
    agree: Callable[[bool], bool] | None = None,
) -> bool:
    """Apply the (summed) gradient in ``model.grads`` (or ``grads``) unless it holds NaN or inf:
    True when the step was applied, False when skipped ("skip"); NonFiniteError with "stop";
    "ignore" applies it regardless. Both training loops call this, so both decide alike.

    A sharded step passes this rank's ``part`` (only it is checked and updated) and ``agree``,
    which turns this part's verdict into every rank's (all parts finite), so all decide alike."""
    grads = model.grads if grads is None else grads
    if on_nonfinite == "ignore" or _all_finite(finite(grads[part]), agree):
        model.apply_gradients(grads, part)
        return True
    if on_nonfinite == "stop":
        raise NonFiniteError(epoch, step)
    return False


def _all_finite(here: bool, agree: Callable[[bool], bool] | None) -> bool:
    return here if agree is None else agree(here)


@dataclass
class ResumePoint:
    """Where a run starts: the weights and optimizer state to load (None: as built), the epoch
    and steps done in it, the epoch's global metric sums so far, and the finished epochs' logs."""

    params: np.ndarray | None = None
    optimizer: dict[str, np.ndarray] | None = None
    epoch: int = 0
    step: int = 0
    totals: np.ndarray | None = None
    history: list[dict[str, float]] | None = None
    source: str | None = None  # the checkpoint it came from
    run: str | None = None  # the run (lineage of starts, resumes and restarts) that wrote it


def checkpoint_meta(model, plan, seed: int, shuffle: bool, extra: dict | None = None) -> dict[str, Any]:
    """What a checkpoint must agree on with the run that resumes from it: the network, its
    compile settings and the data plan (same rows, shards, batch, seed and shuffling)."""
    # Layer names are left out: auto-generated ones ("dense_4") differ from process to process.
    layers = [
        {"class_name": layer["class_name"], "config": {k: v for k, v in layer["config"].items() if k != "name"}}
        for layer in model.get_config()["layers"]
    ]
    meta = {
        "model": layers,
        "dtype": model.dtype,
        "compile": model.compile_config(),
        "plan": {
            "rows": plan.rows,
            "shards": plan.shards,
            "batch_size": plan.batch_size,
            "seed": seed,
            "shuffle": shuffle,
        },
    }
    meta.update(extra or {})
    return meta


def write(
    policy: CheckpointPolicy,
    model,
    *,
    epoch: int,
    step: int,
    position: int,
    totals: np.ndarray | None,
    history: list[dict[str, float]],
    meta: dict[str, Any],
    on_nonfinite: str = "stop",
) -> str | None:
    """Write the model's state at ``position`` as a checkpoint; returns its location. A
    non-finite state is never written: an error, except with ``on_nonfinite="ignore"`` (the
    run means to go on, or to stop through TerminateOnNaN), where it is skipped with a warning."""
    from .backend import host_copy
    from .checkpoints import Checkpoint, write_checkpoint  # it raises NonFiniteCheckpoint for a non-finite state

    if on_nonfinite == "ignore" and not all(
        np.isfinite(a).all() for a in [host_copy(model.params), *model.optimizer.get_state().values()]
    ):
        warnings.warn(
            f"Checkpoint at epoch {epoch + 1 if step else epoch}, step {step} skipped: the weights or optimizer state "
            "hold NaN or inf (on_nonfinite='ignore'); the latest checkpoint stays the previous one.",
            NonFiniteCheckpointWarning,
            stacklevel=3,
        )
        return None

    arrays = {"params": host_copy(model.params)}
    arrays.update({f"optimizer.{name}": np.asarray(value) for name, value in model.optimizer.get_state().items()})
    if totals is not None:
        arrays["totals"] = np.asarray(totals, dtype=np.float64)
    return write_checkpoint(
        policy.directory,
        Checkpoint(arrays=arrays, epoch=epoch, step=step, global_step=position, meta={**meta, "history": history}),
        keep=policy.keep,
    )


def checkpoint_plan(directory: Any) -> dict[str, Any]:
    """The data plan (rows, shards, batch_size, seed, shuffle) of the latest good checkpoint in
    ``directory``, whatever run it is of ({} when there is none): a resumed run takes from it
    what its caller left unset."""
    from .checkpoints import load_latest

    with warnings.catch_warnings():  # resume_point() warns about bad ones, once
        warnings.simplefilter("ignore")
        checkpoint = load_latest(os.fspath(directory))
    return dict(checkpoint.meta.get("plan", {})) if checkpoint is not None else {}


def resume_point(directory: Any, meta: dict[str, Any], *, same_run: bool = False) -> ResumePoint:
    """The latest good checkpoint in ``directory`` that fits this run (falling back, with a
    warning, past bad or incompatible ones); an error when there is none. ``same_run`` (a
    restart): only checkpoints this run wrote, never those an earlier run left in the folder."""
    from .checkpoints import CheckpointError, load_latest

    directory = os.fspath(directory)
    keys = ("model", "dtype", "compile", "plan", "job") + (("run",) if same_run else ())
    expect = {key: meta[key] for key in keys if key in meta}
    checkpoint = load_latest(directory, expect=expect)
    if checkpoint is None:
        raise CheckpointError(
            f"No checkpoint in {directory!r} to resume from: train with checkpoint_dir= (or a job file's "
            "output.checkpoint) first, or leave resume_from out to start afresh."
        )
    arrays = checkpoint.arrays
    optimizer = {name[len("optimizer.") :]: value for name, value in arrays.items() if name.startswith("optimizer.")}
    return ResumePoint(
        params=arrays["params"],
        optimizer=optimizer,
        epoch=checkpoint.epoch,
        step=checkpoint.step,
        totals=arrays.get("totals"),
        history=list(checkpoint.meta.get("history", [])),
        source=checkpoint.location,
        run=checkpoint.meta.get("run"),
    )


def new_run_id() -> str:
    import uuid

    return uuid.uuid4().hex[:16]


def restore(model, point: ResumePoint) -> None:
    """Load a resume point's weights and optimizer state into a built, compiled model."""
    if point.params is not None:
        if point.params.shape != model.params.shape:
            raise ValueError(
                f"The checkpoint holds {point.params.size} weights, the model has {model.params.size}: it is "
                "another network."
            )
        model.params[...] = model.backend.asarray(point.params)
    if point.optimizer:
        model.optimizer.set_state(point.optimizer)
