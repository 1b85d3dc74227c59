"""Initializers: Keras' bounds and variances on big draws, reproducibility for a seed, fans,
lookup and serialisation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dtrain import Dense, Sequential, initializers

FAN_IN, FAN_OUT = 300, 500
SHAPE = (FAN_IN, FAN_OUT)  # 150,000 draws
TRUNCATED_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2]


def draw(identifier, shape=SHAPE, seed=0):
    return initializers.get(identifier)(shape, np.random.default_rng(seed))


def assert_mean_and_variance(w, variance, mean=0.0, rel=0.02):
    assert w.dtype == np.float64 and w.shape == SHAPE
    assert abs(w.mean() - mean) < 5 * math.sqrt(variance / w.size)
    assert w.var() == pytest.approx(variance, rel=rel)


# Keras: limit = sqrt(3 * scale / n) for the uniform ones, std = sqrt(scale / n) for the
# normal ones (truncated at two std after dividing by 0.8796 so the variance stays scale / n).
UNIFORM = {
    "glorot_uniform": math.sqrt(6.0 / (FAN_IN + FAN_OUT)),
    "he_uniform": math.sqrt(6.0 / FAN_IN),
    "lecun_uniform": math.sqrt(3.0 / FAN_IN),
}
NORMAL = {
    "glorot_normal": 2.0 / (FAN_IN + FAN_OUT),
    "he_normal": 2.0 / FAN_IN,
    "lecun_normal": 1.0 / FAN_IN,
}


@pytest.mark.parametrize("name", sorted(UNIFORM))
def test_variance_scaling_uniform_bounds_and_variance(name):
    limit = UNIFORM[name]
    w = draw(name)
    assert np.abs(w).max() <= limit
    assert w.max() > 0.99 * limit and w.min() < -0.99 * limit  # the whole interval is used
    assert_mean_and_variance(w, limit**2 / 3)


@pytest.mark.parametrize("name", sorted(NORMAL))
def test_variance_scaling_truncated_normal_bounds_and_variance(name):
    variance = NORMAL[name]
    stddev = math.sqrt(variance) / TRUNCATED_STD  # of the normal before truncation
    w = draw(name)
    assert np.abs(w).max() <= 2 * stddev
    assert np.abs(w).max() > 1.99 * stddev
    assert_mean_and_variance(w, variance)


@pytest.mark.parametrize("mode, n", [("fan_in", FAN_IN), ("fan_out", FAN_OUT), ("fan_avg", (FAN_IN + FAN_OUT) / 2)])
@pytest.mark.parametrize("distribution", ["uniform", "truncated_normal", "normal", "untruncated_normal"])
def test_variance_scaling_modes_and_distributions(mode, n, distribution):
    scale = 1.7
    w = draw({"class_name": "variance_scaling", "config": {"scale": scale, "mode": mode, "distribution": distribution}})
    assert_mean_and_variance(w, scale / n)
    if distribution == "untruncated_normal":
        assert np.abs(w).max() > 3.5 * math.sqrt(scale / n)  # real normal tails


def test_random_normal_uniform_and_truncated():
    assert_mean_and_variance(draw("random_normal"), 0.05**2)
    assert_mean_and_variance(
        draw({"class_name": "random_normal", "config": {"mean": 1.0, "stddev": 0.2}}), 0.04, mean=1.0
    )
    w = draw("random_uniform")
    assert w.min() >= -0.05 and w.max() <= 0.05
    assert_mean_and_variance(w, 0.1**2 / 12)
    w = draw({"class_name": "random_uniform", "config": {"minval": 1.0, "maxval": 3.0}})
    assert w.min() >= 1.0 and w.max() <= 3.0
    assert_mean_and_variance(w, 4.0 / 12, mean=2.0)
    w = draw("truncated_normal")
    assert np.abs(w).max() <= 0.1
    assert_mean_and_variance(w, (0.05 * TRUNCATED_STD) ** 2)


@pytest.mark.parametrize(
    "name, value", [("zeros", 0.0), ("ones", 1.0), ({"class_name": "constant", "config": {"value": -2.5}}, -2.5)]
)
def test_constant_initializers(name, value):
    for shape in [(3, 4), (7,)]:
        w = draw(name, shape)
        assert w.shape == shape and w.dtype == np.float64
        assert (w == value).all()


ALL = [
    "glorot_uniform",
    "glorot_normal",
    "he_uniform",
    "he_normal",
    "lecun_uniform",
    "lecun_normal",
    "random_normal",
    "random_uniform",
    "truncated_normal",
    "zeros",
    "ones",
]


@pytest.mark.parametrize("name", ALL)
def test_reproducible_for_a_seed(name):
    a = draw(name, (40, 30), seed=123)
    np.testing.assert_array_equal(a, draw(name, (40, 30), seed=123))
    if name not in ("zeros", "ones"):
        assert not np.array_equal(a, draw(name, (40, 30), seed=124))


def test_model_weights_are_reproducible_for_a_seed():
    def weights(seed, kernel="he_normal"):
        model = Sequential([Dense(8, activation="relu", kernel_initializer=kernel), Dense(3)], device="cpu")
        model.build(5, seed=seed)
        return model.get_weights()

    for a, b in zip(weights(7), weights(7)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(weights(7)[0], weights(8)[0])
    kernel, bias = weights(7)[:2]
    assert (bias == 0).all()  # Keras' default bias initializer: zeros
    assert np.abs(weights(7, "glorot_uniform")[0]).max() <= math.sqrt(6 / (5 + 8))


def test_fans_follow_keras():
    fans = initializers._fans
    assert fans((3, 4)) == (3, 4)
    assert fans((7,)) == (7, 7)
    assert fans(()) == (1, 1)
    assert fans((2, 3, 4, 5)) == (4 * 6, 5 * 6)  # receptive field 2 * 3
    # a 1-D weight (a bias) under glorot_uniform: fan_in = fan_out = n
    assert np.abs(draw("glorot_uniform", (50,))).max() <= math.sqrt(3 / 50)


# -- lookup and serialisation ------------------------------------------------------------------
@pytest.mark.parametrize(
    "identifier, cls",
    [
        ("glorot_uniform", initializers.GlorotUniform),
        ("GlorotUniform", initializers.GlorotUniform),
        ("glorot_normal", initializers.GlorotNormal),
        ("HeNormal", initializers.HeNormal),
        ("he_uniform", initializers.HeUniform),
        ("lecun_normal", initializers.LecunNormal),
        ("LecunUniform", initializers.LecunUniform),
        ("zeros", initializers.Zeros),
        ("zero", initializers.Zeros),
        ("Ones", initializers.Ones),
        ("one", initializers.Ones),
        ("normal", initializers.RandomNormal),
        ("uniform", initializers.RandomUniform),
        ("RandomNormal", initializers.RandomNormal),
        ("TruncatedNormal", initializers.TruncatedNormal),
        ({"class_name": "VarianceScaling", "config": {"scale": 2.0, "mode": "fan_out"}}, initializers.VarianceScaling),
        ({"class_name": "random_uniform", "config": {"minval": -1.0, "maxval": 1.0}}, initializers.RandomUniform),
        ({"name": "constant", "value": 3.0}, initializers.Constant),
    ],
)
def test_get_and_serialize_roundtrip(identifier, cls):
    init = initializers.get(identifier)
    assert type(init) is cls
    again = initializers.get(initializers.serialize(init))
    assert type(again) is cls and again.get_config() == init.get_config()
    np.testing.assert_array_equal(again((6, 5), np.random.default_rng(1)), init((6, 5), np.random.default_rng(1)))


def test_serialize_uses_the_snake_case_name():
    assert initializers.serialize(initializers.get("GlorotUniform")) == "glorot_uniform"
    assert initializers.serialize(initializers.get("one")) == "ones"
    assert initializers.serialize(initializers.RandomNormal(stddev=0.1)) == {
        "class_name": "random_normal",
        "config": {"mean": 0.0, "stddev": 0.1},
    }


def test_get_returns_instances_as_is():
    init = initializers.HeNormal()
    assert initializers.get(init) is init


def test_unknown_initializer_lists_known_names():
    with pytest.raises(ValueError, match="Unknown initializer 'xavier'") as info:
        initializers.get("xavier")
    for name in (
        "glorot_uniform",
        "glorot_normal",
        "he_uniform",
        "he_normal",
        "lecun_uniform",
        "zeros",
        "ones",
        "random_normal",
        "random_uniform",
    ):
        assert name in str(info.value)
    with pytest.raises(ValueError, match="Unknown initializer 'xavier'.*glorot_uniform"):
        Dense(3, kernel_initializer="xavier")


@pytest.mark.parametrize(
    "identifier, match",
    [
        ({"class_name": "variance_scaling", "config": {"scale": -1.0}}, r"scale > 0, received scale=-1.0"),
        ({"class_name": "variance_scaling", "config": {"mode": "fan_sum"}}, r"mode in .*received mode='fan_sum'"),
        ({"class_name": "variance_scaling", "config": {"distribution": "cauchy"}}, r"received 'cauchy'"),
        (
            {"class_name": "random_normal", "config": {"stddev": -0.1}},
            r"stddev to be a non-negative number, received stddev=-0.1",
        ),
        ({"class_name": "random_uniform", "config": {"minval": 1.0, "maxval": 0.0}}, r"minval <= maxval"),
        ({"class_name": "constant", "config": {"value": "x"}}, r"value to be a finite number, received value='x'"),
        ({"class_name": "glorot_uniform", "config": {"scale": 2.0}}, r"Bad arguments for initializer 'glorot_uniform'"),
    ],
)
def test_bad_arguments_are_named(identifier, match):
    with pytest.raises(ValueError, match=match):
        initializers.get(identifier)


def test_custom_initializers_cannot_be_serialised():
    class Mine(initializers.Initializer):
        def __call__(self, shape, rng):
            return np.zeros(shape)

    with pytest.raises(ValueError, match="Cannot serialise custom initializer"):
        initializers.serialize(Mine())
