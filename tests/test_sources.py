"""Data sources against a NumPy oracle, on real clusters: each worker gets exactly its rows, from
the right place, and the client never holds (or computes) a Dask or file-backed dataset."""
from __future__ import annotations

import os
import pickle
import sys

import numpy as np
import pytest

pytest.importorskip("distributed")  # a base dependency; without it there is nothing to test
import dask.array as da  # noqa: E402
from distributed import get_worker

from dtrain import sources
from dtrain.sources import (
    ArraySource,
    DaskArraySource,
    NpySource,
    Source,
    TableSource,
    as_source,
    check_same_rows,
    from_csv,
    from_npy,
    from_parquet,
)

# dask's Parquet reader still calls reset_index(inplace=True), which pandas 3.1 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword in DataFrame.reset_index")

CLIENT_PID = os.getpid()
N, F = 103, 5
RANGES = [(0, 7), (7, 30), (29, 64), (64, 103)]  # uneven; most cross a chunk or partition boundary


def grid(n: int = N, f: int = F, dtype=np.float32) -> np.ndarray:
    """Row i holds 100*i + column: a misplaced row or column shows."""
    return (100 * np.arange(n)[:, None] + np.arange(f)).astype(dtype)


def frame(n: int = N):
    pd = pytest.importorskip("pandas")  # the `data` extra: only the table tests need it
    x = grid(n, 6, np.float64)
    df = pd.DataFrame(x, columns=[f"f{j}" for j in range(6)])
    df["label"] = np.arange(n) % 3
    df["target"] = np.arange(n) * 0.5
    return df


def _load(reader, resolved):
    """The rank task's part: where it ran, and the rows it loaded there."""
    return get_worker().address, os.getpid(), reader.load(resolved)


def load_on(client, reader, worker: str) -> np.ndarray:
    future = client.submit(
        _load, reader, reader.dependencies, workers=[worker], allow_other_workers=False, pure=False
    )
    address, pid, rows = future.result()
    assert address == worker and pid != CLIENT_PID
    return rows


def check_shards(client, source: Source, expected: np.ndarray, ranges=RANGES) -> None:
    workers = sorted(client.nthreads())
    for k, (lo, hi) in enumerate(ranges):
        rows = load_on(client, source.shard(lo, hi, client, workers[k % len(workers)]), workers[k % len(workers)])
        assert rows.dtype == source.dtype and rows.shape == (hi - lo, *source.row_shape)
        np.testing.assert_array_equal(rows, expected[lo:hi])


def check_metadata(source: Source, expected: np.ndarray) -> None:
    assert (source.n_rows, source.row_shape, source.dtype) == (len(expected), expected.shape[1:], expected.dtype)
    np.testing.assert_array_equal(source.read(0, source.n_rows), expected)
    np.testing.assert_array_equal(source.read(13, 71), expected[13:71])
    assert source.row_nbytes(np.float64) == 8 * int(np.prod(expected.shape[1:]))


# -- NumPy arrays ---------------------------------------------------------------------------------


def test_array_source_matches_numpy():
    x = grid()
    source = as_source(x, "x")
    assert isinstance(source, ArraySource) and "x" in source.describe()
    check_metadata(source, x)
    check_metadata(as_source(x.tolist(), "x"), x.astype(np.float64))
    assert as_source(np.arange(4), "y").row_shape == ()
    assert as_source(source, "y") is source
    with pytest.raises(ValueError, match=r"rows \[90, 110\) are outside"):
        source.read(90, 110)


def test_pickled_array_source_leaves_its_data_behind():
    x = np.zeros((10_000, 10))
    copy = pickle.loads(pickle.dumps(as_source(x, "x")))
    assert len(pickle.dumps(as_source(x, "x"))) < 1000 and copy.n_rows == 10_000
    with pytest.raises(RuntimeError, match="pickled without its rows"):
        copy.read(0, 1)


@pytest.mark.parametrize(
    "value, message",
    [
        ("train.csv", r"x, y = dtrain.from_csv\('train.csv', label=...\)"),
        ("train.parquet", r"dtrain.from_parquet"),
        ("notes.txt", "cannot read"),
        (["a", "b"], "must hold numbers"),
        (3.0, "received a scalar"),
        ([[1, 2], [3]], "could not be read as a numeric array"),
    ],
)
def test_as_source_refuses_what_it_cannot_train_on(value, message):
    with pytest.raises(ValueError, match=message):
        as_source(value, "x")


