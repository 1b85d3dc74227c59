"""The schema of a job file and its validation: the sections, their keys and defaults, the
:class:`Checker` that collects problems, the checks of every section and across sections, and
:func:`validate`, which turns a parsed job into its resolved spec."""

from __future__ import annotations

import copy
import difflib
import glob
import inspect
import math
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import losses, optimizers
from .. import metrics as metrics_module
from ..backend import DEVICES, FLOAT_DTYPES
from ..config import MAX_TIMEOUT_S, NONFINITE_POLICIES, CheckpointPolicy, option_defaults
from ..layers import (
    Activation,
    BatchNormalization,
    Dense,
    Dropout,
    Flatten,
    GaussianNoise,
    Input,
    LayerNormalization,
    LeakyReLU,
    ReLU,
    Softmax,
)
from ..model import Sequential
from ..network import DEFAULT_OPTIMIZER
from ..sampling import ShardPlan
from ..sources import from_synthetic
from .problems import SET_ORIGIN, Problem, error_text, join_item, join_key, parent_path

# -- the schema ---------------------------------------------------------------------------------

SECTIONS = ("name", "model", "compile", "data", "fit", "cluster", "output")
REQUIRED_SECTIONS = ("model", "compile", "data")
MODEL_KEYS = ("dtype", "layers")
DTYPES = FLOAT_DTYPES
# model.layers[i].type: Keras' layer classes by their snake_case names (dense is the default).
LAYER_TYPES: dict[str, Callable[..., Any]] = {
    "input": Input,
    "dense": Dense,
    "dropout": Dropout,
    "gaussian_noise": GaussianNoise,
    "flatten": Flatten,
    "activation": Activation,
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "softmax": Softmax,
    "batch_normalization": BatchNormalization,
    "layer_normalization": LayerNormalization,
}
COMPILE_KEYS = ("loss", "optimizer", "metrics")
DATA_KEYS = ("train", "validation")
# Each data format, its keys in the order the resolved job lists them, and their defaults
# (_REQUIRED: no default).
_REQUIRED = object()
SOURCE_FORMATS: dict[str, dict[str, Any]] = {
    "synthetic": {
        "format": _REQUIRED,
        "samples": _REQUIRED,
        "features": _REQUIRED,
        "classes": _REQUIRED,
        "seed": 0,
        "separation": 1.0,
    },
    "npy": {"format": _REQUIRED, "x": _REQUIRED, "y": _REQUIRED, "storage_options": {}},
    "npz": {"format": _REQUIRED, "path": _REQUIRED, "x": "x", "y": "y", "storage_options": {}},
    "parquet": {"format": _REQUIRED, "path": _REQUIRED, "label": _REQUIRED, "features": None, "storage_options": {}},
    "csv": {"format": _REQUIRED, "path": _REQUIRED, "label": _REQUIRED, "features": None, "storage_options": {}},
}
# The fit section takes FitConfig's options and defaults, except where a job differs on purpose:
# a fixed seed (a job file is a record that runs the same again) and two restarts.
FIT_DEFAULTS: dict[str, Any] = {
    **option_defaults("epochs", "batch_size", "seed", "shuffle", "shards", "timeout", "max_restarts", "on_nonfinite"),
    "seed": 0,
    "max_restarts": 2,
    "class_weight": None,  # {class index: weight}, as fit(class_weight=)
}
NONFINITE = NONFINITE_POLICIES
CHECKPOINT_DEFAULTS: dict[str, Any] = {"every": CheckpointPolicy.every, "keep": CheckpointPolicy.keep}
CLUSTER_DEFAULTS: dict[str, Any] = {
    "workers": None,
    "device": "auto",
    "elastic": False,
    "min_workers": None,
    "max_workers": None,
}
OUTPUT_KEYS = ("dir", "checkpoint", "mlflow")
# output.mlflow: the MLflow run a job logs to (dtrain.callbacks.MLflowLogger); tracking_uri is required,
# experiment defaults to the job's name, run_name (null) to the job's id.
MLFLOW_KEYS = ("tracking_uri", "experiment", "run_name")
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # http:, file:, sqlite:, ... (else a path, or "databricks")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a plain name: never "." or "..", no hidden files
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_GLOB_CHARS = ("*", "?", "[")


# -- validation machinery ---------------------------------------------------------------------------


