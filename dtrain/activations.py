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

from .backend import Array, array_module_of, erf_of
from .registry import resolve


@cache
def exp_cap(dtype) -> float:
    """Largest argument (less a margin) whose exp is finite in ``dtype``: clipping the argument
    of exp to it keeps exp from overflowing (and from warning) while changing no result that
    is representable."""
    return math.log(float(np.finfo(dtype).max)) - 1.0


class Activation:
    """Base class. ``forward(xp, z, out)`` writes f(z) to ``out``;
    ``backward(xp, da, a, out, scratch, z=None)`` writes dL/dz = dL/da * f'(z) to ``out`` (which
    may alias ``da``) given ``a = f(z)``, using ``scratch`` (same shape, any content) for
    temporaries so that a training step allocates nothing. Functions whose derivative needs z
    itself say ``needs_input = True``; then z is passed (and is not the scratch)."""

    name = "activation"
    needs_input = False

    def forward(self, xp: Any, z: Array, out: Array) -> None:
        raise NotImplementedError

    def backward(self, xp: Any, da: Array, a: Array, out: Array, scratch: Array, z: Array = None) -> None:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """The arguments that differ from the defaults (none for most functions)."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class Linear(Activation):
    """f(z) = z."""

    name = "linear"

    def forward(self, xp, z, out):
        if out is not z:
            xp.copyto(out, z)

    def backward(self, xp, da, a, out, scratch, z=None):
        if out is not da:
            xp.copyto(out, da)


class ReLU(Activation):
    """f(z) = max(z, 0); f'(z) = 1 where z > 0 else 0 (0 at z = 0, as TensorFlow and PyTorch).

    Keras' general form, ``relu(z, negative_slope, max_value, threshold)``: z above
    ``threshold`` (capped at ``max_value``), ``negative_slope * (z - threshold)`` below it."""

    name = "relu"

    def __init__(self, negative_slope: float = 0.0, max_value: float | None = None, threshold: float = 0.0):
        self.negative_slope = float(negative_slope)
        self.max_value = None if max_value is None else float(max_value)
        self.threshold = float(threshold)
        self.needs_input = self._general = (self.negative_slope, self.max_value, self.threshold) != (0.0, None, 0.0)

    def forward(self, xp, z, out):
        if not self._general:
            xp.maximum(z, 0, out=out)
            return
        t = self.threshold
        # Keras' formula, term by term: where(z > t, z, 0), capped, less slope * relu(t - z).
        xp.multiply(z, z > t, out=out)
        if self.max_value is not None:
            xp.minimum(out, self.max_value, out=out)
        if self.negative_slope:
            out -= self.negative_slope * xp.maximum(t - z, 0)

    def backward(self, xp, da, a, out, scratch, z=None):
        if not self._general:
            # a >= 0, so sign(a) is exactly the 0/1 mask of a > 0, with no bool temporary.
            xp.sign(a, out=scratch)
            xp.multiply(da, scratch, out=out)
            return
        t = self.threshold
        xp.greater(z, t, out=scratch)
        if self.max_value is not None:
            scratch *= z < self.max_value
        if self.negative_slope:
            scratch += self.negative_slope * (z < t)
        xp.multiply(da, scratch, out=out)

    def get_config(self):
        defaults = {"negative_slope": 0.0, "max_value": None, "threshold": 0.0}
        values = {"negative_slope": self.negative_slope, "max_value": self.max_value, "threshold": self.threshold}
        return {k: v for k, v in values.items() if v != defaults[k]}


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

    def backward(self, xp, da, a, out, scratch, z=None):
        xp.subtract(1.0, a, out=scratch)
        scratch *= a
        xp.multiply(da, scratch, out=out)


class Tanh(Activation):
    """f(z) = tanh(z); f'(z) = 1 - a^2."""

    name = "tanh"

    def forward(self, xp, z, out):
        xp.tanh(z, out=out)

    def backward(self, xp, da, a, out, scratch, z=None):
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

    def backward(self, xp, da, a, out, scratch, z=None):
        xp.multiply(da, a, out=scratch)
        dot = scratch.sum(axis=-1, keepdims=True)
        xp.subtract(da, dot, out=out)
        out *= a


class _Elementwise(Activation):
    """An elementwise function given as f(z) and f'(z): backward is da * f'(z), with f'(z)
    computed into the scratch array. ``derivative(xp, z, a, out)`` may read z and a = f(z)."""

    needs_input = True

    def backward(self, xp, da, a, out, scratch, z=None):
        self.derivative(xp, z, a, scratch)
        xp.multiply(da, scratch, out=out)

    def derivative(self, xp: Any, z: Array, a: Array, out: Array) -> None:
        raise NotImplementedError


