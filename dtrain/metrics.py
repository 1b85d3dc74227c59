"""Metrics with Keras names, as states that add up exactly across batches and ranks.

A metric's state is a few sums (``update`` gives a batch's, ``state_size`` of them); the model
adds them over an epoch, across the ranks with the step's other sums, and ``result`` turns the
total into the reported value. A mean (accuracy, mse) is one sum of per-sample values over the
sample count; precision, recall and F1 keep confusion counts, AUC keeps them at each of its
thresholds, R2 its sums of y, y^2 and squared errors: never an average of averages, so N
workers report what one process reports. ``"accuracy"`` is resolved from the loss, as Keras
does: categorical, sparse categorical or binary accuracy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import losses
from .losses import Loss


class Metric:
    """A mean of per-sample values by default: ``per_sample(xp, y, out)`` returns shape (n,).
    Others override ``state_size``, ``update`` (a batch's sums) and ``result`` (the value of
    the summed state over ``count`` samples). ``prepare(units)`` is told the output width once.
    ``name`` is the key in ``History`` (defaults to the metric's Keras name)."""

    default_name = "metric"
    state_size = 1

    def __init__(self, name: str | None = None):
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"Expected a non-empty string for a metric's name, received name={name!r}.")
        self.name = name or self.default_name

    def prepare(self, units: int) -> None:
        """The model's output width (metrics whose state is per class need it)."""

    def per_sample(self, xp, y, out):
        raise NotImplementedError

    def update(self, xp, y, out) -> list[float]:
        """This batch's contribution to the state (``state_size`` numbers)."""
        return [float(self.per_sample(xp, y, out).sum())]

    def result(self, state: np.ndarray, count: int) -> float:
        """The reported value of a summed state over ``count`` samples."""
        return float(state[0]) / max(count, 1)

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


def _ratio(a: float, b: float) -> float:
    """a / b, 0 where b is 0 (Keras' divide_no_nan)."""
    return float(a) / float(b) if b else 0.0


class TopKCategoricalAccuracy(Metric):
    """1 where the target class is among the k largest outputs (one-hot targets; default k=5).
    A class counts as in the top k when fewer than k outputs are larger than its own."""

    default_name = "top_k_categorical_accuracy"

    def __init__(self, k: int = 5, name: str | None = None):
        super().__init__(name)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"{type(self).__name__} expected a positive integer k, received k={k!r}.")
        self.k = k

    def _target(self, xp, y):
        return y.argmax(axis=-1)

    def per_sample(self, xp, y, out):
        target = out[xp.arange(len(out)), self._target(xp, y)]
        return ((out > target[:, None]).sum(axis=-1) < self.k).astype(out.dtype)

    def get_config(self):
        return {"name": self.name, "k": self.k}


class SparseTopKCategoricalAccuracy(TopKCategoricalAccuracy):
    """The same with integer class targets."""

    default_name = "sparse_top_k_categorical_accuracy"

    def _target(self, xp, y):
        return y.reshape(-1)


class RootMeanSquaredError(Metric):
    """sqrt of the mean squared error over the whole epoch (not a mean of per-batch roots)."""

    default_name = "root_mean_squared_error"

    def per_sample(self, xp, y, out):
        return losses.MeanSquaredError().per_sample(xp, y, out)

    def result(self, state, count):
        return float(np.sqrt(state[0] / max(count, 1)))


class MeanAbsolutePercentageError(Metric):
    default_name = "mean_absolute_percentage_error"

    def per_sample(self, xp, y, out):
        return losses.MeanAbsolutePercentageError().per_sample(xp, y, out)


