"""Recovery from the survivors' memory: a run that loses a worker goes on from the state a
surviving rank holds, at the step it failed, without a checkpoint, and ends with the weights and
metrics of an uninterrupted run. Real LocalClusters whose worker processes are killed (SIGKILL)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import numpy as np
import pytest
from conftest import blobs
from test_recovery import FIT, _fresh_cluster, data, make_model

import dtrain
from dtrain.callbacks import Callback
from dtrain.cluster.launch import RunControl, fit_on_cluster
from dtrain.config import FitConfig
from dtrain.layers import Dense
from dtrain.testing import Fault, inject

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _assert_same_run(model, history, alone, alone_history, rtol=1e-10):
    for got, expected in zip(model.get_weights(), alone.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=1e-12)
    assert history.epoch == alone_history.epoch  # each epoch reported once
    for key, values in alone_history.history.items():
        np.testing.assert_allclose(history.history[key], values, rtol=rtol)


class Seen(Callback):
    """Every epoch's begin and end the callbacks saw, in order."""

    observes_only = True

    def __init__(self):
        super().__init__()
        self.calls = []

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("begin", epoch))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("end", epoch))


@pytest.mark.parametrize("victim", [1, 0], ids=["rank-1", "rank-0"])
def test_a_killed_worker_costs_no_step_without_checkpoints(victim):
    """kill -9 of one of 3 workers at epoch 3: the survivors' memory has the state after the
    step before, the run goes on from there (no checkpoint anywhere), and ends with the weights
    and the per-epoch metrics of one uninterrupted process (3 shards), float64, to 1e-10."""
    x, y = data(1500)
    fit = {**FIT, "epochs": 5, "batch_size": 30}
    alone = make_model()
    alone_history = alone.fit(x, y, shards=3, validation_split=0.2, **fit)
    cluster, client = _fresh_cluster(3)
    try:
        model = make_model()
        seen = Seen()
        with inject(Fault(rank=victim, epoch=2, step=7, kind="kill")):
            history = model.fit(x, y, client=client, max_restarts=1, validation_split=0.2, callbacks=[seen], **fit)
    finally:
        client.close()
        cluster.close()
    [record] = history.restart_log
    assert record["resumed_from"] == {"epoch": 2, "step": 7, "source": "memory"}, record
    # from the kill (at most one progress interval after rank 0 was last heard of) to the next step
    assert record["detected_s"] + record["recovered_s"] < 5, record
    assert seen.calls == [(kind, e) for e in range(5) for kind in ("begin", "end")]  # each once, restart or not
    _assert_same_run(model, history, alone, alone_history)


def test_two_workers_lost_one_after_the_other():
    """Each loss restarts from the memory of the workers left: 3 workers, then 2, then 1."""
    x, y = data(1500)
    fit = {**FIT, "epochs": 4, "batch_size": 30}
    alone = make_model()
    alone_history = alone.fit(x, y, shards=3, **fit)
    cluster, client = _fresh_cluster(3)
    try:
        model = make_model()
        faults = [Fault(rank=2, epoch=1, step=3, kind="kill"), Fault(rank=1, epoch=2, step=11, kind="kill", attempt=1)]
        with inject(*faults):
            history = model.fit(x, y, client=client, max_restarts=2, **fit)
    finally:
        client.close()
        cluster.close()
    assert [r["resumed_from"] for r in history.restart_log] == [
        {"epoch": 1, "step": 3, "source": "memory"},
        {"epoch": 2, "step": 11, "source": "memory"},
    ]
    _assert_same_run(model, history, alone, alone_history)


