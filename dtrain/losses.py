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


def _smoothing(value: Any, loss: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"Loss {loss!r} expected label_smoothing in [0, 1], received label_smoothing={value!r}.")
    return float(value)


class _Smoothed(Loss):
    """The cross-entropies' ``label_smoothing`` argument (each smooths its own way: ``_smooth``)."""

    def __init__(self, from_logits: bool = False, label_smoothing: float = 0.0):
        super().__init__(from_logits)
        self.label_smoothing = _smoothing(label_smoothing, self.name)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        if self.label_smoothing:
            config["label_smoothing"] = self.label_smoothing
        return config


class CategoricalCrossentropy(_Smoothed):
    """-sum_i y_i log p_i, with y one-hot (or soft labels that sum to 1) of shape (n, classes).
    ``label_smoothing`` s: the targets become y (1 - s) + s / classes, as Keras does."""

    name = "categorical_crossentropy"
    fused_activation: str | None = "softmax"

    def _smooth(self, y):
        s = self.label_smoothing
        return y if not s else y * (1.0 - s) + s / y.shape[-1]

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
        y = self._smooth(y)
        q, _, _ = _normalised_clipped(xp, out)
        return -(y * xp.log(q)).sum(axis=-1)

    def gradient(self, xp, y, out, scale):
        if self.from_logits:
            return self.gradient_from_logits(xp, y, out, _apply(Softmax(), xp, out), scale, xp.empty_like(out))
        y = self._smooth(y)
        q, total, inside = _normalised_clipped(xp, out)
        dq = -scale * y / q * inside
        return _through_normalisation(xp, dq, out / total, total)

    def per_sample_from_logits(self, xp, y, z):
        return (self._smooth(y) * _neg_log_softmax(xp, z)).sum(axis=-1)

    def gradient_from_logits(self, xp, y, z, probs, scale, out):
        # d/dz [-sum y log softmax(z)] = softmax(z) * sum(y) - y. sum(y) is 1 for one-hot rows;
        # soft labels are only checked to sum to 1 within 1e-3, so use the exact form.
        y = self._smooth(y)
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


class BinaryCrossentropy(_Smoothed):
    """mean_i -[y_i log p_i + (1 - y_i) log(1 - p_i)] over the last axis; y in [0, 1]."""

    name = "binary_crossentropy"
    fused_activation: str | None = "sigmoid"

    def _smooth(self, y):
        s = self.label_smoothing
        return y if not s else y * (1.0 - s) + 0.5 * s

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
        y = self._smooth(y)
        p = xp.clip(out, EPSILON, 1.0 - EPSILON)
        return -(y * xp.log(p) + (1.0 - y) * xp.log(1.0 - p)).mean(axis=-1)

    def gradient(self, xp, y, out, scale):
        if self.from_logits:
            return self.gradient_from_logits(xp, y, out, _apply(Sigmoid(), xp, out), scale, xp.empty_like(out))
        y = self._smooth(y)
        inside = (out > EPSILON) & (out < 1.0 - EPSILON)
        p = xp.clip(out, EPSILON, 1.0 - EPSILON)
        return (scale / out.shape[-1]) * ((1.0 - y) / (1.0 - p) - y / p) * inside

    def per_sample_from_logits(self, xp, y, z):
        # log(1 + exp(-|z|)) + max(z, 0) - z y: softplus written so it never overflows.
        y = self._smooth(y)
        return (xp.maximum(z, 0) - z * y + xp.log1p(xp.exp(-xp.abs(z)))).mean(axis=-1)

    def gradient_from_logits(self, xp, y, z, probs, scale, out):
        xp.subtract(probs, self._smooth(y), out=out)
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


class _Regression(Loss):
    """Losses of (out, y) without a logits form: ``per_sample`` and ``gradient`` from the
    elementwise ``_terms`` (value, d value / d out) averaged over the last axis."""

    def __init__(self):
        super().__init__(False)

    def _terms(self, xp, y, out):
        raise NotImplementedError

    def per_sample(self, xp, y, out):
        return self._terms(xp, y, out)[0].mean(axis=-1)

    def gradient(self, xp, y, out, scale):
        return (scale / out.shape[-1]) * self._terms(xp, y, out)[1]