class _Thresholded(Metric):
    """Binary decisions out > threshold against labels y != 0, over every output; with
    ``top_k``, only each row's k largest outputs can be positive (then the threshold defaults
    to none at all, as Keras' does); with ``class_id``, one output column only."""

    def __init__(self, thresholds: Any = None, top_k: Any = None, class_id: Any = None, name: str | None = None):
        super().__init__(name)
        where = type(self).__name__
        for arg, value in (("top_k", top_k), ("class_id", class_id)):
            low = 1 if arg == "top_k" else 0
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ValueError(f"{where} expected {arg} to be None or an integer >= {low}, received {arg}={value!r}.")
        self.top_k, self.class_id = top_k, class_id
        if isinstance(thresholds, (list, tuple)):
            if len(thresholds) != 1:
                raise ValueError(f"{where} takes one threshold here (one value per metric), received {thresholds!r}.")
            thresholds = thresholds[0]
        if thresholds is not None and (
            isinstance(thresholds, bool) or not isinstance(thresholds, (int, float)) or not 0 <= thresholds <= 1
        ):
            raise ValueError(f"{where} expected a threshold in [0, 1], received thresholds={thresholds!r}.")
        self.thresholds = thresholds
        self.threshold = float(thresholds) if thresholds is not None else (0.5 if top_k is None else -np.inf)

    def prepare(self, units: int) -> None:
        if self.class_id is not None and self.class_id >= units:
            raise ValueError(
                f"{type(self).__name__}(class_id={self.class_id}) is out of range for a model with {units} outputs."
            )

    def _counts(self, xp, y, out) -> tuple[float, float, float]:
        predicted, actual = out > self.threshold, y != 0
        if self.top_k is not None:  # each row's k largest (ties at the k-th: all of them; Keras: the first)
            k = min(self.top_k, out.shape[-1])
            kth = xp.sort(out, axis=-1)[:, -k]
            predicted &= out >= kth[:, None]
        if self.class_id is not None:
            predicted, actual = predicted[:, self.class_id], actual[:, self.class_id]
        tp = float((predicted & actual).sum())
        return tp, float((predicted & ~actual).sum()), float((~predicted & actual).sum())

    # Precision and Recall: TP / (TP + the count at _against), from those two counts summed.
    state_size = 2
    _against = 1

    def update(self, xp, y, out):
        counts = self._counts(xp, y, out)
        return [counts[0], counts[self._against]]

    def result(self, state, count):
        return _ratio(state[0], state[0] + state[1])

    def get_config(self):
        return {"name": self.name, "thresholds": self.thresholds, "top_k": self.top_k, "class_id": self.class_id}


class Precision(_Thresholded):
    """TP / (TP + FP) over the epoch (Keras' Precision, threshold 0.5)."""

    default_name = "precision"
    _against = 1  # the false positives


class Recall(_Thresholded):
    """TP / (TP + FN) over the epoch (Keras' Recall, threshold 0.5)."""

    default_name = "recall"
    _against = 2  # the false negatives


class F1Score(Metric):
    """Keras' F1Score over classes: per class 2 P R / (P + R), then averaged
    (``average``: "macro", "micro" or "weighted"; a per-class array, Keras' default None, is not
    one number for History, so it is refused). Predictions: out > ``threshold``, or, without
    one, the largest output of each row."""

    default_name = "f1_score"

    def __init__(self, average: Any = None, threshold: Any = None, name: str | None = None):
        super().__init__(name)
        if average not in ("macro", "micro", "weighted"):
            raise ValueError(
                f"F1Score(average={average!r}): History keeps one number per metric; pass average='macro', "
                "'micro' or 'weighted'."
            )
        if threshold is not None and (
            isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1
        ):
            raise ValueError(f"F1Score expected a threshold in (0, 1], received threshold={threshold!r}.")
        self.average, self.threshold = average, threshold
        self.units = 1

    def prepare(self, units: int) -> None:
        self.units = units
        self.state_size = 3 * units  # TP, FP, FN per class

    def update(self, xp, y, out):
        if self.threshold is None:
            predicted = out == out.max(axis=-1, keepdims=True)
        else:
            predicted = out > self.threshold
        actual = y != 0
        counts = [
            (predicted & actual).sum(axis=0),
            (predicted & ~actual).sum(axis=0),
            (~predicted & actual).sum(axis=0),
        ]
        return [float(v) for c in counts for v in (c.get() if hasattr(c, "get") else np.asarray(c))]

    def result(self, state, count):
        tp, fp, fn = state.reshape(3, self.units)
        support = tp + fn
        if self.average == "micro":
            tp, fp, fn = tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True)
        eps = losses.EPSILON  # Keras' formula, epsilons included
        precision, recall = tp / (tp + fp + eps), tp / (tp + fn + eps)
        f1 = 2.0 * precision * recall / (precision + recall + eps)
        if self.average == "weighted":
            return float((f1 * support / (support.sum() + eps)).sum())
        return float(f1.mean())

    def get_config(self):
        return {"name": self.name, "average": self.average, "threshold": self.threshold}