def _expm1_below_zero(xp: Any, z: Array, out: Array) -> Array:
    """expm1(min(z, 0)) in ``out``: the negative branch of elu-like functions, never overflowing."""
    xp.minimum(z, 0, out=out)
    xp.expm1(out, out=out)
    return out


def _stable_sigmoid(xp: Any, z: Array, out: Array) -> Array:
    Sigmoid().forward(xp, z, out)
    return out


class LeakyReLU(_Elementwise):
    """f(z) = z for z >= 0, negative_slope * z below (Keras' leaky_relu: default slope 0.2; the
    LeakyReLU layer's default is 0.3)."""

    name = "leaky_relu"

    def __init__(self, negative_slope: float = 0.2):
        self.negative_slope = float(negative_slope)

    def forward(self, xp, z, out):
        xp.multiply(z, self.negative_slope, out=out)
        xp.maximum(out, z, out=out) if self.negative_slope <= 1 else xp.minimum(out, z, out=out)

    def derivative(self, xp, z, a, out):
        xp.greater_equal(z, 0, out=out)
        out *= 1.0 - self.negative_slope
        out += self.negative_slope

    def get_config(self):
        return {} if self.negative_slope == 0.2 else {"negative_slope": self.negative_slope}


class ReLU6(_Elementwise):
    """f(z) = min(max(z, 0), 6)."""

    name = "relu6"

    def forward(self, xp, z, out):
        xp.clip(z, 0, 6, out=out)

    def derivative(self, xp, z, a, out):
        xp.greater(z, 0, out=out)
        out *= z < 6


class ELU(_Elementwise):
    """f(z) = z for z > 0, alpha * (exp(z) - 1) below; f'(z) = 1, or a + alpha."""

    name = "elu"

    def __init__(self, alpha: float = 1.0):
        self.alpha = float(alpha)

    def forward(self, xp, z, out):
        _expm1_below_zero(xp, z, out)
        out *= self.alpha
        xp.copyto(out, z, where=z > 0)

    def derivative(self, xp, z, a, out):
        xp.add(a, self.alpha, out=out)
        out[z > 0] = 1.0

    def get_config(self):
        return {} if self.alpha == 1.0 else {"alpha": self.alpha}


class SELU(_Elementwise):
    """f(z) = scale * elu(z, alpha) with Klambauer et al.'s alpha and scale (as Keras)."""

    name = "selu"
    ALPHA = 1.6732632423543772848170429916717
    SCALE = 1.0507009873554804934193349852946

    def forward(self, xp, z, out):
        _expm1_below_zero(xp, z, out)
        out *= self.ALPHA
        xp.copyto(out, z, where=z > 0)
        out *= self.SCALE

    def derivative(self, xp, z, a, out):
        xp.add(a, self.SCALE * self.ALPHA, out=out)
        out[z > 0] = self.SCALE


class CELU(_Elementwise):
    """f(z) = z for z > 0, alpha * (exp(z / alpha) - 1) below."""

    name = "celu"

    def __init__(self, alpha: float = 1.0):
        self.alpha = float(alpha)

    def forward(self, xp, z, out):
        xp.divide(z, self.alpha, out=out)
        _expm1_below_zero(xp, out, out)
        out *= self.alpha
        xp.copyto(out, z, where=z > 0)

    def derivative(self, xp, z, a, out):
        xp.divide(a, self.alpha, out=out)
        out += 1.0
        out[z > 0] = 1.0

    def get_config(self):
        return {} if self.alpha == 1.0 else {"alpha": self.alpha}


class Softplus(_Elementwise):
    """f(z) = log(1 + exp(z)), as max(z, 0) + log1p(exp(-|z|)) (no overflow); f'(z) = sigmoid(z)."""

    name = "softplus"

    def forward(self, xp, z, out):
        xp.abs(z, out=out)
        xp.negative(out, out=out)
        xp.exp(out, out=out)
        xp.log1p(out, out=out)
        out += xp.maximum(z, 0)

    def derivative(self, xp, z, a, out):
        _stable_sigmoid(xp, z, out)


class Softsign(Activation):
    """f(z) = z / (1 + |z|); f'(z) = 1 / (1 + |z|)^2 = (1 - |a|)^2."""

    name = "softsign"

    def forward(self, xp, z, out):
        xp.abs(z, out=out)
        out += 1.0
        xp.divide(z, out, out=out)

    def backward(self, xp, da, a, out, scratch, z=None):
        xp.abs(a, out=scratch)
        xp.subtract(1.0, scratch, out=scratch)
        scratch *= scratch
        xp.multiply(da, scratch, out=out)


