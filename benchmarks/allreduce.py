"""Allreduce over Dask worker-to-worker comms against a raw loopback socket, in one run.

    python -m benchmarks.allreduce                      # 2 workers: 8 KiB and 40 MiB, median of 20
    python -m benchmarks.allreduce --workers 3 --sizes 8KiB 4MiB 40MiB
    python -m benchmarks.allreduce --sizes 8KiB 64MiB --raw-sizes 8KiB 64MiB   # raw socket per size too

Prints one JSON line. Figures (milliseconds, medians):

- ``allreduce``: per size, the time of one ``DaskCommunicator.allreduce`` (float32), taken as the
  slowest rank of each call (all ranks pass a barrier first);
- ``raw_oneway_40MiB``: 40 MiB sent one way over a plain TCP socket between two processes (plus a
  one-byte reply), the fastest the machine moves bytes between processes;
- ``raw_exchange_40MiB``: both ends send 40 MiB to each other at once: the data movement a
  2-rank allreduce cannot avoid (each rank sends and receives the whole buffer);
- ``add_40MiB``: one in-place NumPy float32 addition of 40 MiB, the arithmetic of the allreduce;
- ``raw_oneway_ms`` / ``raw_exchange_ms``: the same two raw figures for each of ``--raw-sizes``
  (default 40 MiB only, which also gives the two 40 MiB figures above), keyed like
  ``allreduce_ms``.

``--ring allow`` lets the workers use the ring allreduce on one machine (by default they use it
only across hosts); ``--ring-min-bytes`` / ``--ring-min-size`` move its thresholds.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import socket
import statistics
import threading
import time
import uuid

import numpy as np
from dask.utils import parse_bytes

RAW_BYTES = 40 * 2**20


def _rank(job_id: str, rank: int, peers: list[str], sizes: list[int], reps: int, overrides: dict) -> dict:
    """The rank task: times allreduce of each size (runs on a worker, in a task thread)."""
    from dtrain.comm import algorithms
    from dtrain.comm.dask import DaskCommunicator

    overrides = dict(overrides)
    allow_ring = overrides.pop("allow_ring", None)
    saved = {name: getattr(algorithms, name) for name in overrides}
    for name, value in overrides.items():
        setattr(algorithms, name, value)
    try:
        with DaskCommunicator(job_id, rank, peers, timeout=60, allow_ring=allow_ring) as comm:
            out = {}
            for nbytes in sizes:
                buf = np.random.default_rng(rank).standard_normal(nbytes // 4).astype(np.float32)
                times = []
                for i in range(reps + 3):  # 3 warm-up calls open the connections
                    comm.barrier()
                    start = time.perf_counter()
                    comm.allreduce(buf)
                    if i >= 3:
                        times.append(time.perf_counter() - start)
                    buf[:] = 1.0  # keep values finite
                out[nbytes] = times
            return out
    finally:
        for name, value in saved.items():
            setattr(algorithms, name, value)


def measure_dask(workers: int, sizes: list[int], reps: int, overrides: dict) -> dict[str, float]:
    from distributed import Client

    from dtrain.clusters import local_cluster
    from dtrain.comm.dask import PLUGIN_NAME, DtrainWorkerPlugin

    with local_cluster(workers, dashboard_address=":0", memory_limit="2GiB") as cluster, Client(cluster) as client:
        client.register_plugin(DtrainWorkerPlugin(), name=PLUGIN_NAME)
        peers = sorted(client.scheduler_info()["workers"])
        job_id = f"bench-{uuid.uuid4().hex}"
        futures = [
            client.submit(
                _rank,
                job_id,
                rank,
                peers,
                sizes,
                reps,
                overrides,
                workers=[address],
                allow_other_workers=False,
                pure=False,
                key=f"{job_id}-rank{rank}",
            )
            for rank, address in enumerate(peers)
        ]
        results = client.gather(futures)
    report = {}
    for nbytes in sizes:
        slowest = [max(r[nbytes][i] for r in results) for i in range(reps)]
        report[_label(nbytes)] = round(statistics.median(slowest) * 1e3, 3)
    return report


def _label(nbytes: int) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale and nbytes % scale == 0:
            return f"{nbytes // scale}{unit}"
    return f"{nbytes}B"


# -- raw sockets ----------------------------------------------------------------------------------


def _recv_exactly(sock: socket.socket, buf: memoryview) -> None:
    got = 0
    while got < len(buf):
        n = sock.recv_into(buf[got:])
        if not n:
            raise ConnectionError("peer closed")
        got += n


def _raw_peer(port: int, mode: str, reps: int, nbytes: int = RAW_BYTES) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    inbox, outbox = bytearray(nbytes), np.ones(nbytes, np.uint8)
    for _ in range(reps):
        if mode == "oneway":
            _recv_exactly(sock, memoryview(inbox))
            sock.sendall(b"k")
        else:
            sender = threading.Thread(target=sock.sendall, args=(outbox,))
            sender.start()
            _recv_exactly(sock, memoryview(inbox))
            sender.join()
    sock.close()


def measure_raw(mode: str, reps: int, nbytes: int = RAW_BYTES) -> float:
    """Median ms of moving ``nbytes`` over a loopback TCP socket to a fresh process: "oneway"
    (send, then a one-byte reply) or "exchange" (both ends send ``nbytes`` at once)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    peer = mp.get_context("spawn").Process(target=_raw_peer, args=(listener.getsockname()[1], mode, reps, nbytes))
    peer.start()
    sock, _ = listener.accept()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    outbox, inbox, ack = np.ones(nbytes, np.uint8), bytearray(nbytes), bytearray(1)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        if mode == "oneway":
            sock.sendall(outbox)
            _recv_exactly(sock, memoryview(ack))
        else:
            sender = threading.Thread(target=sock.sendall, args=(outbox,))
            sender.start()
            _recv_exactly(sock, memoryview(inbox))
            sender.join()
        times.append(time.perf_counter() - start)
    peer.join()
    sock.close()
    listener.close()
    return round(statistics.median(times) * 1e3, 3)


