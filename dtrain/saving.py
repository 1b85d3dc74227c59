"""Saving and loading models in a safe format.

A model file is a safetensors file: a JSON header (architecture, compile settings, format
version) followed by raw little-endian arrays. Loading parses JSON and copies bytes, nothing
is unpickled or executed, and every shape is checked against the architecture. Other tools
that read safetensors can read the weights too.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ._version import __version__
from .backend import check_device
from .network import Network
from .runs import resolve_run

_N = TypeVar("_N", bound=Network)

FORMAT = "dtrain.model"
FORMAT_VERSION = 1
MODEL_FILENAME = "model.safetensors"  # the file looked for when a directory is given


def _resolve_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():  # a folder holding the model, or a job's output location (its newest run's)
        return Path(resolve_run(path, MODEL_FILENAME)) / MODEL_FILENAME
    return path


def save_model(model: Network, path: str | os.PathLike, include_optimizer: bool = True) -> Path:
    """Write ``model`` to ``path`` (or ``path/model.safetensors`` when ``path`` is a directory)
    atomically: a temporary file in the same folder, renamed over the target when complete."""
    from safetensors.numpy import save_file

    model.require_built("save")
    target = _resolve_path(path)
    if not target.parent.exists():
        raise FileNotFoundError(f"Cannot save model: folder {str(target.parent)!r} does not exist.")
    tensors: dict[str, np.ndarray] = {}
    for i, weight in enumerate(model.get_weights()):
        tensors[f"weights.{i:04d}"] = np.ascontiguousarray(weight)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "dtrain_version": __version__,
        "config": json.dumps(model.get_config()),
    }
    compile_config = model.compile_config()
    if compile_config is not None:
        metadata["compile"] = json.dumps(compile_config)
        included = include_optimizer and model.compiled_optimizer.built
        metadata["optimizer_state"] = "included" if included else "left out"  # a reader tells damage from choice
        if included:
            for name, value in model.compiled_optimizer.get_state().items():
                tensors[f"optimizer.{name}"] = np.ascontiguousarray(value)
    # A fresh temporary name next to the target, created like any file (mode 0o666 minus the
    # umask); safetensors rewrites it readable by its owner only, so the mode is put back.
    tmp = target.parent / f".{target.name}.{secrets.token_hex(8)}.tmp"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        mode = tmp.stat().st_mode & 0o777
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _not_a_model(path: Any, why: str) -> ValueError:
    return ValueError(f"{str(path)!r} is not a dtrain model file: {why}. Save models with model.save(path).")


def _is_url(path: Any) -> bool:
    return isinstance(path, str) and "://" in path


def _read_local(source: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(metadata, tensors) of a local model file, memory-mapped by safetensors."""
    from safetensors import SafetensorError, safe_open

    if not source.exists():
        raise FileNotFoundError(f"No model file at {str(source)!r}.")
    if not source.is_file():  # opening a FIFO would block until someone writes to it
        raise _not_a_model(source, "it is not a regular file (a FIFO, a socket or a device)")
    try:
        with safe_open(str(source), framework="numpy") as f:
            metadata: dict[str, Any] = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise _not_a_model(source, f"it is not a readable safetensors file ({exc})") from None
    return metadata, tensors


def _download(url: str) -> tuple[str, bytes]:
    """The location and bytes of the model at an fsspec URL: the file, or ``model.safetensors``
    in the directory it names (a job's output location)."""
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(url)
    if fs.isdir(path):  # a folder holding the model, or a job's output location (its newest run's)
        folder = url_to_fs(resolve_run(url, MODEL_FILENAME))[1]
        path = f"{folder.rstrip('/')}/{MODEL_FILENAME}"
    location = fs.unstrip_protocol(path)
    if not fs.isfile(path):
        raise FileNotFoundError(f"No model file at {location!r}.")
    return location, fs.cat_file(path)


def _read_bytes(location: str, data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(metadata, tensors) of a model file held in memory. safetensors.numpy.load returns the
    tensors only, so the metadata is read from the header: an 8-byte little-endian length, then
    that many bytes of JSON."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    if len(data) < 8 or int.from_bytes(data[:8], "little") > len(data) - 8:
        raise _not_a_model(location, f"its {len(data)} bytes do not hold a safetensors header")
    try:
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        tensors = load(data)
    except (SafetensorError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _not_a_model(location, f"it is not a readable safetensors file ({exc})") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else {}, tensors


def _check_dtypes(tensors: dict[str, np.ndarray], dtype: np.dtype) -> None:
    """Every weight and optimizer slot of the model's dtype, the step count an integer: a header
    that declares another dtype over the bytes would load as garbage."""
    for key, value in tensors.items():
        if key == "optimizer.iterations":
            if value.dtype.kind not in "iu":
                raise ValueError(f"array {key!r} is {value.dtype.name}, expected an integer count")
        elif value.dtype != dtype:
            raise ValueError(f"array {key!r} is {value.dtype.name}, but the model is {dtype.name}")


def read_model(path: str | os.PathLike, cls: type[_N], device: str | None = None, compile: bool = True) -> _N:
    """The model saved at ``path`` as an instance of ``cls`` (``dtrain.models.load_model`` is the
    public entry: it passes ``Sequential``)."""
    if device is not None:
        check_device(device)
    if _is_url(path):
        source, data = _download(str(path))
        metadata, tensors = _read_bytes(source, data)
    else:
        local = _resolve_path(path)
        source = str(local)
        metadata, tensors = _read_local(local)
    return _model_from(source, metadata, tensors, cls, device, compile)


def _model_from(
    source: str,
    metadata: dict[str, Any],
    tensors: dict[str, np.ndarray],
    cls: type[_N],
    device: str | None,
    compile: bool,
) -> _N:
    """The model described by a file's metadata and tensors, every part checked."""
    if metadata.get("format") != FORMAT:
        raise _not_a_model(source, f"its header has format={metadata.get('format')!r}, expected {FORMAT!r}")
    version = metadata.get("format_version")
    if version != str(FORMAT_VERSION):
        raise ValueError(
            f"{source!r} uses dtrain model format version {version!r}; this dtrain reads version "
            f"{FORMAT_VERSION}. Upgrade dtrain to load it."
        )
    try:
        config = json.loads(metadata["config"])
        compile_config = json.loads(metadata["compile"]) if "compile" in metadata else None
    except (KeyError, TypeError, json.JSONDecodeError) as exc:  # TypeError: a non-text value
        raise _not_a_model(source, f"its header has no valid model config ({exc!r})") from None

    try:
        model = cls.from_config(config, device=device)
        _check_dtypes(tensors, np.dtype(model.dtype))
        model.build()
        weights = [tensors[key] for key in sorted(k for k in tensors if k.startswith("weights."))]
        model.set_weights(weights)  # checks the count and every shape against the architecture
        if compile and compile_config is not None:
            if not isinstance(compile_config, dict):
                raise ValueError(f"the compile settings are {compile_config!r}, expected a dict")
            model.compile(**compile_config)
            state = {key[len("optimizer.") :]: value for key, value in tensors.items() if key.startswith("optimizer.")}
            if state:
                model.compiled_optimizer.set_state(state)
            elif metadata.get("optimizer_state") == "included":
                raise ValueError("its header says the optimizer state is included, but the file holds none")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{source!r} is a damaged or inconsistent dtrain model file: {exc}") from exc
    return model
