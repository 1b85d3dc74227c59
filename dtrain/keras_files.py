"""Real Keras 3 files, both ways: ``.keras`` archives and ``.weights.h5`` weight files.

A ``.keras`` file is a zip of ``metadata.json``, ``config.json`` (the model as Keras serialises
it: ``{"module", "class_name", "config", "registered_name", "build_config", "compile_config"}``)
and ``model.weights.h5`` (each layer's weights under ``layers/<name>/vars/<i>``). dtrain writes
what ``keras.models.load_model`` opens and predicts with identically, and reads the Sequential
dense models Keras writes, with the layers dtrain has.

Reading parses JSON and copies arrays: nothing is unpickled or executed. A layer, initializer,
activation or object that is not one of Keras' own built-ins (a ``Lambda`` layer, anything with
a ``registered_name``, a ``module`` outside ``keras``) is refused by name, as is any argument
whose value dtrain cannot honour. A model read from a ``.keras`` file comes back compiled as
it was, with the optimizer's state (Adam's, SGD's and RMSprop's variables in Keras' order), so
training goes on from where it was; Keras does the same with the files dtrain writes.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import time
import zipfile
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from . import initializers, optimizers
from ._version import __version__
from .layers import LAYERS, InputSpec, Layer
from .layers import from_config as layer_from_config
from .network import Network
from .optimizers import schedules
from .optimizers.base import COMMON_DEFAULTS

_N = TypeVar("_N", bound=Network)

KERAS_VERSION = "3.15.1"  # the version whose files these are checked against (tests/test_keras_files.py)
MAX_MEMBER_BYTES = 1 << 34  # a member of a .keras zip larger than this is refused (16 GiB)


class KerasFileError(ValueError):
    """A Keras file dtrain cannot read: what is in it and what to do."""


# -- dtrain -> Keras ----------------------------------------------------------------------------------

_INITIALIZER_CLASSES = {
    "zeros": "Zeros",
    "ones": "Ones",
    "constant": "Constant",
    "random_normal": "RandomNormal",
    "random_uniform": "RandomUniform",
    "truncated_normal": "TruncatedNormal",
    "variance_scaling": "VarianceScaling",
    "glorot_uniform": "GlorotUniform",
    "glorot_normal": "GlorotNormal",
    "he_uniform": "HeUniform",
    "he_normal": "HeNormal",
    "lecun_uniform": "LecunUniform",
    "lecun_normal": "LecunNormal",
}
_SEEDED = {"RandomNormal", "RandomUniform", "TruncatedNormal", "VarianceScaling", "GlorotUniform",
           "GlorotNormal", "HeUniform", "HeNormal", "LecunUniform", "LecunNormal"}  # fmt: skip


def _keras_object(module: str, class_name: str, config: dict) -> dict:
    return {"module": module, "class_name": class_name, "config": config, "registered_name": None}


def _keras_initializer(initializer: Any) -> dict:
    serialized = initializers.serialize(initializer)
    name, config = (serialized, {}) if isinstance(serialized, str) else (serialized["class_name"], serialized["config"])
    class_name = _INITIALIZER_CLASSES[name]
    config = dict(config)
    if class_name in _SEEDED:
        config.setdefault("seed", None)
    return _keras_object("keras.initializers", class_name, config)


def _keras_by_class(module: str, obj: Any) -> dict | None:
    """A regularizer or constraint in Keras' form (same class names, same arguments)."""
    return None if obj is None else _keras_object(module, type(obj).__name__, obj.get_config())


def _keras_activation(activation: Any, where: str) -> str:
    if activation.get_config():
        raise KerasFileError(
            f"{where}: activation {activation!r} has arguments, which a Keras file cannot hold (Keras stores an "
            "activation by its name). Use its defaults, or a layer (ReLU, LeakyReLU) where Keras has one."
        )
    return activation.name


