"""Losses: Keras values on hand examples, finite-difference gradients (float64) of every loss
on outputs, on logits (fused with softmax/sigmoid) and with from_logits, stability for huge
logits, target validation, and lookup."""

from __future__ import annotations

import numpy as np
import pytest

from dtrain import activations, losses

EPS = 1e-7


def numeric_grad(f, x, h=1e-4):
    """d f / d x for scalar f by the fourth-order central difference (error O(h^4)); the step
    shrinks with |x| below 1, so that small probabilities (where -log p curves hard) are
    differentiated on their own scale."""
    grad = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        values = []
        hi = h * min(1.0, max(abs(float(x[idx])), 1e-2))
        for step in (2 * hi, hi, -hi, -2 * hi):
            xx = x.copy()
            xx[idx] += step
            values.append(float(f(xx)))
        f2, f1, m1, m2 = values
        grad[idx] = (8.0 * (f1 - m1) - (f2 - m2)) / (12.0 * hi)
    return grad


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(z):
    return np.exp(-np.logaddexp(0.0, -z))


def one_hot(labels, k):
    return np.eye(k)[labels]


N, K = 6, 4
RNG = np.random.default_rng(0)
LABELS = RNG.integers(0, K, N)
ONE_HOT = one_hot(LABELS, K)
SOFT = softmax(RNG.normal(size=(N, K)))  # soft labels, rows sum to 1
BINARY = RNG.integers(0, 2, (N, K)).astype(float)
BINARY_SOFT = RNG.uniform(0, 1, (N, K))
LOGITS = RNG.normal(0.0, 2.0, (N, K))


def _targets():
    return {
        "one_hot": ONE_HOT,
        "soft": SOFT,
        "labels": LABELS,
        "binary": BINARY,
        "binary_soft": BINARY_SOFT,
        "real": RNG.normal(size=(N, K)),
    }


TARGETS = _targets()

# (loss, targets, outputs) on model outputs: probabilities for the cross-entropies (also
# unnormalised positive rows, which categorical CE renormalises as Keras does), anything for
# mse, anything away from y for mae.
OUTPUT_CASES = {
    "cce-one_hot-probs": (losses.CategoricalCrossentropy(), "one_hot", softmax(LOGITS)),
    "cce-soft-probs": (losses.CategoricalCrossentropy(), "soft", softmax(LOGITS)),
    "cce-one_hot-unnormalised": (losses.CategoricalCrossentropy(), "one_hot", RNG.uniform(0.2, 3.0, (N, K))),
    "cce-soft-sigmoid_outputs": (losses.CategoricalCrossentropy(), "soft", sigmoid(LOGITS)),
    "scce-probs": (losses.SparseCategoricalCrossentropy(), "labels", softmax(LOGITS)),
    "scce-unnormalised": (losses.SparseCategoricalCrossentropy(), "labels", RNG.uniform(0.2, 3.0, (N, K))),
    "bce-binary": (losses.BinaryCrossentropy(), "binary", sigmoid(LOGITS)),
    "bce-soft": (losses.BinaryCrossentropy(), "binary_soft", sigmoid(LOGITS)),
    "bce-softmax_outputs": (losses.BinaryCrossentropy(), "binary", softmax(LOGITS)),
    "mse": (losses.MeanSquaredError(), "real", LOGITS),
    "mae": (losses.MeanAbsoluteError(), "real", None),  # outputs set below, away from y
}


def _outputs(case):
    loss, target, out = OUTPUT_CASES[case]
    y = TARGETS[target]
    if out is None:  # mae: keep |out - y| >= 0.1 so the kink at out == y is never crossed
        step = RNG.uniform(0.1, 1.0, y.shape) * RNG.choice([-1.0, 1.0], y.shape)
        out = y + step
    return loss, y, out


