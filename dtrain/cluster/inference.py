"""``evaluate`` and ``predict`` with ``client=``: each worker evaluates (or predicts) its part of
the rows where the data is, from weights sent once to each worker; the client adds up the
sums in a fixed order (the same result every run), or concatenates the outputs in row order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..backend import host_copy
from ..data import check_targets
from ..network import Network, Totals
from ..sources import ArraySource, Source, as_source
from .placement import Rows, check_access, numpy_like, split_rows, training_sources
from .probe import choose_device, cluster_ranks


def _replica_for_inference(
    config: dict, compile_config: dict | None, params: np.ndarray, input_dim: int, device: str
) -> Network:
    model = Network.from_config(config, device=device)
    if compile_config is not None:
        model.compile(**compile_config)
    model.build(input_dim, seed=0)
    model.params[...] = model.backend.asarray(params)
    return model


def _evaluate_part(config, compile_config, params, input_dim, device, batch_size, readers, dependencies) -> np.ndarray:
    """Runs on a worker: loss and metric sums over one part of the rows."""
    model = _replica_for_inference(config, compile_config, params, input_dim, device)
    (x_reader, y_reader), (x_deps, y_deps) = readers, dependencies
    where = f"rows {x_reader.start}..{x_reader.stop - 1}"
    x = model.check_x(x_reader.load(x_deps), f"x ({where})", input_dim)
    y = check_targets(y_reader.load(y_deps), len(x), model.loss, model.output_units, model.dtype, name=f"y ({where})")
    return model.evaluation_totals(x, y, batch_size).to_array()


def _predict_part(config, params, input_dim, device, batch_size, reader, dependencies) -> np.ndarray:
    model = _replica_for_inference(config, None, params, input_dim, device)
    x = model.check_x(reader.load(dependencies), f"x (rows {reader.start}..{reader.stop - 1})", input_dim)
    return model.predict_rows(x, batch_size)


def _inference_parts(model: Network, client: Any, workers: Sequence[str] | None, rows: Rows):
    """Even row ranges, one per worker, with the weights sent once to each of those workers."""
    ranks = cluster_ranks(client, workers)
    ranks = ranks[: rows.count]
    device = choose_device(model.requested_device, ranks)
    check_access(client, {id(s): s for s in (rows.x, rows.y) if s is not None}.values(), ranks)
    [params] = client.scatter([host_copy(model.params)], workers=[w.address for w in ranks], broadcast=True, hash=False)
    return ranks, device, params, split_rows(rows.count, len(ranks))


def evaluate_on_cluster(
    model: Network, x: Any, y: Any, *, client: Any, workers: Sequence[str] | None, batch_size: int
) -> dict[str, float]:
    """``Sequential.evaluate(..., client=client)``: each worker evaluates its part of the rows
    where the data is; the client adds up the sums (in a fixed order: same result every run)."""
    rows, _ = training_sources(model, x, y, 0.0, None, client)
    ranks, device, params, parts = _inference_parts(model, client, workers, rows)
    futures = []
    for worker, (lo, hi) in zip(ranks, parts):
        readers = rows.readers(lo, hi, client, worker.address)
        futures.append(
            client.submit(
                _evaluate_part,
                model.get_config(),
                model.compile_config(),
                params,
                model.input_dim,
                device,
                batch_size,
                readers,
                [r.dependencies for r in readers],
                workers=[worker.address],
                pure=False,
            )
        )
    total = np.sum(client.gather(futures), axis=0)
    return Totals.from_array(model.metrics, total).logs()


def predict_on_cluster(
    model: Network, x: Any, *, client: Any, workers: Sequence[str] | None, batch_size: int
) -> np.ndarray:
    """``Sequential.predict(..., client=client)``: each worker predicts its part of the rows;
    the outputs come back to the client as one NumPy array, in row order."""
    source: Source
    if numpy_like(x):
        source = ArraySource(model.check_x(x))
    else:
        source = as_source(x, "x").prepare(client)
        model.check_row_shape(source.row_shape, source.describe())
        if source.n_rows == 0:
            raise ValueError(f"x is empty ({source.describe()}): there is nothing to predict.")
    rows = Rows(source, None, 0, source.n_rows)
    ranks, device, params, parts = _inference_parts(model, client, workers, rows)
    futures = []
    for worker, (lo, hi) in zip(ranks, parts):
        reader = source.shard(lo, hi, client, worker.address)
        futures.append(
            client.submit(
                _predict_part,
                model.get_config(),
                params,
                model.input_dim,
                device,
                batch_size,
                reader,
                reader.dependencies,
                workers=[worker.address],
                pure=False,
            )
        )
    return np.concatenate(client.gather(futures))
