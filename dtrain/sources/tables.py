"""Tables: Parquet and CSV through dask.dataframe; each worker reads its own rows. The client
never materialises a table: it reads metadata only (Parquet footers, a CSV sample), and the
partition lengths are counted on the cluster."""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import (
    NUMERIC,
    ShardReader,
    Source,
    absolute_path,
    brief,
    overlaps,
    rewrap,
    role_prefix,
    running_on,
)


def _dask_dataframe() -> Any:
    try:
        import dask.dataframe as dd
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f'Reading Parquet and CSV needs pandas, pyarrow and dask[dataframe]: pip install "dtrain[data]" '
            f"(import failed: {exc})."
        ) from exc
    return dd


def _numeric_dtype(dtype: Any) -> np.dtype | None:
    """The NumPy dtype of a pandas column dtype if it holds plain numbers, else None."""
    try:
        dtype = np.dtype(getattr(dtype, "numpy_dtype", dtype))  # nullable Int64 / boolean -> NumPy
    except TypeError:
        return None  # string, categorical, ...
    return dtype if dtype.kind in NUMERIC else None


@dataclass(eq=False)
class _Table:
    """One Parquet/CSV table shared by its x and y sources: how to open it (the same way on every
    process, so partition i is the same rows everywhere) and its partition lengths."""

    fmt: str  # "CSV" or "Parquet"
    path: Any  # str or list of str, as given to dask.dataframe
    storage_options: dict | None
    read_kwargs: dict
    columns: list[str]  # every column a source reads: features, then labels
    groups: int  # how many sources read it (a cached partition is dropped once all have)
    npartitions: int
    token: str
    files: list[str]
    local: bool
    lengths: list[int] | None = None

    def describe(self) -> str:
        return f"{self.fmt} {self.path}"


_FRAMES: OrderedDict[str, Any] = OrderedDict()  # token -> dask DataFrame, per process
_PARTS: dict[tuple[str, int], tuple[Any, set]] = {}  # (token, i) -> (pandas frame, sources that took it)
_LOCK = threading.Lock()


def _open_frame(table: _Table) -> Any:
    """The table's dask DataFrame, opened from (path, kwargs) and kept per process."""
    with _LOCK:
        frame = _FRAMES.get(table.token)
        if frame is not None:
            _FRAMES.move_to_end(table.token)
            return frame
    dd = _dask_dataframe()
    reader = dd.read_csv if table.fmt == "CSV" else dd.read_parquet
    frame = reader(table.path, storage_options=table.storage_options, **table.read_kwargs)
    if frame.npartitions != table.npartitions:
        raise RuntimeError(
            f"{table.describe()} splits into {frame.npartitions} partitions on {running_on()} but into "
            f"{table.npartitions} on the client, so rows would be misplaced; pass the partitioning "
            f"explicitly (blocksize= for CSV, split_row_groups= / blocksize= for Parquet)."
        )
    with _LOCK:
        _FRAMES[table.token] = frame
        while len(_FRAMES) > 8:
            _FRAMES.popitem(last=False)
    return frame


def _read_partitions(table: _Table, indices: list[int], columns: Sequence[str]) -> list[Any]:
    """Partitions ``indices`` of the table (those columns) as pandas frames, in this process."""
    import dask

    frame = _open_frame(table)[list(columns)]
    # Partition by partition: `.partitions[i]` is partition i of the frame as opened, whatever the
    # optimiser would fuse when reading a few columns of many Parquet partitions in one go.
    return list(dask.compute(*[frame.partitions[i] for i in indices], scheduler="sync"))


def _partitions(table: _Table, indices: list[int], reader: str) -> dict[int, Any]:
    """Partitions ``indices`` (all the columns dtrain reads). The last partitions read stay cached
    until every source of the table has taken them, so x and y parse a CSV block only once."""
    with _LOCK:
        for key in [k for k in _PARTS if k[0] != table.token or k[1] not in indices]:
            del _PARTS[key]  # keep only what this request needs: memory stays one shard's worth
        found = {i: _PARTS[(table.token, i)][0] for i in indices if (table.token, i) in _PARTS}
    missing = [i for i in indices if i not in found]
    if missing:
        found.update(zip(missing, _read_partitions(table, missing, table.columns)))
    with _LOCK:
        for i in indices:
            _, taken = _PARTS.setdefault((table.token, i), (found[i], set()))
            taken.add(reader)
            if len(taken) >= table.groups:
                del _PARTS[(table.token, i)]
    return found


def _count_rows(table: _Table, indices: list[int]) -> list[int]:
    """Lengths of partitions ``indices``, read the way the ranks will read them (one column)."""
    try:
        return [len(part) for part in _read_partitions(table, indices, table.columns[:1])]
    except Exception as exc:
        raise rewrap(exc, f"counting the rows of {table.describe()} on {running_on()} failed: {exc}") from exc


