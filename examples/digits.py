"""Real data: scikit-learn's bundled handwritten digits (8x8 images, 10 classes, no download).

    pip install scikit-learn && python examples/digits.py

A small network reaches at least 95% held-out accuracy on CPU in about a second; the script
asserts it.
"""

import time

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from dtrain.callbacks import EarlyStopping
from dtrain.layers import Dense
from dtrain.models import Sequential

digits = load_digits()
x = digits.data.astype("float32") / 16.0  # pixel intensities 0..16 -> [0, 1]
x_train, x_test, y_train, y_test = train_test_split(
    x, digits.target, test_size=0.25, random_state=0, stratify=digits.target
)

model = Sequential(
    [
        Dense(64, activation="relu", input_dim=64),
        Dense(64, activation="relu"),
        Dense(10, activation="softmax"),
    ]
)
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
start = time.perf_counter()
model.fit(
    x_train,
    y_train,
    epochs=40,
    batch_size=32,
    validation_split=0.1,
    seed=0,
    verbose=2,
    callbacks=[EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True)],
)
seconds = time.perf_counter() - start
loss, accuracy = model.evaluate(x_test, y_test)
print(f"held-out accuracy {accuracy:.4f} after {seconds:.1f}s of training")
assert accuracy >= 0.95, f"expected >= 95% held-out accuracy, got {accuracy:.4f}"
