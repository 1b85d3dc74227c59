"""Activations: values, finite-difference derivatives (float64), stability for huge inputs,
in-place use as Dense uses them, no allocations in the elementwise hot paths, and lookup."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from dtrain import activations

NAMES = [None, "linear", "relu", "sigmoid", "tanh", "softmax"]
NON_LINEAR = ["relu", "sigmoid", "tanh", "softmax"]


def reference(name, z):
    """Textbook formulas in float64 (logaddexp keeps the sigmoid exact for any z)."""
    if name in (None, "linear"):
        return z.copy()
    if name == "relu":
        return np.where(z > 0, z, 0.0)
    if name == "sigmoid":
        return np.exp(-np.logaddexp(0.0, -z))
    if name == "tanh":
        return np.tanh(z)
    if name == "softmax":
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    raise AssertionError(name)


def forward(act, z):
    out = np.empty_like(z)
    act.forward(np, z, out)
    return out


def backward(act, da, a):
    out = np.empty_like(da)
    act.backward(np, da, a, out, np.empty_like(da))
    return out


def away_from_kinks(z, name, margin=0.1):
    """relu has a kink at 0: keep every entry at least ``margin`` away from it."""
    if name == "relu":
        return np.where(z >= 0, z + margin, z - margin)
    return z


def numeric_vjp(f, z, da, h=1e-4):
    """d/dz sum(da * f(z)) by the fourth-order central difference (error O(h^4))."""
    grad = np.empty_like(z)
    for idx in np.ndindex(z.shape):
        values = []
        for step in (2 * h, h, -h, -2 * h):
            zz = z.copy()
            zz[idx] += step
            values.append(float(np.sum(da * f(zz))))
        f2, f1, m1, m2 = values
        grad[idx] = (8.0 * (f1 - m1) - (f2 - m2)) / (12.0 * h)
    return grad


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_backward_matches_finite_differences(name, scale):
    rng = np.random.default_rng(1)
    act = activations.get(name)
    z = away_from_kinks(scale * rng.standard_normal((5, 4)), name)
    da = rng.standard_normal(z.shape)
    analytic = backward(act, da, forward(act, z))
    numeric = numeric_vjp(lambda zz: forward(act, zz), z, da)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_forward_matches_reference(name):
    z = np.random.default_rng(2).normal(0.0, 4.0, (7, 5))
    np.testing.assert_allclose(forward(activations.get(name), z), reference(name, z), rtol=1e-14, atol=1e-300)


def test_known_values():
    z = np.array([[-2.0, 0.0, 3.0]])
    np.testing.assert_array_equal(forward(activations.get("relu"), z), [[0.0, 0.0, 3.0]])
    np.testing.assert_allclose(
        forward(activations.get("sigmoid"), z), [[0.11920292202211755, 0.5, 0.9525741268224334]], rtol=1e-15
    )
    np.testing.assert_allclose(forward(activations.get("tanh"), z), [[np.tanh(-2.0), 0.0, np.tanh(3.0)]], rtol=1e-15)
    e = np.exp([-2.0, 0.0, 3.0])
    np.testing.assert_allclose(forward(activations.get("softmax"), z), [e / e.sum()], rtol=1e-15)


def test_sigmoid_is_accurate_in_relative_terms_over_the_whole_range():
    # 1 / (1 + exp(-z)) has no cancellation: tiny outputs keep their relative precision.
    z = np.linspace(-700.0, 700.0, 2801)
    np.testing.assert_allclose(forward(activations.get("sigmoid"), z), reference("sigmoid", z), rtol=1e-12, atol=0)


def test_softmax_is_shift_invariant_and_rows_sum_to_one():
    z = np.random.default_rng(3).normal(size=(6, 9))
    act = activations.get("softmax")
    a = forward(act, z)
    np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=1e-15)
    np.testing.assert_allclose(forward(act, z + 1234.5), a, rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("magnitude", [1e4, 1e30])
def test_huge_inputs_give_finite_outputs_and_derivatives(name, dtype, magnitude):
    # pyproject turns RuntimeWarnings (overflow, invalid) into errors: none may be raised.
    z = np.array(
        [[magnitude, -magnitude, 0.0], [-magnitude, -magnitude, -magnitude], [1.0, magnitude, 2.0]], dtype=dtype
    )
    act = activations.get(name)
    a = forward(act, z)
    assert a.dtype == dtype
    if name not in (None, "linear", "relu"):
        assert np.isfinite(a).all(), a
    if name in ("sigmoid", "softmax"):
        assert ((a >= 0) & (a <= 1)).all()
    if name == "sigmoid":
        assert a[0, 0] == 1.0 and a[0, 2] == 0.5
        assert 0.0 <= a[0, 1] < 1e-30  # exp(-magnitude), rounded to the dtype's tiniest values
    if name == "softmax":
        np.testing.assert_allclose(a, np.array([[1, 0, 0], [1 / 3, 1 / 3, 1 / 3], [0, 1, 0]], dtype), atol=1e-7)
    da = np.ones_like(z)
    d = backward(act, da, a)
    assert d.dtype == dtype
    if name not in (None, "linear", "relu") or magnitude < 1e30:
        assert np.isfinite(d).all(), d


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_place_use_as_dense_does_it(name, dtype):
    """Dense calls backward(da, a, out=da, scratch=z): output aliasing the incoming gradient
    and the logits buffer as scratch must give the same result as separate buffers."""
    rng = np.random.default_rng(4)
    act = activations.get(name)
    z = away_from_kinks(rng.standard_normal((8, 5)), name).astype(dtype)
    a = z if name in (None, "linear") else np.empty_like(z)
    act.forward(np, z, a)
    da = rng.standard_normal(z.shape).astype(dtype)
    expected = backward(act, da, a.copy())
    grad = da.copy()
    act.backward(np, grad, a, out=grad, scratch=z)  # z is overwritten, as in Dense
    np.testing.assert_allclose(grad, expected, rtol=1e-6 if dtype == np.float32 else 1e-15)


@pytest.mark.parametrize("name", ["linear", "relu", "sigmoid", "tanh", "softmax"])
def test_hot_path_allocates_nothing_of_batch_size(name):
    """forward and backward write into caller-owned buffers: nothing the size of the batch is
    allocated (softmax keeps one value per row for the max and the sum)."""
    act = activations.get(name)
    z = np.random.default_rng(5).standard_normal((2000, 200))
    a, da, out, scratch = np.empty_like(z), np.ones_like(z), np.empty_like(z), np.empty_like(z)
    act.forward(np, z, a)
    act.backward(np, da, a, out, scratch)  # warm-up
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        act.forward(np, z, a)
        act.backward(np, da, a, out, scratch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    per_row = 2 * z.shape[0] * z.itemsize if name == "softmax" else 0
    ufunc_buffer = np.getbufsize() * z.itemsize  # NumPy's fixed-size internal buffer
    assert peak <= per_row + ufunc_buffer + 4096, f"{name} allocated {peak} bytes (a batch buffer is {z.nbytes})"


# -- lookup -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "identifier, cls",
    [
        (None, activations.Linear),
        ("linear", activations.Linear),
        ("relu", activations.ReLU),
        ("ReLU", activations.ReLU),
        ("sigmoid", activations.Sigmoid),
        ("tanh", activations.Tanh),
        ("softmax", activations.Softmax),
        ({"class_name": "softmax", "config": {}}, activations.Softmax),
        ({"name": "tanh"}, activations.Tanh),
    ],
)
def test_get(identifier, cls):
    act = activations.get(identifier)
    assert type(act) is cls
    assert activations.get(activations.serialize(act)).name == act.name


def test_get_returns_instances_as_is():
    act = activations.Tanh()
    assert activations.get(act) is act


def test_unknown_activation_lists_known_names():
    with pytest.raises(ValueError, match="Unknown activation 'swishy'") as info:
        activations.get("swishy")
    for name in ("linear", "relu", "sigmoid", "softmax", "tanh"):
        assert name in str(info.value)


@pytest.mark.parametrize("bad", [3, 1.5, ["relu"], activations.ReLU])
def test_wrong_type_says_what_it_received(bad):
    with pytest.raises(TypeError, match=r"Expected an activation name.*received") as info:
        activations.get(bad)
    assert "relu" in str(info.value)
