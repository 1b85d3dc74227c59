"""Training data: checking user arrays before any work, epoch orders, and batches.

Every check runs on the host before training starts and names what was received and what was
expected, so that bad input fails fast and loses nothing.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Iterator
from typing import Any

import numpy as np

from .backend import to_numpy
from .buffers import BufferCache
from .randomness import fresh_seed

INIT_STREAM, SHUFFLE_STREAM = 0, 1  # independent random streams derived from one seed


def new_seed() -> int:
    """A fresh random seed (recorded so that an unseeded run can be repeated); repeatable after
    ``dtrain.utils.set_random_seed``."""
    return fresh_seed()


def check_seed(seed: Any) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"Expected seed to be a non-negative integer or None, received seed={seed!r}.")
    return int(seed)


def init_rng(seed: int) -> np.random.Generator:
    """The generator that draws initial weights for ``seed``."""
    return np.random.default_rng([INIT_STREAM, seed])


def _plain(value: Any) -> Any:
    """A NumPy scalar as a plain Python value, so messages read 'nan', not 'np.float64(nan)'."""
    return value.item() if isinstance(value, np.generic) else value


def stream_kind(value: Any) -> str | None:
    """What kind of batch stream ``value`` is (a generator or iterator, a Keras
    ``PyDataset``/``Sequence``, an iterable such as ``tf.data.Dataset``), in words; None for
    arrays and everything else np.asarray or dtrain's sources read."""
    if value is None or isinstance(value, (np.ndarray, list, tuple, str, bytes, numbers.Number)):
        return None
    if any(hasattr(value, attr) for attr in ("__array__", "__array_interface__", "__cuda_array_interface__", "shape")):
        return None  # arrays, Dask arrays, data frames, tensors, dtrain's file sources
    if inspect.isgenerator(value):
        return "a Python generator"
    if hasattr(value, "__next__"):
        return f"an iterator ({type(value).__name__})"
    if hasattr(value, "__getitem__") and hasattr(value, "__len__"):
        return f"a batch sequence ({type(value).__name__}, such as keras.utils.PyDataset)"
    if hasattr(value, "__iter__"):
        return f"an iterable of batches ({type(value).__name__}, such as tf.data.Dataset)"
    return None


def refuse_streams(value: Any, name: str, where: str = "here") -> None:
    """A batch stream where dtrain needs rows it can index (to shard, shuffle and plan them) is
    refused before anything reads it: ``np.asarray`` over an object whose ``__getitem__`` never
    raises IndexError would read it until memory runs out."""
    kind = stream_kind(value)
    if kind is not None:
        raise TypeError(
            f"{name} is {kind}, which dtrain reads batch by batch only as fit's x in one process; {where} it needs "
            "rows it can index: NumPy arrays (or anything np.asarray reads), Dask arrays, or files "
            "(dtrain.from_npy, from_parquet, from_csv). Gather a bounded stream's batches into arrays "
            "(np.concatenate), or write them to .npy files and pass dtrain.from_npy(...)."
        )


def _as_host_array(value: Any, name: str) -> np.ndarray:
    if value is None:
        raise ValueError(f"{name} is None: pass a NumPy array (or anything np.asarray accepts).")
    refuse_streams(value, name)
    try:
        array = to_numpy(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name} could not be read as a numeric array: {exc}") from None
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"{name} must hold numbers, received an array of dtype {array.dtype} "
            f"(first value {_plain(array.flat[0])!r})."
            if array.size
            else f"{name} must hold numbers, received dtype {array.dtype}."
        )
    return array


def _check_finite(array: np.ndarray, name: str) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))[0]
        where = ", ".join(map(str, bad))
        raise ValueError(
            f"{name} contains NaN or infinite values (count: {int((~np.isfinite(array)).sum())}; "
            f"first at {name}[{where}] = {_plain(array[tuple(bad)])!r}). Clean or impute them before training."
        )


