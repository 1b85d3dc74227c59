"""Layers without weights that shape or transform a batch: ``Input``, ``Flatten``,
``Activation`` and the activation layers ``ReLU``, ``LeakyReLU`` and ``Softmax`` (Keras 3's
names, arguments and defaults)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .. import activations
from ..backend import Array
from .base import Layer, positive_int, real_number


def _shape(value: Any, where: str, argument: str = "shape") -> tuple[int, ...]:
    shape = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not shape:
        raise ValueError(f"{where} expected a non-empty {argument} such as (784,), received {argument}={value!r}.")
    return tuple(positive_int(f"{argument}[{i}]", d, where) for i, d in enumerate(shape))


@dataclass(frozen=True)
class InputSpec:
    """What ``Input(shape=...)`` gives: the shape of one sample, for the first element of
    ``Sequential([...])``. A model whose samples have more than one axis starts with ``Flatten``."""

    shape: tuple[int, ...]
    name: str | None = None

    @property
    def width(self) -> int:
        return math.prod(self.shape)

    def get_config(self) -> dict[str, Any]:
        """Keras' InputLayer config (``batch_shape`` has the batch axis first, as None)."""
        config: dict[str, Any] = {"batch_shape": [None, *self.shape]}
        if self.name is not None:
            config["name"] = self.name
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> InputSpec:
        config = dict(config)
        config.pop("dtype", None)  # (Keras writes the input's dtype; the model's decides here)
        config.pop("sparse", None)
        config.pop("ragged", None)
        if "batch_shape" in config:
            batch_shape = config.pop("batch_shape")
            if not isinstance(batch_shape, (list, tuple)) or len(batch_shape) < 2:
                raise ValueError(f"InputLayer expected batch_shape=[None, features, ...], received {batch_shape!r}.")
            config["shape"] = tuple(batch_shape[1:])
        try:
            return Input(**config)
        except TypeError as exc:
            raise ValueError(f"Bad InputLayer config {config!r}: {exc}") from None


def Input(shape: Any = None, name: str | None = None, batch_size: Any = None, dtype: Any = None) -> InputSpec:  # noqa: N802 (Keras' name)
    """The input of a model, as ``keras.Input``: ``Sequential([Input(shape=(784,)), Dense(...)])``.
    ``shape`` is one sample's shape (no batch axis); ``batch_size`` and ``dtype`` are accepted
    for Keras programs and must be None (the batch size is fit's, the dtype the model's)."""
    if shape is None:
        raise ValueError("Input expected shape=(features,), e.g. Input(shape=(784,)).")
    if batch_size is not None:
        raise ValueError(
            f"Input(batch_size={batch_size!r}) is not supported: the batch size is fit's batch_size (the global batch)."
        )
    if dtype is not None:
        raise ValueError(
            f"Input(dtype={dtype!r}) is not supported: a model computes in one dtype, Sequential(..., dtype=...)."
        )
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"Input expected a non-empty string for name, received name={name!r}.")
    return InputSpec(_shape(shape, "Input"), name)


InputLayer = Input  # Keras' class name, for code that builds its input that way


class _Identity(Layer):
    """Output = input (on the 2-D rows every layer sees); backward passes the gradient on."""

    def forward(self, x: Array, training: bool = False) -> Array:
        self._out = x
        return x

    def backward(self, grad: Array, *, grad_is_logits: bool = False, need_input_grad: bool = True) -> Array | None:
        return grad if need_input_grad else None


