"""Losses with Keras names, formulas and defaults.

A loss gives per-sample values (the model averages them over the global batch) and the
gradient of ``scale * sum(per-sample losses)`` with respect to the model output, so that the
caller chooses the normalisation (``scale = 1 / global batch size``): in data-parallel training
the ranks' summed gradients are then exactly the gradient of the mean loss of the global batch.

Cross-entropy losses fuse with the activation that produces probabilities (softmax for the
categorical losses, sigmoid for the binary one): when the model's last layer ends in that
activation, the loss is computed from the pre-activation logits (log-sum-exp, softplus) and the
gradient with respect to the logits is ``p - y``. That is both exact and stable for any logits
(no NaN, no saturation at the clipping epsilon); Keras does the same on its TensorFlow
backend (its other backends clip probabilities at 1e-7 instead).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .activations import Sigmoid, Softmax
from .registry import resolve

EPSILON = 1e-7  # Keras' backend epsilon: the clip used on probabilities


class Loss:
    """Base class for losses.

    ``fused_activation`` names the activation the loss can fuse with (or None).
    ``prepare_targets(y, units)`` validates host targets and returns them in the form the loss
    computes with (``integer_targets``: int64 class indices, else floats of shape (n, units)).
    """

    name = "loss"
    fused_activation: str | None = None
    integer_targets = False

    def __init__(self, from_logits: bool = False):
        if not isinstance(from_logits, (bool, np.bool_)):
            raise ValueError(
                f"Loss {self.name!r} expected from_logits to be True or False, received from_logits={from_logits!r}."
            )
        self.from_logits = bool(from_logits)

    # -- targets ------------------------------------------------------------------------------
    def prepare_targets(self, y: np.ndarray, units: int) -> np.ndarray:
        return _dense_targets(y, units, self.name)

    # -- on model outputs (after the last activation) -----------------------------------------
    def per_sample(self, xp, y, out):
        """Loss of each sample, shape (n,)."""
        raise NotImplementedError

    def gradient(self, xp, y, out, scale: float):
        """d(scale * sum(per_sample)) / d out."""
        raise NotImplementedError

    # -- on logits (fused with ``fused_activation``, or ``from_logits=True``) --------------------
    def per_sample_from_logits(self, xp, y, z):
        raise NotImplementedError

    def gradient_from_logits(self, xp, y, z, probs, scale: float, out):
        """Write d(scale * sum(per_sample)) / dz into ``out``; ``probs`` = activation(z)."""
        raise NotImplementedError

    def fuses_with(self, activation: str) -> bool:
        """True when a last layer with this activation lets the loss work on its logits."""
        return not self.from_logits and self.fused_activation is not None and activation == self.fused_activation

    def get_config(self) -> dict[str, Any]:
        return {"from_logits": self.from_logits} if self.from_logits else {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"


def _dense_targets(y: np.ndarray, units: int, loss: str) -> np.ndarray:
    """Targets one value per output unit: (n, units); (n,) is accepted when units == 1."""
    if y.ndim == 1 and units == 1:
        y = y.reshape(-1, 1)
    if y.ndim != 2 or y.shape[1] != units:
        raise ValueError(
            f"Loss {loss!r} expects targets of shape (n, {units}) to match the model's {units} "
            f"output unit(s), received y of shape {y.shape}."
        )
    return y


def _neg_log_softmax(xp, z):
    """-log softmax(z) over the last axis, as lse(s) - s with s = z - max(z): the entries near
    the maximum (the ones that matter for a good prediction) keep full precision whatever the
    size of the logits; lse(z) - z would lose it to rounding at the scale of max(z)."""
    s = z - z.max(axis=-1, keepdims=True)
    return xp.log(xp.exp(s).sum(axis=-1, keepdims=True)) - s


def _normalised_clipped(xp, out):
    """Keras' treatment of probabilities: renormalise rows, clip into [eps, 1 - eps].
    Returns (q, the row sums, mask of entries not clipped)."""
    total = out.sum(axis=-1, keepdims=True)
    q = out / total
    inside = (q > EPSILON) & (q < 1.0 - EPSILON)
    return xp.clip(q, EPSILON, 1.0 - EPSILON), total, inside


def _through_normalisation(xp, dq, q, total):
    """Chain rule through q = out / sum(out): d/d out_k = (dq_k - sum_i dq_i q_i) / sum(out)."""
    return (dq - (dq * q).sum(axis=-1, keepdims=True)) / total


class CategoricalCrossentropy(Loss):
    """-sum_i y_i log p_i, with y one-hot (or soft labels that sum to 1) of shape (n, classes)."""

    name = "categorical_crossentropy"
    fused_activation = "softmax"

    def prepare_targets(self, y, units):
        if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1 and units > 1):
            raise ValueError(
                f"Loss 'categorical_crossentropy' expects one-hot targets of shape (n, {units}), "
                f"received y of shape {y.shape}, which looks like integer class labels. Use "
                "loss='sparse_categorical_crossentropy', or one-hot encode them with "
                "dtrain.utils.to_categorical(y)."
            )
        y = _dense_targets(y, units, self.name)
        if y.size:
            lo, hi = float(y.min()), float(y.max())
            if lo < 0.0 or hi > 1.0:
                raise ValueError(
                    "Loss 'categorical_crossentropy' expects one-hot (or probability) rows with values "
                    f"in [0, 1], received values in [{lo:g}, {hi:g}]."
                )
            sums = y.sum(axis=1, dtype=np.float64)
            bad = np.flatnonzero(np.abs(sums - 1.0) > 1e-3)
            if bad.size:
                i = int(bad[0])
                raise ValueError(
                    "Loss 'categorical_crossentropy' expects each target row to be one-hot (sum to 1), "
                    f"but {bad.size} row(s) do not: row {i} sums to {sums[i]:g}."
                )
        return y

    def per_sample(self, xp, y, out):
        if self.from_logits:
            return self.per_sample_from_logits(xp, y, out)
        q, _, _ = _normalised_clipped(xp, out)
        return -(y * xp.log(q)).sum(axis=-1)

    def gradient(self, xp, y, out, scale):
        if self.from_logits:
            return self.gradient_from_logits(xp, y, out, _apply(Softmax(), xp, out), scale, xp.empty_like(out))
        q, total, inside = _normalised_clipped(xp, out)
        dq = -scale * y / q * inside
        return _through_normalisation(xp, dq, out / total, total)

    def per_sample_from_logits(self, xp, y, z):
        return (y * _neg_log_softmax(xp, z)).sum(axis=-1)

    def gradient_from_logits(self, xp, y, z, probs, scale, out):
        # d/dz [-sum y log softmax(z)] = softmax(z) * sum(y) - y. sum(y) is 1 for one-hot rows;
        # soft labels are only checked to sum to 1 within 1e-3, so use the exact form.
        xp.multiply(probs, y.sum(axis=-1, keepdims=True), out=out)
        out -= y
        out *= scale
        return out


class SparseCategoricalCrossentropy(Loss):
    """-log p_y with y the integer class index, shape (n,) or (n, 1)."""

    name = "sparse_categorical_crossentropy"
    fused_activation = "softmax"
    integer_targets = True

    def prepare_targets(self, y, units):
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.reshape(-1)
        if y.ndim != 1:
            raise ValueError(
                "Loss 'sparse_categorical_crossentropy' expects integer class labels of shape (n,), "
                f"received y of shape {y.shape}. For one-hot targets use loss='categorical_crossentropy'."
            )
        if y.dtype.kind == "f":
            whole = np.equal(np.floor(y), y)
            if not whole.all():
                i = int(np.flatnonzero(~whole)[0])
                raise ValueError(
                    "Loss 'sparse_categorical_crossentropy' expects integer class labels, "
                    f"received a non-integer label y[{i}] = {y[i].item()!r}."
                )
        elif y.dtype.kind not in "iub":
            raise ValueError(
                f"Loss 'sparse_categorical_crossentropy' expects integer class labels, received dtype {y.dtype}."
            )
        if y.size:
            lo, hi = y.min().item(), y.max().item()  # Python scalars: they print as 3, not np.int64(3)
            if lo < 0 or hi >= units:
                bad = int(np.flatnonzero((y < 0) | (y >= units))[0])
                raise ValueError(
                    f"Loss 'sparse_categorical_crossentropy' expects labels in [0, {units - 1}] for a model "
                    f"with {units} output units, received y[{bad}] = {y[bad].item()!r} (labels range over "
                    f"[{lo!r}, {hi!r}])."
                )
        return y.astype(np.int64)

    def per_sample(self, xp, y, out):
        if self.from_logits:
            return self.per_sample_from_logits(xp, y, out)
        q, _, _ = _normalised_clipped(xp, out)
        return -xp.log(q[xp.arange(len(y)), y])

    def gradient(self, xp, y, out, scale):
        if self.from_logits:
            return self.gradient_from_logits(xp, y, out, _apply(Softmax(), xp, out), scale, xp.empty_like(out))
        q, total, inside = _normalised_clipped(xp, out)
        rows = xp.arange(len(y))
        dq = xp.zeros_like(out)
        dq[rows, y] = -scale / q[rows, y]
        dq *= inside
        return _through_normalisation(xp, dq, out / total, total)

    def per_sample_from_logits(self, xp, y, z):
        return _neg_log_softmax(xp, z)[xp.arange(len(y)), y]

    def gradient_from_logits(self, xp, y, z, probs, scale, out):
        xp.multiply(probs, scale, out=out)
        out[xp.arange(len(y)), y] -= scale
        return out


class BinaryCrossentropy(Loss):
    """mean_i -[y_i log p_i + (1 - y_i) log(1 - p_i)] over the last axis; y in [0, 1]."""

    name = "binary_crossentropy"
    fused_activation = "sigmoid"

    def prepare_targets(self, y, units):
        y = _dense_targets(y, units, self.name)
        if y.size:
            lo, hi = float(y.min()), float(y.max())
            if lo < 0.0 or hi > 1.0:
                raise ValueError(
                    f"Loss 'binary_crossentropy' expects targets in [0, 1], received values in [{lo:g}, {hi:g}]."
                )
        return y

    def per_sample(self, xp, y, out):
        if self.from_logits:
            return self.per_sample_from_logits(xp, y, out)
        p = xp.clip(out, EPSILON, 1.0 - EPSILON)
        return -(y * xp.log(p) + (1.0 - y) * xp.log(1.0 - p)).mean(axis=-1)

    def gradient(self, xp, y, out, scale):
        if self.from_logits:
            return self.gradient_from_logits(xp, y, out, _apply(Sigmoid(), xp, out), scale, xp.empty_like(out))
        inside = (out > EPSILON) & (out < 1.0 - EPSILON)
        p = xp.clip(out, EPSILON, 1.0 - EPSILON)
        return (scale / out.shape[-1]) * ((1.0 - y) / (1.0 - p) - y / p) * inside

    def per_sample_from_logits(self, xp, y, z):
        # log(1 + exp(-|z|)) + max(z, 0) - z y: softplus written so it never overflows.
        return (xp.maximum(z, 0) - z * y + xp.log1p(xp.exp(-xp.abs(z)))).mean(axis=-1)

    def gradient_from_logits(self, xp, y, z, probs, scale, out):
        xp.subtract(probs, y, out=out)
        out *= scale / z.shape[-1]
        return out


class MeanSquaredError(Loss):
    """mean_i (out_i - y_i)^2 over the last axis."""

    name = "mean_squared_error"

    def __init__(self):
        super().__init__(False)

    def per_sample(self, xp, y, out):
        d = out - y
        return (d * d).mean(axis=-1)

    def gradient(self, xp, y, out, scale):
        return (2.0 * scale / out.shape[-1]) * (out - y)


class MeanAbsoluteError(Loss):
    """mean_i |out_i - y_i| over the last axis (subgradient 0 where out = y)."""

    name = "mean_absolute_error"

    def __init__(self):
        super().__init__(False)

    def per_sample(self, xp, y, out):
        return xp.abs(out - y).mean(axis=-1)

    def gradient(self, xp, y, out, scale):
        return (scale / out.shape[-1]) * xp.sign(out - y)


def _apply(activation, xp, z):
    """activation(z) in a new array (the from_logits paths, which have no layer buffer)."""
    out = xp.empty_like(z)
    activation.forward(xp, z, out)
    return out


LOSSES: dict[str, type[Loss]] = {
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy,
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError,
    "mae": MeanAbsoluteError,
}
_CANONICAL = tuple(LOSSES)
# Keras' class names work too ("CategoricalCrossentropy", {"class_name": "MeanSquaredError"}).
LOSSES.update({cls.__name__.lower(): cls for cls in set(LOSSES.values())})


def get(identifier: Any) -> Loss:
    """Return a loss from a name, a config dict or an instance."""
    return resolve(identifier, LOSSES, "loss", Loss, known=_CANONICAL)


def serialize(loss: Loss) -> str | dict[str, Any]:
    config = loss.get_config()
    return {"class_name": loss.name, "config": config} if config else loss.name