def measure_add(reps: int) -> float:
    a, b = np.ones(RAW_BYTES // 4, np.float32), np.ones(RAW_BYTES // 4, np.float32)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        np.add(a, b, out=a)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, 3)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sizes", nargs="+", default=["8KiB", "40MiB"])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument(
        "--raw-sizes",
        nargs="+",
        default=["40MiB"],
        help="sizes the raw socket moves (one way and both ways), each in its own pair of processes",
    )
    parser.add_argument("--ring-min-bytes", type=parse_bytes, default=None)
    parser.add_argument("--ring-min-size", type=int, default=None)
    parser.add_argument(
        "--ring",
        choices=["auto", "allow", "never"],
        default="auto",
        help="ring allreduce: auto (only across hosts), allow (by size), never",
    )
    args = parser.parse_args(argv)
    overrides = {}
    if args.ring_min_bytes is not None:
        overrides["RING_MIN_BYTES"] = args.ring_min_bytes
    if args.ring_min_size is not None:
        overrides["RING_MIN_SIZE"] = args.ring_min_size
    if args.ring != "auto":
        overrides["allow_ring"] = args.ring == "allow"
    sizes = [parse_bytes(s) for s in args.sizes]
    raw_sizes = [parse_bytes(s) for s in args.raw_sizes]
    allreduce_ms = measure_dask(args.workers, sizes, args.reps, overrides)  # first, as before
    raw = {mode: {_label(n): measure_raw(mode, args.reps, n) for n in raw_sizes} for mode in ("oneway", "exchange")}
    report = {
        "benchmark": "allreduce",
        "workers": args.workers,
        "reps": args.reps,
        "overrides": overrides,
        "allreduce_ms": allreduce_ms,
        "raw_oneway_40MiB_ms": raw["oneway"].get("40MiB"),
        "raw_exchange_40MiB_ms": raw["exchange"].get("40MiB"),
        "raw_oneway_ms": raw["oneway"],
        "raw_exchange_ms": raw["exchange"],
        "add_40MiB_ms": measure_add(args.reps),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    big = report["allreduce_ms"].get("40MiB")
    if big is not None and report["raw_oneway_40MiB_ms"] is not None:
        report["ratio_vs_raw_oneway"] = round(big / report["raw_oneway_40MiB_ms"], 2)
        report["ratio_vs_raw_exchange"] = round(big / report["raw_exchange_40MiB_ms"], 2)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
