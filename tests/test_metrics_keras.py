"""The metrics Keras users report (issue 17): values against real Keras 3 over several batches
(their states accumulated, never averages of averages), in fit's history against Keras', and on
two workers equal to one process (the confusion counts summed over the ranks)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import blobs, shared_client
from keras_oracle import keras_or_skip

import dtrain
from dtrain import losses, metrics
from dtrain.layers import Dense, Input
from dtrain.network import Totals

# (dtrain identifier, Keras class, Keras arguments, loss the targets suit, targets kind)
CASES = [
    ("precision", "Precision", {}, "binary_crossentropy", "binary"),
    ({"class_name": "precision", "config": {"thresholds": 0.3}}, "Precision", {"thresholds": 0.3},
     "binary_crossentropy", "binary"),
    ("recall", "Recall", {}, "binary_crossentropy", "binary"),
    ({"class_name": "precision", "config": {"top_k": 2}}, "Precision", {"top_k": 2}, "categorical_crossentropy",
     "onehot"),
    ({"class_name": "recall", "config": {"class_id": 3}}, "Recall", {"class_id": 3}, "binary_crossentropy", "binary"),
    ({"class_name": "precision", "config": {"top_k": 3, "class_id": 1, "thresholds": 0.2}}, "Precision",
     {"top_k": 3, "class_id": 1, "thresholds": 0.2}, "categorical_crossentropy", "onehot"),
    ("auc", "AUC", {}, "binary_crossentropy", "binary"),
    ({"class_name": "auc", "config": {"multi_label": True}}, "AUC", {"multi_label": True}, "binary_crossentropy",
     "binary"),
    ({"class_name": "auc", "config": {"multi_label": True, "curve": "PR"}}, "AUC", {"multi_label": True, "curve": "PR"},
     "binary_crossentropy", "binary"),
    ({"class_name": "auc", "config": {"curve": "PR"}}, "AUC", {"curve": "PR"}, "binary_crossentropy", "binary"),
    ({"class_name": "auc", "config": {"num_thresholds": 50, "summation_method": "minoring"}}, "AUC",
     {"num_thresholds": 50, "summation_method": "minoring"}, "binary_crossentropy", "binary"),
    ("top_k_categorical_accuracy", "TopKCategoricalAccuracy", {}, "categorical_crossentropy", "onehot"),
    ({"class_name": "top_k_categorical_accuracy", "config": {"k": 2}}, "TopKCategoricalAccuracy", {"k": 2},
     "categorical_crossentropy", "onehot"),
    ({"class_name": "sparse_top_k_categorical_accuracy", "config": {"k": 3}}, "SparseTopKCategoricalAccuracy",
     {"k": 3}, "sparse_categorical_crossentropy", "labels"),
    ({"class_name": "f1_score", "config": {"average": "macro"}}, "F1Score", {"average": "macro"},
     "categorical_crossentropy", "onehot"),
    ({"class_name": "f1_score", "config": {"average": "micro", "threshold": 0.3}}, "F1Score",
     {"average": "micro", "threshold": 0.3}, "categorical_crossentropy", "onehot"),
    ({"class_name": "f1_score", "config": {"average": "weighted"}}, "F1Score", {"average": "weighted"},
     "categorical_crossentropy", "onehot"),
    ("r2_score", "R2Score", {}, "mse", "real"),
    ({"class_name": "r2_score", "config": {"class_aggregation": "variance_weighted_average"}}, "R2Score",
     {"class_aggregation": "variance_weighted_average"}, "mse", "real"),
    ("root_mean_squared_error", "RootMeanSquaredError", {}, "mse", "real"),
    ("mean_absolute_percentage_error", "MeanAbsolutePercentageError", {}, "mse", "real"),
]  # fmt: skip


def _ids(case):
    return case if isinstance(case, str) else f"{case['class_name']}{case['config']}"


def _batches(kind, n=3, rows=11, units=5, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        z = rng.standard_normal((rows, units))
        if kind == "binary":
            y, p = rng.integers(0, 2, (rows, units)).astype(float), 1 / (1 + np.exp(-z))
        elif kind in ("onehot", "labels"):
            labels = rng.integers(0, units, rows)
            e = np.exp(z)
            y, p = (np.eye(units)[labels] if kind == "onehot" else labels), e / e.sum(axis=1, keepdims=True)
        else:
            y, p = rng.standard_normal((rows, units)) + 2.0, z + 2.0
        out.append((y, p))
    return out


@pytest.mark.parametrize("case, keras_name, kwargs, loss, kind", CASES, ids=[_ids(c[0]) for c in CASES])
def test_values_over_several_batches_match_keras(case, keras_name, kwargs, loss, kind):
    keras = keras_or_skip()
    metric = metrics.get(case, losses.get(loss), 5)
    theirs = getattr(keras.metrics, keras_name)(**kwargs)
    totals = Totals([metric])
    for y, p in _batches(kind):
        theirs.update_state(y, p)
        y_prepared = losses.get(loss).prepare_targets(np.asarray(y), 5)
        totals.add(len(p), 0.0, metric.update(np, y_prepared, p))
    np.testing.assert_allclose(totals.logs()[metric.name], float(theirs.result()), rtol=1e-7, atol=1e-12)


def test_history_matches_keras_fit():
    keras = keras_or_skip()
    keras.utils.set_random_seed(5)
    names = ["precision", "recall", "auc"]
    theirs = keras.Sequential([keras.layers.Input((6,)), keras.layers.Dense(4, activation="sigmoid")])
    theirs.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy", metrics=names)
    ours = dtrain.Sequential([Input(shape=(6,)), Dense(4, activation="sigmoid")], dtype="float64")
    ours.compile(optimizer=dtrain.optimizers.SGD(0.1), loss="binary_crossentropy", metrics=names)
    ours.set_weights(theirs.get_weights())
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((60, 6)), rng.integers(0, 2, (60, 4)).astype(float)
    h_k = theirs.fit(x, y, batch_size=20, epochs=2, shuffle=False, verbose=0).history
    h_d = ours.fit(x, y, batch_size=20, epochs=2, shuffle=False, verbose=0).history
    for name in names:
        np.testing.assert_allclose(h_d[name], h_k[name], rtol=1e-7, err_msg=name)


def test_bad_metric_arguments_say_what_to_do():
    loss = losses.get("categorical_crossentropy")
    with pytest.raises(ValueError, match="F1Score\\(average=None\\).*'macro'"):
        metrics.get("f1_score", loss, 3)
    with pytest.raises(ValueError, match="class_id=5\\) is out of range for a model with 3 outputs"):
        metrics.get({"class_name": "precision", "config": {"class_id": 5}}, loss, 3)
    with pytest.raises(ValueError, match="AUC expected num_thresholds > 1"):
        metrics.get({"class_name": "auc", "config": {"num_thresholds": 1}}, loss, 3)


@pytest.mark.cluster
def test_confusion_based_metrics_on_two_workers_equal_one_process():
    client = shared_client(2)
    x, labels = blobs(150, features=8, classes=3)
    wanted = ["accuracy", "auc", "precision", "recall", {"class_name": "f1_score", "config": {"average": "macro"}},
              {"class_name": "top_k_categorical_accuracy", "config": {"k": 2}}]  # fmt: skip

    def model():
        m = dtrain.Sequential([Input(shape=(8,)), Dense(8, activation="relu"), Dense(3, activation="softmax")],
                              dtype="float64")  # fmt: skip
        m.compile(optimizer="adam", loss="categorical_crossentropy", metrics=wanted)
        m.build(seed=1)
        return m

    y = np.eye(3)[labels]
    kwargs = dict(batch_size=25, epochs=2, seed=3, shards=2, verbose=0, validation_split=0.2)
    h_local = model().fit(x, y, **kwargs).history
    h_dist = model().fit(x, y, client=client, **kwargs).history
    assert set(h_local) == set(h_dist) and "val_auc" in h_local
    for key in h_local:
        np.testing.assert_allclose(h_dist[key], h_local[key], rtol=1e-9, err_msg=key)
