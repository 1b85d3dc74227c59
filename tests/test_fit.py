"""fit() semantics: batches in order (last one partial) without shuffling, reproducible seeds,
epoch orders that depend only on (seed, epoch), epochs=0 and initial_epoch."""

from __future__ import annotations

import numpy as np
from conftest import blobs, small_model

from dtrain import callbacks, optimizers
from dtrain.layers import Dense
from dtrain.models import Sequential
from dtrain.sampling import shard_order


def _regression(n=70, features=5, outputs=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features))
    y = np.tanh(x @ rng.normal(size=(features, outputs))) + 0.1 * rng.normal(size=(n, outputs))
    return x, y


def _numpy_sgd(weights, x, y, batch_order, batch_size, lr, epochs_orders):
    """The same network (tanh hidden layer, linear output, mse, plain SGD) written by hand in
    float64: returns the weights after the given epochs of batches."""
    k1, b1, k2, b2 = (w.astype(np.float64).copy() for w in weights)
    for order in epochs_orders:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            xb, yb = x[rows], y[rows]
            n, units = yb.shape
            h = np.tanh(xb @ k1 + b1)
            out = h @ k2 + b2
            d_out = 2.0 * (out - yb) / (n * units)  # d mean_n(mean_units((out - y)^2))
            g_k2, g_b2 = h.T @ d_out, d_out.sum(0)
            d_h = (d_out @ k2.T) * (1 - h * h)
            g_k1, g_b1 = xb.T @ d_h, d_h.sum(0)
            k1 -= lr * g_k1
            b1 -= lr * g_b1
            k2 -= lr * g_k2
            b2 -= lr * g_b2
    return [k1, b1, k2, b2]


def _tanh_mse_model(lr=0.1):
    model = Sequential([Dense(4, activation="tanh", input_dim=5), Dense(2)], dtype="float64")
    model.compile(optimizer=optimizers.SGD(learning_rate=lr), loss="mse")
    model.build(seed=11)
    return model


def test_shuffle_false_equals_a_numpy_loop_over_batches_in_order_last_partial():
    x, y = _regression(n=70)
    model = _tanh_mse_model()
    start = model.get_weights()
    sizes = []

    class BatchSizes(callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            sizes.append(batch)

    model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=[BatchSizes()])
    assert sizes == [0, 1, 2, 0, 1, 2]  # ceil(70 / 32) = 3 steps per epoch
    expected = _numpy_sgd(start, x, y, None, 32, 0.1, [np.arange(70)] * 2)
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    # Dropping the partial batch (or shuffling) would give other weights: the check can fail.
    dropped = _numpy_sgd(start, x, y, None, 32, 0.1, [np.arange(64)] * 2)
    assert not np.allclose(model.get_weights()[0], dropped[0], rtol=1e-8, atol=0)


def test_shuffled_epochs_follow_shard_order_of_seed_and_epoch():
    x, y = _regression(n=50)
    model = _tanh_mse_model()
    start = model.get_weights()
    model.fit(x, y, batch_size=8, epochs=3, seed=123, verbose=0)
    orders = [shard_order(50, 123, e, 0, True) for e in range(3)]
    expected = _numpy_sgd(start, x, y, None, 8, 0.1, orders)
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    assert not all(np.array_equal(o, np.arange(50)) for o in orders)


def test_shard_order_depends_only_on_seed_epoch_and_shard():
    a = shard_order(100, 7, 3, 0, True)
    assert np.array_equal(a, shard_order(100, 7, 3, 0, True))
    assert sorted(a) == list(range(100))
    assert not np.array_equal(a, shard_order(100, 7, 4, 0, True))
    assert not np.array_equal(a, shard_order(100, 8, 3, 0, True))
    assert not np.array_equal(a, shard_order(100, 7, 3, 1, True))
    assert np.array_equal(shard_order(100, 7, 3, 0, False), np.arange(100))


def _fit_weights(seed, epochs=2, **kwargs):
    x, labels = blobs(120)
    model = small_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, labels, epochs=epochs, batch_size=16, verbose=0, seed=seed, **kwargs)
    return model.get_weights()


def test_same_seed_gives_bitwise_identical_weights():
    for a, b in zip(_fit_weights(5), _fit_weights(5)):
        np.testing.assert_array_equal(a, b)


def test_different_or_no_seed_gives_different_weights():
    base = _fit_weights(5)
    assert any(not np.array_equal(a, b) for a, b in zip(base, _fit_weights(6)))
    assert any(not np.array_equal(a, b) for a, b in zip(_fit_weights(None), _fit_weights(None)))


