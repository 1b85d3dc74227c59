"""Logical shards and global batches: the rows of every step are fixed by (rows, shards,
batch_size, seed, epoch) alone, whoever holds which shard."""

from __future__ import annotations

import numpy as np
import pytest

from dtrain.sampling import EpochSampler, ShardPlan, shard_order


def _global_steps(plan: ShardPlan, owned, seed, shuffle, epoch):
    """The global row indices of each step when a process holds ``owned`` shards."""
    sampler = EpochSampler(plan, owned, seed, shuffle)
    local_to_global = np.concatenate([np.arange(*plan.bounds[s]) for s in owned])
    steps = []
    for rows, count in sampler.epoch(epoch):
        steps.append((local_to_global[rows], count))
    return steps


@pytest.mark.parametrize(
    "rows,shards,batch", [(100, 1, 32), (101, 3, 10), (7, 7, 7), (1000, 4, 1000), (1000, 3, 5000), (53, 2, 3)]
)
def test_every_row_is_used_once_per_epoch_and_all_shards_run_the_same_steps(rows, shards, batch):
    plan = ShardPlan(rows, shards, batch)
    assert plan.steps == -(-rows // batch)
    assert [b - a for a, b in plan.bounds] == list(plan.sizes)
    assert max(plan.sizes) - min(plan.sizes) <= 1 and sum(plan.sizes) == rows
    # Contributions never go backwards and add up to each shard's size.
    assert (np.diff(plan.taken, axis=1) >= 0).all()
    assert list(plan.taken[:, -1]) == list(plan.sizes)
    assert plan.global_counts.sum() == rows
    # Every step but the last is exactly one global batch; each shard's running count stays
    # within one row of its proportional share.
    assert all(c == batch for c in plan.global_counts[:-1])
    done = np.minimum(np.arange(plan.steps + 1) * batch, rows)
    share = done[None, :] * plan.sizes[:, None] / rows
    assert (np.abs(plan.taken - share) <= 1).all()
    for shuffle in (False, True):
        steps = _global_steps(plan, range(shards), 5, shuffle, 2)
        assert len(steps) == plan.steps
        assert all(len(r) == c for r, c in steps)
        used = np.concatenate([r for r, _ in steps])
        assert sorted(used) == list(range(rows))


def test_one_shard_in_order_gives_plain_consecutive_batches():
    plan = ShardPlan(70, 1, 32)
    got = [(rows, count) for rows, count in EpochSampler(plan, [0], 0, False).epoch(0)]
    assert got == [(slice(0, 32), 32), (slice(32, 64), 32), (slice(64, 70), 6)]


def test_one_shard_shuffled_batches_follow_the_shard_order():
    plan = ShardPlan(50, 1, 8)
    order = shard_order(50, 9, 4, 0, True)
    steps = [rows for rows, _ in EpochSampler(plan, [0], 9, True).epoch(4)]
    assert np.array_equal(np.concatenate(steps), order)
    assert [len(s) for s in steps] == [8] * 6 + [2]


@pytest.mark.parametrize("shuffle", [False, True])
def test_the_rows_of_a_step_do_not_depend_on_placement(shuffle):
    """Shards spread over 1, 2 or 3 processes, in any grouping: each step trains on the same
    global rows (what makes distributed results equal single-process ones)."""
    plan = ShardPlan(103, 3, 20)
    reference = _global_steps(plan, [0, 1, 2], 11, shuffle, 1)
    for placement in ([[0], [1], [2]], [[0, 2], [1]], [[2], [0, 1]]):
        parts = [_global_steps(plan, owned, 11, shuffle, 1) for owned in placement]
        for t, (rows, count) in enumerate(reference):
            assert all(part[t][1] == count for part in parts)  # everyone knows the global count
            merged = np.concatenate([part[t][0] for part in parts])
            assert sorted(merged) == sorted(rows)


def test_shares_are_proportional_to_shard_sizes():
    plan = ShardPlan(1000, 4, 100)  # 250 rows a shard: 25 each per step, exactly
    assert (np.diff(plan.taken, axis=1) == 25).all()
    uneven = ShardPlan(10, 3, 6)  # shards of 3, 3, 4
    assert list(uneven.sizes) == [3, 3, 4]
    assert list(uneven.global_counts) == [6, 4]
    # Merged times: size-3 shards at 1/6, 3/6, 5/6; the size-4 shard at 1/8, 3/8, 5/8, 7/8.
    # The first 6 rows: 1/8 (s2), 1/6 (s0, s1), 3/8 (s2), 3/6 (s0, s1).
    assert [list(r) for r in uneven.taken] == [[0, 2, 3], [0, 2, 3], [0, 2, 4]]


def test_shuffled_orders_differ_by_epoch_and_shard_and_repeat_for_a_seed():
    plan = ShardPlan(40, 2, 8)
    a = _global_steps(plan, [0, 1], 3, True, 0)
    assert all(np.array_equal(r1, r2) for (r1, _), (r2, _) in zip(a, _global_steps(plan, [0, 1], 3, True, 0)))
    b = _global_steps(plan, [0, 1], 3, True, 1)
    assert not all(np.array_equal(r1, r2) for (r1, _), (r2, _) in zip(a, b))


def test_a_process_whose_shards_give_nothing_to_a_step_still_runs_it():
    plan = ShardPlan(10, 4, 4)  # shards of 2, 3, 2, 3 rows
    counts = [len(rows) for rows, _ in EpochSampler(plan, [0], 0, True).epoch(0)]
    assert len(counts) == plan.steps == 3 and sum(counts) == 2 and 0 in counts


@pytest.mark.parametrize(
    "args,match",
    [
        ((5, 6, 10), "Cannot split 5 samples into 6 shards"),
        ((100, 4, 3), "global batch_size=3 is smaller than the number of shards"),
        ((0, 1, 1), "rows to be a positive integer"),
        ((10, 0, 1), "shards to be a positive integer"),
        ((10, 2, True), "batch_size to be a positive integer"),
    ],
)
def test_bad_plans_say_what_to_change(args, match):
    with pytest.raises(ValueError, match=match):
        ShardPlan(*args)


def test_owned_shards_are_checked():
    plan = ShardPlan(10, 2, 4)
    for owned in ([], [0, 0], [2]):
        with pytest.raises(ValueError, match="owned shards"):
            EpochSampler(plan, owned, 0, True)


def test_counts_equal_a_brute_force_merge_of_all_rows():
    """Oracle: list every row with its exact time (j + 1/2) / size as a Fraction, sort by
    (time, shard), cut into batches and count."""
    from fractions import Fraction

    rng = np.random.default_rng(0)
    for _ in range(60):
        rows = int(rng.integers(1, 80))
        shards = int(rng.integers(1, rows + 1))
        batch = int(rng.integers(shards, 2 * rows + 2))
        plan = ShardPlan(rows, shards, batch)
        items = sorted(
            (Fraction(2 * j + 1, 2 * int(size)), s) for s, size in enumerate(plan.sizes) for j in range(size)
        )
        for t in range(plan.steps + 1):
            first = items[: min(t * batch, rows)]
            expected = [sum(1 for _, s in first if s == shard) for shard in range(shards)]
            assert list(plan.taken[:, t]) == expected, (rows, shards, batch, t)


def test_a_plan_is_a_function_of_the_step_not_a_table():
    """Planning holds O(shards) numbers whatever the rows: a trillion rows plan at once, and the
    rows of any step are computed when asked for, equal to the proportional merge's."""
    plan = ShardPlan(10**12, 7, 1000)
    assert plan.steps == 10**9
    end = plan.taken_at([plan.steps], range(7))[:, 0]
    assert list(end) == list(plan.sizes) and plan.global_count(plan.steps - 1) == 1000
    half = plan.taken_at([plan.steps // 2])[:, 0]
    assert half.sum() == plan.rows // 2 and (np.abs(half - plan.sizes / 2) <= 1).all()


@pytest.mark.parametrize("seed", range(3))
def test_the_closed_form_matches_the_merge_it_describes(seed):
    """taken_at against a direct simulation of the module docstring's merge (every row at time
    (j + 1/2) / size of its shard, ties by shard index), on random small plans."""
    from fractions import Fraction

    rng = np.random.default_rng(seed)
    for _ in range(60):
        rows = int(rng.integers(1, 300))
        shards = int(rng.integers(1, min(rows, 12) + 1))
        batch = int(rng.integers(shards, max(shards, 40) + 1))
        plan = ShardPlan(rows, shards, batch)
        merged = sorted(
            (Fraction(2 * j + 1, 2 * int(size)), s) for s, size in enumerate(plan.sizes) for j in range(int(size))
        )
        for t in range(plan.steps + 1):
            first = merged[: min(t * batch, rows)]
            expected = [sum(1 for _, s in first if s == shard) for shard in range(shards)]
            assert list(plan.taken_at([t])[:, 0]) == expected, (rows, shards, batch, t)
