"""Checkpoints during training and resuming from them: what a checkpoint records of a run,
where a run starts again, and writing the state of the network at a position.

Where a run is in training is its *position*: steps done since the start of epoch 0,
``epoch * steps_per_epoch + step``. The sampling order of every epoch is a function of
(seed, epoch, shard) only (``dtrain.sampling``), so a run restored to the weights, optimizer
state and position of a checkpoint takes exactly the batches the uninterrupted run took from
there, and ends with the same weights. The file format is :mod:`dtrain.checkpoints`; the
policy (where, how often, how many) is :class:`dtrain.config.CheckpointPolicy`.
"""

from __future__ import annotations

import contextlib
import os
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..backend import host_copy
from ..checkpoints import Checkpoint, CheckpointError, CheckpointWarning, load_latest, write_checkpoint
from ..config import CheckpointPolicy, FitConfig
from ..data import new_seed
from ..leases import EXPIRES_S, Lease
from ..network import Network
from ..sampling import ShardPlan


class NonFiniteCheckpointWarning(UserWarning):
    """A checkpoint was not written because the state held NaN or inf (``on_nonfinite="ignore"``)."""


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
    memory: str | None = None  # the worker whose memory holds its weights (a restart from survivors)


def checkpoint_meta(
    model: Network, plan: ShardPlan, seed: int, shuffle: bool, extra: dict | None = None
) -> dict[str, Any]:
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
    model: Network,
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
    # (write_checkpoint itself raises NonFiniteCheckpoint for a non-finite state)

    if on_nonfinite == "ignore" and not all(
        np.isfinite(a).all() for a in [host_copy(model.params), *model.compiled_optimizer.get_state().values()]
    ):
        warnings.warn(
            f"Checkpoint at epoch {epoch + 1 if step else epoch}, step {step} skipped: the weights or optimizer state "
            "hold NaN or inf (on_nonfinite='ignore'); the latest checkpoint stays the previous one.",
            NonFiniteCheckpointWarning,
            stacklevel=3,
        )
        return None

    arrays = {"params": host_copy(model.params)}
    arrays.update(
        {f"optimizer.{name}": np.asarray(value) for name, value in model.compiled_optimizer.get_state().items()}
    )
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
    with warnings.catch_warnings():  # resume_point() warns about bad ones, once
        warnings.simplefilter("ignore")
        checkpoint = load_latest(os.fspath(directory))
    return dict(checkpoint.meta.get("plan", {})) if checkpoint is not None else {}


def resume_point(directory: Any, meta: dict[str, Any], *, same_run: bool = False) -> ResumePoint:
    """The latest good checkpoint in ``directory`` that fits this run (falling back, with a
    warning, past bad or incompatible ones); an error when there is none. ``same_run`` (a
    restart): only checkpoints this run wrote, never those an earlier run left in the folder."""
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
    return uuid.uuid4().hex[:16]


def restore(model: Network, point: ResumePoint) -> None:
    """Load a resume point's weights and optimizer state into a built, compiled model."""
    if point.params is not None:
        if point.params.shape != model.params.shape:
            raise ValueError(
                f"The checkpoint holds {point.params.size} weights, the model has {model.params.size}: it is "
                "another network."
            )
        model.params[...] = model.backend.asarray(point.params)
    if point.optimizer:
        model.compiled_optimizer.set_state(point.optimizer)
    elif point.source is not None:  # every checkpoint holds it: training on from a reset one would differ silently
        raise ValueError(f"The checkpoint {point.source} holds no optimizer state: it is damaged.")


def resolve_seed_and_shards(config: FitConfig) -> FitConfig:
    """The run's seed fixed, and its shard count where a checkpoint decides it: what a resumed run
    left unset comes from the run it resumes (its seed, and its number of logical shards, which
    with a client defaulted to its number of workers); a fresh run draws a seed. ``shards`` stays
    None when nothing decides it yet (one per worker with a client, else 1)."""
    seed, shards = config.seed, config.shards
    if config.resume_from is not None and (seed is None or shards is None):
        plan = checkpoint_plan(config.resume_from)
        seed = plan.get("seed") if seed is None else seed
        shards = plan.get("shards") if shards is None else shards
    return replace(
        config, seed=new_seed() if seed is None else int(seed), shards=None if shards is None else int(shards)
    )


def start_of_run(network: Network, plan: ShardPlan, config: FitConfig, input_dim: int) -> tuple[ResumePoint, dict]:
    """Build the network as single-process fit builds it (from the run's seed), restore it to the
    checkpoint it resumes from, if any; returns where the run starts and what its checkpoints
    record (``checkpoint_meta``, with the run's lineage)."""
    assert config.seed is not None, "resolve_seed_and_shards first"
    network.build(input_dim, config.seed)
    meta = checkpoint_meta(network, plan, config.seed, config.shuffle, config.checkpoint_extra)
    if config.resume_from is not None:
        start = resume_point(config.resume_from, meta)
        restore(network, start)
        if start.epoch > config.epochs:
            warnings.warn(
                f"The checkpoint {start.source} is at epoch {start.epoch + 1}, past epochs={config.epochs}: there is "
                "nothing left to train. Pass a larger epochs= to train on.",
                CheckpointWarning,
                stacklevel=4,
            )
    else:
        start = ResumePoint(epoch=config.initial_epoch)
    meta["run"] = start.run or new_run_id()  # a resumed run continues its lineage
    return start, meta


@contextlib.contextmanager
def folder_lease(policy: CheckpointPolicy | None, run: str) -> Iterator[Lease | None]:
    """Hold the lease of the run's checkpoint folder while it trains (``dtrain.leases``: one
    writer per folder); None without checkpoints."""
    if policy is None:
        yield None
        return
    lease = Lease(policy.directory, run)

    def waiting(held: dict) -> None:
        warnings.warn(
            f"The checkpoint folder {policy.directory} is held by run {held.get('run')} (on {held.get('holder')}), "
            f"which may still be writing there: waiting up to {EXPIRES_S:g} s for a sign of life before taking it "
            "over.",
            CheckpointWarning,
            stacklevel=4,
        )

    lease.take(on_wait=waiting)
    try:
        yield lease
    finally:
        lease.release()