class Flatten(_Identity):
    """Flattens each sample to one axis, as ``keras.layers.Flatten``. As the first layer (or
    after ``Input(shape=(28, 28))``) it lets samples of any shape, e.g. (n, 28, 28) images,
    feed a dense stack: the data is flattened in C order once, on the host, when it is checked
    (``data_format="channels_first"`` moves the channel axis last first, as Keras does). On the
    2-D rows between layers it changes nothing."""

    default_name = "flatten"

    def __init__(self, data_format: str | None = None, input_shape: Any = None, name: str | None = None):
        if data_format is None:
            data_format = "channels_last"
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(
                f"Flatten expected data_format 'channels_last' or 'channels_first', received {data_format!r}."
            )
        self.data_format = data_format
        self.input_shape = None if input_shape is None else _shape(input_shape, "Flatten", "input_shape")
        if self.input_shape is not None:
            self.input_dim = math.prod(self.input_shape)
        super().__init__(name)

    def get_config(self) -> dict[str, Any]:
        config = {**super().get_config(), "data_format": self.data_format}
        if self.input_shape is not None:
            config["input_shape"] = list(self.input_shape)
        return config


class Activation(Layer):
    """Applies an activation function, as ``keras.layers.Activation("relu")``. A loss fuses
    with it as with a Dense layer's own activation (softmax + cross-entropy: one gradient)."""

    default_name = "activation"

    def __init__(self, activation: Any, name: str | None = None):
        self.activation = activations.get(activation)
        super().__init__(name)
        self._x: Array = None

    def forward(self, x: Array, training: bool = False) -> Array:
        out = self._buffer("out", x.shape[0], x.shape[1], x.dtype)
        self.activation.forward(self._xp, x, out)
        self._x, self._out = x, out
        return out

    @property
    def logits(self) -> Array | None:
        return self._x

    def backward(self, grad: Array, *, grad_is_logits: bool = False, need_input_grad: bool = True) -> Array | None:
        if not need_input_grad:
            return None
        if not grad_is_logits:
            scratch = self._buffer("scratch", grad.shape[0], grad.shape[1], grad.dtype)
            self.activation.backward(self._xp, grad, self._out, out=grad, scratch=scratch, z=self._x)
        return grad

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "activation": activations.serialize(self.activation)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.activation.name!r}, name={self.name!r})"


class ReLU(Activation):
    """``keras.layers.ReLU(max_value=None, negative_slope=0.0, threshold=0.0)``."""

    default_name = "re_lu"

    def __init__(self, max_value: Any = None, negative_slope: Any = 0.0, threshold: Any = 0.0, name: str | None = None):
        if max_value is not None:
            max_value = real_number("max_value", max_value, "ReLU", 0.0, math.inf)
        negative_slope = real_number("negative_slope", negative_slope, "ReLU", 0.0, math.inf)
        threshold = real_number("threshold", threshold, "ReLU", -math.inf, math.inf)
        self.max_value, self.negative_slope, self.threshold = max_value, negative_slope, threshold
        super().__init__(
            activations.ReLU(negative_slope=negative_slope, max_value=max_value, threshold=threshold), name
        )

    def get_config(self) -> dict[str, Any]:
        return {
            **self._base_config(),
            "max_value": self.max_value,
            "negative_slope": self.negative_slope,
            "threshold": self.threshold,
        }


class LeakyReLU(Activation):
    """``keras.layers.LeakyReLU(negative_slope=0.3)``: x for x >= 0, negative_slope * x below."""

    default_name = "leaky_re_lu"

    def __init__(self, negative_slope: Any = 0.3, name: str | None = None):
        self.negative_slope = real_number("negative_slope", negative_slope, "LeakyReLU", 0.0, math.inf)
        super().__init__(activations.LeakyReLU(negative_slope=self.negative_slope), name)

    def get_config(self) -> dict[str, Any]:
        return {**self._base_config(), "negative_slope": self.negative_slope}


class Softmax(Activation):
    """``keras.layers.Softmax(axis=-1)`` over the features of each sample."""

    default_name = "softmax"

    def __init__(self, axis: Any = -1, name: str | None = None):
        if axis not in (-1, 1):
            raise ValueError(f"Softmax expected axis=-1 (the features of each sample), received axis={axis!r}.")
        self.axis = -1
        super().__init__(activations.Softmax(), name)

    def get_config(self) -> dict[str, Any]:
        return {**self._base_config(), "axis": self.axis}
