"""Layers. A ``Dense`` layer is parameters + gradients (views into the model's flat buffers),
``forward(x)`` that keeps what backward needs, and ``backward(dy)`` that fills the gradients
and returns the gradient with respect to its input.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from . import activations, initializers
from .backend import Array, host_copy, to_numpy
from .buffers import BufferCache

_layer_ids = itertools.count()


def _positive_int(name: str, value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{where} expected a positive integer for {name}, received {name}={value!r}.")
    return int(value)


def assign_weights(views: list[tuple[str, Array]], values: Any, xp: Any) -> None:
    """Copy ``values`` into the arrays ``views`` ([(name, array)]) after checking the count, the
    shapes and the dtypes of all of them, so that a bad call writes nothing."""
    values = list(values)
    if len(values) != len(views):
        raise ValueError(
            f"set_weights expected {len(views)} arrays ({', '.join(name for name, _ in views)}), "
            f"received {len(values)}."
        )
    arrays = []
    for (name, view), value in zip(views, values):
        value = to_numpy(value)
        if value.shape != view.shape:
            raise ValueError(f"set_weights: {name} must have shape {view.shape}, received shape {value.shape}.")
        if value.dtype.kind not in "biuf":
            raise ValueError(f"set_weights: {name} must be numeric, received dtype {value.dtype}.")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ValueError(f"set_weights: {name} contains NaN or infinite values.")
        arrays.append(value)
    for (_, view), value in zip(views, arrays):
        view[...] = xp.asarray(value, dtype=view.dtype)


class Layer:
    """Base class: a name, a config, and the build/forward/backward lifecycle.

    This is everything a model relies on in a layer (:class:`Dense` is the one implementation):

    - attributes ``name``, ``units`` (output width), ``input_dim`` (input width: declared, or
      set by ``bind``; None until then), ``activation`` and ``use_bias``;
    - build: ``param_shapes(input_dim)`` and ``initial_values(input_dim, rng)`` describe the
      weights, ``bind(xp, input_dim, params, grads)`` hands the layer views into the model's flat
      buffers, ``built`` says whether that happened;
    - compute: ``forward(x, training)`` and ``backward(grad, ...)``, and ``logits``, the
      pre-activation output of the last forward pass;
    - weights: ``weight_views()``, ``get_weights()`` and ``set_weights(weights)``;
    - config: ``get_config()`` and the classmethod ``from_config(config)``.
    """

    default_name = "layer"

    name: str
    units: int
    input_dim: int | None
    activation: activations.Activation
    use_bias: bool

    def __init__(self, name: str | None = None):
        if name is None:
            n = next(_layer_ids)
            name = self.default_name if n == 0 else f"{self.default_name}_{n}"
        elif not isinstance(name, str) or not name:
            raise ValueError(f"Expected a non-empty string for name, received name={name!r}.")
        self.name = name

    # -- build --------------------------------------------------------------------------------
    def param_shapes(self, input_dim: int) -> list[tuple[str, tuple[int, ...]]]:
        """[(name, shape)] of the weights for inputs of width ``input_dim``, in Keras order."""
        raise NotImplementedError

    def initial_values(self, input_dim: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Float64 host arrays in ``param_shapes`` order, drawn from ``rng`` in a fixed order."""
        raise NotImplementedError

    def bind(self, xp: Any, input_dim: int, params: list[Array], grads: list[Array]) -> None:
        """Take views into the model's flat parameter and gradient buffers (``param_shapes`` order)."""
        raise NotImplementedError

    @property
    def built(self) -> bool:
        """Whether ``bind`` gave the layer its weights."""
        raise NotImplementedError

    # -- compute ------------------------------------------------------------------------------
    def forward(self, x: Array, training: bool = False) -> Array:
        """The layer's output for ``x``; with ``training``, keep what ``backward`` needs."""
        raise NotImplementedError

    @property
    def logits(self) -> Array | None:
        """Pre-activation output of the last forward pass (None before one)."""
        raise NotImplementedError

    def backward(self, grad: Array, *, grad_is_logits: bool = False, need_input_grad: bool = True) -> Array | None:
        """Fill the weight gradients from dL/d(output) (or dL/d(logits) with ``grad_is_logits``);
        return dL/dx, or None when ``need_input_grad`` is False."""
        raise NotImplementedError

    # -- weights ------------------------------------------------------------------------------
    def weight_views(self) -> list[tuple[str, Array]]:
        """[(name, array)] of the weights (views into the model's buffer); [] before ``bind``."""
        raise NotImplementedError

    def get_weights(self) -> list[np.ndarray]:
        """Copies of the weights as NumPy arrays, ``weight_views`` order."""
        raise NotImplementedError

    def set_weights(self, weights: Any) -> None:
        """Replace the weights from arrays in ``get_weights()`` order and shapes."""
        raise NotImplementedError

    # -- config -------------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """Plain JSON-able arguments from which ``from_config`` rebuilds the layer."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Layer:
        """A new layer from ``get_config()``'s result."""
        raise NotImplementedError


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
    _xp: Any  # the array module (numpy or cupy) of the model: None until bind()
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
    ):
        self.units = _positive_int("units", units, "Dense")
        self.activation = activations.get(activation)
        if not isinstance(use_bias, bool):
            raise ValueError(f"Dense expected a bool for use_bias, received use_bias={use_bias!r}.")
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.input_dim = self._resolve_input_dim(input_dim, input_shape)
        super().__init__(name)
        self.kernel = self.bias = self.kernel_grad = self.bias_grad = None
        self._xp = None
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
            from_shape = _positive_int("input_shape[0]", shape[0], "Dense")
            if input_dim is not None and _positive_int("input_dim", input_dim, "Dense") != from_shape:
                raise ValueError(
                    f"Dense received input_dim={input_dim!r} and input_shape={input_shape!r}, which disagree."
                )
            return from_shape
        return None if input_dim is None else _positive_int("input_dim", input_dim, "Dense")

    # -- build: shapes, initial values, binding to the model's flat buffers --------------------
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
        self._z, self._a = z, a  # the loss may read the logits, in training and evaluation
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
        else:
            # z is no longer needed once a is known: reuse its buffer as scratch.
            self.activation.backward(xp, grad, self._a, out=grad, scratch=self._z)
            dz = grad
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

    def get_weights(self) -> list[np.ndarray]:
        """Copies as NumPy arrays: [kernel (in, units), bias (units,)]; [] before the model is built."""
        return [host_copy(view) for _, view in self.weight_views()]

    def set_weights(self, weights: Any) -> None:
        """Replace this layer's weights from arrays in ``get_weights()`` order and shapes."""
        if not self.built:
            raise RuntimeError(f"Layer {self.name!r} has no weights yet: build or train its model first.")
        assign_weights(self.weight_views(), weights, self._xp)

    # -- config -------------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        config = {
            "name": self.name,
            "units": self.units,
            "activation": activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
        }
        if self.input_dim is not None:
            config["input_dim"] = self.input_dim
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Dense:
        try:
            return cls(**config)
        except TypeError as exc:
            raise ValueError(f"Bad Dense config {config!r}: {exc}") from None

    def __repr__(self) -> str:
        return f"Dense(units={self.units}, activation={self.activation.name!r}, name={self.name!r})"


LAYERS: dict[str, type[Layer]] = {"Dense": Dense}


def from_config(entry: dict[str, Any]) -> Layer:
    """Rebuild a layer from ``{"class_name": "Dense", "config": {...}}``."""
    if not isinstance(entry, dict) or "class_name" not in entry:
        raise ValueError(f"Expected a layer entry {{'class_name': ..., 'config': {{...}}}}, received {entry!r}.")
    cls = LAYERS.get(entry["class_name"])
    if cls is None:
        raise ValueError(f"Unknown layer class {entry['class_name']!r}. Known layers: {', '.join(LAYERS)}.")
    return cls.from_config(dict(entry.get("config") or {}))
