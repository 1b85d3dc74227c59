"""Optimizers: Keras' defaults, hand-computed steps from Keras' update formulas (written out
here in plain float64 NumPy, independently of the implementation), in-place updates with no
allocation, state save/restore, and lookup by name, config dict or instance."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from dtrain import Dense, Sequential, optimizers

W0 = np.array([1.0, -2.0, 0.5, 3.0, -0.25])
GRADS = [
    np.array([0.5, -1.0, 0.0, 2.0, 0.1]),
    np.array([-0.3, 0.2, 1.5, 2.0, -0.1]),
    np.array([0.1, 0.4, -2.0, -1.0, 0.3]),
]


def run(opt, steps=3, dtype=np.float64):
    w = W0.astype(dtype)
    opt.build(np, w)
    history = []
    for g in GRADS[:steps]:
        opt.apply(w, g.astype(dtype))
        history.append(w.copy())
    return history


# -- Keras' defaults ----------------------------------------------------------------------------
def test_defaults_match_keras():
    sgd = optimizers.SGD()
    assert (sgd.learning_rate, sgd.momentum, sgd.nesterov) == (0.01, 0.0, False)
    adam = optimizers.Adam()
    assert (adam.learning_rate, adam.beta_1, adam.beta_2, adam.epsilon) == (0.001, 0.9, 0.999, 1e-7)
    rms = optimizers.RMSprop()
    assert (rms.learning_rate, rms.rho, rms.momentum, rms.epsilon, rms.centered) == (0.001, 0.9, 0.0, 1e-7, False)
    for name, cls in [("sgd", optimizers.SGD), ("adam", optimizers.Adam), ("rmsprop", optimizers.RMSprop)]:
        assert optimizers.get(name).get_config() == cls().get_config()


# -- one step by hand ---------------------------------------------------------------------------
def test_sgd_one_step_literal_numbers():
    w = np.array([1.0, -2.0])
    opt = optimizers.SGD(learning_rate=0.1)
    opt.build(np, w)
    opt.apply(w, np.array([0.5, -1.0]))
    np.testing.assert_allclose(w, [0.95, -1.9], rtol=1e-15)


def test_sgd_with_momentum_literal_numbers():
    w = np.array([1.0])
    opt = optimizers.SGD(learning_rate=0.1, momentum=0.9)
    opt.build(np, w)
    opt.apply(w, np.array([1.0]))  # v = -0.1, w = 0.9
    np.testing.assert_allclose(w, [0.9], rtol=1e-15)
    opt.apply(w, np.array([1.0]))  # v = 0.9 * -0.1 - 0.1 = -0.19, w = 0.71
    np.testing.assert_allclose(w, [0.71], rtol=1e-15)


def test_sgd_with_nesterov_literal_numbers():
    w = np.array([1.0])
    opt = optimizers.SGD(learning_rate=0.1, momentum=0.9, nesterov=True)
    opt.build(np, w)
    opt.apply(w, np.array([1.0]))  # v = -0.1, w = 1 + 0.9 * -0.1 - 0.1 = 0.81
    np.testing.assert_allclose(w, [0.81], rtol=1e-15)
    opt.apply(w, np.array([1.0]))  # v = -0.19, w = 0.81 + 0.9 * -0.19 - 0.1 = 0.539
    np.testing.assert_allclose(w, [0.539], rtol=1e-14)


@pytest.mark.parametrize("lr", [0.01, 0.3])
def test_sgd_plain(lr):
    expected, w = [], W0.copy()
    for g in GRADS:
        w = w - lr * g
        expected.append(w)
    np.testing.assert_allclose(run(optimizers.SGD(learning_rate=lr)), expected, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("momentum", [0.5, 0.9])
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum(momentum, nesterov):
    lr = 0.05
    expected, w, v = [], W0.copy(), np.zeros_like(W0)
    for g in GRADS:
        v = momentum * v - lr * g
        w = w + momentum * v - lr * g if nesterov else w + v
        expected.append(w)
    np.testing.assert_allclose(
        run(optimizers.SGD(learning_rate=lr, momentum=momentum, nesterov=nesterov)), expected, rtol=1e-14, atol=1e-15
    )


def test_sgd_nesterov_without_momentum_is_plain_sgd():
    np.testing.assert_allclose(run(optimizers.SGD(0.1, nesterov=True)), run(optimizers.SGD(0.1)), rtol=0, atol=0)


def test_adam_first_step_literal_numbers():
    # t = 1: m = 0.1 g, v = 0.001 g^2, alpha = lr sqrt(0.001) / 0.1, so the step is
    # lr * g / (|g| + eps / sqrt(0.001)): about lr * sign(g)
    w = np.array([1.0, 1.0])
    opt = optimizers.Adam(learning_rate=0.1)
    opt.build(np, w)
    g = np.array([2.0, -0.5])
    opt.apply(w, g)
    np.testing.assert_allclose(w, 1.0 - 0.1 * g / (np.abs(g) + 1e-7 / np.sqrt(0.001)), rtol=1e-14)
    np.testing.assert_allclose(w, [0.9, 1.1], rtol=1e-6)


@pytest.mark.parametrize(
    "lr, beta_1, beta_2, epsilon", [(0.001, 0.9, 0.999, 1e-7), (0.1, 0.5, 0.8, 1e-3), (0.02, 0.0, 0.99, 1e-7)]
)
def test_adam_three_steps_with_bias_correction(lr, beta_1, beta_2, epsilon):
    expected, w = [], W0.copy()
    m, v = np.zeros_like(W0), np.zeros_like(W0)
    for t, g in enumerate(GRADS, start=1):
        m = m + (1 - beta_1) * (g - m)
        v = v + (1 - beta_2) * (g * g - v)
        alpha = lr * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        w = w - alpha * m / (np.sqrt(v) + epsilon)
        expected.append(w)
    opt = optimizers.Adam(learning_rate=lr, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon)
    np.testing.assert_allclose(run(opt), expected, rtol=1e-14, atol=1e-15)
    assert opt.iterations == 3


@pytest.mark.parametrize("momentum", [0.0, 0.7])
@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("rho", [0.9, 0.5])
def test_rmsprop_three_steps(momentum, centered, rho):
    lr, eps = 0.01, 1e-7
    expected, w = [], W0.copy()
    r, a, u = np.zeros_like(W0), np.zeros_like(W0), np.zeros_like(W0)
    for g in GRADS:
        r = rho * r + (1 - rho) * g * g
        if centered:
            a = rho * a + (1 - rho) * g
            denominator = r - a * a + eps
        else:
            denominator = r + eps
        increment = lr * g / np.sqrt(denominator)
        if momentum:
            u = momentum * u + increment
            w = w - u
        else:
            w = w - increment
        expected.append(w)
    opt = optimizers.RMSprop(learning_rate=lr, rho=rho, momentum=momentum, centered=centered)
    np.testing.assert_allclose(run(opt), expected, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("g0", [1.0, 10.0, 1000.0])
def test_centered_rmsprop_with_a_steady_gradient_stays_finite(dtype, g0):
    """r - a^2 -> 0 for a constant gradient; float32 rounding must not take it below 0 (sqrt
    of a negative: NaN, and an 'invalid value' RuntimeWarning, an error under pytest here)."""
    opt = optimizers.RMSprop(centered=True)
    w = np.zeros(1000, dtype)
    g = (g0 * (1 + np.linspace(0, 1e-3, 1000))).astype(dtype)
    opt.build(np, w)
    for _ in range(300):
        opt.apply(w, g)
    assert np.isfinite(w).all()


def test_rmsprop_first_step_literal_numbers():
    w = np.array([1.0])
    opt = optimizers.RMSprop(learning_rate=0.1)
    opt.build(np, w)
    opt.apply(w, np.array([2.0]))  # r = 0.1 * 4 = 0.4; w = 1 - 0.1 * 2 / sqrt(0.4 + 1e-7)
    np.testing.assert_allclose(w, [1.0 - 0.2 / np.sqrt(0.4 + 1e-7)], rtol=1e-15)


CONFIGS = [
    ("sgd", {}),
    ("sgd", {"momentum": 0.9}),
    ("sgd", {"momentum": 0.9, "nesterov": True}),
    ("adam", {}),
    ("rmsprop", {}),
    ("rmsprop", {"momentum": 0.5}),
    ("rmsprop", {"centered": True, "momentum": 0.5}),
]


def make(name, config):
    return optimizers.get({"class_name": name, "config": dict(config, learning_rate=0.05)})


@pytest.mark.parametrize("name, config", CONFIGS)
def test_float32_parameters_stay_float32_and_agree_with_float64(name, config):
    w32 = run(make(name, config), dtype=np.float32)
    w64 = run(make(name, config), dtype=np.float64)
    assert all(w.dtype == np.float32 for w in w32)
    np.testing.assert_allclose(w32, w64, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name, config", CONFIGS)
def test_update_is_in_place_and_allocates_nothing(name, config):
    rng = np.random.default_rng(0)
    w = rng.normal(size=200_000)
    g = rng.normal(size=w.size)
    opt = make(name, config)
    opt.build(np, w)
    address = w.__array_interface__["data"][0]
    opt.apply(w, g)  # warm-up
    # tracemalloc also counts other threads (a Dask client's event loop when the session has
    # one): the least of a few runs is this thread's own. A real per-step allocation shows in all.
    peaks = []
    tracemalloc.start()
    try:
        for _ in range(5):
            tracemalloc.reset_peak()
            opt.apply(w, g)
            peaks.append(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()
    peak = min(peaks)
    assert peak < 4096, f"{name} {config} allocated {peak} bytes for a {w.nbytes}-byte parameter buffer"
    assert w.__array_interface__["data"][0] == address


@pytest.mark.parametrize("name, config", CONFIGS)
def test_updating_the_parts_one_by_one_gives_the_bits_of_the_whole_update(name, config):
    """A sharded step: each rank updates its part of the weights and of the state, from its part
    of the gradient. The rules are elementwise, so the parts together equal one whole update."""
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=1001).astype(np.float32)
    grads = [rng.normal(size=w0.size).astype(np.float32) for _ in range(3)]
    whole, parted = make(name, config), make(name, config)
    w_whole, w_parted = w0.copy(), w0.copy()
    whole.build(np, w_whole)
    parted.build(np, w_parted)
    parts = [slice(0, 320), slice(320, 640), slice(640, 1001)]
    for g in grads:
        whole.apply(w_whole, g)
        for part in parts:  # three ranks' shares; the step count must advance once per step
            parted.iterations = whole.iterations - 1
            parted.apply(w_parted, g, part)
    assert w_parted.tobytes() == w_whole.tobytes()
    for slot in whole.slots:
        assert parted.slots[slot].tobytes() == whole.slots[slot].tobytes()
    untouched = make(name, config)
    w_untouched = w0.copy()
    untouched.build(np, w_untouched)
    untouched.apply(w_untouched, grads[0], slice(0, 320))
    assert w_untouched[320:].tobytes() == w0[320:].tobytes()  # outside the part: left alone
    assert not np.array_equal(w_untouched[:320], w0[:320])


def test_apply_before_build_is_an_error():
    with pytest.raises(RuntimeError, match="not built"):
        optimizers.Adam().apply(np.zeros(3), np.zeros(3))
    opt = optimizers.Adam()
    opt.build(np, np.zeros(3))
    with pytest.raises(RuntimeError, match="not built for these parameters"):
        opt.apply(np.zeros(4), np.zeros(4))


# -- state ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, config", CONFIGS)
def test_get_state_set_state_roundtrip(name, config):
    first = make(name, config)
    w = W0.copy()
    first.build(np, w)
    for g in GRADS[:2]:
        first.apply(w, g)
    state = first.get_state()
    assert int(state["iterations"]) == 2
    assert set(state) == {"iterations", *first.slot_names}
    for slot in first.slot_names:
        assert isinstance(state[slot], np.ndarray) and state[slot].shape == W0.shape
        assert np.abs(state[slot]).max() > 0
        assert state[slot] is not first.slots[slot]  # a copy

    second = make(name, config)
    w2 = w.copy()
    second.build(np, w2)
    second.set_state(state)
    assert second.iterations == 2
    first.apply(w, GRADS[2])
    second.apply(w2, GRADS[2])
    np.testing.assert_array_equal(w2, w)


def test_set_state_errors():
    opt = optimizers.Adam()
    with pytest.raises(RuntimeError, match="Build the optimizer"):
        opt.set_state({})
    opt.build(np, np.zeros(3))
    with pytest.raises(ValueError, match=r"missing \['m', 'v'\]"):
        opt.set_state({"iterations": np.array(1)})
    with pytest.raises(ValueError, match=r"slot 'm' has shape \(4,\), expected \(3,\)"):
        opt.set_state({"m": np.zeros(4), "v": np.zeros(3), "iterations": np.array(1)})


def test_build_starts_fresh_state():
    """An optimizer instance reused for new parameters (compile on another model) starts from
    step 0 with zero slots: a step count kept with zeroed slots would apply the bias
    correction of a later step to the first one."""
    opt = optimizers.Adam(learning_rate=0.1)
    used = run(opt)
    assert opt.iterations == 3
    again = run(opt)  # run() builds again
    np.testing.assert_array_equal(again, used)


def test_same_instance_compiled_into_two_models_gives_the_same_first_step():
    x = np.random.default_rng(0).normal(size=(16, 4))
    y = np.random.default_rng(1).integers(0, 3, 16)

    def fit(opt):
        model = Sequential([Dense(5, activation="relu"), Dense(3, activation="softmax")], dtype="float64", device="cpu")
        model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
        model.fit(x, y, epochs=1, batch_size=16, verbose=0, seed=0, shuffle=False)
        return model.get_weights()

    shared = optimizers.Adam(learning_rate=0.1)
    fit(shared)
    for a, b in zip(fit(shared), fit(optimizers.Adam(learning_rate=0.1))):
        np.testing.assert_array_equal(a, b)


# -- lookup -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "identifier, cls, config",
    [
        ("sgd", optimizers.SGD, {"learning_rate": 0.01, "momentum": 0.0, "nesterov": False}),
        ("SGD", optimizers.SGD, {"learning_rate": 0.01, "momentum": 0.0, "nesterov": False}),
        ("Adam", optimizers.Adam, {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}),
        (
            "RMSprop",
            optimizers.RMSprop,
            {"learning_rate": 0.001, "rho": 0.9, "momentum": 0.0, "epsilon": 1e-7, "centered": False},
        ),
        (
            {"class_name": "adam", "config": {"learning_rate": 0.01, "beta_1": 0.8}},
            optimizers.Adam,
            {"learning_rate": 0.01, "beta_1": 0.8, "beta_2": 0.999, "epsilon": 1e-7},
        ),
        (
            {"class_name": "SGD", "config": {"learning_rate": 0.1, "momentum": 0.9, "nesterov": True}},
            optimizers.SGD,
            {"learning_rate": 0.1, "momentum": 0.9, "nesterov": True},
        ),
        (
            {"class_name": "rmsprop"},
            optimizers.RMSprop,
            {"learning_rate": 0.001, "rho": 0.9, "momentum": 0.0, "epsilon": 1e-7, "centered": False},
        ),
        # Keras 3's serialised form carries "module" and "registered_name" too
        (
            {
                "module": "keras.optimizers",
                "class_name": "Adam",
                "config": {"learning_rate": 0.5},
                "registered_name": None,
            },
            optimizers.Adam,
            {"learning_rate": 0.5, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7},
        ),
        (
            {"name": "sgd", "learning_rate": 0.2},
            optimizers.SGD,
            {"learning_rate": 0.2, "momentum": 0.0, "nesterov": False},
        ),
        (
            {"class_name": "sgd", "config": {"learning_rate": np.float32(0.25)}},
            optimizers.SGD,
            {"learning_rate": 0.25, "momentum": 0.0, "nesterov": False},
        ),
    ],
)
def test_get(identifier, cls, config):
    opt = optimizers.get(identifier)
    assert type(opt) is cls
    assert opt.get_config() == config
    again = optimizers.get(optimizers.serialize(opt))
    assert type(again) is cls and again.get_config() == config


def test_get_returns_instances_as_is():
    opt = optimizers.RMSprop(centered=True)
    assert optimizers.get(opt) is opt


@pytest.mark.parametrize("identifier", ["adafactor", "Lamb", {"class_name": "muon"}, {"class_name": 3}])
def test_unknown_optimizer_lists_known_names(identifier):
    known = "adadelta, adagrad, adam, adamax, adamw, ftrl, lion, nadam, rmsprop, sgd"
    with pytest.raises(ValueError, match=rf"Unknown optimizer .*Known optimizers: {known}\."):
        optimizers.get(identifier)


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (
            optimizers.SGD,
            {"learning_rate": -0.1},
            r"learning_rate to be a positive number, received learning_rate=-0.1",
        ),
        (optimizers.SGD, {"learning_rate": 0}, r"received learning_rate=0\b"),
        (optimizers.Adam, {"learning_rate": float("nan")}, r"received learning_rate=nan"),
        (optimizers.Adam, {"learning_rate": float("inf")}, r"received learning_rate=inf"),
        (optimizers.Adam, {"learning_rate": "0.1"}, r"received learning_rate='0.1'"),
        (optimizers.RMSprop, {"learning_rate": True}, r"received learning_rate=True"),
        (optimizers.SGD, {"momentum": -0.5}, r"momentum in \[0, 1\], received momentum=-0.5"),
        (optimizers.SGD, {"momentum": 1.5}, r"received momentum=1.5"),
        (optimizers.RMSprop, {"momentum": -1}, r"received momentum=-1"),
        (optimizers.Adam, {"beta_1": 1.0}, r"beta_1 in \[0, 1\), received beta_1=1.0"),
        (optimizers.Adam, {"beta_2": -0.1}, r"beta_2 in \[0, 1\), received beta_2=-0.1"),
        (optimizers.Adam, {"epsilon": 0.0}, r"epsilon to be a positive number, received epsilon=0.0"),
        (optimizers.RMSprop, {"rho": 1.0}, r"rho in \[0, 1\), received rho=1.0"),
        (optimizers.RMSprop, {"epsilon": -1e-7}, r"received epsilon=-1e-07"),
    ],
)
def test_bad_hyperparameters_are_named(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)
    name = cls.name
    with pytest.raises(ValueError, match=match):
        optimizers.get({"class_name": name, "config": kwargs})


def test_bad_config_dicts():
    with pytest.raises(ValueError, match=r"Bad arguments for optimizer 'adam'.*lr"):
        optimizers.get({"class_name": "adam", "config": {"lr": 0.1}})
    with pytest.raises(ValueError, match=r"Unexpected keys \['learning_rate'\] in optimizer config"):
        optimizers.get({"class_name": "adam", "learning_rate": 0.1})
    with pytest.raises(ValueError, match=r"needs a 'class_name' \(or 'name'\) key, received \{'learning_rate': 0.1\}"):
        optimizers.get({"learning_rate": 0.1})
    with pytest.raises(ValueError, match=r"'config' of an optimizer config dict must be a dict"):
        optimizers.get({"class_name": "adam", "config": [0.1]})


@pytest.mark.parametrize("bad", [None, 0.01, ["adam"], optimizers.Adam])
def test_wrong_type_says_what_it_received(bad):
    with pytest.raises(
        TypeError,
        match=r"Expected an optimizer name, config dict or Optimizer instance, received .*Known optimizers: adadelta, adagrad, adam, adamax, adamw, ftrl, lion, nadam, rmsprop, sgd",
    ):
        optimizers.get(bad)


@pytest.mark.parametrize(
    "identifier",
    [
        "sgd",
        "adam",
        "rmsprop",
        {"class_name": "adam", "config": {"learning_rate": 0.01}},
        optimizers.SGD(0.1, momentum=0.9),
    ],
)
def test_compile_accepts_every_form(identifier):
    model = Sequential([Dense(2, activation="softmax", input_dim=3)], device="cpu")
    model.compile(optimizer=identifier, loss="categorical_crossentropy")
    assert isinstance(model.optimizer, optimizers.Optimizer)
    if isinstance(identifier, optimizers.Optimizer):
        assert model.optimizer is identifier


def test_the_optimizer_benchmark_runs_and_no_update_keeps_an_array():
    """benchmarks/optimizers.py in miniature: every configuration updates to finite weights and
    keeps nothing array-sized alive after its steps (the figures themselves are the benchmark's)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.optimizers import measure

    report = measure(steps=2)
    assert len(report["configs"]) >= 14
    for name, figures in report["configs"].items():
        assert figures["finite"], name
        assert figures["alive_bytes"] < 4096 and figures["peak_temporary_bytes"] < 65536, (name, figures)