def _keras_layer_config(layer: Layer, dtype: dict) -> dict:
    where = f"layer {layer.name!r}"
    config = layer.get_config()
    out: dict[str, Any] = {"name": layer.name, "trainable": layer.trainable, "dtype": dtype}
    kind = type(layer).__name__
    for key, value in config.items():
        if key in ("name", "trainable", "input_dim", "input_shape"):
            continue
        if key == "activation":
            out[key] = _keras_activation(layer.activation, where)
        elif key.endswith("_initializer"):
            out[key] = _keras_initializer(getattr(layer, key))
        elif key.endswith("_regularizer"):
            out[key] = _keras_by_class("keras.regularizers", getattr(layer, key))
        elif key.endswith("_constraint"):
            out[key] = _keras_by_class("keras.constraints", getattr(layer, key))
        else:
            out[key] = value
    # Keras writes every argument; those dtrain leaves out of a plain layer's config:
    if kind == "Dense":
        for key in ("kernel_regularizer", "bias_regularizer", "kernel_constraint", "bias_constraint"):
            out.setdefault(key, None)
        out["quantization_config"] = None
    if kind in ("BatchNormalization", "LayerNormalization"):
        for key in ("beta_regularizer", "gamma_regularizer", "beta_constraint", "gamma_constraint"):
            out.setdefault(key, None)
    if kind == "BatchNormalization":
        out.update({"renorm": False, "renorm_clipping": None, "renorm_momentum": 0.99})
    if kind == "LayerNormalization":
        out["rms_scaling"] = False
    if kind == "Dropout":
        out["noise_shape"] = None
    return out


def keras_config(model: Network, with_compile: bool = True) -> dict:
    """The model as Keras serialises it (``config.json`` of a ``.keras`` file; ``to_json``)."""
    dtype = _keras_object("keras", "DTypePolicy", {"name": model.dtype})
    shape = list(model.input_shape) if model.input_shape is not None else None
    entries = []
    if shape is not None:
        entries.append(
            _keras_object(
                "keras.layers",
                "InputLayer",
                {"batch_shape": [None, *shape], "dtype": model.dtype, "sparse": False, "ragged": False,
                 "name": "input_layer", "optional": False},
            )
        )  # fmt: skip
    width: int | None = model.input_dim
    for layer in model.layers:
        entry = _keras_object("keras.layers", type(layer).__name__, _keras_layer_config(layer, dtype))
        if layer.has_weights and width is not None:
            entry["build_config"] = {"input_shape": [None, width]}
        entries.append(entry)
        width = layer.output_width(width)
    body: dict[str, Any] = {"name": model.name, "trainable": model.trainable, "dtype": dtype, "layers": entries}
    config: dict[str, Any] = {"module": "keras", "class_name": "Sequential", "config": body, "registered_name": None}
    if shape is not None:
        body["build_input_shape"] = [None, *shape]
        config["build_config"] = {"input_shape": [None, *shape]}
    if with_compile and model.compiled:
        config["compile_config"] = _keras_compile_config(model)
    return config


def _keras_optimizer_config(optimizer: Any) -> dict:
    """Keras' serialised optimizer: its class, every common argument, a schedule as Keras' object."""
    settings = {"name": optimizer.name, **COMMON_DEFAULTS, **optimizer.get_config()}
    if optimizer.schedule is not None:
        schedule = schedules.serialize(optimizer.schedule)
        settings["learning_rate"] = _keras_object(
            "keras.optimizers.schedules", schedule["class_name"], schedule["config"]
        )
    if isinstance(optimizer, optimizers.Adam):
        settings.setdefault("amsgrad", False)
    return _keras_object("keras.optimizers", type(optimizer).__name__, settings)


def _keras_compile_config(model: Network) -> dict:
    optimizer = model.compiled_optimizer
    loss = model.compiled_loss
    loss_config = loss.get_config() if hasattr(loss, "get_config") else {}
    return {
        "optimizer": _keras_optimizer_config(optimizer),
        "loss": loss.name if not loss_config else _keras_object("keras.losses", type(loss).__name__, loss_config),
        "loss_weights": None,
        "metrics": [metric.name for metric in model.metrics] or None,
        "weighted_metrics": None,
        "run_eagerly": False,
        "steps_per_execution": 1,
        "jit_compile": True,
    }