@pytest.mark.parametrize("case", sorted(OUTPUT_CASES))
@pytest.mark.parametrize("scale", [1.0 / N, 0.37])
def test_gradient_on_outputs_matches_finite_differences(case, scale):
    loss, y, out = _outputs(case)
    analytic = loss.gradient(np, y, out, scale)
    numeric = numeric_grad(lambda o: scale * loss.per_sample(np, y, o).sum(), out)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-11)


FUSED = {
    "cce-one_hot": (losses.CategoricalCrossentropy, "one_hot", softmax),
    "cce-soft": (losses.CategoricalCrossentropy, "soft", softmax),
    "scce": (losses.SparseCategoricalCrossentropy, "labels", softmax),
    "bce-binary": (losses.BinaryCrossentropy, "binary", sigmoid),
    "bce-soft": (losses.BinaryCrossentropy, "binary_soft", sigmoid),
}


@pytest.mark.parametrize("case", sorted(FUSED))
def test_fused_gradient_from_logits_matches_finite_differences(case):
    """The path the model takes when the last layer's activation fuses with the loss."""
    cls, target, act = FUSED[case]
    loss, y, z, scale = cls(), TARGETS[target], LOGITS, 1.0 / N
    assert loss.fuses_with(act.__name__)
    out = np.empty_like(z)
    result = loss.gradient_from_logits(np, y, z, act(z), scale, out)
    assert result is out  # written in place into the caller's buffer
    numeric = numeric_grad(lambda zz: scale * loss.per_sample_from_logits(np, y, zz).sum(), z)
    np.testing.assert_allclose(out, numeric, rtol=1e-7, atol=1e-11)


@pytest.mark.parametrize("case", sorted(FUSED))
def test_from_logits_true_gradient_matches_finite_differences(case):
    """from_logits=True: the model's output is the logits (a linear last layer)."""
    cls, target, _ = FUSED[case]
    loss, y, z, scale = cls(from_logits=True), TARGETS[target], LOGITS, 0.25
    assert not loss.fuses_with("softmax") and not loss.fuses_with("sigmoid")
    numeric = numeric_grad(lambda zz: scale * loss.per_sample(np, y, zz).sum(), z)
    np.testing.assert_allclose(loss.gradient(np, y, z, scale), numeric, rtol=1e-7, atol=1e-11)


@pytest.mark.parametrize("case", sorted(FUSED))
def test_fused_and_unfused_forms_agree(case):
    """loss(act(z)) computed on probabilities (Keras' clipped formula) equals the loss on
    logits wherever no probability is clipped; so do the gradients through the activation."""
    cls, target, act = FUSED[case]
    loss, y, z, scale = cls(), TARGETS[target], LOGITS, 1.0 / N
    p = act(z)
    assert ((p > EPS) & (p < 1 - EPS)).all()
    np.testing.assert_allclose(loss.per_sample(np, y, p), loss.per_sample_from_logits(np, y, z), rtol=1e-12)
    np.testing.assert_allclose(
        cls(from_logits=True).per_sample(np, y, z), loss.per_sample_from_logits(np, y, z), rtol=1e-15
    )
    a = activations.get(act.__name__)
    through = np.empty_like(z)
    a.backward(np, loss.gradient(np, y, p, scale), p, through, np.empty_like(z))
    fused = loss.gradient_from_logits(np, y, z, p, scale, np.empty_like(z))
    np.testing.assert_allclose(through, fused, rtol=1e-9, atol=1e-15)


# -- Keras' values on hand examples ----------------------------------------------------------
def test_categorical_crossentropy_keras_example():
    y = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    p = np.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
    values = losses.get("categorical_crossentropy").per_sample(np, y, p)
    np.testing.assert_allclose(values, [-np.log(0.95), -np.log(0.1)], rtol=1e-12)
    assert values.mean() == pytest.approx(1.1769392, abs=1e-7)  # Keras' documented value