class Huber(_Regression):
    """0.5 d^2 where |d| <= delta, delta |d| - 0.5 delta^2 beyond (d = out - y), mean over the last axis."""

    name = "huber"

    def __init__(self, delta: float = 1.0):
        super().__init__()
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not delta > 0:
            raise ValueError(f"Loss 'huber' expected delta > 0, received delta={delta!r}.")
        self.delta = float(delta)

    def _terms(self, xp, y, out):
        d = out - y
        near = xp.abs(d) <= self.delta
        value = xp.where(near, 0.5 * d * d, self.delta * xp.abs(d) - 0.5 * self.delta**2)
        return value, xp.where(near, d, self.delta * xp.sign(d))

    def get_config(self):
        return {} if self.delta == 1.0 else {"delta": self.delta}


class LogCosh(_Regression):
    """log(cosh(d)), as d + softplus(-2 d) - log 2 (no overflow), mean over the last axis."""

    name = "log_cosh"

    def _terms(self, xp, y, out):
        d = out - y
        softplus = xp.maximum(-2.0 * d, 0) + xp.log1p(xp.exp(-xp.abs(2.0 * d)))
        return d + softplus - np.log(2.0), xp.tanh(d)


class MeanAbsolutePercentageError(_Regression):
    """100 |y - out| / max(|y|, 1e-7), mean over the last axis."""

    name = "mean_absolute_percentage_error"

    def _terms(self, xp, y, out):
        denominator = xp.maximum(xp.abs(y), EPSILON)
        return 100.0 * xp.abs(y - out) / denominator, 100.0 * xp.sign(out - y) / denominator


class MeanSquaredLogarithmicError(_Regression):
    """(log(max(out, 1e-7) + 1) - log(max(y, 1e-7) + 1))^2, mean over the last axis."""

    name = "mean_squared_logarithmic_error"

    def _terms(self, xp, y, out):
        shifted = xp.maximum(out, EPSILON) + 1.0
        d = xp.log(shifted) - xp.log(xp.maximum(y, EPSILON) + 1.0)
        return d * d, 2.0 * d / shifted * (out > EPSILON)


class Poisson(_Regression):
    """out - y log(out + 1e-7), mean over the last axis."""

    name = "poisson"

    def _terms(self, xp, y, out):
        return out - y * xp.log(out + EPSILON), 1.0 - y / (out + EPSILON)


def _hinge_labels(xp, y):
    """Keras' hinge losses take labels in {-1, 1}; 0/1 labels become -1/1. (Keras decides per
    batch whether all labels are 0 or 1; here each 0 becomes -1, the same for binary labels and
    the same on every rank whatever its rows.)"""
    return xp.where(y == 0, -1.0, y)


class Hinge(_Regression):
    """max(1 - y out, 0), mean over the last axis; y in {-1, 1} (or 0/1)."""

    name = "hinge"

    def _terms(self, xp, y, out):
        y = _hinge_labels(xp, y)
        margin = 1.0 - y * out
        return xp.maximum(margin, 0.0), -y * (margin > 0)


class SquaredHinge(_Regression):
    """max(1 - y out, 0)^2, mean over the last axis."""

    name = "squared_hinge"

    def _terms(self, xp, y, out):
        y = _hinge_labels(xp, y)
        margin = xp.maximum(1.0 - y * out, 0.0)
        return margin * margin, -2.0 * y * margin


class CategoricalHinge(Loss):
    """max(max_i (1 - y_i) out_i - sum_i y_i out_i + 1, 0) per sample."""

    name = "categorical_hinge"

    def __init__(self):
        super().__init__(False)

    def per_sample(self, xp, y, out):
        pos = (y * out).sum(axis=-1)
        neg = ((1.0 - y) * out).max(axis=-1)
        return xp.maximum(neg - pos + 1.0, 0.0)

    def gradient(self, xp, y, out, scale):
        masked = (1.0 - y) * out
        active = (masked.max(axis=-1) - (y * out).sum(axis=-1) + 1.0) > 0
        grad = -y  # (a new array)
        rows, top = xp.arange(len(out)), masked.argmax(axis=-1)
        grad[rows, top] += 1.0 - y[rows, top]  # d neg / d out: at the largest masked output
        return scale * grad * active[:, None]


