"""Randomness that is a function of where it is used, never of who computes it.

A dropout mask or a noise value in training is a pure function of (seed, stream, epoch, global
row, unit): the stream names the layer, the global row is the sample's index in the training
data (not its place in a rank's batch). So a row gets the same mask whichever rank holds it and
whatever else is in its batch, and N workers compute what one process computes.

It is a counter-based hash, evaluated in integer arithmetic that NumPy and CuPy compute alike
(unsigned integers wrap on overflow in both):

- per row and per unit, a 32-bit key from SplitMix64 (Steele, Lea & Flood 2014) of the stream's
  key and the row (or unit) index: small arrays, computed on the host;
- per element, MurmurHash3's 32-bit finaliser (fmix32, Appleby) of the row key XOR the unit
  key: eight passes of elementwise integer arithmetic over the (rows, units) block, in the
  array module of the layer (NumPy or CuPy).

fmix32 is a bijection with full avalanche, so the elements' bits look independent although
their inputs share keys; two elements collide only where their keys' XORs do (about one pair in
2**32). Measured cost: benchmarks/RESULTS.md (dropout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_UNITS_SALT = np.uint64(0xD1B54A32D192ED03)
_FMIX1 = np.uint32(0x85EBCA6B)
_FMIX2 = np.uint32(0xC2B2AE35)
_TWO_POW_32 = 4294967296.0


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function of uint64 ``x`` (an array: NumPy arrays wrap silently)."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def stream_key(*words: int) -> np.uint64:
    """One 64-bit key from non-negative integers (seed, stream, epoch, ...), chained through
    SplitMix64 so that every word changes every bit."""
    key = np.zeros(1, dtype=np.uint64)
    for word in words:
        key = splitmix64(key ^ np.array([int(word) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    return key[0]


def _keys32(key: np.uint64, indices: np.ndarray) -> np.ndarray:
    """uint32 keys of ``indices`` (non-negative integers) under ``key``."""
    mixed = splitmix64(np.asarray(indices, dtype=np.uint64) * _GOLDEN ^ key)
    return (mixed >> np.uint64(32)).astype(np.uint32)


_seeds: np.random.Generator | None = None  # set_random_seed's: where unseeded runs take their seeds


def set_random_seed(seed: int) -> None:
    """Make unseeded work repeatable, as ``keras.utils.set_random_seed``: every run or model
    given no seed then takes one from a sequence that starts at ``seed`` (also seeds Python's
    ``random`` and NumPy's global generator, as Keras does)."""
    import random

    global _seeds
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"set_random_seed expected an integer in [0, 2**32), received {seed!r}.")
    _seeds = np.random.default_rng([0x5EED, int(seed)])
    random.seed(int(seed))
    np.random.seed(int(seed))


def fresh_seed() -> int:
    """A new seed for work given none: from set_random_seed's sequence, else from the OS."""
    if _seeds is not None:
        return int(_seeds.integers(0, 2**63))
    # Without an argument SeedSequence draws its entropy from the OS.
    return int(np.random.SeedSequence().entropy % (2**63))  # type: ignore[operator]


@dataclass(frozen=True)
class StepNoise:
    """Where a training step's randomness comes from: the run's seed, the epoch, and the global
    indices of the batch's rows (host integers, in the batch's order)."""

    seed: int
    epoch: int
    rows: np.ndarray


def bits(xp: Any, key: np.uint64, rows: np.ndarray, units: int, out: Any, scratch: Any) -> Any:
    """Fill ``out`` (uint32, (len(rows), units), in module ``xp``) with the hash of every
    (row, unit) under ``key``; ``scratch`` is a second such array. Returns ``out``."""
    row_keys = xp.asarray(_keys32(key, rows))
    unit_keys = xp.asarray(_keys32(key ^ _UNITS_SALT, np.arange(units)))
    xp.bitwise_xor(row_keys[:, None], unit_keys[None, :], out=out)
    for shift, factor in ((16, _FMIX1), (13, _FMIX2)):
        xp.right_shift(out, shift, out=scratch)
        xp.bitwise_xor(out, scratch, out=out)
        xp.multiply(out, factor, out=out)
    xp.right_shift(out, 16, out=scratch)
    xp.bitwise_xor(out, scratch, out=out)
    return out


def keep_threshold(rate: float) -> np.uint32:
    """Bits at or above this keep their element: probability 1 - rate (to 2**-32)."""
    return np.uint32(min(round(rate * _TWO_POW_32), 0xFFFFFFFF))


def to_unit_interval(xp: Any, bits_: Any, out: Any) -> Any:
    """Uniform floats in (0, 1] from uint32 bits: (bits + 1) / 2**32, in ``out``'s dtype."""
    xp.add(bits_, 1.0, out=out)  # (in out's float dtype: no uint32 overflow at 2**32 - 1)
    out *= 1.0 / _TWO_POW_32
    return out
