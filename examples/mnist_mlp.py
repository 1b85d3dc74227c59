"""Keras 2's classic examples/mnist_mlp.py, run with dtrain: only the imports and the data changed.

    pip install scikit-learn && python examples/mnist_mlp.py

The program is Keras' own (Dense 512 relu, Dropout 0.2, Dense 512 relu, Dropout 0.2, Dense 10
softmax, RMSprop, categorical cross-entropy, batch 128, 20 epochs). MNIST needs a download, so
the data is scikit-learn's bundled handwritten digits (8x8 images instead of 28x28: 64
features instead of 784, 1,797 samples instead of 70,000), split as MNIST is split. The script
asserts a test accuracy of at least 95%. Add ``client=`` to ``fit`` to train on a Dask cluster.
"""

# -- the imports: keras -> dtrain --------------------------------------------------------------
# -- the data: the digits in MNIST's shapes (load_data() would download MNIST) --------------------
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import dtrain as keras
from dtrain.layers import Dense, Dropout
from dtrain.models import Sequential
from dtrain.optimizers import RMSprop

digits = load_digits()
x_train, x_test, y_train, y_test = train_test_split(
    digits.images, digits.target, test_size=0.25, random_state=0, stratify=digits.target
)
image_pixels = 64  # 784 for MNIST's 28x28
x_train, x_test = x_train * 255 / 16, x_test * 255 / 16  # MNIST's 0..255 intensities

# -- from here on, Keras' program as it was (784 -> image_pixels, 60000/10000 -> the counts) --------
batch_size = 128
num_classes = 10
epochs = 20

x_train = x_train.reshape(len(x_train), image_pixels)
x_test = x_test.reshape(len(x_test), image_pixels)
x_train = x_train.astype("float32")
x_test = x_test.astype("float32")
x_train /= 255
x_test /= 255
print(x_train.shape[0], "train samples")
print(x_test.shape[0], "test samples")

# convert class vectors to binary class matrices
y_train = keras.utils.to_categorical(y_train, num_classes)
y_test = keras.utils.to_categorical(y_test, num_classes)

keras.utils.set_random_seed(0)  # (not in Keras' program: the asserted accuracy is then repeatable)

model = Sequential()
model.add(Dense(512, activation="relu", input_shape=(image_pixels,)))
model.add(Dropout(0.2))
model.add(Dense(512, activation="relu"))
model.add(Dropout(0.2))
model.add(Dense(num_classes, activation="softmax"))

model.summary()

model.compile(loss="categorical_crossentropy", optimizer=RMSprop(), metrics=["accuracy"])

history = model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=1, validation_data=(x_test, y_test))
score = model.evaluate(x_test, y_test, verbose=0)
print("Test loss:", score[0])
print("Test accuracy:", score[1])

assert score[1] >= 0.95, f"test accuracy {score[1]:.3f} is below 95%"
