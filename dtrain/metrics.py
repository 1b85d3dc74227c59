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
    """mean over outputs of [(out > threshold) == (y > 0.5)] (Keras compares with y itself,
    the same for 0/1 targets)."""

    def __init__(self, name: str, threshold: float = 0.5):
        super().__init__(name)
        self.threshold = float(threshold)

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


def _accuracy_for(loss: Loss, units: int, name: str) -> Metric:
    """Keras' rule: the accuracy that matches the loss's targets (or the output width)."""
    if loss.name == "sparse_categorical_crossentropy":
        return SparseCategoricalAccuracy(name)
    if loss.name == "categorical_crossentropy":
        return CategoricalAccuracy(name)
    if loss.name == "binary_crossentropy" or units == 1:
        # With from_logits the outputs are logits: sigmoid(z) > 0.5 exactly when z > 0.
        return BinaryAccuracy(name, threshold=0.0 if loss.from_logits else 0.5)
    return CategoricalAccuracy(name)


def _check_targets_match(metric: Metric, key: str, loss: Loss) -> None:
    """Metrics read the targets in the loss's form: integer labels (sparse loss) or one value
    per output unit. Refuse a metric that cannot read that form, instead of broadcasting."""
    wants_labels = isinstance(metric, SparseCategoricalAccuracy)
    if wants_labels != loss.integer_targets:
        form = "integer class labels" if loss.integer_targets else "one value per output unit"
        needs = "integer class labels" if wants_labels else "targets with one value per output unit"
        raise ValueError(
            f"Metric {key!r} needs {needs}, but loss {loss.name!r} takes {form}. "
            "Use 'accuracy', which picks the accuracy that matches the loss."
        )


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
        return _accuracy_for(loss, units, identifier)
    if key not in METRICS:
        raise ValueError(
            f"Unknown metric {identifier!r}. Known metrics: {', '.join(sorted([*METRICS, *ACCURACY_ALIASES]))}."
        )
    cls = METRICS[key]
    if cls is BinaryAccuracy and loss.from_logits:
        metric = BinaryAccuracy(identifier, threshold=0.0)  # outputs are logits
    else:
        metric = cls(identifier)
    _check_targets_match(metric, identifier, loss)
    return metric
