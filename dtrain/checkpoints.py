"""Training checkpoints: written atomically, found again, checked, fallen back from, pruned.

A checkpoint directory (a local path or an fsspec URL: ``memory://x``, ``s3://bucket/x``,
``file:///x``) holds, for each checkpoint, two files named after its global step, and a pointer:

==============================  ==============================================================
ckpt-0000000120.safetensors     every array (flat weights, optimizer slots, running totals...)
ckpt-0000000120.json            its manifest: format and version, dtrain version, creation
                                time, ``global_step``, ``epoch``, ``step``, the sha256 and size
                                of the arrays file, every array's dtype and shape, and ``meta``
                                (the caller's JSON: model and compile config, data plan, job
                                hash...)
latest                          the name of the newest checkpoint, e.g. ``ckpt-0000000120``
==============================  ==============================================================

**Writing** goes arrays file, manifest, pointer, each under a temporary name
(``.<name>.tmp-<random>``) renamed into place once whole, so a crash at any moment leaves the
previous state or the new one. The manifest is what makes a checkpoint: an arrays file without
its manifest is an interrupted write, not a checkpoint; it is ignored without a warning (that
is the expected state after a crash, and the previous checkpoint is the right one to resume
from), and deleted when pruning reaches it. Arrays that are not finite are never written.

**Loading** parses JSON and safetensors only (nothing is unpickled or executed) and checks
everything it can: the format and version, the arrays file's size and sha256, every array's
dtype and shape, that every floating array is finite, and that the checkpoint's ``meta``
agrees with what this run expects. :func:`load_latest` starts from the checkpoint ``latest``
names, then tries the others, newest first, skipping a bad one with a :class:`CheckpointWarning`
that says which file and why.

An error *reading the storage* (permissions, network) is raised as it is, not taken as a bad
checkpoint: falling back past a good checkpoint because of a passing network error would throw
its progress away.

One process writes to a directory at a time (rank 0 of a data-parallel job).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._version import __version__
from .storage import Location, NotARegularFile

FORMAT = "dtrain.checkpoint"
FORMAT_VERSION = 1
POINTER = "latest"

_NAME = re.compile(r"^ckpt-(\d{10,})$")
_FILE = re.compile(r"^(?P<name>ckpt-(?P<step>\d{10,}))\.(?P<kind>safetensors|json)$")
_TEMP = re.compile(r"^\.(?P<name>ckpt-(?P<step>\d{10,}))\.(?:safetensors|json)\.tmp-[0-9a-f]+$")
_DTYPES = {
    np.dtype(t)
    for t in (
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
    )
}  # what safetensors stores
_SHORT = 60  # characters of a value shown in an "incompatible" message


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read, or no usable one exists."""


class NonFiniteCheckpoint(CheckpointError):
    """The state to checkpoint holds NaN or infinite values; nothing was written. ``names``: the
    arrays at fault."""

    def __init__(self, message: str, names: list[str] | tuple[str, ...] = ()):
        super().__init__(message)
        self.names = list(names)


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (damaged, incomplete, of another version or incompatible)."""


@dataclass
class Checkpoint:
    arrays: dict[str, np.ndarray]  # e.g. {"params": flat weights, "optimizer.m": ..., "totals": ...}
    epoch: int  # the epoch to continue in (0-based)
    step: int  # steps of that epoch already done (0: at its start)
    global_step: int  # optimizer steps done in total (names the checkpoint; strictly increasing)
    meta: dict  # JSON-able
    name: str | None = None  # set when written/loaded, e.g. "ckpt-0000000120"
    location: str | None = None  # where it was read from / written to (the .safetensors file)


def checkpoint_name(global_step: int) -> str:
    return f"ckpt-{global_step:010d}"


# -- JSON -------------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # NumPy scalars and arrays
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"a {type(value).__name__} is not JSON-able ({value!r})")


def _canonical(value: Any) -> str:
    """Canonical JSON: sorted keys, no spaces, tuples as lists, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_json_default)


