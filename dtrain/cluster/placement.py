"""The data where it is: training and validation rows as sources, checked on the client as
far as it can without reading files or computing Dask arrays; which logical shards each rank
trains on; whether every rank's rows and model fit its worker; whether the checkpoints rank 0
writes are where the driver reads them."""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data import check_sample_weight
from ..network import Network
from ..sampling import ShardPlan
from ..sources import ArraySource, Source, as_source, check_same_rows
from ..storage import Location
from ..training.local import validation_split_at
from .probe import WorkerInfo


@dataclass
class Rows:
    """Rows [start, start + count) of a pair of sources: the training or the validation set."""

    x: Any
    y: Any
    start: int
    count: int
    w: Any = None  # the rows' sample weights (a source), if any

    def readers(self, lo: int, hi: int, client: Any, worker: str) -> tuple[Any, Any]:
        return (
            self.x.shard(self.start + lo, self.start + hi, client, worker),
            self.y.shard(self.start + lo, self.start + hi, client, worker),
        )

    def weight_reader(self, lo: int, hi: int, client: Any, worker: str) -> Any:
        return None if self.w is None else self.w.shard(self.start + lo, self.start + hi, client, worker)


def numpy_like(value: Any) -> bool:
    """In the client's memory (an array, a list): checked and sent from here."""
    if isinstance(value, (np.ndarray, list, tuple)):
        return True
    return not isinstance(value, (str, Source)) and not hasattr(value, "dask") and not hasattr(value, "__fspath__")


def training_sources(
    model: Network,
    x: Any,
    y: Any,
    validation_split: float,
    validation_data: Any,
    client: Any,
    sample_weight: Any = None,
) -> tuple[Rows, Rows | None]:
    """Training and validation rows as sources, checked as far as the client can without
    reading files or computing Dask arrays."""

    def pair(xv: Any, yv: Any, prefix: str, input_dim: int | None) -> tuple[Source, Source]:
        if numpy_like(xv) and numpy_like(yv):  # in client memory: check everything here
            xa, ya = model.check_xy(xv, yv, name=prefix, input_dim=input_dim)
            return ArraySource(xa), ArraySource(ya)
        # Metadata only: a file's header or footers; table lengths and Dask chunks are counted
        # (persisted) on the cluster. Nothing of the data comes to the client.
        xs, ys = as_source(xv, f"{prefix}x").prepare(client), as_source(yv, f"{prefix}y").prepare(client)
        model.check_row_shape(xs.row_shape, xs.describe(), f"{prefix}x", input_dim)
        check_same_rows(xs, ys)
        if xs.n_rows == 0:
            raise ValueError(f"{prefix}x is empty ({xs.describe()}): it has no samples.")
        return xs, ys

    if x is None or y is None:
        raise ValueError("fit(..., client=) needs both x and y (arrays, Dask arrays or dtrain.from_* sources).")
    xs, ys = pair(x, y, "", None)

    def weights(w: Any, rows: Source, name: str) -> Source | None:
        if w is None:
            return None
        if numpy_like(w):
            return ArraySource(check_sample_weight(w, rows.n_rows, name))
        ws = as_source(w, name).prepare(client)  # (its values are checked where they are read, on the workers)
        check_same_rows(rows, ws)
        return ws

    ws = weights(sample_weight, xs, "sample_weight")
    train = Rows(xs, ys, 0, xs.n_rows, ws)
    validation = None
    if validation_data is not None:
        vx, vy = pair(validation_data[0], validation_data[1], "validation ", math.prod(xs.row_shape))
        vw = weights(validation_data[2] if len(validation_data) > 2 else None, vx, "validation sample_weight")
        validation = Rows(vx, vy, 0, vx.n_rows, vw)
    elif validation_split:
        split_at = validation_split_at(train.count, validation_split)  # the last rows, as Keras (weights too)
        validation = Rows(xs, ys, split_at, train.count - split_at, ws)
        train = Rows(xs, ys, 0, split_at, ws)
    return train, validation