class SiLU(_Elementwise):
    """f(z) = z * sigmoid(z) (swish); f'(z) = s + z s (1 - s)."""

    name = "silu"

    def forward(self, xp, z, out):
        _stable_sigmoid(xp, z, out)
        out *= z

    def derivative(self, xp, z, a, out):
        _stable_sigmoid(xp, z, out)  # s
        # s + z s (1 - s) = s + a (1 - s)
        out2 = a * (1.0 - out)
        out += out2


class GELU(_Elementwise):
    """f(z) = z Phi(z) = z (1 + erf(z / sqrt 2)) / 2 (Keras' default); with ``approximate``,
    z (1 + tanh(sqrt(2 / pi) (z + 0.044715 z^3))) / 2."""

    name = "gelu"
    _C = math.sqrt(2.0 / math.pi)

    def __init__(self, approximate: bool = False):
        if not isinstance(approximate, bool):
            raise ValueError(f"gelu expected a bool for approximate, received approximate={approximate!r}.")
        self.approximate = approximate

    def forward(self, xp, z, out):
        if self.approximate:
            # (tanh saturates long before |z| = 1e4: clipping there keeps z^3 from overflowing)
            xp.clip(z, -1e4, 1e4, out=out)
            xp.multiply(out, out, out=out)
            out *= 0.044715
            out += 1.0
            out *= xp.clip(z, -1e4, 1e4)
            out *= self._C
            xp.tanh(out, out=out)
        else:
            xp.multiply(z, 1.0 / math.sqrt(2.0), out=out)
            erf_of(xp)(out, out=out)
        out += 1.0
        out *= z
        out *= 0.5

    def derivative(self, xp, z, a, out):
        # Beyond |z| = 40 (1e4 approximated) the derivative is 0 or 1 to the last bit, and the
        # clipped z keeps z^2 and z^3 from overflowing.
        if self.approximate:
            zc = xp.clip(z, -1e4, 1e4)
            t = xp.tanh(self._C * (zc + 0.044715 * zc**3))
            xp.multiply(0.5 * zc * (1.0 - t * t) * self._C, 1.0 + 3.0 * 0.044715 * zc * zc, out=out)
            out += 0.5 * (1.0 + t)
        else:
            # Phi(z) + z phi(z)
            zc = xp.clip(z, -40.0, 40.0)
            xp.multiply(zc, 1.0 / math.sqrt(2.0), out=out)
            erf_of(xp)(out, out=out)
            out += 1.0
            out *= 0.5
            out += zc * xp.exp(-0.5 * zc * zc) * (1.0 / math.sqrt(2.0 * math.pi))

    def get_config(self):
        return {"approximate": True} if self.approximate else {}


class HardSigmoid(_Elementwise):
    """f(z) = relu6(z + 3) / 6 (Keras 3's definition); f'(z) = 1/6 on (-3, 3)."""

    name = "hard_sigmoid"

    def forward(self, xp, z, out):
        xp.add(z, 3.0, out=out)
        xp.clip(out, 0.0, 6.0, out=out)
        out /= 6.0

    def derivative(self, xp, z, a, out):
        xp.greater(z, -3.0, out=out)
        out *= z < 3.0
        out /= 6.0


class HardSiLU(_Elementwise):
    """f(z) = z * hard_sigmoid(z) (hard_swish)."""

    name = "hard_silu"

    def forward(self, xp, z, out):
        HardSigmoid().forward(xp, z, out)
        out *= z

    def derivative(self, xp, z, a, out):
        HardSigmoid().derivative(xp, z, a, out)
        out *= z
        out += xp.clip(z + 3.0, 0.0, 6.0) / 6.0


class Mish(_Elementwise):
    """f(z) = z tanh(softplus(z)); f'(z) = tanh(sp) + z sigmoid(z) (1 - tanh(sp)^2)."""

    name = "mish"

    def forward(self, xp, z, out):
        Softplus().forward(xp, z, out)
        xp.tanh(out, out=out)
        out *= z

    def derivative(self, xp, z, a, out):
        sp = xp.empty_like(z)
        Softplus().forward(xp, z, sp)
        t = xp.tanh(sp, out=sp)
        _stable_sigmoid(xp, z, out)
        out *= z
        out *= 1.0 - t * t
        out += t


