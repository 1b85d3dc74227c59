"""Every elementwise activation of Keras 3: values against real Keras (float64), derivatives
against finite differences (float64), finite results for huge inputs, the in-place use Dense
makes of them, lookup by name, config and function, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from keras_oracle import keras_or_skip
from test_activations import numeric_vjp

import dtrain
from dtrain import activations

# (name or config, Keras callable name, Keras arguments); kinks avoided by the inputs below
CASES = [
    ("relu", "relu", {}),
    ({"class_name": "relu", "config": {"negative_slope": 0.1, "max_value": 4.0, "threshold": 0.5}}, "relu",
     {"negative_slope": 0.1, "max_value": 4.0, "threshold": 0.5}),
    ("leaky_relu", "leaky_relu", {}),
    ({"class_name": "leaky_relu", "config": {"negative_slope": 0.05}}, "leaky_relu", {"negative_slope": 0.05}),
    ("relu6", "relu6", {}),
    ("elu", "elu", {}),
    ({"class_name": "elu", "config": {"alpha": 0.5}}, "elu", {"alpha": 0.5}),
    ("selu", "selu", {}),
    ("celu", "celu", {}),
    ({"class_name": "celu", "config": {"alpha": 2.0}}, "celu", {"alpha": 2.0}),
    ("softplus", "softplus", {}),
    ("softsign", "softsign", {}),
    ("silu", "silu", {}),
    ("swish", "silu", {}),
    ("gelu", "gelu", {}),
    ({"class_name": "gelu", "config": {"approximate": True}}, "gelu", {"approximate": True}),
    ("hard_sigmoid", "hard_sigmoid", {}),
    ("hard_silu", "hard_silu", {}),
    ("hard_swish", "hard_silu", {}),
    ("mish", "mish", {}),
    ("exponential", "exponential", {}),
    ("log_softmax", "log_softmax", {}),
    ("log_sigmoid", "log_sigmoid", {}),
    ("tanh_shrink", "tanh_shrink", {}),
    ("hard_tanh", "hard_tanh", {}),
    ("soft_shrink", "soft_shrink", {}),
    ("hard_shrink", "hard_shrink", {}),
    ("squareplus", "squareplus", {}),
    ("sparse_plus", "sparse_plus", {}),
    ("sparse_sigmoid", "sparse_sigmoid", {}),
    ({"class_name": "threshold", "config": {"threshold": 0.3, "default_value": -1.0}}, "threshold",
     {"threshold": 0.3, "default_value": -1.0}),
    ("sigmoid", "sigmoid", {}),
    ("tanh", "tanh", {}),
    ("softmax", "softmax", {}),
    ("linear", "linear", {}),
]  # fmt: skip
KINKS = [0.0, 0.5, -0.5, 1.0, -1.0, 3.0, -3.0, 4.0, 6.0, 0.3]


def _ids(case):
    return case if isinstance(case, str) else f"{case['class_name']}{case['config']}"


def inputs(shape=(6, 7), seed=0, scale=3.0):
    """Normal inputs kept at least 0.02 away from every kink of the functions above."""
    z = scale * np.random.default_rng(seed).standard_normal(shape)
    for kink in KINKS:
        close = np.abs(z - kink) < 0.02
        z[close] = kink + 0.05 * np.sign(z[close] - kink + 1e-12)
    return z


def forward(act, z):
    out = np.empty_like(z)
    act.forward(np, z, out)
    return out


def backward(act, da, z):
    a = forward(act, z)
    out = np.empty_like(da)
    act.backward(np, da, a, out, np.empty_like(da), z=z.copy())
    return out


@pytest.mark.parametrize("case", [c[0] for c in CASES], ids=_ids)
def test_derivative_matches_finite_differences(case):
    act = activations.get(case)
    z = inputs()
    da = np.random.default_rng(1).standard_normal(z.shape)
    numeric = numeric_vjp(lambda zz: forward(act, zz), z, da, h=1e-5)
    np.testing.assert_allclose(backward(act, da, z), numeric, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("case, keras_name, kwargs", CASES, ids=[_ids(c[0]) for c in CASES])
def test_values_match_keras(case, keras_name, kwargs):
    keras = keras_or_skip()
    z = inputs(seed=3)
    theirs = np.asarray(getattr(keras.activations, keras_name)(keras.ops.convert_to_tensor(z), **kwargs))
    np.testing.assert_allclose(forward(activations.get(case), z), theirs, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("case", [c[0] for c in CASES if c[0] != "exponential"], ids=_ids)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_inputs_give_finite_values_and_derivatives(case, dtype):
    """(pyproject makes RuntimeWarnings errors: no overflow may even be warned about.)"""
    act = activations.get(case)
    z = np.array([[1e30, -1e30, 0.0, 1e4, -1e4, 88.0, -88.0]], dtype=dtype)
    a = forward(act, z)
    assert a.dtype == dtype and np.isfinite(a).all(), a
    out = np.empty_like(z)
    act.backward(np, np.ones_like(z), a, out, np.empty_like(z), z=z)
    assert np.isfinite(out).all(), out


@pytest.mark.parametrize("case", [c[0] for c in CASES], ids=_ids)
def test_in_place_as_layers_use_them(case):
    """Dense and Activation call backward(da, a, out=da, ...), with z passed where needed."""
    act = activations.get(case)
    z = inputs(seed=4)
    da = np.random.default_rng(5).standard_normal(z.shape)
    expected = backward(act, da, z)
    a = forward(act, z)
    grad = da.copy()
    act.backward(np, grad, a, out=grad, scratch=np.empty_like(z) if act.needs_input else z.copy(), z=z)
    np.testing.assert_allclose(grad, expected, rtol=1e-15)


def test_functions_compute_and_serve_as_activation_arguments():
    z = inputs((3, 4))
    np.testing.assert_allclose(dtrain.activations.elu(z, alpha=0.5), forward(activations.ELU(alpha=0.5), z))
    layer = dtrain.layers.Dense(3, activation=dtrain.activations.gelu)
    assert isinstance(layer.activation, activations.GELU)
    assert activations.serialize(activations.get({"class_name": "elu", "config": {"alpha": 0.5}})) == {
        "class_name": "elu",
        "config": {"alpha": 0.5},
    }
    assert activations.serialize(activations.get("swish")) == "silu"


def test_a_python_function_is_refused_with_what_is_supported():
    with pytest.raises(ValueError, match="no automatic differentiation.*Known activations: celu, elu"):
        dtrain.layers.Dense(3, activation=lambda x: x * 2)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="Unknown activation 'swishy'. Known activations: celu"):
        activations.get("swishy")
