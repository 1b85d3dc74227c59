"""Optimizers with Keras names, defaults and update rules, over one flat parameter buffer.

Every model keeps all its parameters in one contiguous array and all gradients in another,
so an update is a handful of vectorised in-place expressions over the whole model; a scratch
buffer allocated once keeps steady-state steps free of allocations.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from .backend import Array, host_copy
from .registry import resolve


def _is_real(value: Any) -> bool:
    """A real number (Python or NumPy, not bool), finite."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)


def _positive(name: str, value: Any) -> float:
    if not _is_real(value) or value <= 0:
        raise ValueError(f"Expected {name} to be a positive number, received {name}={value!r}.")
    return float(value)


def _fraction(name: str, value: Any, *, allow_zero: bool = False) -> float:
    ok = _is_real(value) and (0 <= value < 1 if allow_zero else 0 < value < 1)
    if not ok:
        bounds = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"Expected {name} in {bounds}, received {name}={value!r}.")
    return float(value)


def _momentum(value: Any) -> float:
    if not _is_real(value) or not 0 <= value <= 1:
        raise ValueError(f"Expected momentum in [0, 1], received momentum={value!r}.")
    return float(value)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"Expected {name} to be True or False, received {name}={value!r}.")
    return bool(value)


class Optimizer:
    """State + one update rule. ``build(xp, params)`` allocates the state for a flat parameter
    array; ``apply(params, grads)`` updates ``params`` in place."""

    name = "optimizer"
    slot_names: tuple[str, ...] = ()

    def __init__(self, learning_rate: float):
        self.learning_rate = _positive("learning_rate", learning_rate)
        self.iterations = 0
        self.slots: dict[str, Array] = {}
        self._scratch: Array = None  # None until build()
        self._xp: Any = None  # the array module (numpy or cupy) of the parameters: None until build()

    def build(self, xp: Any, params: Array) -> None:
        """Fresh state for ``params``: zero slots and step count 0 (a step count kept from
        earlier training with zeroed slots would apply the wrong bias correction)."""
        self._xp = xp
        self._scratch = xp.empty_like(params)
        self.slots = {name: xp.zeros_like(params) for name in self.slot_names}
        self.iterations = 0

    @property
    def built(self) -> bool:
        return self._scratch is not None

    def apply(self, params: Array, grads: Array, part: slice = slice(None)) -> None:
        """One step: ``params`` updated in place from ``grads``. With ``part``, only that part of
        the flat buffers (and of the state) is updated, as one rank's share of a sharded step:
        the update is elementwise, so the parts together give the bits of the whole."""
        if not self.built or self._scratch.shape != params.shape:
            raise RuntimeError(f"{type(self).__name__} was not built for these parameters; call build(xp, params).")
        self.iterations += 1
        slots = {name: slot[part] for name, slot in self.slots.items()}
        self._update(self._xp, params[part], grads[part], self._scratch[part], slots)

    def _update(self, xp: Any, w: Array, g: Array, s: Array, slots: dict[str, Array]) -> None:
        """Update ``w`` in place from ``g``, with ``s`` as scratch and ``slots`` the state (views of
        the same part)."""
        raise NotImplementedError

    # -- serialisation ------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {"learning_rate": self.learning_rate}

    def get_state(self) -> dict[str, np.ndarray]:
        """Slots and the step count as host arrays (for saving and checkpoints)."""
        state = {name: host_copy(arr) for name, arr in self.slots.items()}
        state["iterations"] = np.array(self.iterations, dtype=np.int64)
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        if not self.built:
            raise RuntimeError("Build the optimizer (compile and build the model) before setting its state.")
        missing = set(self.slot_names) - set(state)
        if missing:
            raise ValueError(f"Optimizer state for {self.name!r} is missing {sorted(missing)}.")
        for name in self.slot_names:
            value = np.asarray(state[name])
            if value.shape != self.slots[name].shape:
                raise ValueError(f"Optimizer slot {name!r} has shape {value.shape}, expected {self.slots[name].shape}.")
            self.slots[name][...] = self._xp.asarray(value, dtype=self.slots[name].dtype)
        self.iterations = int(np.asarray(state.get("iterations", 0)).reshape(-1)[0])  # () or (1,) on disk

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum, as in Keras:

    momentum == 0:  w <- w - lr g
    otherwise:      v <- momentum v - lr g
                    w <- w + v                      (classic)
                    w <- w + momentum v - lr g      (nesterov)
    """

    name = "sgd"

    def __init__(self, learning_rate: float = 0.01, momentum: float = 0.0, nesterov: bool = False):
        super().__init__(learning_rate)
        self.momentum = _momentum(momentum)
        self.nesterov = _flag("nesterov", nesterov)
        self.slot_names = ("momentum",) if self.momentum else ()

    def _update(self, xp, w, g, s, slots):
        xp.multiply(g, -self.learning_rate, out=s)  # s = -lr g
        if not self.momentum:
            w += s
            return
        v = slots["momentum"]
        v *= self.momentum
        v += s  # v = momentum v - lr g
        if self.nesterov:
            w += s
            xp.multiply(v, self.momentum, out=s)
            w += s
        else:
            w += v

    def get_config(self):
        return {"learning_rate": self.learning_rate, "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam (Kingma & Ba), in Keras' form, at step t = 1, 2, ...:

    m <- m + (1 - beta_1) (g - m)
    v <- v + (1 - beta_2) (g^2 - v)
    w <- w - lr sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + epsilon)
    """

    name = "adam"
    slot_names = ("m", "v")

    def __init__(self, learning_rate: float = 0.001, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7):
        super().__init__(learning_rate)
        self.beta_1 = _fraction("beta_1", beta_1, allow_zero=True)
        self.beta_2 = _fraction("beta_2", beta_2, allow_zero=True)
        self.epsilon = _positive("epsilon", epsilon)

    def _update(self, xp, w, g, s, slots):
        t = self.iterations
        alpha = self.learning_rate * math.sqrt(1.0 - self.beta_2**t) / (1.0 - self.beta_1**t)
        m, v = slots["m"], slots["v"]
        xp.subtract(g, m, out=s)
        s *= 1.0 - self.beta_1
        m += s
        xp.multiply(g, g, out=s)
        s -= v
        s *= 1.0 - self.beta_2
        v += s
        xp.sqrt(v, out=s)
        s += self.epsilon
        xp.divide(m, s, out=s)
        s *= alpha
        w -= s

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
        }


