"""Real Keras 3 as the oracle: the JAX backend on the CPU, in float64 with none of Keras'
downcasts (Keras computes float64 matmuls in float32 unless "float64" is taken out of
``BIT64_TO_BIT32_DTYPE`` in ``keras/src/backend/common/dtypes.py``; JAX needs x64 enabled).

    keras = keras_or_skip()       # in a test: skips where Keras (the test extra) is absent

Importing this module sets the backend before Keras is imported anywhere in the process."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def keras_or_skip():
    pytest.importorskip("jax", reason="the Keras oracle needs JAX (pip install '.[test]')")
    import jax

    jax.config.update("jax_enable_x64", True)
    keras = pytest.importorskip("keras", reason="the Keras oracle needs Keras 3 (pip install '.[test]')")
    if keras.backend.backend() != "jax":
        pytest.skip(
            f"the Keras oracle runs on the JAX backend; this process imported Keras on {keras.backend.backend()}"
        )
    from keras.src.backend.common import dtypes

    dtypes.BIT64_TO_BIT32_DTYPE.pop("float64", None)
    keras.config.set_floatx("float64")
    return keras


def max_relative_difference(ours, theirs) -> float:
    """The largest |a - b| / max(|b|, tiny) over lists of arrays."""
    worst = 0.0
    for a, b in zip(ours, theirs):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert a.shape == b.shape, (a.shape, b.shape)
        scale = np.maximum(np.abs(b), 1e-300)
        worst = max(worst, float(np.max(np.abs(a - b) / scale)) if a.size else 0.0)
    return worst