class AUC(Metric):
    """Keras' AUC: confusion counts at ``num_thresholds`` thresholds evenly in [0, 1] (and just
    outside it), summed over the epoch, then the ROC or PR curve's area (``summation_method``
    "interpolation": trapezoids for ROC, Davis & Goadrich's interpolation for PR; or
    "minoring"/"majoring"). Every output is one binary decision, or with ``multi_label`` each
    output column has its own curve and the areas are averaged."""

    default_name = "auc"

    def __init__(self, num_thresholds: int = 200, curve: str = "ROC", summation_method: str = "interpolation",
                 name: str | None = None, multi_label: bool = False):  # fmt: skip
        super().__init__(name)
        if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, int) or num_thresholds <= 1:
            raise ValueError(f"AUC expected num_thresholds > 1, received num_thresholds={num_thresholds!r}.")
        if str(curve).upper() not in ("ROC", "PR"):
            raise ValueError(f"AUC expected curve 'ROC' or 'PR', received curve={curve!r}.")
        if summation_method not in ("interpolation", "minoring", "majoring"):
            raise ValueError(
                f"AUC expected summation_method 'interpolation', 'minoring' or 'majoring', received {summation_method!r}."
            )
        if not isinstance(multi_label, bool):
            raise ValueError(f"AUC expected a bool for multi_label, received multi_label={multi_label!r}.")
        self.multi_label, self.labels = multi_label, 1
        self.num_thresholds, self.curve, self.summation_method = num_thresholds, str(curve).upper(), summation_method
        inner = [(i + 1) / (num_thresholds - 1) for i in range(num_thresholds - 2)]
        self.thresholds = np.array([0.0 - losses.EPSILON, *inner, 1.0 + losses.EPSILON])
        self.state_size = 4 * num_thresholds  # TP, FP, TN, FN at each threshold (per label: multi_label)

    def prepare(self, units: int) -> None:
        if self.multi_label:
            self.labels = units
            self.state_size = 4 * self.num_thresholds * units

    def update(self, xp, y, out):
        thresholds = xp.asarray(self.thresholds, dtype=out.dtype)
        actual = y != 0
        columns = (
            [(out[:, j], actual[:, j]) for j in range(out.shape[1])]
            if self.multi_label
            else [(out.reshape(-1), actual.reshape(-1))]
        )
        counts = []
        for scores, positive in columns:
            # Count per threshold from the sorted scores: O(n log n), not O(n x thresholds).
            pos_scores, neg_scores = xp.sort(scores[positive]), xp.sort(scores[~positive])
            tp = pos_scores.size - xp.searchsorted(pos_scores, thresholds, side="right")
            fp = neg_scores.size - xp.searchsorted(neg_scores, thresholds, side="right")
            counts.append(xp.stack([tp, fp, neg_scores.size - fp, pos_scores.size - tp]))  # (4, thresholds)
        stacked = xp.stack(counts, axis=-1).astype(np.float64)  # (4, thresholds, labels)
        return (stacked.get() if hasattr(stacked, "get") else stacked).reshape(-1).tolist()

    def result(self, state, count):
        per_label = state.reshape(4, self.num_thresholds, self.labels if self.multi_label else 1)
        return float(np.mean([self._area(*per_label[:, :, j]) for j in range(per_label.shape[2])]))

    def _area(self, tp, fp, tn, fn) -> float:
        n = self.num_thresholds
        if self.curve == "PR" and self.summation_method == "interpolation":
            dtp = tp[: n - 1] - tp[1:]
            p = tp + fp
            dp = p[: n - 1] - p[1:]
            slope = _divide(dtp, np.maximum(dp, 0))
            intercept = tp[1:] - slope * p[1:]
            both = (p[: n - 1] > 0) & (p[1:] > 0)
            ratio = np.where(both, _divide(p[: n - 1], np.maximum(p[1:], 0)), 1.0)
            increments = _divide(slope * (dtp + intercept * np.log(ratio)), np.maximum(tp[1:] + fn[1:], 0))
            return float(increments.sum())
        recall = _divide(tp, tp + fn)
        if self.curve == "ROC":
            x, y = _divide(fp, fp + tn), recall
        else:
            x, y = recall, _divide(tp, tp + fp)
        if self.summation_method == "interpolation":
            heights = (y[: n - 1] + y[1:]) / 2.0
        elif self.summation_method == "minoring":
            heights = np.minimum(y[: n - 1], y[1:])
        else:
            heights = np.maximum(y[: n - 1], y[1:])
        return float(((x[: n - 1] - x[1:]) * heights).sum())

    def get_config(self):
        return {"name": self.name, "num_thresholds": self.num_thresholds, "curve": self.curve,
                "summation_method": self.summation_method, "multi_label": self.multi_label}  # fmt: skip


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b != 0, a / np.where(b != 0, b, 1.0), 0.0)


