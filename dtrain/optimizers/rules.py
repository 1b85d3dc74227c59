"""The update rules of Keras 3's optimizers, each over a part of the flat buffers.

Each ``_update`` follows the Keras source's order of operations (``keras/src/optimizers/*.py``),
so that float64 runs match Keras to rounding; ``s`` is a scratch buffer of the part, so a step
allocates nothing. ``t`` is the step being taken, 1, 2, ... (Keras' ``iterations + 1``).
"""

from __future__ import annotations

import math
from typing import Any

from .base import Optimizer, fraction, non_negative, positive, unit_interval
from .base import flag as _flag

_COMMON = (
    "weight_decay",
    "clipnorm",
    "clipvalue",
    "global_clipnorm",
    "use_ema",
    "ema_momentum",
    "ema_overwrite_frequency",
    "loss_scale_factor",
    "gradient_accumulation_steps",
    "name",
)


def _common(kwargs: dict[str, Any], cls: str) -> dict[str, Any]:
    """Keras' common optimizer arguments, or an error that names the unknown ones."""
    unknown = sorted(set(kwargs) - set(_COMMON))
    if unknown:
        raise TypeError(
            f"{cls} got unexpected arguments {unknown}; it takes its own ones and Keras' common ones: "
            f"{', '.join(_COMMON)}."
        )
    return kwargs


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum, as in Keras:

    momentum == 0:  w <- w - lr g
    otherwise:      v <- momentum v - lr g
                    w <- w + v                      (classic)
                    w <- w + momentum v - lr g      (nesterov)
    """

    name = "sgd"

    def __init__(self, learning_rate: Any = 0.01, momentum: float = 0.0, nesterov: bool = False, **kwargs: Any):
        super().__init__(learning_rate, **_common(kwargs, "SGD"))
        self.momentum = unit_interval("momentum", momentum)
        self.nesterov = _flag("nesterov", nesterov)
        self.slot_names = ("momentum",) if self.momentum else ()

    def _update(self, xp, w, g, s, slots, lr, s2=None):
        xp.multiply(g, -lr, out=s)  # s = -lr g
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

    def _rule_config(self):
        return {"momentum": self.momentum, "nesterov": self.nesterov}


class _Moments(Optimizer):
    """The optimizers with Adam's arguments (and Keras' defaults): the two moments' decay rates
    and epsilon."""

    def __init__(
        self,
        learning_rate: Any = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        **kwargs: Any,
    ):
        super().__init__(learning_rate, **_common(kwargs, type(self).__name__))
        self.beta_1 = fraction("beta_1", beta_1, allow_zero=True)
        self.beta_2 = fraction("beta_2", beta_2, allow_zero=True)
        self.epsilon = positive("epsilon", epsilon)

    def _rule_config(self):
        return {"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}


class Adam(_Moments):
    """Adam (Kingma & Ba), in Keras' form, at step t:

    m <- m + (1 - beta_1) (g - m)
    v <- v + (1 - beta_2) (g^2 - v)
    v_hat <- max(v_hat, v), and v_hat in place of v      (amsgrad)
    w <- w - lr sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + epsilon)
    """

    name = "adam"

    def __init__(
        self,
        learning_rate: Any = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        amsgrad: bool = False,
        **kwargs: Any,
    ):
        super().__init__(learning_rate, beta_1, beta_2, epsilon, **kwargs)
        self.amsgrad = _flag("amsgrad", amsgrad)
        self.slot_names = ("m", "v", "velocity_hat") if self.amsgrad else ("m", "v")

    def _update(self, xp, w, g, s, slots, lr, s2=None):
        t = self.update_count + 1
        alpha = lr * math.sqrt(1.0 - self.beta_2**t) / (1.0 - self.beta_1**t)
        m, v = slots["m"], slots["v"]
        xp.subtract(g, m, out=s)
        s *= 1.0 - self.beta_1
        m += s
        xp.multiply(g, g, out=s)
        s -= v
        s *= 1.0 - self.beta_2
        v += s
        if self.amsgrad:
            v_hat = slots["velocity_hat"]
            xp.maximum(v_hat, v, out=v_hat)
            v = v_hat
        xp.sqrt(v, out=s)
        s += self.epsilon
        xp.divide(m, s, out=s)
        s *= alpha
        w -= s

    def _rule_config(self):
        config = super()._rule_config()
        if self.amsgrad:
            config["amsgrad"] = True
        return config


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): Keras' Adam with
    ``weight_decay=0.004`` by default, which must be a number."""

    name = "adamw"

    def __init__(
        self,
        learning_rate: Any = 0.001,
        weight_decay: float = 0.004,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        amsgrad: bool = False,
        **kwargs: Any,
    ):
        if weight_decay is None:
            raise ValueError("AdamW's weight_decay must be a number, received weight_decay=None (use Adam instead).")
        super().__init__(learning_rate, beta_1, beta_2, epsilon, amsgrad, weight_decay=weight_decay, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.setdefault("weight_decay", self.weight_decay)  # (always there: it has no default of None)
        return config


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
        learning_rate: Any = 0.001,
        rho: float = 0.9,
        momentum: float = 0.0,
        epsilon: float = 1e-7,
        centered: bool = False,
        **kwargs: Any,
    ):
        super().__init__(learning_rate, **_common(kwargs, "RMSprop"))
        self.rho = fraction("rho", rho, allow_zero=True)
        self.momentum = unit_interval("momentum", momentum)
        self.epsilon = positive("epsilon", epsilon)
        self.centered = _flag("centered", centered)
        self.slot_names = (
            ("velocity",) + (("momentum",) if self.momentum else ()) + (("average_gradient",) if self.centered else ())
        )

    def _update(self, xp, w, g, s, slots, lr, s2=None):
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
        s *= lr  # s = lr g / sqrt(d)
        if self.momentum:
            u = slots["momentum"]
            u *= self.momentum
            u += s
            w -= u
        else:
            w -= s

    def _rule_config(self):
        return {"rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon, "centered": self.centered}


class Adagrad(Optimizer):
    """Adagrad: a <- a + g^2;  w <- w - lr g / sqrt(a + epsilon)."""

    name = "adagrad"
    slot_names = ("accumulator",)
    scratch_count = 2

    def __init__(
        self, learning_rate: Any = 0.001, initial_accumulator_value: float = 0.1, epsilon: float = 1e-7, **kwargs: Any
    ):
        super().__init__(learning_rate, **_common(kwargs, "Adagrad"))
        self.initial_accumulator_value = non_negative("initial_accumulator_value", initial_accumulator_value)
        self.epsilon = positive("epsilon", epsilon)
        self.slot_initial = {"accumulator": self.initial_accumulator_value}

    def _update(self, xp, w, g, s, slots, lr, s2=None):
        a = slots["accumulator"]
        xp.multiply(g, g, out=s)
        a += s
        xp.add(a, self.epsilon, out=s)
        xp.sqrt(s, out=s)
        xp.multiply(g, lr, out=s2)
        s2 /= s
        w -= s2

    def _rule_config(self):
        return {"initial_accumulator_value": self.initial_accumulator_value, "epsilon": self.epsilon}


class Adadelta(Optimizer):
    """Adadelta (Zeiler), as Keras:

    a <- rho a + (1 - rho) g^2
    d <- -sqrt(b + epsilon) g / sqrt(a + epsilon)
    b <- rho b + (1 - rho) d^2
    w <- w + lr d
    """

    name = "adadelta"
    slot_names = ("accumulated_grad", "accumulated_delta_var")
    scratch_count = 2

    def __init__(self, learning_rate: Any = 0.001, rho: float = 0.95, epsilon: float = 1e-7, **kwargs: Any):
        super().__init__(learning_rate, **_common(kwargs, "Adadelta"))
        self.rho = fraction("rho", rho, allow_zero=True)
        self.epsilon = positive("epsilon", epsilon)

    def _update(self, xp, w, g, s, slots, lr, s2=None):
        a, b = slots["accumulated_grad"], slots["accumulated_delta_var"]
        a *= self.rho
        xp.multiply(g, g, out=s)
        s *= 1.0 - self.rho
        a += s
        xp.add(b, self.epsilon, out=s)
        xp.sqrt(s, out=s)
        s *= g  # sqrt(b + eps) g
        xp.add(a, self.epsilon, out=s2)
        xp.sqrt(s2, out=s2)
        s /= s2
        xp.negative(s, out=s)  # d
        b *= self.rho
        xp.multiply(s, s, out=s2)
        s2 *= 1.0 - self.rho
        b += s2
        s *= lr
        w += s

    def _rule_config(self):
        return {"rho": self.rho, "epsilon": self.epsilon}


class Adamax(_Moments):
    """Adamax (the infinity-norm Adam), as Keras:

    m <- m + (1 - beta_1) (g - m)
    u <- max(beta_2 u, |g|)
    w <- w - lr m / ((1 - beta_1^t) (u + epsilon))
    """

    name = "adamax"
    slot_names = ("momentum", "norm")
    scratch_count = 2

    def _update(self, xp, w, g, s, slots, lr, s2=None):
        t = self.update_count + 1
        m, u = slots["momentum"], slots["norm"]
        xp.subtract(g, m, out=s)
        s *= 1.0 - self.beta_1
        m += s
        u *= self.beta_2
        xp.abs(g, out=s)
        xp.maximum(u, s, out=u)
        xp.add(u, self.epsilon, out=s)
        s *= 1.0 - self.beta_1**t
        xp.multiply(m, lr, out=s2)
        s2 /= s
        w -= s2


class Nadam(_Moments):
    """Adam with Nesterov momentum (Dozat), in Keras' form with its momentum schedule
    u_t = beta_1 (1 - 0.5 * 0.96^t) and their running product."""

    name = "nadam"
    slot_names = ("momentum", "velocity")
    scratch_count = 2

    # (steps, the product of u_1 .. u_steps): kept per optimizer once it steps, recomputed after set_state
    _product: tuple[int, float] = (0, 1.0)

    def _u(self, t: int) -> float:
        return self.beta_1 * (1.0 - 0.5 * 0.96**t)

    def _u_product(self, t: int) -> float:
        """u_1 u_2 ... u_t, multiplied in Keras' order (it keeps a running product variable)."""
        steps, product = self._product if self._product[0] <= t else (0, 1.0)
        while steps < t:
            steps += 1
            product = product * self.beta_1 * (1.0 - 0.5 * 0.96**steps)
        self._product = (steps, product)
        return product

    def momentum_product(self) -> float:
        """u_1 ... u_t after the steps taken (Keras' ``_u_product`` variable)."""
        return self._u_product(self.update_count)

    def _update(self, xp, w, g, s, slots, lr, s2=None):
        t = self.update_count + 1
        u_t, u_t_1 = self._u(t), self._u(t + 1)
        u_product_t = self._u_product(t)
        u_product_t_1 = u_product_t * u_t_1
        m, v = slots["momentum"], slots["velocity"]
        xp.subtract(g, m, out=s)
        s *= 1.0 - self.beta_1
        m += s
        xp.multiply(g, g, out=s)
        s -= v
        s *= 1.0 - self.beta_2
        v += s
        # m_hat = u_{t+1} m / (1 - prod_{t+1}) + (1 - u_t) g / (1 - prod_t)
        xp.multiply(m, u_t_1, out=s)
        s /= 1.0 - u_product_t_1
        xp.multiply(g, 1.0 - u_t, out=s2)
        s2 /= 1.0 - u_product_t
        s += s2
        # w <- w - (m_hat lr) / (sqrt(v / (1 - beta_2^t)) + eps)
        s *= lr
        xp.divide(v, 1.0 - self.beta_2**t, out=s2)
        xp.sqrt(s2, out=s2)
        s2 += self.epsilon
        s /= s2
        w -= s


class Lion(Optimizer):
    """Lion (Chen et al.): w <- w - lr sign(beta_1 m + (1 - beta_1) g);  m <- beta_2 m + (1 - beta_2) g."""

    name = "lion"
    slot_names = ("momentum",)
    scratch_count = 2

    def __init__(self, learning_rate: Any = 0.001, beta_1: float = 0.9, beta_2: float = 0.99, **kwargs: Any):
        super().__init__(learning_rate, **_common(kwargs, "Lion"))
        self.beta_1 = unit_interval("beta_1", beta_1)
        self.beta_2 = fraction("beta_2", beta_2, allow_zero=True)
        if self.beta_1 == 0:
            raise ValueError("Expected beta_1 in (0, 1], received beta_1=0.")

    def _update(self, xp, w, g, s, slots, lr, s2=None):
        m = slots["momentum"]
        xp.multiply(m, self.beta_1, out=s)
        xp.multiply(g, 1.0 - self.beta_1, out=s2)
        s += s2
        xp.sign(s, out=s)
        s *= lr
        w -= s
        m *= self.beta_2
        xp.multiply(g, 1.0 - self.beta_2, out=s)
        m += s

    def _rule_config(self):
        return {"beta_1": self.beta_1, "beta_2": self.beta_2}


class Ftrl(Optimizer):
    """FTRL-proximal (McMahan et al.), as Keras' ``update_step``."""

    name = "ftrl"
    slot_names = ("accumulator", "linear")
    scratch_count = 2

    def __init__(
        self,
        learning_rate: Any = 0.001,
        learning_rate_power: float = -0.5,
        initial_accumulator_value: float = 0.1,
        l1_regularization_strength: float = 0.0,
        l2_regularization_strength: float = 0.0,
        l2_shrinkage_regularization_strength: float = 0.0,
        beta: float = 0.0,
        **kwargs: Any,
    ):
        super().__init__(learning_rate, **_common(kwargs, "Ftrl"))
        if not isinstance(learning_rate_power, (int, float)) or not -math.inf < learning_rate_power <= 0:
            raise ValueError(
                f"Expected learning_rate_power <= 0, received learning_rate_power={learning_rate_power!r}."
            )
        self.learning_rate_power = float(learning_rate_power)
        self.initial_accumulator_value = non_negative("initial_accumulator_value", initial_accumulator_value)
        self.l1_regularization_strength = non_negative("l1_regularization_strength", l1_regularization_strength)
        self.l2_regularization_strength = non_negative("l2_regularization_strength", l2_regularization_strength)
        self.l2_shrinkage_regularization_strength = non_negative(
            "l2_shrinkage_regularization_strength", l2_shrinkage_regularization_strength
        )
        self.beta = non_negative("beta", beta)
        self.slot_initial = {"accumulator": self.initial_accumulator_value}

    def _update(self, xp, w, g, s, slots, lr, s2=None):
        accum, linear = slots["accumulator"], slots["linear"]
        power = -self.learning_rate_power
        l2 = self.l2_regularization_strength + self.beta / (2.0 * lr)
        xp.multiply(g, g, out=s2)
        s2 += accum  # new_accum
        # linear <- linear + ((g + 2 shrink w) - (new_accum^p - accum^p) / lr * w); accum is
        # free once its power is taken (new_accum is in s2), so it serves as scratch meanwhile
        xp.power(s2, power, out=s)
        xp.power(accum, power, out=accum)
        s -= accum
        s /= lr
        s *= w
        xp.multiply(w, 2 * self.l2_shrinkage_regularization_strength, out=accum)
        accum += g
        accum -= s
        linear += accum
        # quadratic = new_accum^p / lr + 2 l2;  w <- (clip(linear, -l1, l1) - linear) / quadratic
        xp.power(s2, power, out=s)
        s /= lr
        s += 2 * l2
        l1 = self.l1_regularization_strength
        xp.clip(linear, -l1, l1, out=accum)
        accum -= linear
        xp.divide(accum, s, out=w)
        accum[...] = s2

    def _rule_config(self):
        return {
            "learning_rate_power": self.learning_rate_power,
            "initial_accumulator_value": self.initial_accumulator_value,
            "l1_regularization_strength": self.l1_regularization_strength,
            "l2_regularization_strength": self.l2_regularization_strength,
            "l2_shrinkage_regularization_strength": self.l2_shrinkage_regularization_strength,
            "beta": self.beta,
        }
