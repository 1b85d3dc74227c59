"""Data sources against a NumPy oracle, on real clusters: each worker gets exactly its rows, from
the right place, and the client never holds (or computes) a Dask or file-backed dataset."""

from __future__ import annotations

import os
import pickle
import sys

import numpy as np
import pytest
from conftest import blobs, small_model

import dtrain

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
    npz,
    synthetic,
    tables,
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
    future = client.submit(_load, reader, reader.dependencies, workers=[worker], allow_other_workers=False, pure=False)
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
    with pytest.raises(
        ValueError, match=r"different numbers of rows: 103 in .*, 100 in Dask array y .* 4 chunks of \(30, 30, 30, 10\)"
    ):
        check_same_rows(as_source(grid(), "x"), y)


# -- .npy files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["path", "pathlib", "file-url"])
def test_npy_rows_are_read_by_each_worker(client2, tmp_path, kind):
    x = grid()
    np.save(tmp_path / "x.npy", x)
    value = {"path": str(tmp_path / "x.npy"), "pathlib": tmp_path / "x.npy", "file-url": f"file://{tmp_path}/x.npy"}[
        kind
    ]
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
    assert len(reasons) == 2 and all(
        f"file {tmp_path}/gone.npy does not exist on this worker" == r for r in reasons.values()
    )
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

    monkeypatch.setattr(tables, "_read_partitions", refuse)


@pytest.mark.parametrize("split_row_groups", [True, "infer"])
def test_parquet_shards_read_on_workers(client2, parquet_dir, split_row_groups, no_reads_here):
    df = frame()
    x, y = from_parquet(parquet_dir, label="label", split_row_groups=split_row_groups)
    assert isinstance(x, TableSource) and x.table is y.table
    assert x.columns == [f"f{j}" for j in range(6)] + ["target"] and (x.row_shape, y.row_shape) == ((7,), ())
    assert (x.dtype, y.dtype) == (np.float64, np.int64)
    with pytest.raises(RuntimeError, match=r"counted by prepare\(client\)"):
        _ = x.n_rows
    assert x.prepare(client2) is x and y.n_rows == N  # counted once, on the cluster, for both
    assert len(x.table.lengths) == (11 if split_row_groups is True else 3)  # 4 + 2 + 5 row groups
    assert set(client2.run(x.access_check()).values()) == {None}
    check_shards(client2, x, df.drop(columns="label").to_numpy())
    check_shards(client2, y, df["label"].to_numpy())


def test_parquet_feature_subset_and_several_labels(client2, parquet_dir):
    df = frame()
    # Two of eight columns: the optimiser would fuse such reads into fewer partitions; shards
    # still get partition i as counted.
    x, y = from_parquet(
        f"file://{parquet_dir}", label=["target", "label"], features=["f4", "f1"], split_row_groups=True
    )
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
    assert set(client2.run(lambda: tables._open_frame(x.table).npartitions).values()) == {x.table.npartitions}
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
    with pytest.raises(
        ValueError, match=r"label column\(s\) \['price'\] not found in CSV .*t.csv; its columns are \['f0', .*'city'\]"
    ):
        from_csv(tmp_path / "t.csv", label="price")
    with pytest.raises(ValueError, match=r"feature column\(s\) \['f9'\] not found"):
        from_csv(tmp_path / "t.csv", label="label", features=["f0", "f9"])
    with pytest.raises(ValueError, match=r"\{'city': '.*'\} of CSV .* do not hold numbers.*features=\[...\]"):
        from_csv(tmp_path / "t.csv", label="label")
    with pytest.raises(ValueError, match="no feature columns"):
        from_csv(
            tmp_path / "t.csv",
            label=list(df.columns.drop("city")),
            features=None,
            usecols=list(df.columns.drop("city")),
        )
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


# -- .npz archives --------------------------------------------------------------------------------


@pytest.fixture
def no_npz_reads_here(monkeypatch):
    """Fail if the client process reads rows of a .npz member: only the workers do."""

    def refuse(*args, **kwargs):
        raise AssertionError("rows of a .npz member were read in the client process")

    monkeypatch.setattr(npz, "_read_npz_rows", refuse)


def _save_npz(path, compressed: bool, **arrays) -> None:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)


