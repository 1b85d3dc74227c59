"""Logical shards and global batches: which rows every step of every epoch trains on.

The data is cut into a fixed number of logical shards: contiguous row ranges whose bounds
depend only on (rows, shards). A training step takes a *global* batch of ``batch_size`` rows,
to which every shard contributes its share in proportion to its size, and the order in which
a shard's rows are visited in an epoch depends only on (seed, epoch, shard). So the rows of
every step are fixed before anything runs, whatever worker each shard lands on: training on
one process with ``shards=S`` and on any number of workers holding those S shards computes
the same batches, and the results agree to float rounding.

Shares: think of shard s's rows as spread evenly over the epoch, its j-th row at time
(j + 1/2) / size_s; merge all shards' rows by that time (ties by shard index) and cut the
merged sequence into consecutive global batches. So every step but the last takes exactly
``batch_size`` rows, each shard's running count stays within one row of its proportional
share, every row is used once per epoch, and every rank can compute every count, so all ranks
run the same number of steps however the shards are placed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from .data import SHUFFLE_STREAM


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"Expected {name} to be a positive integer, received {name}={value!r}.")
    return int(value)


class ShardPlan:
    """How ``rows`` samples split into ``shards`` logical shards and ``steps`` global batches."""

    def __init__(self, rows: int, shards: int, batch_size: int):
        self.rows = _positive_int("rows", rows)
        self.shards = _positive_int("shards", shards)
        self.batch_size = _positive_int("batch_size", batch_size)
        if self.shards > self.rows:
            raise ValueError(
                f"Cannot split {self.rows} samples into {self.shards} shards: every shard needs at least "
                f"one sample. Use shards <= {self.rows} (or fewer workers), or more data."
            )
        if self.batch_size < self.shards:
            raise ValueError(
                f"The global batch_size={self.batch_size} is smaller than the number of shards "
                f"({self.shards}): every step takes at least one sample from each shard. Use "
                f"batch_size >= {self.shards}, or fewer shards."
            )
        cuts = np.arange(self.shards + 1, dtype=np.int64) * self.rows // self.shards
        self.bounds: list[tuple[int, int]] = [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:])]
        self.sizes = np.diff(cuts)
        self.steps = -(-self.rows // self.batch_size)
        done = np.minimum(np.arange(self.steps + 1, dtype=np.int64) * self.batch_size, self.rows)
        self.taken = _proportional_counts(self.sizes, done)  # taken[s, t]: rows of shard s in steps < t
        self.global_counts = np.diff(done)

    def __repr__(self) -> str:
        return f"ShardPlan(rows={self.rows}, shards={self.shards}, batch_size={self.batch_size}, steps={self.steps})"

    def local_rows(self, owned: Sequence[int]) -> int:
        return int(sum(self.sizes[s] for s in owned))


def _proportional_counts(sizes: np.ndarray, done: np.ndarray) -> np.ndarray:
    """counts[s, i]: how many of shard s's rows are among the first ``done[i]`` rows of the
    merged sequence described in the module docstring.

    Shard sizes differ by at most one (m or m + 1), so the merge has only 2m + 1 distinct
    times ("slots"): slot j of the size-m shards holds one row of each of them, at time
    (2j + 1) / 2m, and likewise for the size-(m + 1) shards. No two slots of different sizes
    share a time (m and m + 1 are coprime and of different parity), so the slots sort
    exactly on the integer keys (2j + 1)(m + 1) and (2i + 1)m; inside a slot, rows go in
    shard order. Work is O(rows / shards), not O(rows).
    """
    m = int(sizes.min())
    lanes = [np.flatnonzero(sizes == m), np.flatnonzero(sizes == m + 1)]
    keys = np.concatenate([(2 * np.arange(m) + 1) * (m + 1), (2 * np.arange(m + 1) + 1) * m])
    lane_of_slot = np.concatenate([np.zeros(m, np.int64), np.ones(m + 1, np.int64)])
    lane_of_slot = lane_of_slot[np.argsort(keys)]
    lane_of_slot = lane_of_slot[np.array([len(lanes[lane]) for lane in lane_of_slot]) > 0]  # drop empty lanes
    rows_per_slot = np.array([len(lanes[0]), len(lanes[1])])[lane_of_slot]
    rows_before = np.concatenate([[0], np.cumsum(rows_per_slot)])
    # For each cut: the number of whole slots before it, then the rows it takes from the next.
    whole = np.searchsorted(rows_before, done, side="right") - 1
    partial = done - rows_before[whole]
    counts = np.zeros((len(sizes), len(done)), dtype=np.int64)
    for lane, members in enumerate(lanes):
        whole_in_lane = np.concatenate([[0], np.cumsum(lane_of_slot == lane)])[whole]
        counts[members] = whole_in_lane
        next_is_lane = np.zeros(len(done), bool)
        inside = whole < len(lane_of_slot)
        next_is_lane[inside] = lane_of_slot[whole[inside]] == lane
        for rank_in_slot, shard in enumerate(members):
            counts[shard] += next_is_lane & (partial > rank_in_slot)
    return counts


def shard_order(size: int, seed: int, epoch: int, shard: int, shuffle: bool) -> np.ndarray:
    """The order in which one shard's rows are visited in one epoch: a function of
    (seed, epoch, shard) only."""
    if not shuffle:
        return np.arange(size)
    return np.random.default_rng([SHUFFLE_STREAM, seed, epoch, shard]).permutation(size)


class EpochSampler:
    """The batches of the shards one process holds, step by step.

    The held shards' rows are stored one after another in ``owned`` order; the indices this
    yields point into that local storage. Every process runs all ``plan.steps`` steps, also
    those where its shards contribute no row.
    """

    def __init__(self, plan: ShardPlan, owned: Sequence[int], seed: int, shuffle: bool):
        self.plan, self.owned, self.seed, self.shuffle = plan, list(owned), seed, shuffle
        if (
            not self.owned
            or len(set(self.owned)) != len(self.owned)
            or not all(0 <= s < plan.shards for s in self.owned)
        ):
            raise ValueError(f"owned shards must be distinct indices in [0, {plan.shards}), received {owned!r}.")
        starts = np.cumsum([0] + [int(plan.sizes[s]) for s in self.owned])
        self._local_start = starts[:-1]
        self.rows = int(starts[-1])
        taken = plan.taken[self.owned]  # (owned, steps + 1)
        self._step_bounds = taken.sum(axis=0)  # local rows used after t steps
        self._per_step = np.diff(taken, axis=1)  # (owned, steps)
        # One shard, in order: every batch is a contiguous range of the local rows.
        self.contiguous = not shuffle and len(self.owned) == 1

    def epoch(self, epoch: int, first_step: int = 0) -> Iterator[tuple[np.ndarray | slice, int]]:
        """Yields, for every step from ``first_step`` on (a run resumed mid-epoch): (local rows of
        this step, rows in the whole global batch)."""
        plan = self.plan
        if self.contiguous:
            for t in range(first_step, plan.steps):
                yield slice(int(self._step_bounds[t]), int(self._step_bounds[t + 1])), int(plan.global_counts[t])
            return
        # All of this epoch's local rows grouped by step (shards in owned order within a step):
        # one stable sort instead of a Python loop over steps x shards.
        orders, steps_of = [], []
        for i, s in enumerate(self.owned):
            orders.append(self._local_start[i] + shard_order(int(plan.sizes[s]), self.seed, epoch, s, self.shuffle))
            steps_of.append(np.repeat(np.arange(plan.steps), self._per_step[i]))
        schedule = np.concatenate(orders)[np.argsort(np.concatenate(steps_of), kind="stable")]
        for t in range(first_step, plan.steps):
            yield schedule[self._step_bounds[t] : self._step_bounds[t + 1]], int(plan.global_counts[t])