class Exponential(Activation):
    """f(z) = exp(z); f'(z) = a."""

    name = "exponential"

    def forward(self, xp, z, out):
        xp.exp(z, out=out)

    def backward(self, xp, da, a, out, scratch, z=None):
        xp.multiply(da, a, out=out)


class LogSoftmax(Activation):
    """f(z)_i = z_i - max z - log sum_j exp(z_j - max z); backward: da - exp(a) sum_j da_j."""

    name = "log_softmax"

    def forward(self, xp, z, out):
        xp.subtract(z, z.max(axis=-1, keepdims=True), out=out)
        shift = xp.log(xp.exp(out).sum(axis=-1, keepdims=True))
        out -= shift

    def backward(self, xp, da, a, out, scratch, z=None):
        total = da.sum(axis=-1, keepdims=True)
        xp.exp(a, out=scratch)
        scratch *= total
        xp.subtract(da, scratch, out=out)


class LogSigmoid(_Elementwise):
    """f(z) = -softplus(-z); f'(z) = sigmoid(-z)."""

    name = "log_sigmoid"

    def forward(self, xp, z, out):
        xp.negative(z, out=out)
        Softplus().forward(xp, out.copy(), out)
        xp.negative(out, out=out)

    def derivative(self, xp, z, a, out):
        xp.negative(z, out=out)
        _stable_sigmoid(xp, out.copy(), out)


class TanhShrink(_Elementwise):
    """f(z) = z - tanh(z); f'(z) = tanh(z)^2."""

    name = "tanh_shrink"

    def forward(self, xp, z, out):
        xp.tanh(z, out=out)
        xp.subtract(z, out, out=out)

    def derivative(self, xp, z, a, out):
        xp.tanh(z, out=out)
        out *= out


class HardTanh(_Elementwise):
    """f(z) = clip(z, -1, 1)."""

    name = "hard_tanh"

    def forward(self, xp, z, out):
        xp.clip(z, -1.0, 1.0, out=out)

    def derivative(self, xp, z, a, out):
        xp.greater(z, -1.0, out=out)
        out *= z < 1.0


class SoftShrink(_Elementwise):
    """f(z) = z - t above t, z + t below -t, 0 between (t = threshold, default 0.5)."""

    name = "soft_shrink"

    def __init__(self, threshold: float = 0.5):
        self.threshold = float(threshold)

    def forward(self, xp, z, out):
        t = self.threshold
        xp.copyto(out, 0.0)
        xp.subtract(z, t, out=out, where=z > t)
        xp.add(z, t, out=out, where=z < -t)

    def derivative(self, xp, z, a, out):
        xp.abs(z, out=out)
        xp.greater(out, self.threshold, out=out)

    def get_config(self):
        return {} if self.threshold == 0.5 else {"threshold": self.threshold}


class HardShrink(_Elementwise):
    """f(z) = z where |z| > t, else 0 (t = threshold, default 0.5)."""

    name = "hard_shrink"

    def __init__(self, threshold: float = 0.5):
        self.threshold = float(threshold)

    def forward(self, xp, z, out):
        xp.abs(z, out=out)
        xp.greater(out, self.threshold, out=out)
        out *= z

    def derivative(self, xp, z, a, out):
        xp.abs(z, out=out)
        xp.greater(out, self.threshold, out=out)

    def get_config(self):
        return {} if self.threshold == 0.5 else {"threshold": self.threshold}


class Squareplus(_Elementwise):
    """f(z) = (z + sqrt(z^2 + b)) / 2 (default b = 4)."""

    name = "squareplus"

    def __init__(self, b: float = 4.0):
        self.b = float(b)

    def forward(self, xp, z, out):
        xp.hypot(z, math.sqrt(self.b), out=out)  # sqrt(z^2 + b) without overflowing z^2
        out += z
        out *= 0.5

    def derivative(self, xp, z, a, out):
        xp.hypot(z, math.sqrt(self.b), out=out)
        xp.divide(z, out, out=out)
        out += 1.0
        out *= 0.5

    def get_config(self):
        return {} if self.b == 4.0 else {"b": self.b}


class SparsePlus(_Elementwise):
    """f(z) = 0 for z <= -1, (z + 1)^2 / 4 on (-1, 1), z for z >= 1."""

    name = "sparse_plus"

    def forward(self, xp, z, out):
        xp.clip(z, -1.0, 1.0, out=out)
        out += 1.0
        out *= out
        out *= 0.25
        xp.copyto(out, z, where=z >= 1.0)

    def derivative(self, xp, z, a, out):
        xp.clip(z, -1.0, 1.0, out=out)
        out += 1.0
        out *= 0.5