def test_sparse_categorical_crossentropy_keras_example():
    p = np.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
    values = losses.get("sparse_categorical_crossentropy").per_sample(np, np.array([1, 2]), p)
    np.testing.assert_allclose(values, [-np.log(0.95), -np.log(0.1)], rtol=1e-12)


def test_binary_crossentropy_keras_example_averages_over_the_last_axis():
    y = np.array([[0.0, 1.0], [0.0, 0.0]])
    p = np.array([[0.6, 0.4], [0.4, 0.6]])
    values = losses.get("binary_crossentropy").per_sample(np, y, p)
    np.testing.assert_allclose(values, [-(np.log(0.4) + np.log(0.4)) / 2, -(np.log(0.6) + np.log(0.4)) / 2], rtol=1e-12)
    # Keras documents 0.81492424: its TF backend adds epsilon inside the log, a 2e-7 difference
    assert values.mean() == pytest.approx(0.81492424, abs=1e-6)


@pytest.mark.parametrize("name", ["mean_squared_error", "mse", "MeanSquaredError"])
def test_mean_squared_error_keras_example(name):
    y = np.array([[0.0, 1.0], [0.0, 0.0]])
    out = np.array([[1.0, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(losses.get(name).per_sample(np, y, out), [0.5, 0.5])
    np.testing.assert_allclose(losses.get(name).per_sample(np, y, 3 * out), [(9 + 4) / 2, 9 / 2])


@pytest.mark.parametrize("name", ["mean_absolute_error", "mae", "MeanAbsoluteError"])
def test_mean_absolute_error_keras_example(name):
    y = np.array([[0.0, 1.0], [0.0, 0.0]])
    out = np.array([[1.0, 1.0], [1.0, 0.0]])
    loss = losses.get(name)
    np.testing.assert_allclose(loss.per_sample(np, y, out), [0.5, 0.5])
    # subgradient 0 where out == y, as sign() in Keras' backends
    np.testing.assert_allclose(loss.gradient(np, y, out, 1.0), [[0.5, 0.0], [0.5, 0.0]])


def test_categorical_crossentropy_renormalises_then_clips_like_keras():
    loss = losses.CategoricalCrossentropy()
    # rows are divided by their sum first: [2, 6, 2] -> [0.2, 0.6, 0.2]
    assert loss.per_sample(np, np.array([[0.0, 1.0, 0.0]]), np.array([[2.0, 6.0, 2.0]]))[0] == pytest.approx(
        -np.log(0.6)
    )
    # then clipped into [eps, 1 - eps]: a zero probability costs -log(1e-7), not inf
    assert loss.per_sample(np, np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]))[0] == pytest.approx(-np.log(EPS))
    assert loss.per_sample(np, np.array([[0.0, 1.0]]), np.array([[0.0, 1.0]]))[0] == pytest.approx(-np.log1p(-EPS))
    sparse = losses.SparseCategoricalCrossentropy()
    assert sparse.per_sample(np, np.array([0]), np.array([[0.0, 1.0]]))[0] == pytest.approx(-np.log(EPS))


def test_binary_crossentropy_clips_like_keras_and_clipped_entries_have_zero_gradient():
    loss = losses.BinaryCrossentropy()
    y = np.array([[1.0, 0.0, 1.0]])
    p = np.array([[0.0, 1.0, 1e-9]])
    np.testing.assert_allclose(loss.per_sample(np, y, p), [-np.log(EPS)], rtol=1e-6)
    # the clip is flat outside [eps, 1 - eps]: the gradient there is 0 (as in Keras)
    np.testing.assert_array_equal(loss.gradient(np, y, p, 1.0), [[0.0, 0.0, 0.0]])


@pytest.mark.parametrize("cls", [losses.CategoricalCrossentropy, losses.SparseCategoricalCrossentropy])
def test_crossentropy_from_logits_hand_value(cls):
    z = np.array([[1.0, 2.0, 3.0]])
    y = np.array([1]) if cls is losses.SparseCategoricalCrossentropy else np.array([[0.0, 1.0, 0.0]])
    expected = np.log(np.exp(1.0) + np.exp(2.0) + np.exp(3.0)) - 2.0
    assert cls(from_logits=True).per_sample(np, y, z)[0] == pytest.approx(expected, rel=1e-14)


def test_binary_crossentropy_from_logits_hand_value():
    z = np.array([[2.0, -1.0]])
    y = np.array([[1.0, 0.0]])
    expected = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-1.0))) / 2
    assert losses.BinaryCrossentropy(from_logits=True).per_sample(np, y, z)[0] == pytest.approx(expected, rel=1e-14)


