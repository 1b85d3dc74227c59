"""Instruments for tests of distributed training: faults injected at a known step, and hashes of
every replica's weights after every step. They are step hooks (``dtrain.training.hooks``):

    with dtrain.testing.inject(Fault(rank=1, epoch=2, step=6, kind="crash")):
        model.fit(x, y, client=client)            # rank 1 raises at that step

    with dtrain.testing.replica_hashes() as hashes:
        model.fit(x, y, client=client)
    assert hashes.per_rank[0] == hashes.per_rank[1]

A run carries the hooks installed when it starts to every rank; production runs carry none.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backend import host_copy
from .network import Network
from .training.hooks import StepContext, StepHook, installed

FAULT_KINDS = ("crash", "hang", "nan", "kill")


@dataclass(frozen=True)
class Fault:
    """A failure at (rank, epoch, step) of a run's first start (of its restart number
    ``attempt``, when given; the other attempts run clean): "crash"
    raises, "hang" sleeps ``seconds`` ignoring aborts (as a deadlock would), "nan" puts a NaN at
    ``index`` of the rank's gradient after the backward pass, "kill" sends the rank's own worker
    process SIGKILL before the step (``kill -9`` at a known step; never in one process)."""

    rank: int
    epoch: int
    step: int
    kind: str
    seconds: float = 3600.0
    index: int = 0
    attempt: int = 0
    at: str = "step"  # or "checkpoint": as the checkpoint at (epoch, step) begins

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"Fault kind must be one of {FAULT_KINDS}, received {self.kind!r}.")
        if self.at not in ("step", "checkpoint"):
            raise ValueError(f"Fault at must be 'step' or 'checkpoint', received {self.at!r}.")


class FaultInjector(StepHook):
    def __init__(self, *faults: Fault) -> None:
        self.faults = faults

    def _due(self, ctx: StepContext, kinds: tuple[str, ...], at: str = "step") -> list[Fault]:
        return [
            f
            for f in self.faults
            if f.kind in kinds
            and f.at == at
            and (f.attempt, f.rank, f.epoch, f.step) == (ctx.attempt, ctx.rank, ctx.epoch, ctx.step)
        ]

    def before_checkpoint(self, ctx: StepContext, network: Network) -> None:
        self._strike(self._due(ctx, ("hang", "crash", "kill"), at="checkpoint"), ctx)

    def before_step(self, ctx: StepContext, network: Network) -> None:
        self._strike(self._due(ctx, ("hang", "crash", "kill")), ctx)

    def _strike(self, faults: list[Fault], ctx: StepContext) -> None:
        for fault in faults:
            if fault.kind == "kill":
                _kill_this_worker()
            if fault.kind == "hang":
                time.sleep(fault.seconds)
            else:
                raise RuntimeError(f"injected crash at epoch {ctx.epoch + 1}, step {ctx.step + 1}")

    def after_backward(self, ctx: StepContext, network: Network) -> None:
        for fault in self._due(ctx, ("nan",)):
            network.grads[fault.index] = np.nan


class ReplicaHashes(StepHook):
    """A hash of the weights after every step, per rank (``per_rank[r]``: rank r's, in step order)."""

    def __init__(self) -> None:
        self.per_rank: dict[int, list[str]] = {}
        self._hashes: list[str] = []

    def after_step(self, ctx: StepContext, network: Network) -> None:
        self._hashes.append(hashlib.blake2b(host_copy(network.params).tobytes(), digest_size=16).hexdigest())

    def result(self) -> Any:
        return self._hashes

    def collect(self, rank: int, result: Any) -> None:
        self.per_rank[rank] = list(result)


def _kill_this_worker() -> None:
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        raise RuntimeError("A 'kill' fault kills a Dask worker's process; this run is not on a worker.") from None
    os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def inject(*faults: Fault) -> Iterator[FaultInjector]:
    """Inject ``faults`` into every run started meanwhile."""
    hook = FaultInjector(*faults)
    with installed(hook):
        yield hook


class SlowRank(StepHook):
    def __init__(self, rank: int, seconds: float) -> None:
        self.rank, self.seconds = rank, seconds

    def after_backward(self, ctx: StepContext, network: Network) -> None:  # within the step's compute time
        if ctx.rank == self.rank:
            time.sleep(self.seconds)


@contextlib.contextmanager
def slow_rank(rank: int, seconds: float) -> Iterator[SlowRank]:
    """Rank ``rank`` of every run started meanwhile takes ``seconds`` longer to compute each step
    (a straggler: a busy or weaker machine)."""
    hook = SlowRank(rank, seconds)
    with installed(hook):
        yield hook


@contextlib.contextmanager
def replica_hashes() -> Iterator[ReplicaHashes]:
    """Record the hashes of every replica's weights after every step of the runs started meanwhile."""
    hook = ReplicaHashes()
    with installed(hook):
        yield hook
