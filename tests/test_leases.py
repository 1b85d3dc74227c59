"""One writer per checkpoint folder (dtrain.leases): a run holds the folder's lease while it
trains; another run waits for a sign of life and is refused, or takes over a lease whose holder
is gone; a holder whose lease was taken over writes nothing more."""

from __future__ import annotations

import json
import threading
import time

import pytest
from conftest import blobs, one_hot

import dtrain
from dtrain import leases
from dtrain.callbacks import Callback
from dtrain.checkpoints import list_checkpoints
from dtrain.layers import Dense
from dtrain.leases import Lease, LeaseHeldError, LeaseLostError


@pytest.fixture(autouse=True)
def quick_leases(monkeypatch):
    monkeypatch.setattr(leases, "RENEW_S", 0.2)
    monkeypatch.setattr(leases, "EXPIRES_S", 1.5)
    monkeypatch.setattr(leases, "POLL_S", 0.05)


class Renewing:
    """A live holder: renews its lease from a thread until stopped."""

    def __init__(self, directory):
        self.lease = Lease(str(directory), "the-other-run")
        self.lease.take()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.wait(0.1):
            self.lease.renew()

    def close(self):
        self.stop.set()
        self.thread.join()


def test_a_free_or_released_folder_is_taken_at_once(tmp_path):
    first = Lease(str(tmp_path), "first")
    start = time.monotonic()
    assert first.take() is None
    first.release()
    assert Lease(str(tmp_path), "second").take() is None
    assert time.monotonic() - start < 0.5
    assert json.loads((tmp_path / "lease.json").read_text())["run"] == "second"


def test_a_live_holder_keeps_its_folder(tmp_path):
    holder = Renewing(tmp_path)
    try:
        start = time.monotonic()
        with pytest.raises(LeaseHeldError, match="the-other-run"):
            Lease(str(tmp_path), "second").take()
        assert time.monotonic() - start < 1.0  # refused at the first renewal seen, not at the expiry
    finally:
        holder.close()


def test_a_gone_holders_lease_is_taken_over_after_it_expires(tmp_path):
    Lease(str(tmp_path), "crashed").take()  # never renewed again, never released: a killed process
    start = time.monotonic()
    taken = Lease(str(tmp_path), "second").take()
    assert taken["run"] == "crashed" and 1.5 <= time.monotonic() - start < 3
    with pytest.raises(LeaseLostError, match="took over the folder"):
        Lease(str(tmp_path), "crashed").renew()  # had it been frozen, it wakes and writes nothing


def model():
    net = dtrain.Sequential([Dense(8, activation="relu", input_dim=6), Dense(3, activation="softmax")])
    net.compile(loss="categorical_crossentropy", optimizer="sgd")
    return net


def data():
    x, labels = blobs(60, features=6, classes=3, seed=1)
    return x, one_hot(labels, 3)


def test_fit_refuses_a_folder_another_run_writes_before_training(tmp_path):
    holder = Renewing(tmp_path)
    try:
        net = model()
        with pytest.warns(dtrain.checkpoints.CheckpointWarning, match="held by run the-other-run"):
            with pytest.raises(LeaseHeldError):
                net.fit(*data(), epochs=2, batch_size=10, seed=0, verbose=0, checkpoint_dir=tmp_path)
    finally:
        holder.close()
    assert list_checkpoints(tmp_path) == [] and not net.built


class Hijack(Callback):
    """Another run takes the folder over after the first epoch."""

    def __init__(self, folder):
        super().__init__()
        self.folder = folder

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            (self.folder / "lease.json").write_text(json.dumps({"run": "usurper", "holder": "h:1", "count": 1}))


def test_a_run_whose_folder_was_taken_over_writes_nothing_more(tmp_path):
    with pytest.raises(LeaseLostError, match="usurper"):
        model().fit(
            *data(), epochs=3, batch_size=10, seed=0, verbose=0, checkpoint_dir=tmp_path, callbacks=[Hijack(tmp_path)]
        )
    assert list_checkpoints(tmp_path) == ["ckpt-0000000006"]  # the first epoch's only
    assert json.loads((tmp_path / "lease.json").read_text())["run"] == "usurper"  # not released by the loser