# -- stability ---------------------------------------------------------------------------------
HUGE = [1e4, 1e30]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("magnitude", HUGE)
@pytest.mark.parametrize("name", ["categorical_crossentropy", "sparse_categorical_crossentropy"])
def test_softmax_crossentropy_is_stable_for_huge_logits(name, magnitude, dtype):
    z = np.array([[magnitude, -magnitude, 0.0], [-magnitude, magnitude, 0.0], [0.0, 0.0, 0.0]], dtype=dtype)
    labels = np.array([0, 0, 2])
    y = labels if name.startswith("sparse") else one_hot(labels, 3).astype(dtype)
    fused = losses.get(name)
    probs = np.empty_like(z)
    activations.Softmax().forward(np, z, probs)
    values = fused.per_sample_from_logits(np, y, z)
    grad = fused.gradient_from_logits(np, y, z, probs, 1.0 / 3, np.empty_like(z))
    # right answer: loss 0; wrong by 2*magnitude; uniform: log 3
    np.testing.assert_allclose(values, [0.0, 2 * magnitude, np.log(3.0)], rtol=1e-6)
    assert np.isfinite(grad).all() and np.isfinite(values).all()
    np.testing.assert_allclose(grad[1], np.array([-1.0, 1.0, 0.0]) / 3, atol=1e-7)
    logits_loss = losses.get({"class_name": name, "config": {"from_logits": True}})
    np.testing.assert_allclose(logits_loss.per_sample(np, y, z), values, rtol=1e-6)
    assert np.isfinite(logits_loss.gradient(np, y, z, 1.0)).all()
    # on the probabilities (unfused, clipped): finite too, capped at -log(eps)
    unfused = fused.per_sample(np, y, probs)
    assert np.isfinite(unfused).all() and unfused.max() <= -np.log(np.float32(EPS)) + 1e-3
    assert np.isfinite(fused.gradient(np, y, probs, 1.0)).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("magnitude", HUGE)