def _read_table_rows(
    table: _Table, columns: list[str], dtype: np.dtype, squeeze: bool, start: int, stop: int
) -> np.ndarray:
    assert table.lengths is not None
    pieces = overlaps(table.lengths, start, stop)
    frames = _partitions(table, [i for i, _, _ in pieces], reader=",".join(columns))
    out = np.empty((stop - start, len(columns)), dtype)
    pos = 0
    for i, lo, hi in pieces:
        frame = frames[i]
        if len(frame) != table.lengths[i]:
            raise RuntimeError(
                f"partition {i} of {table.describe()} has {len(frame)} rows on {running_on()} but had "
                f"{table.lengths[i]} when counted: the data changed; prepare the job again."
            )
        block = frame.iloc[lo:hi][columns]
        bad = {c: str(t) for c, t in block.dtypes.items() if _numeric_dtype(t) is None}
        if bad:
            raise ValueError(
                f"columns {bad} of {table.describe()} hold non-numeric values in partition {i} (rows "
                f"{sum(table.lengths[:i])}-{sum(table.lengths[: i + 1])}); clean them or set dtype= when reading."
            )
        out[pos : pos + hi - lo] = block.to_numpy(dtype=dtype)
        pos += hi - lo
    return out.reshape(-1) if squeeze else out


class TableSource(Source):
    """Some columns of a Parquet or CSV table (features, or the label columns). The number of rows
    is known once :meth:`prepare` has counted the partitions (on the cluster)."""

    def __init__(self, table: _Table, columns: list[str], squeeze: bool, dtype: np.dtype, role: str | None):
        self.table, self.columns, self.squeeze, self.role = table, list(columns), squeeze, role
        self.dtype = np.dtype(dtype)
        self.row_shape = () if squeeze else (len(columns),)

    @property
    def n_rows(self) -> int:  # type: ignore[override]
        if self.table.lengths is None:
            raise RuntimeError(
                f"the rows of {self.describe()} are counted by prepare(client), on the cluster "
                f"(prepare(None) counts them in this process); call it first."
            )
        return sum(self.table.lengths)

    def describe(self) -> str:
        return f"{role_prefix(self.role)}{self.table.describe()} columns {brief(self.columns)}"

    def prepare(self, client: Any) -> TableSource:
        """Count the rows of every partition where they will be read: in tasks on the cluster
        (only the counts come back), or in this process when ``client`` is None. Shared with the
        other source of the same table, so x and y count once."""
        table = self.table
        if table.lengths is None:
            n, indices = table.npartitions, list(range(table.npartitions))
            if client is None:
                table.lengths = _count_rows(table, indices)
            else:
                step = max(1, math.ceil(n / (4 * max(1, len(client.nthreads())))))
                batches = [indices[i : i + step] for i in range(0, n, step)]
                futures = [client.submit(_count_rows, table, b, pure=False) for b in batches]
                table.lengths = [length for counts in client.gather(futures) for length in counts]
        return self

    def read(self, start: int, stop: int) -> np.ndarray:
        if self.table.lengths is None:
            self.prepare(None)
        start, stop = self._check_range(start, stop)
        return _read_table_rows(self.table, self.columns, self.dtype, self.squeeze, start, stop)

    def access_check(self) -> Callable[[], str | None]:
        t = self.table
        return _TableCheck(t.describe(), t.files, t.local, t.storage_options)

    def shard(self, start: int, stop: int, client: Any, worker: str) -> ShardReader:
        start, stop = self._check_range(start, stop)
        return _TableReader(start, stop, self.row_shape, self.dtype, self.table, self.columns, self.squeeze)


