"""Metrics with Keras names: per-sample values that the model sums over an epoch.

A metric returns one value per sample; the model keeps (sum, count) and reports sum / count,
which is what Keras' streaming metrics report, and which adds up exactly across ranks.
``"accuracy"`` is resolved from the loss, as Keras does: categorical, sparse categorical or
binary accuracy.
"""
from __future__ import annotations

from typing import Any

from .losses import Loss


class Metric:
    """``per_sample(xp, y, out)`` returns shape (n,); ``name`` is the key in ``History``."""

    def __init__(self, name: str):
        self.name = name

    def per_sample(self, xp, y, out):
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class CategoricalAccuracy(Metric):
    """1 where argmax(out) == argmax(y) (one-hot targets)."""

    def per_sample(self, xp, y, out):
        return (out.argmax(axis=-1) == y.argmax(axis=-1)).astype(out.dtype)


class SparseCategoricalAccuracy(Metric):
    """1 where argmax(out) == y (integer class targets)."""

    def per_sample(self, xp, y, out):
        return (out.argmax(axis=-1) == y.reshape(-1)).astype(out.dtype)


class BinaryAccuracy(Metric):
    """mean over outputs of [(out > threshold) == y]."""

    def __init__(self, name: str, threshold: float = 0.5):
        super().__init__(name)
        self.threshold = threshold

    def per_sample(self, xp, y, out):
        return ((out > self.threshold) == (y > 0.5)).astype(out.dtype).mean(axis=-1)


class MeanSquaredError(Metric):
    def per_sample(self, xp, y, out):
        d = out - y
        return (d * d).mean(axis=-1)


class MeanAbsoluteError(Metric):
    def per_sample(self, xp, y, out):
        return xp.abs(out - y).mean(axis=-1)


METRICS: dict[str, type[Metric]] = {
    "categorical_accuracy": CategoricalAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "binary_accuracy": BinaryAccuracy,
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError,
    "mae": MeanAbsoluteError,
}
ACCURACY_ALIASES = ("accuracy", "acc")


def _accuracy_for(loss: Loss, units: int) -> type[Metric]:
    """Keras' rule: the accuracy that matches the loss's targets (or the output width)."""
    if loss.name == "sparse_categorical_crossentropy":
        return SparseCategoricalAccuracy
    if loss.name == "categorical_crossentropy":
        return CategoricalAccuracy
    if loss.name == "binary_crossentropy" or units == 1:
        return BinaryAccuracy
    return CategoricalAccuracy


def get(identifier: Any, loss: Loss, units: int) -> Metric:
    """Return a metric from a name (the name is kept as its ``History`` key) or an instance."""
    if isinstance(identifier, Metric):
        return identifier
    if not isinstance(identifier, str):
        raise TypeError(
            f"Expected a metric name, received {type(identifier).__name__} {identifier!r}. "
            f"Known metrics: {', '.join(sorted([*METRICS, *ACCURACY_ALIASES]))}."
        )
    key = identifier.lower()
    if key in ACCURACY_ALIASES:
        return _accuracy_for(loss, units)(identifier)
    if key not in METRICS:
        raise ValueError(
            f"Unknown metric {identifier!r}. Known metrics: {', '.join(sorted([*METRICS, *ACCURACY_ALIASES]))}."
        )
    return METRICS[key](identifier)
