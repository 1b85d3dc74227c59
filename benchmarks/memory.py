"""Memory: peak RSS against the computed bound, and no new arrays per training step (issue 6).

    python -m benchmarks.memory                      # 784-1024-1024-10, global batch 512, 2 workers
    python -m benchmarks.memory --samples 32768 --steps 128 --workers 2
    python -m benchmarks.memory --quick              # a tiny 2-layer network, seconds; writes no file

Targets (issue 6): no per-step growth of memory; peak RSS within 1.2x of the computed bound.

Every measurement runs in a fresh process, one after the other:

- **single process** (once with SGD, momentum 0, and once with Adam, whose two slots must show
  in the bound): the bound is computed from the shapes, itemised (data, parameters, gradients,
  optimizer state, the activations and gradient buffers dtrain's layers keep for one batch size,
  and the other buffers dtrain keeps: the batch gather buffers, the optimizer's scratch, the
  epoch's row order), and added to the process's own baseline RSS, measured
  after the imports and before the data exists. Peak RSS during ``fit`` (psutil sampled every
  5 ms, and ``getrusage`` ru_maxrss, the kernel's high-water mark; the larger is used) is divided
  by baseline + bound. RSS after every step (a callback's ``on_train_batch_end``) gives the
  slope over the second half of the steps. Then, in the same process, a second ``fit`` runs
  under ``tracemalloc`` (NumPy reports its data allocations to it, domain
  ``np.lib.tracemalloc_domain``): for each steady-state step (``on_train_batch_end`` to the
  next) the traces are cleared at its start, so a snapshot at its end holds exactly the
  allocations made during the step that are still alive; the peak of traced memory within the
  step is its largest temporary footprint. One window crossing an epoch boundary is reported
  separately, and a control step that leaks one hidden-activation-sized array (and allocates a
  kernel-sized temporary) shows that the probe does see such arrays.
- **cluster**: ``fit(..., client=)`` on a LocalCluster of ``--workers`` single-threaded worker
  processes. Each worker's baseline RSS is measured in the worker (after importing dtrain)
  before training; during ``fit`` the client samples every worker's RSS from its PID every 20 ms
  (/proc/<pid>/status: VmRSS, the figure psutil reports, and RssShmem; psutil elsewhere), and
  afterwards each worker reports its ru_maxrss. Each worker's bound is its
  shard, the same model state, the buffers of its local batch, its shared-memory gradient
  segments (its own and the peer's, mapped) and, on rank 0, the weights received from and
  returned to the client. The RSS timeline is placed on steps with the progress events rank 0
  sends (the client callback's ``on_train_batch_end``); the slope is over the second half.
  Dask's statistical profiler is off for this run (it keeps a profile of every second, so a
  worker's memory grows with time whatever it runs); a second run with it on (Dask's default)
  is reported beside it, not as a target. glibc's mallinfo2 at three quarters of the steps says
  how much freed memory the allocator still holds (the part of RSS beyond the bound, mostly).

Results: one JSON document on stdout, written to benchmarks/results/memory.json (not with
``--quick``). ``run(quick=False, **kwargs)`` is the entry point for other code (the suite runner).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .single_process import machine_record

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "memory.json"

RATIO_TARGET = 1.2  # issue 6: peak RSS within 1.2x of the computed bound (baseline included)
# "No per-step growth": the fitted RSS slope over the steady-state steps must stay under one page
# (4 KiB) per step. RSS moves in pages, and a leak of the smallest per-step array of the full
# network (a local batch of row indices, 256 x 8 bytes) grows it by half a page per step.
SLOPE_LIMIT_BYTES_PER_STEP = 4096

FULL = {
    "layers": (784, 1024, 1024, 10),
    "batch": 512,
    "samples": 32768,
    "steps": 128,
    "workers": 2,
    "threads": 2,
    "profiler_comparison": True,
}
QUICK = {
    "layers": (20, 16, 3),
    "batch": 32,
    "samples": 512,
    "steps": 32,
    "workers": 2,
    "threads": 1,
    "profiler_comparison": False,
}

# What dtrain does, as read from its code (the bound is computed from shapes with these, never
# by measuring):
ALIGN_BYTES = 128  # dtrain/network.py _ALIGN_BYTES: each array of the flat buffers starts 128-byte aligned
BUFFER_SIZES_KEPT = 4  # dtrain/buffers.py BufferCache(max_sizes=4): batch sizes whose buffers are kept
SHM_HEADER_BYTES = 64  # dtrain/comm/shm.py HEADER_BYTES: before the data of a shared-memory segment
SHM_MIN_BYTES = 2**16  # dtrain/comm/dask.py SHARED_MIN_BYTES: smaller arrays go over TCP (nothing kept)
LABEL_ITEMSIZE = 8  # sparse labels: SparseCategoricalCrossentropy.prepare_targets -> int64
INDEX_ITEMSIZE = 8  # row indices (np.intp) of the epoch order
TRACE_FRAMES = 12  # frames kept per traced allocation: enough to reach the caller of NumPy's Python functions
# optimizer slots (dtrain/optimizers/), SGD with momentum 0: none; "adamw-clip-cosine" is issue 18's
# configuration: AdamW with clipnorm and a cosine schedule (the same slots as Adam, one scratch)
SLOTS = {"sgd": (), "adam": ("m", "v"), "adamw-clip-cosine": ("m", "v")}


class BenchmarkError(RuntimeError):
    """A measurement failed; the message says which and why."""


# -- the bound, from shapes -------------------------------------------------------------------------
def _item(
    name: str, category: str, shape: Sequence[int], itemsize: int, where: str, dtype: str, note: str = ""
) -> dict:
    nbytes = math.prod(shape) * itemsize
    out = {
        "name": name,
        "category": category,
        "shape": list(shape),
        "dtype": dtype,
        "bytes": int(nbytes),
        "where": where,
    }
    if note:
        out["note"] = note
    return out


def flat_elements(layers: Sequence[int], itemsize: int) -> int:
    """Elements of dtrain's flat parameter (and gradient) buffer: every kernel and bias padded to a
    multiple of 128 bytes (dtrain/network.py Network.build)."""
    align = ALIGN_BYTES // itemsize
    total = 0
    for fan_in, units in zip(layers[:-1], layers[1:]):
        for count in (fan_in * units, units):
            total += -(-count // align) * align
    return total


def batch_items(
    layers: Sequence[int],
    activations: Sequence[str],
    n: int,
    itemsize: int,
    dtype: str,
    *,
    fused_loss: bool = True,
    gathered: bool = True,
) -> list[dict]:
    """The buffers dtrain keeps for one batch size n (allocated on the first step of that size):
    per Dense layer z (n, units) and a (n, units) (a is z for a linear layer) and, for every layer
    but the first, dx (n, fan_in) (dtrain/layers.py Dense._buffers_for); the loss gradient
    dL/dlogits (n, classes) when the loss is fused with softmax (dtrain/network.py _top_grads); and
    the rows of a shuffled batch gathered into reusable buffers (dtrain/data.py BatchGatherer)."""
    items = []
    for i, (fan_in, units, act) in enumerate(zip(layers[:-1], layers[1:], activations)):
        where = "dtrain/layers.py Dense._buffers_for"
        items.append(_item(f"layer {i + 1} z (pre-activation)", "activations", (n, units), itemsize, where, dtype))
        if act != "linear":
            items.append(_item(f"layer {i + 1} a (output)", "activations", (n, units), itemsize, where, dtype))
        if i > 0:
            items.append(
                _item(
                    f"layer {i + 1} dx (gradient to its input)",
                    "activation gradients",
                    (n, fan_in),
                    itemsize,
                    where,
                    dtype,
                )
            )
    if fused_loss:
        items.append(
            _item(
                "dL/dlogits (softmax + cross-entropy, fused)",
                "activation gradients",
                (n, layers[-1]),
                itemsize,
                "dtrain/network.py Network._top_grads",
                dtype,
            )
        )
    if gathered:
        where = "dtrain/data.py BatchGatherer.take"
        items.append(_item("x rows of the batch (gathered)", "batch gather", (n, layers[0]), itemsize, where, dtype))
        items.append(_item("y rows of the batch (gathered)", "batch gather", (n,), LABEL_ITEMSIZE, where, "int64"))
    for item in items:
        item["batch"] = n
    return items


def compute_bound(
    layers: Sequence[int],
    activations: Sequence[str],
    *,
    rows: int,
    batch_sizes: Sequence[int],
    optimizer: str = "sgd",
    dtype: str = "float32",
    shards_held: int = 1,
    received_shard: bool = False,
    shm_peers: int = 0,
    rank0: bool = False,
) -> dict:
    """What one process keeps while training, in bytes, itemised, from the shapes alone.

    ``rows``: training rows held (a worker: its shard); ``batch_sizes``: the distinct (local) batch
    sizes of the steps (the buffers of each are kept, up to 4 sizes); ``received_shard``: the rows
    came through Dask (a worker) rather than from the caller; ``shm_peers``: peers on this
    machine the gradient goes to through shared memory; ``rank0``: the rank that receives the
    client's weights and returns the trained ones.
    """
    import numpy as np

    if optimizer not in SLOTS:
        raise ValueError(f"optimizer must be one of {sorted(SLOTS)}, received {optimizer!r}.")
    itemsize = np.dtype(dtype).itemsize
    input_dim = layers[0]
    flat = flat_elements(layers, itemsize)
    items: list[dict] = []
    notes: list[str] = []

    # data
    x_where = (
        "worker: the shard scattered by the client (dtrain/sources/arrays.py ArraySource.shard)"
        if received_shard
        else "the caller's array (fit checks it without copying)"
    )
    items.append(_item("x (training rows)", "data", (rows, input_dim), itemsize, x_where, dtype))
    items.append(
        _item(
            "y (integer labels, as given)",
            "data",
            (rows,),
            LABEL_ITEMSIZE,
            "worker: scattered with x" if received_shard else "the caller's array",
            "int64",
        )
    )
    items.append(
        _item(
            "y as checked (int64 copy)",
            "data copy",
            (rows,),
            LABEL_ITEMSIZE,
            "dtrain/losses.py SparseCategoricalCrossentropy.prepare_targets: astype(np.int64) always copies",
            "int64",
        )
    )
    where = "dtrain/sampling.py EpochSampler.epoch"
    items.append(_item("epoch row order (schedule)", "sampling", (rows,), INDEX_ITEMSIZE, where, "int64"))
    items.append(
        _item(
            "per-shard orders (generator locals, kept for the epoch)",
            "sampling",
            (rows,),
            INDEX_ITEMSIZE,
            where,
            "int64",
            f"{shards_held} shard(s); 'orders' stays referenced by the generator until the epoch ends",
        )
    )
    items.append(
        _item(
            "per-shard step ids (generator locals, kept for the epoch)",
            "sampling",
            (rows,),
            INDEX_ITEMSIZE,
            where,
            "int64",
            "'steps_of' stays referenced by the generator until the epoch ends",
        )
    )

    # model state
    items.append(
        _item(
            "parameters (flat buffer)",
            "parameters",
            (flat,),
            itemsize,
            "dtrain/network.py Network.build: network.params",
            dtype,
        )
    )
    items.append(
        _item(
            "gradients (flat buffer)",
            "gradients",
            (flat,),
            itemsize,
            "dtrain/network.py Network.build: network.grads",
            dtype,
        )
    )
    for slot in SLOTS[optimizer]:
        items.append(
            _item(
                f"optimizer slot {slot!r}",
                "optimizer state",
                (flat,),
                itemsize,
                "dtrain/optimizers.py Optimizer.build: slots",
                dtype,
            )
        )
    if not SLOTS[optimizer]:
        notes.append(f"{optimizer}: SGD with momentum 0 keeps no optimizer state (no slots).")
    items.append(
        _item(
            "optimizer scratch",
            "optimizer work buffer",
            (flat,),
            itemsize,
            "dtrain/optimizers.py Optimizer.build: _scratch",
            dtype,
        )
    )
    notes.append(
        "the finite check keeps no buffer: it takes g . g (dtrain/training/sync.py FiniteCheck), and a zero vector only "
        "if that overflows"
    )

    # per batch size
    kept = sorted(set(int(n) for n in batch_sizes), reverse=True)[:BUFFER_SIZES_KEPT]
    for n in kept:
        items.extend(batch_items(layers, activations, n, itemsize, dtype))

    # distributed extras
    grad_bytes = flat * itemsize
    if shm_peers and grad_bytes < SHM_MIN_BYTES:
        notes.append(
            f"the {grad_bytes}-byte gradient is under {SHM_MIN_BYTES} bytes: it goes over TCP, no shared-memory segment is kept."
        )
        shm_peers = 0
    if shm_peers:
        # the gradient buffer above lives in this rank's shared memory (it replaced model.grads'
        # private one); the allreduce adds the peers' into a separate sum
        items.append(
            _item(
                "sum of the gradients (allreduce_into's output)",
                "communication",
                (flat,),
                itemsize,
                "dtrain/training/sync.py choose_sync",
                dtype,
            )
        )
    ranks = shm_peers + 1
    if shm_peers and ranks & shm_peers == 0:
        # a power of two: the first exchange reads the partner's gradient buffer where it is; each
        # later round (log2(ranks) - 1 of them) sends the partial sum through a copy in a slot
        items.append(
            _item(
                "round-1 partner's gradient buffer, mapped (read where it is)",
                "communication",
                (grad_bytes,),
                1,
                "dtrain/comm/shm.py PeerSegments",
                "uint8",
            )
        )
        for r in range(2, ranks.bit_length()):
            items.append(
                _item(
                    f"round-{r} partner's segment, mapped (partial sum read from it)",
                    "communication",
                    (grad_bytes,),
                    1,
                    "dtrain/comm/shm.py PeerSegments",
                    "uint8",
                )
            )
            items.append(
                _item(
                    f"own shared-memory segment for the round-{r} partner (partial sum copied into it)",
                    "communication",
                    (SHM_HEADER_BYTES + grad_bytes,),
                    1,
                    "dtrain/comm/shm.py Segment",
                    "uint8",
                )
            )
    for p in range(shm_peers):
        if shm_peers and ranks & shm_peers:  # not a power of two: every exchange copies (an upper bound)
            items.append(
                _item(
                    f"peer {p + 1}'s segment, mapped (its gradient read from it)",
                    "communication",
                    (grad_bytes,),
                    1,
                    "dtrain/comm/shm.py PeerSegments",
                    "uint8",
                )
            )
            items.append(
                _item(
                    f"own shared-memory segment for peer {p + 1} (gradient copied into it)",
                    "communication",
                    (SHM_HEADER_BYTES + grad_bytes,),
                    1,
                    "dtrain/comm/shm.py Segment (one slot in use)",
                    "uint8",
                )
            )
        if rank0:
            items.append(
                _item(
                    f"own shared-memory segment for peer {p + 1} (the initial weights broadcast through it)",
                    "communication",
                    (SHM_HEADER_BYTES + grad_bytes,),
                    1,
                    "dtrain/comm/shm.py Segment",
                    "uint8",
                )
            )
    if shm_peers and not rank0:
        items.append(
            _item(
                "rank 0's segment, mapped (the initial weights read from it)",
                "communication",
                (grad_bytes,),
                1,
                "dtrain/comm/shm.py PeerSegments",
                "uint8",
            )
        )
    if rank0:
        items.append(
            _item(
                "initial weights received from the client",
                "rank 0 transfer",
                (flat,),
                itemsize,
                "dtrain/cluster/launch.py: client.scatter of the start point to rank 0",
                dtype,
            )
        )
        items.append(
            _item(
                "trained weights returned to the client",
                "rank 0 transfer",
                (flat,),
                itemsize,
                "dtrain/worker.py _train: host_copy(model.params)",
                dtype,
            )
        )
        for slot in SLOTS[optimizer]:
            items.append(
                _item(
                    f"optimizer slot {slot!r} returned to the client",
                    "rank 0 transfer",
                    (flat,),
                    itemsize,
                    "dtrain/worker.py _train: optimizer.get_state()",
                    dtype,
                )
            )

    by_category: dict[str, int] = {}
    for item in items:
        by_category[item["category"]] = by_category.get(item["category"], 0) + item["bytes"]
    # The issue's own list: shard, parameters, gradients, optimizer state, activations of one batch.
    issue = {"data", "parameters", "gradients", "optimizer state", "activations", "activation gradients"}
    largest = kept[0] if kept else 0
    issue_minimum = sum(i["bytes"] for i in items if i["category"] in issue and i.get("batch", largest) == largest)
    return {
        "items": items,
        "by_category": by_category,
        "total_bytes": int(sum(i["bytes"] for i in items)),
        "issue_minimum_bytes": int(issue_minimum),
        "flat_elements": flat,
        "batch_sizes": kept,
        "notes": notes,
    }


def transients(layers: Sequence[int], rows: int, dtype: str) -> list[dict]:
    """Short-lived allocations of fit's start (before the training buffers exist), for context."""
    import numpy as np

    itemsize = np.dtype(dtype).itemsize
    flat = flat_elements(layers, itemsize)
    return [
        _item(
            "np.isfinite(x) while checking x", "transient", (rows, layers[0]), 1, "dtrain/data.py _check_finite", "bool"
        ),
        _item(
            "float64 initial values while building",
            "transient",
            (flat,),
            8,
            "dtrain/model.py Sequential.build",
            "float64",
        ),
    ]