class Checker:
    """Collects problems, each placed at its line (or marked as coming from --set)."""

    def __init__(self, *, lines: Mapping[str, int], overridden: set[str], base_dir: str, check_files: bool):
        self.lines = lines
        self.overridden = overridden
        self.base_dir = base_dir
        self.check_files = check_files
        self.problems: list[Problem] = []

    def report(self, path: str, message: str) -> None:
        if self._from_set(path):
            problem = Problem(path, message, None, SET_ORIGIN)
        else:
            problem = Problem(path, message, self._line(path))
        if problem not in self.problems:
            self.problems.append(problem)

    def _from_set(self, path: str) -> bool:
        return any(path == p or path.startswith((p + ".", p + "[")) for p in self.overridden)

    def _line(self, path: str) -> int | None:
        """The line of ``path``, or of its nearest ancestor in the file (a missing key's mapping)."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = parent_path(path)
        return None


def _got(value: Any) -> str:
    """How a received value reads in a message, with its YAML kind where the repr hides it."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, str):
        return f"{value!r} (a string)"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _suggest(key: Any, known: Sequence[str], noun: str = "keys") -> str:
    close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else f"known {noun}: {', '.join(known)}"


def _mapping(ck: Checker, value: Any, path: str, known: Sequence[str], required: Sequence[str] = ()) -> dict | None:
    """``value`` if it is a mapping (reporting unknown and missing keys), else None (reported)."""
    if not isinstance(value, dict):
        ck.report(path, f"expected a mapping with keys {', '.join(known)}, got {_got(value)}")
        return None
    for key in value:
        if key not in known:
            ck.report(join_key(path, key), f"unknown key; {_suggest(key, known)}")
    for key in required:
        if key not in value:
            ck.report(path, f"missing required key {key!r}")
    return value


MAX_LAYERS = 4096  # deeper than any dense network trains well; bounds the work of validating one
MAX_INTEGER = 2**53  # counts (rows, epochs, batches, units): past this a float64 no longer holds every integer


def _integer(ck: Checker, value: Any, path: str, least: int = 1) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        wanted = "a positive integer" if least == 1 else f"an integer >= {least}"
        ck.report(path, f"expected {wanted}, got {_got(value)}")
    elif value > MAX_INTEGER:
        ck.report(path, f"expected an integer <= {MAX_INTEGER:,} (2**53), got {value:,}")
    return value


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_number(ck: Checker, value: Any, path: str) -> Any:
    if not _real(value) or value <= 0:
        ck.report(path, f"expected a number > 0, got {_got(value)}")
    return value


def _boolean(ck: Checker, value: Any, path: str) -> Any:
    if not isinstance(value, bool):
        ck.report(path, f"expected true or false, got {_got(value)}")
    return value


def _choice(ck: Checker, value: Any, path: str, choices: Sequence[str]) -> Any:
    if value not in choices:
        close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6) if isinstance(value, str) else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        ck.report(path, f"expected one of {', '.join(choices)}, got {_got(value)}{hint}")
    return value


def _string(ck: Checker, value: Any, path: str, what: str = "a non-empty string") -> Any:
    if not isinstance(value, str) or not value:
        hint = " (quote it)" if isinstance(value, (bool, int, float)) else ""
        ck.report(path, f"expected {what}, got {_got(value)}{hint}")
    return value


def _strings(ck: Checker, value: Any, path: str, what: str) -> Any:
    """A non-empty list of non-empty strings."""
    if not isinstance(value, list) or not value:
        ck.report(path, f"expected a non-empty list of {what}, got {_got(value)}")
        return value
    for i, item in enumerate(value):
        _string(ck, item, join_item(path, i))
    return value


def _construct(ck: Checker, path: str, make: Callable[..., Any], kwargs: dict, probe_base: dict) -> Any:
    """``make(**kwargs)``, or None with its error reported. To put the error on the key at
    fault, each argument is tried alone (with ``probe_base``); an error that no single
    argument causes (two that disagree) is reported on ``path`` itself."""
    try:
        return make(**kwargs)
    except (TypeError, ValueError) as exc:
        error = exc
    blamed = False
    for key, value in kwargs.items():
        try:
            make(**{**probe_base, key: value})
        except (TypeError, ValueError) as exc:
            ck.report(join_key(path, key), error_text(exc))
            blamed = True
    if not blamed:
        ck.report(path, error_text(error))
    return None


def _parameters(cls: Callable[..., Any]) -> list[str]:
    """The keyword arguments ``cls(...)`` takes (and those it takes through ``**kwargs``:
    an optimizer's Keras common arguments, its ``keyword_parameters``)."""
    return [
        name
        for name, p in inspect.signature(cls).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ] + list(getattr(cls, "keyword_parameters", ()))


def _attempt(ck: Checker, path: str, make: Callable[[], Any]) -> Any:
    try:
        return make()
    except (TypeError, ValueError) as exc:
        ck.report(path, error_text(exc))
        return None


