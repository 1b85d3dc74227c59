"""``Dense``: parameters + gradients (views into the model's flat buffers), ``forward(x)`` that
keeps what backward needs, and ``backward(dy)`` that fills the gradients and returns the
gradient with respect to its input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import activations, constraints, initializers, regularizers
from ..backend import Array
from ..buffers import BufferCache
from .base import Layer, positive_int


class Dense(Layer):
    """A fully connected layer: ``a = activation(x @ kernel + bias)``.

    Arguments follow Keras: ``units`` outputs; ``activation`` a name ("relu", "sigmoid",
    "tanh", "softmax", "linear") or None; ``input_dim`` (or ``input_shape=(input_dim,)``) on
    the first layer of a model, otherwise the width is taken from the data at the first ``fit``.
    """

    default_name = "dense"

    kernel_initializer: initializers.Initializer
    bias_initializer: initializers.Initializer
    # Views into the model's flat parameter and gradient buffers: None until bind().
    kernel: Array
    bias: Array
    kernel_grad: Array
    bias_grad: Array
    _x: Array  # kept by forward(training=True) for backward: the input, ...
    _z: Array  # ... the logits ...
    _a: Array  # ... and the output (None before the first forward)

    def __init__(
        self,
        units: int,
        activation: str | None = None,
        use_bias: bool = True,
        input_dim: int | None = None,
        input_shape: tuple[int, ...] | None = None,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        name: str | None = None,
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        activity_regularizer: Any = None,
        kernel_constraint: Any = None,
        bias_constraint: Any = None,
    ):
        self.units = positive_int("units", units, "Dense")
        self.activation = activations.get(activation)
        if not isinstance(use_bias, bool):
            raise ValueError(f"Dense expected a bool for use_bias, received use_bias={use_bias!r}.")
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.activity_regularizer = regularizers.get(activity_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        self.input_dim = self._resolve_input_dim(input_dim, input_shape)
        super().__init__(name)
        self.kernel = self.bias = self.kernel_grad = self.bias_grad = None
        self._buffers: BufferCache[tuple[Any, Any, Any]] = BufferCache()  # batch size -> (z, a, dx)
        self._x = self._z = self._a = None  # kept by forward(training=True) for backward

    @staticmethod
    def _resolve_input_dim(input_dim: Any, input_shape: Any) -> int | None:
        if input_shape is not None:
            shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else (input_shape,)
            if len(shape) != 1:
                raise ValueError(
                    f"Dense expected input_shape=(features,), received input_shape={input_shape!r}; "
                    "dense networks take 2-D inputs (samples, features)."
                )
            from_shape = positive_int("input_shape[0]", shape[0], "Dense")
            if input_dim is not None and positive_int("input_dim", input_dim, "Dense") != from_shape:
                raise ValueError(
                    f"Dense received input_dim={input_dim!r} and input_shape={input_shape!r}, which disagree."
                )
            return from_shape
        return None if input_dim is None else positive_int("input_dim", input_dim, "Dense")

    # -- build: shapes, initial values, binding to the model's flat buffers --------------------
    def output_width(self, input_width: int | None) -> int:
        return self.units

    @property
    def has_weights(self) -> bool:
        return True

    def param_shapes(self, input_dim: int) -> list[tuple[str, tuple[int, ...]]]:
        shapes: list[tuple[str, tuple[int, ...]]] = [("kernel", (input_dim, self.units))]
        if self.use_bias:
            shapes.append(("bias", (self.units,)))
        return shapes

    def initial_values(self, input_dim: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Float64 host arrays, kernel first, drawn from ``rng`` in a fixed order."""
        values = [self.kernel_initializer((input_dim, self.units), rng)]
        if self.use_bias:
            values.append(self.bias_initializer((self.units,), rng))
        return values

    def bind(self, xp: Any, input_dim: int, params: list[Array], grads: list[Array]) -> None:
        """Take views into the model's flat parameter and gradient buffers."""
        self._xp = xp
        self.input_dim = input_dim
        self.kernel, self.kernel_grad = params[0], grads[0]
        if self.use_bias:
            self.bias, self.bias_grad = params[1], grads[1]
        self._buffers.clear()
        self._slots.clear()

    @property
    def built(self) -> bool:
        return self.kernel is not None

    # -- compute ------------------------------------------------------------------------------
    def _buffers_for(self, n: int, need_dx: bool) -> tuple[Array, Array, Array]:
        """Output and gradient buffers for a batch of n rows, allocated once per batch size,
        so that steady-state training allocates no arrays."""
        xp, dtype = self._xp, self.kernel.dtype

        def outputs() -> tuple[Array, Array, Array]:
            z = xp.empty((n, self.units), dtype)
            a = z if isinstance(self.activation, activations.Linear) else xp.empty((n, self.units), dtype)
            return (z, a, None)

        buffers = self._buffers.get(n, outputs)
        if need_dx and buffers[2] is None:  # the first layer never needs one
            buffers = self._buffers.put(n, (buffers[0], buffers[1], xp.empty((n, self.input_dim), dtype)))
        return buffers

    def forward(self, x: Array, training: bool = False) -> Array:
        """Return ``activation(x @ kernel + bias)``; with ``training`` keep x for backward.

        The returned array is a buffer owned by the layer: it is overwritten by the next call
        with the same batch size.
        """
        xp = self._xp
        z, a, _ = self._buffers_for(x.shape[0], need_dx=False)
        xp.matmul(x, self.kernel, out=z)
        if self.use_bias:
            z += self.bias
        self.activation.forward(xp, z, a)
        self._z, self._a, self._out = z, a, a  # the loss may read the logits, in training and evaluation
        if training:
            self._x = x
        return a

    @property
    def logits(self) -> Array | None:
        """Pre-activation output of the last forward pass."""
        return self._z

    def backward(self, grad: Array, *, grad_is_logits: bool = False, need_input_grad: bool = True) -> Array | None:
        """Fill kernel_grad and bias_grad from dL/da (or dL/dz with ``grad_is_logits``).

        ``grad`` may be overwritten. Returns dL/dx, or None when ``need_input_grad`` is False
        (the first layer: nobody needs the gradient with respect to the data).
        """
        xp = self._xp
        if grad_is_logits:
            dz = grad
        elif self.activation.needs_input:  # f'(z) needs z itself: a scratch array of its own
            scratch = self._buffer("scratch", grad.shape[0], self.units, grad.dtype)
            self.activation.backward(xp, grad, self._a, out=grad, scratch=scratch, z=self._z)
            dz = grad
        else:
            # z is no longer needed once a is known: reuse its buffer as scratch.
            self.activation.backward(xp, grad, self._a, out=grad, scratch=self._z)
            dz = grad
        if self.trainable:  # (a frozen layer's gradients stay zero: no work spent on them)
            xp.matmul(self._x.T, dz, out=self.kernel_grad)
            if self.use_bias:
                dz.sum(axis=0, out=self.bias_grad)
        if not need_input_grad:
            return None
        _, _, dx = self._buffers_for(dz.shape[0], need_dx=True)
        xp.matmul(dz, self.kernel.T, out=dx)
        return dx

    # -- weights ------------------------------------------------------------------------------
    def weight_views(self) -> list[tuple[str, Array]]:
        """[(name, array)] of this layer's weights (views into the model's buffer), Keras order."""
        if not self.built:
            return []
        views = [(f"{self.name}/kernel", self.kernel)]
        if self.use_bias:
            views.append((f"{self.name}/bias", self.bias))
        return views

    # -- config -------------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        config = {
            **self._base_config(),
            "units": self.units,
            "activation": activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
        }
        if self.input_dim is not None:
            config["input_dim"] = self.input_dim
        for key in ("kernel_regularizer", "bias_regularizer", "activity_regularizer"):
            if getattr(self, key) is not None:  # (only where set: configs of plain layers stay as they were)
                config[key] = regularizers.serialize(getattr(self, key))
        for key in ("kernel_constraint", "bias_constraint"):
            if getattr(self, key) is not None:
                config[key] = constraints.serialize(getattr(self, key))
        return config

    def penalized_weights(self) -> list[tuple[Any, Array, Array]]:
        if not self.built:
            return []
        pairs = [(self.kernel_regularizer, self.kernel, self.kernel_grad)]
        if self.use_bias:
            pairs.append((self.bias_regularizer, self.bias, self.bias_grad))
        return [(reg, w, g) for reg, w, g in pairs if reg is not None]

    def constrained_weights(self) -> list[tuple[Any, Array]]:
        if not self.built:
            return []
        pairs = [(self.kernel_constraint, self.kernel)]
        if self.use_bias:
            pairs.append((self.bias_constraint, self.bias))
        return [(c, w) for c, w in pairs if c is not None]

    def __repr__(self) -> str:
        return f"Dense(units={self.units}, activation={self.activation.name!r}, name={self.name!r})"