def _activations(layers: Sequence[int]) -> list[str]:
    return ["relu"] * (len(layers) - 2) + ["softmax"]


def _global_batch_sizes(rows: int, batch: int) -> list[int]:
    sizes = {batch} if rows >= batch else set()
    if rows % batch:
        sizes.add(rows % batch)
    return sorted(sizes, reverse=True)


def _steps_per_epoch(rows: int, batch: int) -> int:
    return -(-rows // batch)


# -- helpers shared by the children ------------------------------------------------------------------
def _slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    import numpy as np

    if len(xs) < 2 or len(set(xs)) < 2:
        return None
    return float(np.polyfit(np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64), 1)[0])


def _build_model(layers: Sequence[int], optimizer: str):
    from dtrain.layers import Dense
    from dtrain.models import Sequential

    model = Sequential(device="cpu", dtype="float32")
    for i, (units, act) in enumerate(zip(layers[1:], _activations(layers))):
        model.add(Dense(units, activation=act, input_dim=layers[0] if i == 0 else None))
    model.compile(optimizer=_optimizer(optimizer), loss="sparse_categorical_crossentropy")
    return model


def _optimizer(name: str):
    if name != "adamw-clip-cosine":
        return name
    from dtrain.optimizers import AdamW
    from dtrain.optimizers.schedules import CosineDecay

    return AdamW(CosineDecay(1e-3, decay_steps=1000, warmup_target=2e-3, warmup_steps=10), clipnorm=1.0)


