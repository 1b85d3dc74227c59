"""Weight and activity penalties, as ``keras.regularizers``: ``L1(l1=0.01)``, ``L2(l2=0.01)``,
``L1L2(l1=0.0, l2=0.0)`` (and the strings "l1", "l2", "l1_l2").

Keras 3 adds every penalty to the loss it minimises and reports: a weight's penalty once per
step (``l1 * sum|w| + l2 * sum w^2``), a layer output's penalty divided by the batch size, i.e.
the mean over the batch's samples of each sample's penalty. dtrain does the same; on a cluster
each rank adds its share (its rows / the global batch) of a weight penalty's gradient, so the
summed gradient holds it exactly once, and a sample's activity penalty is part of its loss.
"""

from __future__ import annotations

import math
from typing import Any

from .backend import Array
from .registry import resolve


def _coefficient(name: str, value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{where} expected a non-negative number for {name}, received {name}={value!r}.")
    return float(value)


class Regularizer:
    """``l1 * sum|x| + l2 * sum x^2``: ``penalty(xp, w)`` of a weight (a float),
    ``per_sample(xp, a)`` of each row of an output, and ``add_gradient(xp, x, grad, scale)``,
    which adds ``scale`` times the penalty's gradient to ``grad``."""

    name = "l1_l2"

    def __init__(self, l1: float = 0.0, l2: float = 0.0):
        self.l1 = _coefficient("l1", l1, type(self).__name__)
        self.l2 = _coefficient("l2", l2, type(self).__name__)

    def penalty(self, xp: Any, w: Array) -> float:
        total = 0.0
        if self.l1:
            total += self.l1 * float(xp.abs(w).sum())
        if self.l2:
            total += self.l2 * float(xp.square(w).sum())
        return total

    def per_sample(self, xp: Any, a: Array) -> Array:
        """(n,) penalties of the rows of ``a`` (n, width)."""
        total = xp.zeros(a.shape[0], dtype=a.dtype)
        if self.l1:
            total += self.l1 * xp.abs(a).sum(axis=1)
        if self.l2:
            total += self.l2 * xp.square(a).sum(axis=1)
        return total

    def add_gradient(self, xp: Any, x: Array, grad: Array, scale: float) -> None:
        if self.l1:
            grad += (scale * self.l1) * xp.sign(x)
        if self.l2:
            grad += (2.0 * scale * self.l2) * x

    def get_config(self) -> dict[str, float]:
        return {"l1": self.l1, "l2": self.l2}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class L1L2(Regularizer):
    """Both penalties: ``l1 * sum|x| + l2 * sum x^2`` (Keras' defaults: both 0.0)."""


class L1(Regularizer):
    """``l1 * sum|x|`` (default 0.01)."""

    name = "l1"

    def __init__(self, l1: float = 0.01):
        super().__init__(l1=l1)

    def get_config(self) -> dict[str, float]:
        return {"l1": self.l1}


class L2(Regularizer):
    """``l2 * sum x^2`` (default 0.01)."""

    name = "l2"

    def __init__(self, l2: float = 0.01):
        super().__init__(l2=l2)

    def get_config(self) -> dict[str, float]:
        return {"l2": self.l2}


REGULARIZERS: dict[str, type[Regularizer]] = {"l1": L1, "l2": L2, "l1_l2": L1L2, "l1l2": L1L2}


def get(identifier: Any) -> Regularizer | None:
    """None, a name ("l1", "l2", "l1_l2"), a config dict (``{"class_name": "L2", "config":
    {"l2": 0.001}}``, Keras' form) or an instance."""
    if identifier is None:
        return None
    if isinstance(identifier, dict) and isinstance(identifier.get("class_name"), str):
        identifier = {**identifier, "class_name": identifier["class_name"].lower()}
    return resolve(identifier, REGULARIZERS, "regularizer", Regularizer, known=["l1", "l2", "l1_l2"])


def serialize(regularizer: Regularizer) -> dict[str, Any]:
    """Keras' form: ``{"class_name": "L2", "config": {"l2": 0.01}}``."""
    return {"class_name": type(regularizer).__name__, "config": regularizer.get_config()}