def place_shards(plan: ShardPlan, ranks: Sequence[WorkerInfo], train: Rows, client) -> list[list[int]]:
    """Which logical shards each rank trains on: as even a count as possible, each shard where
    most of its rows already are (Dask arrays), else consecutive shards per rank."""
    n = len(ranks)
    capacity = [plan.shards // n + (1 if r < plan.shards % n else 0) for r in range(n)]
    local = [train.x.locality(train.start + lo, train.start + hi, client) for lo, hi in plan.bounds]
    if not any(local):
        owned, next_shard = [], 0
        for count in capacity:
            owned.append(list(range(next_shard, next_shard + count)))
            next_shard += count
        return owned
    index = {w.address: r for r, w in enumerate(ranks)}
    owned = [[] for _ in ranks]
    preferences = sorted(
        (
            (-nbytes, shard, index[addr])
            for shard, held in enumerate(local)
            for addr, nbytes in held.items()
            if addr in index
        )
    )
    placed: set[int] = set()
    for _, shard, r in preferences:
        if shard not in placed and len(owned[r]) < capacity[r]:
            owned[r].append(shard)
            placed.add(shard)
    for shard in range(plan.shards):  # shards held nowhere (or only on full ranks)
        if shard not in placed:
            r = next(r for r in range(n) if len(owned[r]) < capacity[r])
            owned[r].append(shard)
    return [sorted(o) for o in owned]


def split_rows(count: int, parts: int) -> list[tuple[int, int]]:
    cuts = [p * count // parts for p in range(parts + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def check_access(client, sources, ranks: Sequence[WorkerInfo]) -> None:
    """Every file is readable from every worker that will read it (a header at most)."""
    for source in sources:
        check = source.access_check()
        if check is None:
            continue
        answers = client.run(check, workers=[w.address for w in ranks])
        problems = [f"{addr}: {why}" for addr, why in answers.items() if why]
        if problems:
            raise FileNotFoundError(f"{source.describe()} cannot be read on every worker: " + "; ".join(problems))


PROBE_PREFIX = ".dtrain-probe-"


def _write_probe(directory: str, name: str) -> str:
    """Runs on rank 0's worker (client.run): write a probe file where rank 0 writes checkpoints;
    returns where that is, as the worker sees it."""
    location = Location(directory, what="a checkpoint directory or URL")
    location.make()
    location.write(name, b"dtrain checkpoint folder probe\n")
    return location.where(name)


def _remove_probe(directory: str, name: str) -> None:
    try:
        Location(directory).remove(name)
    except Exception:  # best effort: a leftover probe is a few bytes, and named for what it is
        pass


def check_checkpoint_folder(client: Any, rank0: str, directory: str) -> None:
    """Rank 0 writes the checkpoints and the driver (this process: the client, or the scheduler
    for jobs) reads them when a run restarts or resumes: they must see the same folder. A probe
    written through rank 0's worker must be readable here; otherwise a restart would silently
    start over (a relative path on workers started elsewhere, a disk private to a host)."""
    name = f"{PROBE_PREFIX}{secrets.token_hex(8)}"
    try:
        where = client.run(_write_probe, directory, name, workers=[rank0])[rank0]
    except Exception as exc:
        raise OSError(
            f"Rank 0 (worker {rank0}) cannot write checkpoints to {directory!r}: {type(exc).__name__}: {exc}"
        ) from None
    here = Location(directory, what="a checkpoint directory or URL")
    try:
        seen = here.exists(name)
    except Exception:
        seen = False
    _remove_probe(directory, name)
    if not seen:
        try:
            client.run(_remove_probe, directory, name, workers=[rank0])
        except Exception:
            pass
        raise OSError(
            f"Rank 0 (worker {rank0}) writes checkpoints to {where}, which this process (the driver) cannot "
            f"read at {here.where(name)}: a restart or a resume could not continue from them. Use a folder that "
            "the workers and the driver share (the same absolute path on a shared filesystem) or a URL (s3://...)."
        )


def model_bytes(model: Network, local_batch: int) -> int:
    """Parameters, gradients, the summed gradient, the optimizer's scratch and slots, and the
    activations of one local batch."""
    itemsize = np.dtype(model.dtype).itemsize
    params = int(model.params.size) if model.built else 0
    slots = len(model.compiled_optimizer.slot_names)
    widths = sum(model.output_widths())
    return itemsize * (params * (4 + slots) + 4 * local_batch * widths)


def check_memory(model: Network, plan: ShardPlan, owned, ranks, train: Rows, validation, val_split) -> None:
    """Refuse, before anything runs, a rank whose rows and model will not fit its worker."""
    for r, worker in enumerate(ranks):
        if worker.memory_limit is None:
            continue
        row_bytes = train.x.row_nbytes(model.dtype) + train.y.row_nbytes(model.dtype)
        rows = plan.local_rows(owned[r])
        need = rows * row_bytes
        if validation is not None:
            lo, hi = val_split[r]
            need += (hi - lo) * (validation.x.row_nbytes(model.dtype) + validation.y.row_nbytes(model.dtype))
        local_batch = max(1, -(-plan.batch_size * rows // plan.rows))
        need += model_bytes(model, local_batch)
        usable = int(worker.memory_limit * (worker.pause_fraction or 1.0)) - worker.memory_used
        if need > usable:
            raise MemoryError(
                f"Rank {r} on worker {worker.address} needs about {gib(need)} for its {rows} rows (shards "
                f"{owned[r]}) and the model, but the worker has {gib(max(usable, 0))} usable (memory limit "
                f"{gib(worker.memory_limit)}, Dask pauses it at {int((worker.pause_fraction or 1) * 100)}%, "
                f"{gib(worker.memory_used)} in use). Use more workers, workers with more memory "
                "(dask worker --memory-limit), or less data per worker."
            )


def gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**27 else f"{nbytes / 2**20:.1f} MiB"