def _data(rows: int, layers: Sequence[int], seed: int = 0):
    """Drawn straight in float32 (no float64 temporary that would raise the high-water mark)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, layers[0]), dtype=np.float32)
    y = rng.integers(0, layers[-1], size=rows, dtype=np.int64)
    return x, y


def _actual_model_bytes(model) -> dict | None:
    """The bytes of the buffers the trained model actually holds (read from dtrain's objects after
    training), to check the bound's model and batch items against. None if the internals moved."""
    try:
        total = model.params.nbytes + model.grads.nbytes + model.optimizer._scratch.nbytes
        total += sum(s.nbytes for s in model.optimizer.slots.values())
        for layer in model.layers:
            for entry in layer._buffers._entries.values():
                seen = set()
                for arr in entry:
                    if arr is not None and id(arr) not in seen:
                        seen.add(id(arr))
                        total += arr.nbytes
        total += sum(b.nbytes for b in model._top_grads._entries.values())
        return {
            "bytes": int(total),
            "what": "params + grads + optimizer scratch and slots + every layer's per-batch buffers + dL/dlogits",
        }
    except AttributeError as exc:
        return {"bytes": None, "what": f"unavailable: {exc}"}


# -- child: one process ------------------------------------------------------------------------------
def _child_single(cfg: dict) -> dict:
    import gc
    import resource
    import threading
    import tracemalloc  # noqa: F401  (phase B imports it; loaded before the baseline, as before)

    import numpy as np
    import numpy.random  # noqa: F401  (imported lazily by NumPy 2; part of the baseline, ~2 MiB)
    import psutil

    import dtrain  # noqa: F401  (the baseline includes the package)
    from dtrain.callbacks import Callback
    from dtrain.layers import Dense  # noqa: F401
    from dtrain.models import Sequential  # noqa: F401

    layers, batch, rows, optimizer = tuple(cfg["layers"]), cfg["batch"], cfg["samples"], cfg["optimizer"]
    proc = psutil.Process()
    gc.collect()
    baseline = proc.memory_info().rss

    x, y = _data(rows, layers)
    after_data = proc.memory_info().rss
    model = _build_model(layers, optimizer)
    spe = _steps_per_epoch(rows, batch)
    epochs = max(1, -(-cfg["steps"] // spe))
    total_steps = epochs * spe

    class StepRSS(Callback):
        observes_only = True

        def __init__(self):
            super().__init__()
            self.rss = np.zeros(total_steps, dtype=np.int64)  # preallocated: recording allocates nothing
            self.n = 0
            self.malloc = None

        def on_train_batch_end(self, batch_index, logs=None):
            if self.n < total_steps:
                self.rss[self.n] = proc.memory_info().rss
            self.n += 1
            if self.n == (3 * total_steps) // 4:
                self.malloc = _malloc_stats()

    class PeakSampler(threading.Thread):
        def __init__(self, interval: float):
            super().__init__(daemon=True)
            self.interval, self.peak, self.count = interval, 0, 0
            self.halt = threading.Event()

        def run(self):
            while not self.halt.is_set():
                rss = proc.memory_info().rss
                self.peak = max(self.peak, rss)
                self.count += 1
                self.halt.wait(self.interval)

    # -- phase A: RSS -----------------------------------------------------------------------------
    recorder = StepRSS()
    sampler = PeakSampler(0.005)
    sampler.start()
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, seed=0, shuffle=True, callbacks=[recorder])
    fit_s = time.perf_counter() - t0
    sampler.halt.set()
    sampler.join()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    after_fit = proc.memory_info().rss
    steps_done = min(recorder.n, total_steps)
    rss = recorder.rss[:steps_done].tolist()
    half = steps_done // 2
    steady_steps = list(range(half, steps_done))
    steady = rss[half:]

    # -- phase B: allocations per step, tracemalloc (same process, after the RSS figures) --------
    probe = _probe_allocations(model, x, y, batch, layers)

    return {
        "optimizer": optimizer,
        "epochs": epochs,
        "steps": steps_done,
        "steps_per_epoch": spe,
        "fit_seconds": round(fit_s, 3),
        "baseline_rss_bytes": int(baseline),
        "rss_after_data_bytes": int(after_data),
        "rss_after_fit_bytes": int(after_fit),
        "peak": {
            "psutil_sampled_bytes": int(sampler.peak),
            "psutil_samples": sampler.count,
            "sample_interval_ms": 5,
            "ru_maxrss_bytes": int(maxrss),
        },
        "per_step_rss": {
            "rss_bytes": rss,
            "steady_from_step": half + 1,
            "slope_bytes_per_step": _slope(steady_steps, steady),
            "steady_growth_bytes": int(steady[-1] - steady[0]) if steady else None,
            "steady_range_bytes": int(max(steady) - min(steady)) if steady else None,
        },
        "malloc_at_steady_step": recorder.malloc,
        "allocations": probe,
        "actual_model_buffers": _actual_model_bytes(model),
    }


def _probe_allocations(
    model,
    x,
    y,
    batch: int,
    layers: Sequence[int],
    *,
    steady_windows: int = 16,
    extra_callbacks: Sequence[Any] = (),
    leak: bool = True,
) -> dict:
    """Allocations per training step, with tracemalloc, during a second fit of ``model``.

    A window runs from one ``on_train_batch_end`` to the next (one whole iteration of fit's loop:
    next rows, gather, forward, loss, backward, finite check, update, bookkeeping). At its start
    the traces are cleared, so at its end the snapshot holds exactly what was allocated during
    the step and is still alive, and the peak of traced memory is the step's largest temporary
    footprint. Steady windows start after the second step of this fit (its first step makes the
    new fit's gather buffers) and stay inside the first epoch; then one window crosses the epoch
    boundary, and one control window (``leak``) allocates a hidden-activation-sized array that it
    keeps and a kernel-sized temporary that it frees, to show that the probe sees both.
    ``extra_callbacks`` run before the probe (tests inject allocations with them).
    """
    import tracemalloc

    import numpy as np

    from dtrain.callbacks import Callback

    rows = len(x)
    spe = _steps_per_epoch(rows, batch)
    if spe < 4:
        raise BenchmarkError(
            f"the allocation probe needs at least 4 steps per epoch; {rows} samples at batch {batch} give {spe}."
        )
    domain = np.lib.tracemalloc_domain
    itemsize = np.dtype(model.dtype).itemsize
    hidden = max(layers[1:-1]) if len(layers) > 2 else layers[-1]
    leak_shape = (batch, hidden)
    leak_bytes = batch * hidden * itemsize
    temp_bytes = max(a * b for a, b in zip(layers[:-1], layers[1:])) * itemsize  # the largest kernel
    first = 2
    steady = [g for g in range(first, spe) if g % spe][: max(1, min(steady_windows, spe - first - 1))]
    boundary = spe  # opens at the end of the epoch's last step
    control = spe + 1 if leak else None
    last = (control if control is not None else boundary) + 1
    this_file = os.path.abspath(__file__)

    numpy_dir = os.path.dirname(np.__file__)

    def where(trace_stats, limit=3):
        """Top allocation sites, each named by its innermost frame outside NumPy's own Python code
        (np.ones, np.repeat... are Python functions: the caller is what matters)."""
        sites: dict[str, list[int]] = {}
        for stat in trace_stats:
            frames = list(stat.traceback)[::-1]  # most recent first
            frame = next((f for f in frames if not f.filename.startswith(numpy_dir)), frames[0])
            path = os.path.relpath(frame.filename, ROOT) if frame.filename.startswith(str(ROOT)) else frame.filename
            site = sites.setdefault(f"{path}:{frame.lineno}", [0, 0])
            site[0] += stat.count
            site[1] += stat.size
        ranked = sorted(sites.items(), key=lambda kv: -kv[1][1])[:limit]
        return [{"where": key, "count": count, "bytes": size} for key, (count, size) in ranked]

    class Control(Callback):
        observes_only = True

        def __init__(self):
            super().__init__()
            self.kept: list = []
            self.g = 0

        def on_train_batch_begin(self, batch_index, logs=None):
            if control is not None and self.g == control:  # this step belongs to the control window
                self.kept.append(np.empty(leak_shape, dtype=model.dtype))  # leaked: kept alive
                temporary = np.empty(temp_bytes, dtype=np.uint8)
                del temporary

        def on_train_batch_end(self, batch_index, logs=None):
            self.g += 1

    class Probe(Callback):
        observes_only = True

        def __init__(self):
            super().__init__()
            self.g = 0
            self.open: str | None = None
            self.windows: list[dict] = []

        def on_train_batch_end(self, batch_index, logs=None):
            self.g += 1
            if self.open is not None:
                _, peak = tracemalloc.get_traced_memory()
                snap = tracemalloc.take_snapshot()
                arrays = snap.filter_traces([tracemalloc.DomainFilter(True, domain)]).statistics("traceback")
                objects = snap.filter_traces(
                    [
                        tracemalloc.DomainFilter(False, domain),
                        tracemalloc.Filter(False, tracemalloc.__file__),
                        tracemalloc.Filter(False, this_file),
                    ]
                ).statistics("traceback")
                self.windows.append(
                    {
                        "kind": self.open,
                        "step": self.g,
                        "retained_arrays": sum(s.count for s in arrays),
                        "retained_array_bytes": sum(s.size for s in arrays),
                        "retained_arrays_where": where(arrays),
                        "retained_python_objects": sum(s.count for s in objects),
                        "retained_python_bytes": sum(s.size for s in objects),
                        "retained_python_where": where(objects),
                        "peak_bytes": int(peak),
                    }
                )
                self.open = None
                del snap, arrays, objects
            if self.g >= last:
                tracemalloc.stop()
                self.model.stop_training = True
                return
            kind = (
                "steady"
                if self.g in steady
                else "epoch boundary"
                if self.g == boundary
                else "control"
                if self.g == control
                else None
            )
            if kind is not None:
                if not tracemalloc.is_tracing():
                    tracemalloc.start(TRACE_FRAMES)
                tracemalloc.clear_traces()
                tracemalloc.reset_peak()
                self.open = kind

    probe = Probe()
    callbacks = [*extra_callbacks, Control(), probe]
    try:
        model.fit(x, y, batch_size=batch, epochs=2, verbose=0, seed=1, shuffle=True, callbacks=callbacks)
    finally:
        if tracemalloc.is_tracing():
            tracemalloc.stop()
    windows = probe.windows
    steady_w = [w for w in windows if w["kind"] == "steady"]
    if not steady_w:
        raise BenchmarkError("the allocation probe measured no steady-state step")
    per_step = lambda key: [w[key] for w in steady_w]  # noqa: E731
    boundary_w = next((w for w in windows if w["kind"] == "epoch boundary"), None)
    control_w = next((w for w in windows if w["kind"] == "control"), None)
    peaks = sorted(per_step("peak_bytes"))
    result = {
        "steady_steps_measured": len(steady_w),
        "retained_arrays_per_step": per_step("retained_arrays"),
        "retained_array_bytes_per_step": per_step("retained_array_bytes"),
        "retained_arrays_where": [w["retained_arrays_where"] for w in steady_w if w["retained_arrays"]][:3],
        "max_retained_arrays": max(per_step("retained_arrays")),
        "max_retained_array_bytes": max(per_step("retained_array_bytes")),
        "largest_temporary_bytes": {"max": peaks[-1], "median": peaks[len(peaks) // 2], "min": peaks[0]},
        "retained_python_objects_per_step": per_step("retained_python_objects"),
        "retained_python_bytes_per_step": per_step("retained_python_bytes"),
        "retained_python_where_first_step": steady_w[0]["retained_python_where"],
        "for_scale": {
            "largest_kernel_bytes": temp_bytes,
            "hidden_activation_bytes": leak_bytes,
            "parameters_bytes": int(model.params.nbytes),
        },
        "epoch_boundary": boundary_w,
        "note": (
            "retained = allocated during the step and still alive at its end (tracemalloc traces cleared at the "
            "step's start); arrays = NumPy's data allocations (tracemalloc domain "
            f"{domain}); python objects include the logs dict fit passes to on_train_batch_end, freed right after; "
            "largest temporary = peak of all traced memory within the step (arrays and Python objects)."
        ),
    }
    if control_w is not None:
        result["control"] = {
            "leaked_bytes": leak_bytes,
            "temporary_bytes": temp_bytes,
            "detected_retained_array_bytes": control_w["retained_array_bytes"],
            "detected_peak_bytes": control_w["peak_bytes"],
            "detected": control_w["retained_array_bytes"] >= leak_bytes
            and control_w["peak_bytes"] >= temp_bytes + leak_bytes,
        }
    return result


# -- child: a LocalCluster ---------------------------------------------------------------------------
def _malloc_stats() -> dict | None:
    """glibc's own account (mallinfo2, all arenas): bytes in use, and freed bytes it still holds
    (free chunks and arena tops: an upper bound of freed memory that may still be resident).
    None where the C library is not glibc 2.33+."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            )
        ]

    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = MallInfo2
    info = mallinfo2()
    return {
        "in_use_bytes": int(info.uordblks),
        "free_held_bytes": int(info.fordblks),
        "heap_bytes": int(info.arena),
        "mmapped_bytes": int(info.hblkhd),
    }


def _worker_baseline() -> dict:
    """Runs in each worker (client.run), before training: import what the rank task will, then RSS."""
    import gc
    import os

    import psutil

    import dtrain.cluster.rank  # noqa: F401
    import dtrain.comm.dask  # noqa: F401
    import dtrain.comm.shm  # noqa: F401
    import dtrain.models  # noqa: F401

    gc.collect()
    return {"pid": os.getpid(), "rss": psutil.Process().memory_info().rss}


def _worker_maxrss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _read_status(pid: int) -> tuple[int, int] | None:
    """(VmRSS, RssShmem) in bytes from /proc/<pid>/status (Linux), else None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields.get("RssShmem", "0 kB").split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def _child_cluster(cfg: dict) -> dict:
    import threading

    import numpy as np
    import psutil
    from distributed import Client

    from dtrain.callbacks import Callback
    from dtrain.clusters import local_cluster
    from dtrain.sampling import ShardPlan

    layers, batch, rows, workers, optimizer = (
        tuple(cfg["layers"]),
        cfg["batch"],
        cfg["samples"],
        cfg["workers"],
        cfg["optimizer"],
    )
    x, y = _data(rows, layers)
    model = _build_model(layers, optimizer)
    spe = _steps_per_epoch(rows, batch)
    epochs = max(1, -(-cfg["steps"] // spe))
    total_steps = epochs * spe

    class Anchors(Callback):
        """(time, steps done) from rank 0's progress events, to put the RSS samples on steps; once
        three quarters of the steps are done, glibc's account of every worker's heap."""

        observes_only = True

        def __init__(self, client):
            super().__init__()
            self.epoch, self.points = 0, []
            self.client, self.malloc = client, None

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, step, logs=None):
            done = self.epoch * spe + step + 1
            self.points.append((time.monotonic(), done))
            if self.malloc is None and done >= 3 * total_steps // 4:
                try:
                    self.malloc = self.client.run(_malloc_stats)
                except Exception as exc:  # diagnostics only: never fail the measurement for it
                    self.malloc = {"error": f"{type(exc).__name__}: {exc}"}

        def on_epoch_end(self, epoch, logs=None):
            # Not after the last epoch: by the time its event arrives the ranks are tearing down
            # (the samples after the last progress event are left out of the timeline).
            if epoch + 1 < epochs:
                self.points.append((time.monotonic(), (epoch + 1) * spe))

    class Sampler(threading.Thread):
        def __init__(self, pids: dict[str, int], interval: float):
            super().__init__(daemon=True)
            self.procs = {addr: psutil.Process(pid) for addr, pid in pids.items()}
            self.pids = pids
            self.interval = interval
            self.samples: dict[str, list[tuple[float, int, int]]] = {addr: [] for addr in pids}
            self.halt = threading.Event()

        def run(self):
            while not self.halt.is_set():
                now = time.monotonic()
                for addr, proc in self.procs.items():
                    status = _read_status(self.pids[addr])
                    if status is not None:
                        rss, shmem = status
                    else:
                        try:
                            rss, shmem = proc.memory_info().rss, -1
                        except psutil.Error:
                            continue
                    self.samples[addr].append((now, rss, shmem))
                self.halt.wait(self.interval)

    import dask

    # Dask's statistical profiler keeps a profile of every second in each worker (deque of up to
    # 3600): worker memory grows with time whatever the task does. Off unless asked for.
    profiler = bool(cfg.get("dask_profiler", False))
    with (
        dask.config.set({"distributed.worker.profile.enabled": profiler}),
        local_cluster(workers, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(workers, timeout=120)
        profiling = client.run(lambda: __import__("dask").config.get("distributed.worker.profile.enabled"))
        if any(bool(v) != profiler for v in profiling.values()):
            raise BenchmarkError(f"the workers did not take distributed.worker.profile.enabled={profiler}: {profiling}")
        base = client.run(_worker_baseline)
        pids = {addr: info["pid"] for addr, info in base.items()}
        anchors = Anchors(client)
        sampler = Sampler(pids, 0.02)
        sampler.start()
        t0 = time.monotonic()
        try:
            history = model.fit(
                x,
                y,
                batch_size=batch,
                epochs=epochs,
                verbose=0,
                seed=0,
                shuffle=True,
                client=client,
                callbacks=[anchors],
            )
        finally:
            sampler.halt.set()
            sampler.join()
        t1 = time.monotonic()
        maxrss = client.run(_worker_maxrss)

    plan = ShardPlan(rows, workers, batch)
    per_worker = []
    anchor_t = np.array([t for t, _ in anchors.points], dtype=np.float64)
    anchor_s = np.array([s for _, s in anchors.points], dtype=np.float64)
    for rank, addr in enumerate(history.workers):
        owned = history.placement[addr]
        local_rows = plan.local_rows(owned)
        per_step = np.diff(plan.taken[list(owned)], axis=1).sum(axis=0)  # this rank's rows in each step
        local_sizes = sorted({int(n) for n in per_step if n > 0}, reverse=True)
        bound = compute_bound(
            layers,
            _activations(layers),
            rows=local_rows,
            batch_sizes=local_sizes,
            optimizer=optimizer,
            shards_held=len(owned),
            received_shard=True,
            shm_peers=workers - 1,
            rank0=rank == 0,
        )
        samples = sampler.samples[addr]
        ts = np.array([s[0] for s in samples], dtype=np.float64)
        rss = np.array([s[1] for s in samples], dtype=np.int64)
        shm = np.array([s[2] for s in samples], dtype=np.int64)
        sampled_peak = int(rss.max()) if len(rss) else 0
        peak = max(sampled_peak, int(maxrss[addr]))
        baseline = int(base[addr]["rss"])
        timeline: dict[str, Any] = {"steps": [], "rss_bytes": []}
        slope = growth = spread = None
        if len(anchor_t) >= 2:
            inside = (ts >= anchor_t[0]) & (ts <= anchor_t[-1])
            step_of = np.interp(ts[inside], anchor_t, anchor_s)
            rss_in = rss[inside]
            for k in range(1, total_steps + 1):  # RSS at the end of step k: the last sample placed at or before it
                at = np.flatnonzero(step_of <= k)
                if len(at):
                    timeline["steps"].append(k)
                    timeline["rss_bytes"].append(int(rss_in[at[-1]]))
            second = step_of >= total_steps / 2
            if second.sum() >= 2:
                slope = _slope(step_of[second].tolist(), rss_in[second].tolist())
                growth = int(rss_in[second][-1] - rss_in[second][0])
                spread = int(rss_in[second].max() - rss_in[second].min())
        # Shared memory (RssShmem: this rank's own segments and the peer's it has mapped): the bound
        # counts one slot each way; dtrain opens another slot (up to 4 per peer) whenever the
        # peer has not yet freed the last one, so the measured figure says how many were in use.
        comm_items = [i for i in bound["items"] if i["category"] == "communication"]
        grad_bytes = bound["flat_elements"] * np.dtype("float32").itemsize
        shm_peak = int(shm.max()) if len(shm) else None
        shared_memory = {
            "bound_one_slot_each_way_bytes": int(sum(i["bytes"] for i in comm_items)),
            "rss_shmem_peak_bytes": shm_peak,
            "slots_each_way_measured": (
                round(shm_peak / (2 * (workers - 1) * grad_bytes), 2)
                if comm_items and shm_peak is not None and shm_peak >= 0
                else None
            ),
        }
        malloc = (
            anchors.malloc.get(addr) if isinstance(anchors.malloc, dict) and "error" not in anchors.malloc else None
        )
        per_worker.append(
            {
                "rank": rank,
                "address": addr,
                "pid": pids[addr],
                "shards": list(owned),
                "rows": local_rows,
                "local_batch_sizes": local_sizes,
                "baseline_rss_bytes": baseline,
                "bound": bound,
                "peak": {
                    "psutil_sampled_bytes": sampled_peak,
                    "ru_maxrss_bytes": int(maxrss[addr]),
                    "samples": len(rss),
                    "sample_interval_ms": 20,
                },
                "shared_memory": shared_memory,
                "malloc_at_steady_step": malloc,
                "peak_bytes": peak,
                "ratio": round(peak / (baseline + bound["total_bytes"]), 4),
                "ratio_vs_issue_minimum": round(peak / (baseline + bound["issue_minimum_bytes"]), 4),
                "unaccounted_bytes": int(peak - baseline - bound["total_bytes"]),
                "timeline": timeline,
                "slope_bytes_per_step": slope,
                "steady_growth_bytes": growth,
                "steady_range_bytes": spread,
            }
        )
    timing = getattr(history, "timing", {}) or {}
    return {
        "workers": workers,
        "optimizer": optimizer,
        "epochs": epochs,
        "steps": total_steps,
        "steps_per_epoch": spe,
        "fit_seconds": round(t1 - t0, 3),
        "step_ms": round(timing["step_ms"], 3) if "step_ms" in timing else None,
        "communicator": getattr(history, "communicator", None),
        "progress_events": len(anchors.points),
        "dask_profiler": profiler,
        "malloc_error": anchors.malloc.get("error") if isinstance(anchors.malloc, dict) else None,
        "per_worker": per_worker,
    }


# -- the parent: fresh processes, then the report --------------------------------------------------
def _run_child(kind: str, cfg: dict, threads: int, timeout: float) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    cmd = [sys.executable, "-m", "benchmarks.memory", "--child", kind, "--config", json.dumps(cfg)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchmarkError(
            f"the {kind} measurement ({cfg.get('optimizer', '')}) did not finish within {timeout:g} s"
        ) from None
    if proc.returncode != 0:
        raise BenchmarkError(f"the {kind} measurement failed (exit {proc.returncode}):\n{proc.stderr.strip()[-3000:]}")
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise BenchmarkError(
            f"the {kind} measurement printed no JSON result; stderr:\n{proc.stderr.strip()[-3000:]}"
        ) from None


def _single_report(cfg: dict, child: dict) -> dict:
    layers, rows, batch = cfg["layers"], cfg["samples"], cfg["batch"]
    bound = compute_bound(
        layers,
        _activations(layers),
        rows=rows,
        batch_sizes=_global_batch_sizes(rows, batch),
        optimizer=cfg["optimizer"],
    )
    baseline = child["baseline_rss_bytes"]
    peak = max(child["peak"]["psutil_sampled_bytes"], child["peak"]["ru_maxrss_bytes"])
    model_items = {
        "parameters",
        "gradients",
        "optimizer state",
        "optimizer work buffer",
        "activations",
        "activation gradients",
    }
    computed_model = sum(i["bytes"] for i in bound["items"] if i["category"] in model_items)
    actual = child.pop("actual_model_buffers", None) or {}
    data_bytes = sum(
        i["bytes"] for i in bound["items"] if i["name"] in ("x (training rows)", "y (integer labels, as given)")
    )
    return {
        **child,
        "bound": bound,
        "transients_at_fit_start": transients(layers, rows, "float32"),
        "peak_bytes": peak,
        "ratio": round(peak / (baseline + bound["total_bytes"]), 4),
        "ratio_vs_issue_minimum": round(peak / (baseline + bound["issue_minimum_bytes"]), 4),
        "unaccounted_bytes": int(peak - baseline - bound["total_bytes"]),
        "bound_check": {
            "computed_model_and_batch_bytes": computed_model,
            "actual_model_and_batch_bytes": actual.get("bytes"),
            "what": actual.get("what"),
            "match": actual.get("bytes") == computed_model,
            "data_computed_bytes": data_bytes,
            "data_rss_delta_bytes": child["rss_after_data_bytes"] - baseline,
        },
    }


def _profiler_summary(child: dict) -> dict:
    """The same cluster run with Dask's statistical profiler on (Dask's default): for context."""
    step_s = (child.get("step_ms") or 0) / 1e3
    workers = []
    for w in child["per_worker"]:
        slope = w["slope_bytes_per_step"]
        workers.append(
            {
                "rank": w["rank"],
                "baseline_rss_bytes": w["baseline_rss_bytes"],
                "peak_bytes": w["peak_bytes"],
                "ratio": w["ratio"],
                "slope_bytes_per_step": slope,
                "slope_bytes_per_second": (round(slope / step_s) if slope is not None and step_s else None),
                "steady_growth_bytes": w["steady_growth_bytes"],
            }
        )
    return {
        "note": (
            "not a target: the cluster run again with distributed.worker.profile.enabled=True (Dask's default). The "
            "profiler samples every worker's threads every 10 ms and keeps one profile per second (up to 3600), "
            "so a worker's memory grows with time whatever the task is."
        ),
        "fit_seconds": child["fit_seconds"],
        "step_ms": child["step_ms"],
        "per_worker": workers,
    }


def _config(quick: bool, kwargs: dict) -> dict:
    cfg = dict(QUICK if quick else FULL)
    unknown = set(kwargs) - set(cfg) - {"optimizers", "timeout"}
    if unknown:
        raise ValueError(
            f"run() got unexpected arguments {sorted(unknown)}; known: {sorted(set(cfg) | {'optimizers', 'timeout'})}."
        )
    cfg.update({k: v for k, v in kwargs.items() if v is not None})
    cfg["layers"] = [int(v) for v in cfg["layers"]]
    cfg.setdefault("optimizers", ("sgd", "adam"))
    cfg.setdefault("timeout", 300.0 if quick else 900.0)
    for key in ("batch", "samples", "steps", "threads"):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ValueError(f"{key} must be a positive integer, received {cfg[key]!r}.")
    if isinstance(cfg["workers"], bool) or not isinstance(cfg["workers"], int) or cfg["workers"] < 0:
        raise ValueError(f"workers must be a non-negative integer (0: no cluster part), received {cfg['workers']!r}.")
    if len(cfg["layers"]) < 2 or min(cfg["layers"]) < 1:
        raise ValueError(
            f"layers must be at least two positive widths (input, ..., classes), received {cfg['layers']!r}."
        )
    if cfg["layers"][-1] < 2:
        raise ValueError("the last layer is a softmax over classes: it needs at least 2 units.")
    if cfg["samples"] < 4 * cfg["batch"]:
        raise ValueError(
            f"samples must be at least 4 batches ({4 * cfg['batch']}) for the per-step probe; received {cfg['samples']}."
        )
    if cfg["workers"] and cfg["batch"] < cfg["workers"]:
        raise ValueError(
            f"batch {cfg['batch']} is smaller than the {cfg['workers']} workers: every step takes a row from each."
        )
    if not isinstance(cfg["profiler_comparison"], bool):
        raise ValueError(f"profiler_comparison must be True or False, received {cfg['profiler_comparison']!r}.")
    bad = [o for o in cfg["optimizers"] if o not in SLOTS]
    if bad or not cfg["optimizers"]:
        raise ValueError(f"optimizers must be among {sorted(SLOTS)}, received {list(cfg['optimizers'])!r}.")
    return cfg


def _targets(result: dict) -> dict:
    ratios, slopes, retained, errors = {}, {}, {}, []
    for name, part in result["single_process"].items():
        if "error" in part:
            errors.append(f"single_process.{name}")
            continue
        ratios[f"single_process.{name}"] = part["ratio"]
        slopes[f"single_process.{name}"] = part["per_step_rss"]["slope_bytes_per_step"]
        retained[f"single_process.{name}"] = part["allocations"]["max_retained_arrays"]
    cluster = result.get("cluster")
    if cluster and "error" in cluster:
        errors.append("cluster")
    elif cluster and "per_worker" in cluster:
        for w in cluster["per_worker"]:
            ratios[f"cluster.rank{w['rank']}"] = w["ratio"]
            slopes[f"cluster.rank{w['rank']}"] = w["slope_bytes_per_step"]
    measured = bool(ratios)
    peak_met = measured and all(r <= RATIO_TARGET for r in ratios.values()) and not errors
    growth_met = (
        measured
        and not errors
        and all(s is not None and s < SLOPE_LIMIT_BYTES_PER_STEP for s in slopes.values())
        and all(n == 0 for n in retained.values())
    )
    return {
        "peak_rss_within_1.2x_of_bound": {
            "met": peak_met if measured else None,
            "limit": RATIO_TARGET,
            "ratios": ratios,
            "definition": "peak RSS (max of psutil samples and ru_maxrss) / (process baseline RSS + computed bound)",
        },
        "no_per_step_growth": {
            "met": growth_met if measured else None,
            "slope_limit_bytes_per_step": SLOPE_LIMIT_BYTES_PER_STEP,
            "rss_slope_bytes_per_step": {k: (None if v is None else round(v, 1)) for k, v in slopes.items()},
            "arrays_retained_per_steady_step_max": retained,
            "definition": "RSS slope over the second half of the steps below the limit, and no NumPy array allocated "
            "in a steady-state step still alive after it (single process, tracemalloc); the workers run "
            "with Dask's statistical profiler off (its per-second history grows with time: see "
            "cluster_dask_profiler_on)",
        },
        "not_measured": errors,
    }


def _mib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f} MiB"


def _summary(result: dict) -> list[str]:
    lines = []
    for name, part in result["single_process"].items():
        if "error" in part:
            lines.append(f"single process ({name}): ERROR {part['error'].splitlines()[0]}")
            continue
        a = part["allocations"]
        lines.append(
            f"single process ({name}): peak {_mib(part['peak_bytes'])} vs baseline {_mib(part['baseline_rss_bytes'])} + bound "
            f"{_mib(part['bound']['total_bytes'])} -> ratio {part['ratio']:.3f}; RSS slope "
            f"{part['per_step_rss']['slope_bytes_per_step'] or 0:.1f} B/step over steps {part['per_step_rss']['steady_from_step']}.."
            f"{part['steps']}; arrays retained per step: max {a['max_retained_arrays']} ({a['max_retained_array_bytes']} B) over "
            f"{a['steady_steps_measured']} steps; largest temporary {a['largest_temporary_bytes']['max']} B "
            f"(a hidden activation is {a['for_scale']['hidden_activation_bytes']} B)"
        )
    cluster = result.get("cluster")
    if cluster and "error" in cluster:
        lines.append(f"cluster: ERROR {cluster['error'].splitlines()[0]}")
    elif cluster and "per_worker" in cluster:
        for w in cluster["per_worker"]:
            lines.append(
                f"cluster rank {w['rank']}: peak {_mib(w['peak_bytes'])} vs baseline {_mib(w['baseline_rss_bytes'])} + bound "
                f"{_mib(w['bound']['total_bytes'])} -> ratio {w['ratio']:.3f}; RSS slope "
                f"{w['slope_bytes_per_step'] if w['slope_bytes_per_step'] is None else round(w['slope_bytes_per_step'], 1)} B/step (second half)"
                + (
                    f"; shared-memory slots each way: {w['shared_memory']['slots_each_way_measured']}"
                    if w["shared_memory"]["slots_each_way_measured"] is not None
                    else ""
                )
                + (
                    f"; beyond the bound {_mib(w['unaccounted_bytes'])}, of which glibc holds "
                    f"{_mib(w['malloc_at_steady_step']['free_held_bytes'])} freed"
                    if w.get("malloc_at_steady_step")
                    else ""
                )
            )
    on = result.get("cluster_dask_profiler_on")
    if on and "error" in on:
        lines.append(f"cluster with Dask's profiler on: ERROR {on['error'].splitlines()[0]}")
    elif on:
        for w in on["per_worker"]:
            lines.append(
                f"cluster rank {w['rank']} with Dask's profiler on (not a target): ratio {w['ratio']:.3f}; RSS slope "
                f"{w['slope_bytes_per_step'] if w['slope_bytes_per_step'] is None else round(w['slope_bytes_per_step'])} B/step"
            )
    t = result["targets"]
    lines.append(
        f"target peak <= {RATIO_TARGET}x bound: {'met' if t['peak_rss_within_1.2x_of_bound']['met'] else 'NOT met'}; "
        f"no per-step growth: {'met' if t['no_per_step_growth']['met'] else 'NOT met'}"
    )
    return lines


def run(quick: bool = False, **kwargs: Any) -> dict:
    """Measure and return the report (a JSON-able dict). Keyword arguments override the settings
    (``layers``, ``batch``, ``samples``, ``steps``, ``workers`` (0: no cluster part), ``threads``
    (BLAS threads of the single-process runs), ``optimizers`` (of the single-process runs; the
    cluster uses the first), ``profiler_comparison`` (run the cluster part a second time with
    Dask's statistical profiler on, for context; default in full runs only), ``timeout``
    (seconds per measurement)). A measurement that fails is
    recorded as ``{"error": ...}`` in its place and its targets count as not measured; bad
    arguments raise ValueError. Writes no file (the CLI does)."""
    cfg = _config(quick, kwargs)
    layers = cfg["layers"]
    result: dict[str, Any] = {
        "benchmark": "memory",
        "issue": 6,
        "quick": bool(quick),
        "network": {
            "layers": layers,
            "activations": _activations(layers),
            "dtype": "float32",
            "loss": "sparse_categorical_crossentropy",
            "global_batch": cfg["batch"],
            "samples": cfg["samples"],
            "min_steps": cfg["steps"],
        },
        "machine": machine_record(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "single_process": {},
    }
    base = {k: cfg[k] for k in ("layers", "batch", "samples", "steps")}
    for optimizer in cfg["optimizers"]:
        child_cfg = {**base, "optimizer": optimizer}
        try:
            child = _run_child("single", child_cfg, cfg["threads"], cfg["timeout"])
            result["single_process"][optimizer] = _single_report(child_cfg, child)
        except BenchmarkError as exc:
            result["single_process"][optimizer] = {"error": str(exc)}
    if cfg["workers"]:
        child_cfg = {**base, "workers": cfg["workers"], "optimizer": cfg["optimizers"][0], "dask_profiler": False}
        try:
            result["cluster"] = _run_child("cluster", child_cfg, 1, cfg["timeout"])
        except BenchmarkError as exc:
            result["cluster"] = {"error": str(exc)}
        if cfg["profiler_comparison"]:
            try:
                on = _run_child("cluster", {**child_cfg, "dask_profiler": True}, 1, cfg["timeout"])
                result["cluster_dask_profiler_on"] = _profiler_summary(on)
            except BenchmarkError as exc:
                result["cluster_dask_profiler_on"] = {"error": str(exc)}
    else:
        result["cluster"] = {"skipped": "workers=0"}
    result["targets"] = _targets(result)
    result["summary"] = _summary(result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, help=f"training rows (default {FULL['samples']}; quick {QUICK['samples']})")
    p.add_argument("--steps", type=int, help=f"at least this many steps, in whole epochs (default {FULL['steps']})")
    p.add_argument("--workers", type=int, help="workers of the cluster part, 0 for none (default 2)")
    p.add_argument("--layers", help="widths, comma-separated (default 784,1024,1024,10)")
    p.add_argument("--batch", type=int, help="global batch (default 512)")
    p.add_argument("--threads", type=int, help="BLAS threads of the single-process runs (default 2)")
    p.add_argument("--quick", action="store_true", help="a tiny network, in seconds; writes no file")
    p.add_argument(
        "--no-profiler-comparison",
        action="store_true",
        help="skip the second cluster run with Dask's statistical profiler on",
    )
    p.add_argument(
        "--optimizers", nargs="+", choices=sorted(SLOTS), help="single-process runs, one each (default sgd adam)"
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--child", choices=("single", "cluster"), help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:  # a fresh process measuring one thing
        cfg = json.loads(args.config)
        out = _child_single(cfg) if args.child == "single" else _child_cluster(cfg)
        print(json.dumps(out))
        return 0

    kwargs = {
        "samples": args.samples,
        "steps": args.steps,
        "workers": args.workers,
        "batch": args.batch,
        "threads": args.threads,
        "profiler_comparison": False if args.no_profiler_comparison else None,
        "optimizers": tuple(args.optimizers) if args.optimizers else None,
    }
    if args.layers:
        try:
            kwargs["layers"] = [int(v) for v in args.layers.split(",")]
        except ValueError:
            p.error(f"--layers expects comma-separated integers, received {args.layers!r}")
    try:
        result = run(quick=args.quick, **kwargs)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result["command"] = "python -m benchmarks.memory " + " ".join(sys.argv[1:] if argv is None else argv)
    print(json.dumps(result, indent=2))
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {args.out}", file=sys.stderr)
    for line in result["summary"]:
        print(line, file=sys.stderr)
    failed = result["targets"]["not_measured"]
    if failed:
        print(f"error: not measured: {', '.join(failed)} (see the 'error' entries)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
