"""The model: ``Sequential`` with Keras' lifecycle (add, compile, fit, evaluate, predict,
weights and config I/O).

All parameters live in one contiguous array (``model.params``) and all gradients in another
(``model.grads``); every layer's kernel and bias are views into them. A training step is
``compute_gradients`` (forward, loss, backward: fills ``model.grads``) then
``apply_gradients`` (one optimizer update over the flat buffer). Data-parallel training puts
one allreduce between the two: of ``model.grads`` in place, or, where the ranks share memory,
from ``model.grads`` (moved into that memory, ``use_gradient_buffer``) into a separate buffer
that ``apply_gradients(grads)`` then reads; ``model.grads`` keeps the local gradient. A
sharded step sums only this rank's part, ``apply_gradients(grads, part)`` updates only that
part, and the ranks then copy each other's parts of ``model.params`` (moved into shared memory
with ``use_parameter_buffer``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from . import callbacks as callbacks_module
from . import layers as layers_module
from . import losses, optimizers, recovery
from . import metrics as metrics_module
from .backend import Backend, check_dtype, get_backend, get_default_device, host_copy, to_numpy
from .buffers import BufferCache
from .data import (
    BatchGatherer,
    batches,
    check_batch_size,
    check_features,
    check_seed,
    check_targets,
    init_rng,
    new_seed,
)
from .layers import Layer, assign_weights
from .sampling import EpochSampler, ShardPlan

# Each layer's arrays start on a 128-byte boundary of the flat buffers (aligned BLAS/cuBLAS
# operands); the few padding elements stay zero and are never read.
_ALIGN_BYTES = 128


class Totals:
    """Running sums over an epoch (or an evaluation): sample count, loss sum, metric sums."""

    def __init__(self, metric_names: Sequence[str]):
        self.names = list(metric_names)
        self.count = 0
        self.loss = 0.0
        self.metrics = [0.0] * len(self.names)

    def add(self, count: int, loss_sum: float, metric_sums: Sequence[float]) -> None:
        self.count += count
        self.loss += loss_sum
        for i, value in enumerate(metric_sums):
            self.metrics[i] += value

    def to_array(self) -> np.ndarray:
        """[count, loss sum, *metric sums] in float64: what ranks sum with one allreduce."""
        return np.array([self.count, self.loss, *self.metrics], dtype=np.float64)

    @classmethod
    def from_array(cls, metric_names: Sequence[str], values: np.ndarray) -> Totals:
        totals = cls(metric_names)
        totals.count, totals.loss, totals.metrics = (
            int(round(values[0])),
            float(values[1]),
            [float(v) for v in values[2:]],
        )
        return totals

    def logs(self) -> dict[str, float]:
        n = max(self.count, 1)
        out = {"loss": self.loss / n}
        out.update({name: total / n for name, total in zip(self.names, self.metrics)})
        return out


class Sequential:
    """A linear stack of layers, built and trained like Keras' ``Sequential``.

    ``device`` is "auto" (GPU when CuPy and a CUDA device are present), "cpu" or "gpu";
    ``dtype`` is "float32" (default) or "float64".
    """

    def __init__(
        self,
        layers: Iterable[Layer] | None = None,
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
        self.params = self.grads = None
        self._binding: list = []  # (layer, fan-in, spans in the flat buffers), set by build
        self.optimizer: optimizers.Optimizer | None = None
        self.loss: losses.Loss | None = None
        self.metrics: list[metrics_module.Metric] = []
        self._fused_loss = False
        self._top_grads: BufferCache[Any] = BufferCache()  # batch size -> dL/dlogits
        self.stop_training = False
        self.history: callbacks_module.History | None = None
        if isinstance(layers, (Layer, str)):
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
        return self._layers[0].input_dim if self._layers else None

    @property
    def metrics_names(self) -> list[str]:
        """["loss", *metric names]: the order of evaluate()'s list result."""
        return ["loss", *(m.name for m in self.metrics)]

    @property
    def output_units(self) -> int:
        return self._layers[-1].units

    def add(self, layer: Layer) -> None:
        """Append a layer. Its input width is the previous layer's ``units``."""
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
        if any(layer is other for other in self._layers):
            raise ValueError(f"Layer {layer.name!r} is already in model {self.name!r}; create a new layer.")
        if any(layer.name == other.name for other in self._layers):
            raise ValueError(
                f"Model {self.name!r} already has a layer named {layer.name!r}; layer names must be unique."
            )
        if self._layers and layer.input_dim is not None and layer.input_dim != self._layers[-1].units:
            raise ValueError(
                f"Layer {layer.name!r} declares input_dim={layer.input_dim}, but the previous layer "
                f"{self._layers[-1].name!r} outputs {self._layers[-1].units} units."
            )
        self._layers.append(layer)
        if self.compiled:
            self._fused_loss = self.loss.fuses_with(self._layers[-1].activation.name)

    def _layer_inputs(self, input_dim: int) -> list[int]:
        return [input_dim] + [layer.units for layer in self._layers[:-1]]

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
                "The model's input width is unknown: pass input_dim= to the first Dense layer, "
                "call build(input_dim), or let fit() take it from the data."
            )
        seed = new_seed() if check_seed(seed) is None else seed
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
            self.optimizer.build(xp, self.params)

    # -- compile ------------------------------------------------------------------------------
    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, metrics: Any = None) -> None:
        """Choose the optimizer, the loss and the metrics (names, config dicts or instances)."""
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
        self._fused_loss = loss.fuses_with(last)
        if self.built:
            self.optimizer.build(self.backend.xp, self.params)

    def _require_compiled(self, what: str) -> None:
        if not self.compiled:
            raise RuntimeError(f"{what}() needs a compiled model: call model.compile(optimizer=..., loss=...) first.")

    # -- one training step ----------------------------------------------------------------------
    def _forward(self, x, training: bool):
        for layer in self._layers:
            x = layer.forward(x, training=training)
        return x

    def _loss_and_metric_sums(self, y, out) -> tuple[float, list[float]]:
        xp = self.backend.xp
        if self._fused_loss:
            per_sample = self.loss.per_sample_from_logits(xp, y, self._layers[-1].logits)
        else:
            per_sample = self.loss.per_sample(xp, y, out)
        return float(per_sample.sum()), [float(m.per_sample(xp, y, out).sum()) for m in self.metrics]

    def compute_gradients(self, x, y, scale: float | None = None) -> tuple[int, float, list[float]]:
        """Forward, loss and backward on one batch (device arrays, already checked).

        Fills ``model.grads`` with the gradient of ``scale * sum(per-sample loss)``; ``scale``
        defaults to 1 / len(x), the mean over this batch (data-parallel training passes
        1 / global batch size). Returns (samples, loss sum, metric sums), all before the update.
        """
        xp, n = self.backend.xp, x.shape[0]
        scale = 1.0 / n if scale is None else scale
        out = self._forward(x, training=True)
        sums = self._loss_and_metric_sums(y, out)
        top = self._layers[-1]
        if self._fused_loss:
            buffer = self._top_grads.get(n, lambda: xp.empty_like(out))
            grad = self.loss.gradient_from_logits(xp, y, top.logits, out, scale, buffer)
        else:
            grad = self.loss.gradient(xp, y, out, scale)
        last = len(self._layers) - 1
        for i in range(last, -1, -1):
            grad = self._layers[i].backward(grad, grad_is_logits=self._fused_loss and i == last, need_input_grad=i > 0)
        return (n, *sums)

    def apply_gradients(self, grads: Any = None, part: slice = slice(None)) -> None:
        """One optimizer update of all parameters from ``model.grads`` (or ``grads``, the same
        shape); with ``part``, of that part of the flat buffer only (a rank's share of a sharded step)."""
        self.optimizer.apply(self.params, self.grads if grads is None else grads, part)

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

    def _train_step(self, x_host, y_host) -> tuple[int, float, list[float]]:
        x, y = self.backend.asarray(x_host), self.backend.asarray(y_host)
        result = self.compute_gradients(x, y)
        self.apply_gradients()
        return result

    # -- fit ------------------------------------------------------------------------------------
    def _check_xy(self, x, y, name: str = "", input_dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        input_dim = self.input_dim if input_dim is None else input_dim
        x = check_features(x, input_dim, self.dtype, name=f"{name}x")
        y = check_targets(y, x.shape[0], self.loss, self.output_units, self.dtype, name=f"{name}y", x_name=f"{name}x")
        return x, y

    def fit(
        self,
        x: Any = None,
        y: Any = None,
        batch_size: int | None = None,
        epochs: int = 1,
        verbose: int | str = "auto",
        callbacks: Sequence[callbacks_module.Callback] | None = None,
        validation_split: float = 0.0,
        validation_data: tuple[Any, Any] | None = None,
        shuffle: bool = True,
        initial_epoch: int = 0,
        seed: int | None = None,
        *,
        shards: int | None = None,
        client: Any = None,
        workers: Sequence[str] | None = None,
        timeout: float | None = None,
        checkpoint_dir: str | None = None,
        checkpoint_every: int | str = "epoch",
        keep_checkpoints: int = 3,
        resume_from: str | None = None,
        max_restarts: int = 0,
        on_nonfinite: str = "stop",
    ) -> callbacks_module.History:
        """Train for ``epochs`` epochs of global batches of ``batch_size`` (default 32) samples.

        Returns a ``History`` whose ``.history`` maps "loss", each metric and "val_*" to lists
        of per-epoch values. ``seed`` fixes the initial weights (when fit builds the model) and
        the shuffling.

        The data is cut into ``shards`` logical shards (default: 1 here, one per worker with a
        client); each step takes every shard's share of the global batch, and a shard's order
        in epoch e depends only on (seed, e, shard) (see ``dtrain.sampling``).

        With ``client=`` (a ``distributed.Client``) the model trains across the cluster's
        workers (all of them, or the addresses in ``workers``), one replica per worker, and
        the result equals this method's single-process result for the same ``shards`` and
        ``seed`` to float rounding. ``x`` and ``y`` may then also be Dask arrays or file
        sources (``dtrain.from_npy``, ``from_parquet``, ``from_csv``). ``timeout`` (seconds,
        default 60) bounds every wait on another worker: a lost worker fails the job within it.

        Checkpoints: with ``checkpoint_dir`` (a directory or fsspec URL) the weights, optimizer
        state and position are written at the end of every epoch (``checkpoint_every="epoch"``)
        or also every N steps (``checkpoint_every=N``), the last ``keep_checkpoints`` kept
        (see ``dtrain.checkpoints``). ``resume_from`` (such a directory) continues from its
        latest good checkpoint, and the final weights equal an uninterrupted run's. With
        ``client=``, a run that loses a worker (or whose step exceeds ``timeout``) restarts
        from the latest checkpoint on the workers left, up to ``max_restarts`` times (one
        process has nothing to restart: there it is accepted and unused).
        ``on_nonfinite``: "stop" (raise NonFiniteError naming the epoch and step, before the
        update), "skip" (leave out the steps whose summed gradient holds NaN or inf) or
        "ignore" (apply them, as Keras does; pair it with the TerminateOnNaN callback).
        """
        self._require_compiled("fit")
        batch_size = check_batch_size(batch_size)
        for arg, value in (("epochs", epochs), ("initial_epoch", initial_epoch)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"Expected {arg} to be a non-negative integer, received {arg}={value!r}.")
        verbose = _check_verbose(verbose)
        if not isinstance(shuffle, bool):
            raise ValueError(f"Expected shuffle to be True or False, received shuffle={shuffle!r}.")
        seed = check_seed(seed)
        if resume_from is not None and (seed is None or shards is None):
            # What the run left unset comes from the run it resumes: its seed, and its number
            # of logical shards (which with client= defaulted to its number of workers).
            plan = recovery.checkpoint_plan(resume_from)
            seed = plan.get("seed") if seed is None else seed
            shards = plan.get("shards") if shards is None else shards
        seed = new_seed() if seed is None else seed
        if (
            isinstance(validation_split, bool)
            or not isinstance(validation_split, (int, float))
            or not 0 <= validation_split < 1
        ):
            raise ValueError(f"Expected validation_split in [0, 1), received validation_split={validation_split!r}.")
        if shards is not None and (isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or shards < 1):
            raise ValueError(f"Expected shards to be a positive integer or None, received shards={shards!r}.")
        if callbacks is None:
            callbacks = []
        elif not isinstance(callbacks, (list, tuple)):
            raise TypeError(
                f"fit() expected callbacks as a list of dtrain.callbacks.Callback, received "
                f"{type(callbacks).__name__} {callbacks!r}."
            )
        policy = recovery.CheckpointPolicy.make(checkpoint_dir, checkpoint_every, keep_checkpoints)
        on_nonfinite = recovery.check_nonfinite_policy(on_nonfinite)
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, (int, np.integer)) or max_restarts < 0:
            raise ValueError(
                f"Expected max_restarts to be a non-negative integer, received max_restarts={max_restarts!r}."
            )
        if validation_data is not None and (
            not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2
        ):
            raise ValueError(
                f"validation_data must be a tuple (x_val, y_val), received {type(validation_data).__name__}"
                + (f" of length {len(validation_data)}." if isinstance(validation_data, (tuple, list)) else ".")
            )

        if client is not None:
            from .driver import fit_on_cluster

            return fit_on_cluster(
                self,
                x,
                y,
                client=client,
                workers=workers,
                shards=shards,
                batch_size=batch_size,
                epochs=epochs,
                verbose=verbose,
                callbacks=list(callbacks),
                validation_split=validation_split,
                validation_data=validation_data,
                shuffle=shuffle,
                initial_epoch=initial_epoch,
                seed=seed,
                timeout=timeout,
                checkpoints=policy,
                resume_from=resume_from,
                max_restarts=int(max_restarts),
                on_nonfinite=on_nonfinite,
            )
        if workers is not None:
            raise ValueError("workers= selects Dask workers and needs client= as well.")

        # Every check runs before the model is built or touched: a bad call changes nothing.
        x, y = self._check_xy(x, y)
        validation = None
        if validation_data is not None:
            validation = self._check_xy(*validation_data, name="validation ", input_dim=x.shape[1])
        elif validation_split:
            # Keras takes the validation samples from the end, before any shuffling.
            split_at = int(math.floor(len(x) * (1.0 - validation_split)))
            if split_at == 0 or split_at == len(x):
                raise ValueError(
                    f"validation_split={validation_split} of {len(x)} samples leaves "
                    f"{split_at} for training and {len(x) - split_at} for validation; both need at least one."
                )
            x, y, validation = x[:split_at], y[:split_at], (x[split_at:], y[split_at:])
        plan = ShardPlan(len(x), 1 if shards is None else shards, batch_size)
        history = callbacks_module.History()
        cbs = self._callback_list(callbacks, history, verbose, plan, epochs, seed)
        self.build(x.shape[1], seed)

        meta = recovery.checkpoint_meta(self, plan, seed, shuffle)
        point = (
            recovery.resume_point(resume_from, meta)
            if resume_from is not None
            else recovery.ResumePoint(epoch=initial_epoch)
        )
        recovery.restore(self, point)
        meta["run"] = point.run or recovery.new_run_id()
        history.restore(point.history or [])
        done: list[dict[str, float]] = list(point.history or [])  # finished epochs, for the checkpoints

        sampler = EpochSampler(plan, range(plan.shards), seed, shuffle)
        x_rows, y_rows = BatchGatherer(x), BatchGatherer(y)
        names = [m.name for m in self.metrics]
        finite = recovery.FiniteCheck(self.backend.xp, self.grads)
        skipped = 0
        self.stop_training = False
        logs: dict[str, float] = {}
        cbs.on_train_begin()
        for epoch in range(point.epoch, epochs):
            cbs.on_epoch_begin(epoch)
            first_step = point.step if epoch == point.epoch else 0
            totals = Totals(names)
            if first_step and point.totals is not None:
                totals = Totals.from_array(names, point.totals)  # the steps before the checkpoint
            completed = True
            for step, (rows, _) in enumerate(sampler.epoch(epoch, first_step), start=first_step):
                cbs.on_train_batch_begin(step)
                if isinstance(rows, slice):  # in order: the batch is a view, nothing to copy
                    xb, yb = x[rows], y[rows]
                else:
                    xb, yb = x_rows.take(rows), y_rows.take(rows)
                sums = self.compute_gradients(self.backend.asarray(xb), self.backend.asarray(yb))
                if recovery.take_step(self, finite, on_nonfinite, epoch, step):
                    totals.add(*sums)
                else:
                    skipped += 1
                cbs.on_train_batch_end(step, totals.logs())
                if policy is not None and policy.due_within_epoch(step + 1, plan.steps):
                    recovery.write(
                        policy,
                        self,
                        epoch=epoch,
                        step=step + 1,
                        position=epoch * plan.steps + step + 1,
                        totals=totals.to_array(),
                        history=done,
                        meta=meta,
                        on_nonfinite=on_nonfinite,
                    )
                if self.stop_training:
                    completed = step + 1 == plan.steps
                    break
            logs = totals.logs()
            if validation is not None:
                val_logs = self._evaluate_checked(*validation, batch_size)
                logs.update({f"val_{k}": v for k, v in val_logs.items()})
            if completed:
                done.append(logs)
                if policy is not None:
                    recovery.write(
                        policy,
                        self,
                        epoch=epoch + 1,
                        step=0,
                        position=(epoch + 1) * plan.steps,
                        totals=None,
                        history=done,
                        meta=meta,
                        on_nonfinite=on_nonfinite,
                    )
            cbs.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        history.restarts, history.skipped_steps, history.sharded_step = [], skipped, False  # (as with client=)
        cbs.on_train_end(logs)
        self.history = history
        return history

    def _callback_list(self, callbacks, history, verbose: int, plan: ShardPlan, epochs: int, seed: int):
        """The user's callbacks, then History, then the progress bar (checks their types)."""
        hooks = [*callbacks, history]
        if verbose:
            hooks.append(callbacks_module.ProgressBar(verbose))
        params = {
            "epochs": epochs,
            "steps": plan.steps,
            "batch_size": plan.batch_size,
            "samples": plan.rows,
            "shards": plan.shards,
            "seed": seed,
            "verbose": verbose,
        }
        return callbacks_module.CallbackList(hooks, self, params)

    def train_on_batch(self, x: Any, y: Any) -> float | list[float]:
        """One optimizer step on one batch; returns its loss (and metrics), as Keras does."""
        self._require_compiled("train_on_batch")
        x, y = self._check_xy(x, y)
        self.build(x.shape[1])
        totals = Totals([m.name for m in self.metrics])
        totals.add(*self._train_step(x, y))
        return _as_result(totals.logs(), self.metrics)

    # -- evaluate / predict -------------------------------------------------------------------
    def _evaluation_totals(self, x, y, batch_size: int) -> Totals:
        """Sums of loss and metrics over (x, y) (host arrays, already checked)."""
        totals = Totals([m.name for m in self.metrics])
        for rows in batches(len(x), batch_size):
            xb, yb = self.backend.asarray(x[rows]), self.backend.asarray(y[rows])
            out = self._forward(xb, training=False)
            totals.add(len(xb), *self._loss_and_metric_sums(yb, out))
        return totals

    def _evaluate_checked(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> dict[str, float]:
        return self._evaluation_totals(x, y, batch_size).logs()

    def evaluate(
        self,
        x: Any = None,
        y: Any = None,
        batch_size: int | None = None,
        verbose: int | str = 0,
        return_dict: bool = False,
        *,
        client: Any = None,
        workers: Sequence[str] | None = None,
    ) -> float | list[float] | dict[str, float]:
        """The mean loss over (x, y), or [loss, *metrics] when metrics were compiled. With
        ``client=``, the workers evaluate their parts of the rows where the data is."""
        self._require_compiled("evaluate")
        self._require_built("evaluate")
        _check_verbose(verbose)
        batch_size = check_batch_size(batch_size)
        if client is not None:
            from .driver import evaluate_on_cluster

            logs = evaluate_on_cluster(self, x, y, client=client, workers=workers, batch_size=batch_size)
        else:
            logs = self._evaluate_checked(*self._check_xy(x, y), batch_size)
        if verbose:
            print(callbacks_module.format_logs(logs))
        return logs if return_dict else _as_result(logs, self.metrics)

    def predict(
        self,
        x: Any,
        batch_size: int | None = None,
        verbose: int | str = 0,
        *,
        client: Any = None,
        workers: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Model outputs for ``x`` as a NumPy array of shape (n, units). With ``client=``, the
        workers predict their parts of the rows and the client receives the outputs."""
        self._require_built("predict")
        _check_verbose(verbose)
        batch_size = check_batch_size(batch_size)
        if client is not None:
            from .driver import predict_on_cluster

            return predict_on_cluster(self, x, client=client, workers=workers, batch_size=batch_size)
        x = check_features(x, self.input_dim, self.dtype)
        result = np.empty((len(x), self.output_units), dtype=self.dtype)
        for rows in batches(len(x), batch_size):
            result[rows] = to_numpy(self._forward(self.backend.asarray(x[rows]), training=False))
        return result

    def _require_built(self, what: str) -> None:
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
        self._require_built("get_weights")
        return [host_copy(view) for _, view in self._weight_views()]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Replace the weights from arrays in ``get_weights()`` order and shapes (all are
        checked before any is written)."""
        self._require_built("set_weights")
        assign_weights(self._weight_views(), weights, self.backend.xp)

    def count_params(self) -> int:
        self._require_built("count_params")
        return sum(int(view.size) for _, view in self._weight_views())

    # -- config and saving ------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """Plain JSON-able data from which ``from_config`` rebuilds the architecture."""
        return {
            "name": self.name,
            "dtype": self.dtype,
            "layers": [{"class_name": type(layer).__name__, "config": layer.get_config()} for layer in self._layers],
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], device: str | None = None) -> Sequential:
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
            "optimizer": optimizers.serialize(self.optimizer),
            "loss": losses.serialize(self.loss),
            "metrics": [metrics_module.serialize(m) for m in self.metrics],
        }

    def save(self, path: str, include_optimizer: bool = True) -> None:
        """Save architecture, weights, compile settings and optimizer state to one file
        (safetensors: no pickle, nothing in it is ever executed). Load with dtrain.load_model."""
        from .saving import save_model

        save_model(self, path, include_optimizer=include_optimizer)

    # -- summary --------------------------------------------------------------------------------
    def summary(self, print_fn=print) -> None:
        """Print the layers, their output shapes and parameter counts."""
        rows = [("Layer (type)", "Output Shape", "Param #")]
        total = 0
        fan_in = self.input_dim
        for layer in self._layers:
            count = None
            if fan_in is not None:
                count = sum(math.prod(shape) for _, shape in layer.param_shapes(fan_in))
                total += count
            rows.append(
                (
                    f"{layer.name} ({type(layer).__name__})",
                    f"(None, {layer.units})",
                    "?" if count is None else f"{count:,}",
                )
            )
            fan_in = layer.units
        widths = [max(len(r[i]) for r in rows) + 2 for i in range(3)]
        line = "─" * sum(widths)
        print_fn(f'Model: "{self.name}"')
        print_fn(line)
        for i, row in enumerate(rows):
            print_fn("".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
            if i == 0:
                print_fn(line)
        print_fn(line)
        print_fn(
            f"Total params: {total:,}"
            if self.input_dim is not None
            else "Total params: unknown until the input width is known"
        )
        print_fn(f"Device: {self.device} ({self.backend.name}), dtype: {self.dtype}")

    def __repr__(self) -> str:
        return f"<Sequential name={self.name!r} layers={len(self._layers)} built={self.built} device={self.device!r}>"


def _check_verbose(verbose: Any) -> int:
    if verbose == "auto":
        return 1
    if verbose not in (0, 1, 2) or isinstance(verbose, bool):
        raise ValueError(f"Expected verbose in ('auto', 0, 1, 2), received verbose={verbose!r}.")
    return int(verbose)


def _as_result(logs: dict[str, float], metrics: list) -> float | list[float]:
    values = list(logs.values())
    return values[0] if not metrics else values