def _named(ck: Checker, path: str, identifier: Any, get: Callable[[Any], Any], registry: Mapping[str, type]) -> Any:
    """A loss or optimizer from a name or ``{name: ..., <params>}``, built with the registry's
    own ``get``; the errors land on the parameter at fault (``compile.optimizer.momentum``)."""
    if not (isinstance(identifier, dict) and "name" in identifier and "class_name" not in identifier):
        return _attempt(ck, path, lambda: get(identifier))
    name = identifier["name"]
    cls = registry.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        return _attempt(ck, join_key(path, "name"), lambda: get(identifier))
    accepted = _parameters(cls)
    params = {key: value for key, value in identifier.items() if key != "name"}
    for key in params:
        if key not in accepted:
            hint = _suggest(key, accepted, "parameters") if accepted else "it takes none"
            ck.report(join_key(path, key), f"unknown parameter of {name!r}; {hint}")
    known = {key: value for key, value in params.items() if key in accepted}
    built = _construct(ck, path, lambda **kw: get({"name": name, **kw}), known, {})
    return built if len(known) == len(params) else None


def metric_identifier(metric: Any) -> Any:
    """``{name: binary_accuracy, threshold: 0.3}`` -> the ``{class_name, config}`` form that
    ``dtrain.metrics.get`` reads (its plain ``name`` is the metric's History key)."""
    if isinstance(metric, dict) and "name" in metric and "class_name" not in metric:
        return {"class_name": metric["name"], "config": {k: v for k, v in metric.items() if k != "name"}}
    return metric


# -- the sections -----------------------------------------------------------------------------------


def _default_name(source: str | None) -> str:
    """The job file's stem, made a valid name ("my job.yaml" -> "my-job")."""
    stem = Path(source).stem if source else ""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")[:100] or "job"


def _check_name(ck: Checker, raw: dict, source: str | None) -> Any:
    if "name" not in raw:
        return _default_name(source)
    name = raw["name"]
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        ck.report(
            "name",
            "expected a name of letters, digits, '.', '_' and '-' that starts with a letter or digit, at most 100 "
            f"characters (e.g. seed-network), got {_got(name)}",
        )
    return name


@dataclass
class _Model:
    """What the model section built, for the checks that need it (None where it is invalid)."""

    spec: dict
    layers: list | None  # dtrain.layers.Dense, one per item
    model: Any = None  # an uncompiled Sequential of those layers


def _required(make: Callable[..., Any]) -> tuple[str, ...]:
    return tuple(name for name, p in inspect.signature(make).parameters.items() if p.default is inspect.Parameter.empty)


_PLACEHOLDERS = {"units": 1, "rate": 0.5, "stddev": 1.0, "activation": "linear", "shape": [1]}


def _check_layer(ck: Checker, item: Any, path: str) -> tuple[Any, Any]:
    """(normalized spec, the layer (or Input) or None) of one ``model.layers`` item."""
    kind = item.get("type", "dense") if isinstance(item, dict) else "dense"
    if not isinstance(kind, str) or kind.lower() not in LAYER_TYPES:
        ck.report(
            join_key(path, "type"), f"unknown layer type {kind!r}; {_suggest(str(kind), list(LAYER_TYPES), 'types')}"
        )
        return item, None
    kind = kind.lower()
    make = LAYER_TYPES[kind]
    known, required = ("type", *_parameters(make)), _required(make)
    layer = _mapping(ck, item, path, known, required=required)
    if layer is None:
        return item, None
    kwargs = {key: value for key, value in layer.items() if key in known and key != "type"}
    # Without its required arguments a layer cannot be built, but its others can still be checked.
    base = {name: _PLACEHOLDERS[name] for name in required}
    built = _construct(ck, path, make, {**base, **kwargs}, base)
    complete = all(name in layer for name in required) and all(key in known for key in layer)
    return {"type": kind, **kwargs}, built if complete else None


def _output_units(model: Any) -> int | None:
    """The model's output width, or None where no layer or input says it (compile reports that)."""
    try:
        return model.output_units
    except RuntimeError:
        return None


def _check_model(ck: Checker, raw: Any) -> _Model:

    section = _mapping(ck, raw, "model", MODEL_KEYS, required=("layers",))
    if section is None:
        return _Model(raw, None)
    dtype = _choice(ck, section.get("dtype", "float32"), "model.dtype", DTYPES)
    items = section.get("layers")
    if "layers" in section and (not isinstance(items, list) or not items):
        example = "- {units: 10, activation: softmax}"
        ck.report("model.layers", f"expected a non-empty list of layers (e.g. {example}), got {_got(items)}")
        items = None
    if isinstance(items, list) and len(items) > MAX_LAYERS:
        ck.report("model.layers", f"{len(items):,} layers: a job's model has at most {MAX_LAYERS:,}")
        items = None
    specs, layers = [], []
    for i, item in enumerate(items or ()):
        spec, layer = _check_layer(ck, item, join_item("model.layers", i))
        specs.append(spec)
        layers.append(layer)
    result = _Model({"dtype": dtype, "layers": specs if items else items}, None)
    if not items or any(layer is None for layer in layers) or dtype not in DTYPES:
        return result
    result.layers = layers
    # The stack as a whole: layer names unique, declared input_dims that agree with the previous layer.
    model = Sequential(device="cpu", dtype=dtype)  # cpu: validating never probes for a GPU
    for i, layer in enumerate(layers):
        try:
            model.add(layer)
        except (TypeError, ValueError, RuntimeError) as exc:
            ck.report(join_item("model.layers", i), error_text(exc))
            return result
    result.model = model
    return result


