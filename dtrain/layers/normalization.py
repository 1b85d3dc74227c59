"""Normalisation layers: ``LayerNormalization`` (each sample over its features) and
``BatchNormalization`` (each feature over the batch), with Keras 3's arguments, defaults,
formulas and weight order.

BatchNormalization in training uses the statistics of the **global** batch: where the batch is
spread over ranks, they sum their per-feature sums in the forward pass (one allreduce of
1 + 2 x features numbers) and the two per-feature sums its gradient needs in the backward pass
(one allreduce of 2 x features), so N workers give the result of one process (synchronised
batch normalisation). The sums are taken about the moving mean (identical on every rank) in
float64, which keeps E[d^2] - E[d]^2 free of cancellation. The moving statistics are weights
outside the optimizer's reach (their gradient is always zero) and are written after the step's
update, on every rank alike: a skipped step (``on_nonfinite="skip"``) leaves them as they were.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import constraints, initializers, regularizers
from ..backend import Array
from .base import Layer, real_number

Reducer = Callable[[np.ndarray], None]  # sums a float64 host array over the ranks, in place


def one_process(values: np.ndarray) -> None:
    """One process: the batch is the global batch."""


def _check_axis(axis: Any, where: str) -> int:
    if axis not in (-1, 1):
        raise ValueError(f"{where} expected axis=-1 (the features of each sample), received axis={axis!r}.")
    return -1


def _check_bool(name: str, value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where} expected a bool for {name}, received {name}={value!r}.")
    return value


class _Affine(Layer):
    """What both layers share: optional gamma (scale) and beta (center) per feature, in Keras'
    order, with their initializers, regularizers and constraints."""

    gamma: Array
    beta: Array
    gamma_grad: Array
    beta_grad: Array

    def __init__(
        self,
        epsilon: Any,
        center: Any,
        scale: Any,
        beta_initializer: Any,
        gamma_initializer: Any,
        beta_regularizer: Any,
        gamma_regularizer: Any,
        beta_constraint: Any,
        gamma_constraint: Any,
        name: str | None,
    ):
        where = type(self).__name__
        self.epsilon = real_number("epsilon", epsilon, where, 0.0, float("inf"))
        if self.epsilon <= 0:
            raise ValueError(f"{where} expected epsilon > 0, received epsilon={epsilon!r}.")
        self.center = _check_bool("center", center, where)
        self.scale = _check_bool("scale", scale, where)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        self.beta_constraint = constraints.get(beta_constraint)
        self.gamma_constraint = constraints.get(gamma_constraint)
        super().__init__(name)
        self.gamma = self.beta = self.gamma_grad = self.beta_grad = None

    @property
    def has_weights(self) -> bool:
        return True

    def _affine_shapes(self, width: int) -> list[tuple[str, tuple[int, ...]]]:
        shapes: list[tuple[str, tuple[int, ...]]] = []
        if self.scale:
            shapes.append(("gamma", (width,)))
        if self.center:
            shapes.append(("beta", (width,)))
        return shapes

    def _affine_values(self, width: int, rng: np.random.Generator) -> list[np.ndarray]:
        values = []
        if self.scale:
            values.append(self.gamma_initializer((width,), rng))
        if self.center:
            values.append(self.beta_initializer((width,), rng))
        return values

    def _bind_affine(self, params: list[Array], grads: list[Array]) -> int:
        """Takes gamma and beta; returns how many arrays they were."""
        i = 0
        if self.scale:
            self.gamma, self.gamma_grad = params[i], grads[i]
            i += 1
        if self.center:
            self.beta, self.beta_grad = params[i], grads[i]
            i += 1
        return i

    def weight_views(self) -> list[tuple[str, Array]]:
        if not self.built:
            return []
        views = []
        if self.scale:
            views.append((f"{self.name}/gamma", self.gamma))
        if self.center:
            views.append((f"{self.name}/beta", self.beta))
        return views

    def penalized_weights(self) -> list[tuple[Any, Array, Array]]:
        pairs = []
        if self.built and self.scale and self.gamma_regularizer is not None:
            pairs.append((self.gamma_regularizer, self.gamma, self.gamma_grad))
        if self.built and self.center and self.beta_regularizer is not None:
            pairs.append((self.beta_regularizer, self.beta, self.beta_grad))
        return pairs

    def constrained_weights(self) -> list[tuple[Any, Array]]:
        pairs = []
        if self.built and self.scale and self.gamma_constraint is not None:
            pairs.append((self.gamma_constraint, self.gamma))
        if self.built and self.center and self.beta_constraint is not None:
            pairs.append((self.beta_constraint, self.beta))
        return pairs

    def _affine_backward(self, grad: Array, xhat: Array, scratch: Array) -> Array:
        """Fill gamma's and beta's gradients (sums over this rank's rows; none when frozen);
        return dL/dxhat (in ``grad``, which is overwritten)."""
        xp = self._xp
        if self.scale and self.trainable:
            xp.multiply(grad, xhat, out=scratch)
            scratch.sum(axis=0, out=self.gamma_grad)
        if self.center and self.trainable:
            grad.sum(axis=0, out=self.beta_grad)
        if self.scale:
            grad *= self.gamma
        return grad

    def _affine_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "beta_initializer": initializers.serialize(self.beta_initializer),
            "gamma_initializer": initializers.serialize(self.gamma_initializer),
        }
        for key in ("beta_regularizer", "gamma_regularizer"):
            if getattr(self, key) is not None:
                config[key] = regularizers.serialize(getattr(self, key))
        for key in ("beta_constraint", "gamma_constraint"):
            if getattr(self, key) is not None:
                config[key] = constraints.serialize(getattr(self, key))
        return config


class LayerNormalization(_Affine):
    """``keras.layers.LayerNormalization(axis=-1, epsilon=1e-3, center=True, scale=True, ...)``:
    each sample normalised over its features, ``(x - mean) / sqrt(var + epsilon) * gamma + beta``."""

    default_name = "layer_normalization"

    def __init__(
        self,
        axis: Any = -1,
        epsilon: Any = 1e-3,
        center: Any = True,
        scale: Any = True,
        beta_initializer: Any = "zeros",
        gamma_initializer: Any = "ones",
        beta_regularizer: Any = None,
        gamma_regularizer: Any = None,
        beta_constraint: Any = None,
        gamma_constraint: Any = None,
        name: str | None = None,
    ):
        self.axis = _check_axis(axis, "LayerNormalization")
        super().__init__(
            epsilon, center, scale, beta_initializer, gamma_initializer, beta_regularizer, gamma_regularizer,
            beta_constraint, gamma_constraint, name,
        )  # fmt: skip
        self._xhat: Array = None
        self._inv: Array = None

    def param_shapes(self, input_dim: int) -> list[tuple[str, tuple[int, ...]]]:
        return self._affine_shapes(input_dim)

    def initial_values(self, input_dim: int, rng: np.random.Generator) -> list[np.ndarray]:
        return self._affine_values(input_dim, rng)

    def bind(self, xp: Any, input_dim: int, params: list[Array], grads: list[Array]) -> None:
        super().bind(xp, input_dim, params, grads)
        self._bind_affine(params, grads)

    def forward(self, x: Array, training: bool = False) -> Array:
        xp, (n, width) = self._xp, x.shape
        xhat = self._buffer("xhat", n, width, x.dtype)
        out = self._buffer("out", n, width, x.dtype)
        mean = x.mean(axis=1, keepdims=True)
        xp.subtract(x, mean, out=xhat)
        xp.multiply(xhat, xhat, out=out)  # (the output's buffer as scratch: nothing new per step)
        inv = 1.0 / xp.sqrt(out.mean(axis=1, keepdims=True) + self.epsilon)
        xhat *= inv
        xp.multiply(xhat, self.gamma, out=out) if self.scale else xp.copyto(out, xhat)
        if self.center:
            out += self.beta
        self._xhat, self._inv, self._out = xhat, inv, out
        return out

    def backward(self, grad: Array, *, grad_is_logits: bool = False, need_input_grad: bool = True) -> Array | None:
        xp, (n, width) = self._xp, grad.shape
        scratch = self._buffer("scratch", n, width, grad.dtype)
        g = self._affine_backward(grad, self._xhat, scratch)
        if not need_input_grad:
            return None
        # dx = inv * (g - mean(g) - xhat * mean(g * xhat)), means over each sample's features
        xp.multiply(g, self._xhat, out=scratch)
        projection = scratch.mean(axis=1, keepdims=True)
        g -= g.mean(axis=1, keepdims=True)
        xp.multiply(self._xhat, projection, out=scratch)
        g -= scratch
        g *= self._inv
        return g

    def get_config(self) -> dict[str, Any]:
        return {**self._base_config(), "axis": self.axis, **self._affine_config()}


class BatchNormalization(_Affine):
    """``keras.layers.BatchNormalization(axis=-1, momentum=0.99, epsilon=1e-3, center=True,
    scale=True, ...)``. ``synchronized`` is accepted for Keras programs: either way the
    statistics are the global batch's (the module's docstring). Weights in Keras' order: gamma, beta, moving_mean, moving_variance.
    Training: the global batch's mean and (biased) variance, and moving statistics updated as
    ``moving * momentum + batch * (1 - momentum)``; otherwise the moving statistics."""

    default_name = "batch_normalization"
    moving_mean: Array
    moving_variance: Array

    @property
    def sync_batch(self) -> bool:  # type: ignore[override]
        """Needs the ranks' sums in forward and backward (Network.set_batch_reducer): in training,
        unless frozen (a frozen BatchNormalization runs in inference mode, as in Keras)."""
        return self.trainable

    def __init__(
        self,
        axis: Any = -1,
        momentum: Any = 0.99,
        epsilon: Any = 1e-3,
        center: Any = True,
        scale: Any = True,
        beta_initializer: Any = "zeros",
        gamma_initializer: Any = "ones",
        moving_mean_initializer: Any = "zeros",
        moving_variance_initializer: Any = "ones",
        beta_regularizer: Any = None,
        gamma_regularizer: Any = None,
        beta_constraint: Any = None,
        gamma_constraint: Any = None,
        synchronized: Any = False,
        name: str | None = None,
    ):
        self.axis = _check_axis(axis, "BatchNormalization")
        self.momentum = real_number("momentum", momentum, "BatchNormalization", 0.0, 1.0)
        # Keras' synchronized=False means each replica's own statistics; dtrain's are always the
        # global batch's (what one process computes, which is what either setting gives there).
        self.synchronized = _check_bool("synchronized", synchronized, "BatchNormalization")
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)
        super().__init__(
            epsilon, center, scale, beta_initializer, gamma_initializer, beta_regularizer, gamma_regularizer,
            beta_constraint, gamma_constraint, name,
        )  # fmt: skip
        self.moving_mean = self.moving_variance = None
        self.reduce: Reducer = one_process
        self._xhat: Array = None
        self._inv: Array = None
        self._count = 0
        self._pending: tuple[Array, Array] | None = None  # the moving statistics after this step

    def param_shapes(self, input_dim: int) -> list[tuple[str, tuple[int, ...]]]:
        return [*self._affine_shapes(input_dim), ("moving_mean", (input_dim,)), ("moving_variance", (input_dim,))]

    def trainable_params(self) -> list[bool]:
        return [True] * len(self._affine_shapes(1)) + [False, False]

    def initial_values(self, input_dim: int, rng: np.random.Generator) -> list[np.ndarray]:
        return [
            *self._affine_values(input_dim, rng),
            self.moving_mean_initializer((input_dim,), rng),
            self.moving_variance_initializer((input_dim,), rng),
        ]

    def bind(self, xp: Any, input_dim: int, params: list[Array], grads: list[Array]) -> None:
        super().bind(xp, input_dim, params, grads)
        i = self._bind_affine(params, grads)
        self.moving_mean, self.moving_variance = params[i], params[i + 1]
        self._pending = None

    def weight_views(self) -> list[tuple[str, Array]]:
        if not self.built:
            return []
        return [
            *super().weight_views(),
            (f"{self.name}/moving_mean", self.moving_mean),
            (f"{self.name}/moving_variance", self.moving_variance),
        ]

    # -- the global batch's statistics ----------------------------------------------------------
    def _statistics(self, x: Array | None, width: int) -> tuple[Array, Array]:
        """The global batch's mean and variance (every rank's rows; ``x`` None: this rank has
        none in this step but joins the sum), and the moving statistics they lead to."""
        xp = self._xp
        shift = self.moving_mean.astype(np.float64)
        sums = np.zeros(1 + 2 * width)
        if x is not None:
            # (in a float64 array kept for this batch size: no new array of the batch's size per step)
            d = self._buffer("shifted", x.shape[0], width, np.float64)
            xp.subtract(x, shift, out=d)
            sums[0] = x.shape[0]
            sums[1 : 1 + width] = _host(d.sum(axis=0))
            xp.multiply(d, d, out=d)
            sums[1 + width :] = _host(d.sum(axis=0))
        self.reduce(sums)
        self._count = int(round(sums[0]))
        mean_d = sums[1 : 1 + width] / sums[0]
        var = np.maximum(sums[1 + width :] / sums[0] - mean_d * mean_d, 0.0)
        mean = _host(shift) + mean_d
        dtype = self.moving_mean.dtype
        momentum = self.momentum
        self._pending = (
            xp.asarray(_host(self.moving_mean) * momentum + mean * (1.0 - momentum), dtype=dtype),
            xp.asarray(_host(self.moving_variance) * momentum + var * (1.0 - momentum), dtype=dtype),
        )
        return xp.asarray(mean, dtype=dtype), xp.asarray(var, dtype=dtype)

    def forward(self, x: Array, training: bool = False) -> Array:
        xp, (n, width) = self._xp, x.shape
        out = self._buffer("out", n, width, x.dtype)
        if not training or not self.trainable:  # (frozen: inference mode in training too, as Keras)
            # Keras' formula: x * inv + (beta - mean * inv), inv = gamma / sqrt(var + epsilon)
            inv = 1.0 / xp.sqrt(self.moving_variance + self.epsilon)
            if self.scale:
                inv = inv * self.gamma
            offset = -self.moving_mean * inv
            if self.center:
                offset += self.beta
            xp.multiply(x, inv, out=out)
            out += offset
            self._out, self._inv, self._xhat = out, inv, None
            return out
        mean, var = self._statistics(x, width)
        inv = 1.0 / xp.sqrt(var + self.epsilon)
        xhat = self._buffer("xhat", n, width, x.dtype)
        xp.subtract(x, mean, out=xhat)
        xhat *= inv
        xp.multiply(xhat, self.gamma, out=out) if self.scale else xp.copyto(out, xhat)
        if self.center:
            out += self.beta
        self._xhat, self._inv, self._out = xhat, inv, out
        return out

    def backward(self, grad: Array, *, grad_is_logits: bool = False, need_input_grad: bool = True) -> Array | None:
        xp, (n, width) = self._xp, grad.shape
        if self._xhat is None:  # frozen: the inference transform, linear in x
            if not need_input_grad:
                return None
            grad *= self._inv
            return grad
        scratch = self._buffer("scratch", n, width, grad.dtype)
        g = self._affine_backward(grad, self._xhat, scratch)
        # dx = inv * (g - sum(g) / N - xhat * sum(g * xhat) / N), sums over the global batch
        sums = np.empty(2 * width)
        sums[:width] = _host(g.sum(axis=0, dtype=np.float64))
        xp.multiply(g, self._xhat, out=scratch)
        sums[width:] = _host(scratch.sum(axis=0, dtype=np.float64))
        self.reduce(sums)
        if not need_input_grad:
            return None
        total = self._count
        g -= xp.asarray(sums[:width] / total, dtype=g.dtype)
        xp.multiply(self._xhat, xp.asarray(sums[width:] / total, dtype=g.dtype), out=scratch)
        g -= scratch
        g *= self._inv
        return g

    def join_without_rows(self, width: int) -> None:
        """A rank with no rows in this step joins the forward sum (its statistics are the others')."""
        self._statistics(None, width)

    def join_backward_without_rows(self, width: int) -> None:
        self.reduce(np.zeros(2 * width))

    def commit(self) -> None:
        """Write the step's moving statistics (after the update; the same on every rank)."""
        if self._pending is not None:
            self.moving_mean[...], self.moving_variance[...] = self._pending
            self._pending = None

    def get_config(self) -> dict[str, Any]:
        return {
            **self._base_config(),
            "axis": self.axis,
            "momentum": self.momentum,
            **self._affine_config(),
            "moving_mean_initializer": initializers.serialize(self.moving_mean_initializer),
            "moving_variance_initializer": initializers.serialize(self.moving_variance_initializer),
            "synchronized": self.synchronized,
        }


def _host(array: Any) -> np.ndarray:
    return array.get() if hasattr(array, "get") else np.asarray(array)
