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
from typing import Any

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
        # Everything here is O(shards): the rows of a step are computed when asked for
        # (taken_at), never tabulated for the whole run, so planning a billion rows is instant.
        cuts = np.arange(self.shards + 1, dtype=np.int64) * self.rows // self.shards
        self.bounds: list[tuple[int, int]] = [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:])]
        self.sizes = np.diff(cuts)
        self.steps = -(-self.rows // self.batch_size)
        self._merge = _Merge(self.sizes)

    def __repr__(self) -> str:
        return f"ShardPlan(rows={self.rows}, shards={self.shards}, batch_size={self.batch_size}, steps={self.steps})"

    def local_rows(self, owned: Sequence[int]) -> int:
        return int(sum(self.sizes[s] for s in owned))

    def global_count(self, step: int) -> int:
        """Rows in the global batch of ``step`` (every step but the last: ``batch_size``)."""
        return min(self.batch_size, self.rows - step * self.batch_size)

    def taken_at(self, steps: Any, shards: Sequence[int] | None = None) -> np.ndarray:
        """``out[i, k]``: rows of shard ``shards[i]`` (default: every shard) in the first
        ``steps[k]`` steps of an epoch; O(len(shards) x len(steps)) time and memory."""
        steps = np.asarray(steps, dtype=np.int64)
        done = np.minimum(steps * self.batch_size, self.rows)
        return self._merge.taken(done, np.arange(self.shards) if shards is None else np.asarray(shards, np.int64))

    @property
    def taken(self) -> np.ndarray:
        """The whole table ``taken[s, t]`` (rows of shard s in steps < t), O(shards x steps):
        for small plans and tests; training asks ``taken_at`` for what it needs."""
        return self.taken_at(np.arange(self.steps + 1))

    @property
    def global_counts(self) -> np.ndarray:
        """Rows of every step's global batch, O(steps): for small plans and tests."""
        return np.diff(np.minimum(np.arange(self.steps + 1, dtype=np.int64) * self.batch_size, self.rows))


class _Merge:
    """The merged sequence of the module docstring, in closed form.

    Shard sizes differ by at most one (m or m + 1), so the merge has 2m + 1 distinct times
    ("slots"): slot j of the size-m shards (lane 0) holds one row of each of them, at time
    (2j + 1) / 2m, and slot i of the size-(m + 1) shards (lane 1) one row of each of those, at
    (2i + 1) / (2m + 2). No two slots of different lanes share a time (m and m + 1 are coprime
    and of different parity), so the slots sort exactly on the integer keys (2j + 1)(m + 1) and
    (2i + 1)m; inside a slot, rows go in shard order. The rows before a cut of the sequence are
    found by a binary search over the keys: O(log rows) per cut, nothing tabulated."""

    def __init__(self, sizes: np.ndarray) -> None:
        self.m = int(sizes.min())
        self.lane = (sizes != self.m).astype(np.int64)  # 0: m rows, 1: m + 1 rows
        self.rank_in_lane = np.zeros(len(sizes), np.int64)
        for lane in (0, 1):
            members = np.flatnonzero(self.lane == lane)
            self.rank_in_lane[members] = np.arange(len(members))
        self.width = np.array([np.sum(self.lane == 0), np.sum(self.lane == 1)], dtype=np.int64)  # rows per slot
        self.last_key = max((2 * self.m - 1) * (self.m + 1), (2 * self.m + 1) * self.m)

    def _whole(self, key: Any) -> tuple[Any, Any]:
        """Slots of each lane whose key is at most ``key``."""
        m = self.m
        return np.minimum((key // (m + 1) + 1) // 2, m), np.minimum((key // m + 1) // 2, m + 1)

    def taken(self, done: np.ndarray, shards: np.ndarray) -> np.ndarray:
        """Rows of each of ``shards`` among the first ``done[k]`` rows of the merged sequence."""
        # Python integers past what an int64 key can hold (a shard of over 2**31 rows).
        kind = np.int64 if self.last_key < 2**62 else object
        done = done.astype(kind)
        lo = np.zeros(done.shape, kind)  # rows(key 0) = 0 <= done: the largest key with rows <= done is >= 0
        hi = np.full(done.shape, self.last_key + 1, kind)
        while True:
            open_ = hi - lo > 1
            if not open_.any():
                break
            mid = (lo + hi) // 2
            whole0, whole1 = self._whole(mid)
            fits = whole0 * self.width[0] + whole1 * self.width[1] <= done
            lo = np.where(open_ & fits, mid, lo)
            hi = np.where(open_ & ~fits, mid, hi)
        whole0, whole1 = self._whole(lo)
        partial = done - whole0 * self.width[0] - whole1 * self.width[1]
        # A cut inside a slot: that slot has the key lo + 1 (the next key that adds rows).
        after = lo + 1
        next_lane = np.where((after % (self.m + 1) == 0) & ((after // (self.m + 1)) % 2 == 1), 0, 1)
        whole = np.where(self.lane[shards, None] == 0, whole0[None, :], whole1[None, :])
        inside = (next_lane[None, :] == self.lane[shards, None]) & (self.rank_in_lane[shards, None] < partial[None, :])
        return (whole + inside).astype(np.int64)


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
        taken = plan.taken_at(np.arange(plan.steps + 1), self.owned)  # (owned, steps + 1): this rank's only
        self._step_bounds = taken.sum(axis=0)  # local rows used after t steps
        self._per_step = np.diff(taken, axis=1)  # (owned, steps)
        # One shard, in order: every batch is a contiguous range of the local rows.
        self.contiguous = not shuffle and len(self.owned) == 1
        # local row i of held shard k is global row i + _to_global[k]
        self._to_global = np.array([plan.bounds[s][0] for s in self.owned], dtype=np.int64) - self._local_start

    def global_rows(self, local: np.ndarray | slice) -> np.ndarray:
        """The global indices (rows of the whole training data) of local rows, in their order:
        what makes randomness a function of the sample, not of the rank that holds it."""
        if isinstance(local, slice):
            local = np.arange(local.start, local.stop)
        held = np.searchsorted(self._local_start, local, side="right") - 1
        return local + self._to_global[held]

    def epoch(self, epoch: int, first_step: int = 0) -> Iterator[tuple[np.ndarray | slice, int]]:
        """Yields, for every step from ``first_step`` on (a run resumed mid-epoch): (local rows of
        this step, rows in the whole global batch)."""
        plan = self.plan
        if self.contiguous:
            for t in range(first_step, plan.steps):
                yield slice(int(self._step_bounds[t]), int(self._step_bounds[t + 1])), plan.global_count(t)
            return
        # All of this epoch's local rows grouped by step (shards in owned order within a step):
        # one stable sort instead of a Python loop over steps x shards.
        orders, steps_of = [], []
        for i, s in enumerate(self.owned):
            orders.append(self._local_start[i] + shard_order(int(plan.sizes[s]), self.seed, epoch, s, self.shuffle))
            steps_of.append(np.repeat(np.arange(plan.steps), self._per_step[i]))
        schedule = np.concatenate(orders)[np.argsort(np.concatenate(steps_of), kind="stable")]
        for t in range(first_step, plan.steps):
            yield schedule[self._step_bounds[t] : self._step_bounds[t + 1]], plan.global_count(t)
