"""The keras.io guide "Training & evaluation with the built-in methods", its Sequential parts, run
with dtrain: only the imports and the data changed.

    pip install scikit-learn && python examples/keras_training_guide.py

The guide trains a 784-64-64-10 network on MNIST; MNIST needs a download, so the data here is
scikit-learn's bundled digits (8x8 images: 64 features, 1,797 samples), split as the guide splits
MNIST (the last rows for validation). Each section is the guide's code with its numbers kept
(epochs, batch sizes, the weight of class 5, the schedule's arguments), and each asserts what it
shows: training and evaluation, class weights, sample weights, a PyDataset, callbacks (EarlyStopping,
ReduceLROnPlateau, LearningRateScheduler, CSVLogger, ModelCheckpoint) and a learning-rate
schedule. Sections the guide writes with the functional API or custom losses are left out
(dtrain has Sequential models and built-in losses).
"""

import os
import tempfile

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

# -- the imports: keras -> dtrain ------------------------------------------------------------------
import dtrain as keras
from dtrain import layers

# -- the data: the digits in the guide's shapes (keras.datasets.mnist.load_data() would download) ---
digits = load_digits()
x_train, x_test, y_train, y_test = train_test_split(
    digits.images, digits.target, test_size=0.2, random_state=0, stratify=digits.target
)
image_pixels = 64  # 784 for MNIST
x_train = x_train.reshape(-1, image_pixels).astype("float32") / 16  # the guide: / 255 for 0..255 pixels
x_test = x_test.reshape(-1, image_pixels).astype("float32") / 16
y_train = y_train.astype("float32")
y_test = y_test.astype("float32")
keras.utils.set_random_seed(0)

# -- "API overview: a first end-to-end example" ------------------------------------------------------
# Reserve samples for validation (the guide: 10,000 of MNIST's 60,000)
x_val = x_train[-200:]
y_val = y_train[-200:]
x_train = x_train[:-200]
y_train = y_train[:-200]


def get_uncompiled_model():
    # the guide builds it with the functional API; the same layers as a Sequential model
    return keras.Sequential(
        [
            keras.Input(shape=(image_pixels,), name="digits"),
            layers.Dense(64, activation="relu", name="dense_1"),
            layers.Dense(64, activation="relu", name="dense_2"),
            layers.Dense(10, activation="softmax", name="predictions"),
        ]
    )


def get_compiled_model():
    model = get_uncompiled_model()
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    return model


model = get_compiled_model()
print("Fit model on training data")
history = model.fit(
    x_train,
    y_train,
    batch_size=64,
    epochs=2,
    # We pass some validation for monitoring validation loss and metrics at the end of each epoch
    validation_data=(x_val, y_val),
)
print(history.history)
print("Evaluate on test data")
results = model.evaluate(x_test, y_test, batch_size=128)
print("test loss, test acc:", results)
print("Generate predictions for 3 samples")
predictions = model.predict(x_test[:3])
print("predictions shape:", predictions.shape)
assert predictions.shape == (3, 10)
assert set(history.history) == {"loss", "sparse_categorical_accuracy", "val_loss", "val_sparse_categorical_accuracy"}

# The guide's later sections train longer (it uses 1 to 20 epochs of MNIST's 50,000 rows; the
# digits are 1,237 rows, so an epoch is 26x shorter): EPOCHS stands for its "epochs=1".
EPOCHS = 10

# -- "Using a validation_split" (the guide: the last 20% of the rows) ------------------------------------
model = get_compiled_model()
model.fit(x_train, y_train, batch_size=64, validation_split=0.2, epochs=EPOCHS, verbose=0)
assert model.evaluate(x_test, y_test, verbose=0)[1] > 0.9

# -- "Class weights" -----------------------------------------------------------------------------------
class_weight = {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0,
                # Set weight "2" for class "5", making this class 2x more important
                5: 2.0,
                6: 1.0, 7: 1.0, 8: 1.0, 9: 1.0}  # fmt: skip
print("Fit with class weight")
keras.utils.set_random_seed(1)
model = get_compiled_model()
weighted = model.fit(x_train, y_train, class_weight=class_weight, batch_size=64, epochs=EPOCHS, verbose=0)
assert model.evaluate(x_test, y_test, verbose=0)[1] > 0.9

# -- "Sample weights" ----------------------------------------------------------------------------------
sample_weight = np.ones(shape=(len(y_train),))
sample_weight[y_train == 5] = 2.0
print("Fit with sample weight")
keras.utils.set_random_seed(1)  # the same initial weights and order as the class-weighted run
model = get_compiled_model()
by_sample = model.fit(x_train, y_train, sample_weight=sample_weight, batch_size=64, epochs=EPOCHS, verbose=0)
assert model.evaluate(x_test, y_test, verbose=0)[1] > 0.9
# the two say the same thing: class 5's rows weigh 2 (the same seed: the same weights)
np.testing.assert_allclose(by_sample.history["loss"], weighted.history["loss"], rtol=1e-5)


