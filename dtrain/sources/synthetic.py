"""Generated classification data: each worker generates the rows it trains on, so nothing is
materialised on the client or sent over the network.

Rows are generated in fixed blocks, each from its own RNG stream, so row i is the same
whichever range it is read in, on whichever worker; the class centres have a stream of their
own. A worker generates only the blocks its rows touch.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import ShardReader, Source, role_prefix

SYNTHETIC_BLOCK = 4096  # rows per block; changing it changes every dataset
_CENTRES_STREAM = 2**32 - 1  # the centres' stream id; blocks use 0, 1, 2, ...
_NOISE = 0.5  # standard deviation around a centre, as dtrain.datasets.make_classification


@functools.lru_cache(maxsize=4)
def _centres(seed: int, classes: int, features: int, separation: float) -> np.ndarray:
    rng = np.random.default_rng([seed, _CENTRES_STREAM])
    # As make_classification: centres about `separation` noise units apart, whatever the width.
    return rng.standard_normal((classes, features)) * (separation * 3.0 / math.sqrt(features))


@dataclass(frozen=True)
class _Synthetic:
    """A generated classification problem: Gaussian clusters, one per class."""

    samples: int
    features: int
    classes: int
    seed: int
    separation: float
    one_hot: bool
    dtype: np.dtype  # of x, and of one-hot y

    def describe(self) -> str:
        return (
            f"synthetic classification data ({self.samples} samples, {self.features} features, {self.classes} "
            f"classes, seed={self.seed}, separation={self.separation:g})"
        )

    def _block(self, block: int, with_x: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """(labels, x or None) of one whole block, even the last: so the rows of a small dataset
        are the first rows of a larger one with the same seed. Labels are drawn first, so y
        never needs the noise."""
        rng = np.random.default_rng([self.seed, block])
        labels = rng.integers(0, self.classes, size=SYNTHETIC_BLOCK)
        if not with_x:
            return labels, None
        centres = _centres(self.seed, self.classes, self.features, self.separation)
        x = centres[labels] + rng.standard_normal((len(labels), self.features)) * _NOISE
        return labels, x.astype(self.dtype)

    def rows(self, part: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of ``part`` ("x", or "y": one-hot or int64 labels)."""
        want_x = part == "x"
        labels = np.empty(stop - start, np.int64)
        x = np.empty((stop - start, self.features), self.dtype) if want_x else None
        for block in range(start // SYNTHETIC_BLOCK, -(-stop // SYNTHETIC_BLOCK)):  # only those touched
            first = block * SYNTHETIC_BLOCK
            lo, hi = max(start, first), min(stop, first + SYNTHETIC_BLOCK)
            block_labels, block_x = self._block(block, want_x)
            labels[lo - start : hi - start] = block_labels[lo - first : hi - first]
            if x is not None and block_x is not None:
                x[lo - start : hi - start] = block_x[lo - first : hi - first]
        if x is not None:
            return x
        if not self.one_hot:
            return labels
        y = np.zeros((stop - start, self.classes), self.dtype)
        y[np.arange(stop - start), labels] = 1
        return y


class SyntheticSource(Source):
    """x or y of generated classification data (:func:`from_synthetic`): each worker generates
    its own rows; nothing is materialised on the client or sent over the network."""

    def __init__(self, spec: _Synthetic, part: str, role: str | None = None):
        self.spec, self.part, self.role = spec, part, role
        self.n_rows = spec.samples
        if part == "x":
            self.row_shape, self.dtype = (spec.features,), spec.dtype
        elif spec.one_hot:
            self.row_shape, self.dtype = (spec.classes,), spec.dtype
        else:
            self.row_shape, self.dtype = (), np.dtype(np.int64)

    def describe(self) -> str:
        what = "features" if self.part == "x" else ("one-hot labels" if self.spec.one_hot else "labels")
        return f"{role_prefix(self.role)}{self.spec.describe()}: {what} {(self.n_rows, *self.row_shape)} {self.dtype}"

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = self._check_range(start, stop)
        return self.spec.rows(self.part, start, stop) if stop > start else np.empty((0, *self.row_shape), self.dtype)

    def shard(self, start: int, stop: int, client: Any, worker: str) -> ShardReader:
        start, stop = self._check_range(start, stop)
        return _SyntheticReader(start, stop, self.row_shape, self.dtype, spec=self.spec, part=self.part)


class _SyntheticReader(ShardReader):
    def __init__(self, start, stop, row_shape, dtype, spec: _Synthetic, part: str):
        super().__init__(start, stop, row_shape, dtype)
        self.spec, self.part = spec, part

    def _load(self, resolved: list) -> np.ndarray:
        return self.spec.rows(self.part, self.start, self.stop)


def _positive_int(name: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise ValueError(f"from_synthetic expected {name} to be an integer >= {least}, received {name}={value!r}.")
    return int(value)


def _synthetic_spec(samples, features, classes, seed, separation, one_hot, dtype) -> _Synthetic:
    """The arguments of :func:`from_synthetic`, checked."""
    samples, features = _positive_int("samples", samples, 1), _positive_int("features", features, 1)
    classes, seed = _positive_int("classes", classes, 2), _positive_int("seed", seed, 0)
    if (
        isinstance(separation, bool)
        or not isinstance(separation, (int, float, np.number))
        or not (math.isfinite(separation) and separation >= 0)
    ):
        raise ValueError(
            f"from_synthetic expected separation to be a finite number >= 0, received separation={separation!r}."
        )
    if not isinstance(one_hot, bool):
        raise ValueError(f"from_synthetic expected one_hot to be True or False, received one_hot={one_hot!r}.")
    try:
        floats = np.dtype(dtype)
    except TypeError:
        floats = None
    if floats is None or floats.kind != "f":
        raise ValueError(
            f"from_synthetic expected a floating-point dtype such as 'float32' or 'float64', received dtype={dtype!r}."
        )
    return _Synthetic(samples, features, classes, seed, float(separation), one_hot, floats)


def from_synthetic(
    samples: int,
    features: int,
    classes: int,
    *,
    seed: int = 0,
    separation: float = 1.0,
    one_hot: bool = True,
    dtype: Any = "float32",
) -> tuple[SyntheticSource, SyntheticSource]:
    """(x, y) of seeded generated classification data that every worker generates for its own
    rows: nothing is materialised on the client or sent over the network.

    Gaussian clusters around one random centre per class, as
    :func:`dtrain.datasets.make_classification` (same ``separation`` scale and noise, but not the
    same numbers: rows are drawn in blocks of ``SYNTHETIC_BLOCK`` rows, block k from
    ``default_rng([seed, k])``, the centres from ``default_rng([seed, 2**32 - 1])``). So row i is
    the same whatever range it is read in. x is (samples, features) of ``dtype``; y is one-hot
    (samples, classes) of ``dtype``, or int64 labels (samples,) with ``one_hot=False``.

    ``fit(x, y, client=client)`` trains on them; single-process ``fit`` takes arrays, which
    ``x.read(0, samples)`` and ``y.read(0, samples)`` give.
    """
    spec = _synthetic_spec(samples, features, classes, seed, separation, one_hot, dtype)
    return SyntheticSource(spec, "x", "x"), SyntheticSource(spec, "y", "y")
