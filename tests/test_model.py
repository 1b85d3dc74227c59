"""The Sequential API: construction, compile, fit/evaluate/predict results, weights, config,
summary, precision and the flat memory layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import blobs, one_hot, small_model

import dtrain
from dtrain import callbacks, losses, metrics, optimizers
from dtrain.layers import Dense
from dtrain.models import Sequential


# -- construction ---------------------------------------------------------------------------------
def test_sequential_layers_and_name():
    a, b = Dense(8, activation="relu", input_dim=4), Dense(2)
    model = Sequential(layers=[a, b], name="net")
    assert model.name == "net"
    assert model.layers == [a, b]
    assert model.layers is not model.layers  # a copy: mutating it does not change the model
    model.layers.append(Dense(3))
    assert len(model.layers) == 2
    assert not model.built
    assert Sequential().name == "sequential"


def test_add_builds_nothing_and_checks_widths():
    model = Sequential()
    model.add(Dense(5, input_dim=3))
    model.add(Dense(4, input_dim=5))  # agrees with the previous layer
    with pytest.raises(ValueError, match="input_dim=7.*outputs 4 units"):
        model.add(Dense(2, input_dim=7))
    assert len(model.layers) == 2
    model.build()
    assert model.built and model.input_dim == 3
    with pytest.raises(RuntimeError, match="already built"):
        model.add(Dense(1))


def test_layer_cannot_join_two_models():
    layer = Dense(3, input_dim=2)
    first = Sequential([layer])
    first.build()
    with pytest.raises(ValueError, match="cannot be shared"):
        Sequential([layer])
    assert first.layers[0].kernel is layer.kernel  # the first model still owns it


def test_same_layer_twice_and_duplicate_names_are_rejected():
    layer = Dense(3, input_dim=2)
    model = Sequential([layer])
    with pytest.raises(ValueError, match="already in model"):
        model.add(layer)
    with pytest.raises(ValueError, match="unique"):
        model.add(Dense(3, name=layer.name))


# -- compile --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "optimizer",
    [
        "sgd",
        "SGD",
        "adam",
        "rmsprop",
        {"class_name": "sgd", "config": {"learning_rate": 0.5}},
        {"class_name": "Adam", "config": {"learning_rate": 0.5}},
        optimizers.SGD(learning_rate=0.5),
    ],
)
def test_compile_accepts_optimizer_names_configs_and_instances(optimizer):
    model = small_model()
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    assert isinstance(model.optimizer, optimizers.Optimizer)
    if isinstance(optimizer, optimizers.Optimizer):
        assert model.optimizer is optimizer
    if isinstance(optimizer, (dict, optimizers.Optimizer)):
        assert model.optimizer.learning_rate == 0.5


@pytest.mark.parametrize(
    "loss, cls",
    [
        ("categorical_crossentropy", losses.CategoricalCrossentropy),
        ("mse", losses.MeanSquaredError),
        ("mean_absolute_error", losses.MeanAbsoluteError),
        ({"class_name": "categorical_crossentropy", "config": {}}, losses.CategoricalCrossentropy),
        (losses.SparseCategoricalCrossentropy(), losses.SparseCategoricalCrossentropy),
    ],
)
def test_compile_accepts_loss_names_configs_and_instances(loss, cls):
    model = small_model()
    model.compile(optimizer="sgd", loss=loss)
    assert isinstance(model.loss, cls)


@pytest.mark.parametrize(
    "loss, units, expected",
    [
        ("categorical_crossentropy", 3, metrics.CategoricalAccuracy),
        ("sparse_categorical_crossentropy", 3, metrics.SparseCategoricalAccuracy),
        ("binary_crossentropy", 1, metrics.BinaryAccuracy),
    ],
)
def test_accuracy_resolves_from_the_loss(loss, units, expected):
    model = Sequential([Dense(units, activation="sigmoid" if units == 1 else "softmax", input_dim=2)])
    model.compile(optimizer="sgd", loss=loss, metrics=["accuracy"])
    assert isinstance(model.metrics[0], expected)
    assert model.metrics[0].name == "accuracy"


def test_compile_single_metric_string_and_duplicate_metric_names():
    model = small_model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics="accuracy")
    assert [m.name for m in model.metrics] == ["accuracy"]
    with pytest.raises(ValueError, match="unique"):
        model.compile(optimizer="sgd", loss="mse", metrics=["mse", "mse"])


# -- fit / evaluate / predict results ---------------------------------------------------------------
def test_fit_returns_history_with_loss_metrics_and_validation_keys():
    x, labels = blobs(300)
    y = one_hot(labels, 3)
    model = small_model()
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy", "mse"])
    history = model.fit(x, y, epochs=3, batch_size=32, verbose=0, validation_data=(x[:50], y[:50]), seed=0)
    assert isinstance(history, callbacks.History)
    assert model.history is history
    assert set(history.history) == {"loss", "accuracy", "mse", "val_loss", "val_accuracy", "val_mse"}
    assert all(len(v) == 3 for v in history.history.values())
    assert history.epoch == [0, 1, 2]
    # val_* values are exactly what evaluate() reports on the same data after the last epoch.
    assert history.history["val_loss"][-1] == pytest.approx(model.evaluate(x[:50], y[:50])[0], rel=1e-6)


def test_epoch_logs_are_sample_weighted_means_over_the_epoch():
    """The epoch loss is the mean of the per-batch losses weighted by batch size (partial last
    batch included), each computed before that batch's update, as Keras reports it."""
    x, labels = blobs(70)
    model = small_model()
    model.compile(optimizer=optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.build(seed=0)
    expected_loss, expected_acc, weights = 0.0, 0.0, []
    for start in range(0, 70, 32):
        xb, yb = x[start : start + 32], labels[start : start + 32]
        loss, acc = model.evaluate(xb, yb, batch_size=len(xb))  # before the step, same weights
        expected_loss += loss * len(xb)
        expected_acc += acc * len(xb)
        model.train_on_batch(xb, yb)
        weights.append(model.get_weights())
    replay = model.get_weights()

    model2 = small_model()
    model2.compile(optimizer=optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model2.build(seed=0)
    history = model2.fit(x, labels, epochs=1, batch_size=32, shuffle=False, verbose=0)
    assert history.history["loss"][0] == pytest.approx(expected_loss / 70, rel=1e-5)
    assert history.history["accuracy"][0] == pytest.approx(expected_acc / 70, rel=1e-6)
    for a, b in zip(model2.get_weights(), replay):
        np.testing.assert_array_equal(a, b)


def test_validation_split_takes_the_last_samples_before_shuffling():
    x, labels = blobs(100)
    seen = []

    class Record(callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append(self.params["samples"])

    model = small_model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, labels, epochs=2, validation_split=0.25, verbose=0, seed=1, callbacks=[Record()])
    assert seen == [75]
    # The validation metrics are those of the last 25 samples (x[75:]), whatever the shuffling.
    loss, acc = model.evaluate(x[75:], labels[75:])
    assert history.history["val_loss"][-1] == pytest.approx(loss, rel=1e-6)
    assert history.history["val_accuracy"][-1] == pytest.approx(acc)
    assert model.evaluate(x[:25], labels[:25])[0] != pytest.approx(loss, rel=1e-6)


def test_validation_split_equals_explicit_validation_data():
    x, labels = blobs(100)
    runs = []
    for kwargs in ({"validation_split": 0.2}, {"validation_data": (x[80:], labels[80:])}):
        model = small_model()
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        xs, ys = (x, labels) if "validation_split" in kwargs else (x[:80], labels[:80])
        runs.append(model.fit(xs, ys, epochs=2, verbose=0, seed=5, **kwargs).history)
    assert runs[0] == runs[1]


def test_evaluate_returns_loss_or_list_or_dict():
    x, labels = blobs(64)
    model = small_model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    loss = model.evaluate(x, labels)
    assert isinstance(loss, float)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    result = model.evaluate(x, labels)
    assert isinstance(result, list) and len(result) == 2
    assert result[0] == pytest.approx(loss)
    assert 0.0 <= result[1] <= 1.0
    as_dict = model.evaluate(x, labels, return_dict=True)
    assert as_dict == {"loss": result[0], "accuracy": result[1]}
    # The batch size changes only the summation order.
    assert model.evaluate(x, labels, batch_size=7)[0] == pytest.approx(loss, rel=1e-5)


def test_evaluate_matches_a_numpy_forward_pass():
    x, labels = blobs(50)
    model = small_model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.build(seed=3)
    k1, b1, k2, b2 = (w.astype(np.float64) for w in model.get_weights())
    z = np.maximum(x @ k1 + b1, 0) @ k2 + b2
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    loss = -np.log(p[np.arange(50), labels]).mean()
    acc = (p.argmax(1) == labels).mean()
    got_loss, got_acc = model.evaluate(x, labels)
    assert got_loss == pytest.approx(loss, rel=1e-5)
    assert got_acc == pytest.approx(acc)
    np.testing.assert_allclose(model.predict(x), p, rtol=1e-5, atol=1e-6)


def test_predict_returns_numpy_of_shape_n_units():
    x, _ = blobs(45)
    model = small_model()  # not compiled: predict needs no loss
    out = model.predict(x, batch_size=16)
    assert type(out) is np.ndarray and out.shape == (45, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    # Batching does not matter beyond float32 rounding: BLAS blocks another batch size otherwise,
    # and a softmax tail of 1e-4 carries that rounding at 1e-6 relative (seen in CI, 1 run in ~10).
    np.testing.assert_allclose(model.predict(x), out, rtol=1e-5, atol=1e-7)
    again = model.predict(x)
    again[:] = -1  # the result is the caller's: not a buffer the model reuses
    np.testing.assert_allclose(model.predict(x, batch_size=16), out)
    np.testing.assert_allclose(model.predict(x[:1]), out[:1], rtol=1e-5, atol=1e-7)


def test_train_on_batch_does_one_step():
    x, labels = blobs(32)
    model = small_model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.build(seed=0)
    before = model.get_weights()
    loss_before = model.evaluate(x, labels)[0]
    result = model.train_on_batch(x, labels)
    assert isinstance(result, list) and result[0] == pytest.approx(loss_before, rel=1e-6)
    assert model.evaluate(x, labels)[0] < loss_before
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    assert isinstance(model.train_on_batch(x, labels), float)


def test_lazy_build_from_the_data():
    x, labels = blobs(40, features=7)
    model = small_model(input_dim=None)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    assert not model.built and model.input_dim is None
    with pytest.raises(RuntimeError, match="needs the model's weights"):
        model.predict(x)
    with pytest.raises(RuntimeError, match="needs the model's weights"):
        model.get_weights()
    model.fit(x, labels, epochs=1, verbose=0)
    assert model.built and model.input_dim == 7
    assert [w.shape for w in model.get_weights()] == [(7, 16), (16,), (16, 3), (3,)]
    with pytest.raises(ValueError, match="7"):
        model.fit(x[:, :5], labels, verbose=0)


def test_build_explicitly_and_count_params():
    model = Sequential([Dense(4, input_dim=3), Dense(2, use_bias=False), Dense(5)])
    model.build(seed=0)
    assert model.count_params() == 3 * 4 + 4 + 4 * 2 + 2 * 5 + 5
    assert model.count_params() == sum(w.size for w in model.get_weights())
    lazy = Sequential([Dense(4), Dense(2)])
    lazy.build(6)
    assert lazy.count_params() == 6 * 4 + 4 + 4 * 2 + 2


# -- weights ---------------------------------------------------------------------------------------
def test_get_weights_keras_order_and_shapes():
    model = Sequential([Dense(5, input_dim=3, activation="relu"), Dense(4, use_bias=False), Dense(2)])
    weights = model.get_weights()
    assert [w.shape for w in weights] == [(3, 5), (5,), (5, 4), (4, 2), (2,)]
    assert all(type(w) is np.ndarray and w.dtype == np.float32 for w in weights)
    # kernels are (in, out): x @ kernel, as in Keras
    layer = model.layers[0]
    np.testing.assert_array_equal(weights[0], layer.kernel)
    np.testing.assert_array_equal(weights[1], np.zeros(5))  # bias_initializer="zeros"
    weights[0][:] = 123.0  # copies: changing them leaves the model alone
    assert not np.any(model.get_weights()[0] == 123.0)


def test_set_weights_roundtrip_changes_predictions():
    x, _ = blobs(10, features=3)
    model = Sequential([Dense(5, input_dim=3, activation="tanh"), Dense(2)])
    rng = np.random.default_rng(0)
    new = [rng.normal(size=w.shape) for w in model.get_weights()]  # float64: cast on the way in
    model.set_weights(new)
    for got, want in zip(model.get_weights(), new):
        np.testing.assert_allclose(got, want.astype(np.float32))
    k1, b1, k2, b2 = new
    np.testing.assert_allclose(model.predict(x), np.tanh(x @ k1 + b1) @ k2 + b2, rtol=1e-4, atol=1e-5)


def test_weights_copy_between_models_gives_identical_predictions():
    x, _ = blobs(20)
    a, b = small_model(), small_model()
    a.build(seed=1)
    b.build(seed=2)
    assert not np.array_equal(a.predict(x), b.predict(x))
    b.set_weights(a.get_weights())
    np.testing.assert_array_equal(a.predict(x), b.predict(x))


# -- config ----------------------------------------------------------------------------------------
def test_get_config_from_config_roundtrip():
    model = Sequential(
        [
            Dense(6, activation="tanh", input_dim=4, kernel_initializer="he_normal", bias_initializer="ones", name="h"),
            Dense(
                3,
                activation="softmax",
                use_bias=True,
                kernel_initializer={"class_name": "random_normal", "config": {"stddev": 0.2}},
            ),
            Dense(2, use_bias=False),
        ],
        name="cfg",
    )
    config = model.get_config()
    text = json.dumps(config)  # plain JSON-able data
    clone = Sequential.from_config(json.loads(text))
    assert clone.name == "cfg" and clone.dtype == model.dtype
    assert clone.get_config() == config
    assert [layer.name for layer in clone.layers] == [layer.name for layer in model.layers]
    assert [(layer.units, layer.activation.name, layer.use_bias) for layer in clone.layers] == [
        (6, "tanh", True),
        (3, "softmax", True),
        (2, "linear", False),
    ]
    clone.build(seed=0)
    np.testing.assert_array_equal(clone.get_weights()[1], np.ones(6))
    # Same architecture: the weights transfer and the outputs agree.
    clone.set_weights(model.get_weights())
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_array_equal(clone.predict(x), model.predict(x))


def test_config_of_a_trained_lazy_model_rebuilds_with_its_input_width():
    x, labels = blobs(30, features=5)
    model = small_model(input_dim=None)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(x, labels, verbose=0)
    clone = Sequential.from_config(json.loads(json.dumps(model.get_config())))
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(clone.predict(x), model.predict(x))


def test_from_config_rejects_garbage():
    with pytest.raises(ValueError, match="layers"):
        Sequential.from_config({"name": "x"})
    with pytest.raises(ValueError, match="Unknown layer class"):
        Sequential.from_config({"layers": [{"class_name": "Conv2D", "config": {}}]})
    with pytest.raises(ValueError, match="Bad Dense config"):
        Sequential.from_config({"layers": [{"class_name": "Dense", "config": {"units": 2, "colour": "red"}}]})


# -- summary ---------------------------------------------------------------------------------------
def test_summary_lists_layers_shapes_and_param_counts(capsys):
    model = Sequential([Dense(64, activation="relu", input_dim=100, name="hidden"), Dense(10, name="out")], name="seed")
    model.summary()
    out = capsys.readouterr().out
    assert 'Model: "seed"' in out
    assert "hidden (Dense)" in out and "out (Dense)" in out
    assert "(None, 64)" in out and "(None, 10)" in out
    assert "6,464" in out and "650" in out
    assert "Total params: 7,114" in out
    lines = []
    Sequential([Dense(3)]).summary(print_fn=lines.append)
    assert any("unknown" in line for line in lines)


# -- precision -------------------------------------------------------------------------------------
def test_float32_by_default():
    x, labels = blobs(40)
    model = small_model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(x.astype(np.float64), labels, verbose=0)
    assert model.dtype == "float32" and dtrain.floatx() == "float32"
    assert model.params.dtype == np.float32 and model.grads.dtype == np.float32
    assert all(w.dtype == np.float32 for w in model.get_weights())
    assert model.predict(x).dtype == np.float32


def test_float64_per_model():
    x, labels = blobs(40)
    model = small_model(dtype="float64")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, labels, epochs=2, verbose=0, seed=0)
    assert model.params.dtype == np.float64 and model.grads.dtype == np.float64
    assert model.optimizer.slots["m"].dtype == np.float64
    assert all(w.dtype == np.float64 for w in model.get_weights())
    assert model.predict(x).dtype == np.float64
    assert Sequential.from_config(model.get_config()).dtype == "float64"


def test_float64_results_differ_from_float32_only_by_rounding():
    x, labels = blobs(64)
    outs = []
    for dtype in ("float32", "float64"):
        model = small_model(dtype=dtype)
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        model.fit(x, labels, epochs=2, verbose=0, seed=4)
        outs.append(model.get_weights())
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    assert any(not np.array_equal(a, b.astype(np.float32)) for a, b in zip(*outs))


def test_set_floatx_changes_the_default_of_new_models():
    dtrain.set_floatx("float64")
    assert dtrain.floatx() == "float64"
    model = small_model()
    model.build(seed=0)
    assert model.params.dtype == np.float64
    assert small_model(dtype="float32").dtype == "float32"
    dtrain.set_floatx("float32")
    assert small_model().dtype == "float32"
    with pytest.raises(ValueError, match="float16"):
        dtrain.set_floatx("float16")
    with pytest.raises(ValueError, match="expected one of"):
        Sequential(dtype="int32")


# -- flat memory layout ----------------------------------------------------------------------------
def test_layer_arrays_are_views_into_the_flat_buffers():
    model = Sequential([Dense(7, input_dim=5, activation="relu"), Dense(3, use_bias=False), Dense(2)])
    model.build(seed=0)
    assert model.params.ndim == 1 and model.params.flags.c_contiguous
    assert model.grads.shape == model.params.shape and model.grads.flags.c_contiguous
    arrays = []
    for layer in model.layers:
        pairs = [(layer.kernel, layer.kernel_grad)] + ([(layer.bias, layer.bias_grad)] if layer.use_bias else [])
        for param, grad in pairs:
            assert np.shares_memory(param, model.params) and param.base is not None
            assert np.shares_memory(grad, model.grads)
            assert not np.shares_memory(param, model.grads)
            arrays.append(param)
    # No two arrays overlap, and together they hold every parameter.
    for i, a in enumerate(arrays):
        for b in arrays[i + 1 :]:
            assert not np.shares_memory(a, b)
    assert sum(a.size for a in arrays) == model.count_params() <= model.params.size
    # Writing through the flat buffer is seen by the layers (and get_weights) and vice versa.
    model.params[...] = 0.0
    assert all(not w.any() for w in model.get_weights())
    model.layers[0].kernel[0, 0] = 2.5
    assert 2.5 in model.params


def test_gradients_land_in_the_flat_gradient_buffer():
    x, labels = blobs(16, features=5)
    model = Sequential([Dense(4, input_dim=5, activation="tanh"), Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.build(seed=0)
    model.compute_gradients(x, labels)
    grads = [
        model.layers[0].kernel_grad,
        model.layers[0].bias_grad,
        model.layers[1].kernel_grad,
        model.layers[1].bias_grad,
    ]
    assert all(g.any() for g in grads)
    assert np.abs(model.grads).sum() == pytest.approx(sum(np.abs(g).sum() for g in grads), rel=1e-5)
    # apply_gradients is params -= lr * grads over the whole flat buffer
    before = model.params.copy()
    model.apply_gradients()
    np.testing.assert_allclose(model.params, before - np.float32(0.01) * model.grads, rtol=1e-6, atol=1e-8)


def test_training_updates_the_flat_buffer_in_place_and_reuses_step_buffers():
    x, labels = blobs(200, features=20)
    model = small_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.build(seed=0)
    params, grads = model.params, model.grads
    address = params.__array_interface__["data"][0]
    kernel = model.layers[0].kernel
    model.fit(x, labels, epochs=1, batch_size=32, verbose=0, seed=0)
    layer_buffers = [{n: tuple(map(id, b)) for n, b in layer._buffers._entries.items()} for layer in model.layers]
    top = {n: id(b) for n, b in model._top_grads._entries.items()}
    scratch, slots = id(model.optimizer._scratch), {k: id(v) for k, v in model.optimizer.slots.items()}
    before = model.get_weights()

    model.fit(x, labels, epochs=2, batch_size=32, verbose=0, seed=1)
    assert model.params is params and model.grads is grads
    assert model.params.__array_interface__["data"][0] == address
    assert model.layers[0].kernel is kernel and np.shares_memory(kernel, params)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    # The per-batch-size buffers made in the first epoch are the ones used later: no new ones.
    assert [
        {n: tuple(map(id, b)) for n, b in layer._buffers._entries.items()} for layer in model.layers
    ] == layer_buffers
    assert {n: id(b) for n, b in model._top_grads._entries.items()} == top
    assert id(model.optimizer._scratch) == scratch
    assert {k: id(v) for k, v in model.optimizer.slots.items()} == slots


def test_dense_forward_and_backward_allocate_nothing_in_steady_state():
    """After the first step (which makes the per-batch-size buffers), forward and backward write
    into those buffers: the memory they allocate does not grow with the batch. (NumPy's
    broadcasting ufuncs such as ``z += bias`` use a fixed 8192-element iterator buffer.)"""
    import tracemalloc

    rng = np.random.default_rng(0)
    model = Sequential([Dense(64, input_dim=32, activation="relu"), Dense(16, activation="tanh"), Dense(8)])
    model.build(seed=0)
    layers = model.layers

    def peak_of_steps(batch: int) -> int:
        x = rng.normal(size=(batch, 32)).astype(np.float32)
        grad = rng.normal(size=(batch, 8)).astype(np.float32)
        work = np.empty_like(grad)  # backward may overwrite its input gradient

        def step():
            h = x
            for layer in layers:
                h = layer.forward(h, training=True)
            np.copyto(work, grad)
            g = work
            for i in range(len(layers) - 1, -1, -1):
                g = layers[i].backward(g, need_input_grad=i > 0)

        step()  # makes the buffers for this batch size
        ids = [tuple(map(id, layer._buffers.peek(batch))) for layer in layers]
        # Other threads (a Dask client's event loop) are traced too: take the least of a few runs.
        peaks = []
        tracemalloc.start()
        try:
            for _ in range(5):
                tracemalloc.reset_peak()
                step()
                peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert [tuple(map(id, layer._buffers.peek(batch))) for layer in layers] == ids
        return min(peaks)

    peak_of_steps(64)
    peak = peak_of_steps(4096)
    one_activation = 4096 * 64 * 4  # 1 MiB: any per-step (batch, units) array would show
    assert peak < one_activation / 8, peak


def test_work_buffers_stay_bounded_when_predicting_many_lengths():
    model = Sequential([Dense(16, activation="relu", input_dim=4), Dense(3, activation="softmax")])
    model.build(seed=0)
    x = np.random.default_rng(0).standard_normal((300, 4))
    for n in range(1, 60):
        model.predict(x[:n], batch_size=n)
    assert all(len(layer._buffers) <= layer._buffers.max_sizes for layer in model.layers)
    # and the cached sizes are the most recent ones
    assert model.layers[0]._buffers.peek(59) is not None and model.layers[0]._buffers.peek(1) is None


def test_gradients_moved_to_another_buffer_are_computed_there_and_applied_from_any_buffer():
    """What a data-parallel rank does with shared memory: the backward pass writes into the new
    buffer, and the optimizer may take its gradient from a separate (summed) buffer."""
    x = np.random.default_rng(0).standard_normal((32, 6))
    y = np.random.default_rng(1).integers(0, 3, 32)

    def model():
        m = Sequential([Dense(5, activation="relu", input_dim=6), Dense(3, activation="softmax")])
        m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        m.build(seed=0)
        return m

    plain, moved = model(), model()
    buffer = np.full_like(moved.grads, np.nan)
    moved.use_gradient_buffer(buffer)
    assert moved.grads is buffer and not np.isnan(buffer).any()  # took the current values
    with pytest.raises(ValueError, match="gradient buffer must be"):
        moved.use_gradient_buffer(np.zeros(3))
    plain.compute_gradients(x, y)
    moved.compute_gradients(x, y)
    np.testing.assert_array_equal(buffer, plain.grads)
    elsewhere = buffer.copy()
    buffer[...] = np.nan  # the step must read `elsewhere`, not the model's buffer
    plain.apply_gradients()
    moved.apply_gradients(elsewhere)
    np.testing.assert_array_equal(moved.params, plain.params)