@dataclass(frozen=True, eq=False)
class _TableCheck:
    what: str
    files: list[str]
    local: bool
    storage_options: dict | None

    def __call__(self) -> str | None:
        try:
            if self.local:  # stat every file: cheap
                for path in self.files:
                    if not os.path.isfile(path):
                        return f"file {path} of {self.what} does not exist on this worker"
                    if not os.access(path, os.R_OK):
                        return f"file {path} of {self.what} is not readable on this worker (permission denied)"
                return None
            from fsspec.core import url_to_fs

            fs, _ = url_to_fs(self.files[0], **(self.storage_options or {}))
            step = max(1, len(self.files) // 16)  # remote: a spread sample, to stay quick
            for path in self.files[::step] + self.files[-1:]:
                if not fs.exists(path):
                    return f"file {path} of {self.what} does not exist as seen from this worker"
        except Exception as exc:  # noqa: BLE001
            return f"cannot check {self.what} on this worker: {exc}"
        return None


class _TableReader(ShardReader):
    def __init__(self, start, stop, row_shape, dtype, table: _Table, columns: list[str], squeeze: bool):
        super().__init__(start, stop, row_shape, dtype)
        self.table, self.columns, self.squeeze = table, columns, squeeze

    def _load(self, resolved: list) -> np.ndarray:
        try:
            return _read_table_rows(self.table, self.columns, self.dtype, self.squeeze, self.start, self.stop)
        except Exception as exc:
            raise rewrap(
                exc,
                f"reading rows [{self.start}, {self.stop}) of {self.table.describe()} on {running_on()} failed: {exc}",
            ) from exc


def _table_files(fmt: str, path: Any, storage_options: dict | None) -> tuple[list[str], bool]:
    """The files behind ``path`` (globs and Parquet directories expanded) and whether they are local."""
    from fsspec.core import get_fs_token_paths
    from fsspec.implementations.local import LocalFileSystem

    fs, _, paths = get_fs_token_paths(path, mode="rb", storage_options=storage_options or {})
    files: list[str] = []
    for p in paths:
        if fmt == "Parquet" and fs.isdir(p):
            files += sorted(
                f for f in fs.find(p) if not any(part.startswith(("_", ".")) for part in f[len(p) :].split("/") if part)
            )
        else:
            files.append(p)
    local = isinstance(fs, LocalFileSystem)
    return (files if local else [fs.unstrip_protocol(f) for f in files]), local


def _from_table(
    fmt: str,
    path: Any,
    label: str | list[str],
    features: list[str] | None,
    storage_options: dict | None,
    read_kwargs: dict,
) -> tuple[TableSource, TableSource]:
    import dask.base

    dd = _dask_dataframe()
    if isinstance(path, (list, tuple)):
        path = [absolute_path(os.fspath(p), storage_options) for p in path]
    else:
        path = absolute_path(os.fspath(path), storage_options)
    what = f"{fmt} {path}"
    kwargs = dict(read_kwargs)
    try:
        files, local = _table_files(fmt, path, storage_options)
        if not files:
            raise FileNotFoundError(f"{path} matches no files")
        if fmt == "CSV" and "blocksize" not in kwargs:
            # dask's default block size depends on the memory and cores of the machine that opens
            # the file; pin it so that every worker cuts the same partitions as the client.
            from dask.dataframe.io.csv import AUTO_BLOCKSIZE
            from fsspec.utils import infer_compression

            compression = kwargs.get("compression", "infer")
            compression = infer_compression(files[0]) if compression == "infer" else compression
            kwargs["blocksize"] = None if compression else AUTO_BLOCKSIZE
        reader = dd.read_csv if fmt == "CSV" else dd.read_parquet
        frame = reader(path, storage_options=storage_options, **kwargs)
    except (OSError, ValueError) as exc:
        raise rewrap(
            exc,
            f"cannot open {what}: {exc}. The client reads its schema (Parquet footers, or a sample of the "
            f"CSV) and the workers read its rows, so both must reach the path.",
        ) from None

    known = [str(c) for c in frame.columns]
    labels = [label] if isinstance(label, str) else list(label)
    if not labels:
        raise ValueError(f"label must name at least one column of {what}; its columns are {known}.")
    for kind, names in (("label", labels), ("feature", list(features or []))):
        unknown = [c for c in names if c not in known]
        if unknown:
            raise ValueError(f"{kind} column(s) {unknown} not found in {what}; its columns are {known}.")
    feats = [c for c in known if c not in labels] if features is None else list(features)
    if not feats:
        raise ValueError(f"{what} has no feature columns besides the label(s) {labels}.")
    dtypes = {c: _numeric_dtype(frame.dtypes[c]) for c in feats + labels}
    bad = {c: str(frame.dtypes[c]) for c, t in dtypes.items() if t is None}
    if bad:
        raise ValueError(
            f"column(s) {bad} of {what} do not hold numbers. dtrain trains on numeric columns: leave them "
            f"out with features=[...] or encode them as numbers first (e.g. category codes)."
        )
    columns = list(dict.fromkeys(feats + labels))
    token = dask.base.tokenize(fmt, path, storage_options, kwargs, columns)  # the cache key
    table = _Table(fmt, path, storage_options, kwargs, columns, 2, frame.npartitions, token, files, local)
    with _LOCK:
        _FRAMES[token] = frame  # this process opened it already
    x = TableSource(table, feats, False, np.result_type(*(dtypes[c] for c in feats)), "x")
    y = TableSource(table, labels, len(labels) == 1, np.result_type(*(dtypes[c] for c in labels)), "y")
    return x, y


def from_parquet(
    path: Any,
    label: str | list[str],
    features: list[str] | None = None,
    storage_options: dict | None = None,
    **read_kwargs: Any,
) -> tuple[TableSource, TableSource]:
    """(x, y) from a Parquet file, directory or glob read with ``dask.dataframe.read_parquet``
    (``read_kwargs`` go to it). ``features`` default to every column that is not a label; one
    label column gives 1-D targets, several give 2-D."""
    return _from_table("Parquet", path, label, features, storage_options, read_kwargs)


def from_csv(
    path: Any,
    label: str | list[str],
    features: list[str] | None = None,
    storage_options: dict | None = None,
    **read_kwargs: Any,
) -> tuple[TableSource, TableSource]:
    """(x, y) from CSV file(s) read with ``dask.dataframe.read_csv`` (``read_kwargs`` go to it,
    e.g. ``blocksize="64MB"``); see :func:`from_parquet` for ``label`` and ``features``."""
    return _from_table("CSV", path, label, features, storage_options, read_kwargs)
