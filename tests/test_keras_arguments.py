"""What Keras programs pass that dtrain does not take (issue 18): Keras' own arguments of fit,
evaluate, predict and compile get an error that names them and says what to do; batch streams
(generators, PyDataset-style sequences that never raise IndexError, iterables) are refused before
anything reads them, also under a 3 GiB address-space limit and with client=."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_client

import dtrain


def _model():
    model = dtrain.Sequential([dtrain.layers.Dense(2, input_dim=3)])
    model.compile(loss="mse")
    return model


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda m, x, y: m.fit(x, y, validation_batch_size=2),
            r"fit\(\) got unexpected arguments: validation_batch_size \(a Keras",
        ),
        (
            lambda m, x, y: m.fit(x, y, validation_steps=2),
            r"validation_steps \(a Keras argument dtrain does not support",
        ),
        (lambda m, x, y: m.fit(x, y, initial_epochs=2), r"initial_epochs \(not an argument of fit"),
        (lambda m, x, y: m.fit(x, y, epoch=2), r"epoch \(not an argument of fit, in Keras or in dtrain\)"),
        (lambda m, x, y: m.evaluate(x, y, steps=1), r"evaluate\(\) got unexpected arguments: steps \(a Keras"),
        (lambda m, x, y: m.predict(x, steps=1), r"predict\(\) got unexpected arguments: steps"),
        (lambda m, x, y: m.compile(loss="mse", jit_compile=True), r"compile\(\) got unexpected arguments: jit_compile"),
        (lambda m, x, y: m.compile(loss="mse", loss_weights=[1.0]), r"loss_weights \(a Keras argument"),
    ],
)
def test_keras_arguments_dtrain_lacks_are_named(call, match):
    model = _model()
    model.build(3, seed=0)
    before = model.get_weights()
    with pytest.raises(TypeError, match=match):
        call(model, np.zeros((4, 3)), np.zeros((4, 2)))
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def endless():
    while True:
        yield np.zeros((2, 3)), np.zeros((2, 2))


class EndlessPyDataset:
    """Keras' PyDataset protocol without an end: __getitem__ never raises IndexError."""

    def __len__(self):
        return 10

    def __getitem__(self, index):
        return np.zeros((2, 3)), np.zeros((2, 2))


@pytest.mark.parametrize(
    "stream, kind",
    [(endless, "a Python generator"), (EndlessPyDataset, "a batch sequence"), (lambda: iter([1, 2]), "an iterator")],
)
def test_batch_streams_are_refused_where_rows_must_be_indexed_before_anything_reads_them(stream, kind):
    """fit reads a stream batch by batch in one process (tests/test_streams.py); evaluate,
    predict, validation data and y need rows they can index."""
    model = _model()
    model.build(3, seed=0)
    for call in (lambda: model.evaluate(stream()), lambda: model.predict(stream())):
        with pytest.raises(TypeError, match=rf"x is {kind}.*it needs rows it can index"):
            call()
    with pytest.raises(TypeError, match=r"validation_data\[0\] is a Python generator"):
        model.fit(np.zeros((4, 3)), np.zeros((4, 2)), validation_data=(endless(), None), verbose=0)
    with pytest.raises(TypeError, match=rf"y is {kind}"):
        model.fit(np.zeros((4, 3)), stream(), verbose=0)


@pytest.mark.cluster
def test_a_stream_is_refused_with_client_too():
    client = shared_client(2)
    with pytest.raises(TypeError, match="x is a batch sequence.*cannot be sharded over a cluster"):
        _model().fit(EndlessPyDataset(), client=client)
