"""Checkpoints: the files written and in what order, round trips, pruning, and every way a
checkpoint can be bad (each refused with a warning, the previous good one used instead).

Most tests run on a local folder and on fsspec's in-memory filesystem. Bad checkpoints are made
by hand: bytes flipped or cut, files removed, or files forged so that only the rule under test
can refuse them (a forged manifest vouches for its forged arrays file's sha256 and size)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import warnings

import numpy as np
import pytest

from dtrain.checkpoints import (
    FORMAT,
    FORMAT_VERSION,
    Checkpoint,
    CheckpointError,
    CheckpointWarning,
    NonFiniteCheckpoint,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    spec_hash,
    write_checkpoint,
)
from dtrain.storage import Location

fsspec = pytest.importorskip("fsspec")

META = {"model": {"layers": [{"units": 64, "activation": "relu"}, {"units": 10}]}, "job_hash": "abc"}


def name(step: int) -> str:
    return f"ckpt-{step:010d}"


def state(at: int, **changes) -> Checkpoint:
    """The checkpoint of global step ``at``: arrays that say which step they belong to."""
    fields = dict(
        arrays={"params": np.arange(6, dtype=np.float32) + at, "optimizer.iterations": np.array(at, dtype=np.int64)},
        epoch=at // 10,
        step=at % 10,
        global_step=at,
        meta=META,
    )
    return Checkpoint(**{**fields, **changes})


def assert_is(checkpoint: Checkpoint | None, step: int) -> None:
    assert checkpoint is not None
    assert checkpoint.global_step == step and checkpoint.name == name(step)
    np.testing.assert_array_equal(checkpoint.arrays["params"], np.arange(6, dtype=np.float32) + step)


# -- files on either filesystem ---------------------------------------------------------------------


@pytest.fixture(params=["local", "memory"])
def directory(request, tmp_path):
    """A checkpoint directory that does not exist yet: a local path, or a memory:// URL."""
    if request.param == "local":
        yield str(tmp_path / "checkpoints")
        return
    url = f"memory://dtrain-test-checkpoints/{os.urandom(4).hex()}/checkpoints"
    yield url
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _at(directory: str, file: str = ""):
    fs, root = fsspec.core.url_to_fs(directory)
    return fs, f"{root.rstrip('/')}/{file}" if file else root


def read(directory: str, file: str) -> bytes:
    fs, path = _at(directory, file)
    return fs.cat_file(path)


def put(directory: str, file: str, data: bytes) -> None:
    fs, path = _at(directory, file)
    fs.pipe_file(path, data)


def remove(directory: str, file: str) -> None:
    fs, path = _at(directory, file)
    fs.rm_file(path)


def files(directory: str) -> list[str]:
    fs, root = _at(directory)
    fs.invalidate_cache(root)
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)) if fs.exists(root) else []


def snapshot(directory: str) -> dict[str, bytes]:
    return {file: read(directory, file) for file in files(directory)}


def manifest(directory: str, step: int) -> dict:
    return json.loads(read(directory, f"{name(step)}.json"))


def forge(directory: str, step: int, tensors: dict[str, np.ndarray], **changes) -> None:
    """Replace checkpoint ``step``'s arrays file with ``tensors``, and its manifest with one that
    vouches for them (sha256, size, dtypes, shapes), then apply ``changes`` to the manifest."""
    from safetensors.numpy import save

    data = save(tensors)
    put(directory, f"{name(step)}.safetensors", data)
    doc = manifest(directory, step)
    doc["files"] = {f"{name(step)}.safetensors": {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}}
    doc["arrays"] = {k: {"dtype": a.dtype.name, "shape": list(a.shape)} for k, a in tensors.items()}
    doc.update(changes)
    put(directory, f"{name(step)}.json", json.dumps(doc).encode())


@pytest.fixture
def three(directory):
    """``directory`` with checkpoints 10, 20 and 30; ``latest`` names 30."""
    for step in (10, 20, 30):
        write_checkpoint(directory, state(step))
    return directory


