"""Checkpoints during training, exact resume, restarts after a lost or stuck worker, and
non-finite steps: one process and real LocalClusters with worker processes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import blobs, one_hot

import dtrain
from dtrain.callbacks import Callback
from dtrain.checkpoints import list_checkpoints
from dtrain.cluster.launch import RunControl, fit_on_cluster
from dtrain.config import FitConfig
from dtrain.layers import Dense
from dtrain.testing import Fault, inject, replica_hashes
from dtrain.training.sync import NonFiniteError


def make_model(dtype="float64"):
    model = dtrain.Sequential([Dense(16, activation="relu", input_dim=10), Dense(3, activation="softmax")], dtype=dtype)
    model.compile(
        loss="categorical_crossentropy", optimizer=dtrain.optimizers.SGD(0.05, momentum=0.9), metrics=["accuracy"]
    )
    return model


def data(n=203):
    x, labels = blobs(n, features=10, classes=3, seed=2)
    return x, one_hot(labels, 3)


class Interrupt(Exception):
    pass


class InterruptAt(Callback):
    """Raises at (epoch, step): a run that dies there."""

    def __init__(self, epoch, step):
        super().__init__()
        self.at, self.epoch = (epoch, step), None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise Interrupt()


FIT = dict(epochs=4, batch_size=20, seed=3, verbose=0)


# -- one process ----------------------------------------------------------------------------------


@pytest.mark.parametrize("every", ["epoch", 3])
def test_a_resumed_run_ends_bitwise_equal_to_an_uninterrupted_one(tmp_path, every):
    x, y = data()
    whole = make_model()
    whole.fit(x, y, **FIT)
    interrupted = make_model()
    with pytest.raises(Interrupt):
        interrupted.fit(x, y, checkpoint_dir=tmp_path, checkpoint_every=every, callbacks=[InterruptAt(2, 5)], **FIT)
    assert list_checkpoints(tmp_path)
    resumed = make_model()
    history = resumed.fit(x, y, resume_from=tmp_path, checkpoint_dir=tmp_path, checkpoint_every=every, **FIT)
    for got, expected in zip(resumed.get_weights(), whole.get_weights()):
        assert np.array_equal(got, expected)  # same arithmetic in the same order: bitwise
    assert resumed.optimizer.iterations == whole.optimizer.iterations
    assert len(history.history["loss"]) == 4  # the epochs before the checkpoint come back too
    np.testing.assert_allclose(history.history["loss"], whole.history.history["loss"], rtol=1e-12)


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    x, y = data()
    make_model().fit(x, y, checkpoint_dir=tmp_path, **FIT)
    other = make_model()
    with warnings.catch_warnings(), pytest.raises(dtrain.checkpoints.CheckpointError, match="plan"):
        warnings.simplefilter("ignore")
        other.fit(x, y, resume_from=tmp_path, **{**FIT, "batch_size": 25})  # another data plan
    with pytest.raises(dtrain.checkpoints.CheckpointError, match="No checkpoint"):
        other.fit(x, y, resume_from=tmp_path / "empty", **FIT)


def test_resume_falls_back_past_a_corrupt_checkpoint(tmp_path):
    x, y = data()
    whole = make_model()
    whole.fit(x, y, **FIT)
    make_model().fit(x, y, checkpoint_dir=tmp_path, keep_checkpoints=5, **{**FIT, "epochs": 3})
    newest = list_checkpoints(tmp_path)[-1]
    path = tmp_path / f"{newest}.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0xFF
    path.write_bytes(bytes(blob))
    resumed = make_model()
    with pytest.warns(dtrain.checkpoints.CheckpointWarning, match=newest):
        resumed.fit(x, y, resume_from=tmp_path, **FIT)
    for got, expected in zip(resumed.get_weights(), whole.get_weights()):
        assert np.array_equal(got, expected)


def test_a_nan_step_stops_with_its_epoch_and_step_or_is_skipped():
    x, y = data()
    x = x.astype(np.float64)
    x[57] = 1.7e308  # overflows in the float64 model -> inf -> NaN gradient in the batch holding row 57
    model = make_model()
    with pytest.raises(NonFiniteError, match=r"epoch 1, step 3\b"), np.errstate(all="ignore"):  # row 57: step 3
        model.fit(x, y, shuffle=False, **FIT)
    assert model.optimizer.iterations == 2  # stopped before the bad update
    skipping = make_model()
    with np.errstate(all="ignore"):
        skipping.fit(x, y, shuffle=False, on_nonfinite="skip", **FIT)
    assert all(np.isfinite(w).all() for w in skipping.get_weights())
    assert skipping.optimizer.iterations == 4 * 11 - 4  # the step holding row 57 left out in each epoch
    assert skipping.history.skipped_steps == 4 and skipping.history.restarts == []


def test_a_non_finite_state_is_never_written(tmp_path):
    x, y = data()
    x = x.astype(np.float64)
    x[57] = 1.7e308
    with np.errstate(all="ignore"), pytest.warns(dtrain.training.checkpointing.NonFiniteCheckpointWarning):
        # on_nonfinite="ignore" goes on with NaN weights, as Keras does: no checkpoint of them
        history = make_model().fit(x, y, shuffle=False, on_nonfinite="ignore", checkpoint_dir=tmp_path, **FIT)
    assert len(history.history["loss"]) == 4 and list_checkpoints(tmp_path) == []
    with np.errstate(all="ignore"), pytest.raises(dtrain.checkpoints.NonFiniteCheckpoint):
        dtrain.training.checkpointing.write(
            dtrain.config.CheckpointPolicy(str(tmp_path)),
            make_nan_model(),
            epoch=1,
            step=0,
            position=11,
            totals=None,
            history=[],
            meta={},
        )
    assert list_checkpoints(tmp_path) == []


def make_nan_model():
    model = make_model()
    model.build(10, seed=0)
    model.params[0] = np.nan
    return model


def test_resume_takes_the_seed_and_shards_it_was_not_given(tmp_path):
    x, y = data()
    interrupted = make_model()
    with pytest.raises(Interrupt):
        interrupted.fit(
            x, y, epochs=4, batch_size=20, verbose=0, shards=3, checkpoint_dir=tmp_path, callbacks=[InterruptAt(2, 5)]
        )  # no seed: a fresh one
    resumed = make_model()
    resumed.fit(x, y, epochs=4, batch_size=20, verbose=0, resume_from=tmp_path)  # neither seed nor shards
    seed = dtrain.training.checkpointing.checkpoint_plan(tmp_path)["seed"]
    whole = make_model()
    whole.fit(x, y, epochs=4, batch_size=20, verbose=0, shards=3, seed=seed)
    for got, expected in zip(resumed.get_weights(), whole.get_weights()):
        assert np.array_equal(got, expected)


# -- on a cluster ---------------------------------------------------------------------------------


@pytest.mark.cluster
def test_resume_on_a_cluster_equals_an_uninterrupted_run(client3, tmp_path):
    x, y = data()
    whole = make_model()
    whole.fit(x, y, client=client3, **FIT)
    crashed = make_model()
    with pytest.raises(RuntimeError, match="injected crash"), inject(Fault(rank=1, epoch=2, step=6, kind="crash")):
        crashed.fit(x, y, client=client3, checkpoint_dir=tmp_path, checkpoint_every=4, **FIT)
    resumed = make_model()
    history = resumed.fit(x, y, client=client3, resume_from=tmp_path, **FIT)
    for got, expected in zip(resumed.get_weights(), whole.get_weights()):
        assert np.array_equal(got, expected)  # same workers, same order of sums: bitwise
    assert len(history.history["loss"]) == 4
    alone = make_model()
    alone.fit(x, y, shards=3, **FIT)
    for got, expected in zip(resumed.get_weights(), alone.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.cluster
def test_a_nan_on_one_rank_stops_every_rank_at_that_step(client2):
    x, y = data()
    model = make_model()
    start = time.monotonic()
    nan = Fault(rank=1, epoch=1, step=3, kind="nan")
    with pytest.raises(NonFiniteError, match=r"epoch 2, step 4\b"), inject(nan):
        model.fit(x, y, client=client2, **FIT)
    assert time.monotonic() - start < 20
    skipping = make_model()
    with inject(nan):
        history = skipping.fit(x, y, client=client2, on_nonfinite="skip", **FIT)
    assert history.skipped_steps == 1 and skipping.optimizer.iterations == 4 * 11 - 1


def wide_model():
    """Adam on a 4.2 MB float32 gradient: the ranks shard the step (above dtrain.training.sync.SHARDED_STEP_MIN_BYTES)."""
    model = dtrain.Sequential([Dense(1024, activation="relu", input_dim=1024), Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.build(seed=2)
    return model


WIDE = dict(batch_size=16, epochs=3, seed=3, verbose=0, timeout=30)


@pytest.mark.cluster
# -32: the last bias, in rank 1's part (the flat buffer ends in alignment padding no layer writes)
@pytest.mark.parametrize("index", [0, -32], ids=["rank-0s-part", "rank-1s-part"])
def test_a_nan_in_any_part_of_a_sharded_step_skips_it_on_every_rank(index, client2):
    """Rank 1's NaN lands in rank 0's part of the sum (index 0) or in its own (-1): either way
    only one rank sees it, and every rank must skip the step, or stop at it."""
    from dtrain.comm.algorithms import part_of

    x, y = blobs(64, features=1024)
    size = wide_model().params.size
    assert (index % size) in range(size)[part_of(size, 0 if index == 0 else 1, 2)]
    nan = Fault(rank=1, epoch=1, step=1, kind="nan", index=index)
    with pytest.raises(NonFiniteError, match=r"epoch 2, step 2\b"), inject(nan):
        wide_model().fit(x, y, client=client2, **WIDE)
    skipping = wide_model()
    with inject(nan), replica_hashes() as hashes:
        history = skipping.fit(x, y, client=client2, on_nonfinite="skip", **WIDE)
    assert history.sharded_step
    assert history.skipped_steps == 1 and skipping.optimizer.iterations == 3 * 4 - 1
    assert hashes.per_rank[0] == hashes.per_rank[1]
    assert all(np.isfinite(w).all() for w in skipping.get_weights())


@pytest.mark.cluster
def test_a_sharded_run_resumed_from_a_checkpoint_equals_an_uninterrupted_one(client2, tmp_path):
    """The checkpoint holds the whole optimizer state, gathered from every rank's part."""
    x, y = blobs(64, features=1024)
    whole = wide_model()
    assert whole.fit(x, y, client=client2, **WIDE).sharded_step
    with pytest.raises(RuntimeError, match="injected crash"), inject(Fault(rank=1, epoch=2, step=1, kind="crash")):
        wide_model().fit(x, y, client=client2, checkpoint_dir=tmp_path, checkpoint_every=3, **WIDE)
    resumed = wide_model()
    resumed.fit(x, y, client=client2, resume_from=tmp_path, epochs=3, batch_size=16, seed=3, verbose=0)
    for got, expected in zip(resumed.get_weights(), whole.get_weights()):
        assert np.array_equal(got, expected)
    for name, slot in whole.optimizer.slots.items():
        assert np.array_equal(resumed.optimizer.slots[name], slot)


