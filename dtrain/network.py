"""The network: layers over two flat buffers, and the maths of one training step.

All parameters live in one contiguous array (``network.params``) and all gradients in another
(``network.grads``); every layer's kernel and bias are views into them. A training step is
``compute_gradients`` (forward, loss, backward: fills ``network.grads``) then
``apply_gradients`` (one optimizer update over the flat buffer). Data-parallel training puts
the sum over the ranks between the two (``dtrain.training.sync``): of ``network.grads`` in
place, or, where the ranks share memory, from ``network.grads`` (moved into that memory,
``use_gradient_buffer``) into a separate buffer that ``apply_gradients(grads)`` then reads. A
sharded step sums only this rank's part, ``apply_gradients(grads, part)`` updates only that
part, and the ranks then copy each other's parts of ``network.params`` (moved into shared
memory with ``use_parameter_buffer``).

``Network`` knows nothing of epochs, callbacks or clusters: the training loop
(``dtrain.training.loop``) drives it, and ``dtrain.model.Sequential`` adds Keras' API on top.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from . import layers as layers_module
from . import losses, optimizers
from . import metrics as metrics_module
from .backend import Array, Backend, check_dtype, get_backend, get_default_device, host_copy, to_numpy
from .buffers import BufferCache
from .data import batches, check_features, check_seed, check_targets, init_rng, new_seed
from .keras_arguments import refuse_keras_arguments
from .layers import Flatten, InputSpec, Layer, assign_weights
from .layers.normalization import one_process
from .randomness import StepNoise

# Each layer's arrays start on a 128-byte boundary of the flat buffers (aligned BLAS/cuBLAS
# operands); the few padding elements stay zero and are never read.
_ALIGN_BYTES = 128

_N = TypeVar("_N", bound="Network")
DEFAULT_OPTIMIZER = "rmsprop"  # Keras' compile() default


class Totals:
    """Running sums over an epoch (or an evaluation): sample count, loss sum, and each metric's
    state (its sums: one for a mean, confusion counts for precision or AUC), all of which add
    up exactly across batches and ranks."""

    def __init__(self, metrics: Sequence[metrics_module.Metric]):
        self.metric_list = list(metrics)
        self.names = [m.name for m in self.metric_list]
        self.count = 0
        self.loss = 0.0
        self.metrics = [0.0] * sum(m.state_size for m in self.metric_list)

    def add(self, count: int, loss_sum: float, metric_sums: Sequence[float]) -> None:
        self.count += count
        self.loss += loss_sum
        for i, value in enumerate(metric_sums):
            self.metrics[i] += value

    def to_array(self) -> np.ndarray:
        """[count, loss sum, *metric sums] in float64: what ranks sum with one allreduce."""
        return np.array([self.count, self.loss, *self.metrics], dtype=np.float64)

    @classmethod
    def from_array(cls, metrics: Sequence[metrics_module.Metric], values: np.ndarray) -> Totals:
        totals = cls(metrics)
        totals.count, totals.loss, totals.metrics = (
            int(round(values[0])),
            float(values[1]),
            [float(v) for v in values[2:]],
        )
        return totals

    def logs(self) -> dict[str, float]:
        n = max(self.count, 1)
        out = {"loss": self.loss / n}
        start = 0
        for metric in self.metric_list:
            state = np.asarray(self.metrics[start : start + metric.state_size], dtype=np.float64)
            out[metric.name] = float(metric.result(state, self.count))
            start += metric.state_size
        return out


class Network:
    """A linear stack of layers over flat parameter and gradient buffers.

    ``device`` is "auto" (GPU when CuPy and a CUDA device are present), "cpu" or "gpu";
    ``dtype`` is "float32" (default) or "float64".
    """

    def __init__(
        self,
        layers: Iterable[Layer | InputSpec] | None = None,
        name: str | None = None,
        *,
        device: str | None = None,
        dtype: str | None = None,
    ):
        self.name = name or "sequential"
        self.backend: Backend = get_backend(device)
        # As asked ("auto", "cpu", "gpu"): on a cluster each worker resolves it for itself.
        self.requested_device = device if device is not None else get_default_device()
        self.dtype = check_dtype(dtype)
        self._layers: list[Layer] = []
        self._layer_ids: set[int] = set()
        self._layer_names: set[str] = set()
        self._input: InputSpec | None = None  # Input(shape=...), or the first layer's declared input
        self._input_given = False  # whether through Input(shape=...)
        self._data_shape: tuple[int, ...] | None = None  # a sample's shape in the data Flatten first saw
        self._width: int | None = None  # the stack's output width, where known before building
        # The flat buffers (NumPy or CuPy arrays): None until build().
        self.params: Array = None
        self.grads: Array = None
        self._binding: list = []  # (layer, fan-in, spans in the flat buffers), set by build
        self.optimizer: optimizers.Optimizer | None = None
        self.loss: losses.Loss | None = None
        self.metrics: list[metrics_module.Metric] = []
        self._fused_loss = False
        self._compiled_trainable: list[bool] | None = None  # each layer's trainable at compile()
        self._frozen: list[tuple[int, int]] = []  # (start, stop) in the flat buffers: weights training keeps
        self._trained: list[tuple[int, int]] = []  # (start, stop): the weights training updates (Keras order)
        self._kept: Any = None  # where _weights_kept keeps them during an update (allocated once)
        self._top_grads: BufferCache[Any] = BufferCache()  # batch size -> dL/dlogits
        self.stop_training = False  # set by callbacks (Keras' Model.stop_training); read by the loop's audience
        if isinstance(layers, (Layer, InputSpec, str)):
            raise TypeError(
                f"Sequential(layers=...) expects a list of layers, received {type(layers).__name__} {layers!r}."
            )
        for layer in layers or ():
            self.add(layer)

    # -- structure ----------------------------------------------------------------------------
    @property
    def layers(self) -> list[Layer]:
        return list(self._layers)

    @property
    def device(self) -> str:
        return self.backend.device

    @property
    def built(self) -> bool:
        return self.params is not None

    @property
    def compiled(self) -> bool:
        return self.loss is not None

    @property
    def input_dim(self) -> int | None:
        """The width of a sample as the layers see it (flattened): built for, else declared."""
        if self._binding:
            return self._binding[0][1]
        return None if self._input is None else self._input.width

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """One sample's shape as declared (``Input(shape=)``, ``Flatten(input_shape=)``, ``input_dim``)."""
        if self._input is None:
            return None if self.input_dim is None else (self.input_dim,)
        return self._input.shape

    @property
    def flattens_input(self) -> bool:
        """Whether samples of more than one axis are flattened (the model starts with Flatten)."""
        return bool(self._layers) and isinstance(self._layers[0], Flatten)

    @property
    def metric_state_size(self) -> int:
        """How many numbers the metrics' states are (what a step's sums carry besides count and loss)."""
        return sum(m.state_size for m in self.metrics)

    @property
    def metrics_names(self) -> list[str]:
        """["loss", *metric names]: the order of evaluate()'s list result."""
        return ["loss", *(m.name for m in self.metrics)]

    @property
    def output_units(self) -> int:
        """The width of the model's output."""
        width = self._width
        if width is None and self.input_dim is not None and self._layers:
            width = self._layers[-1].output_width(self._layer_inputs(self.input_dim)[-1])
        if width is None:
            raise RuntimeError(
                f"Model {self.name!r} has no Dense layer and no declared input width, so its output width is "
                "unknown: start it with Input(shape=(features,)) or give a layer input_dim."
            )
        return width

    def add(self, layer: Layer | InputSpec) -> None:
        """Append a layer (or, first, the model's ``Input(shape=...)``). Its input width is the
        previous layer's output width."""
        if isinstance(layer, InputSpec):
            self._set_input(layer)
            return
        if not isinstance(layer, Layer):
            raise TypeError(
                f"Sequential.add expected a layer such as dtrain.layers.Dense, received "
                f"{type(layer).__name__} {layer!r}."
            )
        if self.built:
            raise RuntimeError(
                f"Cannot add layer {layer.name!r}: model {self.name!r} is already built. "
                "Create a new Sequential with all its layers instead."
            )
        if layer.built:
            raise ValueError(
                f"Layer {layer.name!r} already holds the weights of another built model; a layer's "
                "weights are views into its model's flat buffers, so layers cannot be shared. Create "
                "a new layer, e.g. Dense.from_config(layer.get_config())."
            )
        # (sets, not scans: adding n layers one by one stays O(n))
        if id(layer) in self._layer_ids:
            raise ValueError(f"Layer {layer.name!r} is already in model {self.name!r}; create a new layer.")
        if layer.name in self._layer_names:
            raise ValueError(
                f"Model {self.name!r} already has a layer named {layer.name!r}; layer names must be unique."
            )
        declared = layer.input_dim
        if (
            self._input is not None
            and len(self._input.shape) > 1
            and not self._layers
            and not isinstance(layer, Flatten)
        ):
            raise ValueError(
                f"The model's input has shape {self._input.shape}: a dense network takes one axis of features, so "
                f"start it with Flatten() to flatten each sample to {self._input.width} features."
            )
        if declared is not None and self._width is not None and declared != self._width:
            where = f"the previous layer {self._layers[-1].name!r} outputs" if self._layers else "the model's input has"
            raise ValueError(f"Layer {layer.name!r} declares input_dim={declared}, but {where} {self._width} units.")
        if declared is not None and self._input is None:
            shape = layer.input_shape if isinstance(layer, Flatten) and layer.input_shape else (declared,)
            self._input = InputSpec(shape)  # (only shape-keeping layers, if any, come before it)
        self._layers.append(layer)
        self._layer_ids.add(id(layer))
        self._layer_names.add(layer.name)
        self._width = layer.output_width(self._width if self._width is not None else declared)
        if self.compiled:
            self._fused_loss = self._fuses(self.compiled_loss)

    def _set_input(self, spec: InputSpec) -> None:
        if self._layers or self._input is not None:
            raise ValueError(
                f"Input(shape={spec.shape}) must be the first element of model {self.name!r}, before its layers."
            )
        if self.built:
            raise RuntimeError(f"Model {self.name!r} is already built.")
        self._input, self._input_given = spec, True
        self._width = spec.width

    def output_widths(self) -> list[int]:
        """Every layer's output width (0 where not known yet)."""
        widths, width = [], self.input_dim
        for layer in self._layers:
            width = layer.output_width(width)
            widths.append(width or 0)
        return widths

    def _layer_inputs(self, input_dim: int) -> list[int]:
        """The input width of every layer for model inputs of ``input_dim``."""
        widths: list[int] = []
        width: int | None = input_dim
        for layer in self._layers:
            assert width is not None  # (a known input: every width is known)
            widths.append(width)
            width = layer.output_width(width)
        return widths

    def build(self, input_dim: int | None = None, seed: int | None = None) -> None:
        """Create the weights: one flat parameter buffer initialised from ``seed``.

        ``input_dim`` defaults to the first layer's ``input_dim``. ``fit`` builds the model
        itself (from the data's width and its ``seed``) when it is not built yet.
        """
        if self.built:
            if input_dim is not None and input_dim != self.input_dim:
                raise ValueError(f"Model {self.name!r} is built for input_dim={self.input_dim}, received {input_dim}.")
            return
        if not self._layers:
            raise RuntimeError(f"Model {self.name!r} has no layers: add layers before building or training it.")
        if input_dim is None:
            input_dim = self.input_dim
        if input_dim is None:
            raise ValueError(
                "The model's input width is unknown: start the model with Input(shape=(features,)), pass "
                "input_dim= to the first Dense layer, call build(input_dim), or let fit() take it from the data."
            )
        if self._input is None and self._data_shape is not None and math.prod(self._data_shape) == input_dim:
            self._input = InputSpec(self._data_shape)  # the shape Flatten takes, as saved models record it
        if self._input is not None and input_dim != self._input.width:
            raise ValueError(
                f"Model {self.name!r} declares inputs of shape {self._input.shape} ({self._input.width} features), "
                f"received input_dim={input_dim}."
            )
        seed = check_seed(seed)
        seed = new_seed() if seed is None else seed
        xp, dtype = self.backend.xp, np.dtype(self.dtype)
        align = _ALIGN_BYTES // dtype.itemsize

        # Plan: where each array of each layer lives in the flat buffer.
        plan, offset = [], 0
        for layer, fan_in in zip(self._layers, self._layer_inputs(input_dim)):
            spans = []
            for _, shape in layer.param_shapes(fan_in):
                spans.append((offset, shape))
                offset += -(-math.prod(shape) // align) * align
            plan.append((layer, fan_in, spans))

        # Initial values are drawn on the host in float64, layer by layer, in a fixed order.
        rng = init_rng(seed)
        host = np.zeros(offset, dtype=np.float64)
        for layer, fan_in, spans in plan:
            for (start, _shape), value in zip(spans, layer.initial_values(fan_in, rng)):
                host[start : start + value.size] = value.ravel()
        self.params = xp.asarray(host.astype(dtype))
        self.grads = xp.zeros_like(self.params)
        self._binding = plan
        self._bind_layers()
        if self.optimizer is not None:
            self._freeze()
            self.optimizer.build(xp, self.params, self._trained)

    # -- compile ------------------------------------------------------------------------------
    def compile(
        self, optimizer: Any = DEFAULT_OPTIMIZER, loss: Any = None, metrics: Any = None, **keras_arguments: Any
    ) -> None:
        """Choose the optimizer, the loss and the metrics (names, config dicts or instances)."""
        refuse_keras_arguments("compile", keras_arguments)
        if not self._layers:
            raise RuntimeError(f"Model {self.name!r} has no layers: add layers before compile().")
        if loss is None:
            raise ValueError(f"compile() needs a loss. Known losses: {', '.join(sorted(losses.LOSSES))}.")
        optimizer = optimizers.get(optimizer)
        loss = losses.get(loss)
        if metrics is None:
            metrics = []
        elif isinstance(metrics, (str, metrics_module.Metric)):
            metrics = [metrics]
        elif not isinstance(metrics, (list, tuple)):
            raise TypeError(
                f"compile() expected metrics as a list of names, received {type(metrics).__name__} {metrics!r}."
            )
        resolved = [metrics_module.get(m, loss, self.output_units) for m in metrics]
        names = [m.name for m in resolved]
        if len(set(names)) != len(names) or "loss" in names:
            raise ValueError(f"Metric names must be unique and not 'loss', received {names}.")
        last = self._layers[-1].activation.name
        if loss.from_logits and last in ("softmax", "sigmoid"):
            warnings.warn(
                f"Loss {loss.name!r} has from_logits=True but the last layer applies {last!r}: the loss "
                "will treat probabilities as logits. Use a linear last layer, or from_logits=False.",
                stacklevel=2,
            )
        self.optimizer, self.loss, self.metrics = optimizer, loss, resolved
        self._fused_loss = self._fuses(loss)
        self._compiled_trainable = [layer.trainable for layer in self._layers]  # (Keras: trainable counts at compile)
        if self.built:
            self._freeze()
            self.optimizer.build(self.backend.xp, self.params, self._trained)

    # -- trainable ---------------------------------------------------------------------------------
    @property
    def trainable(self) -> bool:
        """Whether any layer trains; setting it sets every layer's (Keras' ``model.trainable``)."""
        return any(layer.trainable for layer in self._layers)

    @trainable.setter
    def trainable(self, value: bool) -> None:
        for layer in self._layers:
            layer.trainable = value

    def _freeze(self) -> None:
        """The flat-buffer spans training updates (each weight of a layer trainable at compile(),
        but not the layers' own statistics) and the others: those are put back after every
        update, so that no optimizer rule (weight decay, FTRL, a moving average) moves them, and
        the gradients of frozen layers are zeroed once (a frozen layer never writes them again)."""
        flags = self._compiled_trainable or [True] * len(self._layers)
        self._frozen, self._trained = [], []
        for (layer, _fan_in, spans), trainable in zip(self._binding, flags):
            for (start, shape), trained in zip(spans, layer.trainable_params() if trainable else [False] * len(spans)):
                (self._trained if trained else self._frozen).append((start, start + math.prod(shape)))
            if not trainable:
                for start, shape in spans:
                    self.grads[start : start + math.prod(shape)] = 0

    def check_trainable_compiled(self) -> None:
        """Refuse to train with ``trainable`` changed since compile(): Keras would keep training
        as compiled, silently; here it is an error that says what to do."""
        if self._compiled_trainable is None:
            return
        now = [layer.trainable for layer in self._layers]
        changed = [layer.name for layer, a, b in zip(self._layers, now, self._compiled_trainable) if a != b]
        if changed:
            raise RuntimeError(
                f"trainable changed since compile() for layer(s) {', '.join(map(repr, changed))}: call "
                "model.compile(...) again for the change to take effect (as in Keras)."
            )

    def _fuses(self, loss: losses.Loss) -> bool:
        """Whether the loss's gradient is taken with respect to the last layer's logits (softmax
        + cross-entropy: one simple formula); not where the output itself has a penalty."""
        top = self._layers[-1]
        return loss.fuses_with(top.activation.name) and top.activity_regularizer is None

    @property
    def compiled_optimizer(self) -> optimizers.Optimizer:
        """The optimizer, for code that runs on a compiled network (the training loop, saving)."""
        if self.optimizer is None:
            raise RuntimeError(f"Model {self.name!r} is not compiled: call compile(optimizer=..., loss=...) first.")
        return self.optimizer

    @property
    def compiled_loss(self) -> losses.Loss:
        """The loss, for code that runs on a compiled network."""
        if self.loss is None:
            raise RuntimeError(f"Model {self.name!r} is not compiled: call compile(optimizer=..., loss=...) first.")
        return self.loss

    def require_compiled(self, what: str) -> None:
        if not self.compiled:
            raise RuntimeError(f"{what}() needs a compiled model: call model.compile(optimizer=..., loss=...) first.")

    # -- one training step ----------------------------------------------------------------------
    def forward(self, x: Any, training: bool) -> Any:
        """The network's output for a batch ``x`` (a device array); ``training`` as in Keras."""
        for layer in self._layers:
            x = layer.forward(x, training=training)
        return x

    def _loss_and_metric_sums(self, y, out, sample_weight=None) -> tuple[float, list[float]]:
        """The sums over the batch of the loss (weighted by ``sample_weight``, with the
        penalties, as Keras reports it) and of every metric."""
        xp = self.backend.xp
        if self._fused_loss:
            per_sample = self.compiled_loss.per_sample_from_logits(xp, y, self._layers[-1].logits)
        else:
            per_sample = self.compiled_loss.per_sample(xp, y, out)
        loss = float(per_sample.sum() if sample_weight is None else xp.dot(per_sample, sample_weight))
        if self._penalized:
            loss += self._penalties(len(y))
        return loss, [float(v) for m in self.metrics for v in m.update(xp, y, out)]

    @property
    def _penalized(self) -> bool:
        return any(layer.activity_regularizer is not None or layer.penalized_weights() for layer in self._layers)

    def _penalties(self, n: int) -> float:
        """The batch's share of the penalties: n x the weights' (they count once per step, and
        the step's loss is a mean over its samples), plus each sample's activity penalty."""
        xp, total = self.backend.xp, 0.0
        for layer in self._layers:
            for regularizer, weight, _ in layer.penalized_weights() if layer.trainable else ():
                total += n * regularizer.penalty(xp, weight)  # (Keras: the trainable weights' penalties)
            if layer.activity_regularizer is not None and layer.output is not None:
                total += float(layer.activity_regularizer.per_sample(xp, layer.output).sum())
        return total

    def apply_constraints(self) -> None:
        """Project the constrained weights (after a whole update: every rank, the same weights)."""
        xp = self.backend.xp
        for layer in self._layers:
            for constraint, weight in layer.constrained_weights() if layer.trainable else ():
                constraint.apply(xp, weight)

    def compute_gradients(
        self,
        x,
        y,
        sample_weight=None,
        scale: float | None = None,
        noise: StepNoise | None = None,
    ) -> tuple[int, float, list[float]]:
        """Forward, loss and backward on one batch (device arrays, already checked).

        Fills ``model.grads`` with the gradient of ``scale * sum(w_i * per-sample loss_i)``
        (``sample_weight`` w, one per row, the model's dtype; all 1 without); ``scale``
        defaults to 1 / len(x), the mean over this batch (data-parallel training passes
        1 / global batch size: Keras divides the weighted sum by the batch size, not by the
        weights' sum). ``noise``: the seed, epoch and global rows that random layers (Dropout,
        ...) draw from. Returns (samples, loss sum, metric sums), all before the update; the
        metrics are not weighted, as Keras' compiled ``metrics`` are not."""
        xp, n = self.backend.xp, x.shape[0]
        scale = 1.0 / n if scale is None else scale
        if noise is not None:
            for stream, layer in enumerate(self._layers):
                if layer.random:
                    layer.set_noise(noise, stream)
        out = self.forward(x, training=True)
        sums = self._loss_and_metric_sums(y, out, sample_weight)
        top = self._layers[-1]
        if self._fused_loss:
            buffer = self._top_grads.get(n, lambda: xp.empty_like(out))
            grad = self.compiled_loss.gradient_from_logits(xp, y, top.logits, out, scale, buffer)
        else:
            grad = self.compiled_loss.gradient(xp, y, out, scale)
        if sample_weight is not None:  # each row's loss gradient, times its weight
            grad *= sample_weight.reshape(-1, 1)
        last = len(self._layers) - 1
        # Below the lowest layer that trains (or sums over the batch), nobody needs a gradient.
        lowest = next((i for i, layer in enumerate(self._layers) if layer.trainable and layer.has_weights), last)
        for i in range(last, lowest - 1, -1):
            layer = self._layers[i]
            if layer.activity_regularizer is not None:  # (never the fused top layer: see _fuses)
                layer.activity_regularizer.add_gradient(xp, layer.output, grad, scale)
            grad = layer.backward(grad, grad_is_logits=self._fused_loss and i == last, need_input_grad=i > lowest)
        # A weight's penalty counts once per step: this batch adds its share (n of the global
        # batch), so the sum over the ranks adds it exactly once.
        for layer in self._layers:
            for regularizer, weight, weight_grad in layer.penalized_weights() if layer.trainable else ():
                regularizer.add_gradient(xp, weight, weight_grad, n * scale)
        return (n, *sums)

    def apply_gradients(
        self, grads: Any = None, part: slice = slice(None), squared_norms: np.ndarray | None = None
    ) -> None:
        """One optimizer update of all parameters from ``model.grads`` (or ``grads``, the same
        shape); with ``part``, of that part of the flat buffer only (a rank's share of a sharded
        step), and then ``squared_norms``: the optimizer's squared norms summed over the ranks,
        when it clips by norm."""
        with self._weights_kept(part):
            self.compiled_optimizer.apply(self.params, self.grads if grads is None else grads, part, squared_norms)
        for layer in self._layers:
            layer.commit()  # (moving statistics: the whole of them, on every rank alike)
        if part == slice(None):  # (a sharded step projects after its allgather)
            self.apply_constraints()

    def finalize_weights(self) -> None:
        """At the end of training: the optimizer's last word on the trained weights (with
        ``use_ema``, their moving average, as Keras' ``fit`` ends)."""
        with self._weights_kept(slice(None)):
            self.compiled_optimizer.finalize(self.params)

    @contextlib.contextmanager
    def _weights_kept(self, part: slice) -> Iterator[None]:
        """Puts back, after the block, the weights training keeps (frozen layers', statistics):
        an optimizer's momentum, weight decay or moving average must not move them."""
        lo, hi = (part.start or 0), (self.params.size if part.stop is None else part.stop)
        spans = [(max(start, lo), min(stop, hi)) for start, stop in self._frozen]
        spans = [(a, b) for a, b in spans if a < b]
        kept = self._kept_buffer(sum(b - a for a, b in spans))
        at = 0
        for a, b in spans:
            kept[at : at + b - a] = self.params[a:b]
            at += b - a
        yield
        at = 0
        for a, b in spans:
            self.params[a:b] = kept[at : at + b - a]
            at += b - a

    def _kept_buffer(self, size: int) -> Any:
        if self._kept is None or self._kept.size < size:
            self._kept = self.backend.xp.empty(size, dtype=self.params.dtype)
        return self._kept

    def set_batch_reducer(self, reduce: Any = None) -> None:
        """How layers that need the global batch (BatchNormalization) sum a float64 host array
        over the ranks, in place (a communicator's ``allreduce``); None: one process."""
        for layer in self._layers:
            if layer.reduce is not None:  # (BatchNormalization's, frozen or not)
                layer.reduce = reduce or one_process

    def join_step_without_rows(self) -> None:
        """A rank with no rows in this step: zero gradient, and it joins the sums over the
        global batch in the order the others make them (forward, then backward reversed)."""
        self.grads.fill(0)
        assert self.input_dim is not None  # (built)
        synced = [
            (layer, width) for layer, width in zip(self._layers, self._layer_inputs(self.input_dim)) if layer.sync_batch
        ]
        for layer, width in synced:
            layer.join_without_rows(width)  # type: ignore[attr-defined]
        for layer, width in reversed(synced):
            layer.join_backward_without_rows(width)  # type: ignore[attr-defined]

    def use_gradient_buffer(self, buffer: Any) -> None:
        """Keep the gradients in ``buffer`` (flat, ``model.grads``' size and dtype) from now on:
        the data-parallel ranks put them in memory their peers read without a copy."""
        self.grads = self._moved_into(buffer, self.grads, "gradient")
        self._bind_layers()

    def use_parameter_buffer(self, buffer: Any) -> None:
        """Keep the weights in ``buffer`` (flat, ``model.params``' size and dtype) from now on,
        for the same reason: the ranks of a sharded step copy their peers' updated parts from it."""
        self.params = self._moved_into(buffer, self.params, "parameter")
        self._bind_layers()

    @staticmethod
    def _moved_into(buffer: Any, current: Any, what: str) -> Any:
        if buffer.shape != current.shape or buffer.dtype != current.dtype:
            raise ValueError(
                f"A {what} buffer must be {current.shape} {current.dtype}, not {buffer.shape} {buffer.dtype}."
            )
        buffer[...] = current
        return buffer

    def _bind_layers(self) -> None:
        """Give every layer its views into the flat parameter and gradient buffers."""

        def views(flat, spans):
            return [flat[start : start + math.prod(shape)].reshape(shape) for start, shape in spans]

        for layer, fan_in, spans in self._binding:
            layer.bind(self.backend.xp, fan_in, views(self.params, spans), views(self.grads, spans))

    @property
    def uses_noise(self) -> bool:
        """Whether training draws randomness (Dropout, ...): the loop then passes the global rows."""
        return any(layer.random for layer in self._layers)

    def check_x(self, x: Any, name: str = "x", input_dim: int | None = None) -> np.ndarray:
        """``x`` as the 2-D host array the layers take, checked; samples of several axes are
        flattened where the model starts with Flatten (and must match a declared shape)."""
        input_dim = self.input_dim if input_dim is None else input_dim
        if not self.flattens_input:
            return check_features(x, input_dim, self.dtype, name=name)
        first = self._layers[0]
        assert isinstance(first, Flatten)
        if self._input is None and len(np.shape(x)) > 1:
            self._data_shape = tuple(int(d) for d in np.shape(x)[1:])  # (build makes it the model's input)
        shape = self._input.shape if self._input is not None else None
        return check_features(x, input_dim, self.dtype, name=name, flatten=first.data_format, sample_shape=shape)

    def check_row_shape(
        self, row_shape: tuple[int, ...], what: str, name: str = "x", input_dim: int | None = None
    ) -> int:
        """The width of samples of ``row_shape`` (from a file or a Dask array: ``what``
        describes it) as the layers see them; an error where the model cannot take them."""
        flattens = self.flattens_input
        if len(row_shape) != 1 and not flattens:
            raise ValueError(
                f"{name} must be 2-D (samples, features); {what} has rows of shape {row_shape}. Start the model "
                "with Flatten() to flatten each sample."
            )
        if self._input is None and flattens:
            self._data_shape = tuple(row_shape)
        if self._input is not None and flattens and tuple(row_shape) != self._input.shape:
            raise ValueError(
                f"{name} has samples of shape {tuple(row_shape)} ({what}), but the model expects {self._input.shape}."
            )
        width = math.prod(row_shape)
        expected = self.input_dim if input_dim is None else input_dim
        if expected is not None and width != expected:
            raise ValueError(
                f"{name} has {width} features per sample ({what}), but the model expects input_dim={expected}."
            )
        return width

    def check_xy(self, x: Any, y: Any, name: str = "", input_dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``x`` and ``y`` as host arrays this network trains on, checked (``name`` prefixes the messages)."""
        x = self.check_x(x, f"{name}x", input_dim)
        y = check_targets(y, x.shape[0], self.loss, self.output_units, self.dtype, name=f"{name}y", x_name=f"{name}x")
        return x, y

    def evaluation_totals(
        self, x: np.ndarray, y: np.ndarray, batch_size: int, sample_weight: np.ndarray | None = None
    ) -> Totals:
        """Sums of loss and metrics over (x, y) (host arrays, already checked); the loss
        weighted by ``sample_weight`` where given."""
        totals = Totals(self.metrics)
        weights = None if sample_weight is None else np.asarray(sample_weight, dtype=self.dtype)
        for rows in batches(len(x), batch_size):
            xb, yb = self.backend.asarray(x[rows]), self.backend.asarray(y[rows])
            wb = None if weights is None else self.backend.asarray(weights[rows])
            out = self.forward(xb, training=False)
            totals.add(len(xb), *self._loss_and_metric_sums(yb, out, wb))
        return totals

    def predict_rows(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        """Outputs for host rows ``x`` (already checked), batch by batch, as one NumPy array."""
        result = np.empty((len(x), self.output_units), dtype=self.dtype)
        for rows in batches(len(x), batch_size):
            result[rows] = to_numpy(self.forward(self.backend.asarray(x[rows]), training=False))
        return result

    def require_built(self, what: str) -> None:
        """Build the network from its first layer's input_dim, or say that ``what`` needs weights."""
        if self.built:
            return
        if self.input_dim is None:
            raise RuntimeError(
                f"{what}() needs the model's weights: train it with fit(), call build(input_dim), "
                "or give the first layer an input_dim."
            )
        self.build()

    # -- weights --------------------------------------------------------------------------------
    def _weight_views(self) -> list[tuple[str, Any]]:
        return [view for layer in self._layers for view in layer.weight_views()]

    def get_weights(self) -> list[np.ndarray]:
        """Copies of the weights as NumPy arrays, Keras order: [kernel (in, out), bias (out,), ...]."""
        self.require_built("get_weights")
        return [host_copy(view) for _, view in self._weight_views()]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Replace the weights from arrays in ``get_weights()`` order and shapes (all are
        checked before any is written)."""
        self.require_built("set_weights")
        assign_weights(self._weight_views(), weights, self.backend.xp)

    def count_params(self) -> int:
        self.require_built("count_params")
        return sum(int(view.size) for _, view in self._weight_views())

    def trainable_spans(self) -> list[tuple[int, tuple[int, ...]]]:
        """(offset in the flat buffers, shape) of every weight training updates, Keras order."""
        spans = []
        for layer, _fan_in, layer_spans in self._binding:
            flags = layer.trainable_params() if layer.trainable else [False] * len(layer_spans)
            spans += [span for span, flag in zip(layer_spans, flags) if flag]
        return spans

    def _weights_by_training(self, trainable: bool) -> list[np.ndarray]:
        self.require_built("trainable_weights" if trainable else "non_trainable_weights")
        out = []
        for layer in self._layers:
            flags = layer.trainable_params()
            for (_, view), flag in zip(layer.weight_views(), flags):
                if (layer.trainable and flag) == trainable:
                    out.append(host_copy(view))
        return out

    @property
    def trainable_weights(self) -> list[np.ndarray]:
        """Copies of the weights training updates (Keras order)."""
        return self._weights_by_training(True)

    @property
    def non_trainable_weights(self) -> list[np.ndarray]:
        """Copies of the others: frozen layers' weights, BatchNormalization's moving statistics."""
        return self._weights_by_training(False)

    def get_layer(self, name: str | None = None, index: int | None = None) -> Layer:
        """A layer by ``name`` or by ``index`` (Keras' ``get_layer``), else a ValueError listing them."""
        if (name is None) == (index is None):
            raise ValueError("get_layer expected either name= or index=, not both and not neither.")
        if index is not None:
            if (
                isinstance(index, bool)
                or not isinstance(index, int)
                or not -len(self._layers) <= index < len(self._layers)
            ):
                raise ValueError(f"get_layer(index={index!r}): model {self.name!r} has {len(self._layers)} layers.")
            return self._layers[index]
        for layer in self._layers:
            if layer.name == name:
                return layer
        raise ValueError(
            f"No layer named {name!r} in model {self.name!r}. Its layers: {', '.join(layer.name for layer in self._layers)}."
        )

    def pop(self) -> Layer:
        """Remove and return the last layer (Keras' ``pop``). A built model keeps the other
        layers' weights (and is rebuilt without the popped one's)."""
        if not self._layers:
            raise ValueError(f"Model {self.name!r} has no layers to pop.")
        weights = None
        if self.built:
            keep = len(self._layers) - 1
            weights = [w for layer in self._layers[:keep] for w in layer.get_weights()]
            input_dim = self.input_dim
        layer = self._layers.pop()
        self._layer_ids.discard(id(layer))
        self._layer_names.discard(layer.name)
        self._width = None if self._input is None else self._input.width
        for remaining in self._layers:
            self._width = remaining.output_width(self._width)
        if weights is not None:
            self.params = self.grads = None
            self._binding = []
            if self._layers:  # (build binds the remaining layers to the new buffers)
                self.build(input_dim, seed=0)
                self.set_weights(weights)
        layer._xp = None
        if self.compiled and self._layers:
            self._fused_loss = self._fuses(self.compiled_loss)
            self._compiled_trainable = [lay.trainable for lay in self._layers]
        return layer

    # -- config and saving ------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """Plain JSON-able data from which ``from_config`` rebuilds the architecture."""
        entries = [{"class_name": type(layer).__name__, "config": layer.get_config()} for layer in self._layers]
        first = self._layers[0] if self._layers else None
        from_data = isinstance(first, Flatten) and first.input_shape is None  # (its shape came from the data)
        if self._input is not None and (self._input_given or from_data):  # Keras' InputLayer entry
            entries.insert(0, {"class_name": "InputLayer", "config": self._input.get_config()})
        return {"name": self.name, "dtype": self.dtype, "layers": entries}

    @classmethod
    def from_config(cls: type[_N], config: dict[str, Any], device: str | None = None) -> _N:
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            raise ValueError(f"A Sequential config needs a 'layers' list, received {config!r}.")
        unknown = set(config) - {"name", "dtype", "layers"}
        if unknown:
            raise ValueError(f"Unexpected keys {sorted(unknown)} in Sequential config.")
        layers = [layers_module.from_config(entry) for entry in config["layers"]]
        return cls(layers, name=config.get("name"), device=device, dtype=config.get("dtype"))

    def compile_config(self) -> dict[str, Any] | None:
        if not self.compiled:
            return None
        return {
            "optimizer": optimizers.serialize(self.compiled_optimizer),
            "loss": losses.serialize(self.compiled_loss),
            "metrics": [metrics_module.serialize(m) for m in self.metrics],
        }

    # -- summary --------------------------------------------------------------------------------
    def summary(self, print_fn=print) -> None:
        """Print the layers, their output shapes and parameter counts."""
        rows = [("Layer (type)", "Output Shape", "Param #")]
        total = trainable = 0
        fan_in = self.input_dim
        for layer in self._layers:
            count = None
            if fan_in is not None:
                shapes = layer.param_shapes(fan_in)
                count = sum(math.prod(shape) for _, shape in shapes)
                total += count
                if layer.trainable:
                    trainable += sum(math.prod(shape) for (_, shape), t in zip(shapes, layer.trainable_params()) if t)
            fan_in = layer.output_width(fan_in)
            rows.append(
                (
                    f"{layer.name} ({type(layer).__name__})",
                    f"(None, {'?' if fan_in is None else fan_in})",
                    "?" if count is None else f"{count:,}",
                )
            )
        widths = [max(len(r[i]) for r in rows) + 2 for i in range(3)]
        line = "─" * sum(widths)
        print_fn(f'Model: "{self.name}"')
        print_fn(line)
        for i, row in enumerate(rows):
            print_fn("".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
            if i == 0:
                print_fn(line)
        print_fn(line)
        if self.input_dim is not None:
            print_fn(f"Total params: {total:,}")
            print_fn(f"Trainable params: {trainable:,}")
            print_fn(f"Non-trainable params: {total - trainable:,}")
        else:
            print_fn("Total params: unknown until the input width is known")
        print_fn(f"Device: {self.device} ({self.backend.name}), dtype: {self.dtype}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} layers={len(self._layers)} built={self.built} device={self.device!r}>"
