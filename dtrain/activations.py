"""Activations: elementwise (or row-wise, for softmax) functions and their derivatives.

Each activation writes ``a = f(z)`` into a caller-owned buffer, and its backward pass needs
only that output ``a`` (not ``z``): for every function here f'(z) can be written in terms of
f(z), which lets a layer keep one buffer per batch instead of two.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import numpy as np

from .backend import Array
from .registry import resolve


@cache
def exp_cap(dtype) -> float:
    """Largest argument (less a margin) whose exp is finite in ``dtype``: clipping the argument
    of exp to it keeps exp from overflowing (and from warning) while changing no result that
    is representable."""
    return math.log(float(np.finfo(dtype).max)) - 1.0


class Activation:
    """Base class. ``forward(xp, z, out)`` writes f(z) to ``out``;
    ``backward(xp, da, a, out, scratch)`` writes dL/dz = dL/da * f'(z) to ``out`` (which may
    alias ``da``) given ``a = f(z)``, using ``scratch`` (same shape, any content) for temporaries
    so that a training step allocates nothing."""

    name = "activation"

    def forward(self, xp: Any, z: Array, out: Array) -> None:
        raise NotImplementedError

    def backward(self, xp: Any, da: Array, a: Array, out: Array, scratch: Array) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Linear(Activation):
    """f(z) = z."""

    name = "linear"

    def forward(self, xp, z, out):
        if out is not z:
            xp.copyto(out, z)

    def backward(self, xp, da, a, out, scratch):
        if out is not da:
            xp.copyto(out, da)


class ReLU(Activation):
    """f(z) = max(z, 0); f'(z) = 1 where z > 0 else 0 (0 at z = 0, as TensorFlow and PyTorch)."""

    name = "relu"

    def forward(self, xp, z, out):
        xp.maximum(z, 0, out=out)

    def backward(self, xp, da, a, out, scratch):
        # a >= 0, so sign(a) is exactly the 0/1 mask of a > 0, with no bool temporary.
        xp.sign(a, out=scratch)
        xp.multiply(da, scratch, out=out)


class Sigmoid(Activation):
    """f(z) = 1 / (1 + exp(-z)); f'(z) = a (1 - a).

    1 / (1 + exp(-z)) has no cancellation for any z (for z << 0 it is 1 / (1 + huge), accurate
    to a few ulps); the argument of exp is capped so that it never overflows (the cap changes
    only results below the dtype's smallest normal number). In place: no temporaries."""

    name = "sigmoid"

    def forward(self, xp, z, out):
        xp.negative(z, out=out)
        xp.minimum(out, exp_cap(out.dtype), out=out)
        xp.exp(out, out=out)
        out += 1.0
        xp.reciprocal(out, out=out)

    def backward(self, xp, da, a, out, scratch):
        xp.subtract(1.0, a, out=scratch)
        scratch *= a
        xp.multiply(da, scratch, out=out)


class Tanh(Activation):
    """f(z) = tanh(z); f'(z) = 1 - a^2."""

    name = "tanh"

    def forward(self, xp, z, out):
        xp.tanh(z, out=out)

    def backward(self, xp, da, a, out, scratch):
        xp.multiply(a, a, out=scratch)
        xp.subtract(1.0, scratch, out=scratch)
        xp.multiply(da, scratch, out=out)


class Softmax(Activation):
    """f(z)_i = exp(z_i - max z) / sum_j exp(z_j - max z) over the last axis (stable for any z);
    backward: dz = a * (da - sum_j da_j a_j)."""

    name = "softmax"

    def forward(self, xp, z, out):
        xp.subtract(z, z.max(axis=-1, keepdims=True), out=out)
        xp.exp(out, out=out)
        out /= out.sum(axis=-1, keepdims=True)

    def backward(self, xp, da, a, out, scratch):
        xp.multiply(da, a, out=scratch)
        dot = scratch.sum(axis=-1, keepdims=True)
        xp.subtract(da, dot, out=out)
        out *= a


ACTIVATIONS: dict[str, type[Activation]] = {
    "linear": Linear,
    "relu": ReLU,
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "softmax": Softmax,
}


def get(identifier: Any) -> Activation:
    """Return an activation from a name ("relu", ...), None (linear), a config dict or an instance."""
    if identifier is None:
        return Linear()
    return resolve(identifier, ACTIVATIONS, "activation", Activation)


def serialize(activation: Activation) -> str:
    return activation.name