def test_as_source_points_tables_and_pairs_to_the_right_call(tmp_path):
    import dask.dataframe as dd

    with pytest.raises(ValueError, match=r"to_dask_array\(lengths=True\)"):
        as_source(dd.from_pandas(frame(), npartitions=2), "x")
    frame().to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ValueError, match="unpack it first"):
        as_source(from_csv(tmp_path / "t.csv", label="label"), "x")


def _held_bytes(key, dask_worker) -> int:
    """Size of the buffer behind what the worker stores under ``key`` (not just the view)."""
    root = dask_worker.data[key]
    if isinstance(root, tuple):  # (1-byte lead, rows): see ArraySource.shard
        root = root[1]
    while getattr(root, "base", None) is not None:
        root = root.base
    return memoryview(root).nbytes


def test_array_shards_send_only_their_slice(client2):
    x = grid(dtype=np.float64)
    source = as_source(x, "x")
    check_shards(client2, source, x)
    worker = sorted(client2.nthreads())[1]
    reader = source.shard(29, 64, client2, worker)
    held = client2.run(_held_bytes, reader.dependencies[0].key, workers=[worker])
    slice_bytes = 35 * F * 8  # about a third of the array
    assert slice_bytes <= held[worker] < 1.5 * slice_bytes  # the slice (in its message), not the array


# -- Dask arrays ----------------------------------------------------------------------------------


def _on_workers_only(block):
    get_worker()  # raises ValueError outside a worker's task, e.g. in the client process
    return block


def test_dask_array_chunks_stay_on_the_cluster(client2):
    x = grid()
    lazy = da.from_array(x, chunks=(17, 2)).map_blocks(_on_workers_only, dtype=x.dtype, meta=np.empty((0, 0), x.dtype))
    source = as_source(lazy, "x")
    assert isinstance(source, DaskArraySource) and "in 7 chunks" in source.describe()
    assert (source.n_rows, source.row_shape, source.dtype) == (N, (F,), x.dtype)

    prepared = source.prepare(client2)
    assert prepared.prepare(client2) is prepared
    held = prepared.locality(0, N, client2)
    assert set(held) <= set(client2.nthreads()) and sum(held.values()) == N * F * 4
    assert prepared.locality(29, 64, client2) and sum(prepared.locality(29, 64, client2).values()) == 35 * F * 4
    reader = prepared.shard(29, 64, client2, sorted(client2.nthreads())[0])
    assert len(reader.dependencies) == 3 and pickle.loads(pickle.dumps(reader)).dependencies == []
    check_shards(client2, prepared, x)
    np.testing.assert_array_equal(prepared.read(5, 40), x[5:40])  # computed on the cluster, gathered here
    labels = as_source(da.arange(N, chunks=25), "y").prepare(client2)  # 1-D targets
    assert labels.row_shape == ()
    check_shards(client2, labels, np.arange(N))


def test_dask_array_needs_known_chunks_and_prepare(client2):
    x = da.from_array(grid(), chunks=20)
    with pytest.raises(ValueError, match=r"unknown chunk sizes.*compute_chunk_sizes\(\)"):
        as_source(x[x[:, 0] > 500], "x")
    with pytest.raises(RuntimeError, match=r"call prepare\(client\)"):
        as_source(x, "x").shard(0, 10, client2, sorted(client2.nthreads())[0])


def test_lengths_must_match_with_chunks_named():
    y = as_source(da.zeros(100, chunks=30), "y")
    with pytest.raises(ValueError, match=r"different numbers of rows: 103 in .*, 100 in Dask array y .* 4 chunks of \(30, 30, 30, 10\)"):
        check_same_rows(as_source(grid(), "x"), y)