def test_sigmoid_binary_crossentropy_is_stable_for_huge_logits(magnitude, dtype):
    z = np.array([[magnitude, -magnitude, magnitude, -magnitude]], dtype=dtype)
    y = np.array([[1.0, 0.0, 0.0, 1.0]], dtype=dtype)
    loss = losses.BinaryCrossentropy()
    probs = np.empty_like(z)
    activations.Sigmoid().forward(np, z, probs)
    values = loss.per_sample_from_logits(np, y, z)
    np.testing.assert_allclose(values, [magnitude / 2], rtol=1e-6)  # (0 + 0 + m + m) / 4
    grad = loss.gradient_from_logits(np, y, z, probs, 1.0, np.empty_like(z))
    np.testing.assert_allclose(grad, [[0.0, 0.0, 0.25, -0.25]], atol=1e-7)
    logits_loss = losses.BinaryCrossentropy(from_logits=True)
    np.testing.assert_allclose(logits_loss.per_sample(np, y, z), values, rtol=1e-6)
    np.testing.assert_allclose(logits_loss.gradient(np, y, z, 1.0), grad, atol=1e-7)
    assert np.isfinite(loss.per_sample(np, y, probs)).all()
    assert np.isfinite(loss.gradient(np, y, probs, 1.0)).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_crossentropy_on_large_logits_keeps_precision(dtype):
    """A confident right prediction costs ~exp(-gap): computed from z - max(z), not as
    lse(z) - z, so logits of size 1e4 do not round it away (float32 ulp at 1e4 is 1e-3)."""
    z = np.array([[1e4, 1e4 - 5.0]], dtype=dtype)
    expected = np.log1p(np.exp(-5.0))
    assert losses.SparseCategoricalCrossentropy().per_sample_from_logits(np, np.array([0]), z)[0] == pytest.approx(
        expected, rel=1e-5
    )
    assert losses.CategoricalCrossentropy().per_sample_from_logits(np, np.array([[1.0, 0.0]], dtype), z)[
        0
    ] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_losses_keep_the_dtype(dtype):
    z = LOGITS.astype(dtype)
    for loss, y in [
        (losses.CategoricalCrossentropy(), ONE_HOT.astype(dtype)),
        (losses.SparseCategoricalCrossentropy(), LABELS),
        (losses.BinaryCrossentropy(), BINARY.astype(dtype)),
        (losses.MeanSquaredError(), BINARY.astype(dtype)),
        (losses.MeanAbsoluteError(), BINARY.astype(dtype)),
    ]:
        p = softmax(z).astype(dtype) if loss.fused_activation != "sigmoid" else sigmoid(z).astype(dtype)
        assert loss.gradient(np, y, p, 1.0 / N).dtype == dtype, loss
        if loss.fused_activation:
            assert loss.per_sample_from_logits(np, y, z).dtype == dtype
            assert loss.gradient_from_logits(np, y, z, p, 1.0 / N, np.empty_like(z)).dtype == dtype


# -- target validation -------------------------------------------------------------------------
def prepare(name, y, units):
    return losses.get(name).prepare_targets(np.asarray(y), units)


def test_sparse_targets_accepted_forms():
    np.testing.assert_array_equal(prepare("sparse_categorical_crossentropy", [0, 2, 1], 3), [0, 2, 1])
    assert prepare("sparse_categorical_crossentropy", [[0], [2]], 3).shape == (2,)
    out = prepare("sparse_categorical_crossentropy", np.array([0.0, 2.0]), 3)
    assert out.dtype == np.int64 and list(out) == [0, 2]
    assert prepare("sparse_categorical_crossentropy", np.array([1, 0], np.uint8), 2).dtype == np.int64


@pytest.mark.parametrize(
    "y, match",
    [
        ([0, 3, 1], r"labels in \[0, 2\].*3 output units.*y\[1\] = 3"),
        ([0, -1, 1], r"labels in \[0, 2\].*y\[1\] = -1"),
        ([0.0, 1.5], r"non-integer label y\[1\] = 1.5"),
        ([[0, 1], [1, 0]], r"shape \(n,\).*received y of shape \(2, 2\).*categorical_crossentropy"),
        (np.array(["a", "b"]), r"received dtype <U1"),
    ],
)
def test_sparse_targets_rejected(y, match):
    with pytest.raises(ValueError, match=match):
        prepare("sparse_categorical_crossentropy", y, 3)


def test_categorical_targets_accepted_forms():
    y = prepare("categorical_crossentropy", [[0, 1, 0], [1, 0, 0]], 3)
    assert y.shape == (2, 3)
    prepare("categorical_crossentropy", [[0.2, 0.5, 0.3]], 3)  # soft labels


@pytest.mark.parametrize(
    "y, match",
    [
        (
            [0, 2, 1],
            r"one-hot targets of shape \(n, 3\).*received y of shape \(3,\).*sparse_categorical_crossentropy.*to_categorical",
        ),
        ([[0], [2]], r"received y of shape \(2, 1\).*integer class labels.*sparse_categorical_crossentropy"),
        ([[0, 1, 0, 0]], r"shape \(n, 3\).*received y of shape \(1, 4\)"),
        ([[0, 1, 1]], r"sum to 1.*row 0 sums to 2"),
        ([[0, 0, 0]], r"row 0 sums to 0"),
        ([[0, 2, -1]], r"values in \[0, 1\], received values in \[-1, 2\]"),
    ],
)
def test_categorical_targets_rejected(y, match):
    with pytest.raises(ValueError, match=match):
        prepare("categorical_crossentropy", y, 3)