@pytest.mark.cluster
@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "compressed"])
@pytest.mark.parametrize("kind", ["path", "file-url"])
def test_npz_rows_are_read_by_each_worker(client2, tmp_path, compressed, kind, no_npz_reads_here):
    x, labels = grid(), np.arange(N) % 3
    _save_npz(tmp_path / "d.npz", compressed, features=x, labels=labels, other=np.zeros(3))
    path = tmp_path / "d.npz" if kind == "path" else f"file://{tmp_path}/d.npz"
    xs, ys = sources.from_npz(path, x="features", y="labels")
    assert isinstance(xs, sources.NpzSource) and xs.path.endswith("d.npz")
    assert ("compressed member 'features.npy'" in xs.describe()) == compressed
    assert (xs.n_rows, xs.row_shape, xs.dtype, ys.row_shape, ys.dtype) == (N, (F,), x.dtype, (), labels.dtype)
    assert len(pickle.dumps(xs)) < 1000 and len(pickle.dumps(xs.shard(0, 50, client2, "w"))) < 1000  # metadata only
    assert set(client2.run(xs.access_check()).values()) == {None}
    check_shards(client2, xs, x)
    check_shards(client2, ys, labels)


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "compressed"])
def test_npz_reads_any_range_in_this_process(tmp_path, compressed):
    x, y = grid(), one_hot_rows(N)
    _save_npz(tmp_path / "d.npz", compressed, x=x, y=y)
    xs, ys = dtrain.from_npz(str(tmp_path / "d.npz"))  # default member names x and y
    check_metadata(xs, x)
    check_metadata(ys, y)
    assert xs.read(50, 50).shape == (0, F)
    pieces = [xs.read(lo, hi) for lo, hi in [(0, 7), (7, 29), (29, 64), (64, N)]]
    np.testing.assert_array_equal(np.concatenate(pieces), x)


def one_hot_rows(n: int) -> np.ndarray:
    return np.eye(3, dtype=np.float32)[np.arange(n) % 3]


def test_npz_compressed_member_streams_to_deep_rows(tmp_path):
    """Rows far into a compressed member: the worker decompresses (and drops) several MiB first."""
    x = np.random.default_rng(0).standard_normal((200_000, 4))  # 6.4 MB: many skip chunks
    np.savez_compressed(tmp_path / "big.npz", x=x, y=np.zeros(len(x)))
    xs, _ = dtrain.from_npz(tmp_path / "big.npz")
    np.testing.assert_array_equal(xs.read(180_000, 180_010), x[180_000:180_010])
    np.testing.assert_array_equal(xs.read(199_990, 200_000), x[199_990:])