def _snake(class_name: str) -> str:
    """Keras' to_snake_case: "BatchNormalization" -> "batch_normalization", "ReLU" -> "re_lu"."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _h5_keys(model: Network) -> list[str]:
    """The group of each layer in a Keras 3 weights file: its class in snake case, numbered
    from the second of a class on ("dense", "dense_1", ...), in the model's order (the layer's
    own name is the group's "name" attribute)."""
    seen: dict[str, int] = {}
    keys = []
    for layer in model.layers:
        base = _snake(type(layer).__name__)
        n = seen.get(base, 0)
        seen[base] = n + 1
        keys.append(base if n == 0 else f"{base}_{n}")
    return keys


# Keras' optimizer variables after the iteration count and the learning rate (a variable unless
# it is a schedule): the base optimizer's moving averages (use_ema) and gradient accumulators,
# then the rule's groups, each one loop over the trainable variables creating each of the
# group's slots (add_optimizer_variables): Adam's momentum and velocity interleave per variable,
# RMSprop's slots come in blocks. Nadam ends with a scalar, the product of its momentum schedule.
_COMMON_SLOT_GROUPS: list[tuple[str, ...]] = [("average",), ("gradient_accumulator",)]
_SLOT_GROUPS: dict[str, list[tuple[str, ...]]] = {
    "adam": [("m", "v"), ("velocity_hat",)],
    "adamw": [("m", "v"), ("velocity_hat",)],
    "sgd": [("momentum",)],
    "rmsprop": [("velocity",), ("momentum",), ("average_gradient",)],
    "adagrad": [("accumulator",)],
    "adadelta": [("accumulated_grad", "accumulated_delta_var")],
    "adamax": [("momentum", "norm")],
    "nadam": [("momentum", "velocity")],
    "lion": [("momentum",)],
    "ftrl": [("accumulator", "linear")],
}


def _slot_layout(model: Network) -> list[tuple[str, int, tuple[int, ...]]]:
    """(slot, offset in the flat buffers, shape) of each of Keras' optimizer variables after
    (iteration, learning_rate), in Keras' order."""
    optimizer = model.compiled_optimizer
    layout: list[tuple[str, int, tuple[int, ...]]] = []
    for group in [*_COMMON_SLOT_GROUPS, *_SLOT_GROUPS[optimizer.name]]:
        names = [name for name in group if name in optimizer.state_slot_names]
        for start, shape in model.trainable_spans() if names else []:
            layout += [(name, start, shape) for name in names]
    return layout


def _scalars(model: Network) -> tuple[int, int]:
    """How many of Keras' optimizer variables come before the slots (the iteration count, and
    the learning rate unless it is a schedule) and after them (Nadam's product)."""
    optimizer = model.compiled_optimizer
    return 1 + (optimizer.schedule is None), int(isinstance(optimizer, optimizers.Nadam))


def _optimizer_arrays(model: Network) -> list[np.ndarray]:
    """The optimizer's state as Keras' list of variables (empty before it was built)."""
    optimizer = model.compiled_optimizer
    if not optimizer.built:
        return []
    state = optimizer.get_state()
    arrays = [np.array(optimizer.iterations, dtype=np.int64)]
    if optimizer.schedule is None:
        arrays.append(np.array(optimizer.learning_rate, dtype=model.dtype))
    for name, start, shape in _slot_layout(model):
        arrays.append(state[name][start : start + int(np.prod(shape))].reshape(shape))
    if isinstance(optimizer, optimizers.Nadam):
        arrays.append(np.array(optimizer.momentum_product(), dtype=model.dtype))
    return arrays


def _set_optimizer_state(model: Network, arrays: list[np.ndarray], where: str) -> None:
    optimizer = model.compiled_optimizer
    layout = _slot_layout(model)
    before, after = _scalars(model)
    if len(arrays) != before + len(layout) + after:
        raise KerasFileError(
            f"{where}: the optimizer's state has {len(arrays)} variables, {optimizer.name} on this model has "
            f"{before + len(layout) + after}."
        )
    state = optimizer.get_state()
    for i, (name, start, shape) in enumerate(layout, start=before):
        if arrays[i].shape != tuple(shape):
            raise KerasFileError(f"{where}: optimizer variable {i} has shape {arrays[i].shape}, expected {shape}.")
        state[name][start : start + arrays[i].size] = arrays[i].reshape(-1)
    state["iterations"] = np.asarray(arrays[0], dtype=np.int64)
    optimizer.set_state(state)  # (Nadam's product follows from the step count: recomputed)