# -- .npy files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["path", "pathlib", "file-url"])
def test_npy_rows_are_read_by_each_worker(client2, tmp_path, kind):
    x = grid()
    np.save(tmp_path / "x.npy", x)
    value = {"path": str(tmp_path / "x.npy"), "pathlib": tmp_path / "x.npy", "file-url": f"file://{tmp_path}/x.npy"}[kind]
    source = from_npy(value) if kind == "file-url" else as_source(value, "x")
    assert isinstance(source, NpySource) and source.path.endswith("x.npy")
    check_metadata(source, x)
    assert len(pickle.dumps(source)) < 1000  # metadata only
    assert set(client2.run(source.access_check()).values()) == {None}
    check_shards(client2, source, x)
    # 1-D targets and Fortran-ordered files (local: memory-mapped) read the same way
    np.save(tmp_path / "y.npy", np.arange(N, dtype=np.int64))
    check_shards(client2, as_source(tmp_path / "y.npy", "y"), np.arange(N))
    if kind != "file-url":
        np.save(tmp_path / "xf.npy", np.asfortranarray(x))
        check_metadata(as_source(tmp_path / "xf.npy", "x"), x)


def test_npy_errors_name_the_file(client2, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"x: the .npy file .*missing.npy does not exist"):
        as_source(tmp_path / "missing.npy", "x")
    np.save(tmp_path / "o.npy", np.array([{"a": 1}, None]), allow_pickle=True)
    with pytest.raises(ValueError, match=r"o.npy\) must hold numbers, received dtype object"):
        as_source(tmp_path / "o.npy", "x")
    np.save(tmp_path / "s.npy", np.float32(1))
    with pytest.raises(ValueError, match="scalar"):
        as_source(tmp_path / "s.npy", "x")
    np.save(tmp_path / "f.npy", np.asfortranarray(grid()))
    with pytest.raises(ValueError, match="Fortran order"):
        from_npy(f"file://{tmp_path}/f.npy")

    np.save(tmp_path / "gone.npy", grid())
    source = as_source(tmp_path / "gone.npy", "x")
    os.rename(tmp_path / "gone.npy", tmp_path / "moved.npy")
    reasons = client2.run(source.access_check())
    assert len(reasons) == 2 and all(f"file {tmp_path}/gone.npy does not exist on this worker" == r for r in reasons.values())
    worker = sorted(client2.nthreads())[0]
    with pytest.raises(FileNotFoundError, match=f"gone.npy on worker {worker} failed"):
        load_on(client2, source.shard(0, 5, client2, worker), worker)
    np.save(tmp_path / "gone.npy", grid(50))
    assert "holds shape (50, 5) float32, but shape (103, 5)" in source.access_check()()


# -- Parquet and CSV ------------------------------------------------------------------------------


@pytest.fixture
def parquet_dir(tmp_path):
    """Three files of uneven length, row groups of 10 rows."""
    df, root = frame(), tmp_path / "table"
    root.mkdir()
    for k, (lo, hi) in enumerate([(0, 40), (40, 55), (55, N)]):
        df.iloc[lo:hi].to_parquet(root / f"part-{k}.parquet", row_group_size=10, index=False)
    return root


@pytest.fixture
def no_reads_here(monkeypatch):
    """Fail if the client process reads table partitions: counting and loading run on workers."""

    def refuse(*args, **kwargs):
        raise AssertionError("table partitions were read in the client process")

    monkeypatch.setattr(sources, "_read_partitions", refuse)


@pytest.mark.parametrize("split_row_groups", [True, "infer"])
def test_parquet_shards_read_on_workers(client2, parquet_dir, split_row_groups, no_reads_here):
    df = frame()
    x, y = from_parquet(parquet_dir, label="label", split_row_groups=split_row_groups)
    assert isinstance(x, TableSource) and x.table is y.table
    assert x.columns == [f"f{j}" for j in range(6)] + ["target"] and (x.row_shape, y.row_shape) == ((7,), ())
    assert (x.dtype, y.dtype) == (np.float64, np.int64)
    with pytest.raises(RuntimeError, match=r"counted by prepare\(client\)"):
        x.n_rows
    assert x.prepare(client2) is x and y.n_rows == N  # counted once, on the cluster, for both
    assert len(x.table.lengths) == (11 if split_row_groups is True else 3)  # 4 + 2 + 5 row groups
    assert set(client2.run(x.access_check()).values()) == {None}
    check_shards(client2, x, df.drop(columns="label").to_numpy())
    check_shards(client2, y, df["label"].to_numpy())


