"""Layers that are random in training: ``Dropout`` and ``GaussianNoise``.

Their randomness is a function of (seed, layer, epoch, global row, unit) (``dtrain.randomness``):
a row gets the same mask or noise whichever rank trains it, so N workers give the result of
one process. The seed is the layer's ``seed`` when given, else the run's (``fit(seed=)``); the
layer's place in the model tells the layers apart. Outside training both are the identity.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import randomness
from ..backend import Array
from ..randomness import StepNoise
from .base import Layer, optional_seed, real_number


class _Random(Layer):
    random = True

    def __init__(self, seed: Any, name: str | None):
        self.seed = optional_seed(seed, type(self).__name__)
        super().__init__(name)
        self._noise: StepNoise | None = None
        self._stream = 0
        self._calls = 0  # training passes outside fit (no StepNoise): each draws anew

    def set_noise(self, noise: StepNoise, stream: int) -> None:
        self._noise, self._stream = noise, stream

    def _key(self, n: int, draw: int = 0) -> tuple[np.uint64, np.ndarray]:
        """This pass's key and the global rows of its batch; ``draw`` separates the streams
        one pass needs (GaussianNoise's two uniforms)."""
        noise, self._noise = self._noise, None  # (one pass per set_noise)
        if noise is None:  # a training pass outside fit: model(x, training=True)
            self._calls += 1
            noise = StepNoise(0, -self._calls, np.arange(n))
        seed = noise.seed if self.seed is None else self.seed
        return randomness.stream_key(seed, self._stream, noise.epoch, draw), noise.rows

    def _bits(self, n: int, width: int, key: np.uint64, rows: np.ndarray, slot: str) -> Array:
        out = self._buffer(slot, n, width, np.uint32)
        scratch = self._buffer("bits scratch", n, width, np.uint32)
        return randomness.bits(self._xp, key, rows, width, out, scratch)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "seed": self.seed}


class Dropout(_Random):
    """``keras.layers.Dropout(rate, noise_shape=None, seed=None)``: in training, each input is
    zeroed with probability ``rate`` and the others are divided by 1 - rate (Keras' formula)."""

    default_name = "dropout"

    def __init__(self, rate: Any, noise_shape: Any = None, seed: Any = None, name: str | None = None):
        self.rate = real_number("rate", rate, "Dropout", 0.0, 1.0)
        if noise_shape is not None:
            raise ValueError(
                f"Dropout(noise_shape={noise_shape!r}) is not supported: on the (samples, features) rows of a dense "
                "network every input has its own mask."
            )
        super().__init__(seed, name)
        self._mask: Array = None

    def forward(self, x: Array, training: bool = False) -> Array:
        if not training or self.rate == 0.0:
            self._mask = None
            self._out = x
            return x
        xp, (n, width) = self._xp, x.shape
        out = self._buffer("out", n, width, x.dtype)
        mask = self._buffer("mask", n, width, bool)
        key, rows = self._key(n)
        bits = self._bits(n, width, key, rows, "bits")
        xp.greater_equal(bits, randomness.keep_threshold(self.rate), out=mask)
        if self.rate == 1.0:  # Keras: everything dropped (without dividing by zero)
            out.fill(0)
        else:
            xp.divide(x, 1.0 - self.rate, out=out)
            out *= mask
        self._mask, self._out = mask, out
        return out

    def backward(self, grad: Array, *, grad_is_logits: bool = False, need_input_grad: bool = True) -> Array | None:
        if not need_input_grad:
            return None
        if self._mask is not None:
            if self.rate == 1.0:
                grad.fill(0)
            else:
                grad /= 1.0 - self.rate
                grad *= self._mask
        return grad

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rate": self.rate}

    def __repr__(self) -> str:
        return f"Dropout({self.rate}, name={self.name!r})"


class GaussianNoise(_Random):
    """``keras.layers.GaussianNoise(stddev, seed=None)``: in training, adds zero-mean Gaussian
    noise of standard deviation ``stddev`` (Box-Muller from two hashed uniforms)."""

    default_name = "gaussian_noise"

    def __init__(self, stddev: Any, seed: Any = None, name: str | None = None):
        self.stddev = real_number("stddev", stddev, "GaussianNoise", 0.0, math.inf)
        super().__init__(seed, name)

    def forward(self, x: Array, training: bool = False) -> Array:
        if not training or self.stddev == 0.0:
            self._out = x
            return x
        xp, (n, width) = self._xp, x.shape
        out = self._buffer("out", n, width, x.dtype)
        angle = self._buffer("angle", n, width, x.dtype)
        key, rows = self._key(n, draw=0)
        radius_key = randomness.stream_key(int(key), 1)
        # z = sqrt(-2 ln u1) cos(2 pi u2), u1 and u2 uniform on (0, 1]
        randomness.to_unit_interval(xp, self._bits(n, width, radius_key, rows, "bits"), out)
        xp.log(out, out=out)
        out *= -2.0
        xp.sqrt(out, out=out)
        randomness.to_unit_interval(xp, self._bits(n, width, key, rows, "bits"), angle)
        angle *= 2.0 * math.pi
        xp.cos(angle, out=angle)
        out *= angle
        out *= self.stddev
        out += x
        self._out = out
        return out

    def backward(self, grad: Array, *, grad_is_logits: bool = False, need_input_grad: bool = True) -> Array | None:
        return grad if need_input_grad else None

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "stddev": self.stddev}