def _normalised(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, NumPy scalars numbers...)."""
    return json.loads(_canonical(value))


def spec_hash(obj: Any) -> str:
    """sha256 (hex) of ``obj`` as canonical JSON: equal for equal specs whatever their key order,
    and whether sequences are tuples or lists. For job and data-plan hashes kept in ``meta``."""
    return hashlib.sha256(_canonical(obj).encode()).hexdigest()


# -- the directory ----------------------------------------------------------------------------------


def _store(directory: str | os.PathLike) -> Location:
    # durable: each file is fsynced before its rename, and write_checkpoint syncs the folder.
    return Location(directory, what="a checkpoint directory (a path or an fsspec URL)", durable=True)


def _check_not_file(store: Location) -> None:
    if store.is_file():
        raise NotADirectoryError(
            f"The checkpoint directory {store.text} is a file. Give a directory (it is created if missing); "
            f"to load one checkpoint file, use load_checkpoint."
        )


def _names(store: Location) -> list[str]:
    """Names of the files in the checkpoint directory ([] if there is no directory)."""
    _check_not_file(store)
    return store.names()


def _arrays_file(name: str) -> str:
    return f"{name}.safetensors"


def _manifest_file(name: str) -> str:
    return f"{name}.json"


def global_step_of(name: str) -> int:
    """The global step (epoch * steps per epoch + step) of the checkpoint named ``name``."""
    return int(name[len("ckpt-") :])


def _complete(files: list[str]) -> list[str]:
    """Names of the checkpoints that have a manifest, by global step (oldest first)."""
    names = {m["name"] for m in map(_FILE.match, files) if m and m["kind"] == "json"}
    return sorted(names, key=global_step_of)


def list_checkpoints(directory: str | os.PathLike) -> list[str]:
    """Names of the checkpoints in ``directory`` (those with a manifest; whether they are intact is
    not checked), oldest first. [] when the directory does not exist."""
    return _complete(_names(_store(directory)))


# -- writing ----------------------------------------------------------------------------------------


def write_checkpoint(directory: str | os.PathLike, checkpoint: Checkpoint, *, keep: int = 3) -> str:
    """Write ``checkpoint`` to ``directory`` (created if missing) atomically, point ``latest`` at
    it, then delete older checkpoints beyond the newest ``keep``. Sets ``checkpoint.name`` and
    ``.location`` and returns the location of its arrays file.

    Everything is checked before anything is written: a NaN or infinity in any floating array
    raises NonFiniteCheckpoint and leaves the directory as it was. Writing a global step that
    already exists replaces that checkpoint (a resumed run writing again the step it resumed
    from). Its old manifest is left in place until the new one replaces it: mid-write, its
    sha256 refuses the new arrays file, unless the arrays are the same bytes, as they are when a
    deterministic run writes a step again, and then the old checkpoint stays usable throughout."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"Expected keep to be a whole number >= 1 (checkpoints to keep), received keep={keep!r}.")
    global_step = _count("global_step", checkpoint.global_step)
    epoch, step = _count("epoch", checkpoint.epoch), _count("step", checkpoint.step)
    arrays = _host_arrays(checkpoint.arrays)
    _check_finite(arrays)
    meta = _json_meta(checkpoint.meta)

    name = checkpoint_name(global_step)
    data = _safetensors_bytes(arrays, name)
    manifest = _manifest(name, data, arrays, global_step=global_step, epoch=epoch, step=step, meta=meta)

    store = _store(directory)
    _check_not_file(store)
    store.make()
    location = store.write(_arrays_file(name), data)
    store.write(_manifest_file(name), manifest)
    store.write(POINTER, f"{name}\n".encode())
    store.sync()
    _prune(store, newest=name, keep=keep)
    checkpoint.name, checkpoint.location = name, location
    return location


