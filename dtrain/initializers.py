"""Weight initializers with Keras names and formulas.

Initializers always draw on the host with NumPy's ``Generator`` (in float64, then cast), so a
seed gives the same starting weights on CPU and GPU and on every worker.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .registry import resolve

# Standard deviation of a unit normal truncated to [-2, 2]; Keras divides by it so that the
# truncated draws keep the variance the scaling rule asks for.
_TRUNCATED_STD = 0.87962566103423978


class Initializer:
    """``init(shape, rng)`` returns a float64 NumPy array of ``shape``."""

    def __call__(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """Keras' compute_fans: (fan_in, fan_out) of a weight of ``shape``."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive_field = math.prod(shape[:-2])  # 1 for a (in, out) kernel
    return shape[-2] * receptive_field, shape[-1] * receptive_field


def _real(cls: str, name: str, value: Any, *, non_negative: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or (non_negative and number < 0):
        what = "a non-negative number" if non_negative else "a finite number"
        raise ValueError(f"{cls} expected {name} to be {what}, received {name}={value!r}.")
    return number


class Zeros(Initializer):
    def __call__(self, shape, rng):
        return np.zeros(shape)


class Ones(Initializer):
    def __call__(self, shape, rng):
        return np.ones(shape)


class Constant(Initializer):
    def __init__(self, value: float = 0.0):
        self.value = _real("Constant", "value", value)

    def __call__(self, shape, rng):
        return np.full(shape, self.value)

    def get_config(self):
        return {"value": self.value}


class RandomNormal(Initializer):
    def __init__(self, mean: float = 0.0, stddev: float = 0.05):
        self.mean = _real(type(self).__name__, "mean", mean)
        self.stddev = _real(type(self).__name__, "stddev", stddev, non_negative=True)

    def __call__(self, shape, rng):
        return rng.normal(self.mean, self.stddev, size=shape)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev}


class TruncatedNormal(RandomNormal):
    """N(mean, stddev) with draws further than two standard deviations from the mean redrawn."""

    def __call__(self, shape, rng):
        return self.mean + _truncated_normal(rng, shape, self.stddev)


class RandomUniform(Initializer):
    def __init__(self, minval: float = -0.05, maxval: float = 0.05):
        self.minval = _real("RandomUniform", "minval", minval)
        self.maxval = _real("RandomUniform", "maxval", maxval)
        if self.minval > self.maxval:
            raise ValueError(f"RandomUniform expected minval <= maxval, received minval={minval!r}, maxval={maxval!r}.")

    def __call__(self, shape, rng):
        return rng.uniform(self.minval, self.maxval, size=shape)

    def get_config(self):
        return {"minval": self.minval, "maxval": self.maxval}


def _truncated_normal(rng: np.random.Generator, shape, stddev: float) -> np.ndarray:
    """Unit normal draws redrawn until they fall in [-2, 2], times ``stddev``."""
    out = rng.standard_normal(size=shape)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(size=int(bad.sum()))
        bad = np.abs(out) > 2.0
    return out * stddev


class VarianceScaling(Initializer):
    """Draws with variance ``scale / n``, n = fan_in, fan_out or their mean (``mode``).

    uniform: U(-limit, limit), limit = sqrt(3 scale / n);
    truncated_normal: N(0, sqrt(scale / n) / 0.8796...) truncated to two standard deviations;
    untruncated_normal: N(0, sqrt(scale / n)).
    """

    MODES = ("fan_in", "fan_out", "fan_avg")
    DISTRIBUTIONS = ("uniform", "truncated_normal", "untruncated_normal")

    def __init__(self, scale: float = 1.0, mode: str = "fan_in", distribution: str = "truncated_normal"):
        scale = _real("VarianceScaling", "scale", scale)
        if not scale > 0:
            raise ValueError(f"VarianceScaling expected scale > 0, received scale={scale!r}.")
        if mode not in self.MODES:
            raise ValueError(f"VarianceScaling expected mode in {self.MODES}, received mode={mode!r}.")
        if isinstance(distribution, str):
            distribution = distribution.lower()
            if distribution == "normal":  # Keras' alias
                distribution = "truncated_normal"
        if distribution not in self.DISTRIBUTIONS:
            raise ValueError(
                f"VarianceScaling expected distribution in {self.DISTRIBUTIONS}, received {distribution!r}."
            )
        self.scale, self.mode, self.distribution = float(scale), mode, distribution

    def __call__(self, shape, rng):
        fan_in, fan_out = _fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        variance = self.scale / max(1.0, n)
        if self.distribution == "uniform":
            limit = math.sqrt(3.0 * variance)
            return rng.uniform(-limit, limit, size=shape)
        if self.distribution == "truncated_normal":
            return _truncated_normal(rng, shape, math.sqrt(variance) / _TRUNCATED_STD)
        return rng.normal(0.0, math.sqrt(variance), size=shape)

    def get_config(self):
        return {"scale": self.scale, "mode": self.mode, "distribution": self.distribution}


class _Preset(VarianceScaling):
    """A VarianceScaling with fixed (scale, mode, distribution): Keras' named initializers."""

    preset: tuple[float, str, str]

    def __init__(self):
        super().__init__(*self.preset)

    def get_config(self):
        return {}


class GlorotUniform(_Preset):
    preset = (1.0, "fan_avg", "uniform")


class GlorotNormal(_Preset):
    preset = (1.0, "fan_avg", "truncated_normal")


class HeUniform(_Preset):
    preset = (2.0, "fan_in", "uniform")


class HeNormal(_Preset):
    preset = (2.0, "fan_in", "truncated_normal")


class LecunUniform(_Preset):
    preset = (1.0, "fan_in", "uniform")


class LecunNormal(_Preset):
    preset = (1.0, "fan_in", "truncated_normal")


INITIALIZERS: dict[str, type[Initializer]] = {
    "zeros": Zeros,
    "ones": Ones,
    "constant": Constant,
    "random_normal": RandomNormal,
    "random_uniform": RandomUniform,
    "truncated_normal": TruncatedNormal,
    "variance_scaling": VarianceScaling,
    "glorot_uniform": GlorotUniform,
    "glorot_normal": GlorotNormal,
    "he_uniform": HeUniform,
    "he_normal": HeNormal,
    "lecun_uniform": LecunUniform,
    "lecun_normal": LecunNormal,
}
_NAMES = {cls: name for name, cls in INITIALIZERS.items()}  # the canonical (serialised) names
# Keras' other spellings: class names ("GlorotUniform"; names are matched case-insensitively)
# and its short aliases.
INITIALIZERS.update({cls.__name__.lower(): cls for cls in _NAMES})
INITIALIZERS.update({"uniform": RandomUniform, "normal": RandomNormal, "one": Ones, "zero": Zeros})


def get(identifier: Any) -> Initializer:
    """Return an initializer from a name, a config dict or an instance."""
    return resolve(identifier, INITIALIZERS, "initializer", Initializer, known=_NAMES.values())


def serialize(initializer: Initializer) -> str | dict[str, Any]:
    """A JSON-able form that :func:`get` turns back into an equal initializer."""
    name = _NAMES.get(type(initializer))
    if name is None:
        raise ValueError(f"Cannot serialise custom initializer {initializer!r}; use a built-in one.")
    config = initializer.get_config()
    return {"class_name": name, "config": config} if config else name
