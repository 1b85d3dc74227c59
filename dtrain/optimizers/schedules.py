"""Learning-rate schedules with Keras 3's names, arguments and formulas
(``keras.optimizers.schedules``): a schedule is a function of the optimizer's step count,
evaluated in float64 before each step. Pass one as an optimizer's ``learning_rate``; it is saved
with the model and in checkpoints, and a job file names it as
``learning_rate: {schedule: cosine_decay, initial_learning_rate: 0.1, decay_steps: 1000}``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..registry import resolve


def _number(name: str, value: Any, *, positive: bool = False, non_negative: bool = False) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)
    if ok and positive:
        ok = value > 0
    if ok and non_negative:
        ok = value >= 0
    if not ok:
        what = "a positive number" if positive else "a number >= 0" if non_negative else "a finite number"
        raise ValueError(f"Expected {name} to be {what}, received {name}={value!r}.")
    return float(value)


def _steps(name: str, value: Any) -> Any:
    """A positive number of steps; an int stays an int (in the config, as given)."""
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)) or not float(value) > 0:
        raise ValueError(f"Argument `{name}` must be > 0. Received: {name}={value!r}")
    return value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"Expected {name} to be True or False, received {name}={value!r}.")
    return bool(value)


class LearningRateSchedule:
    """A learning rate as a function of the step count (0 for the first step)."""

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and isinstance(other, LearningRateSchedule)
            and (other.get_config() == self.get_config())
        )

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"


class _TimeDecay(LearningRateSchedule):
    """The decays of ``p = step / decay_steps`` (floored with ``staircase``) at ``decay_rate``."""

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: int,
        decay_rate: float,
        staircase: bool = False,
        name: str | None = None,  # (Keras' default: the class's name)
    ):
        name = type(self).__name__ if name is None else name
        self.initial_learning_rate = _number("initial_learning_rate", initial_learning_rate, positive=True)
        self.decay_steps = _steps("decay_steps", decay_steps)
        self.decay_rate = _number("decay_rate", decay_rate, non_negative=True)
        self.staircase = _flag("staircase", staircase)
        self.name = name

    def _p(self, step: int) -> float:
        p = step / self.decay_steps
        return math.floor(p) if self.staircase else p

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
            "name": self.name,
        }


class ExponentialDecay(_TimeDecay):
    """initial_learning_rate * decay_rate ** (step / decay_steps), the exponent floored with staircase."""

    def __call__(self, step: int) -> float:
        return self.initial_learning_rate * self.decay_rate ** self._p(step)


class PiecewiseConstantDecay(LearningRateSchedule):
    """values[0] up to boundaries[0] (included), values[1] up to boundaries[1], ..., values[-1] after."""

    def __init__(self, boundaries: list[int], values: list[float], name: str = "PiecewiseConstant"):
        if not isinstance(boundaries, (list, tuple)) or not isinstance(values, (list, tuple)):
            raise ValueError(f"Expected lists of boundaries and values, received {boundaries!r} and {values!r}.")
        if len(boundaries) != len(values) - 1:
            raise ValueError(
                "The length of boundaries should be 1 less than the length of values. Received: "
                f"boundaries={list(boundaries)} of length {len(boundaries)}, and values={list(values)} of length "
                f"{len(values)}."
            )
        self.boundaries = [_number("a boundary", b, non_negative=True) for b in boundaries]
        if any(b >= c for b, c in zip(self.boundaries, self.boundaries[1:])):
            raise ValueError(f"Expected increasing boundaries, received {list(boundaries)}.")
        self.boundaries = list(boundaries)
        self.values = [_number("a value", v, positive=True) for v in values]
        self.name = name

    def __call__(self, step: int) -> float:
        for boundary, value in zip(self.boundaries, self.values):
            if step <= boundary:
                return value
        return self.values[-1]

    def get_config(self):
        return {"boundaries": list(self.boundaries), "values": list(self.values), "name": self.name}


class PolynomialDecay(LearningRateSchedule):
    """(initial - end) * (1 - step / decay_steps) ** power + end, the step held at decay_steps
    (or, with cycle, decay_steps stretched to the next multiple past the step)."""

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: int,
        end_learning_rate: float = 0.0001,
        power: float = 1.0,
        cycle: bool = False,
        name: str = "PolynomialDecay",
    ):
        self.initial_learning_rate = _number("initial_learning_rate", initial_learning_rate, positive=True)
        self.decay_steps = _steps("decay_steps", decay_steps)
        self.end_learning_rate = _number("end_learning_rate", end_learning_rate, non_negative=True)
        self.power = _number("power", power)
        self.cycle = _flag("cycle", cycle)
        self.name = name

    def __call__(self, step: int) -> float:
        decay_steps = float(self.decay_steps)
        step_f = float(step)
        if self.cycle:
            multiplier = 1.0 if step_f == 0 else math.ceil(step_f / self.decay_steps)
            decay_steps = decay_steps * multiplier
        else:
            step_f = min(step_f, decay_steps)
        p = step_f / decay_steps
        return (self.initial_learning_rate - self.end_learning_rate) * (1 - p) ** self.power + self.end_learning_rate

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "end_learning_rate": self.end_learning_rate,
            "power": self.power,
            "cycle": self.cycle,
            "name": self.name,
        }


class InverseTimeDecay(_TimeDecay):
    """initial_learning_rate / (1 + decay_rate * step / decay_steps), the ratio floored with staircase."""

    def __call__(self, step: int) -> float:
        return self.initial_learning_rate / (1.0 + self.decay_rate * self._p(step))


class CosineDecay(LearningRateSchedule):
    """Cosine decay (Loshchilov & Hutter) from initial_learning_rate (or, after a linear warmup of
    warmup_steps to warmup_target, from warmup_target) to alpha times it over decay_steps."""

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: int,
        alpha: float = 0.0,
        name: str = "CosineDecay",
        warmup_target: float | None = None,
        warmup_steps: int = 0,
    ):
        self.initial_learning_rate = _number("initial_learning_rate", initial_learning_rate, non_negative=True)
        self.decay_steps = _steps("decay_steps", decay_steps)
        self.alpha = _number("alpha", alpha, non_negative=True)
        self.name = name
        self.warmup_target = None if warmup_target is None else _number("warmup_target", warmup_target, positive=True)
        if not isinstance(warmup_steps, numbers.Integral) or isinstance(warmup_steps, bool) or warmup_steps < 0:
            raise ValueError(f"Expected warmup_steps to be an integer >= 0, received warmup_steps={warmup_steps!r}.")
        self.warmup_steps: int = int(warmup_steps)
        if self.warmup_target is None and self.initial_learning_rate <= 0:
            raise ValueError("Expected initial_learning_rate > 0 without a warmup, received 0.")

    def _decay(self, step: float, decay_from: float) -> float:
        completed = step / self.decay_steps
        cosine = 0.5 * (1.0 + math.cos(math.pi * completed))
        return decay_from * ((1 - self.alpha) * cosine + self.alpha)

    def __call__(self, step: int) -> float:
        s = float(step)
        if self.warmup_target is None:
            return self._decay(min(s, self.decay_steps), self.initial_learning_rate)
        s = min(s, self.decay_steps + self.warmup_steps)
        if s < self.warmup_steps:
            completed = s / self.warmup_steps
            return (self.warmup_target - self.initial_learning_rate) * completed + self.initial_learning_rate
        return self._decay(s - self.warmup_steps, self.warmup_target)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "alpha": self.alpha,
            "name": self.name,
            "warmup_target": self.warmup_target,
            "warmup_steps": self.warmup_steps,
        }


class CosineDecayRestarts(LearningRateSchedule):
    """Cosine decay with warm restarts (SGDR): periods of first_decay_steps, each t_mul times the
    one before, each starting from m_mul times the rate the one before started from."""

    def __init__(
        self,
        initial_learning_rate: float,
        first_decay_steps: int,
        t_mul: float = 2.0,
        m_mul: float = 1.0,
        alpha: float = 0.0,
        name: str = "SGDRDecay",
    ):
        self.initial_learning_rate = _number("initial_learning_rate", initial_learning_rate, positive=True)
        self.first_decay_steps = _steps("first_decay_steps", first_decay_steps)
        self.t_mul = _number("t_mul", t_mul, positive=True)
        self.m_mul = _number("m_mul", m_mul, non_negative=True)
        self.alpha = _number("alpha", alpha, non_negative=True)
        self.name = name

    def __call__(self, step: int) -> float:
        completed = float(step) / self.first_decay_steps
        if self.t_mul == 1.0:
            restart = math.floor(completed)
            completed -= restart
        else:
            restart = math.floor(math.log(1.0 - completed * (1.0 - self.t_mul)) / math.log(self.t_mul))
            done = (1.0 - self.t_mul**restart) / (1.0 - self.t_mul)
            completed = (completed - done) / self.t_mul**restart
        cosine = 0.5 * self.m_mul**restart * (1.0 + math.cos(math.pi * completed))
        return self.initial_learning_rate * ((1 - self.alpha) * cosine + self.alpha)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "first_decay_steps": self.first_decay_steps,
            "t_mul": self.t_mul,
            "m_mul": self.m_mul,
            "alpha": self.alpha,
            "name": self.name,
        }


SCHEDULES: dict[str, type[LearningRateSchedule]] = {
    "exponential_decay": ExponentialDecay,
    "piecewise_constant_decay": PiecewiseConstantDecay,
    "polynomial_decay": PolynomialDecay,
    "inverse_time_decay": InverseTimeDecay,
    "cosine_decay": CosineDecay,
    "cosine_decay_restarts": CosineDecayRestarts,
}
_BY_NAME = {**SCHEDULES, **{cls.__name__.lower(): cls for cls in SCHEDULES.values()}}  # (the registry lowercases)


def get(identifier: Any) -> LearningRateSchedule:
    """A schedule from an instance, Keras' serialised form ``{"class_name": "CosineDecay",
    "config": {...}}``, or a job file's ``{"schedule": "cosine_decay", **arguments}``."""
    if isinstance(identifier, Mapping) and "schedule" in identifier and "class_name" not in identifier:
        arguments = {k: v for k, v in identifier.items() if k != "schedule"}  # (a schedule has a name argument)
        identifier = {"class_name": identifier["schedule"], "config": arguments}
    return resolve(identifier, _BY_NAME, "learning-rate schedule", LearningRateSchedule, known=SCHEDULES)


def serialize(schedule: LearningRateSchedule) -> dict[str, Any]:
    return {"class_name": type(schedule).__name__, "config": schedule.get_config()}
