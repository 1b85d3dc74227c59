"""The array backend: NumPy on CPU, CuPy on a GPU, chosen per process or per model, with a
clear error when a GPU is asked for and there is none."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import blobs, small_model

import dtrain
from dtrain import backend
from dtrain.models import Sequential


def test_cpu_backend_is_numpy():
    b = dtrain.get_backend("cpu")
    assert b.device == "cpu" and b.xp is np and b.name == "numpy"
    model = small_model(device="cpu")
    assert model.device == "cpu" and model.backend.xp is np
    x, labels = blobs(40)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(x, labels, verbose=0)
    assert isinstance(model.params, np.ndarray)


def test_auto_picks_what_is_there():
    b = dtrain.get_backend("auto")
    assert b.device == ("gpu" if dtrain.gpu_available() else "cpu")


@pytest.mark.skipif(dtrain.gpu_available(), reason="this machine has a GPU")
def test_gpu_without_a_gpu_says_why_and_what_to_do():
    with pytest.raises(RuntimeError) as info:
        dtrain.get_backend("gpu")
    message = str(info.value)
    assert "device='gpu'" in message
    assert "CuPy" in message  # why: CuPy missing or no CUDA device
    assert "device='cpu'" in message and "dtrain[gpu]" in message  # what to do
    with pytest.raises(RuntimeError, match="no GPU can be used"):
        Sequential(device="gpu")


def test_gpu_error_for_each_reason(monkeypatch):
    """The reason recorded by the probe is the one shown (no CuPy / no CUDA device)."""
    for reason in (
        "CuPy could not be imported (ModuleNotFoundError: No module named 'cupy')",
        "CuPy is installed but no CUDA device is visible",
    ):
        monkeypatch.setattr(backend, "_cupy_probe", (None, reason))
        assert not dtrain.gpu_available()
        assert dtrain.get_backend("auto").device == "cpu"
        with pytest.raises(RuntimeError, match=reason.replace("(", r"\(").replace(")", r"\)")):
            dtrain.get_backend("gpu")


@pytest.mark.parametrize("device", ["tpu", "cuda", "GPU ", "", 1])
def test_bad_device_names(device):
    with pytest.raises(ValueError, match="Unknown device") as info:
        dtrain.get_backend(device)
    assert "'auto', 'cpu', 'gpu'" in str(info.value)
    with pytest.raises(ValueError, match="Unknown device"):
        dtrain.set_default_device(device)


def test_default_device_per_process():
    dtrain.set_default_device("cpu")
    assert backend.get_default_device() == "cpu"
    assert Sequential().device == "cpu"
    assert dtrain.get_backend().device == "cpu"


def test_cupy_is_not_imported_unless_a_gpu_is_asked_for():
    code = (
        "import sys, numpy as np, dtrain\n"
        "from dtrain.layers import Dense\n"
        "m = dtrain.Sequential([Dense(2, input_dim=3)], device='cpu')\n"
        "m.compile(optimizer='sgd', loss='mse')\n"
        "m.fit(np.ones((4, 3)), np.ones((4, 2)), verbose=0)\n"
        "print('cupy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_only_the_backend_module_mentions_cupy_imports():
    import pathlib
    import re

    package = pathlib.Path(dtrain.__file__).parent
    importers = sorted(
        p.name for p in package.rglob("*.py") if re.search(r"^\s*(import cupy|from cupy)", p.read_text(), re.M)
    )
    assert importers == ["backend.py"]


def test_to_numpy_and_asarray_on_cpu():
    a = np.arange(6.0).reshape(2, 3)
    assert backend.to_numpy(a) is a
    np.testing.assert_array_equal(backend.to_numpy([[1, 2]]), np.array([[1, 2]]))
    b = dtrain.get_backend("cpu")
    assert b.asarray(a) is a
    assert b.asarray(a, dtype=np.float32).dtype == np.float32
    b.synchronize()  # a no-op on CPU


def test_bad_device_from_the_environment_names_the_variable():
    code = "import dtrain\ntry:\n    dtrain.Sequential()\nexcept ValueError as e:\n    print(e)\n"
    env = {**os.environ, "DTRAIN_DEVICE": "tpu"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert "Unknown device 'tpu'" in out and "DTRAIN_DEVICE" in out
    env["DTRAIN_DEVICE"] = "cpu"
    code = "import dtrain\nprint(dtrain.Sequential().device)\n"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout.strip()
        == "cpu"
    )
