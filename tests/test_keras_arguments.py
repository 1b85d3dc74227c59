"""What Keras programs pass that dtrain does not take (issue 18): Keras' own arguments of fit,
evaluate, predict and compile get an error that names them and says what to do; batch streams
(generators, PyDataset-style sequences that never raise IndexError, iterables) are refused before
anything reads them, also under a 3 GiB address-space limit and with client=."""

from __future__ import annotations

import subprocess
import sys
import textwrap

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
        (lambda m, x, y: m.fit(x, y, steps_per_epoch=2), r"steps_per_epoch \(a Keras argument"),
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
def test_batch_streams_are_refused_before_anything_reads_them(stream, kind):
    model = _model()
    for call in (lambda: model.fit(stream()), lambda: model.evaluate(stream()), lambda: model.predict(stream())):
        with pytest.raises(TypeError, match=rf"x is {kind}.*It does not read batch streams yet"):
            call()
    with pytest.raises(TypeError, match=r"validation_data\[0\] is a Python generator"):
        model.fit(np.zeros((4, 3)), np.zeros((4, 2)), validation_data=(endless(), None), verbose=0)


@pytest.mark.cluster
def test_a_stream_is_refused_with_client_too():
    client = shared_client(2)
    with pytest.raises(TypeError, match="x is a batch sequence"):
        _model().fit(EndlessPyDataset(), client=client)


def test_an_endless_pydataset_is_an_error_under_a_3_gib_address_space_limit():
    code = textwrap.dedent(
        """
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))
        import numpy as np, dtrain
        class Endless:
            def __len__(self): return 10
            def __getitem__(self, i): return np.zeros((2, 3)), np.zeros((2, 2))
        model = dtrain.Sequential([dtrain.layers.Dense(2, input_dim=3)]); model.compile(loss="mse")
        try:
            model.fit(Endless())
        except TypeError as exc:
            print("refused:", exc)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused: x is a batch sequence" in done.stdout
