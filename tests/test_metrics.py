"""Metrics: how "accuracy" resolves from the loss (as Keras does), values on hand examples,
and errors for unknown or mismatched metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dtrain import Dense, Sequential, losses, metrics


def resolve(name, loss, units):
    return metrics.get(name, losses.get(loss), units)


@pytest.mark.parametrize("alias", ["accuracy", "acc", "Accuracy"])
@pytest.mark.parametrize(
    "loss, units, cls",
    [
        ("categorical_crossentropy", 3, metrics.CategoricalAccuracy),
        ("categorical_crossentropy", 1, metrics.CategoricalAccuracy),
        ("sparse_categorical_crossentropy", 3, metrics.SparseCategoricalAccuracy),
        ("binary_crossentropy", 1, metrics.BinaryAccuracy),
        ("binary_crossentropy", 4, metrics.BinaryAccuracy),  # multi-label
        # other losses: by the output width
        ("mse", 1, metrics.BinaryAccuracy),
        ("mae", 1, metrics.BinaryAccuracy),
        ("mse", 3, metrics.CategoricalAccuracy),
        ("mean_absolute_error", 5, metrics.CategoricalAccuracy),
    ],
)
def test_accuracy_resolves_from_the_loss(alias, loss, units, cls):
    metric = resolve(alias, loss, units)
    assert type(metric) is cls
    assert metric.name == alias  # the History key is the name the user gave


def test_binary_accuracy_threshold():
    assert resolve("accuracy", "binary_crossentropy", 1).threshold == 0.5
    # from_logits: the outputs are logits, and sigmoid(z) > 0.5 exactly when z > 0
    logits_loss = {"class_name": "binary_crossentropy", "config": {"from_logits": True}}
    assert resolve("accuracy", logits_loss, 1).threshold == 0.0
    assert resolve("binary_accuracy", logits_loss, 1).threshold == 0.0
    assert resolve("binary_accuracy", "mse", 1).threshold == 0.5


def test_categorical_accuracy_values():
    y = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 1]], dtype=float)
    out = np.array([[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.5, 0.2, 0.3]])
    np.testing.assert_array_equal(metrics.CategoricalAccuracy("acc").per_sample(np, y, out), [1, 0, 1, 0])
    # logits give the same answers (argmax is unchanged by softmax)
    np.testing.assert_array_equal(metrics.CategoricalAccuracy("acc").per_sample(np, y, np.log(out) + 7), [1, 0, 1, 0])


def test_sparse_categorical_accuracy_values():
    out = np.array([[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]])
    metric = metrics.SparseCategoricalAccuracy("acc")
    np.testing.assert_array_equal(metric.per_sample(np, np.array([1, 0, 2]), out), [1, 0, 1])
    np.testing.assert_array_equal(metric.per_sample(np, np.array([[1], [1], [1]]), out), [1, 1, 0])


def test_binary_accuracy_values():
    metric = metrics.BinaryAccuracy("acc")
    y = np.array([[1.0], [0.0], [1.0], [0.0]])
    out = np.array([[0.9], [0.6], [0.5], [0.1]])  # 0.5 is not above the threshold: class 0
    np.testing.assert_array_equal(metric.per_sample(np, y, out), [1, 0, 0, 1])
    # several outputs: the mean over them
    y = np.array([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    out = np.array([[0.7, 0.2, 0.4, 0.9], [0.1, 0.2, 0.3, 0.4]])
    np.testing.assert_allclose(metric.per_sample(np, y, out), [0.75, 1.0])
    logits = metrics.BinaryAccuracy("acc", threshold=0.0)
    np.testing.assert_array_equal(logits.per_sample(np, np.array([[1.0], [0.0]]), np.array([[0.3], [-0.2]])), [1, 1])


@pytest.mark.parametrize("name", ["mse", "mean_squared_error"])
def test_mse_metric(name):
    metric = resolve(name, "mse", 2)
    assert metric.name == name
    y = np.array([[0.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(metric.per_sample(np, y, np.array([[1.0, 1.0], [1.0, 0.0]])), [0.5, 0.5])
    np.testing.assert_allclose(metric.per_sample(np, y, np.array([[2.0, 3.0], [0.0, -1.0]])), [4.0, 0.5])


@pytest.mark.parametrize("name", ["mae", "mean_absolute_error"])
def test_mae_metric(name):
    metric = resolve(name, "binary_crossentropy", 2)
    y = np.array([[0.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(metric.per_sample(np, y, np.array([[0.5, 0.25], [1.0, 0.0]])), [0.625, 0.5])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_metric_values_keep_the_model_dtype(dtype):
    out = np.array([[0.2, 0.8]], dtype=dtype)
    y = np.array([[0.0, 1.0]], dtype=dtype)
    for metric in [metrics.CategoricalAccuracy("a"), metrics.BinaryAccuracy("b"), metrics.MeanSquaredError("c")]:
        assert metric.per_sample(np, y, out).dtype == dtype
    assert metrics.SparseCategoricalAccuracy("d").per_sample(np, np.array([1]), out).dtype == dtype


def test_accuracy_in_a_model_on_a_hand_example():
    """Identity kernel: the prediction is argmax(x). Two of four samples are right."""
    model = Sequential([Dense(2, activation="softmax", use_bias=False, input_dim=2)], dtype="float64", device="cpu")
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.build(seed=0)
    model.set_weights([np.eye(2)])
    x = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    y = np.array([0, 0, 1, 1])
    loss, acc = model.evaluate(x, y, batch_size=3)  # batches of 3 and 1: a streaming mean
    assert acc == pytest.approx(0.5)
    p = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(4), y])), rel=1e-12)


def test_binary_accuracy_in_a_model_with_from_logits():
    model = Sequential([Dense(1, use_bias=False, input_dim=1)], dtype="float64", device="cpu")
    model.compile(
        optimizer="sgd",
        loss={"class_name": "binary_crossentropy", "config": {"from_logits": True}},
        metrics=["accuracy"],
    )
    model.build(seed=0)
    model.set_weights([np.array([[1.0]])])
    x = np.array([[0.3], [-0.2], [-1.0], [2.0]])  # logits; with a 0.5 threshold only 2.0 would count
    _, acc = model.evaluate(x, np.array([1, 0, 1, 1]))
    assert acc == pytest.approx(0.75)


# -- errors -----------------------------------------------------------------------------------------
def test_unknown_metric_lists_known_names():
    with pytest.raises(ValueError, match="Unknown metric 'f1'") as info:
        resolve("f1", "mse", 1)
    for name in ("accuracy", "binary_accuracy", "categorical_accuracy", "sparse_categorical_accuracy", "mse", "mae"):
        assert name in str(info.value)


@pytest.mark.parametrize("bad", [3, None, ["accuracy"]])
def test_wrong_type_says_what_it_received(bad):
    with pytest.raises(
        TypeError, match="Expected a metric name, config dict or Metric instance, received .*Known metrics:"
    ):
        resolve(bad, "mse", 1)


@pytest.mark.parametrize(
    "config, cls, name",
    [
        ({"class_name": "accuracy"}, metrics.SparseCategoricalAccuracy, "accuracy"),
        ({"class_name": "accuracy", "config": {"name": "acc_top1"}}, metrics.SparseCategoricalAccuracy, "acc_top1"),
        (
            {"class_name": "sparse_categorical_accuracy", "config": {"name": "hits"}},
            metrics.SparseCategoricalAccuracy,
            "hits",
        ),
        ({"class_name": "SparseCategoricalAccuracy"}, metrics.SparseCategoricalAccuracy, "sparse_categorical_accuracy"),
    ],
)
def test_config_dicts_are_accepted(config, cls, name):
    metric = resolve(config, "sparse_categorical_crossentropy", 3)
    assert type(metric) is cls and metric.name == name


def test_instances_get_keras_default_names_and_are_checked_against_the_loss():
    assert metrics.CategoricalAccuracy().name == "categorical_accuracy"
    assert metrics.BinaryAccuracy().threshold == 0.5
    with pytest.raises(ValueError, match="needs integer class labels"):
        resolve(metrics.SparseCategoricalAccuracy(), "categorical_crossentropy", 3)
    with pytest.raises(ValueError, match="Unknown metric 'f1'"):
        resolve({"class_name": "f1"}, "mse", 1)


@pytest.mark.parametrize(
    "metric",
    [
        metrics.BinaryAccuracy("strict", threshold=0.9),
        metrics.MeanAbsoluteError(),
        metrics.SparseCategoricalAccuracy("hits"),
    ],
)
def test_serialize_round_trips(metric):
    loss = "sparse_categorical_crossentropy" if isinstance(metric, metrics.SparseCategoricalAccuracy) else "mse"
    again = resolve(json.loads(json.dumps(metrics.serialize(metric))), loss, 1)
    assert type(again) is type(metric) and again.get_config() == metric.get_config()


@pytest.mark.parametrize(
    "name, loss, match",
    [
        (
            "mse",
            "sparse_categorical_crossentropy",
            r"'mse' needs targets with one value per output unit.*integer class labels",
        ),
        (
            "categorical_accuracy",
            "sparse_categorical_crossentropy",
            r"'categorical_accuracy' needs targets with one value",
        ),
        ("binary_accuracy", "sparse_categorical_crossentropy", r"'binary_accuracy' needs targets"),
        (
            "sparse_categorical_accuracy",
            "categorical_crossentropy",
            r"'sparse_categorical_accuracy' needs integer class labels.*one value per output unit",
        ),
        ("sparse_categorical_accuracy", "mse", r"needs integer class labels"),
    ],
)
def test_metrics_that_cannot_read_the_loss_targets_are_refused(name, loss, match):
    with pytest.raises(ValueError, match=match):
        resolve(name, loss, 3)


def test_metric_instances_are_returned_as_is():
    metric = metrics.BinaryAccuracy("my_acc", threshold=0.7)
    assert metrics.get(metric, losses.get("mse"), 1) is metric