def test_npz_from_an_fsspec_memory_url(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    x = grid()
    for compressed in (False, True):
        _save_npz(tmp_path / "d.npz", compressed, x=x, y=np.arange(N))
        with fsspec.open("memory://npz-test/d.npz", "wb") as f:
            f.write((tmp_path / "d.npz").read_bytes())
        xs, ys = dtrain.from_npz("memory://npz-test/d.npz")
        assert xs.path == "memory://npz-test/d.npz"
        check_metadata(xs, x)
        np.testing.assert_array_equal(ys.read(10, 20), np.arange(10, 20))
        assert xs.access_check()() is None  # the memory filesystem is this process's: checked here
    fsspec.filesystem("memory").rm("/npz-test", recursive=True)


def test_npz_errors_name_the_file_and_member(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"the .npz file .*missing.npz does not exist"):
        dtrain.from_npz(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match=r"text.npz is not a .npz file \(not a zip archive"):
        dtrain.from_npz(tmp_path / "text.npz")
    np.savez(
        tmp_path / "d.npz",
        features=grid(),
        labels=np.arange(N),
        flat=np.arange(N),
        short=np.arange(N - 1),
        objects=np.array([{"a": 1}, None]),
        fortran=np.asfortranarray(grid()),
    )
    path = tmp_path / "d.npz"
    with pytest.raises(
        ValueError, match=r"x: the .npz file .*d.npz has no array 'x'; it holds \['features', 'labels', "
    ):
        dtrain.from_npz(path)
    with pytest.raises(ValueError, match=r"y: the .npz file .*d.npz has no array 'target'"):
        dtrain.from_npz(path, x="features", y="target")
    with pytest.raises(
        ValueError, match=r"x \(member 'flat.npy' of .npz file .*d.npz\) must be 2-D .* shape is \(103,\)"
    ):
        dtrain.from_npz(path, x="flat", y="labels")
    with pytest.raises(
        ValueError,
        match=r"d.npz: x \(features.npy, shape \(103, 5\)\) and y \(short.npy, shape \(102,\)\) have different numbers of rows",
    ):
        dtrain.from_npz(path, x="features", y="short")
    with pytest.raises(
        ValueError, match=r"member 'objects.npy' of .npz file .*d.npz\) must hold numbers, received dtype object"
    ):
        dtrain.from_npz(path, x="features", y="objects")
    with pytest.raises(ValueError, match=r"'fortran.npy' .* Fortran order.*np.ascontiguousarray"):
        dtrain.from_npz(path, x="fortran", y="labels")
    with pytest.raises(ValueError, match=r"x, y = dtrain.from_npz\('data.npz', x='x', y='y'\)"):
        as_source("data.npz", "x")
    with pytest.raises(ValueError, match="names of two arrays"):
        dtrain.from_npz(path, x=None)


@pytest.mark.cluster
def test_npz_changed_or_missing_on_workers_is_reported(client2, tmp_path):
    np.savez(tmp_path / "d.npz", x=grid(), y=np.arange(N))
    xs, _ = dtrain.from_npz(tmp_path / "d.npz")
    np.savez(tmp_path / "d.npz", x=grid(50), y=np.arange(50))
    reasons = client2.run(xs.access_check())
    assert all("holds shape (50, 5) float32, but shape (103, 5)" in r for r in reasons.values())
    os.remove(tmp_path / "d.npz")
    assert set(client2.run(xs.access_check()).values()) == {f"file {tmp_path}/d.npz does not exist on this worker"}
    worker = sorted(client2.nthreads())[0]
    with pytest.raises(FileNotFoundError, match=f"member 'x.npy' of .npz file .*d.npz on worker {worker} failed"):
        load_on(client2, xs.shard(0, 5, client2, worker), worker)


# -- generated data -------------------------------------------------------------------------------


@pytest.fixture
def no_generation_here(monkeypatch):
    """Fail if the client process generates synthetic rows: only the workers do."""

    def refuse(*args, **kwargs):
        raise AssertionError("synthetic rows were generated in the client process")

    monkeypatch.setattr(synthetic._Synthetic, "rows", refuse)


BLOCK = sources.SYNTHETIC_BLOCK
BLOCK_RANGES = [(0, 1), (1, BLOCK - 1), (BLOCK - 1, BLOCK + 1), (BLOCK + 1, 2 * BLOCK), (2 * BLOCK, 2 * BLOCK + 700)]


def test_synthetic_rows_do_not_depend_on_the_ranges_read():
    n = 2 * BLOCK + 700
    x, y = dtrain.from_synthetic(n, 6, 4, seed=3)
    assert isinstance(x, sources.SyntheticSource) and "seed=3" in x.describe() and "one-hot" in y.describe()
    assert (x.n_rows, x.row_shape, x.dtype, y.row_shape, y.dtype) == (n, (6,), np.float32, (4,), np.float32)
    whole_x, whole_y = x.read(0, n), y.read(0, n)
    for parts in (BLOCK_RANGES, [(0, n)], [(k, min(k + 997, n)) for k in range(0, n, 997)]):
        np.testing.assert_array_equal(np.concatenate([x.read(lo, hi) for lo, hi in parts]), whole_x)
        np.testing.assert_array_equal(np.concatenate([y.read(lo, hi) for lo, hi in parts]), whole_y)
    assert x.read(5, 5).shape == (0, 6) and y.read(n, n).shape == (0, 4)
    # one-hot rows; the same labels as one_hot=False; every class present in about equal numbers
    assert set(np.unique(whole_y)) == {0.0, 1.0} and (whole_y.sum(axis=1) == 1).all()
    _, labels = dtrain.from_synthetic(n, 6, 4, seed=3, one_hot=False)
    assert (labels.row_shape, labels.dtype) == ((), np.int64)
    np.testing.assert_array_equal(labels.read(0, n), whole_y.argmax(axis=1))
    assert np.bincount(labels.read(0, n)).min() > n / 4 * 0.9
    # a smaller dataset is the prefix of a larger one; another seed is other data
    np.testing.assert_array_equal(dtrain.from_synthetic(100, 6, 4, seed=3)[0].read(0, 100), whole_x[:100])
    assert not np.allclose(dtrain.from_synthetic(100, 6, 4, seed=4)[0].read(0, 100), whole_x[:100])
    x64, _ = dtrain.from_synthetic(n, 6, 4, seed=3, dtype="float64")
    np.testing.assert_allclose(x64.read(0, n), whole_x, rtol=1e-6)
    assert x.row_nbytes(np.float64) == 48
    with pytest.raises(ValueError, match=r"rows \[0, 9999\) are outside"):
        x.read(0, 9999)


def test_synthetic_data_is_learnable_like_make_classification():
    x, y = dtrain.from_synthetic(1200, 20, 3, seed=0)
    xa, ya = x.read(0, 1200), y.read(0, 1200)
    model = small_model(20, classes=3)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(xa, ya, batch_size=32, epochs=5, seed=0, verbose=0)
    assert history.history["accuracy"][-1] > 0.8  # chance is 1/3


@pytest.mark.cluster
def test_synthetic_rows_are_generated_by_each_worker(client2, no_generation_here):
    n = 2 * BLOCK + 700
    x, y = dtrain.from_synthetic(n, 6, 4, seed=3, one_hot=False)
    readers = [x.shard(lo, hi, client2, "w") for lo, hi in BLOCK_RANGES]
    assert x.prepare(client2) is x and x.access_check() is None and x.locality(0, n, client2) == {}
    assert max(len(pickle.dumps(r)) for r in readers) < 1000  # a recipe, not rows
    expected_x, expected_y = _generated_here(n)  # the oracle: whole blocks, not rows()
    check_shards(client2, x, expected_x, BLOCK_RANGES)
    check_shards(client2, y, expected_y, BLOCK_RANGES)


def _generated_here(n: int) -> tuple[np.ndarray, np.ndarray]:
    spec = synthetic._synthetic_spec(n, 6, 4, 3, 1.0, False, "float32")
    labels = np.concatenate([spec._block(b, False)[0] for b in range(3)])[:n]
    blocks = np.concatenate([spec._block(b, True)[1] for b in range(3)])[:n]
    return blocks, labels


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(samples=0), r"samples to be an integer >= 1, received samples=0"),
        (dict(features=2.5), r"features to be an integer >= 1, received features=2.5"),
        (dict(classes=1), r"classes to be an integer >= 2, received classes=1"),
        (dict(seed=-1), r"seed to be an integer >= 0"),
        (dict(seed=True), r"seed to be an integer >= 0"),
        (dict(separation=float("nan")), r"separation to be a finite number >= 0"),
        (dict(separation=-1), r"separation to be a finite number >= 0"),
        (dict(one_hot="yes"), r"one_hot to be True or False"),
        (dict(dtype="int32"), r"floating-point dtype .* received dtype='int32'"),
        (dict(dtype="float33"), r"floating-point dtype .* received dtype='float33'"),
    ],
)
def test_synthetic_arguments_are_checked(kwargs, message):
    args = {"samples": 10, "features": 3, "classes": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        dtrain.from_synthetic(args.pop("samples"), args.pop("features"), args.pop("classes"), **args)


# -- training on them -----------------------------------------------------------------------------


def _float64_model(loss: str):
    model = small_model(None, classes=3, dtype="float64")
    model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    return model


def _assert_trains_like_one_process(client, x, y, loss: str, **fit_kwargs) -> None:
    """fit(x, y, client=) on the sources equals fit on the materialised arrays with as many shards."""
    shards = len(client.nthreads())
    local, distributed = _float64_model(loss), _float64_model(loss)
    local_history = local.fit(x.read(0, x.n_rows), y.read(0, y.n_rows), shards=shards, verbose=0, **fit_kwargs)
    history = distributed.fit(x, y, client=client, verbose=0, **fit_kwargs)
    for got, want in zip(distributed.get_weights(), local.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    for key in local_history.history:
        np.testing.assert_allclose(history.history[key], local_history.history[key], rtol=1e-10)


@pytest.mark.cluster
def test_synthetic_sources_train_on_a_cluster_like_one_process(client3):
    # 3 shards of 5000 rows: the last one crosses a block boundary (4096)
    x, y = dtrain.from_synthetic(5000, 20, 3, seed=11, separation=2.0)
    _assert_trains_like_one_process(
        client3, x, y, "categorical_crossentropy", batch_size=256, epochs=2, seed=5, validation_split=0.1
    )


@pytest.mark.cluster
@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "compressed"])
def test_npz_sources_train_on_a_cluster_like_one_process(client2, tmp_path, compressed):
    data_x, labels = blobs(101)  # 101 rows: uneven shards
    _save_npz(tmp_path / "d.npz", compressed, x=data_x, y=labels)
    x, y = dtrain.from_npz(tmp_path / "d.npz")
    _assert_trains_like_one_process(client2, x, y, "sparse_categorical_crossentropy", batch_size=16, epochs=2, seed=7)