class CosineSimilarity(Loss):
    """-sum_i y_i out_i / (|y| |out|) (each normalised as x / sqrt(max(|x|^2, 1e-12)), as Keras)."""

    name = "cosine_similarity"

    def __init__(self, axis: int = -1):
        super().__init__(False)
        if axis not in (-1, 1):
            raise ValueError(f"Loss 'cosine_similarity' expected axis=-1, received axis={axis!r}.")
        self.axis = -1

    @staticmethod
    def _norm(xp, x):
        return xp.sqrt(xp.maximum((x * x).sum(axis=-1, keepdims=True), 1e-12))

    def per_sample(self, xp, y, out):
        return -((y / self._norm(xp, y)) * (out / self._norm(xp, out))).sum(axis=-1)

    def gradient(self, xp, y, out, scale):
        y_hat = y / self._norm(xp, y)
        norm = self._norm(xp, out)
        out_hat = out / norm
        cosine = (y_hat * out_hat).sum(axis=-1, keepdims=True)
        projected = (out * out).sum(axis=-1, keepdims=True) >= 1e-12  # (below: the norm is the constant floor)
        return -scale * (y_hat - cosine * out_hat * projected) / norm


class KLDivergence(Loss):
    """sum_i y_i log(y_i / out_i), both clipped into [1e-7, 1] (Keras' formula)."""

    name = "kl_divergence"

    def __init__(self):
        super().__init__(False)

    def per_sample(self, xp, y, out):
        t, p = xp.clip(y, EPSILON, 1.0), xp.clip(out, EPSILON, 1.0)
        return (t * xp.log(t / p)).sum(axis=-1)

    def gradient(self, xp, y, out, scale):
        t, p = xp.clip(y, EPSILON, 1.0), xp.clip(out, EPSILON, 1.0)
        return -scale * t / p * ((out > EPSILON) & (out < 1.0))


def _through_sigmoid(xp, d_out, probs):
    return d_out * probs * (1.0 - probs)


def _through_softmax(xp, d_out, probs):
    return probs * (d_out - (d_out * probs).sum(axis=-1, keepdims=True))


class BinaryFocalCrossentropy(BinaryCrossentropy):
    """Keras' binary focal cross-entropy: (1 - p_t)^gamma x the binary cross-entropy, with
    p_t = y p + (1 - y)(1 - p); with ``apply_class_balancing`` weighted by y alpha + (1 - y)(1 - alpha)."""

    name = "binary_focal_crossentropy"
    fused_activation = None

    def __init__(self, apply_class_balancing: bool = False, alpha: float = 0.25, gamma: float = 2.0,
                 from_logits: bool = False, label_smoothing: float = 0.0):  # fmt: skip
        super().__init__(from_logits, label_smoothing)
        self.apply_class_balancing = bool(apply_class_balancing)
        self.alpha, self.gamma = _focal_arguments(self.name, alpha, gamma)

    def _parts(self, xp, y, out):
        probs = _apply(Sigmoid(), xp, out) if self.from_logits else out
        y = self._smooth(y)
        c = xp.clip(probs, EPSILON, 1.0 - EPSILON)
        bce = -(y * xp.log(c) + (1.0 - y) * xp.log(1.0 - c))
        p_t = y * probs + (1.0 - y) * (1.0 - probs)
        weight = y * self.alpha + (1.0 - y) * (1.0 - self.alpha) if self.apply_class_balancing else 1.0
        return probs, y, c, bce, p_t, weight

    def per_sample(self, xp, y, out):
        _, _, _, bce, p_t, weight = self._parts(xp, y, out)
        return (weight * xp.power(1.0 - p_t, self.gamma) * bce).mean(axis=-1)

    def gradient(self, xp, y, out, scale):
        probs, y, c, bce, p_t, weight = self._parts(xp, y, out)
        inside = (probs > EPSILON) & (probs < 1.0 - EPSILON)
        rest = 1.0 - p_t
        d_factor = -self.gamma * _power(xp, rest, self.gamma - 1.0) * (2.0 * y - 1.0)
        d_bce = inside * ((1.0 - y) / (1.0 - c) - y / c)
        d_probs = (scale / out.shape[-1]) * weight * (d_factor * bce + xp.power(rest, self.gamma) * d_bce)
        return _through_sigmoid(xp, d_probs, probs) if self.from_logits else d_probs

    def per_sample_from_logits(self, xp, y, z):
        return self.per_sample(xp, y, z)

    def get_config(self):
        return {**super().get_config(), "apply_class_balancing": self.apply_class_balancing,
                "alpha": self.alpha, "gamma": self.gamma}  # fmt: skip


