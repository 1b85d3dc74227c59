"""dtrain against real Keras 3, side by side: the largest relative difference of any weight
over 3 epochs of training (float64, the same initial weights, shuffle=False, batch 16).

    python -m benchmarks.keras_parity           # needs the test extra (Keras 3 and JAX)

Keras runs on its JAX backend on the CPU, in float64 with its float32 downcast switched off
(tests/keras_oracle.py). Prints a Markdown table; RESULTS.md keeps the last one.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import numpy as np  # noqa: E402
from keras_oracle import keras_or_skip, max_relative_difference  # noqa: E402

import dtrain  # noqa: E402

keras = keras_or_skip()
K, L = keras.layers, dtrain.layers


def run(name, make, loss, opt, y_kind="onehot", rows=48, shape=(5,)):
    keras.utils.set_random_seed(0)
    theirs = keras.Sequential(make(K, True))
    ours = dtrain.Sequential(make(L, False), dtype="float64")
    k_opt, d_opt = opt
    theirs.compile(optimizer=k_opt(keras), loss=loss)
    ours.compile(optimizer=d_opt(dtrain), loss=loss)
    ours.set_weights(theirs.get_weights())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, *shape)) + 0.5
    units = theirs.output_shape[-1]
    y = (
        np.eye(units)[rng.integers(0, units, rows)]
        if y_kind == "onehot"
        else np.abs(rng.standard_normal((rows, units)))
    )
    worst = 0.0
    for _ in range(3):
        theirs.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        ours.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        worst = max(worst, max_relative_difference(ours.get_weights(), theirs.get_weights()))
    print(f"| {name} | {worst:.1e} |")


def inp(M, k, s=(5,)):  # noqa: N803 (M: the layers module, Keras' or dtrain's)
    return M.Input(s) if k else M.Input(shape=s)


adam = (lambda k: k.optimizers.Adam(0.01), lambda d: d.optimizers.Adam(0.01))  # (Keras, dtrain)
sgd = (lambda k: k.optimizers.SGD(0.05, momentum=0.9), lambda d: d.optimizers.SGD(0.05, momentum=0.9))
rms = (lambda k: k.optimizers.RMSprop(0.01), lambda d: d.optimizers.RMSprop(0.01))
run(
    "Input, Flatten (4x3 images), Dense, LeakyReLU, Dense, Softmax layer; Adam, CCE",
    lambda M, k: [inp(M, k, (4, 3)), M.Flatten(), M.Dense(8), M.LeakyReLU(), M.Dense(3), M.Softmax()],
    "categorical_crossentropy",
    adam,
    shape=(4, 3),
)
run(
    "Dense (no bias), BatchNormalization, ReLU; Adam, CCE",
    lambda M, k: [
        inp(M, k),
        M.Dense(8, use_bias=False),
        M.BatchNormalization(),
        M.Activation("relu"),
        M.Dense(3, activation="softmax"),
    ],
    "categorical_crossentropy",
    adam,
)
run(
    "Dense, LayerNormalization, gelu, selu, mish; SGD momentum, MSE",
    lambda M, k: [
        inp(M, k),
        M.Dense(8, activation="gelu"),
        M.LayerNormalization(),
        M.Dense(6, activation="selu"),
        M.Dense(3, activation="mish"),
    ],
    "mse",
    sgd,
    y_kind="real",
)
run(
    "L1L2 kernel, L2 bias, L1 activity regularizers; RMSprop, CCE",
    lambda M, k: [
        inp(M, k),
        M.Dense(
            8,
            activation="tanh",
            kernel_regularizer=(keras if k else dtrain).regularizers.L1L2(0.01, 0.02),
            bias_regularizer="l2",
            activity_regularizer=(keras if k else dtrain).regularizers.L1(0.01),
        ),
        M.Dense(3, activation="softmax"),
    ],
    "categorical_crossentropy",
    rms,
)
run(
    "MaxNorm, NonNeg, UnitNorm constraints; Adam, CCE",
    lambda M, k: [
        inp(M, k),
        M.Dense(
            8,
            activation="relu",
            kernel_constraint=(keras if k else dtrain).constraints.MaxNorm(1.0),
            bias_constraint="non_neg",
        ),
        M.Dense(3, activation="softmax", kernel_constraint=(keras if k else dtrain).constraints.UnitNorm()),
    ],
    "categorical_crossentropy",
    adam,
)
run(
    "ReLU(max_value, negative_slope, threshold), elu, softplus; RMSprop, huber",
    lambda M, k: [
        inp(M, k),
        M.Dense(8),
        M.ReLU(max_value=1.5, negative_slope=0.1, threshold=0.2),
        M.Dense(6, activation="elu"),
        M.Dense(3, activation="softplus"),
    ],
    "huber",
    rms,
    y_kind="real",
)
run(
    "frozen first Dense and BatchNormalization; Adam, CCE",
    lambda M, k: (
        [inp(M, k)]
        + (lambda ls: [setattr(ls[0], "trainable", False), setattr(ls[1], "trainable", False)] and ls)(
            [M.Dense(8, activation="tanh"), M.BatchNormalization(), M.Dense(3, activation="softmax")]
        )
    ),
    "categorical_crossentropy",
    adam,
)
run(
    "categorical focal cross-entropy; SGD momentum",
    lambda M, k: [inp(M, k), M.Dense(8, activation="silu"), M.Dense(3, activation="softmax")],
    "categorical_focal_crossentropy",
    sgd,
)
run(
    "poisson loss, softplus output; SGD momentum",
    lambda M, k: [inp(M, k), M.Dense(8, activation="tanh"), M.Dense(3, activation="softplus")],
    "poisson",
    sgd,
    y_kind="real",
)
run(
    "log_cosh, hard_silu; Adam",
    lambda M, k: [inp(M, k), M.Dense(8, activation="hard_silu"), M.Dense(3)],
    "log_cosh",
    adam,
    y_kind="real",
)