def wide_float64_model():
    """Adam on an 8.4 MB gradient: the ranks shard the step (dtrain.training.sync.SHARDED_STEP_MIN_BYTES)."""
    model = dtrain.Sequential(
        [Dense(1024, activation="relu", input_dim=1024), Dense(3, activation="softmax")], dtype="float64"
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.build(seed=2)
    return model


def test_a_sharded_run_goes_on_from_its_epochs_start_in_memory():
    """On the sharded step each rank updates its own part of the optimizer state only: the whole
    state exists at the end of each epoch (gathered there), and a survivor's copy of it is where
    the run goes on from; the result is still that of an uninterrupted process."""
    x, y = blobs(96, features=1024)
    fit = dict(batch_size=24, epochs=3, seed=3, verbose=0, timeout=30)
    alone = wide_float64_model()
    alone_history = alone.fit(x, y, shards=3, **fit)
    cluster, client = _fresh_cluster(3)
    try:
        model = wide_float64_model()
        with inject(Fault(rank=1, epoch=1, step=2, kind="kill")):
            history = model.fit(x, y, client=client, max_restarts=1, **fit)
    finally:
        client.close()
        cluster.close()
    assert history.sharded_step
    [record] = history.restart_log
    assert record["resumed_from"] == {"epoch": 1, "step": 0, "source": "memory"}, record
    _assert_same_run(model, history, alone, alone_history)
    for name, slot in alone.optimizer.slots.items():
        np.testing.assert_allclose(model.optimizer.slots[name], slot, rtol=1e-10, atol=1e-14)


class Membership(Callback):
    """At the end of chosen epochs: add a worker and wait for it, or kill one (SIGKILL)."""

    def __init__(self, cluster, client, grow_at, kill_at, back_by):
        super().__init__()
        self.cluster, self.client = cluster, client
        self.grow_at, self.kill_at, self.back_by = grow_at, kill_at, back_by

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.grow_at:
            self.cluster.scale(3)
            self.client.wait_for_workers(3, timeout=60)
        if epoch == self.kill_at:
            pids = self.client.run(os.getpid)
            os.kill(pids[sorted(pids)[-1]], signal.SIGKILL)  # not rank 0 (ranks go by host, then address)
        if epoch == self.back_by:  # the nanny has started the killed worker again by now
            self.client.wait_for_workers(3, timeout=60)


def test_an_elastic_run_grows_shrinks_and_ends_as_a_fixed_one():
    """2 workers, a third joins (taken in at the next epoch), one is killed (the run goes on from
    memory on two), and it comes back (taken in again): the weights and metrics are those of
    one process with the same 4 logical shards."""
    x, y = data(1200)
    fit = {**FIT, "epochs": 12, "batch_size": 24}
    alone = make_model()
    alone_history = alone.fit(x, y, shards=4, **fit)
    cluster, client = _fresh_cluster(2)
    try:
        model = make_model()
        membership = Membership(cluster, client, grow_at=1, kill_at=5, back_by=8)
        history = model.fit(x, y, client=client, elastic=True, shards=4, max_restarts=1, callbacks=[membership], **fit)
    finally:
        client.close()
        cluster.close()
    first, *later = history.membership
    assert first["epoch"] == 2 and len(first["workers"]) == 3 and len(first["joined"]) == 1, history.membership
    [restart] = history.restart_log
    assert restart["resumed_from"]["source"] == "memory" and restart["resumed_from"]["epoch"] == 6, restart
    assert later and later[-1]["epoch"] <= 9 and len(later[-1]["workers"]) == 3, history.membership
    assert len(history.workers) == 3
    _assert_same_run(model, history, alone, alone_history)


def test_elastic_options_are_checked_before_any_work():
    model = make_model()
    x, y = data(100)
    with pytest.raises(ValueError, match="needs shards="):
        model.fit(x, y, elastic=True, client=object())
    with pytest.raises(ValueError, match="pass elastic=True as well"):
        model.fit(x, y, max_workers=3)
    with pytest.raises(ValueError, match="needs client="):
        model.fit(x, y, elastic=True, shards=2)
    with pytest.raises(ValueError, match="max_workers=1 is below min_workers=2"):
        model.fit(x, y, elastic=True, shards=2, min_workers=2, max_workers=1)


def test_a_slow_rank_is_reported_not_stopped(client2):
    """A straggler (20 ms more per step on rank 1, far below the 5 s deadline) slows the run but
    does not fail it; history.stragglers names it and by how much."""
    from dtrain.testing import slow_rank

    x, y = data(600)
    with slow_rank(1, 0.02):
        history = make_model().fit(x, y, client=client2, timeout=5, **{**FIT, "epochs": 2, "batch_size": 30})
    [straggler] = history.stragglers
    assert straggler["rank"] == 1 and straggler["worker"] == history.workers[1] and straggler["slower"] > 0.5
    assert straggler["message"].startswith(f"rank 1 on {history.workers[1]}: compute ")
    assert history.restarts == []


def _shared_segments(dask_worker=None):
    """dtrain's shared-memory segments this worker process still maps or holds open."""
    with open("/proc/self/maps") as f:
        mapped = sum("dtrain-comm" in line for line in f)
    held = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            held += "dtrain-comm" in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return mapped + held


def _segments_released(client, seconds=3.0):
    """Whether every worker is back to no segment within ``seconds`` (no garbage collection asked for)."""
    deadline = time.monotonic() + seconds
    while True:
        counts = client.run(_shared_segments)
        if not any(counts.values()) or time.monotonic() > deadline:
            return counts


class CancelAt(Callback):
    def __init__(self, event, epoch):
        super().__init__()
        self.event, self.epoch = event, epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            self.event.set()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memfd shared memory is Linux's")
def test_shared_memory_is_released_after_every_kind_of_end():
    """After a successful, a failed, a cancelled and a restarted sharded run, every worker maps
    no shared-memory segment of dtrain any more: every buffer of an ended attempt is released at
    once, not at the worker's next garbage collection."""
    from dtrain.cluster.errors import JobCancelled

    x, y = blobs(96, features=1024)
    fit = dict(batch_size=24, epochs=3, seed=3, verbose=0, timeout=30)
    cluster, client = _fresh_cluster(3)
    try:
        assert wide_float64_model().fit(x, y, client=client, **fit).sharded_step
        assert _segments_released(client) == dict.fromkeys(client.run(os.getpid), 0), "after a successful run"
        with pytest.raises(RuntimeError, match="injected crash"), inject(Fault(rank=1, epoch=1, step=1, kind="crash")):
            wide_float64_model().fit(x, y, client=client, **fit)
        assert not any(_segments_released(client).values()), "after a failed run"
        stop = threading.Event()
        config = FitConfig.make(**fit)
        with pytest.raises(JobCancelled):
            fit_on_cluster(
                wide_float64_model(),
                x,
                y,
                None,
                [CancelAt(stop, 0)],
                config,
                client=client,
                control=RunControl(stop=stop),
            )
        assert not any(_segments_released(client).values()), "after a cancelled run"
        with inject(Fault(rank=2, epoch=1, step=2, kind="kill")):
            history = wide_float64_model().fit(x, y, client=client, max_restarts=1, **fit)
        assert history.restart_log[0]["resumed_from"]["source"] == "memory"
        assert not any(_segments_released(client).values()), "after a restarted run"
    finally:
        client.close()
        cluster.close()


@pytest.mark.parametrize("victim", [1, 0], ids=["rank-1-while-rank-0-writes", "rank-0-as-it-writes"])
def test_a_kill_at_a_checkpoint_costs_no_step_and_leaves_the_folder_good(victim, tmp_path):
    """A worker killed as a checkpoint at epoch 2, step 5 begins: rank 1 (rank 0 writes it, then
    finds rank 1 gone) or rank 0 itself (nothing written). The survivors hold the state of that
    very position, the run goes on from their memory, and the folder's latest checkpoint stays
    good (a restart never reads a half-written one: checkpoints are written whole, then named)."""

    x, y = data(1500)
    fit = {**FIT, "epochs": 4, "batch_size": 30}
    alone = make_model()
    alone_history = alone.fit(x, y, shards=3, **fit)
    cluster, client = _fresh_cluster(3)
    try:
        model = make_model()
        with inject(Fault(rank=victim, epoch=1, step=5, kind="kill", at="checkpoint")):
            history = model.fit(x, y, client=client, max_restarts=1, checkpoint_dir=tmp_path, checkpoint_every=5, **fit)
    finally:
        client.close()
        cluster.close()
    [record] = history.restart_log
    assert record["resumed_from"] == {"epoch": 1, "step": 5, "source": "memory"}, record
    _assert_same_run(model, history, alone, alone_history)
    resumed = make_model()  # the folder's latest is the end of the run, and good
    resumed.fit(x, y, resume_from=tmp_path, **fit)
    for got, expected in zip(resumed.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, expected)


def test_a_sharded_run_killed_at_any_moment_ends_as_an_uninterrupted_one():
    """A kill at a moment of the clock's choosing (in a collective, the update or the allgather of
    a sharded step, or between steps): the survivors' copy at the epoch's start is whole whatever
    the moment, and the result is that of one process."""
    x, y = blobs(480, features=1024)
    fit = dict(batch_size=24, epochs=3, seed=3, verbose=0, timeout=30)
    alone = wide_float64_model()
    alone_history = alone.fit(x, y, shards=3, **fit)
    cluster, client = _fresh_cluster(3)
    try:
        pids = client.run(os.getpid)
        victim = pids[sorted(pids)[1]]

        class KillSoon(Callback):
            observes_only = True

            def on_epoch_begin(self, epoch, logs=None):
                if epoch == 1:  # once: a restart within an epoch does not begin it again
                    threading.Timer(
                        np.random.default_rng().uniform(0.05, 0.6), os.kill, (victim, signal.SIGKILL)
                    ).start()

        model = wide_float64_model()
        history = model.fit(x, y, client=client, max_restarts=1, callbacks=[KillSoon()], **fit)
    finally:
        client.close()
        cluster.close()
    assert history.sharded_step
    [record] = history.restart_log
    assert record["resumed_from"]["source"] == "memory" and record["resumed_from"]["step"] == 0, record
    _assert_same_run(model, history, alone, alone_history)