@contextlib.contextmanager
def no_warnings():
    """A context in which any warning fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# -- writing and reading back -----------------------------------------------------------------------


def test_round_trip_is_bitwise(directory):
    arrays = {
        "params": np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32),
        "optimizer.v": np.random.default_rng(1).normal(size=5),  # float64
        "half": np.array([1.5, -0.0, 65504], dtype=np.float16),
        "optimizer.iterations": np.array(123456789012, dtype=np.int64),  # 0-d stays 0-d
        "counts": np.arange(4, dtype=np.uint8),
        "mask": np.array([True, False, True]),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "strided": np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2],  # not contiguous
    }
    meta = {"model": {"layers": (64, 10)}, "plan": {"seed": 3, "ranks": 2}, "rate": 0.5}
    written = Checkpoint(arrays=arrays, epoch=4, step=7, global_step=47, meta=meta)
    location = write_checkpoint(directory, written)
    assert written.name == name(47) and written.location == location
    assert location.endswith(f"{name(47)}.safetensors")

    with no_warnings():
        loaded = load_latest(directory)
    assert (loaded.epoch, loaded.step, loaded.global_step, loaded.name, loaded.location) == (
        4,
        7,
        47,
        name(47),
        location,
    )
    assert loaded.meta == {"model": {"layers": [64, 10]}, "plan": {"seed": 3, "ranks": 2}, "rate": 0.5}
    assert set(loaded.arrays) == set(arrays)
    for key, array in arrays.items():
        got = loaded.arrays[key]
        assert (got.dtype, got.shape) == (array.dtype, array.shape), key
        assert got.tobytes() == np.ascontiguousarray(array).tobytes(), key


def test_files_written_and_manifest(directory):
    before = time.time()
    write_checkpoint(directory, state(120))
    assert files(directory) == [f"{name(120)}.json", f"{name(120)}.safetensors", "latest"]
    assert read(directory, "latest").decode().strip() == name(120)

    doc = manifest(directory, 120)
    data = read(directory, f"{name(120)}.safetensors")
    assert doc["format"] == FORMAT == "dtrain.checkpoint" and doc["format_version"] == FORMAT_VERSION == 1
    assert isinstance(doc["dtrain_version"], str) and before <= doc["created"] <= time.time()
    assert (doc["global_step"], doc["epoch"], doc["step"]) == (120, 12, 0)
    assert doc["files"] == {
        f"{name(120)}.safetensors": {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    }
    assert doc["arrays"] == {
        "params": {"dtype": "float32", "shape": [6]},
        "optimizer.iterations": {"dtype": "int64", "shape": []},
    }
    assert doc["meta"] == META


def test_file_url_and_plain_path_are_the_same_directory(tmp_path):
    location = write_checkpoint(f"file://{tmp_path}/ck", state(5))
    assert location == f"file://{tmp_path}/ck/{name(5)}.safetensors"
    assert_is(load_latest(tmp_path / "ck"), 5)
    assert_is(load_checkpoint(location), 5)


def test_list_checkpoints_oldest_first(directory):
    assert list_checkpoints(directory) == []
    for step in (3, 100, 20):
        write_checkpoint(directory, state(step), keep=5)
    assert list_checkpoints(directory) == [name(3), name(20), name(100)]


def test_each_file_goes_through_a_temporary_name_in_order(tmp_path, monkeypatch):
    """Locally: arrays, manifest, pointer, each written whole as .<name>.tmp-<hex> and renamed."""
    renames = []
    real_replace = os.replace

    def replace(src, dst):
        assert os.path.exists(src) and not os.path.exists(dst) or os.path.basename(dst) == "latest"
        renames.append((os.path.basename(src), os.path.basename(dst), open(src, "rb").read()))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    write_checkpoint(tmp_path, state(7))
    assert [dst for _, dst, _ in renames] == [f"{name(7)}.safetensors", f"{name(7)}.json", "latest"]
    for src, dst, data in renames:
        assert re.fullmatch(rf"\.{re.escape(dst)}\.tmp-[0-9a-f]+", src)
        assert data == (tmp_path / dst).read_bytes()  # complete before it got its name
    assert sorted(os.listdir(tmp_path)) == [f"{name(7)}.json", f"{name(7)}.safetensors", "latest"]  # no leftovers


def test_fsspec_writes_go_through_a_temporary_name_in_order(monkeypatch):
    url = f"memory://dtrain-test-checkpoints/{os.urandom(4).hex()}"
    fs, _ = fsspec.core.url_to_fs(url)
    moves = []
    real_mv = type(fs).mv

    def mv(self, src, dst, **kwargs):
        moves.append((src.rsplit("/", 1)[-1], dst.rsplit("/", 1)[-1]))
        return real_mv(self, src, dst, **kwargs)

    monkeypatch.setattr(type(fs), "mv", mv)
    try:
        write_checkpoint(url, state(7))
        assert [dst for _, dst in moves] == [f"{name(7)}.safetensors", f"{name(7)}.json", "latest"]
        assert all(re.fullmatch(rf"\.{re.escape(dst)}\.tmp-[0-9a-f]+", src) for src, dst in moves)
        assert files(url) == [f"{name(7)}.json", f"{name(7)}.safetensors", "latest"]
    finally:
        fs.rm(fsspec.core.url_to_fs(url)[1], recursive=True)


def test_a_failed_rename_leaves_no_temporary_file(directory, monkeypatch):
    write_checkpoint(directory, state(10))
    before = snapshot(directory)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if "://" in directory:
        monkeypatch.setattr(type(_at(directory)[0]), "mv", fail)
    else:
        monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        write_checkpoint(directory, state(20))
    monkeypatch.undo()
    assert snapshot(directory) == before


@pytest.mark.parametrize("crash_at", ["json", "latest"])
def test_a_crash_while_writing_leaves_the_previous_latest(directory, monkeypatch, crash_at):
    """A failure before the manifest (or before the pointer) is in place: the previous
    checkpoint is what load_latest returns, and nothing is half-written under a final name."""
    write_checkpoint(directory, state(10))
    real_write = Location.write

    def write(self, file, data):
        if file.endswith(crash_at):
            raise KeyboardInterrupt("killed")
        return real_write(self, file, data)

    monkeypatch.setattr(Location, "write", write)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(directory, state(20))
    monkeypatch.undo()

    assert read(directory, "latest").decode().strip() == name(10)
    expected = [name(10)] if crash_at == "json" else [name(10), name(20)]
    assert list_checkpoints(directory) == expected
    with no_warnings():
        assert_is(load_latest(directory), 10)
    write_checkpoint(directory, state(20))  # the run, restarted, writes it again
    assert_is(load_latest(directory), 20)


def test_an_interrupted_write_is_not_a_checkpoint(three):
    """What a process killed between the arrays file and the manifest leaves: the arrays file
    under its final name and the manifest's temporary file. Skipped without a warning: it is
    the expected state after a crash, and the previous checkpoint is the one to resume from."""
    put(three, f"{name(40)}.safetensors", read(three, f"{name(30)}.safetensors"))
    put(three, f".{name(40)}.json.tmp-0123abcd", b'{"format": "dtrain.chec')
    put(three, ".latest.tmp-0123abcd", b"")
    assert list_checkpoints(three) == [name(10), name(20), name(30)]
    with no_warnings():
        assert_is(load_latest(three), 30)


def test_an_interrupted_first_write_means_no_checkpoint(directory):
    write_checkpoint(directory, state(10))
    remove(directory, f"{name(10)}.json")
    remove(directory, "latest")
    with no_warnings():
        assert load_latest(directory) is None


def test_the_same_state_makes_the_same_bytes(tmp_path):
    """So a deterministic run writing a step again leaves the old manifest valid throughout."""
    arrays = {
        f"a{i}": np.arange(3, dtype=dtype)
        for i, dtype in enumerate(["float16", "float64", "int64", "uint8", "float32"])
    }
    write_checkpoint(tmp_path / "one", state(5, arrays=arrays))
    write_checkpoint(tmp_path / "two", state(5, arrays=dict(reversed(list(arrays.items())))))
    assert (tmp_path / "one" / f"{name(5)}.safetensors").read_bytes() == (
        tmp_path / "two" / f"{name(5)}.safetensors"
    ).read_bytes()


def test_rewriting_a_step_replaces_it(three):
    write_checkpoint(three, state(30, arrays={"params": np.full(6, 9.0, dtype=np.float32)}))
    assert list_checkpoints(three) == [name(10), name(20), name(30)]
    np.testing.assert_array_equal(load_latest(three).arrays["params"], np.full(6, 9.0))


@pytest.mark.parametrize("same_arrays", [True, False])
def test_a_crash_while_rewriting_a_step(three, monkeypatch, same_arrays):
    """The old manifest stays until the new one replaces it: it still vouches for identical
    arrays (a deterministic run writing the step again), and refuses different ones."""
    real_write = Location.write

    def write(self, file, data):
        if file.endswith(".json"):
            raise KeyboardInterrupt("killed")
        return real_write(self, file, data)

    monkeypatch.setattr(Location, "write", write)
    changed = {**state(30).arrays, "params": np.zeros(6, dtype=np.float32)}  # same size, other bytes
    again = state(30) if same_arrays else state(30, arrays=changed)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(three, again)
    monkeypatch.undo()
    if same_arrays:
        with no_warnings():
            assert_is(load_latest(three), 30)
    else:
        with pytest.warns(CheckpointWarning, match=rf"{name(30)}\.safetensors.*sha256"):
            assert_is(load_latest(three), 20)


# -- what is refused on writing ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_state_is_never_written(three, bad):
    before = snapshot(three)
    m = np.zeros(6, dtype=np.float32)
    m[4] = bad
    broken = state(40, arrays={**state(40).arrays, "optimizer.m": m})
    with pytest.raises(NonFiniteCheckpoint, match=r"'optimizer\.m' \(1 of 6 values\)") as info:
        write_checkpoint(three, broken)
    assert isinstance(info.value, CheckpointError)
    assert info.value.names == ["optimizer.m"]
    assert snapshot(three) == before
    assert broken.name is None and broken.location is None


def test_non_finite_state_does_not_create_the_directory(directory):
    with pytest.raises(NonFiniteCheckpoint, match="'params'"):
        write_checkpoint(directory, state(1, arrays={"params": np.array([1.0, np.nan])}))
    fs, root = _at(directory)
    assert not fs.exists(root)


@pytest.mark.parametrize(
    "changes, error, message",
    [
        ({"global_step": -1}, ValueError, "global_step"),
        ({"global_step": True}, ValueError, "global_step"),
        ({"epoch": 1.5}, ValueError, "epoch"),
        ({"step": None}, ValueError, "step"),
        ({"arrays": {}}, ValueError, "non-empty dict"),
        ({"arrays": {"x": np.array([1j])}}, TypeError, "complex128"),
        ({"arrays": {"x": np.array(["a"])}}, TypeError, "cannot hold"),
        ({"meta": {"loss": float("nan")}}, TypeError, "JSON-able"),
        ({"meta": {"f": object()}}, TypeError, "JSON-able"),
        ({"meta": [1]}, TypeError, "dict"),
    ],
)
def test_bad_checkpoints_are_refused_before_anything_is_written(directory, changes, error, message):
    with pytest.raises(error, match=message):
        write_checkpoint(directory, state(1, **changes))
    assert files(directory) == []


def test_keep_must_be_at_least_one(directory):
    for keep in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="keep"):
            write_checkpoint(directory, state(1), keep=keep)
    assert files(directory) == []


def test_numpy_integers_and_meta_values_are_accepted(directory):
    write_checkpoint(directory, state(np.int64(5), epoch=np.int32(1), meta={"n": np.int64(3), "v": np.float32(0.5)}))
    loaded = load_latest(directory)
    assert (loaded.global_step, loaded.epoch, loaded.meta) == (5, 1, {"n": 3, "v": 0.5})


# -- pruning ----------------------------------------------------------------------------------------


def test_prune_keeps_the_newest_n(directory):
    for step in range(1, 6):
        write_checkpoint(directory, state(step), keep=2)
    assert files(directory) == [
        f"{name(4)}.json",
        f"{name(4)}.safetensors",
        f"{name(5)}.json",
        f"{name(5)}.safetensors",
        "latest",
    ]
    write_checkpoint(directory, state(6), keep=1)
    assert list_checkpoints(directory) == [name(6)]
    assert_is(load_latest(directory), 6)


def test_default_keep_is_three(directory):
    for step in range(1, 6):
        write_checkpoint(directory, state(step))
    assert list_checkpoints(directory) == [name(3), name(4), name(5)]


def test_prune_never_deletes_latest_nor_newer_checkpoints(directory):
    """After a fall-back, a run writes steps below ones already there (the bad ones it skipped,
    or an abandoned run's). Those are not older: they stay, and the new latest is kept."""
    for step in (500, 600):
        write_checkpoint(directory, state(step))
    for step in (10, 20):
        write_checkpoint(directory, state(step), keep=1)
    assert list_checkpoints(directory) == [name(20), name(500), name(600)]
    assert read(directory, "latest").decode().strip() == name(20)
    with no_warnings():
        assert_is(load_latest(directory), 20)


def test_prune_removes_leftovers_of_interrupted_writes(directory):
    write_checkpoint(directory, state(10))
    put(directory, f"{name(15)}.safetensors", b"half")
    put(directory, f".{name(15)}.json.tmp-00ff00ff", b"{")
    put(directory, f".{name(25)}.safetensors.tmp-00ff00ff", b"")
    put(directory, f".{name(45)}.safetensors.tmp-00ff00ff", b"")  # newer than the one written: stays
    for step in (20, 30, 40):
        write_checkpoint(directory, state(step), keep=2)
    assert files(directory) == [
        f".{name(45)}.safetensors.tmp-00ff00ff",
        f"{name(30)}.json",
        f"{name(30)}.safetensors",
        f"{name(40)}.json",
        f"{name(40)}.safetensors",
        "latest",
    ]


# -- finding the latest good one --------------------------------------------------------------------


def test_load_latest_of_nothing_is_none(directory):
    with no_warnings():
        assert load_latest(directory) is None  # the directory does not exist
    fs, root = _at(directory)
    assert not fs.exists(root)  # and loading does not create it
    fs.makedirs(root, exist_ok=True)
    put(directory, "notes.txt", b"not a checkpoint")
    with no_warnings():
        assert load_latest(directory) is None


def test_latest_is_where_the_search_starts(three):
    put(three, "latest", f"{name(20)}\n".encode())  # a run that crashed before updating it
    with no_warnings():
        assert_is(load_latest(three), 20)


def test_missing_pointer_means_the_newest(three):
    remove(three, "latest")
    with no_warnings():
        assert_is(load_latest(three), 30)


@pytest.mark.parametrize("pointer", [name(99), "", "../../etc/passwd", "\xff garbage"])
def test_pointer_to_nowhere_falls_back_to_the_newest(three, pointer):
    put(three, "latest", pointer.encode())
    with pytest.warns(CheckpointWarning, match=r"latest (names|is empty)") as record:
        assert_is(load_latest(three), 30)
    assert len(record) == 1


def test_pointer_to_a_checkpoint_without_manifest(three):
    remove(three, f"{name(30)}.json")
    with pytest.warns(CheckpointWarning, match=rf"latest names '{name(30)}'"):
        assert_is(load_latest(three), 20)


def test_corrupt_bytes_fall_back_to_the_previous(three):
    data = bytearray(read(three, f"{name(30)}.safetensors"))
    data[-3] ^= 0x01  # a bit of the last array's values
    put(three, f"{name(30)}.safetensors", bytes(data))
    with pytest.warns(CheckpointWarning, match=rf"{name(30)}\.safetensors: its sha256 does not match") as record:
        assert_is(load_latest(three), 20)
    assert len(record) == 1


def test_truncated_file_falls_back(three):
    data = read(three, f"{name(30)}.safetensors")
    put(three, f"{name(30)}.safetensors", data[: len(data) // 2])
    with pytest.warns(CheckpointWarning, match=rf"{name(30)}\.safetensors: truncated: {len(data) // 2} bytes"):
        assert_is(load_latest(three), 20)


def test_missing_arrays_file_falls_back(three):
    remove(three, f"{name(30)}.safetensors")
    with pytest.warns(CheckpointWarning, match=rf"{name(30)}\.safetensors: the arrays file is missing"):
        assert_is(load_latest(three), 20)


@pytest.mark.parametrize(
    "text, reason",
    [
        (b'{"format": "dtrain.checkpoint", "format_v', "not valid JSON"),
        (b"[1, 2]", "not a dtrain checkpoint manifest"),
        (b'{"format": "dtrain.model", "format_version": 1}', "format 'dtrain.model'"),
    ],
)
def test_damaged_manifest_falls_back(three, text, reason):
    put(three, f"{name(30)}.json", text)
    with pytest.warns(CheckpointWarning, match=rf"{name(30)}\.json: .*{reason}"):
        assert_is(load_latest(three), 20)


def test_other_format_version_falls_back(three):
    doc = manifest(three, 30)
    doc["format_version"] = 2
    put(three, f"{name(30)}.json", json.dumps(doc).encode())
    with pytest.warns(CheckpointWarning, match=r"format version 2 .*this dtrain reads version 1"):
        assert_is(load_latest(three), 20)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_stored_array_falls_back(three, bad):
    params = np.arange(6, dtype=np.float32) + 30
    params[2] = bad
    forge(three, 30, {"params": params, "optimizer.iterations": np.array(30)})
    with pytest.warns(CheckpointWarning, match=r"array 'params' has 1 NaN or infinite values"):
        assert_is(load_latest(three), 20)


def test_forged_checkpoints_pass_when_nothing_is_wrong(three):
    """The control for the forged cases below: forge alone leaves a good checkpoint."""
    forge(three, 30, state(30).arrays)
    with no_warnings():
        assert_is(load_latest(three), 30)


@pytest.mark.parametrize(
    "arrays, changes, reason",
    [
        (
            {"params": np.zeros(6, np.float32)},
            {
                "arrays": {
                    "params": {"dtype": "float32", "shape": [6]},
                    "optimizer.m": {"dtype": "float32", "shape": [6]},
                }
            },
            r"missing: \['optimizer.m'\]",
        ),
        (
            {"params": np.zeros(6, np.float64)},
            {"arrays": {"params": {"dtype": "float32", "shape": [6]}}},
            "array 'params' is float64 of shape \\[6\\], the manifest says float32",
        ),
        (
            {"params": np.zeros(6, np.float32)},
            {"arrays": {"params": {"dtype": "float32", "shape": [2, 3]}}},
            "the manifest says float32 of shape \\[2, 3\\]",
        ),
        ({"params": np.zeros(6, np.float32)}, {"global_step": 20}, "for global step 20, not 30"),
        ({"params": np.zeros(6, np.float32)}, {"epoch": -1}, "epoch is -1"),
        ({"params": np.zeros(6, np.float32)}, {"meta": "x"}, "meta is 'x'"),
        ({"params": np.zeros(6, np.float32)}, {"files": {}}, "no sha256 and size"),
    ],
)
def test_manifest_and_file_must_agree(three, arrays, changes, reason):
    forge(three, 30, arrays, **changes)
    with pytest.warns(CheckpointWarning, match=rf"{name(30)}\.(json|safetensors): .*{reason}"):
        assert_is(load_latest(three), 20)


def test_a_checkpoint_copied_under_another_name_is_refused(three):
    for kind in ("safetensors", "json"):
        put(three, f"{name(40)}.{kind}", read(three, f"{name(20)}.{kind}"))
    put(three, "latest", name(40).encode())
    with pytest.warns(CheckpointWarning, match="for global step 20, not 40"):
        assert_is(load_latest(three), 30)


def test_every_bad_one_is_skipped_until_a_good_one(three):
    remove(three, f"{name(30)}.safetensors")
    put(three, f"{name(20)}.safetensors", b"")
    with pytest.warns(CheckpointWarning) as record:
        assert_is(load_latest(three), 10)
    assert [str(w.message).split(": ")[0] for w in record] == [
        f"Skipping checkpoint {_where(three, name(30))}.safetensors",
        f"Skipping checkpoint {_where(three, name(20))}.safetensors",
    ]


def _where(directory: str, stem: str) -> str:
    if "://" not in directory:
        return os.path.join(directory, stem)
    fs, root = _at(directory)
    return fs.unstrip_protocol(f"{root}/{stem}")


def test_none_good_is_an_error_listing_each(three):
    data = bytearray(read(three, f"{name(30)}.safetensors"))
    data[20] ^= 0xFF
    put(three, f"{name(30)}.safetensors", bytes(data))
    put(three, f"{name(20)}.safetensors", read(three, f"{name(20)}.safetensors")[:-1])
    remove(three, f"{name(10)}.safetensors")
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError) as info:
        load_latest(three)
    message = str(info.value)
    assert "No usable checkpoint" in message
    assert f"{name(30)}: its sha256 does not match" in message
    assert f"{name(20)}: truncated" in message
    assert f"{name(10)}: the arrays file is missing" in message
    assert "start from scratch" in message


# -- compatibility ----------------------------------------------------------------------------------


def test_expect_equal_meta_loads(three):
    expect = {"model": {"layers": ({"units": 64, "activation": "relu"}, {"units": 10.0})}, "job_hash": "abc"}
    with no_warnings():
        assert_is(load_latest(three, expect=expect), 30)  # tuples and lists, 10 and 10.0 alike


def test_expect_checks_only_its_keys(three):
    with no_warnings():
        assert_is(load_latest(three, expect={"job_hash": "abc"}), 30)
        assert_is(load_latest(three, expect={}), 30)


def test_incompatible_newest_falls_back_to_a_compatible_one(directory):
    write_checkpoint(directory, state(10))
    other = {**META, "job_hash": "def"}
    write_checkpoint(directory, state(20, meta=other))
    with pytest.warns(
        CheckpointWarning,
        match=rf"{name(20)}\.json: incompatible: job_hash differs "
        r"\(checkpoint: \"def\", this run: \"abc\"\)",
    ):
        assert_is(load_latest(directory, expect={"job_hash": "abc"}), 10)


def test_incompatible_everywhere_is_an_error(three):
    expect = {"model": {"layers": [{"units": 128, "activation": "relu"}, {"units": 10}]}}
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError) as info:
        load_latest(three, expect=expect)
    for step in (10, 20, 30):
        assert f"{name(step)}: incompatible: model differs at layers[0].units (checkpoint: 64, this run: 128)" in str(
            info.value
        )


@pytest.mark.parametrize(
    "expect, reason",
    [
        ({"plan": {"seed": 1}}, "the checkpoint has no 'plan'"),
        ({"model": {"layers": [{"units": 64, "activation": "relu"}]}}, "model differs at layers"),
        (
            {"model": {"layers": [{"units": 64}, {"units": 10}]}},
            r"at layers\[0\].activation \(checkpoint: \"relu\", this run: absent\)",
        ),
        ({"job_hash": 1}, "job_hash differs"),
    ],
)
def test_incompatibilities_are_named(three, expect, reason):
    with pytest.warns(CheckpointWarning, match=f"incompatible: .*{reason}"), pytest.raises(CheckpointError):
        load_latest(three, expect=expect)


def test_true_is_not_one(directory):
    """Compared as JSON values: true and 1 differ (1 and 1.0 do not)."""
    write_checkpoint(directory, state(1, meta={"shuffle": 1, "rate": 1}))
    with no_warnings():
        assert_is(load_latest(directory, expect={"rate": 1.0}), 1)
    with pytest.warns(CheckpointWarning, match=r"shuffle differs \(checkpoint: 1, this run: true\)"):
        with pytest.raises(CheckpointError):
            load_latest(directory, expect={"shuffle": True})


def test_long_values_are_abbreviated(directory):
    write_checkpoint(directory, state(1, meta={"plan": list(range(1000))}))
    with pytest.warns(CheckpointWarning) as record, pytest.raises(CheckpointError):
        load_latest(directory, expect={"plan": list(range(999))})
    message = str(record[0].message)
    assert "plan differs (checkpoint: [0, 1, 2" in message and "..." in message
    assert len(message) < 400


def test_incompatible_checkpoints_are_refused_before_their_arrays_are_read(three, monkeypatch):
    read_files = []
    real_read = Location.read

    def spy(self, file, **kwargs):
        read_files.append(file)
        return real_read(self, file, **kwargs)

    monkeypatch.setattr(Location, "read", spy)
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError):
        load_latest(three, expect={"job_hash": "other"})
    assert not any(f.endswith(".safetensors") for f in read_files)


