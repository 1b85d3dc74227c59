"""Bad input gets a clear error before any work: the message names what was received and what
was expected, and the model is left exactly as it was."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import one_hot, small_model

import dtrain
from dtrain import activations, callbacks
from dtrain.layers import Dense
from dtrain.models import Sequential


def _compiled(loss="sparse_categorical_crossentropy", last="softmax", units=3, built=True):
    model = Sequential([Dense(8, activation="relu", input_dim=4), Dense(units, activation=last)])
    model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    if built:
        model.build(seed=0)
    return model


def _x(n=10, features=4, seed=0):
    return np.random.default_rng(seed).normal(size=(n, features)).astype(np.float32)


def _labels(n=10, classes=3):
    return np.arange(n) % classes


def _fails_untouched(model, match, call, error=ValueError):
    """``call(model)`` raises ``error`` matching ``match`` and leaves the model as it was."""
    built = model.built
    before = model.get_weights() if built else None
    iterations = model.optimizer.iterations if model.optimizer else None
    slots = {k: v.copy() for k, v in model.optimizer.slots.items()} if model.optimizer else {}
    with pytest.raises(error, match=match) as info:
        call(model)
    assert model.built == built
    if built:
        for a, b in zip(before, model.get_weights()):
            np.testing.assert_array_equal(a, b)
    if model.optimizer:
        assert model.optimizer.iterations == iterations
        for k, v in slots.items():
            np.testing.assert_array_equal(v, model.optimizer.slots[k])
    return str(info.value)


# -- x and y ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("built", [True, False])
def test_x_and_y_of_different_lengths(built):
    message = _fails_untouched(
        _compiled(built=built), "different numbers of samples", lambda m: m.fit(_x(10), _labels(9), verbose=0)
    )
    assert "10" in message and "9" in message


def test_feature_count_mismatch_names_both_widths():
    for call in (
        lambda m: m.fit(_x(10, 5), _labels(10), verbose=0),
        lambda m: m.evaluate(_x(10, 5), _labels(10)),
        lambda m: m.predict(_x(10, 5)),
        lambda m: m.train_on_batch(_x(10, 5), _labels(10)),
    ):
        message = _fails_untouched(_compiled(), "5 features", call)
        assert "input_dim=4" in message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_x(bad):
    x = _x()
    x[3, 2] = bad
    message = _fails_untouched(_compiled(), "NaN or infinite", lambda m: m.fit(x, _labels(), verbose=0))
    assert "x[3, 2]" in message


def test_nan_in_y_and_in_validation_data():
    y = one_hot(_labels(), 3)
    y[4, 0] = np.nan
    model = _compiled(loss="categorical_crossentropy")
    _fails_untouched(model, r"y contains NaN", lambda m: m.fit(_x(), y, verbose=0))
    good_y = one_hot(_labels(), 3)
    vx = _x()
    vx[0, 0] = np.nan
    _fails_untouched(
        model, "validation x contains NaN", lambda m: m.fit(_x(), good_y, validation_data=(vx, good_y), verbose=0)
    )


def test_values_that_overflow_float32_are_refused():
    x = _x().astype(np.float64)
    x[1, 1] = 1e39  # finite in float64, inf in float32
    _fails_untouched(_compiled(), "too large for float32", lambda m: m.fit(x, _labels(), verbose=0))


def test_validation_data_is_checked_before_an_unbuilt_model_is_built():
    model = _compiled(built=False)
    message = _fails_untouched(
        model,
        "validation x has 6 features",
        lambda m: m.fit(_x(), _labels(), validation_data=(_x(5, 6), _labels(5)), verbose=0),
    )
    assert "input_dim=4" in message
    _fails_untouched(
        model,
        "validation x and validation y have different numbers",
        lambda m: m.fit(_x(), _labels(), validation_data=(_x(5), _labels(4)), verbose=0),
    )
    _fails_untouched(
        model, "validation_data must be a tuple", lambda m: m.fit(_x(), _labels(), validation_data=(_x(5),), verbose=0)
    )


# -- labels for each loss --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "labels, match",
    [
        (np.array([0, 1, 2, 3, 0, 1, 2, 0, 1, 2]), r"labels in \[0, 2\].*y\[3\] = 3"),
        (np.array([0, 1, -1, 0, 0, 1, 2, 0, 1, 2]), r"labels in \[0, 2\].*y\[2\] = -1"),
        (np.array([0, 1, 1.5, 0, 0, 1, 2, 0, 1, 2]), r"integer class labels.*y\[2\] = 1.5"),
        (np.ones((10, 3)), "integer class labels of shape"),
    ],
)
def test_sparse_labels_out_of_range_or_not_integers(labels, match):
    _fails_untouched(_compiled(), match, lambda m: m.fit(_x(), labels, verbose=0))


def test_categorical_rows_must_be_one_hot_like():
    y = one_hot(_labels(), 3)
    y[2] = [1, 1, 0]
    message = _fails_untouched(
        _compiled(loss="categorical_crossentropy"), "one-hot", lambda m: m.fit(_x(), y, verbose=0)
    )
    assert "row 2 sums to 2" in message
    y[2] = [2, -1, 0]
    _fails_untouched(
        _compiled(loss="categorical_crossentropy"), r"values in \[-1, 2\]", lambda m: m.fit(_x(), y, verbose=0)
    )
    _fails_untouched(
        _compiled(loss="categorical_crossentropy"),
        "sparse_categorical_crossentropy",
        lambda m: m.fit(_x(), _labels(), verbose=0),
    )  # integer labels: says what to use
    _fails_untouched(
        _compiled(loss="categorical_crossentropy"),
        r"shape \(n, 3\).*\(10, 4\)",
        lambda m: m.fit(_x(), np.eye(4)[_labels()], verbose=0),
    )


def test_binary_labels_outside_0_1():
    model = _compiled(loss="binary_crossentropy", last="sigmoid", units=1)
    y = (np.arange(10) % 2).astype(float)
    y[7] = 2.0
    _fails_untouched(model, r"\[0, 1\].*\[0, 2\]", lambda m: m.fit(_x(), y, verbose=0))
    y[7] = -0.5
    _fails_untouched(model, r"\[0, 1\]", lambda m: m.fit(_x(), y, verbose=0))


# -- shapes, emptiness, types ----------------------------------------------------------------------
def test_empty_data():
    _fails_untouched(_compiled(), "empty", lambda m: m.fit(np.zeros((0, 4)), np.zeros(0), verbose=0))
    _fails_untouched(_compiled(), "empty", lambda m: m.predict(np.zeros((0, 4))))
    _fails_untouched(_compiled(), "None", lambda m: m.fit(None, None, verbose=0))


@pytest.mark.parametrize(
    "x, match",
    [
        (np.array([["a", "b", "c", "d"]] * 10), "must hold numbers.*<U1"),
        (np.array([[object()] * 4] * 10, dtype=object), "must hold numbers.*object"),
        (np.ones(10), r"2-D.*\(10,\).*reshape"),
        (np.ones((10, 4, 1)), r"2-D.*\(10, 4, 1\)"),
        ([[1, 2], [3]], "could not be read"),
    ],
)
def test_non_numeric_or_badly_shaped_x(x, match):
    _fails_untouched(_compiled(), match, lambda m: m.fit(x, _labels(), verbose=0))


def test_non_numeric_y():
    _fails_untouched(_compiled(), "y must hold numbers", lambda m: m.fit(_x(), np.array(["cat"] * 10), verbose=0))


# -- fit arguments ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"batch_size": -4}, "batch_size=-4"),
        ({"batch_size": 2.5}, "batch_size=2.5"),
        ({"epochs": -1}, "epochs=-1"),
        ({"epochs": 1.5}, "epochs=1.5"),
        ({"initial_epoch": -2}, "initial_epoch=-2"),
        ({"validation_split": 1.0}, "validation_split=1.0"),
        ({"validation_split": -0.1}, "validation_split"),
        ({"validation_split": 0.95}, "both need at least one"),
        ({"seed": -1}, "seed=-1"),
        ({"seed": "abc"}, "seed='abc'"),
        ({"verbose": 3}, "verbose=3"),
        ({"shuffle": "yes"}, "shuffle='yes'"),
    ],
)
def test_bad_fit_arguments(kwargs, match):
    _fails_untouched(_compiled(), match, lambda m: m.fit(_x(), _labels(), **{"verbose": 0, **kwargs}))


def test_bad_batch_size_in_evaluate_and_predict():
    _fails_untouched(_compiled(), "batch_size=0", lambda m: m.evaluate(_x(), _labels(), batch_size=0))
    _fails_untouched(_compiled(), "batch_size=-1", lambda m: m.predict(_x(), batch_size=-1))


def test_bad_callbacks_are_refused_before_the_model_is_built():
    model = _compiled(built=False)
    _fails_untouched(
        model, "Callback instances", lambda m: m.fit(_x(), _labels(), callbacks=[print], verbose=0), error=TypeError
    )
    _fails_untouched(
        model,
        "list of dtrain.callbacks.Callback",
        lambda m: m.fit(_x(), _labels(), callbacks=callbacks.History(), verbose=0),
        error=TypeError,
    )


def test_fit_evaluate_and_train_on_batch_before_compile():
    model = small_model(input_dim=4)
    for call in (
        lambda m: m.fit(_x(), _labels(), verbose=0),
        lambda m: m.evaluate(_x(), _labels()),
        lambda m: m.train_on_batch(_x(), _labels()),
    ):
        message = _fails_untouched(model, "compile", call, error=RuntimeError)
        assert "model.compile(" in message
    assert not model.built


def test_compile_without_loss_or_layers():
    with pytest.raises(ValueError, match="needs a loss.*categorical_crossentropy"):
        small_model().compile(optimizer="sgd")
    with pytest.raises(RuntimeError, match="no layers"):
        Sequential().compile(optimizer="sgd", loss="mse")
    with pytest.raises(TypeError, match="metrics as a list"):
        small_model().compile(optimizer="sgd", loss="mse", metrics=42)


# -- unknown names list the known ones -------------------------------------------------------------
def _assert_lists(message, names):
    for name in names:
        assert name in message, (name, message)


def test_unknown_activation_lists_known_names():
    with pytest.raises(ValueError, match="Unknown activation 'relu7'") as info:
        Dense(3, activation="relu7")
    _assert_lists(str(info.value), activations.ACTIVATIONS)


def test_unknown_loss_lists_known_names():
    with pytest.raises(ValueError, match="Unknown loss 'hingey'") as info:
        small_model().compile(optimizer="sgd", loss="hingey")
    _assert_lists(
        str(info.value),
        ["categorical_crossentropy", "sparse_categorical_crossentropy", "binary_crossentropy", "mse", "mae"],
    )


def test_unknown_metric_lists_known_names():
    with pytest.raises(ValueError, match="Unknown metric 'f1'") as info:
        small_model().compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["f1"])
    _assert_lists(str(info.value), ["accuracy", "mse", "mae"])


def test_unknown_optimizer_lists_known_names():
    model = small_model()
    with pytest.raises(ValueError, match="Unknown optimizer 'adafactor'") as info:
        model.compile(optimizer="adafactor", loss="mse")
    _assert_lists(str(info.value), ["sgd", "adam", "rmsprop", "adamw", "adagrad", "nadam", "lion", "ftrl"])
    assert not model.compiled
    with pytest.raises((ValueError, TypeError), match="optimizer"):
        model.compile(optimizer=42, loss="mse")


def test_unknown_initializer_lists_known_names():
    with pytest.raises(ValueError, match="Unknown initializer 'xavier'") as info:
        Dense(3, kernel_initializer="xavier")
    _assert_lists(str(info.value), ["glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "zeros", "ones"])
    with pytest.raises(ValueError, match="Unknown initializer"):
        Dense(3, bias_initializer="nothing")


def test_bad_config_dicts_name_the_problem():
    with pytest.raises(ValueError, match="Bad arguments for optimizer 'sgd'"):
        small_model().compile(optimizer={"class_name": "sgd", "config": {"lr": 0.1}}, loss="mse")
    with pytest.raises(ValueError, match="class_name"):
        small_model().compile(optimizer={"config": {}}, loss="mse")


# -- set_weights -----------------------------------------------------------------------------------
def test_set_weights_wrong_count():
    model = _compiled()
    weights = model.get_weights()
    message = _fails_untouched(model, "expected 4 arrays", lambda m: m.set_weights(weights[:3]))
    assert "received 3" in message and "kernel" in message


def test_set_weights_wrong_shape_changes_nothing():
    model = _compiled()
    weights = [w + 1 for w in model.get_weights()]
    weights[2] = weights[2].T  # (8, 3) -> (3, 8); the first two arrays are fine
    message = _fails_untouched(model, r"shape \(8, 3\), received shape \(3, 8\)", lambda m: m.set_weights(weights))
    assert "kernel" in message


def test_set_weights_non_numeric():
    model = _compiled()
    weights = model.get_weights()
    weights[1] = np.array(["x"] * 8)
    _fails_untouched(model, "numeric", lambda m: m.set_weights(weights))


# -- layer and model arguments ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"units": -3}, "units=-3"),
        ({"units": 0}, "units=0"),
        ({"units": 2.5}, "units=2.5"),
        ({"units": "8"}, "units='8'"),
        ({"units": True}, "units=True"),
        ({"units": 3, "input_dim": 0}, "input_dim=0"),
        ({"units": 3, "input_shape": (4, 5)}, "input_shape=(4, 5)"),
        ({"units": 3, "input_shape": (4,), "input_dim": 5}, "disagree"),
        ({"units": 3, "use_bias": "yes"}, "use_bias='yes'"),
        ({"units": 3, "name": ""}, "name=''"),
    ],
)
def test_bad_dense_arguments(kwargs, needle):
    with pytest.raises(ValueError) as info:
        Dense(**kwargs)
    assert needle in str(info.value)


def test_dense_input_shape_is_accepted():
    assert Dense(3, input_shape=(7,)).input_dim == 7
    assert Dense(3, input_shape=(7,), input_dim=7).input_dim == 7


def test_bad_model_arguments():
    with pytest.raises(TypeError, match="Sequential.add expected a layer"):
        Sequential([Dense(3), "dense"])
    with pytest.raises(TypeError, match="expects a list of layers"):
        Sequential(Dense(3))
    with pytest.raises(ValueError, match="Unknown device 'tpu'"):
        Sequential([Dense(3)], device="tpu")
    with pytest.raises(ValueError, match="Unsupported dtype 'float16'"):
        Sequential([Dense(3)], dtype="float16")
    with pytest.raises(RuntimeError, match="no layers"):
        Sequential().build(3)
    with pytest.raises(ValueError, match="input width is unknown"):
        Sequential([Dense(3)]).build()


def test_metric_that_cannot_read_the_targets_is_refused():
    with pytest.raises(ValueError, match="mse"):
        small_model().compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["mse"])


def test_messages_say_what_was_received_not_only_that_it_failed():
    """One spot check of the style across several errors: each names the offending value."""
    checks = [
        (lambda: _compiled().fit(_x(), _labels(), batch_size=0, verbose=0), "0"),
        (lambda: Dense(units=-3), "-3"),
        (lambda: dtrain.set_floatx("float8"), "float8"),
    ]
    for call, needle in checks:
        with pytest.raises(Exception) as info:
            call()
        assert re.search(re.escape(needle), str(info.value))


def test_zero_features_and_bad_flags_are_refused():
    from dtrain import optimizers
    from dtrain.callbacks import EarlyStopping

    model = Sequential([Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    with pytest.raises(ValueError, match=r"x has no features \(shape \(5, 0\)\)"):
        model.fit(np.zeros((5, 0)), np.eye(3)[[0, 1, 2, 0, 1]], verbose=0)
    assert not model.built
    with pytest.raises(ValueError, match="nesterov to be True or False, received nesterov='no'"):
        optimizers.SGD(momentum=0.9, nesterov="no")
    with pytest.raises(ValueError, match="centered to be True or False"):
        optimizers.RMSprop(centered=1)
    with pytest.raises(ValueError, match="monitor to be a log key"):
        EarlyStopping(monitor=None)


def test_set_weights_refuses_non_finite_values_and_writes_nothing():
    model = Sequential([Dense(2, input_dim=2)])
    model.build(seed=0)
    before = model.get_weights()
    with pytest.raises(ValueError, match="dense.*/bias contains NaN or infinite values"):
        model.set_weights([np.ones((2, 2)), np.array([0.0, np.inf])])
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