def _write_weights_h5(model: Network, target: Any, include_optimizer: bool = False) -> None:
    """Keras 3's weights layout: ``layers/<key>/vars/<i>`` for every layer (weights or not),
    ``vars`` for the model itself, ``optimizer/vars/<i>`` for the optimizer's state."""
    import h5py

    with h5py.File(target, "w") as f:
        layers = f.create_group("layers")
        for layer, key in zip(model.layers, _h5_keys(model)):
            group = layers.create_group(key).create_group("vars")
            group.attrs["name"] = layer.name
            for i, weight in enumerate(layer.get_weights()):
                group.create_dataset(str(i), data=weight)
        f.create_group("vars").attrs["name"] = model.name
        if include_optimizer and model.compiled:
            group = f.create_group("optimizer").create_group("vars")
            group.attrs["name"] = model.compiled_optimizer.name
            for i, array in enumerate(_optimizer_arrays(model)):
                group.create_dataset(str(i), data=array)


def _read_optimizer_h5(source: Any) -> list[np.ndarray] | None:
    import h5py

    with h5py.File(source, "r") as f:
        group = f.get("optimizer/vars")
        if group is None or len(group) == 0:
            return None
        return [np.asarray(group[str(i)]) for i in range(len(group))]


def save_keras(model: Network, path: str | os.PathLike, include_optimizer: bool = True) -> Path:
    """Write ``model`` as a Keras 3 ``.keras`` archive, atomically (with the optimizer's state
    where it has one: Keras goes on training from it)."""
    model.require_built("save")
    target = Path(path)
    config = keras_config(model)
    weights = io.BytesIO()
    _write_weights_h5(model, weights, include_optimizer)
    metadata = {"keras_version": KERAS_VERSION, "date_saved": time.strftime("%Y-%m-%d@%H:%M:%S"),
                "written_by": f"dtrain {__version__}"}  # fmt: skip
    tmp = target.parent / f".{target.name}.{secrets.token_hex(8)}.tmp"
    try:
        with zipfile.ZipFile(tmp, "w") as archive:
            archive.writestr("metadata.json", json.dumps(metadata))
            archive.writestr("config.json", json.dumps(config))
            archive.writestr("model.weights.h5", weights.getvalue())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def save_weights_h5(model: Network, path: str | os.PathLike) -> Path:
    """``model.save_weights("x.weights.h5")``: Keras 3's weights file (``load_weights`` of
    Keras and of dtrain read it)."""
    model.require_built("save_weights")
    target = Path(path)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(8)}.tmp"
    try:
        _write_weights_h5(model, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


# -- Keras -> dtrain ----------------------------------------------------------------------------------


def _plain_object(value: Any, kind: str, where: str) -> Any:
    """A serialised Keras object as the ``{"class_name", "config"}`` dtrain's lookups take;
    strings and None pass. Custom objects are refused, never imported."""
    if not isinstance(value, dict):
        return value
    module, registered = value.get("module"), value.get("registered_name")
    if registered is not None or (module is not None and not str(module).startswith("keras")):
        raise KerasFileError(
            f"{where}: {kind} {value.get('class_name')!r} is a custom object ({registered or module}); dtrain reads "
            "only Keras' built-ins and never runs code from a file."
        )
    return {"class_name": value.get("class_name"), "config": dict(value.get("config") or {})}


def _dtrain_initializer(value: Any, where: str) -> Any:
    value = _plain_object(value, "initializer", where)
    if isinstance(value, dict):
        config = value["config"]
        if config.get("seed") is not None:  # (the weights come from the file: the seed draws nothing here)
            config.pop("seed")
        value["config"] = {k: v for k, v in config.items() if v is not None}
    return value


_IGNORED = {"optional", "renorm_momentum"}  # (renorm_momentum means nothing without renorm)
_MUST_BE = {  # Keras arguments dtrain has no use for, and the only value it can honour
    "renorm": False, "renorm_clipping": None, "rms_scaling": False, "noise_shape": None,
    "quantization_config": None, "sparse": False, "ragged": False,
}  # fmt: skip


def _policy_name(policy: Any) -> Any:
    return policy.get("config", {}).get("name") if isinstance(policy, dict) else policy


def _dtrain_layer(entry: dict, index: int, dtype: str) -> Layer | InputSpec:
    class_name = entry.get("class_name")
    where = f"layers[{index}] ({class_name})"
    _plain_object(entry, "layer", where)  # refuses custom layers
    if class_name != "InputLayer" and class_name not in LAYERS:
        raise KerasFileError(
            f"{where}: dtrain has no {class_name!r} layer; it reads Sequential models of these layers: "
            f"InputLayer, {', '.join(sorted(LAYERS))}."
        )
    config = dict(entry.get("config") or {})
    for key, required in _MUST_BE.items():
        if key in config and config.pop(key) != required:
            raise KerasFileError(f"{where}: {key}={entry['config'][key]!r} is not supported (only {required!r}).")
    for key in _IGNORED & set(config):
        config.pop(key)
    layer_dtype = _policy_name(config.pop("dtype", None))
    if class_name != "InputLayer" and layer_dtype not in (None, dtype):  # (inputs are cast to the model's)
        raise KerasFileError(
            f"{where}: the layer computes in {layer_dtype!r} and the model in {dtype!r}; dtrain models compute in "
            "one dtype."
        )
    if isinstance(config.get("axis"), list) and len(config["axis"]) == 1:  # (LayerNormalization writes [-1])
        config["axis"] = config["axis"][0]
    for key in list(config):
        if key.endswith("_initializer"):
            config[key] = _dtrain_initializer(config[key], where)
        elif key.endswith("_regularizer") or key.endswith("_constraint"):
            config[key] = _plain_object(config[key], key.rsplit("_", 1)[1], where)
            if config[key] is None:
                config.pop(key)
        elif key == "activation":
            config[key] = _plain_object(config[key], "activation", where)
    if class_name == "InputLayer":
        if config.get("name") == "input_layer":  # (Keras' default name: nothing to keep)
            config.pop("name")
    return layer_from_config({"class_name": class_name, "config": config})


def _dtype_of(config: dict) -> str:
    name = _policy_name(config.get("dtype"))
    if name not in (None, "float32", "float64"):
        raise KerasFileError(f"the model computes in {name!r}; dtrain models are float32 or float64.")
    return name or "float32"


def model_from_keras_config(config: Any, cls: type[_N], device: str | None = None) -> _N:
    if not isinstance(config, dict) or config.get("class_name") != "Sequential":
        got = config.get("class_name") if isinstance(config, dict) else type(config).__name__
        raise KerasFileError(f"the model is a {got!r}; dtrain reads Sequential models (functional models: not yet).")
    body = config.get("config") or {}
    entries = body.get("layers")
    if not isinstance(entries, list):
        raise KerasFileError("its Sequential config has no 'layers' list.")
    problems: list[str] = []
    layers: list[Layer | InputSpec] = []
    dtype = _dtype_of(body)
    for i, entry in enumerate(entries):
        try:
            layers.append(_dtrain_layer(entry, i, dtype))
        except (KerasFileError, ValueError, TypeError) as exc:
            problems.append(str(exc))
    if problems:
        raise KerasFileError("; ".join(problems))
    if layers and not isinstance(layers[0], InputSpec):  # (no InputLayer: the shape it was built for)
        shape = (config.get("build_config") or {}).get("input_shape") or body.get("build_input_shape")
        if isinstance(shape, list) and len(shape) >= 2:
            layers.insert(0, InputSpec(tuple(int(d) for d in shape[1:])))
    return cls(layers, name=body.get("name"), device=device, dtype=dtype)


def _compile_from_keras(model: Network, compile_config: dict) -> None:
    optimizer = _plain_object(compile_config.get("optimizer"), "optimizer", "compile_config")
    if isinstance(optimizer, dict):
        optimizer["config"].pop("name", None)  # (Keras' default is the class's name)
        if isinstance(optimizer["config"].get("learning_rate"), dict):
            optimizer["config"]["learning_rate"] = _plain_object(
                optimizer["config"]["learning_rate"], "learning-rate schedule", "compile_config"
            )
        try:
            optimizer = optimizers.get(optimizer)
        except (ValueError, TypeError) as exc:
            raise KerasFileError(f"its optimizer cannot be made here: {exc}") from None
    loss = _plain_object(compile_config.get("loss"), "loss", "compile_config")
    if isinstance(loss, dict):
        reduction = loss["config"].get("reduction", "sum_over_batch_size")
        if reduction not in (None, "sum_over_batch_size"):
            raise KerasFileError(f"the loss's reduction={reduction!r} is not supported (only the batch mean).")
        loss["config"] = {k: v for k, v in loss["config"].items() if k not in ("name", "reduction", "dtype")}
    for key in ("loss_weights", "weighted_metrics"):
        if compile_config.get(key):
            raise KerasFileError(f"compile's {key} is not supported yet (load with compile=False).")
    metrics = compile_config.get("metrics") or []
    metrics = [_plain_object(m, "metric", "compile_config") for m in metrics]
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)