@dataclass
class _Compile:
    spec: dict
    loss: Any = None  # dtrain.losses.Loss, or None where invalid


def _check_compile(ck: Checker, raw: Any, model: _Model) -> _Compile:

    section = _mapping(ck, raw, "compile", COMPILE_KEYS, required=("loss",))
    if section is None:
        return _Compile(raw)
    spec = {
        "loss": section.get("loss"),
        "optimizer": section.get("optimizer", DEFAULT_OPTIMIZER),
        "metrics": section.get("metrics", []),
    }
    loss = _named(ck, "compile.loss", spec["loss"], losses.get, losses.LOSSES) if "loss" in section else None
    optimizer = _named(ck, "compile.optimizer", spec["optimizer"], optimizers.get, optimizers.OPTIMIZERS)
    metrics = spec["metrics"]
    if not isinstance(metrics, list):
        ck.report(
            "compile.metrics", f"expected a list of metric names or mappings (e.g. [accuracy]), got {_got(metrics)}"
        )
        return _Compile(spec, loss)
    resolved: list[Any] = []
    # The output width only picks which accuracy "accuracy" means; any width checks the rest.
    units = (_output_units(model.model) if model.model is not None else None) or 1
    for i, metric in enumerate(metrics):
        if not isinstance(metric, (str, dict)):
            ck.report(join_item("compile.metrics", i), f"expected a metric name or mapping, got {_got(metric)}")
            resolved.append(None)
        elif loss is not None:  # which metrics can read the targets depends on the loss
            get = lambda m=metric: metrics_module.get(metric_identifier(m), loss, units)  # noqa: E731
            resolved.append(_attempt(ck, join_item("compile.metrics", i), get))
    if model.model is None or loss is None or optimizer is None or any(metric is None for metric in resolved):
        return _Compile(spec, loss)
    _check_compiles(ck, model.model, optimizer, loss, metrics)
    return _Compile(spec, loss)