def check_features(
    x: Any,
    input_dim: int | None,
    dtype: str,
    name: str = "x",
    flatten: str | None = None,
    sample_shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Validate model inputs and return them as a C-contiguous 2-D host array of ``dtype``.

    ``flatten`` ("channels_last" or "channels_first", Keras' Flatten data formats): samples of
    several axes are flattened in C order (channels_first: the channel axis, axis 1, moved last
    first); ``sample_shape``: the declared shape of one sample, checked before flattening."""
    x = _as_host_array(x, name)
    already_flat = sample_shape is not None and x.ndim == 2 and x.shape[1] == math.prod(sample_shape)
    if flatten is not None and x.ndim >= 2 and not already_flat:  # (rows the client flattened: as they are)
        if sample_shape is not None and x.shape[1:] != tuple(sample_shape):
            raise ValueError(
                f"{name} has samples of shape {x.shape[1:]} (shape {x.shape}), but the model expects "
                f"{tuple(sample_shape)}."
            )
        if x.ndim > 2:
            if flatten == "channels_first":
                x = np.moveaxis(x, 1, -1)
            x = x.reshape(x.shape[0], -1)
    if x.ndim != 2:
        hint = (
            " Reshape it with x.reshape(-1, 1) for a single feature."
            if x.ndim == 1
            else " Start the model with Flatten() to flatten each sample."
        )
        raise ValueError(f"{name} must be 2-D (samples, features), received shape {x.shape}.{hint}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {x.shape}): there are no samples to train on.")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has no features (shape {x.shape}): each sample needs at least one value.")
    if input_dim is not None and x.shape[1] != input_dim:
        raise ValueError(
            f"{name} has {x.shape[1]} features per sample (shape {x.shape}), but the model expects "
            f"input_dim={input_dim}."
        )
    _check_finite(x, name)
    return _cast_finite(x, dtype, name)


def _cast_finite(array: np.ndarray, dtype: str, name: str) -> np.ndarray:
    """``array`` as a C-contiguous array of ``dtype``, refusing values that overflow it
    (1e39 is finite in float64 but infinite in float32)."""
    with np.errstate(over="ignore", invalid="ignore"):  # reported below, with a better message
        out = np.ascontiguousarray(array, dtype=dtype)
    if out is not array and out.dtype.kind == "f" and not np.isfinite(out).all():
        bad = np.argwhere(~np.isfinite(out))[0]
        where = ", ".join(map(str, bad))
        raise ValueError(
            f"{name} has values too large for {dtype} (first at {name}[{where}] = {_plain(array[tuple(bad)])!r}); "
            f"rescale the data or use dtype='float64'."
        )
    return out


def check_sample_weight(weights: Any, n: int, name: str = "sample_weight") -> np.ndarray:
    """Per-sample loss weights as a float64 host array of length ``n``: finite, not negative
    (a negative weight would reward the errors it weighs)."""
    refuse_streams(weights, name)
    w = _as_host_array(weights, name)
    if w.ndim == 2 and w.shape[1] == 1:
        w = w.reshape(-1)
    if w.ndim != 1 or w.shape[0] != n:
        raise ValueError(
            f"{name} must hold one weight per sample: {n} of them, shape ({n},); received shape {w.shape}."
        )
    _check_finite(w, name)
    if w.size and w.min() < 0:
        bad = int(np.argmin(w))
        raise ValueError(f"{name} must not be negative; {name}[{bad}] = {_plain(w[bad])!r}.")
    return np.ascontiguousarray(w, dtype=np.float64)


def check_class_weight(class_weight: Any, units: int) -> dict[int, float]:
    """Keras' ``class_weight``: {class index: weight}, for classes the model's outputs have
    (0 and 1 for a one-unit binary output); classes left out weigh 1."""
    if not isinstance(class_weight, dict) or not class_weight:
        raise ValueError(
            f"class_weight must be a dict {{class index: weight}}, such as {{0: 1.0, 1: 5.0}}; received {class_weight!r}."
        )
    classes = max(units, 2)
    out: dict[int, float] = {}
    for key, value in class_weight.items():
        index = int(key) if isinstance(key, (numbers.Integral, str)) and str(key).lstrip("-").isdigit() else None
        if index is None or not 0 <= index < classes:
            raise ValueError(
                f"class_weight has class {key!r}, which the model's {units} output(s) do not have: classes are "
                f"0 .. {classes - 1}."
            )
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise ValueError(f"class_weight[{key!r}] must be a number >= 0, received {value!r}.")
        out[index] = float(value)
    return out


def class_weights_of(y: np.ndarray, class_weight: dict[int, float]) -> np.ndarray:
    """Each row's weight from its class, as Keras finds it (``class_weight_to_sample_weights``):
    the arg max of one-hot rows, the rounded value of a single column; 1 for other classes."""
    labels = np.asarray(y)
    if labels.ndim > 1:
        labels = labels.reshape(len(labels), -1)
        labels = np.argmax(labels, axis=-1) if labels.shape[1] != 1 else labels[:, 0]
    labels = np.round(labels).astype(np.int64)
    table = np.ones(max(class_weight) + 2, dtype=np.float64)
    for index, weight in class_weight.items():
        table[index] = weight
    return table[np.clip(labels, -1, len(table) - 1)]  # (-1 and past the table: the last entry, 1.0)


def check_targets(y: Any, n: int, loss, units: int, dtype: str, name: str = "y", x_name: str = "x") -> np.ndarray:
    """Validate targets for ``loss`` and return them in the form it computes with."""
    y = _as_host_array(y, name)
    if y.ndim == 0:
        raise ValueError(f"{name} must have one entry per sample, received a scalar.")
    if y.shape[0] != n:
        raise ValueError(
            f"{x_name} and {name} have different numbers of samples: {x_name} has {n}, {name} has "
            f"{y.shape[0]} (shape {y.shape})."
        )
    _check_finite(y, name)
    y = loss.prepare_targets(y, units)
    return np.ascontiguousarray(y) if loss.integer_targets else _cast_finite(y, dtype, name)


def check_batch_size(batch_size: Any, default: int = 32) -> int:
    if batch_size is None:
        return default
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"Expected batch_size to be a positive integer, received batch_size={batch_size!r}.")
    if batch_size > 2**53:  # (it indexes int64 arrays, and counts go through float64)
        raise ValueError(f"Expected batch_size to be at most 2**53, received batch_size={batch_size!r}.")
    return int(batch_size)


def batches(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of at most batch_size rows; the last one may be partial (as Keras)."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


class BatchGatherer:
    """Copies the rows of one batch into a reusable host buffer (no allocation per step)."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self._buffers: BufferCache[np.ndarray] = BufferCache()

    def take(self, rows: np.ndarray) -> np.ndarray:
        n = len(rows)
        buf = self._buffers.get(n, lambda: np.empty((n, *self.array.shape[1:]), self.array.dtype))
        # mode="clip": with the default mode="raise" NumPy gathers into a temporary buffer and
        # copies it to ``out``, one allocation per step. The rows come from a permutation, so
        # they are always in range and clipping never changes them.
        np.take(self.array, rows, axis=0, out=buf, mode="clip")
        return buf