def _read_weights_h5(model: Network, source: Any, where: str) -> None:
    """Every layer's weights from Keras' layout into ``model`` (all checked before any is written)."""
    import h5py

    try:
        with h5py.File(source, "r") as f:
            layers = f.get("layers")
            if layers is None:
                raise KerasFileError(f"{where} holds no 'layers' group: not a Keras 3 weights file.")
            weights: list[np.ndarray] = []
            keys = _h5_keys(model)
            extra = set(layers) - set(keys)
            if extra:
                raise KerasFileError(
                    f"{where} has layers the model lacks: {', '.join(_described(layers, k) for k in sorted(extra))}."
                )
            for layer, key in zip(model.layers, keys):
                group = layers.get(f"{key}/vars")
                expected = len(layer.weight_views())
                found = 0 if group is None else len(group)
                if found != expected:
                    raise KerasFileError(
                        f"{where}: layer {layer.name!r} ({key}) has {found} arrays in the file, the model's has "
                        f"{expected} (the file's layers: {', '.join(layers)})."
                    )
                weights += [np.asarray(group[str(i)]) for i in range(expected)]
    except OSError as exc:
        raise KerasFileError(f"{where} is not an HDF5 file ({exc}).") from None
    for weight in weights:
        if weight.dtype.kind != "f":
            raise KerasFileError(f"{where} holds an array of dtype {weight.dtype}: weights are floats.")
    model.set_weights(weights)