# -- "Using a keras.utils.PyDataset for training" -------------------------------------------------------
class ExamplePyDataset(keras.utils.PyDataset):
    def __init__(self, x, y, batch_size, **kwargs):
        super().__init__(**kwargs)
        self.x = x
        self.y = y
        self.batch_size = batch_size

    def __len__(self):
        return int(np.ceil(len(self.x) / float(self.batch_size)))

    def __getitem__(self, idx):
        batch_x = self.x[idx * self.batch_size : (idx + 1) * self.batch_size]
        batch_y = self.y[idx * self.batch_size : (idx + 1) * self.batch_size]
        return batch_x, batch_y


train_py_dataset = ExamplePyDataset(x_train, y_train, batch_size=32)
val_py_dataset = (x_val, y_val)  # the guide validates on a second PyDataset; dtrain takes arrays there
model = get_compiled_model()
streamed = model.fit(train_py_dataset, validation_data=val_py_dataset, epochs=EPOCHS, verbose=0)
assert model.optimizer.iterations == EPOCHS * len(train_py_dataset)
assert model.evaluate(x_test, y_test, verbose=0)[1] > 0.9

# -- "Using callbacks": EarlyStopping ----------------------------------------------------------------
model = get_compiled_model()
callbacks = [
    keras.callbacks.EarlyStopping(
        # Stop training when `val_loss` is no longer improving
        monitor="val_loss",
        # "no longer improving" being defined as "no better than 1e-2 less"
        min_delta=1e-2,
        # "no longer improving" being further defined as "for at least 2 epochs"
        patience=2,
        verbose=1,
    )
]
stopped = model.fit(x_train, y_train, epochs=60, batch_size=64, callbacks=callbacks, validation_split=0.2, verbose=0)
assert len(stopped.history["loss"]) < 60  # it stopped early
print("EarlyStopping stopped after", len(stopped.history["loss"]), "epochs")

# -- "Checkpointing models" -------------------------------------------------------------------------
checkpoint_dir = tempfile.mkdtemp()
model = get_compiled_model()
callbacks = [
    # This callback saves the model every epoch; "{epoch}" and the logs' keys name the file.
    keras.callbacks.ModelCheckpoint(filepath=os.path.join(checkpoint_dir, "model-loss={loss:.2f}.keras"))
]
model.fit(x_train, y_train, epochs=2, batch_size=64, callbacks=callbacks, validation_split=0.2, verbose=0)
saved = sorted(os.listdir(checkpoint_dir))
assert len(saved) == 2, saved
restored = keras.models.load_model(os.path.join(checkpoint_dir, saved[0]))  # the lower loss: epoch 2's
np.testing.assert_array_equal(restored.predict(x_test[:5]), model.predict(x_test[:5]))

# -- "Using learning rate schedules": a schedule as the optimizer's learning_rate ------------------------
initial_learning_rate = 0.1
lr_schedule = keras.optimizers.schedules.ExponentialDecay(
    initial_learning_rate, decay_steps=100000, decay_rate=0.96, staircase=True
)
optimizer = keras.optimizers.RMSprop(learning_rate=lr_schedule)
model = get_uncompiled_model()
model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["sparse_categorical_accuracy"])
model.fit(x_train, y_train, batch_size=64, epochs=1, verbose=0)
assert model.optimizer.learning_rate == 0.1  # staircase: no decay within 100,000 steps

# -- ... and "Using callbacks to implement a dynamic learning rate schedule" -----------------------------
model = get_compiled_model()
log_file = os.path.join(tempfile.mkdtemp(), "training.csv")
history = model.fit(
    x_train,
    y_train,
    batch_size=64,
    epochs=EPOCHS,
    validation_split=0.2,
    verbose=0,
    callbacks=[
        keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr if epoch < 5 else lr * 0.9),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1, min_lr=1e-5),
        keras.callbacks.CSVLogger(log_file),
    ],
)
rates = history.history["learning_rate"]
assert rates[0] == 1e-3 and rates[-1] < rates[0]
with open(log_file) as f:
    assert len(f.read().strip().splitlines()) == EPOCHS + 1  # a header and a row per epoch
test_loss, test_accuracy = model.evaluate(x_test, y_test, verbose=0)
assert test_accuracy > 0.9
print("Learning rates per epoch:", [f"{r:.2e}" for r in rates])
print(f"Test accuracy: {test_accuracy:.4f}")
