"""Projections of a weight after every update, as ``keras.constraints``: ``MaxNorm``,
``NonNeg``, ``UnitNorm``, ``MinMaxNorm`` (Keras 3's formulas, its epsilon 1e-7). They run on
every rank after the whole step's update (after the allgather of a sharded step), on identical
weights, so the replicas stay identical."""

from __future__ import annotations

import math
from typing import Any

from .backend import Array
from .registry import resolve

EPSILON = 1e-7  # keras.backend.epsilon()


def _number(name: str, value: Any, where: str, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
        raise ValueError(f"{where} expected a number >= {low:g} for {name}, received {name}={value!r}.")
    return float(value)


def _axis(value: Any, where: str) -> int:
    if value not in (0, 1, -1, -2):
        raise ValueError(f"{where} expected axis 0 (each unit's incoming weights) or 1, received axis={value!r}.")
    return int(value)


class Constraint:
    """``apply(xp, w)`` projects ``w`` in place."""

    name = "constraint"

    def apply(self, xp: Any, w: Array) -> None:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"


class _NormConstraint(Constraint):
    axis: int

    def _norms(self, xp: Any, w: Array) -> Array:
        axis = self.axis if w.ndim > 1 else 0
        return xp.sqrt(xp.square(w).sum(axis=axis, keepdims=True))


class MaxNorm(_NormConstraint):
    """Each unit's incoming weights (``axis=0``) scaled to a norm of at most ``max_value``."""

    name = "max_norm"

    def __init__(self, max_value: float = 2.0, axis: int = 0):
        self.max_value = _number("max_value", max_value, "MaxNorm")
        self.axis = _axis(axis, "MaxNorm")

    def apply(self, xp, w):
        norms = self._norms(xp, w)
        w *= xp.clip(norms, 0, self.max_value) / (EPSILON + norms)

    def get_config(self):
        return {"max_value": self.max_value, "axis": self.axis}


class NonNeg(Constraint):
    """Weights clipped at 0 from below."""

    name = "non_neg"

    def apply(self, xp, w):
        xp.maximum(w, 0, out=w)


class UnitNorm(_NormConstraint):
    """Each unit's incoming weights scaled to unit norm."""

    name = "unit_norm"

    def __init__(self, axis: int = 0):
        self.axis = _axis(axis, "UnitNorm")

    def apply(self, xp, w):
        w /= EPSILON + self._norms(xp, w)

    def get_config(self):
        return {"axis": self.axis}


class MinMaxNorm(_NormConstraint):
    """Norms moved towards [min_value, max_value] at ``rate`` (1.0: all the way)."""

    name = "min_max_norm"

    def __init__(self, min_value: float = 0.0, max_value: float = 1.0, rate: float = 1.0, axis: int = 0):
        self.min_value = _number("min_value", min_value, "MinMaxNorm")
        self.max_value = _number("max_value", max_value, "MinMaxNorm")
        if self.max_value < self.min_value:
            raise ValueError(f"MinMaxNorm expected min_value <= max_value, received {min_value!r} > {max_value!r}.")
        self.rate = _number("rate", rate, "MinMaxNorm")
        self.axis = _axis(axis, "MinMaxNorm")

    def apply(self, xp, w):
        norms = self._norms(xp, w)
        desired = self.rate * xp.clip(norms, self.min_value, self.max_value) + (1 - self.rate) * norms
        w *= desired / (EPSILON + norms)

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value, "rate": self.rate, "axis": self.axis}


CONSTRAINTS: dict[str, type[Constraint]] = {cls.name: cls for cls in (MaxNorm, NonNeg, UnitNorm, MinMaxNorm)}
_BY_CLASS = {cls.__name__.lower(): cls for cls in (MaxNorm, NonNeg, UnitNorm, MinMaxNorm)}


def get(identifier: Any) -> Constraint | None:
    """None, a name ("max_norm", "non_neg", ...), a config dict (``{"class_name": "MaxNorm",
    "config": {"max_value": 3}}``, Keras' form) or an instance."""
    if identifier is None:
        return None
    if isinstance(identifier, dict) and isinstance(identifier.get("class_name"), str):
        identifier = {**identifier, "class_name": identifier["class_name"].lower()}
    return resolve(identifier, {**CONSTRAINTS, **_BY_CLASS}, "constraint", Constraint, known=CONSTRAINTS)


def serialize(constraint: Constraint) -> dict[str, Any]:
    return {"class_name": type(constraint).__name__, "config": constraint.get_config()}
