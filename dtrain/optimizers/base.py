"""The optimizer base: state over one flat parameter buffer, and what every Keras 3 optimizer
does around its update rule (``keras.optimizers.Optimizer``'s common arguments).

Every model keeps all its parameters in one contiguous array and all gradients in another,
so an update is a handful of vectorised in-place expressions over the whole model; a scratch
buffer allocated once keeps steady-state steps free of allocations.

One step (:meth:`Optimizer.apply`), in Keras' order:

1. ``gradient_accumulation_steps=n``: steps that are not the n-th only add the gradient to an
   accumulator; the n-th applies the mean of the n gradients (and empties the accumulator).
2. Clipping of the gradient: ``clipnorm`` (each weight's gradient to that L2 norm),
   ``global_clipnorm`` (all of them together), or ``clipvalue`` (each element).
3. ``weight_decay``: ``w <- w - w * weight_decay * lr`` (decoupled, before the update).
4. The update rule (:meth:`Optimizer._update`) with the current learning rate: a float, or a
   schedule of the step count (:mod:`dtrain.optimizers.schedules`).
5. ``use_ema``: an exponential moving average of the weights; every ``ema_overwrite_frequency``
   steps, and at the end of ``fit``, the weights take its value.

The norms of step 2 are sums over whole weights. On a sharded step a rank holds only a part of
the buffer, so the caller adds each rank's :meth:`squared_norms` over the ranks (they ride in the
step's one small allreduce) and passes the sums to :meth:`apply`: every rank then clips with the
norm of the summed gradient, as one process does.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from ..backend import Array, host_copy
from . import schedules


def _is_real(value: Any) -> bool:
    """A real number (Python or NumPy, not bool), finite."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)


def positive(name: str, value: Any) -> float:
    if not _is_real(value) or value <= 0:
        raise ValueError(f"Expected {name} to be a positive number, received {name}={value!r}.")
    return float(value)


def non_negative(name: str, value: Any) -> float:
    if not _is_real(value) or value < 0:
        raise ValueError(f"Expected {name} to be a number >= 0, received {name}={value!r}.")
    return float(value)


def fraction(name: str, value: Any, *, allow_zero: bool = False) -> float:
    ok = _is_real(value) and (0 <= value < 1 if allow_zero else 0 < value < 1)
    if not ok:
        bounds = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"Expected {name} in {bounds}, received {name}={value!r}.")
    return float(value)


def unit_interval(name: str, value: Any) -> float:
    if not _is_real(value) or not 0 <= value <= 1:
        raise ValueError(f"Expected {name} in [0, 1], received {name}={value!r}.")
    return float(value)


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"Expected {name} to be True or False, received {name}={value!r}.")
    return bool(value)


def _count(name: str, value: Any, minimum: int) -> int | None:
    if value is None:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)) or value < minimum:
        raise ValueError(f"Expected {name} to be None or an integer >= {minimum}, received {name}={value!r}.")
    return int(value)


def _optional_positive(name: str, value: Any) -> float | None:
    return None if value is None else positive(name, value)


# Keras' common arguments and their defaults, in the order of its get_config().
COMMON_DEFAULTS: dict[str, Any] = {
    "weight_decay": None,
    "clipnorm": None,
    "global_clipnorm": None,
    "clipvalue": None,
    "use_ema": False,
    "ema_momentum": 0.99,
    "ema_overwrite_frequency": None,
    "loss_scale_factor": None,
    "gradient_accumulation_steps": None,
}