class SparseSigmoid(_Elementwise):
    """f(z) = 0 for z <= -1, (z + 1) / 2 on (-1, 1), 1 for z >= 1."""

    name = "sparse_sigmoid"

    def forward(self, xp, z, out):
        xp.clip(z, -1.0, 1.0, out=out)
        out += 1.0
        out *= 0.5

    def derivative(self, xp, z, a, out):
        xp.greater(z, -1.0, out=out)
        out *= z < 1.0
        out *= 0.5


class Threshold(_Elementwise):
    """f(z) = z where z > threshold, else default_value (both required, as Keras)."""

    name = "threshold"

    def __init__(self, threshold: float, default_value: float):
        self.threshold, self.default_value = float(threshold), float(default_value)

    def forward(self, xp, z, out):
        xp.copyto(out, self.default_value)
        xp.copyto(out, z, where=z > self.threshold)

    def derivative(self, xp, z, a, out):
        xp.greater(z, self.threshold, out=out)

    def get_config(self):
        return {"threshold": self.threshold, "default_value": self.default_value}


ACTIVATIONS: dict[str, type[Activation]] = {
    cls.name: cls
    for cls in (
        Linear, ReLU, Sigmoid, Tanh, Softmax, LeakyReLU, ReLU6, ELU, SELU, CELU, Softplus, Softsign, SiLU, GELU,
        HardSigmoid, HardSiLU, Mish, Exponential, LogSoftmax, LogSigmoid, TanhShrink, HardTanh, SoftShrink,
        HardShrink, Squareplus, SparsePlus, SparseSigmoid, Threshold,
    )
}  # fmt: skip
_ALIASES = {"swish": SiLU, "hard_swish": HardSiLU}
_REGISTRY: dict[str, type[Activation]] = {**ACTIVATIONS, **_ALIASES}


def get(identifier: Any) -> Activation:
    """Return an activation from a name ("relu", "gelu", ...), None (linear), a config dict
    (``{"class_name": "elu", "config": {"alpha": 0.5}}``) or an instance."""
    if identifier is None:
        return Linear()
    if callable(identifier) and not isinstance(identifier, (Activation, type)):
        name = getattr(identifier, "__name__", "")
        if name in _REGISTRY and getattr(identifier, "__module__", "") == __name__:  # dtrain.activations.relu
            return _REGISTRY[name]()
        raise ValueError(
            f"Activation {identifier!r} is a Python function: dtrain has no automatic differentiation, so an "
            f"activation must be one it knows the derivative of. Known activations: {', '.join(sorted(ACTIVATIONS))}."
        )
    return resolve(identifier, _REGISTRY, "activation", Activation, known=ACTIVATIONS)


def serialize(activation: Activation) -> Any:
    """The name, or ``{"class_name": name, "config": {...}}`` where arguments differ from the defaults."""
    config = activation.get_config()
    return activation.name if not config else {"class_name": activation.name, "config": config}


# -- the functions, as keras.activations.X: on NumPy (or CuPy) arrays, usable as activation= ---------


def _function(cls: type[Activation]) -> Any:
    def apply(x: Any, **kwargs: Any) -> Any:
        xp = array_module_of(x)
        z = xp.asarray(x)
        z = z.astype(np.float64) if z.dtype.kind != "f" else z
        out = xp.empty_like(z)
        cls(**kwargs).forward(xp, z, out)
        return out

    apply.__name__ = apply.__qualname__ = cls.name
    apply.__module__ = __name__
    apply.__doc__ = cls.__doc__
    return apply


linear = _function(Linear)
relu = _function(ReLU)
sigmoid = _function(Sigmoid)
tanh = _function(Tanh)
softmax = _function(Softmax)
leaky_relu = _function(LeakyReLU)
relu6 = _function(ReLU6)
elu = _function(ELU)
selu = _function(SELU)
celu = _function(CELU)
softplus = _function(Softplus)
softsign = _function(Softsign)
silu = swish = _function(SiLU)
gelu = _function(GELU)
hard_sigmoid = _function(HardSigmoid)
hard_silu = hard_swish = _function(HardSiLU)
mish = _function(Mish)
exponential = _function(Exponential)
log_softmax = _function(LogSoftmax)
log_sigmoid = _function(LogSigmoid)
tanh_shrink = _function(TanhShrink)
hard_tanh = _function(HardTanh)
soft_shrink = _function(SoftShrink)
hard_shrink = _function(HardShrink)
squareplus = _function(Squareplus)
sparse_plus = _function(SparsePlus)
sparse_sigmoid = _function(SparseSigmoid)
threshold = _function(Threshold)
