"""What a rank can hand to a restart from its own memory: the state after the last step it completed.

The replicas are bitwise identical after every step, so when a run loses a rank, any survivor
holds what an uninterrupted run had at that point: the weights, the optimizer state, the epoch's
sums of the loss and metrics (the step's sums travel with the gradient: ``training.sync``), and
the finished epochs' logs. A restart that loads a survivor's state takes exactly the batches the
uninterrupted run took from there (``dtrain.sampling``), and ends with the same weights.

When is a rank's memory that state? A step's update follows its last collective, and a failure
elsewhere reaches a rank only inside a collective (or at the abort check between steps), so with
the allreduce strategies the live weights are always those after the last completed step: the
copy is taken when the run fails, and training pays nothing for it. The sharded step is
different (``GradientSync.holds_whole_state``): a rank holds its own part of the optimizer state
only, and its own part of a step's weights before the others'. There the whole state exists
only after the optimizer state is gathered, at the end of each epoch, and a copy is kept there:
a restart from a sharded run's memory begins at the start of the epoch in which it failed.

The cluster layer stores the copy in the worker's memory when a rank's run fails
(``dtrain.cluster.memory``) and the driver picks the most advanced one among the survivors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import host_copy_aside
from ..network import Network, Totals
from .sync import GradientSync


@dataclass
class MemoryPoint:
    """A rank's state after ``step`` steps of ``epoch`` (host copies): what a restart loads."""

    epoch: int
    step: int
    totals: np.ndarray | None  # the epoch's global sums so far (Totals.to_array), None at an epoch's start
    history: list[dict[str, float]]  # the logs of every finished epoch of the run
    params: np.ndarray
    optimizer: dict[str, np.ndarray]

    def summary(self) -> dict[str, Any]:
        """Everything but the arrays: what the driver compares and passes on to every rank."""
        totals = None if self.totals is None else [float(v) for v in self.totals]
        return {"epoch": self.epoch, "step": self.step, "totals": totals, "history": list(self.history)}


class Survivor:
    """Follows the loop's position; :meth:`state` is this rank's state at the last completed
    step (or, for a sharded step, at the last epoch boundary), ready to outlive the failed run."""

    def __init__(
        self,
        network: Network,
        sync: GradientSync,
        epoch: int,
        step: int,
        before: list[dict[str, float]],
        trained: list[dict[str, float]],
    ) -> None:
        self.network, self.sync = network, sync
        self._before, self._trained = before, trained  # the run's finished epochs: before it, by it (grows)
        self._epoch, self._step = epoch, step
        self._totals: Totals | None = None
        self._whole: MemoryPoint | None = None  # the sharded step's copy at the last epoch boundary

    def step_done(self, epoch: int, step: int, totals: Totals) -> None:
        """``step`` steps of ``epoch`` are done and ``totals`` holds their global sums."""
        self._epoch, self._step, self._totals = epoch, step, totals

    def epoch_done(self, epoch: int) -> None:
        """``epoch`` is finished (its logs appended to the run's list): the next starts clean.
        A collective for the sharded step (gathering the optimizer state): every rank calls it."""
        self._epoch, self._step, self._totals = epoch + 1, 0, None
        if not self.sync.holds_whole_state:
            self.sync.gather_optimizer_state()
            self._whole = self._copy()

    def state(self) -> MemoryPoint | None:
        """The state to keep when the run fails here; None when this rank has none to give."""
        if self.sync.holds_whole_state:
            return self._copy()
        return self._whole

    def _copy(self) -> MemoryPoint:
        # On a GPU the copies go around the current stream, where a collective of the failed run
        # may wait forever; the loop synchronizes after every update, so the weights are final.
        optimizer = self.network.compiled_optimizer
        state = {name: host_copy_aside(slot) for name, slot in optimizer.slots.items()}
        state["iterations"] = np.array(optimizer.iterations, dtype=np.int64)
        return MemoryPoint(
            epoch=self._epoch,
            step=self._step,
            totals=None if self._totals is None else self._totals.to_array(),
            history=[*self._before, *self._trained],
            params=host_copy_aside(self.network.params),
            optimizer=state,
        )


KeepState = Callable[[MemoryPoint], None]
