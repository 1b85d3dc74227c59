"""Metrics with Keras names: per-sample values that the model sums over an epoch.

A metric returns one value per sample; the model keeps (sum, count) and reports sum / count,
which is what Keras' streaming metrics report, and which adds up exactly across ranks.
``"accuracy"`` is resolved from the loss, as Keras does: categorical, sparse categorical or
binary accuracy.
"""

from __future__ import annotations

from typing import Any

from . import losses
from .losses import Loss


class Metric:
    """``per_sample(xp, y, out)`` returns shape (n,); ``name`` is the key in ``History``
    (defaults to the metric's Keras name)."""

    default_name = "metric"

    def __init__(self, name: str | None = None):
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"Expected a non-empty string for a metric's name, received name={name!r}.")
        self.name = name or self.default_name

    def per_sample(self, xp, y, out):
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"


class CategoricalAccuracy(Metric):
    """1 where argmax(out) == argmax(y) (one-hot targets)."""

    default_name = "categorical_accuracy"

    def per_sample(self, xp, y, out):
        return (out.argmax(axis=-1) == y.argmax(axis=-1)).astype(out.dtype)


class SparseCategoricalAccuracy(Metric):
    """1 where argmax(out) == y (integer class targets)."""

    default_name = "sparse_categorical_accuracy"

    def per_sample(self, xp, y, out):
        return (out.argmax(axis=-1) == y.reshape(-1)).astype(out.dtype)


class BinaryAccuracy(Metric):
    """mean over outputs of [(out > threshold) == (y > 0.5)] (Keras compares with y itself,
    the same for 0/1 targets)."""

    default_name = "binary_accuracy"

    def __init__(self, name: str | None = None, threshold: float = 0.5):
        super().__init__(name)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ValueError(f"BinaryAccuracy expected a number for threshold, received threshold={threshold!r}.")
        self.threshold = float(threshold)

    def get_config(self):
        return {"name": self.name, "threshold": self.threshold}

    def per_sample(self, xp, y, out):
        return ((out > self.threshold) == (y > 0.5)).astype(out.dtype).mean(axis=-1)


class MeanSquaredError(Metric):
    """The mean_squared_error loss's per-sample values, reported as a metric."""

    default_name = "mean_squared_error"

    def per_sample(self, xp, y, out):
        return losses.MeanSquaredError().per_sample(xp, y, out)


class MeanAbsoluteError(Metric):
    """The mean_absolute_error loss's per-sample values, reported as a metric."""

    default_name = "mean_absolute_error"

    def per_sample(self, xp, y, out):
        return losses.MeanAbsoluteError().per_sample(xp, y, out)


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
# Keras' class names work too ("SparseCategoricalAccuracy"), matched case-insensitively.
_BY_CLASS_NAME = {cls.__name__.lower(): cls for cls in METRICS.values()}


def _lookup(key: str) -> type[Metric] | None:
    return METRICS.get(key) or _BY_CLASS_NAME.get(key)


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


def _known() -> str:
    return f"Known metrics: {', '.join(sorted([*METRICS, *ACCURACY_ALIASES]))}."


def _from_config(identifier: dict, loss: Loss, units: int) -> Metric:
    """A metric from {"class_name": ..., "config": {...}} (the form ``serialize`` writes)."""
    config = dict(identifier)
    name = config.pop("class_name", None)
    kwargs = config.pop("config", None) or {}
    for key in ("module", "registered_name"):  # Keras 3's serialised form: irrelevant here
        config.pop(key, None)
    if not isinstance(name, str) or config or not isinstance(kwargs, dict):
        raise ValueError(f"A metric config dict is {{'class_name': ..., 'config': {{...}}}}, received {identifier!r}.")
    key = name.lower()
    if key in ACCURACY_ALIASES and set(kwargs) <= {"name"}:
        return _accuracy_for(loss, units, kwargs.get("name", name))
    cls = _lookup(key)
    if cls is None:
        raise ValueError(f"Unknown metric {name!r}. {_known()}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"Bad arguments for metric {name!r}: {exc}") from None


def get(identifier: Any, loss: Loss, units: int) -> Metric:
    """Return a metric from a name (the name is kept as its ``History`` key), a config dict or
    an instance, after checking that it can read the targets of ``loss``."""
    if isinstance(identifier, Metric):
        metric, key = identifier, identifier.name
    elif isinstance(identifier, dict):
        metric = _from_config(identifier, loss, units)
        key = metric.name
    elif isinstance(identifier, str):
        key = identifier.lower()
        if key in ACCURACY_ALIASES:
            return _accuracy_for(loss, units, identifier)
        cls = _lookup(key)
        if cls is None:
            raise ValueError(f"Unknown metric {identifier!r}. {_known()}")
        if cls is BinaryAccuracy and loss.from_logits:
            metric = BinaryAccuracy(identifier, threshold=0.0)  # outputs are logits
        else:
            metric = cls(identifier)
        key = identifier
    else:
        raise TypeError(
            f"Expected a metric name, config dict or Metric instance, received "
            f"{type(identifier).__name__} {identifier!r}. {_known()}"
        )
    _check_targets_match(metric, key, loss)
    return metric


_CLASS_NAMES = {cls: name for name, cls in reversed(list(METRICS.items()))}  # long names win


def serialize(metric: Metric) -> dict[str, Any]:
    """A JSON-able form that :func:`get` turns back into an equal metric (with the same loss)."""
    name = _CLASS_NAMES.get(type(metric))
    if name is None:
        raise ValueError(f"Cannot serialise custom metric {metric!r}; use a built-in one.")
    return {"class_name": name, "config": metric.get_config()}
