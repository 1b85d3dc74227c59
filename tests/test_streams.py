"""fit on batch streams in one process (issue 18): a PyDataset-style sequence and a generator,
batch by batch, against real Keras 3 per epoch; bounded however endless the stream; refused with
client= and wherever rows must be indexed; never read whole."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from conftest import shared_client
from keras_oracle import keras_or_skip, max_relative_difference

import dtrain
from dtrain.layers import Dense, Dropout, Input

rng = np.random.default_rng(0)
X, LABELS, W = rng.standard_normal((70, 5)), rng.integers(0, 3, 70), rng.uniform(0.2, 2.0, 70)
BOUNDS = [0, 16, 32, 48, 64, 70]  # five batches, the last one short


def batch(i, weighted):
    lo, hi = BOUNDS[i], BOUNDS[i + 1]
    return (X[lo:hi], LABELS[lo:hi], W[lo:hi]) if weighted else (X[lo:hi], LABELS[lo:hi])


class Batches:
    """Keras' PyDataset protocol: __len__ and __getitem__ give batches; on_epoch_end after each epoch."""

    def __init__(self, weighted=False):
        self.weighted, self.epochs_ended = weighted, 0

    def __len__(self):
        return 5

    def __getitem__(self, i):
        return batch(i, self.weighted)

    def on_epoch_end(self):
        self.epochs_ended += 1


def generator(weighted=False):
    while True:
        for i in range(5):
            yield batch(i, weighted)