def test_parquet_feature_subset_and_several_labels(client2, parquet_dir):
    df = frame()
    # Two of eight columns: the optimiser would fuse such reads into fewer partitions; shards
    # still get partition i as counted.
    x, y = from_parquet(f"file://{parquet_dir}", label=["target", "label"], features=["f4", "f1"], split_row_groups=True)
    assert (x.row_shape, y.row_shape, y.dtype) == ((2,), (2,), np.float64)
    x.prepare(client2)
    check_shards(client2, x, df[["f4", "f1"]].to_numpy())
    check_shards(client2, y, df[["target", "label"]].to_numpy(dtype=np.float64))
    check_metadata(y, df[["target", "label"]].to_numpy(dtype=np.float64))


def test_csv_partitions_match_on_every_worker(client2, tmp_path, no_reads_here):
    df = frame()
    df.iloc[:60].to_csv(tmp_path / "a.csv", index=False)
    df.iloc[60:].to_csv(tmp_path / "b.csv", index=False)
    x, y = from_csv(tmp_path / "*.csv", label="target", features=["f0", "f5", "label"], blocksize=500)
    x.prepare(client2)
    assert len(x.table.lengths) >= 6 and x.n_rows == N
    # workers open the table from (path, kwargs) and must cut the same partitions as the client
    assert set(client2.run(lambda: sources._open_frame(x.table).npartitions).values()) == {x.table.npartitions}
    check_shards(client2, x, df[["f0", "f5", "label"]].to_numpy(dtype=np.float64))
    check_shards(client2, y, df["target"].to_numpy())


def test_csv_block_is_parsed_once_for_x_and_y(tmp_path):
    df = frame()
    df.to_csv(tmp_path / "t.csv", index=False)
    x, y = from_csv(str(tmp_path / "t.csv"), label="label", blocksize=1000)
    x.prepare(None)  # counted in this process
    np.testing.assert_array_equal(x.read(20, 90), df.drop(columns="label").to_numpy()[20:90])
    os.rename(tmp_path / "t.csv", tmp_path / "moved.csv")
    np.testing.assert_array_equal(y.read(20, 90), df["label"].to_numpy()[20:90])  # from the cache
    with pytest.raises(FileNotFoundError):  # taken by both: gone from the cache
        x.read(20, 90)


def test_table_errors_name_columns_and_files(tmp_path):
    df = frame()
    df["city"] = "Lyon"
    df.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ValueError, match=r"label column\(s\) \['price'\] not found in CSV .*t.csv; its columns are \['f0', .*'city'\]"):
        from_csv(tmp_path / "t.csv", label="price")
    with pytest.raises(ValueError, match=r"feature column\(s\) \['f9'\] not found"):
        from_csv(tmp_path / "t.csv", label="label", features=["f0", "f9"])
    with pytest.raises(ValueError, match=r"\{'city': '.*'\} of CSV .* do not hold numbers.*features=\[...\]"):
        from_csv(tmp_path / "t.csv", label="label")
    with pytest.raises(ValueError, match="no feature columns"):
        from_csv(tmp_path / "t.csv", label=list(df.columns.drop("city")), features=None, usecols=list(df.columns.drop("city")))
    with pytest.raises(FileNotFoundError, match=r"cannot open CSV .*nothing.csv"):
        from_csv(tmp_path / "nothing.csv", label="label")
    with pytest.raises(FileNotFoundError, match=r"cannot open Parquet"):
        from_parquet(tmp_path / "nothing.parquet", label="label")


def test_table_missing_on_workers_fails_before_training(client2, tmp_path):
    frame().to_csv(tmp_path / "t.csv", index=False)
    x, _ = from_csv(tmp_path / "t.csv", label="label", blocksize=1000)
    os.remove(tmp_path / "t.csv")
    reasons = client2.run(x.access_check())
    assert set(reasons.values()) == {f"file {tmp_path}/t.csv of CSV {tmp_path}/t.csv does not exist on this worker"}
    with pytest.raises(FileNotFoundError, match=r"counting the rows of CSV .*t.csv on worker tcp://"):
        x.prepare(client2)


def test_missing_data_extra_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask.dataframe", None)
    with pytest.raises(ImportError, match=r'pip install "dtrain\[data\]"'):
        from_csv(tmp_path / "t.csv", label="y")