class RMSprop(Optimizer):
    """RMSprop in Keras' form:

    r <- rho r + (1 - rho) g^2
    d <- r + epsilon                       (centered: d <- max(r - a^2, 0) + epsilon,
                                             with a <- rho a + (1 - rho) g; the max
                                             only undoes rounding, r - a^2 >= 0)
    momentum == 0:  w <- w - lr g / sqrt(d)
    otherwise:      u <- momentum u + lr g / sqrt(d);  w <- w - u
    """

    name = "rmsprop"

    def __init__(
        self,
        learning_rate: float = 0.001,
        rho: float = 0.9,
        momentum: float = 0.0,
        epsilon: float = 1e-7,
        centered: bool = False,
    ):
        super().__init__(learning_rate)
        self.rho = _fraction("rho", rho, allow_zero=True)
        self.momentum = _momentum(momentum)
        self.epsilon = _positive("epsilon", epsilon)
        self.centered = _flag("centered", centered)
        self.slot_names = (
            ("velocity",) + (("momentum",) if self.momentum else ()) + (("average_gradient",) if self.centered else ())
        )

    def _update(self, xp, w, g, s, slots):
        r = slots["velocity"]
        r *= self.rho
        xp.multiply(g, g, out=s)
        s *= 1.0 - self.rho
        r += s  # r = rho r + (1 - rho) g^2
        if self.centered:
            a = slots["average_gradient"]
            a *= self.rho
            xp.multiply(g, 1.0 - self.rho, out=s)
            a += s
            xp.multiply(a, a, out=s)
            xp.subtract(r, s, out=s)
            # r - a^2 >= 0 exactly (a variance), but rounding can make it slightly negative
            # when the gradient is steady (float32: then sqrt gives NaN); clamp it.
            xp.maximum(s, 0.0, out=s)
        else:
            xp.copyto(s, r)
        s += self.epsilon
        xp.sqrt(s, out=s)
        xp.divide(g, s, out=s)
        s *= self.learning_rate  # s = lr g / sqrt(d)
        if self.momentum:
            u = slots["momentum"]
            u *= self.momentum
            u += s
            w -= u
        else:
            w -= s

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "rho": self.rho,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "centered": self.centered,
        }


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam, "rmsprop": RMSprop}


def get(identifier: Any) -> Optimizer:
    """Return an optimizer from a name ("sgd"), a config dict or an instance."""
    return resolve(identifier, OPTIMIZERS, "optimizer", Optimizer)


def serialize(optimizer: Optimizer) -> dict[str, Any]:
    return {"class_name": optimizer.name, "config": optimizer.get_config()}