class Optimizer:
    """State + one update rule. ``build(xp, params)`` allocates the state for a flat parameter
    array; ``apply(params, grads)`` updates ``params`` in place.

    ``iterations`` counts the calls of :meth:`apply` (Keras' ``optimizer._iterations``, what it
    saves); with gradient accumulation the update rule's step count is ``iterations //
    gradient_accumulation_steps`` (Keras' ``optimizer.iterations``), while a schedule sees every
    call, as in Keras."""

    name = "optimizer"
    slot_names: tuple[str, ...] = ()
    slot_initial: dict[str, float] = {}  # slots that do not start at zero
    scratch_count = 1  # rules that need a second scratch buffer say 2
    keyword_parameters = (*COMMON_DEFAULTS, "name")  # what every optimizer takes beside its own arguments

    def __init__(
        self,
        learning_rate: Any,
        *,
        weight_decay: float | None = None,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: int | None = None,
        loss_scale_factor: float | None = None,
        gradient_accumulation_steps: int | None = None,
        name: str | None = None,
    ):
        self._learning_rate = _learning_rate(learning_rate)
        self.weight_decay = None if weight_decay is None else non_negative("weight_decay", weight_decay)
        self.clipnorm = _optional_positive("clipnorm", clipnorm)
        self.clipvalue = _optional_positive("clipvalue", clipvalue)
        self.global_clipnorm = _optional_positive("global_clipnorm", global_clipnorm)
        chosen = [k for k in ("clipnorm", "clipvalue", "global_clipnorm") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError(
                f"Only one of clipnorm, clipvalue and global_clipnorm can be set, received {', '.join(chosen)}."
            )
        self.use_ema = flag("use_ema", use_ema)
        self.ema_momentum = unit_interval("ema_momentum", ema_momentum)
        self.ema_overwrite_frequency = _count("ema_overwrite_frequency", ema_overwrite_frequency, 1)
        self.loss_scale_factor = None
        if loss_scale_factor is not None:
            raise ValueError(
                f"loss_scale_factor={loss_scale_factor!r} is not supported: dtrain trains in float32 or float64, "
                "where no loss scaling is needed; leave it None."
            )
        self.gradient_accumulation_steps = _count("gradient_accumulation_steps", gradient_accumulation_steps, 2)
        if name is not None and not isinstance(name, str):
            raise ValueError(f"Expected name to be a string, received name={name!r}.")
        self.display_name = name
        self.iterations = 0
        self.slots: dict[str, Array] = {}
        self._scratch: Array = None  # None until build()
        self._scratch2: Array = None
        self._xp: Any = None  # the array module (numpy or cupy) of the parameters: None until build()
        self._spans: list[tuple[int, int]] = []  # the trained weights' (start, stop) in the flat buffer

    # -- the learning rate ----------------------------------------------------------------------
    @property
    def learning_rate(self) -> float:
        """The learning rate of the next step (a schedule's value at ``iterations``). Set it
        to a number (or a schedule) between epochs, as Keras allows; an optimizer made with a
        schedule refuses a number, as Keras does."""
        return self.current_learning_rate()

    @learning_rate.setter
    def learning_rate(self, value: Any) -> None:
        if isinstance(self._learning_rate, schedules.LearningRateSchedule) and not isinstance(
            value, schedules.LearningRateSchedule
        ):
            raise TypeError(
                "This optimizer was created with a LearningRateSchedule as its learning_rate, so its learning rate "
                "cannot be set to a number; create the optimizer with a float learning_rate to set it."
            )
        self._learning_rate = _learning_rate(value)

    @property
    def schedule(self) -> schedules.LearningRateSchedule | None:
        return self._learning_rate if isinstance(self._learning_rate, schedules.LearningRateSchedule) else None

    def current_learning_rate(self) -> float:
        if isinstance(self._learning_rate, schedules.LearningRateSchedule):
            return self._learning_rate(self.iterations)
        return self._learning_rate

    # -- state -----------------------------------------------------------------------------------
    @property
    def state_slot_names(self) -> tuple[str, ...]:
        """The update rule's slots, then the common ones (EMA, accumulation)."""
        extra = (("average",) if self.use_ema else ()) + (
            ("gradient_accumulator",) if self.gradient_accumulation_steps else ()
        )
        return tuple(self.slot_names) + extra

    def build(self, xp: Any, params: Array, spans: list[tuple[int, int]] | None = None) -> None:
        """Fresh state for ``params``: slots at their initial values and step count 0 (a step
        count kept from earlier training with fresh slots would apply the wrong bias correction).
        ``spans``: the (start, stop) of each trained weight in the flat buffer, for clipping by
        norm (default: one weight, the whole buffer)."""
        self._xp = xp
        self._scratch = xp.empty_like(params)
        self._scratch2 = xp.empty_like(params) if self.scratch_count > 1 else None
        self.slots = {}
        for name in self.state_slot_names:
            self.slots[name] = xp.full_like(params, self.slot_initial.get(name, 0.0))
        if self.use_ema:
            self.slots["average"][...] = params
        self._spans = list(spans) if spans is not None else [(0, int(params.size))]
        self.iterations = 0

    @property
    def built(self) -> bool:
        return self._scratch is not None

    @property
    def clips_by_norm(self) -> bool:
        return self.clipnorm is not None or self.global_clipnorm is not None

    @property
    def norm_count(self) -> int:
        """How many squared norms :meth:`squared_norms` returns (one per trained weight)."""
        return len(self._spans)

    def _applies_now(self) -> bool:
        """False on the steps that only accumulate the gradient."""
        n = self.gradient_accumulation_steps
        return not n or (self.iterations + 1) % n == 0

    def squared_norms(self, grads: Array, part: slice = slice(None)) -> np.ndarray | None:
        """Per trained weight, the sum of squares of this step's gradient (after accumulation)
        inside ``part`` of the buffer, as float64; None when the step does not clip by norm. The
        caller of a sharded step sums them over the ranks and passes the sums to :meth:`apply`."""
        if not self.clips_by_norm or not self._applies_now():
            return None
        xp = self._xp
        g = grads
        if self.gradient_accumulation_steps:  # the mean of the accumulated gradients, as apply will use it
            acc = self.slots["gradient_accumulator"]
            g = self._scratch
            xp.add(acc[part], grads[part], out=g[part])
            g[part] /= self.gradient_accumulation_steps
        lo, hi = _bounds(part, grads.size)
        out = np.zeros(len(self._spans))
        for i, (start, stop) in enumerate(self._spans):
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                segment = g[a:b]
                out[i] = float(xp.dot(segment, segment))
        return out

    def apply(
        self, params: Array, grads: Array, part: slice = slice(None), squared_norms: np.ndarray | None = None
    ) -> None:
        """One step: ``params`` updated in place from ``grads`` (which clipping may change in
        place). With ``part``, only that part of the flat buffers (and of the state) is updated,
        as one rank's share of a sharded step: everything but the norms is elementwise, so the
        parts together give the bits of the whole, and the norms come in ``squared_norms``."""
        if not self.built or self._scratch.shape != params.shape:
            raise RuntimeError(f"{type(self).__name__} was not built for these parameters; call build(xp, params).")
        xp = self._xp
        lr = self.current_learning_rate()  # (a schedule sees every call, accumulation steps too)
        slots = {name: slot[part] for name, slot in self.slots.items()}
        g = grads[part]
        applies = self._applies_now()
        if applies and self.clips_by_norm and squared_norms is None:
            if part != slice(None):
                raise ValueError("A part of the buffer is clipped by norm only with the squared norms summed.")
            squared_norms = self.squared_norms(grads)  # (before the accumulator takes this gradient)
        if self.gradient_accumulation_steps:
            acc = slots["gradient_accumulator"]
            acc += g
            if applies:
                acc /= self.gradient_accumulation_steps
                g = acc
        if applies:
            if squared_norms is not None:
                self._clip_by_norm(g, part, squared_norms, grads.size)
            elif self.clipvalue is not None:
                xp.clip(g, -self.clipvalue, self.clipvalue, out=g)
            w = params[part]
            if self.weight_decay:  # Keras: w - w * weight_decay * lr, in that order
                decay = xp.multiply(w, self.weight_decay, out=self._scratch[part])
                decay *= lr
                w -= decay
            s2 = None if self._scratch2 is None else self._scratch2[part]
            self._update(xp, w, g, self._scratch[part], slots, lr, s2)
            if self.gradient_accumulation_steps:
                slots["gradient_accumulator"].fill(0)
        if self.use_ema:
            self._update_average(xp, params[part], slots["average"], self._scratch[part])
        self.iterations += 1

    @property
    def update_count(self) -> int:
        """Updates applied so far (Keras' ``optimizer.iterations``): the update rule's step count."""
        n = self.gradient_accumulation_steps
        return self.iterations // n if n else self.iterations

    def _clip_by_norm(self, g: Array, part: slice, squared: np.ndarray, size: int) -> None:
        lo, hi = _bounds(part, size)
        if self.global_clipnorm is not None:
            norm = math.sqrt(float(np.sum(squared)))
            clip: float = self.global_clipnorm
            # Keras: clip * min(1/norm, 1/clip), NaN when the norm is not finite
            scale = clip * min(1.0 / norm, 1.0 / clip) if norm > 0 else 1.0
            if not math.isfinite(norm):
                scale = math.nan
            if scale != 1.0:
                g *= scale
            return
        assert self.clipnorm is not None
        clip = self.clipnorm
        for (start, stop), sq in zip(self._spans, squared):
            a, b = max(start, lo), min(stop, hi)
            norm = math.sqrt(sq)
            if a < b and norm > clip:
                g[a - lo : b - lo] *= clip / norm
            elif a < b and not math.isfinite(norm):
                g[a - lo : b - lo] *= math.nan

    def _update_average(self, xp: Any, w: Array, average: Array, s: Array) -> None:
        """Keras' EMA: the first update takes the weights, later ones move towards them."""
        momentum = self.ema_momentum if self.update_count > 0 else 0.0
        average *= momentum
        average += xp.multiply(w, 1.0 - momentum, out=s)
        frequency = self.ema_overwrite_frequency
        if frequency and (self.update_count + 1) % frequency == 0:
            w[...] = average

    def finalize(self, params: Array) -> None:
        """At the end of ``fit``: with ``use_ema`` the weights take their moving average (Keras'
        ``finalize_variable_values``); the caller keeps the weights that are not trained."""
        if self.use_ema and self.built:
            params[...] = self.slots["average"]

    def _update(
        self, xp: Any, w: Array, g: Array, s: Array, slots: dict[str, Array], lr: float, s2: Array = None
    ) -> None:
        """Update ``w`` in place from ``g`` with learning rate ``lr``, with ``s`` (and ``s2``, for
        rules with ``scratch_count = 2``) as scratch and ``slots`` the state (views of the same
        part). ``self.update_count`` is the steps before this one."""
        raise NotImplementedError

    # -- serialisation ------------------------------------------------------------------------
    def _rule_config(self) -> dict[str, Any]:
        """The update rule's own arguments (after learning_rate)."""
        return {}

    def get_config(self) -> dict[str, Any]:
        lr = self._learning_rate
        config: dict[str, Any] = {"learning_rate": schedules.serialize(lr) if not isinstance(lr, float) else lr}
        config.update(self._rule_config())
        for key, default in COMMON_DEFAULTS.items():
            value = getattr(self, key)
            if value != default:  # (the defaults are left out: files stay readable by older versions)
                config[key] = value
        if self.display_name is not None:
            config["name"] = self.display_name
        return config

    # -- what may change between epochs (callbacks) ------------------------------------------
    def hyperparameters(self) -> dict[str, Any]:
        """Every argument's current value, defaults included: what a callback may have changed."""
        lr = self._learning_rate
        return {
            "learning_rate": lr if isinstance(lr, float) else schedules.serialize(lr),
            **self._rule_config(),
            **{key: getattr(self, key) for key in COMMON_DEFAULTS},
            "class": type(self).__name__,
        }

    def changes_since(self, before: dict[str, Any]) -> dict[str, float]:
        """The numbers changed since ``before`` (a :meth:`hyperparameters`), checked as the
        constructor checks them. A change of anything else (a flag, an optional argument set
        or unset, a schedule, another optimizer) changes the optimizer's state or rule: a
        ValueError that names it, for runs that can only send the ranks numbers."""
        now = self.hyperparameters()
        changed, refused = {}, []
        for key in sorted(set(now) | set(before)):
            old, new = before.get(key), now.get(key)
            if old == new and type(old) is type(new):
                continue
            if isinstance(old, float) and _is_number(new):
                changed[key] = float(new)  # type: ignore[arg-type]  # (a number: checked just above)
            else:
                refused.append(f"{key} from {old!r} to {new!r}")
        if refused:
            raise ValueError(
                f"The optimizer's {', '.join(refused)} changed during training; on a cluster only its numbers (such "
                "as learning_rate, momentum, beta_1, weight_decay) can change between epochs. Train in one process, "
                "or compile the model with the optimizer you want and fit again."
            )
        if changed:  # checked as the constructor checks them (a callback assigned them unchecked)
            try:
                type(self)(**self.get_config())
            except (TypeError, ValueError) as exc:
                raise ValueError(f"A callback set the optimizer's {', '.join(changed)} to a bad value: {exc}") from None
        return changed

    @staticmethod
    def numbers(hyperparameters: dict[str, Any]) -> dict[str, float]:
        """The numbers among ``hyperparameters`` (what may change between epochs on a cluster)."""
        return {key: value for key, value in hyperparameters.items() if isinstance(value, float)}

    def set_hyperparameters(self, values: dict[str, float]) -> None:
        """Take the numbers :meth:`changes_since` returned (on every rank, between epochs)."""
        for key, value in values.items():
            setattr(self, key, value)

    def get_state(self) -> dict[str, np.ndarray]:
        """Slots and the step count as host arrays (for saving and checkpoints)."""
        state = {name: host_copy(arr) for name, arr in self.slots.items()}
        state["iterations"] = np.array(self.iterations, dtype=np.int64)
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        if not self.built:
            raise RuntimeError("Build the optimizer (compile and build the model) before setting its state.")
        missing = set(self.slots) - set(state)
        if missing:
            raise ValueError(f"Optimizer state for {self.name!r} is missing {sorted(missing)}.")
        for name in self.slots:
            value = np.asarray(state[name])
            if value.shape != self.slots[name].shape:
                raise ValueError(f"Optimizer slot {name!r} has shape {value.shape}, expected {self.slots[name].shape}.")
            self.slots[name][...] = self._xp.asarray(value, dtype=self.slots[name].dtype)
        self.iterations = int(np.asarray(state.get("iterations", 0)).reshape(-1)[0])  # () or (1,) on disk

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _learning_rate(value: Any) -> float | schedules.LearningRateSchedule:
    if isinstance(value, schedules.LearningRateSchedule):
        return value
    if isinstance(value, dict):
        return schedules.get(value)
    if callable(value):
        raise ValueError(
            "learning_rate is a Python callable: dtrain cannot send it to the workers or save it. Pass a float or "
            f"a schedule from dtrain.optimizers.schedules ({', '.join(schedules.SCHEDULES)})."
        )
    return positive("learning_rate", value)


def _bounds(part: slice, size: int) -> tuple[int, int]:
    return (part.start or 0), (size if part.stop is None else part.stop)