class EpochsSeen(Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(epoch)


def _fresh_cluster(n):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0", memory_limit="2GiB"
    )
    return cluster, Client(cluster, set_as_default=False)


@pytest.mark.cluster
@pytest.mark.slow
def test_a_worker_killed_mid_training_costs_a_restart_not_the_result(tmp_path):
    x, y = data(2000)
    fit = {**FIT, "epochs": 40, "batch_size": 10}
    alone = make_model()
    alone.fit(x, y, shards=3, **fit)
    cluster, client = _fresh_cluster(3)
    try:
        pids = client.run(os.getpid)
        victim = sorted(pids)[1]
        killer = threading.Timer(3.0, os.kill, (pids[victim], signal.SIGKILL))
        killer.start()
        model = make_model()
        seen = EpochsSeen()
        history = model.fit(
            x, y, client=client, checkpoint_dir=tmp_path, checkpoint_every=50, max_restarts=2, callbacks=[seen], **fit
        )
        killer.cancel()
    finally:
        client.close()
        cluster.close()
    assert len(history.restarts) == 1 and victim in history.restarts[0]
    assert seen.epochs == list(range(40)) and history.epoch == list(range(40))  # each epoch reported once
    for got, expected in zip(model.get_weights(), alone.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


class Timeline(Callback):
    """Freezes a worker (SIGSTOP) at the end of an epoch and records when progress comes back."""

    observes_only = True

    def __init__(self, pid, at_epoch):
        super().__init__()
        self.pid, self.at_epoch = pid, at_epoch
        self.stopped_at = None
        self.restarted_at = []

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at_epoch and self.stopped_at is None:
            os.kill(self.pid, signal.SIGSTOP)
            self.stopped_at = time.monotonic()

    def on_restart(self, count, record):  # RunControl's hook: the failure handled, the restart begins
        self.restarted_at.append(time.monotonic())


@pytest.mark.cluster
@pytest.mark.slow
def test_a_frozen_worker_costs_the_step_deadline_and_a_restart_without_it():
    """A worker in SIGSTOP (a paused VM, a swapped-out process) answers nobody: its peers time out
    after `timeout`, the abort does not wait for it, and the run restarts on the others within
    timeout + 2 s (it used to wait for the frozen worker as long as it stayed frozen). Woken up
    afterwards, the worker harms nothing and trains again."""
    x, y = data(3000)
    fit = {**FIT, "epochs": 6, "batch_size": 30}
    alone = make_model()
    alone.fit(x, y, shards=3, **fit)
    cluster, client = _fresh_cluster(3)
    pids = client.run(os.getpid)
    victim = sorted(pids)[2]
    timeline = Timeline(pids[victim], at_epoch=1)
    try:
        model = make_model()
        config = FitConfig.make(timeout=5, max_restarts=1, shards=3, **fit)
        control = RunControl(on_restart=timeline.on_restart)
        with pytest.warns(UserWarning, match=rf"step deadline \(5 s\) missed: .*did not answer: rank \d on {victim}"):
            history = fit_on_cluster(model, x, y, None, [timeline], config, client=client, control=control)
        assert len(history.restarts) == 1 and "Timed out after 5 s" in history.restarts[0], history.restarts
        # The incident report: the others' stacks show them waiting for the frozen rank 2, which is
        # named as not answering
        [incident] = history.incidents
        frozen = next(r["rank"] for r in incident["ranks"] if r["worker"] == victim)
        assert [r["rank"] for r in incident["not_answering"]] == [frozen]
        assert "silent" in incident["not_answering"][0]["why"]
        others = [r for r in incident["ranks"] if r["rank"] != frozen]
        for r in others:
            assert r["answered"] and r["epoch"] >= 1 and r["step"] >= 0, r
            waiting = next(text for thread, text in r["stacks"].items() if thread.startswith("rank task"))
            assert "dtrain/comm/" in waiting and "dtrain/training/loop.py" in waiting, waiting
        assert any(f"rank {frozen}" in r["waiting_for"] for r in others), others
        assert "DeadlineMissed" in next(r["error"] for r in others if f"rank {frozen}" in r["waiting_for"])
        assert victim not in history.workers and len(history.workers) == 2
        assert timeline.restarted_at[0] - timeline.stopped_at < 5 + 2
        [record] = history.restart_log
        assert record["reason"] == history.restarts[0] and record["at"]["epoch"] >= 1
        # the survivors' memory: the step the frozen worker never finished, no checkpoint needed
        resumed = record["resumed_from"]
        assert resumed["source"] == "memory" and (resumed["epoch"], resumed["step"]) >= (
            record["at"]["epoch"],
            record["at"]["step"],
        )
        # noticed at the step deadline after rank 0 was last heard of; training again within seconds
        assert 4.5 <= record["detected_s"] < 5 + 2 and 0 < record["recovered_s"] < 5
        for got, expected in zip(model.get_weights(), alone.get_weights()):  # 3 shards on 2 workers
            np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
        os.kill(pids[victim], signal.SIGCONT)
        again = make_model()
        deadline = time.monotonic() + 30
        while len(client.scheduler_info()["workers"]) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert again.fit(x, y, client=client, **fit).workers == sorted(pids)  # the woken worker trains again
    finally:
        os.kill(pids[victim], signal.SIGCONT)
        client.close()
        cluster.close()


@pytest.mark.cluster
@pytest.mark.slow
def test_a_stuck_rank_is_caught_by_the_step_deadline_and_the_run_restarts(tmp_path):
    x, y = data()
    alone = make_model()
    alone.fit(x, y, shards=3, **FIT)
    cluster, client = _fresh_cluster(3)
    try:
        model = make_model()
        start = time.monotonic()
        with inject(Fault(rank=2, epoch=1, step=5, kind="hang", seconds=60)):
            history = model.fit(
                x, y, client=client, timeout=2, checkpoint_dir=tmp_path, checkpoint_every=4, max_restarts=1, **FIT
            )
        elapsed = time.monotonic() - start
    finally:
        client.close()
        cluster.close()
    assert len(history.restarts) == 1 and "Timed out after 2 s" in history.restarts[0]
    assert elapsed < 45  # the deadline, the abort grace and a restart; not the 60 s hang
    for got, expected in zip(model.get_weights(), alone.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_finite_check_is_exact_even_where_the_sum_of_squares_overflows(dtype):
    from dtrain.training.sync import FiniteCheck

    check = FiniteCheck(np)
    grads = np.random.default_rng(0).standard_normal(1000).astype(dtype)
    assert check(grads) and check._zeros is None  # the one-pass test sufficed
    huge = grads * (np.finfo(dtype).max / 1e4)  # finite, but their squares overflow
    assert check(huge) and check._zeros is not None
    for bad in (np.nan, np.inf, -np.inf):
        for values in (grads, huge):
            broken = values.copy()
            broken[737] = bad
            assert not check(broken)


@pytest.mark.cluster
def test_checkpoints_the_driver_cannot_read_are_refused_before_training(tmp_path):
    """Rank 0 writes checkpoints to a disk private to its host (here: a worker in a mount namespace
    with its own tmpfs over the folder): a restart would silently start over. Said before training."""
    import shutil
    import socket
    import subprocess
    import sys

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1): a worker with a private view of the folder")
    from distributed import Client

    folder = tmp_path / "ckpt"
    folder.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).parent / "dask")
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scheduler = subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port)], **quiet)
    private = f"mount -t tmpfs tmpfs {folder} && exec {dask} worker {address} --nthreads 1 --no-nanny"
    worker = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", private], **quiet)
    try:
        client = Client(address, timeout=30, set_as_default=False)
        client.wait_for_workers(1, timeout=30)
        x, y = data(200)
        before = set(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.tasks)))
        with pytest.raises(OSError, match=r"writes checkpoints to .* which this process \(the driver\) cannot read"):
            make_model().fit(x, y, client=client, checkpoint_dir=folder, **FIT)
        after = set(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.tasks)))
        assert not any("rank" in str(key) for key in after - before)  # refused before any rank ran
        assert [p.name for p in folder.iterdir()] == ["lease.json"]  # the driver's lease only, released
        assert json.loads((folder / "lease.json").read_text())["released"] is True
        # Without checkpoints the same worker trains: the folder was all that was wrong.
        assert len(make_model().fit(x, y, client=client, **FIT).history["loss"]) == FIT["epochs"]
        client.close()
    finally:
        worker.kill()
        scheduler.kill()
        worker.wait()
        scheduler.wait()
