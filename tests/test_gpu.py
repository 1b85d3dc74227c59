"""NumPy and CuPy give the same results. Marked ``gpu``: skipped where CuPy sees no CUDA device
(tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import blobs, one_hot

import dtrain
from dtrain import optimizers
from dtrain.layers import Dense
from dtrain.models import Sequential

pytestmark = pytest.mark.gpu


def _model(device, dtype="float32", optimizer=None, loss="sparse_categorical_crossentropy"):
    model = Sequential(
        [Dense(32, activation="relu", input_dim=20), Dense(16, activation="tanh"), Dense(3, activation="softmax")],
        device=device,
        dtype=dtype,
    )
    model.compile(optimizer=optimizer or optimizers.Adam(0.01), loss=loss, metrics=["accuracy"])
    return model


def _inside(view, flat) -> bool:
    start, end = flat.data.ptr, flat.data.ptr + flat.nbytes
    return start <= view.data.ptr and view.data.ptr + view.nbytes <= end


def test_gpu_model_lives_on_the_gpu():
    import cupy

    model = _model("gpu")
    model.build(seed=0)
    assert model.device == "gpu" and model.backend.xp is cupy
    assert isinstance(model.params, cupy.ndarray) and isinstance(model.grads, cupy.ndarray)
    for layer in model.layers:
        assert isinstance(layer.kernel, cupy.ndarray)
        assert _inside(layer.kernel, model.params) and _inside(layer.bias, model.params)
        assert _inside(layer.kernel_grad, model.grads) and _inside(layer.bias_grad, model.grads)
    assert all(type(w) is np.ndarray for w in model.get_weights())
    assert dtrain.get_backend("auto").device == "gpu"


def test_same_seed_same_initial_weights_on_cpu_and_gpu():
    cpu, gpu = _model("cpu"), _model("gpu")
    cpu.build(seed=3)
    gpu.build(seed=3)
    for a, b in zip(cpu.get_weights(), gpu.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype, rtol, atol", [("float32", 2e-3, 2e-4), ("float64", 1e-9, 1e-12)])
def test_fit_gives_the_same_weights_and_predictions(dtype, rtol, atol):
    x, labels = blobs(256, features=20)
    results = []
    for device in ("cpu", "gpu"):
        model = _model(device, dtype=dtype)
        history = model.fit(x, labels, epochs=3, batch_size=32, verbose=0, seed=5, validation_split=0.25)
        results.append((model.get_weights(), model.predict(x), history.history, model.evaluate(x, labels)))
    (w_cpu, p_cpu, h_cpu, e_cpu), (w_gpu, p_gpu, h_gpu, e_gpu) = results
    for a, b in zip(w_cpu, w_gpu):
        assert a.dtype == b.dtype == np.dtype(dtype)
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    np.testing.assert_allclose(p_cpu, p_gpu, rtol=rtol, atol=atol)
    for key in h_cpu:
        np.testing.assert_allclose(h_cpu[key], h_gpu[key], rtol=rtol * 10, atol=atol)
    np.testing.assert_allclose(e_cpu, e_gpu, rtol=rtol * 10, atol=atol)


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda: optimizers.SGD(0.05, momentum=0.9, nesterov=True),
        lambda: optimizers.RMSprop(0.01),
    ],
)
def test_optimizers_agree_on_cpu_and_gpu(optimizer):
    x, labels = blobs(128, features=20)
    y = one_hot(labels, 3)
    weights = []
    for device in ("cpu", "gpu"):
        model = _model(device, dtype="float64", optimizer=optimizer(), loss="categorical_crossentropy")
        model.fit(x, y, epochs=2, batch_size=16, verbose=0, seed=1)
        weights.append(model.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_saved_on_gpu_loads_on_cpu_and_back(tmp_path):
    x, labels = blobs(64, features=20)
    gpu = _model("gpu")
    gpu.fit(x, labels, epochs=1, verbose=0, seed=0)
    gpu.save(tmp_path / "m.safetensors")
    cpu = dtrain.load_model(tmp_path / "m.safetensors", device="cpu")
    assert cpu.device == "cpu"
    for a, b in zip(cpu.get_weights(), gpu.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(cpu.predict(x), gpu.predict(x), rtol=1e-4, atol=1e-6)
    again = dtrain.load_model(tmp_path / "m.safetensors", device="gpu")
    assert again.device == "gpu" and again.optimizer.iterations == gpu.optimizer.iterations
    np.testing.assert_array_equal(again.predict(x), gpu.predict(x))


def test_gpu_accepts_cupy_inputs():
    import cupy

    x, labels = blobs(64, features=20)
    model = _model("gpu")
    model.fit(cupy.asarray(x), cupy.asarray(labels), epochs=1, verbose=0, seed=0)
    out = model.predict(cupy.asarray(x))
    assert type(out) is np.ndarray and out.shape == (64, 3)


def test_a_survivors_copy_does_not_wait_behind_the_current_stream():
    """The state a rank keeps when its run fails is copied on a stream of its own: work still
    queued on the current stream (after a failure, a collective that may never end; here a long
    sleep kernel) does not hold it up."""
    import time

    import cupy

    from dtrain.backend import host_copy_aside

    values = cupy.arange(1 << 20, dtype=cupy.float32)
    cupy.cuda.get_current_stream().synchronize()
    cycles = int(cupy.cuda.runtime.getDeviceProperties(0)["clockRate"]) * 1000 * 3  # ~3 s of spinning
    spin = cupy.RawKernel(
        'extern "C" __global__ void spin(long long n) { long long t = clock64(); while (clock64() - t < n) {} }',
        "spin",
    )
    spin((1,), (1,), (cupy.int64(cycles),))  # queued on the current stream
    start = time.monotonic()
    copy = host_copy_aside(values)
    assert time.monotonic() - start < 1.0
    np.testing.assert_array_equal(copy, np.arange(1 << 20, dtype=np.float32))
    cupy.cuda.get_current_stream().synchronize()
