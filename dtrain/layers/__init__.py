"""Layers, with Keras 3's names, arguments, defaults and weight order.

    Sequential([Input(shape=(28, 28)), Flatten(), Dense(512, activation="relu"), Dropout(0.2),
                Dense(10, activation="softmax")])

:mod:`~dtrain.layers.base` says what a model relies on in a layer; each kind lives in its own
module: ``Dense`` (:mod:`~dtrain.layers.dense`), the layers without weights that shape or
transform a batch (:mod:`~dtrain.layers.core`), and those that are random in training
(:mod:`~dtrain.layers.noise`), and the normalisations (:mod:`~dtrain.layers.normalization`).
"""

from __future__ import annotations

from typing import Any

from .base import Layer, assign_weights
from .core import Activation, Flatten, Input, InputLayer, InputSpec, LeakyReLU, ReLU, Softmax
from .dense import Dense
from .noise import Dropout, GaussianNoise
from .normalization import BatchNormalization, LayerNormalization

__all__ = [
    "Activation",
    "BatchNormalization",
    "Dense",
    "Dropout",
    "Flatten",
    "GaussianNoise",
    "Input",
    "InputLayer",
    "InputSpec",
    "Layer",
    "LayerNormalization",
    "LeakyReLU",
    "LAYERS",
    "ReLU",
    "Softmax",
    "assign_weights",
    "from_config",
]

LAYERS: dict[str, type[Layer]] = {
    cls.__name__: cls
    for cls in (
        Dense,
        Dropout,
        GaussianNoise,
        Flatten,
        Activation,
        ReLU,
        LeakyReLU,
        Softmax,
        BatchNormalization,
        LayerNormalization,
    )
}


def from_config(entry: dict[str, Any]) -> Layer | InputSpec:
    """Rebuild a layer from ``{"class_name": "Dense", "config": {...}}`` (``InputLayer`` gives
    the model's :class:`InputSpec`)."""
    if not isinstance(entry, dict) or "class_name" not in entry:
        raise ValueError(f"Expected a layer entry {{'class_name': ..., 'config': {{...}}}}, received {entry!r}.")
    config = dict(entry.get("config") or {})
    if entry["class_name"] == "InputLayer":
        return InputSpec.from_config(config)
    cls = LAYERS.get(entry["class_name"])
    if cls is None:
        raise ValueError(
            f"Unknown layer class {entry['class_name']!r}. Known layers: InputLayer, {', '.join(sorted(LAYERS))}."
        )
    return cls.from_config(config)