# -- one named checkpoint ---------------------------------------------------------------------------


def test_load_checkpoint_by_either_file(three):
    for kind in ("safetensors", "json"):
        location = _where(three, name(20)) + f".{kind}"
        with no_warnings():
            loaded = load_checkpoint(location)
        assert_is(loaded, 20)
        assert loaded.location == _where(three, name(20)) + ".safetensors"


def test_load_checkpoint_refuses_a_bad_one(three):
    put(three, f"{name(20)}.safetensors", b"\x00" * 10)
    with pytest.raises(CheckpointError, match=rf"Cannot use checkpoint .*{name(20)}\.safetensors: truncated"):
        load_checkpoint(_where(three, name(20)) + ".safetensors")
    with pytest.raises(CheckpointError, match="incompatible: job_hash differs"):
        load_checkpoint(_where(three, name(30)) + ".json", expect={"job_hash": "x"})
    with pytest.raises(CheckpointError, match="the manifest is missing"):
        load_checkpoint(_where(three, name(50)) + ".json")


def test_load_checkpoint_needs_a_checkpoint_name(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint file.*load_latest"):
        load_checkpoint(tmp_path / "model.safetensors")


# -- the directory argument -------------------------------------------------------------------------


def test_a_file_is_not_a_checkpoint_directory(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        write_checkpoint(path, state(1))
    with pytest.raises(NotADirectoryError, match="is a file"):
        load_latest(path)
    with pytest.raises(NotADirectoryError, match="is a file"):
        list_checkpoints(path)
    assert path.read_bytes() == b"x"


def test_a_file_url_is_not_a_checkpoint_directory():
    url = f"memory://dtrain-test-checkpoints/{os.urandom(4).hex()}"
    fs, path = fsspec.core.url_to_fs(url)
    fs.pipe_file(path, b"x")
    try:
        with pytest.raises(NotADirectoryError, match="is a file"):
            load_latest(url)
    finally:
        fs.rm_file(path)


@pytest.mark.parametrize("bad", ["", None, 3])
def test_directory_must_be_a_path_or_url(bad):
    with pytest.raises(ValueError, match="checkpoint directory"):
        load_latest(bad)


# -- spec_hash --------------------------------------------------------------------------------------


def test_spec_hash():
    a = spec_hash({"layers": (64, 10), "seed": 1, "data": {"b": 2, "a": [1.5]}})
    assert re.fullmatch(r"[0-9a-f]{64}", a)
    assert spec_hash({"data": {"a": [1.5], "b": 2}, "seed": np.int64(1), "layers": [64, 10]}) == a
    assert spec_hash({"layers": [64, 10], "seed": 2, "data": {"b": 2, "a": [1.5]}}) != a
    assert spec_hash({"layers": [10, 64], "seed": 1, "data": {"b": 2, "a": [1.5]}}) != a
    with pytest.raises(ValueError):
        spec_hash({"x": float("nan")})


def test_an_error_reading_the_storage_is_raised_not_skipped(three, monkeypatch):
    """A permission or network error says nothing about the checkpoint: falling back past it
    would throw its progress away (and pruning could then delete it)."""
    real_read = Location.read

    def read_(self, file, **kwargs):
        if file == f"{name(30)}.safetensors":
            raise PermissionError(13, "Permission denied", file)
        return real_read(self, file, **kwargs)

    monkeypatch.setattr(Location, "read", read_)
    with pytest.raises(PermissionError):
        load_latest(three)