def _pair(keras):
    K = keras.layers
    theirs = keras.Sequential([K.Input((5,)), K.Dense(8, activation="tanh"), K.Dense(3, activation="softmax")])
    theirs.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    ours = dtrain.Sequential(
        [Input(shape=(5,)), Dense(8, activation="tanh"), Dense(3, activation="softmax")], dtype="float64"
    )
    ours.compile(optimizer=dtrain.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    ours.set_weights(theirs.get_weights())
    return theirs, ours


@pytest.mark.parametrize("kind", ["sequence", "weighted sequence", "generator", "weighted generator"])
def test_streams_train_as_keras_trains_on_them(kind):
    keras = keras_or_skip()
    keras.utils.set_random_seed(0)
    theirs, ours = _pair(keras)
    weighted = "weighted" in kind
    if "sequence" in kind:

        class KerasBatches(keras.utils.PyDataset):
            def __init__(self):
                super().__init__()

            def __len__(self):
                return 5

            def __getitem__(self, i):
                return batch(i, weighted)

        theirs_data, ours_data, kwargs = KerasBatches(), Batches(weighted), {"shuffle": False}
    else:
        theirs_data, ours_data = generator(weighted), generator(weighted)
        kwargs = {"steps_per_epoch": 5, "shuffle": False}
    validation = (X[:20], LABELS[:20])
    for _ in range(3):
        h_theirs = theirs.fit(theirs_data, epochs=1, verbose=0, validation_data=validation, **kwargs)
        h_ours = ours.fit(ours_data, epochs=1, verbose=0, validation_data=validation, **kwargs)
        assert max_relative_difference(ours.get_weights(), theirs.get_weights()) < 1e-10
        for key, values in h_theirs.history.items():
            np.testing.assert_allclose(h_ours.history[key], values, rtol=1e-9, err_msg=key)
    if "sequence" in kind:
        assert ours_data.epochs_ended == 3


def test_an_endless_sequence_trains_len_batches_an_epoch_and_dropout_draws_per_row():
    class Endless(Batches):  # never raises IndexError: len() bounds the epoch
        def __getitem__(self, i):
            return batch(i % 5, False)

    model = dtrain.Sequential([Input(shape=(5,)), Dense(8), Dropout(0.5), Dense(3, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy")
    history = model.fit(Endless(), epochs=2, verbose=0, seed=1)  # (shuffled batch order: any index is a batch)
    assert model.optimizer.iterations == 10 and len(history.history["loss"]) == 2
    again = dtrain.Sequential([Input(shape=(5,)), Dense(8), Dropout(0.5), Dense(3, activation="softmax")])
    again.compile(loss="sparse_categorical_crossentropy")
    again.fit(Endless(), epochs=2, verbose=0, seed=1)
    for a, b in zip(again.get_weights(), model.get_weights()):  # the seed fixes the order and the masks
        np.testing.assert_array_equal(a, b)


def test_an_endless_sequence_is_bounded_under_a_3_gib_address_space_limit():
    code = textwrap.dedent(
        """
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))
        import numpy as np, dtrain
        class Endless:
            def __len__(self): return 10
            def __getitem__(self, i): return np.ones((4, 3)), np.zeros((4, 2))
        model = dtrain.Sequential([dtrain.layers.Dense(2, input_dim=3)]); model.compile(loss="mse")
        model.fit(Endless(), epochs=3, verbose=0)
        print("steps:", model.optimizer.iterations)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "steps: 30" in done.stdout


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m: m.fit(generator()), ValueError, r"pass steps_per_epoch"),
        (lambda m: m.fit(Batches(), LABELS), ValueError, r"leave y out"),
        (lambda m: m.fit(Batches(), sample_weight=W), ValueError, r"give the sample weights in its batches"),
        (lambda m: m.fit(Batches(), steps_per_epoch=6), ValueError, r"more than the 5 batches"),
        (lambda m: m.fit(iter([batch(0, False)]), steps_per_epoch=2), ValueError, r"ran out of batches after 1"),
        (lambda m: m.fit(Batches(), validation_split=0.2), ValueError, r"validation_split needs arrays"),
        (lambda m: m.fit(Batches(), checkpoint_dir="ckpt"), ValueError, r"read again from a position"),
        (lambda m: m.fit(X, LABELS, steps_per_epoch=2), ValueError, r"steps_per_epoch applies to a generator"),
        (lambda m: m.fit(iter([(1, 2, 3, 4)]), steps_per_epoch=1), ValueError, r"a batch is a tuple \(x, y\)"),
        (lambda m: m.evaluate(Batches()), TypeError, r"x is a batch sequence.*it needs rows it can index"),
    ],
)
def test_what_a_stream_cannot_do_is_a_clear_error(call, error, match):
    model = dtrain.Sequential([Input(shape=(5,)), Dense(3, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy")
    with pytest.raises(error, match=match):
        call(model)


def test_shuffle_true_with_a_generator_warns_that_its_order_is_kept():
    def model():
        m = dtrain.Sequential([Input(shape=(5,)), Dense(3, activation="softmax")])
        m.compile(loss="sparse_categorical_crossentropy")
        return m

    shuffled, kept = model(), model()
    kept.set_weights(shuffled.get_weights())
    with pytest.warns(UserWarning, match=r"shuffle=True is ignored: x is generator"):
        shuffled.fit(generator(False), steps_per_epoch=5, epochs=2, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept.fit(generator(False), steps_per_epoch=5, epochs=2, verbose=0, shuffle=False)
    for a, b in zip(shuffled.get_weights(), kept.get_weights()):  # the generator's order either way
        np.testing.assert_array_equal(a, b)


@pytest.mark.cluster
def test_a_stream_is_refused_with_client():
    model = dtrain.Sequential([Input(shape=(5,)), Dense(3, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy")
    with pytest.raises(TypeError, match=r"cannot be sharded over a cluster's workers"):
        model.fit(Batches(), client=shared_client(2))


def test_dtrain_utils_pydataset_is_keras_base_class():
    class Digits(dtrain.utils.PyDataset):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)

        def __len__(self):
            return 5

        def __getitem__(self, i):
            return batch(i, False)

    model = dtrain.Sequential([Input(shape=(5,)), Dense(3, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy")
    model.fit(Digits(), epochs=2, verbose=0)
    assert model.optimizer.iterations == 10
    with pytest.raises(ValueError, match=r"reads the batches in the training thread"):
        Digits(workers=4)