def _count(what: str, value: Any) -> int:
    """A whole number >= 0 (NumPy integers too, not bools)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"Expected the checkpoint's {what} to be a whole number >= 0, received {what}={value!r}.")
    return int(value)


def _host_arrays(arrays: Any) -> dict[str, np.ndarray]:
    """The arrays as contiguous NumPy arrays of a dtype safetensors stores."""
    if not isinstance(arrays, dict) or not arrays:
        raise ValueError(
            f"Expected the checkpoint's arrays to be a non-empty dict of name -> array, received {arrays!r}."
        )
    out = {}
    for key, value in arrays.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"Checkpoint array names must be non-empty strings, received {key!r}.")
        try:
            array = np.asarray(value)  # not ascontiguousarray: it turns 0-d arrays into 1-d ones
        except TypeError as exc:  # CuPy refuses implicit conversion
            raise TypeError(
                f"Checkpoint array {key!r} is not a host array ({exc}); copy it to the host first "
                f"(dtrain.backend.host_copy)."
            ) from None
        native = array.dtype.newbyteorder("=")
        if native not in _DTYPES:
            raise TypeError(
                f"Checkpoint array {key!r} has dtype {array.dtype}, which a checkpoint cannot hold; use one of "
                f"{', '.join(sorted(d.name for d in _DTYPES))}."
            )
        out[key] = np.require(array, dtype=native, requirements="C")  # safetensors stores C order, little-endian
    return out


def _non_finite(array: np.ndarray) -> int:
    """How many values of ``array`` are NaN or infinite (0 for arrays that are not floating)."""
    if not np.issubdtype(array.dtype, np.floating):
        return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def _check_finite(arrays: dict[str, np.ndarray]) -> None:
    bad = {key: n for key, n in ((key, _non_finite(a)) for key, a in arrays.items()) if n}
    if bad:
        listed = ", ".join(f"{key!r} ({n} of {arrays[key].size} values)" for key, n in bad.items())
        raise NonFiniteCheckpoint(
            f"Not writing a checkpoint: NaN or infinite values in {listed}. Training has diverged; "
            f"resume from the last checkpoint with a lower learning rate, or look for bad input data.",
            list(bad),
        )


def _json_meta(meta: Any) -> dict:
    if not isinstance(meta, dict):
        raise TypeError(f"Expected the checkpoint's meta to be a dict, received {type(meta).__name__}.")
    try:
        return _normalised(meta)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"The checkpoint's meta must be JSON-able (strings, numbers, lists, dicts; no NaN): {exc}."
        ) from None


def _safetensors_bytes(arrays: dict[str, np.ndarray], name: str) -> bytes:
    from safetensors.numpy import save

    # The header names the format too, for whoever opens the file with another tool (the
    # manifest stays the authority), in one key: safetensors writes several in a random order,
    # and the same arrays should make the same bytes (and sha256) every time.
    header = json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, "name": name}, sort_keys=True)
    return save(arrays, metadata={"dtrain": header})


def _manifest(
    name: str, data: bytes, arrays: dict[str, np.ndarray], *, global_step: int, epoch: int, step: int, meta: dict
) -> bytes:
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dtrain_version": __version__,
        "created": time.time(),
        "global_step": global_step,
        "epoch": epoch,
        "step": step,
        "files": {_arrays_file(name): {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}},
        "arrays": {key: {"dtype": a.dtype.name, "shape": list(a.shape)} for key, a in arrays.items()},
        "meta": meta,
    }
    return (json.dumps(manifest, indent=2, allow_nan=False) + "\n").encode()


def _prune(store: Location, *, newest: str, keep: int) -> None:
    """Delete the checkpoints older than the ``keep`` newest up to ``newest`` (the one just
    written, which ``latest`` names), with the leftovers of interrupted writes among them.
    Checkpoints with a higher global step than ``newest`` (an abandoned run's, or ones skipped
    as bad when this run resumed) are not older, so they stay: counting them instead would
    delete the checkpoints this run has just written, ``latest`` included."""
    files = _names(store)
    limit = global_step_of(newest)
    kept = [n for n in _complete(files) if global_step_of(n) <= limit][-keep:]
    oldest_kept = global_step_of(kept[0]) if kept else limit
    protected = set(kept) | {newest}
    doomed: dict[int, list[str]] = {}
    for file in files:
        match = _FILE.match(file) or _TEMP.match(file)
        if match and match["name"] not in protected and int(match["step"]) < oldest_kept:
            doomed.setdefault(int(match["step"]), []).append(file)
    for step in sorted(doomed):
        # The manifest first: a deletion cut short leaves an arrays file without a manifest,
        # which is ignored, rather than a manifest without its arrays, which warns.
        for file in sorted(doomed[step], key=lambda f: not f.endswith(".json")):
            store.remove(file)


def delete_checkpoints(directory: str | os.PathLike) -> None:
    """Delete the checkpoints in ``directory`` (their files, interrupted writes' leftovers and
    ``latest``); any other file there stays. Manifests first, newest first: a deletion cut short
    leaves older checkpoints whole."""
    store = _store(directory)
    files = _names(store)
    ours = [(int(m["step"]), file) for file in files if (m := _FILE.match(file) or _TEMP.match(file))]
    if POINTER in files:
        store.remove(POINTER)
    for _, file in sorted(ours, key=lambda item: (-item[0], not item[1].endswith(".json"))):
        store.remove(file)


# -- reading ----------------------------------------------------------------------------------------


class _Bad(Exception):
    """Why one checkpoint cannot be used: ``file`` (its location) and ``reason``."""

    def __init__(self, file: str, reason: str):
        super().__init__(f"{file}: {reason}")
        self.file, self.reason = file, reason


POINTER_MAX_BYTES = 256  # "ckpt-<global step>" and a newline; anything longer is not ours


def _read_pointer(store: Location) -> str | None:
    """The text of ``latest`` (stripped, its first POINTER_MAX_BYTES at most), or None if there is
    none or it is not a file (a folder, a FIFO: said, and the newest good checkpoint is used)."""
    try:
        return store.read(POINTER, limit=POINTER_MAX_BYTES).decode("utf-8", "replace").strip()
    except FileNotFoundError:
        return None
    except NotARegularFile as exc:
        warnings.warn(
            CheckpointWarning(
                f"{store.where(POINTER)} cannot be read ({exc}); looking for the newest good checkpoint."
            ),
            stacklevel=4,
        )
        return None


def load_latest(directory: str | os.PathLike, *, expect: dict | None = None) -> Checkpoint | None:
    """The newest good checkpoint in ``directory``: the one ``latest`` names, or else the others,
    newest first. Each bad one (damaged, incomplete, of another format version, not finite, or
    whose ``meta`` differs from ``expect`` on one of its keys) is skipped with a CheckpointWarning.
    None if there is no checkpoint (or no directory); CheckpointError, listing every checkpoint and
    why it was refused, if there are checkpoints but none is good."""
    if expect is not None and not isinstance(expect, dict):
        raise TypeError(f"Expected expect to be a dict of meta key -> value, received {type(expect).__name__}.")
    store = _store(directory)
    names = _complete(_names(store))
    refused: list[tuple[str, str]] = []
    for name in _search_order(store, names):
        try:
            return _load(store, name, expect)
        except _Bad as bad:
            warnings.warn(CheckpointWarning(f"Skipping checkpoint {bad.file}: {bad.reason}."), stacklevel=2)
            refused.append((name, bad.reason))
    if not refused:
        return None
    lines = "\n".join(f"  {name}: {reason}" for name, reason in refused)
    raise CheckpointError(
        f"No usable checkpoint in {store.text}; every one was refused:\n{lines}\n"
        f"Point the run at another checkpoint directory to start from scratch (or delete these), or resume "
        f"with the settings the checkpoints were written with."
    )


def _search_order(store: Location, names: list[str]) -> list[str]:
    """The checkpoint ``latest`` names first, then every other one, newest first. A pointer that
    names no checkpoint is reported (it should not happen: the pointer is written last and its
    checkpoint is never pruned) and the search goes on without it."""
    pointer = _read_pointer(store)
    first: list[str] = []
    if pointer is not None:
        if pointer in names:
            first = [pointer]
        else:
            shown = f"{pointer[:80]!r}{'...' if len(pointer) > 80 else ''}"  # (the file is not ours: say little)
            what = f"names {shown}, which is not a checkpoint here" if pointer else "is empty"
            warnings.warn(
                CheckpointWarning(f"{store.where(POINTER)} {what}; looking for the newest good checkpoint instead."),
                stacklevel=3,
            )
    return first + [n for n in reversed(names) if n not in first]


def load_checkpoint(location: str | os.PathLike, *, expect: dict | None = None) -> Checkpoint:
    """The checkpoint whose arrays file or manifest is at ``location`` (a path or a URL), fully
    checked (and against ``expect``, as in load_latest); CheckpointError saying what is wrong if
    it cannot be used."""
    text = os.fspath(location)
    directory, base = _split(text)
    stem = re.sub(r"\.(safetensors|json)$", "", base)
    if not _NAME.match(stem):
        raise CheckpointError(
            f"{text} is not a checkpoint file: checkpoint files are named ckpt-<global step>.safetensors "
            f"(and .json). To find the latest checkpoint in a directory, use load_latest."
        )
    try:
        return _load(_store(directory), stem, expect)
    except _Bad as bad:
        raise CheckpointError(f"Cannot use checkpoint {bad.file}: {bad.reason}.") from None


def _split(location: str) -> tuple[str, str]:
    """(the folder, the file name) of a path or URL."""
    if "://" not in location:
        return os.path.split(os.path.abspath(location))
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(location)
    return fs.unstrip_protocol(posixpath.dirname(path)), posixpath.basename(path)


def _load(store: Location, name: str, expect: dict | None) -> Checkpoint:
    """Checkpoint ``name`` of ``store``, every part checked; _Bad says what is wrong."""
    manifest = _read_manifest(store, name)
    if expect:
        _check_compatible(store.where(_manifest_file(name)), manifest["meta"], expect)
    arrays = _read_arrays(store, name, manifest)
    return Checkpoint(
        arrays=arrays,
        epoch=manifest["epoch"],
        step=manifest["step"],
        global_step=manifest["global_step"],
        meta=manifest["meta"],
        name=name,
        location=store.where(_arrays_file(name)),
    )


def _read_manifest(store: Location, name: str) -> dict:
    where = store.where(_manifest_file(name))
    try:
        manifest = json.loads(store.read(_manifest_file(name)))
    except FileNotFoundError:
        raise _Bad(where, "the manifest is missing") from None
    except NotARegularFile as exc:  # a FIFO would block for ever (other read errors are raised: they say
        raise _Bad(where, f"the manifest cannot be read ({exc})") from None  # nothing about the checkpoint)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise _Bad(where, f"the manifest is not valid JSON ({exc}); it is damaged") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise _Bad(where, f"not a dtrain checkpoint manifest (format {found!r}, expected {FORMAT!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise _Bad(
            where,
            f"checkpoint format version {version!r} (written by dtrain "
            f"{manifest.get('dtrain_version', '?')}); this dtrain reads version {FORMAT_VERSION}",
        )
    for key, kind in (
        ("global_step", int),
        ("epoch", int),
        ("step", int),
        ("files", dict),
        ("arrays", dict),
        ("meta", dict),
    ):
        value = manifest.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or (isinstance(value, int) and value < 0):
            raise _Bad(
                where, f"the manifest's {key} is {value!r}, expected a {'whole number >= 0' if kind is int else 'dict'}"
            )
    if manifest["global_step"] != global_step_of(name):
        raise _Bad(
            where,
            f"the manifest is for global step {manifest['global_step']}, not {global_step_of(name)} "
            f"as its name says (a renamed or copied file)",
        )
    return manifest


def _read_arrays(store: Location, name: str, manifest: dict) -> dict[str, np.ndarray]:
    file = _arrays_file(name)
    where = store.where(file)
    expected = manifest["files"].get(file)
    if (
        not isinstance(expected, dict)
        or not isinstance(expected.get("sha256"), str)
        or not isinstance(expected.get("bytes"), int)
    ):
        raise _Bad(store.where(_manifest_file(name)), f"the manifest has no sha256 and size for {file}")
    try:
        data = store.read(file)
    except FileNotFoundError:
        raise _Bad(where, "the arrays file is missing") from None
    except NotARegularFile as exc:
        raise _Bad(where, f"the arrays file cannot be read ({exc})") from None
    if len(data) != expected["bytes"]:
        what = "truncated" if len(data) < expected["bytes"] else "too long"
        raise _Bad(where, f"{what}: {len(data)} bytes, the manifest says {expected['bytes']}")
    if hashlib.sha256(data).hexdigest() != expected["sha256"]:
        raise _Bad(where, "its sha256 does not match the manifest's: the file is corrupt")
    arrays = _parse_safetensors(where, data)
    _check_arrays(where, arrays, manifest["arrays"])
    _check_claims(where, arrays, manifest)
    return arrays


def _check_claims(where: str, arrays: dict[str, np.ndarray], manifest: dict) -> None:
    """What the arrays and the position must be for the training run the manifest describes (the
    arrays dtrain's training writes, when it wrote them): weights and optimizer slots of the
    model's floating dtype (a header that declares int32 over float32
    bytes would load as garbage), an integer step count, float64 sums, and a position that its
    data plan can reach (global_step = epoch x steps per epoch + step)."""
    meta = manifest["meta"]
    dtype = meta.get("dtype")
    for key, array in arrays.items():
        if key == "optimizer.iterations":
            if array.dtype.kind not in "iu":
                raise _Bad(where, f"array {key!r} is {array.dtype.name}, expected an integer count")
        elif key == "totals":
            if array.dtype != np.float64:
                raise _Bad(where, f"array {key!r} is {array.dtype.name}, expected float64")
        elif key == "params" or key.startswith("optimizer."):  # (other arrays are the writer's own)
            if array.dtype.kind != "f" or (isinstance(dtype, str) and array.dtype.name != dtype):
                raise _Bad(where, f"array {key!r} is {array.dtype.name}, but the model is {dtype}")
    plan = meta.get("plan")
    if isinstance(plan, dict) and all(isinstance(plan.get(k), int) and plan[k] > 0 for k in ("rows", "batch_size")):
        steps = -(-plan["rows"] // plan["batch_size"])
        epoch, step = manifest["epoch"], manifest["step"]
        history = meta.get("history")
        if isinstance(history, list) and len(history) != epoch:
            raise _Bad(where, f"its position is epoch {epoch} but it holds the logs of {len(history)} finished epochs")
        if step >= steps or epoch * steps + step != manifest["global_step"]:
            raise _Bad(
                where,
                f"its position (epoch {epoch}, step {step}, global step {manifest['global_step']}) is not one its "
                f"data plan ({plan['rows']} rows, batch {plan['batch_size']}: {steps} steps an epoch) can reach",
            )


def _parse_safetensors(where: str, data: bytes) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        return load(data)
    except (SafetensorError, ValueError) as exc:
        raise _Bad(where, f"not a readable safetensors file ({exc})") from None


def _check_arrays(where: str, arrays: dict[str, np.ndarray], listed: dict) -> None:
    """Every array the manifest lists is in the file with its dtype and shape, there are no
    others, and every floating one is finite."""
    missing = sorted(set(listed) - set(arrays))
    extra = sorted(set(arrays) - set(listed))
    if missing or extra:
        raise _Bad(where, f"the file's arrays differ from the manifest's (missing: {missing}, not listed: {extra})")
    for key, spec in listed.items():
        array = arrays[key]
        found = (array.dtype.name, list(array.shape))
        wanted = (spec.get("dtype"), spec.get("shape")) if isinstance(spec, dict) else (None, None)
        if found != wanted:
            raise _Bad(
                where,
                f"array {key!r} is {found[0]} of shape {found[1]}, the manifest says {wanted[0]} of shape {wanted[1]}",
            )
        bad = _non_finite(array)
        if bad:
            raise _Bad(where, f"array {key!r} has {bad} NaN or infinite values (of {array.size})")


# -- compatibility ----------------------------------------------------------------------------------


def _check_compatible(where: str, meta: dict, expect: dict) -> None:
    """Each key of ``expect`` must be in ``meta`` with an equal value, compared as JSON."""
    for key, wanted in expect.items():
        try:
            wanted = _normalised(wanted)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"expect[{key!r}] must be JSON-able: {exc}.") from None
        if key not in meta:
            raise _Bad(where, f"incompatible: the checkpoint has no {key!r} (this run: {_short(wanted)})")
        difference = _first_difference(meta[key], wanted, "")
        if difference is not None:
            path, theirs, ours = difference
            at = f" at {path.lstrip('.')}" if path else ""
            raise _Bad(
                where, f"incompatible: {key} differs{at} (checkpoint: {_short(theirs)}, this run: {_short(ours)})"
            )


_MISSING = object()


def _first_difference(theirs: Any, ours: Any, path: str) -> tuple[str, Any, Any] | None:
    """Where two JSON values first differ: (path such as ``.layers[0].units``, theirs, ours), or
    None if they are equal. Names the innermost difference so long configs give short messages."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        for key in sorted(set(theirs) | set(ours)):
            found = _first_difference(theirs.get(key, _MISSING), ours.get(key, _MISSING), f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(theirs, list) and isinstance(ours, list) and len(theirs) == len(ours):
        for i, (a, b) in enumerate(zip(theirs, ours)):
            found = _first_difference(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    # True and 1 differ, as they do in JSON; 1 and 1.0 are the same number.
    same = theirs == ours and (isinstance(theirs, bool) == isinstance(ours, bool))
    return None if same else (path, theirs, ours)


def _short(value: Any) -> str:
    if value is _MISSING:
        return "absent"
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= _SHORT else f"{text[: _SHORT - 3]}..."