def _check_compiles(ck: Checker, model: Any, optimizer: Any, loss: Any, metrics: list) -> None:
    """``model.compile(...)``: the checks it makes across its arguments (unique metric names,
    a loss that suits the last layer). Its warnings are problems here: a job runs unattended,
    so a warning nobody reads would only waste the run."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.compile(optimizer=optimizer, loss=loss, metrics=[metric_identifier(m) for m in metrics])
        except (TypeError, ValueError, RuntimeError) as exc:
            ck.report("compile", error_text(exc))
    for warning in caught:
        ck.report("compile.loss", str(warning.message))


# -- data ------------------------------------------------------------------------------------------------


def _check_protocol(ck: Checker, url: str, path: str) -> None:
    """fsspec must know every protocol of ``url`` (chained ones too: ``simplecache::s3://...``)."""
    import fsspec

    for part in url.split("::"):
        protocol = part.split("://", 1)[0] if "://" in part else part
        try:
            fsspec.get_filesystem_class(protocol)
        except (ValueError, ImportError) as exc:
            ck.report(path, f"cannot read {protocol!r} URLs: {error_text(exc)}")


def _local_path(ck: Checker, value: str) -> str:
    return os.path.abspath(os.path.join(ck.base_dir, os.path.expanduser(value)))


def _check_exists(ck: Checker, resolved: str, path: str, kind: str) -> None:
    """``kind``: "file" (one file), "csv" (a file or a glob) or "parquet" (a file, a directory or a glob)."""
    if kind != "file" and any(c in resolved for c in _GLOB_CHARS):
        if not glob.glob(resolved):
            ck.report(path, f"the pattern {resolved} matches no files")
        return
    if os.path.isfile(resolved) or (kind == "parquet" and os.path.isdir(resolved)):
        return
    if os.path.isdir(resolved):
        hint = (
            f"; give a file or a glob such as {os.path.join(resolved, '*.csv')}"
            if kind == "csv"
            else ", expected a file"
        )
        ck.report(path, f"{resolved} is a directory{hint}")
    else:
        ck.report(path, f"file not found: {resolved} (relative paths are taken from the job file's folder)")


def _check_location(ck: Checker, value: Any, path: str, kind: str) -> Any:
    """A local path (made absolute from the job file's folder, and checked to exist) or an
    fsspec URL (kept as it is; only its protocol is checked: we may be offline)."""
    if not isinstance(value, str) or not value:
        ck.report(path, f"expected a path or URL, got {_got(value)}")
        return value
    if _URL.match(value) or "::" in value:
        _check_protocol(ck, value, path)
        return value
    resolved = _local_path(ck, value)
    if ck.check_files and kind:
        _check_exists(ck, resolved, path, kind)
    return resolved


def _check_storage_options(ck: Checker, value: Any, path: str) -> Any:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        ck.report(path, f"expected a mapping of fsspec options (e.g. {{anon: true}}), got {_got(value)}")
    return value


def _check_synthetic(ck: Checker, source: dict, path: str) -> None:

    args = {key: source[key] for key in ("samples", "features", "classes", "seed", "separation") if key in source}
    # from_synthetic checks its own arguments; the smallest valid ones stand in for missing ones.
    smallest = {"samples": 1, "features": 1, "classes": 2}
    _construct(ck, path, from_synthetic, {**smallest, **args}, smallest)


def _check_table(ck: Checker, source: dict, path: str, fmt: str) -> None:
    locations = source.get("path")
    if isinstance(locations, list):
        if not locations:
            ck.report(join_key(path, "path"), "expected a path, a URL or a non-empty list of them, got an empty list")
        source["path"] = [
            _check_location(ck, p, join_item(join_key(path, "path"), i), fmt) for i, p in enumerate(locations)
        ]
    elif "path" in source:
        source["path"] = _check_location(ck, locations, join_key(path, "path"), fmt)
    if "label" in source:
        label = source["label"]
        if isinstance(label, list):
            _strings(ck, label, join_key(path, "label"), "label column names")
        else:
            _string(ck, label, join_key(path, "label"), "a label column name or a list of them")
    if source.get("features") is not None:
        _strings(ck, source["features"], join_key(path, "features"), "feature column names")


def _check_source(ck: Checker, value: Any, path: str) -> Any:
    """One data source (``data.train``, ``data.validation``): normalized, defaults filled."""
    formats = ", ".join(SOURCE_FORMATS)
    if not isinstance(value, dict):
        ck.report(path, f"expected a mapping with a format ({formats}), got {_got(value)}")
        return value
    if "format" not in value:
        ck.report(path, f"missing required key 'format' (one of {formats})")
        return value
    fmt = value["format"]
    if not isinstance(fmt, str) or fmt not in SOURCE_FORMATS:
        _choice(ck, fmt, join_key(path, "format"), tuple(SOURCE_FORMATS))
        return value
    schema = SOURCE_FORMATS[fmt]
    _mapping(ck, value, path, tuple(schema), required=[k for k, d in schema.items() if d is _REQUIRED])
    source = {
        key: copy.deepcopy(value.get(key, default))
        for key, default in schema.items()
        if key in value or default is not _REQUIRED
    }
    if fmt == "synthetic":
        _check_synthetic(ck, source, path)
    elif fmt == "npy":
        for key in ("x", "y"):
            if key in source:
                source[key] = _check_location(ck, source[key], join_key(path, key), "file")
    elif fmt == "npz":
        if "path" in source:
            source["path"] = _check_location(ck, source["path"], join_key(path, "path"), "file")
        for key in ("x", "y"):
            _string(ck, source[key], join_key(path, key), "the name of an array in the .npz file")
    else:
        _check_table(ck, source, path, fmt)
    if "storage_options" in source:
        _check_storage_options(ck, source["storage_options"], join_key(path, "storage_options"))
    return source


def _check_validation(ck: Checker, value: Any) -> Any:
    """None, ``{split: fraction}`` or a data source."""
    path = "data.validation"
    if value is None:
        return None
    if isinstance(value, dict) and "split" in value:
        if "format" in value:
            ck.report(
                path, "give either split: (a fraction of the training data) or a data source with format:, not both"
            )
            return value
        _mapping(ck, value, path, ("split",))
        split = value["split"]
        if not _real(split) or not 0 < split < 1:
            ck.report(join_key(path, "split"), f"expected a fraction between 0 and 1 (e.g. 0.2), got {_got(split)}")
        return {"split": split}
    if isinstance(value, dict) and "format" not in value:
        formats = ", ".join(SOURCE_FORMATS)
        ck.report(path, f"expected split: <fraction> (e.g. split: 0.2) or a data source with format: ({formats})")
        return value
    source = _check_source(ck, value, path)
    if isinstance(source, dict) and source.get("format") == "synthetic":
        # from_synthetic draws the class centres from the seed: another seed is another problem,
        # and the same seed repeats the training rows. Neither measures generalisation.
        ck.report(
            join_key(path, "format"),
            "synthetic validation data cannot be drawn apart from the training data (another seed gives other "
            "class centres, the same seed the same rows); use split: 0.2 instead",
        )
    return source


def _check_data(ck: Checker, raw: Any) -> Any:
    section = _mapping(ck, raw, "data", DATA_KEYS, required=("train",))
    if section is None:
        return raw
    train = _check_source(ck, section["train"], "data.train") if "train" in section else None
    return {"train": train, "validation": _check_validation(ck, section.get("validation"))}


# -- fit, cluster, output ----------------------------------------------------------------------------------


def _optional_section(ck: Checker, raw: dict, key: str, known: Sequence[str]) -> dict:
    """An optional section: absent or empty ("fit:" with every line commented out) is {}."""
    value = raw.get(key)
    if value is None:
        return {}
    return _mapping(ck, value, key, known) or {}


def _check_fit(ck: Checker, raw: dict) -> dict:
    section = _optional_section(ck, raw, "fit", tuple(FIT_DEFAULTS))
    fit = {key: section.get(key, default) for key, default in FIT_DEFAULTS.items()}
    _integer(ck, fit["epochs"], "fit.epochs")
    _integer(ck, fit["batch_size"], "fit.batch_size")
    _integer(ck, fit["seed"], "fit.seed", least=0)
    _boolean(ck, fit["shuffle"], "fit.shuffle")
    if fit["shards"] is not None:
        _integer(ck, fit["shards"], "fit.shards")
    _positive_number(ck, fit["timeout"], "fit.timeout")
    if _real(fit["timeout"]) and fit["timeout"] > MAX_TIMEOUT_S:
        ck.report("fit.timeout", f"expected at most {MAX_TIMEOUT_S:,.0f} seconds, got {fit['timeout']:g}")
    _integer(ck, fit["max_restarts"], "fit.max_restarts", least=0)
    _choice(ck, fit["on_nonfinite"], "fit.on_nonfinite", NONFINITE)
    if fit["class_weight"] is not None:
        weights = fit["class_weight"]
        if not isinstance(weights, dict) or not weights:
            ck.report(
                "fit.class_weight",
                f"expected a mapping of class index to weight (e.g. {{0: 1, 1: 5}}), got {_got(weights)}",
            )
        else:
            normal = {}
            for key, value in weights.items():
                path = join_key("fit.class_weight", str(key))
                index = int(key) if isinstance(key, str) and key.isdigit() else key  # ("0": JSON's keys)
                if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                    ck.report(path, f"expected a class index (an integer >= 0) as the key, got {_got(key)}")
                elif not _real(value) or value < 0:
                    ck.report(path, f"expected a weight >= 0, got {_got(value)}")
                else:
                    normal[str(index)] = value  # (a job spec's keys are strings: fit_options makes them ints)
            fit["class_weight"] = normal
    return fit


def _check_class_weight_fits_model(ck: Checker, model: _Model, fit: dict) -> None:
    """fit.class_weight names classes the model's outputs have (as fit(class_weight=) checks)."""
    weights = fit.get("class_weight")
    if not isinstance(weights, dict) or model.model is None or (units := _output_units(model.model)) is None:
        return
    for key in weights:
        if str(key).isdigit() and int(key) >= max(units, 2):
            ck.report(
                join_key("fit.class_weight", str(key)),
                f"class {key} is not one of the model's classes 0 .. {max(units, 2) - 1} ({units} output units)",
            )


def _check_cluster(ck: Checker, raw: dict) -> dict:
    section = _optional_section(ck, raw, "cluster", tuple(CLUSTER_DEFAULTS))
    cluster = {key: section.get(key, default) for key, default in CLUSTER_DEFAULTS.items()}
    workers = cluster["workers"]
    if isinstance(workers, list):
        _strings(ck, workers, "cluster.workers", "worker addresses (e.g. tcp://10.0.0.5:40331)")
        for i, address in enumerate(workers):
            if address in workers[:i]:
                ck.report(join_item("cluster.workers", i), f"{address!r} is listed twice")
    elif workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        ck.report("cluster.workers", f"expected a number of workers or a list of worker addresses, got {_got(workers)}")
    _choice(ck, cluster["device"], "cluster.device", DEVICES)
    _boolean(ck, cluster["elastic"], "cluster.elastic")
    for key in ("min_workers", "max_workers"):
        if cluster[key] is not None:
            _integer(ck, cluster[key], f"cluster.{key}")
            if cluster["elastic"] is not True:
                ck.report(f"cluster.{key}", "bounds an elastic job's workers: set cluster.elastic: true as well")
    if cluster["elastic"] is True and workers is not None:
        ck.report(
            "cluster.workers",
            "an elastic job takes workers as they join and leave: leave cluster.workers out and bound them "
            "with cluster.min_workers / cluster.max_workers",
        )
    return cluster


def _check_elastic(ck: Checker, fit: dict, cluster: dict) -> None:
    """What FitConfig asks of an elastic run, said with the job file's names."""
    if cluster["elastic"] is not True:
        return
    low, high = cluster["min_workers"], cluster["max_workers"]
    if fit["shards"] is None and high is None:
        ck.report(
            "cluster.elastic",
            "an elastic job needs fit.shards (or cluster.max_workers): the logical shards are fixed for the whole "
            "job, one worker trains at least one, so their count is the most workers the job can grow to",
        )
    if isinstance(low, int) and isinstance(high, int) and high < low:
        ck.report("cluster.max_workers", f"{high} is below cluster.min_workers ({low})")
    if isinstance(low, int) and isinstance(fit["shards"], int) and low > fit["shards"]:
        ck.report("cluster.min_workers", f"{low} is more than the {fit['shards']} shards (fit.shards)")


def _check_output(ck: Checker, raw: dict, name: Any) -> dict:
    section = _optional_section(ck, raw, "output", OUTPUT_KEYS)
    if "dir" not in section:
        directory = _local_path(ck, os.path.join("runs", str(name)))
    else:
        directory = _check_location(ck, section["dir"], "output.dir", kind="")  # it need not exist yet
    return {
        "dir": directory,
        "checkpoint": _check_checkpoint(ck, section.get("checkpoint", {})),
        "mlflow": _check_mlflow(ck, section.get("mlflow"), name),
    }


def _check_mlflow(ck: Checker, value: Any, name: Any) -> dict | None:
    """``output.mlflow``: null (none), or {tracking_uri, experiment: <the job's name>, run_name: null}. A
    tracking URI without a scheme (but "databricks") is a local folder (MLflow's file store), taken from the job
    file's folder."""
    if value is None:
        return None
    section = _mapping(ck, value, "output.mlflow", MLFLOW_KEYS, required=("tracking_uri",))
    if section is None:
        return None
    mlflow = {key: section.get(key) for key in MLFLOW_KEYS}
    uri = mlflow["tracking_uri"]
    if "tracking_uri" in section:
        _string(ck, uri, "output.mlflow.tracking_uri", "a tracking URI (e.g. http://mlflow:5000) or a folder")
        if isinstance(uri, str) and uri and not _URI_SCHEME.match(uri) and uri != "databricks":
            mlflow["tracking_uri"] = _local_path(ck, uri)
    if mlflow["experiment"] is None:
        mlflow["experiment"] = name
    else:
        experiment = _string(ck, mlflow["experiment"], "output.mlflow.experiment", "an experiment name")
        if isinstance(experiment, str) and len(experiment) > 500:
            ck.report(
                "output.mlflow.experiment", f"expected at most 500 characters (MLflow's limit), got {len(experiment)}"
            )
    if mlflow["run_name"] is not None:
        _string(ck, mlflow["run_name"], "output.mlflow.run_name", "a run name (or null: the job's id)")
    return mlflow


def _check_checkpoint(ck: Checker, value: Any) -> dict | bool:
    """``output.checkpoint``: false (none), or {every: epoch | N steps, keep: N} (default: every epoch, keep 3)."""
    if value is False:
        return False
    section = (
        {}
        if value is None or value is True
        else _mapping(ck, value, "output.checkpoint", tuple(CHECKPOINT_DEFAULTS)) or {}
    )
    checkpoint = {key: section.get(key, default) for key, default in CHECKPOINT_DEFAULTS.items()}
    if checkpoint["every"] != "epoch":
        _integer(ck, checkpoint["every"], "output.checkpoint.every")
    _integer(ck, checkpoint["keep"], "output.checkpoint.keep")
    return checkpoint


# -- checks across sections --------------------------------------------------------------------------------


def _synthetic(source: Any) -> dict | None:
    return source if isinstance(source, dict) and source.get("format") == "synthetic" else None


def _check_model_fits_data(ck: Checker, model: _Model, compile_: _Compile, data: Any) -> None:
    """What the model says against what synthetic data will be (the only data whose shape is
    known without reading it): the input width, and one-hot targets against the loss and units."""
    train = _synthetic(data.get("train")) if isinstance(data, dict) else None
    if train is None or model.layers is None or any(p.path.startswith("data.train") for p in ck.problems):
        return
    last = model.layers[-1]
    declared = model.model.input_dim if model.model is not None else None
    if declared is not None and declared != train["features"]:
        spec = model.spec["layers"][0]
        key = next((k for k in ("input_dim", "input_shape", "shape") if k in spec), "input_dim")
        ck.report(
            join_key("model.layers[0]", key),
            f"the model takes {declared} inputs but data.train.features is {train['features']}: make them "
            "agree (or leave input_dim out and the data decides)",
        )
    loss = compile_.loss
    if loss is None:
        return
    classes, last_path = train["classes"], join_item("model.layers", len(model.layers) - 1)
    if loss.integer_targets:
        ck.report(
            "compile.loss",
            f"{loss.name!r} takes integer class labels, but the synthetic targets are one-hot rows of {classes} "
            "columns: use categorical_crossentropy",
        )
    elif model.model is None or (units := _output_units(model.model)) is None:
        return
    elif units != classes:
        ck.report(
            join_key(last_path, "units") if isinstance(last, Dense) else last_path,
            f"the model outputs {units} units but the synthetic targets are one-hot rows of "
            f"data.train.classes={classes} columns: make them agree",
        )
    else:
        try:  # the loss's own check of one-hot targets; two rows are enough to check their form
            loss.prepare_targets(np.eye(2, classes, dtype=np.float32), units)
        except ValueError as exc:
            ck.report("compile.loss", f"{error_text(exc)} (the synthetic targets are one-hot)")


def _check_sizes(ck: Checker, data: Any, fit: dict) -> None:
    """With synthetic training data the sample count is known: the validation split must leave
    samples on both sides, and the shards must fit the samples and the global batch."""

    train = _synthetic(data.get("train")) if isinstance(data, dict) else None
    rows = train.get("samples") if train else None
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
        rows = None
    validation = data.get("validation") if isinstance(data, dict) else None
    if (
        rows is not None
        and isinstance(validation, dict)
        and _real(validation.get("split"))
        and 0 < validation["split"] < 1
    ):
        kept = int(math.floor(rows * (1.0 - validation["split"])))
        if kept in (0, rows):
            ck.report(
                "data.validation.split",
                f"split {validation['split']} of {rows} samples leaves {kept} for training and {rows - kept} for "
                "validation; both need at least one",
            )
        rows = kept if 0 < kept < rows else None
    shards, batch_size = fit["shards"], fit["batch_size"]
    valid = [v for v in (shards, batch_size) if isinstance(v, int) and not isinstance(v, bool) and v >= 1]
    if shards is None or len(valid) != 2:
        return
    try:
        ShardPlan(rows if rows is not None else shards, shards, batch_size)
    except ValueError as exc:
        ck.report("fit.shards", error_text(exc))


def _check_plain(ck: Checker, value: Any, path: str, active: frozenset = frozenset()) -> None:
    """The resolved job must be plain JSON-able data: YAML can also make dates, sets, bytes,
    and structures that contain themselves (``&a [*a]``)."""
    if isinstance(value, (dict, list)):
        if id(value) in active:
            ck.report(path, "this value contains itself (a recursive YAML alias); write it out instead")
            return
        active = active | {id(value)}
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                ck.report(path, f"keys must be strings, got {_got(key)}")
            else:
                _check_plain(ck, item, join_key(path, key), active)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_plain(ck, item, join_item(path, i), active)
    elif isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        # (the job record travels between processes as msgpack, whose integers are 64-bit)
        if any(problem.path == path for problem in ck.problems):
            return  # its key's own range check said so already
        ck.report(path, f"integer out of range: at most 2**63 - 1 in size, got {value:,}")
    elif value is not None and not isinstance(value, (str, bool, int, float)):
        ck.report(path, f"expected plain data (a string, number, boolean, list or mapping), got {_got(value)}")


# -- validating the whole job ------------------------------------------------------------------------------


def validate(raw: Any, ck: Checker, source: str | None) -> dict:
    """The normalized spec of ``raw``; every problem goes to ``ck``."""
    if not isinstance(raw, dict):
        ck.report("", f"a job is a mapping of sections ({', '.join(SECTIONS)}), got {_got(raw)}")
        return {}
    for key in raw:
        if key not in SECTIONS:
            ck.report(join_key("", key), f"unknown section; {_suggest(key, SECTIONS, 'sections')}")
    for key in REQUIRED_SECTIONS:
        if key not in raw:
            ck.report("", f"missing required section {key!r}")
    name = _check_name(ck, raw, source)
    model = _check_model(ck, raw["model"]) if "model" in raw else _Model({}, None)
    compile_ = _check_compile(ck, raw["compile"], model) if "compile" in raw else _Compile({})
    data = _check_data(ck, raw["data"]) if "data" in raw else {}
    fit = _check_fit(ck, raw)
    cluster = _check_cluster(ck, raw)
    output = _check_output(ck, raw, name)
    _check_model_fits_data(ck, model, compile_, data)
    _check_class_weight_fits_model(ck, model, fit)
    _check_sizes(ck, data, fit)
    _check_elastic(ck, fit, cluster)
    spec = {
        "name": name,
        "model": model.spec,
        "compile": compile_.spec,
        "data": data,
        "fit": fit,
        "cluster": cluster,
        "output": output,
    }
    _check_plain(ck, spec, "")
    return spec