def test_seed_fixes_initialisation_and_shuffling_separately():
    x, labels = blobs(120)
    inits, finals = [], []
    for seed in (1, 1, 2):
        model = small_model()
        model.build(seed=seed)
        inits.append(model.get_weights())
    for a, b in zip(inits[0], inits[1]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(inits[0][0], inits[2][0])
    # Same initial weights, different shuffling seeds: different results.
    for seed in (1, 2):
        model = small_model()
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        model.build(seed=0)
        model.fit(x, labels, epochs=1, batch_size=16, verbose=0, seed=seed)
        finals.append(model.get_weights())
    assert not np.array_equal(finals[0][0], finals[1][0])


def test_fit_in_two_calls_with_initial_epoch_equals_one_call():
    x, labels = blobs(100)
    runs = []
    for split in (False, True):
        model = small_model()
        model.compile(optimizer=optimizers.SGD(0.05, momentum=0.9), loss="sparse_categorical_crossentropy")
        model.build(seed=0)
        if split:
            h1 = model.fit(x, labels, epochs=1, batch_size=16, verbose=0, seed=9)
            h2 = model.fit(x, labels, epochs=3, initial_epoch=1, batch_size=16, verbose=0, seed=9)
            assert h1.epoch == [0] and h2.epoch == [1, 2]
            losses = h1.history["loss"] + h2.history["loss"]
        else:
            losses = model.fit(x, labels, epochs=3, batch_size=16, verbose=0, seed=9).history["loss"]
        runs.append((model.get_weights(), losses))
    for a, b in zip(runs[0][0], runs[1][0]):
        np.testing.assert_array_equal(a, b)
    assert runs[0][1] == runs[1][1]


def test_epochs_zero_does_nothing():
    x, labels = blobs(50)
    model = small_model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.build(seed=0)
    before = model.get_weights()
    calls = []
    cb = callbacks.LambdaCallback(
        on_train_begin=lambda logs: calls.append("train_begin"),
        on_epoch_begin=lambda epoch, logs: calls.append("epoch"),
        on_train_end=lambda logs: calls.append("train_end"),
    )
    history = model.fit(x, labels, epochs=0, verbose=0, callbacks=[cb])
    assert history.history == {} and history.epoch == []
    assert calls == ["train_begin", "train_end"]
    assert model.optimizer.iterations == 0
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_initial_epoch_at_or_beyond_epochs_trains_nothing():
    x, labels = blobs(50)
    model = small_model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.build(seed=0)
    before = model.get_weights()
    assert model.fit(x, labels, epochs=2, initial_epoch=2, verbose=0).epoch == []
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_params_seen_by_callbacks():
    x, labels = blobs(70)
    seen = {}

    class Grab(callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.update(self.params)
            seen["model"] = self.model

    model = small_model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(x, labels, epochs=2, batch_size=32, verbose=0, seed=3, callbacks=[Grab()])
    assert seen["epochs"] == 2 and seen["steps"] == 3 and seen["batch_size"] == 32
    assert seen["samples"] == 70 and seen["seed"] == 3 and seen["model"] is model


def test_batch_size_larger_than_data_is_one_partial_batch():
    x, y = _regression(n=10)
    model = _tanh_mse_model()
    start = model.get_weights()
    model.fit(x, y, batch_size=1000, epochs=1, shuffle=False, verbose=0)
    expected = _numpy_sgd(start, x, y, None, 1000, 0.1, [np.arange(10)])
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_default_batch_size_is_32():
    x, labels = blobs(65)
    seen = {}

    class Grab(callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.update(self.params)

    model = small_model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(x, labels, verbose=0, callbacks=[Grab()])
    assert seen["batch_size"] == 32 and seen["steps"] == 3 and seen["epochs"] == 1


def test_fit_accepts_lists_and_integer_features():
    model = Sequential([Dense(2, activation="softmax", input_dim=2)])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    history = model.fit([[0, 1], [1, 0], [1, 1]], [0, 1, 1], epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    assert np.isfinite(history.history["loss"]).all()


def test_stop_training_from_a_callback_stops_after_that_batch():
    x, labels = blobs(100)
    steps = []

    class StopAt(callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            steps.append(batch)
            if batch == 1:
                self.model.stop_training = True

    model = small_model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    history = model.fit(x, labels, epochs=5, batch_size=10, verbose=0, callbacks=[StopAt()])
    assert steps == [0, 1]
    assert history.epoch == [0] and model.optimizer.iterations == 2


def test_shards_take_each_shards_share_of_every_global_batch():
    """fit(shards=3) against the hand-written loop over an order built independently: each
    shard's rows in its own (seed, epoch, shard) order, merged by their times (j + 1/2) / size."""
    from fractions import Fraction

    x, y = _regression(n=70)
    model = _tanh_mse_model()
    start = model.get_weights()
    model.fit(x, y, batch_size=16, epochs=2, seed=4, shards=3, verbose=0)
    bounds = [(0, 23), (23, 46), (46, 70)]  # 70 rows in 3 shards: 23, 23, 24
    orders = []
    for epoch in range(2):
        items = []
        for s, (lo, hi) in enumerate(bounds):
            order = shard_order(hi - lo, 4, epoch, s, True)
            items += [(Fraction(2 * j + 1, 2 * (hi - lo)), s, lo + order[j]) for j in range(hi - lo)]
        orders.append(np.array([row for _, _, row in sorted(items)]))
    expected = _numpy_sgd(start, x, y, None, 16, 0.1, orders)
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    # One shard would visit the rows in another order: the check can fail.
    one_shard = _numpy_sgd(start, x, y, None, 16, 0.1, [shard_order(70, 4, e, 0, True) for e in range(2)])
    assert not np.allclose(model.get_weights()[0], one_shard[0], rtol=1e-8, atol=0)


def test_full_batch_training_does_not_depend_on_the_shard_count():
    x, y = _regression(n=70)
    results = []
    for shards in (1, 2, 3, 7):
        model = _tanh_mse_model()
        model.fit(x, y, batch_size=100, epochs=3, seed=1, shards=shards, verbose=0)
        results.append(model.get_weights())
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