class CategoricalFocalCrossentropy(CategoricalCrossentropy):
    """Keras' categorical focal cross-entropy: sum_i alpha (1 - q_i)^gamma (-y_i log q_i), q the
    renormalised, clipped probabilities."""

    name = "categorical_focal_crossentropy"
    fused_activation = None

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, from_logits: bool = False,
                 label_smoothing: float = 0.0):  # fmt: skip
        super().__init__(from_logits, label_smoothing)
        self.alpha, self.gamma = _focal_arguments(self.name, alpha, gamma)

    def per_sample(self, xp, y, out):
        probs = _apply(Softmax(), xp, out) if self.from_logits else out
        q, _, _ = _normalised_clipped(xp, probs)
        return (self.alpha * xp.power(1.0 - q, self.gamma) * -(self._smooth(y) * xp.log(q))).sum(axis=-1)

    def gradient(self, xp, y, out, scale):
        probs = _apply(Softmax(), xp, out) if self.from_logits else out
        y = self._smooth(y)
        q, total, inside = _normalised_clipped(xp, probs)
        dq = (
            scale
            * self.alpha
            * y
            * (self.gamma * _power(xp, 1.0 - q, self.gamma - 1.0) * xp.log(q) - xp.power(1.0 - q, self.gamma) / q)
        )
        d_probs = _through_normalisation(xp, dq * inside, probs / total, total)
        return _through_softmax(xp, d_probs, probs) if self.from_logits else d_probs

    def per_sample_from_logits(self, xp, y, z):
        return self.per_sample(xp, y, z)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "gamma": self.gamma}


def _focal_arguments(name: str, alpha: Any, gamma: Any) -> tuple[float, float]:
    for arg, value in (("alpha", alpha), ("gamma", gamma)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"Loss {name!r} expected {arg} >= 0, received {arg}={value!r}.")
    return float(alpha), float(gamma)


def _power(xp, base, exponent: float):
    """base ** exponent, 0 where base is 0 and the exponent negative (their product with 0 there)."""
    if exponent >= 0:
        return xp.power(base, exponent)
    return xp.where(base > 0, xp.power(xp.maximum(base, EPSILON), exponent), 0.0)


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
    "huber": Huber,
    "log_cosh": LogCosh,
    "mean_absolute_percentage_error": MeanAbsolutePercentageError,
    "mape": MeanAbsolutePercentageError,
    "mean_squared_logarithmic_error": MeanSquaredLogarithmicError,
    "msle": MeanSquaredLogarithmicError,
    "poisson": Poisson,
    "kl_divergence": KLDivergence,
    "kld": KLDivergence,
    "hinge": Hinge,
    "squared_hinge": SquaredHinge,
    "categorical_hinge": CategoricalHinge,
    "cosine_similarity": CosineSimilarity,
    "binary_focal_crossentropy": BinaryFocalCrossentropy,
    "categorical_focal_crossentropy": CategoricalFocalCrossentropy,
}
_CANONICAL = tuple(LOSSES)
# Keras' class names work too ("CategoricalCrossentropy", {"class_name": "MeanSquaredError"}).
LOSSES.update({cls.__name__.lower(): cls for cls in set(LOSSES.values())})


def get(identifier: Any) -> Loss:
    """Return a loss from a name, a config dict or an instance."""
    if callable(identifier) and not isinstance(identifier, (Loss, type)):
        raise ValueError(
            f"Loss {identifier!r} is a Python function: dtrain has no automatic differentiation, so a loss must be "
            f"one it knows the gradient of. Known losses: {', '.join(sorted(_CANONICAL))}."
        )
    return resolve(identifier, LOSSES, "loss", Loss, known=_CANONICAL)


def serialize(loss: Loss) -> str | dict[str, Any]:
    config = loss.get_config()
    return {"class_name": loss.name, "config": config} if config else loss.name
