"""Several "hosts" made of network namespaces on this machine (root only; skipped otherwise): a
scheduler in the root namespace behind a bridge, one `dask worker --no-nanny` per namespace, each
joined to the bridge by a veth link. A host whose link goes down answers nobody: the run must
restart without it within the step deadline + 2 s, and end with the weights of one process."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import blobs, one_hot

import dtrain
from dtrain.callbacks import Callback
from dtrain.cluster.launch import RunControl, fit_on_cluster
from dtrain.config import FitConfig
from dtrain.layers import Dense

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None, reason="network namespaces need root and iproute2"
    ),
]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class Hosts:
    """A bridge with the scheduler's address in the root namespace, and ``count`` namespaces,
    each with one worker. Everything it makes is removed by ``close`` (also after a failure)."""

    def __init__(self, count: int):
        tag = uuid.uuid4().hex[:4]
        self.bridge, self.subnet = f"dtb{tag}", f"10.{77 + int(tag[:2], 16) % 100}.0"
        self.namespaces: list[str] = []
        self.links: list[str] = []  # the root side of each host's veth link
        self.processes: list[subprocess.Popen] = []
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            self.address = f"tcp://{self.subnet}.1:{_free_port()}"
            dask = str(Path(sys.executable).parent / "dask")
            quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.processes.append(
                subprocess.Popen(
                    [
                        dask,
                        "scheduler",
                        "--host",
                        f"{self.subnet}.1",
                        "--port",
                        self.address.rsplit(":", 1)[1],
                        "--dashboard-address",
                        ":0",
                    ],
                    **quiet,
                )
            )
            for i in range(count):
                ns, outside, inside = f"dtn{tag}{i}", f"dtv{tag}{i}", f"dtp{tag}{i}"
                _ip("netns", "add", ns)
                self.namespaces.append(ns)
                _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
                self.links.append(outside)
                _ip("link", "set", inside, "netns", ns)
                _ip("link", "set", outside, "master", self.bridge)
                _ip("link", "set", outside, "up")
                _ip("-n", ns, "addr", "add", f"{self.subnet}.{10 + i}/24", "dev", inside)
                _ip("-n", ns, "link", "set", inside, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                self.processes.append(
                    subprocess.Popen(
                        [
                            "ip",
                            "netns",
                            "exec",
                            ns,
                            dask,
                            "worker",
                            self.address,
                            "--host",
                            f"{self.subnet}.{10 + i}",
                            "--nthreads",
                            "1",
                            "--no-nanny",
                            "--no-dashboard",
                            "--memory-limit",
                            "2GiB",
                            "--death-timeout",
                            "60",
                        ],
                        **quiet,
                    )
                )
            from distributed import Client

            self.client = Client(self.address, timeout="30s", set_as_default=False)
            self.client.wait_for_workers(count, timeout=60)
        except BaseException:
            self.close()
            raise

    def link_down(self, host: int) -> None:
        _ip("link", "set", self.links[host], "down")

    def link_up(self, host: int) -> None:
        _ip("link", "set", self.links[host], "up")

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close(timeout=5)
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
        for proc in self.processes:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for name in [*self.links, self.bridge]:
            subprocess.run(["ip", "link", "del", name], capture_output=True)
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def make_model():
    model = dtrain.Sequential(
        [Dense(16, activation="relu", input_dim=10), Dense(3, activation="softmax")], dtype="float64"
    )
    model.compile(loss="categorical_crossentropy", optimizer=dtrain.optimizers.SGD(0.05, momentum=0.9))
    return model


class CutAt(Callback):
    """Takes one host's link down at the end of an epoch; records when, and when the restart began."""

    observes_only = True

    def __init__(self, hosts: Hosts, host: int, epoch: int):
        super().__init__()
        self.hosts, self.host, self.epoch = hosts, host, epoch
        self.cut_at: float | None = None
        self.restarted_at: float | None = None

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch and self.cut_at is None:
            self.hosts.link_down(self.host)
            self.cut_at = time.monotonic()

    def on_restart(self, count, record):
        self.restarted_at = time.monotonic()


def test_a_host_whose_link_goes_down_is_left_behind_within_the_deadline():
    x, labels = blobs(3000, features=10, classes=3, seed=2)
    y = one_hot(labels, 3)
    fit = dict(epochs=6, batch_size=30, seed=3, verbose=0)
    alone = make_model()
    alone.fit(x, y, shards=3, **fit)
    hosts = Hosts(3)
    try:
        workers = sorted(hosts.client.scheduler_info()["workers"])
        victim = 2  # not rank 0: the client's view of the run goes through rank 0's reports
        cut = CutAt(hosts, host=victim, epoch=1)
        model = make_model()
        config = FitConfig.make(timeout=5, max_restarts=1, shards=3, **fit)
        history = fit_on_cluster(
            model, x, y, None, [cut], config, client=hosts.client, control=RunControl(on_restart=cut.on_restart)
        )
    finally:
        hosts.close()
    assert cut.cut_at is not None and cut.restarted_at is not None
    assert cut.restarted_at - cut.cut_at < 5 + 2, cut.restarted_at - cut.cut_at
    [record] = history.restart_log
    assert record["resumed_from"]["source"] == "memory", record
    assert workers[victim] not in history.workers and len(history.workers) == 2
    for got, expected in zip(model.get_weights(), alone.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


class CutAndMend(CutAt):
    """CutAt, then the link back up a moment after the restart; epochs slowed down a little, so
    that the run is still going when the host is heard from again."""

    def on_restart(self, count, record):
        super().on_restart(count, record)
        threading.Timer(1.0, self.hosts.link_up, (self.host,)).start()

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.restarted_at is not None:
            time.sleep(0.4)


def test_a_host_whose_link_comes_back_is_taken_in_again():
    """An elastic run: the host cut off is left behind within the deadline; once its link is back
    and the scheduler hears from it, the run takes it in again at an epoch's end; the result is
    still that of one process."""
    x, labels = blobs(3000, features=10, classes=3, seed=2)
    y = one_hot(labels, 3)
    fit = dict(epochs=24, batch_size=30, seed=3, verbose=0)
    alone = make_model()
    alone.fit(x, y, shards=3, **fit)
    hosts = Hosts(3)
    try:
        workers = sorted(hosts.client.scheduler_info()["workers"])
        cut = CutAndMend(hosts, host=2, epoch=1)
        model = make_model()
        config = FitConfig.make(timeout=5, max_restarts=1, shards=3, elastic=True, **fit)
        history = fit_on_cluster(
            model, x, y, None, [cut], config, client=hosts.client, control=RunControl(on_restart=cut.on_restart)
        )
    finally:
        hosts.close()
    assert cut.restarted_at - cut.cut_at < 5 + 2
    assert any(workers[2] in change["joined"] for change in history.membership), history.membership
    assert history.workers == workers
    for got, expected in zip(model.get_weights(), alone.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