class R2Score(Metric):
    """Keras' R2Score: per output, 1 - SS_res / SS_tot from the epoch's sums of y, y^2 and
    squared errors, averaged over the outputs ("uniform_average") or weighted by their variance
    ("variance_weighted_average")."""

    default_name = "r2_score"

    def __init__(self, class_aggregation: str = "uniform_average", num_regressors: int = 0, name: str | None = None):
        super().__init__(name)
        if class_aggregation not in ("uniform_average", "variance_weighted_average"):
            raise ValueError(
                f"R2Score(class_aggregation={class_aggregation!r}): pass 'uniform_average' or "
                "'variance_weighted_average' (one number per metric in History)."
            )
        if num_regressors != 0:
            raise ValueError("R2Score(num_regressors=) (the adjusted R2) is not supported yet: leave it 0.")
        self.class_aggregation = class_aggregation
        self.units = 1

    def prepare(self, units: int) -> None:
        self.units = units
        self.state_size = 3 * units  # sum y, sum y^2, sum (y - out)^2 per output

    def update(self, xp, y, out):
        y = y.reshape(len(out), -1)
        parts = [y.sum(axis=0), (y * y).sum(axis=0), ((y - out) ** 2).sum(axis=0)]
        return [float(v) for part in parts for v in (part.get() if hasattr(part, "get") else np.asarray(part))]

    def result(self, state, count):
        total_y, total_y2, residual = state.reshape(3, self.units)
        mean = total_y / max(count, 1)
        total = total_y2 - total_y * mean
        with np.errstate(divide="ignore", invalid="ignore"):
            raw = 1.0 - residual / total
        raw = np.where(np.isinf(raw), 0.0, raw)
        if self.class_aggregation == "uniform_average":
            return float(raw.mean())
        return float((total * raw).sum() / total.sum())

    def get_config(self):
        return {"name": self.name, "class_aggregation": self.class_aggregation}


METRICS: dict[str, type[Metric]] = {
    "categorical_accuracy": CategoricalAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "binary_accuracy": BinaryAccuracy,
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError,
    "mae": MeanAbsoluteError,
    "top_k_categorical_accuracy": TopKCategoricalAccuracy,
    "sparse_top_k_categorical_accuracy": SparseTopKCategoricalAccuracy,
    "root_mean_squared_error": RootMeanSquaredError,
    "rmse": RootMeanSquaredError,
    "mean_absolute_percentage_error": MeanAbsolutePercentageError,
    "mape": MeanAbsolutePercentageError,
    "precision": Precision,
    "recall": Recall,
    "f1_score": F1Score,
    "auc": AUC,
    "r2_score": R2Score,
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
    wants_labels = isinstance(metric, (SparseCategoricalAccuracy, SparseTopKCategoricalAccuracy))
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
            metric = cls(name=identifier)
        key = identifier
    else:
        raise TypeError(
            f"Expected a metric name, config dict or Metric instance, received "
            f"{type(identifier).__name__} {identifier!r}. {_known()}"
        )
    _check_targets_match(metric, key, loss)
    metric.prepare(units)
    return metric


_CLASS_NAMES = {cls: name for name, cls in reversed(list(METRICS.items()))}  # long names win


def serialize(metric: Metric) -> dict[str, Any]:
    """A JSON-able form that :func:`get` turns back into an equal metric (with the same loss)."""
    name = _CLASS_NAMES.get(type(metric))
    if name is None:
        raise ValueError(f"Cannot serialise custom metric {metric!r}; use a built-in one.")
    return {"class_name": name, "config": metric.get_config()}
