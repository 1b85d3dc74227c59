"""What a model relies on in a layer, and the helpers layers share.

A layer maps a batch of rows (samples, width) to another (samples, width'): every layer of a
dense network sees 2-D arrays (``Flatten`` is done on the data before it reaches the device).
Layers with weights hold views into the model's flat buffers; layers without (``Dropout``,
``Activation``, ...) use the same lifecycle with nothing to bind.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from .. import activations
from ..backend import Array, host_copy, to_numpy
from ..buffers import BufferCache
from ..randomness import StepNoise

_layer_ids: dict[str, itertools.count] = {}


def positive_int(name: str, value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{where} expected a positive integer for {name}, received {name}={value!r}.")
    return int(value)


def real_number(name: str, value: Any, where: str, low: float, high: float, *, high_open: bool = False) -> float:
    """``value`` as a float in [low, high] (or [low, high)), else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where} expected a number for {name}, received {name}={value!r}.")
    value = float(value)
    if not (low <= value < high if high_open else low <= value <= high):
        bound = f"{high})" if high_open else f"{high}]"
        raise ValueError(f"{where} expected {name} in [{low}, {bound}, received {name}={value!r}.")
    return value


def optional_seed(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < 2**63:
        raise ValueError(f"{where} expected seed to be None or an integer in [0, 2**63), received seed={value!r}.")
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

    This is everything a model relies on in a layer:

    - ``name``; ``input_dim`` (input width: declared, or set by ``bind``; None until then);
      ``output_width(input_width)`` (Dense: its units; most others: the input's);
      ``activation``, the function the layer ends with (what a loss may fuse with);
    - build: ``param_shapes(input_dim)`` and ``initial_values(input_dim, rng)`` describe the
      weights (none here), ``bind(xp, input_dim, params, grads)`` hands the layer its array
      module and views into the model's flat buffers, ``built`` says whether that happened;
    - compute: ``forward(x, training)`` and ``backward(grad, ...)``, and ``logits``, the
      pre-activation output of the last forward pass; a layer with ``random = True`` is given
      the step's :class:`~dtrain.randomness.StepNoise` and its ``stream`` before a training
      forward pass;
    - weights: ``weight_views()``, ``get_weights()`` and ``set_weights(weights)``;
    - config: ``get_config()`` and the classmethod ``from_config(config)``.
    """

    default_name = "layer"
    random = False  # True: draws randomness in training (set_noise before forward)
    activity_regularizer: Any = None  # a penalty on the layer's output (Dense's argument)
    sync_batch = False  # True: sums over the global batch in training (BatchNormalization)
    reduce: Any = None  # how a sync_batch layer sums over the ranks (Network.set_batch_reducer)

    name: str
    input_dim: int | None
    activation: activations.Activation

    def __init__(self, name: str | None = None):
        if name is None:
            counter = _layer_ids.setdefault(self.default_name, itertools.count())
            n = next(counter)
            name = self.default_name if n == 0 else f"{self.default_name}_{n}"
        elif not isinstance(name, str) or not name:
            raise ValueError(f"Expected a non-empty string for name, received name={name!r}.")
        self.name = name
        self._trainable = True
        self._xp: Any = None  # the array module (numpy or cupy) of the model: None until bind()
        if not hasattr(self, "input_dim"):
            self.input_dim = None
        if not hasattr(self, "activation"):
            self.activation = activations.Linear()
        # batch size -> this layer's arrays by name: allocated once per batch size in use
        self._slots: BufferCache[dict[str, Array]] = BufferCache()
        self._out: Array = None  # the last forward pass's output

    @property
    def trainable(self) -> bool:
        """Whether training updates this layer's weights (Keras' ``layer.trainable``). Set it
        before ``compile()``: a change takes effect at the next compile, as in Keras."""
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"Layer {self.name!r}: trainable must be True or False, received {value!r}.")
        self._trainable = value

    def _base_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"name": self.name}
        if not self._trainable:  # (only when frozen: the configs of trainable layers stay as they were)
            config["trainable"] = False
        return config

    # -- shape ----------------------------------------------------------------------------------
    def output_width(self, input_width: int | None) -> int | None:
        """The width of the output for inputs of ``input_width`` (None: not known yet)."""
        return input_width

    @property
    def has_weights(self) -> bool:
        return False

    # -- build --------------------------------------------------------------------------------
    def param_shapes(self, input_dim: int) -> list[tuple[str, tuple[int, ...]]]:
        """[(name, shape)] of the weights for inputs of width ``input_dim``, in Keras order."""
        return []

    def initial_values(self, input_dim: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Float64 host arrays in ``param_shapes`` order, drawn from ``rng`` in a fixed order."""
        return []

    def bind(self, xp: Any, input_dim: int, params: list[Array], grads: list[Array]) -> None:
        """Take the array module and views into the model's flat parameter and gradient buffers
        (``param_shapes`` order)."""
        self._xp = xp
        self.input_dim = input_dim
        self._slots.clear()

    @property
    def built(self) -> bool:
        """Whether ``bind`` gave the layer its array module (and weights)."""
        return self._xp is not None

    # -- compute ------------------------------------------------------------------------------
    def forward(self, x: Array, training: bool = False) -> Array:
        """The layer's output for ``x``; with ``training``, keep what ``backward`` needs. The
        result may be a buffer the layer owns and overwrites at the next call."""
        raise NotImplementedError

    @property
    def logits(self) -> Array | None:
        """Pre-activation output of the last forward pass (None before one)."""
        return self._out

    def backward(self, grad: Array, *, grad_is_logits: bool = False, need_input_grad: bool = True) -> Array | None:
        """Fill the weight gradients from dL/d(output) (or dL/d(logits) with ``grad_is_logits``);
        return dL/dx, or None when ``need_input_grad`` is False. ``grad`` may be overwritten."""
        raise NotImplementedError

    def set_noise(self, noise: StepNoise, stream: int) -> None:
        """The randomness of the next training forward pass (layers with ``random = True``)."""

    def _buffer(self, name: str, n: int, width: int, dtype: Any) -> Array:
        """The (n, width) array of ``dtype`` called ``name`` for batches of n rows, allocated once."""
        slots = self._slots.get(n, dict)
        array = slots.get(name)
        if array is None:
            array = slots[name] = self._xp.empty((n, width), dtype)
        return array

    @property
    def output(self) -> Array | None:
        """The output of the last forward pass (None before one)."""
        return self._out

    def trainable_params(self) -> list[bool]:
        """Per ``param_shapes`` entry: whether the optimizer trains it (BatchNormalization's
        moving statistics: no; their gradient is always zero)."""
        return [True] * len(self.param_shapes(1))

    def commit(self) -> None:
        """After the step's update: write what the step computed besides the gradient (moving statistics)."""

    def penalized_weights(self) -> list[tuple[Any, Array, Array]]:
        """[(regularizer, weight, its gradient)] of the weights with a penalty."""
        return []

    def constrained_weights(self) -> list[tuple[Any, Array]]:
        """[(constraint, weight)] of the weights projected after every update."""
        return []

    # -- weights ------------------------------------------------------------------------------
    def weight_views(self) -> list[tuple[str, Array]]:
        """[(name, array)] of the weights (views into the model's buffer); [] before ``bind``."""
        return []

    def get_weights(self) -> list[np.ndarray]:
        """Copies of the weights as NumPy arrays, ``weight_views`` order; [] before the model is built."""
        return [host_copy(view) for _, view in self.weight_views()]

    def set_weights(self, weights: Any) -> None:
        """Replace the weights from arrays in ``get_weights()`` order and shapes."""
        if self.has_weights and not self.built:
            raise RuntimeError(f"Layer {self.name!r} has no weights yet: build or train its model first.")
        assign_weights(self.weight_views(), weights, self._xp)

    # -- config -------------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """Plain JSON-able arguments from which ``from_config`` rebuilds the layer."""
        return self._base_config()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Layer:
        """A new layer from ``get_config()``'s result."""
        config = dict(config)
        trainable = config.pop("trainable", True)
        try:
            layer = cls(**config)
        except TypeError as exc:
            raise ValueError(f"Bad {cls.__name__} config {config!r}: {exc}") from None
        layer.trainable = trainable
        return layer

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