def test_binary_targets():
    assert prepare("binary_crossentropy", [0, 1, 1], 1).shape == (3, 1)
    assert prepare("binary_crossentropy", [[0, 0.5]], 2).shape == (1, 2)
    with pytest.raises(ValueError, match=r"targets in \[0, 1\], received values in \[0, 2\]"):
        prepare("binary_crossentropy", [0, 2, 1], 1)
    with pytest.raises(ValueError, match=r"received values in \[-1, 1\]"):
        prepare("binary_crossentropy", [[-1, 1]], 2)
    with pytest.raises(ValueError, match=r"shape \(n, 2\).*received y of shape \(3,\)"):
        prepare("binary_crossentropy", [0, 1, 1], 2)


@pytest.mark.parametrize("name", ["mse", "mae"])
def test_regression_targets(name):
    assert prepare(name, [1.5, -2.0], 1).shape == (2, 1)
    assert prepare(name, [[1.5, -2.0]], 2).shape == (1, 2)
    with pytest.raises(ValueError, match=r"shape \(n, 3\).*received y of shape \(1, 2\)"):
        prepare(name, [[1.5, -2.0]], 3)


# -- lookup --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "identifier, cls, from_logits",
    [
        ("categorical_crossentropy", losses.CategoricalCrossentropy, False),
        ("CategoricalCrossentropy", losses.CategoricalCrossentropy, False),
        ("sparse_categorical_crossentropy", losses.SparseCategoricalCrossentropy, False),
        ("binary_crossentropy", losses.BinaryCrossentropy, False),
        ("mean_squared_error", losses.MeanSquaredError, False),
        ("mse", losses.MeanSquaredError, False),
        ("mean_absolute_error", losses.MeanAbsoluteError, False),
        ("MAE", losses.MeanAbsoluteError, False),
        (
            {"class_name": "categorical_crossentropy", "config": {"from_logits": True}},
            losses.CategoricalCrossentropy,
            True,
        ),
        (
            {"class_name": "SparseCategoricalCrossentropy", "config": {"from_logits": True}},
            losses.SparseCategoricalCrossentropy,
            True,
        ),
        ({"name": "binary_crossentropy", "from_logits": True}, losses.BinaryCrossentropy, True),
        ({"class_name": "mse"}, losses.MeanSquaredError, False),
    ],
)
def test_get(identifier, cls, from_logits):
    loss = losses.get(identifier)
    assert type(loss) is cls and loss.from_logits is from_logits
    again = losses.get(losses.serialize(loss))
    assert type(again) is cls and again.from_logits is from_logits


def test_get_returns_instances_as_is():
    loss = losses.BinaryCrossentropy(from_logits=True)
    assert losses.get(loss) is loss


def test_unknown_loss_lists_known_names():
    with pytest.raises(ValueError, match="Unknown loss 'hingey'") as info:
        losses.get("hingey")
    for name in ("categorical_crossentropy", "sparse_categorical_crossentropy", "binary_crossentropy", "mse", "mae"):
        assert name in str(info.value)


def test_bad_loss_arguments():
    with pytest.raises(ValueError, match=r"Bad arguments for loss 'mse'"):
        losses.get({"class_name": "mse", "config": {"from_logits": True}})
    with pytest.raises(ValueError, match=r"from_logits to be True or False, received from_logits='yes'"):
        losses.CategoricalCrossentropy(from_logits="yes")
    with pytest.raises(TypeError, match=r"Expected a loss name.*received int 3"):
        losses.get(3)