def _described(layers: Any, key: str) -> str:
    name = layers[key].get("vars").attrs.get("name") if "vars" in layers[key] else None
    return f"{key} ({name})" if name and name != key else key


def load_keras(path: str | os.PathLike, cls: type[_N], device: str | None = None, compile: bool = True) -> _N:
    """The Sequential model in a Keras 3 ``.keras`` archive."""
    source = str(path)
    if not os.path.isfile(source):
        what = "does not exist" if not os.path.exists(source) else "is not a regular file"
        raise FileNotFoundError(f"Cannot load {source!r}: it {what}.")
    try:
        with zipfile.ZipFile(source) as archive:
            for info in archive.infolist():
                if info.file_size > MAX_MEMBER_BYTES:
                    raise KerasFileError(f"{source!r}: member {info.filename} is {info.file_size:,} bytes.")
            config = json.loads(archive.read("config.json"))
            weights = archive.read("model.weights.h5")
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KerasFileError(f"{source!r} is not a Keras 3 .keras archive ({exc}).") from None
    try:
        model = model_from_keras_config(config, cls, device)
        model.build()
        _read_weights_h5(model, io.BytesIO(weights), source)
        if compile and isinstance(config.get("compile_config"), dict):
            _compile_from_keras(model, config["compile_config"])
            state = _read_optimizer_h5(io.BytesIO(weights))
            if state is not None:
                _set_optimizer_state(model, state, source)
    except KerasFileError as exc:
        raise KerasFileError(f"{source!r}: {exc}") from None
    return model


def load_weights_h5(model: Network, path: str | os.PathLike) -> None:
    """``model.load_weights("x.weights.h5")``: Keras 3's weights file, every array checked
    against the model before any is written."""
    model.require_built("load_weights")
    source = str(path)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"Cannot load weights from {source!r}: it is not a file.")
    _read_weights_h5(model, source, repr(source))
