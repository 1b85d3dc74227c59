"""The Keras program dtrain must run with only its imports changed, on generated data.

    python examples/seed_network.py

It asserts what it claims: held-out accuracy far above chance (0.10 for 10 classes).
"""

from dtrain.datasets import make_classification
from dtrain.layers import Dense
from dtrain.models import Sequential

x, y = make_classification(n_samples=5000, n_features=100, n_classes=10, seed=0)
x_train, y_train, x_test, y_test = x[:4000], y[:4000], x[4000:], y[4000:]

model = Sequential()
model.add(Dense(units=64, activation="relu", input_dim=100))
model.add(Dense(units=10, activation="softmax"))
model.compile(loss="categorical_crossentropy", optimizer="sgd", metrics=["accuracy"])
model.fit(x_train, y_train, epochs=5, batch_size=32)

loss, accuracy = model.evaluate(x_test, y_test)
print(f"held-out loss {loss:.4f}, accuracy {accuracy:.3f} (chance 0.100)")
assert accuracy > 0.8, f"expected held-out accuracy > 0.8, got {accuracy:.3f}"
