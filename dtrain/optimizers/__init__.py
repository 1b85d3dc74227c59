"""Optimizers with Keras 3 names, defaults and update rules, over one flat parameter buffer.

    from dtrain import optimizers
    optimizers.AdamW(learning_rate=optimizers.schedules.CosineDecay(1e-3, 1000), global_clipnorm=1.0)

``base`` holds what every optimizer does around its rule (accumulation, clipping, weight decay,
the moving average, the learning rate or its schedule, state); ``rules`` the update rules;
``schedules`` the learning-rate schedules.
"""

from __future__ import annotations

from typing import Any

from ..registry import resolve
from . import schedules
from .base import Optimizer
from .rules import SGD, Adadelta, Adagrad, Adam, Adamax, AdamW, Ftrl, Lion, Nadam, RMSprop

OPTIMIZERS: dict[str, type[Optimizer]] = {
    cls.name: cls for cls in (SGD, Adam, AdamW, RMSprop, Adagrad, Adadelta, Adamax, Nadam, Lion, Ftrl)
}


def get(identifier: Any) -> Optimizer:
    """Return an optimizer from a name ("sgd"), a config dict or an instance."""
    return resolve(identifier, OPTIMIZERS, "optimizer", Optimizer)


def serialize(optimizer: Optimizer) -> dict[str, Any]:
    return {"class_name": optimizer.name, "config": optimizer.get_config()}


__all__ = [
    "OPTIMIZERS",
    "SGD",
    "Adadelta",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "Ftrl",
    "Lion",
    "Nadam",
    "Optimizer",
    "RMSprop",
    "get",
    "schedules",
    "serialize",
]
