"""Job files: one YAML (or JSON) file that describes a whole training job.

    job = load_job("examples/jobs/seed_network.yaml", overrides=["fit.epochs=10"])
    model = job.build_model()                  # compiled, from the model and compile sections
    data = job.data()                          # {"x", "y", "validation_data", "validation_split"}
    model.fit(data["x"], data["y"], validation_data=data["validation_data"],
              validation_split=data["validation_split"], **job.fit_options(), client=client)

Everything is checked before anything runs, and every problem is reported, not just the first:
:class:`JobError` lists them one per line as ``<file>: <key.path> (line N): <message>``. The
checks construct the real objects (``Dense``, the optimizer, the loss, the metrics, a compiled
``Sequential``), so a job that validates builds; they read no data (local files must exist, URLs
must use a protocol fsspec knows), so validating stays fast and works offline.

The resolved job (``Job.spec``) has every default filled in and every local path absolute, so it
means the same thing wherever it is sent (``dtrain submit`` sends it to the scheduler as a dict,
which :func:`job_from_dict` validates again).
"""

from __future__ import annotations

import copy
import difflib
import glob
import inspect
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

__all__ = ["Job", "JobError", "Problem", "load_job", "job_from_dict"]

# -- the schema ---------------------------------------------------------------------------------

SECTIONS = ("name", "model", "compile", "data", "fit", "cluster", "output")
REQUIRED_SECTIONS = ("model", "compile", "data")
MODEL_KEYS = ("dtype", "layers")
DTYPES = ("float32", "float64")
LAYER_TYPES = ("dense",)
COMPILE_KEYS = ("loss", "optimizer", "metrics")
DEFAULT_OPTIMIZER = "rmsprop"  # Keras' compile() default
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
FIT_DEFAULTS: dict[str, Any] = {
    "epochs": 1,
    "batch_size": 32,
    "seed": 0,
    "shuffle": True,
    "shards": None,
    "timeout": 60,
    "max_restarts": 2,
    "on_nonfinite": "stop",
}
NONFINITE = ("stop", "skip", "ignore")
CHECKPOINT_DEFAULTS: dict[str, Any] = {"every": "epoch", "keep": 3}
CLUSTER_DEFAULTS: dict[str, Any] = {"workers": None, "device": "auto"}
DEVICES = ("auto", "cpu", "gpu")
OUTPUT_KEYS = ("dir", "checkpoint")
_NAME = re.compile(r"[A-Za-z0-9._-]+")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_GLOB_CHARS = ("*", "?", "[")
SET_ORIGIN = "--set"


# -- problems -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a job: where (a key path such as ``model.layers[1].units``; "" for
    the whole file), what, and the line of the file it is on when known."""

    path: str
    message: str
    line: int | None
    origin: str = ""  # SET_ORIGIN for values that came from --set

    @property
    def location(self) -> str:
        """``fit.epochs (line 12)``, ``fit.epochs (from --set)``, ``line 3`` or ``""``."""
        if self.origin == SET_ORIGIN and self.path:
            return f"{self.path} (from {SET_ORIGIN})"
        if self.path and self.line is not None:
            return f"{self.path} (line {self.line})"
        if self.line is not None:
            return f"line {self.line}"
        return self.path

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message


class JobError(ValueError):
    """An invalid job. str(err) lists every problem, one per line: '<file>: <key.path> (line N): <message>'."""

    def __init__(self, problems: Sequence[Problem], source: str | None = None):
        self.problems: list[Problem] = list(problems)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        prefix = f"{self.source}: " if self.source else ""
        return "\n".join(prefix + str(problem) for problem in self.problems)

    def __reduce__(self):  # the default pickles args only, which __init__ cannot take back
        return (type(self), (self.problems, self.source))


# -- reading the file: YAML with the line of every key ----------------------------------------------


def _key(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _item(path: str, index: int) -> str:
    return f"{path}[{index}]"


def _parent(path: str) -> str:
    """``a.b[2]`` -> ``a.b`` -> ``a`` -> ``""``."""
    if path.endswith("]"):
        return path[: path.rindex("[")]
    return path[: path.rfind(".")] if "." in path else ""


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that records the line of every mapping key and list item by key path
    (``lines["model.layers[1].units"] == 8``), and keys that appear twice in one mapping
    (YAML keeps the last silently, which hides mistakes)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.lines: dict[str, int] = {}
        self.duplicates: list[tuple[str, int, int]] = []  # (path, line, line of the first one)

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        self._record(node, "", frozenset())
        return self.construct_document(node)

    def _record(self, node: yaml.Node, path: str, active: frozenset, merged: bool = False) -> None:
        if id(node) in active:  # a recursive alias (&a [*a]): its lines are recorded already
            return
        active = active | {id(node)}
        if isinstance(node, yaml.SequenceNode):
            for i, child in enumerate(node.value):
                self._set_line(_item(path, i), child.start_mark.line + 1, merged)
                self._record(child, _item(path, i), active, merged)
        elif isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            merges = []
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *base": after the explicit keys
                    merges.append(value_node)
                    continue
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                line = key_node.start_mark.line + 1
                child = _key(path, key_node.value)
                if key_node.value in seen and not merged:
                    self.duplicates.append((child, line, seen[key_node.value]))
                seen[key_node.value] = line
                self._set_line(child, line, merged)
                self._record(value_node, child, active, merged)
            for value_node in merges:
                bases = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for base in bases:
                    self._record(base, path, active, merged=True)

    def _set_line(self, path: str, line: int, merged: bool) -> None:
        if merged:  # a merged-in key never hides the line of one written in place
            self.lines.setdefault(path, line)
        else:
            self.lines[path] = line


# PyYAML follows YAML 1.1, where a float needs a dot: "1e-3" would be the string '1e-3'. Job files
# are full of learning rates, so read exponent notation as YAML 1.2 (and JSON) do.
_LineLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


@dataclass
class _Parsed:
    data: Any
    lines: dict[str, int]
    problems: list[Problem]  # syntax errors (then data is None), duplicate keys


def _yaml_problem(exc: yaml.YAMLError, what: str) -> Problem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    detail = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    if context:
        detail = f"{detail} ({context})"
    if mark is None:
        return Problem("", f"{what} syntax error: {detail}", None)
    return Problem("", f"{what} syntax error at column {mark.column + 1}: {detail}", mark.line + 1)


def _duplicate_problems(duplicates: list[tuple[str, int, int]]) -> list[Problem]:
    return [
        Problem(
            path,
            f"this key appears twice in its mapping (first on line {first}); only the last is used, remove one",
            line,
        )
        for path, line, first in duplicates
    ]


def _parse_yaml(text: str) -> _Parsed:
    loader = _LineLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        return _Parsed(None, {}, [_yaml_problem(exc, "YAML")])
    finally:
        loader.dispose()
    return _Parsed(data, loader.lines, _duplicate_problems(loader.duplicates))


def _parse_json(text: str) -> _Parsed:
    """Values from ``json.loads`` (YAML 1.1 reads a few JSON numbers differently); lines from
    the YAML loader, which reads almost any JSON text, or none where it cannot."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return _Parsed(None, {}, [Problem("", f"JSON syntax error at column {exc.colno}: {exc.msg}", exc.lineno)])
    # json.loads (strict) refuses raw tabs inside strings, so every tab is indentation, which
    # YAML refuses: spaces instead keep both the meaning and the lines.
    as_yaml = _parse_yaml(text.replace("\t", " "))
    if as_yaml.data is None and as_yaml.problems:
        return _Parsed(data, {}, [])
    return _Parsed(data, as_yaml.lines, as_yaml.problems)


def _looks_like_json(path: str, text: str) -> bool:
    if path.lower().endswith(".json"):
        return True
    if not text.lstrip().startswith(("{", "[")):
        return False
    try:  # a flow-style YAML document starts with "{" too
        json.loads(text)
    except ValueError:
        return False
    return True


def _parse(path: str, text: str) -> _Parsed:
    return _parse_json(text) if _looks_like_json(path, text) else _parse_yaml(text)


# -- --set overrides ---------------------------------------------------------------------------------

_KEY_PATH = re.compile(r"[^.\[\]\s=]+(?:\[\d+\])*(?:\.[^.\[\]\s=]+(?:\[\d+\])*)*")
_TOKEN = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


def _tokens(key_path: str) -> list[str | int]:
    """``model.layers[0].units`` -> ``["model", "layers", 0, "units"]``."""
    return [int(index) if index else key for index, key in _TOKEN.findall(key_path)]


def _apply_override(spec: dict, text: str) -> tuple[list[str], Problem | None]:
    """Apply one ``key.path=value`` to ``spec`` in place. Returns the key paths it wrote (the
    value's and those of mappings it created) or the problem that stopped it."""
    key_path, sep, value_text = text.partition("=")
    key_path = key_path.strip()
    if not sep or not _KEY_PATH.fullmatch(key_path):
        example = "e.g. --set fit.epochs=10 or --set model.layers[0].units=128"
        return [], Problem("", f"--set {text!r} is not key.path=value ({example})", None, SET_ORIGIN)
    try:
        value = yaml.load(value_text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        detail = getattr(exc, "problem", None) or str(exc)
        return [], Problem(key_path, f"--set {text!r}: the value is not valid YAML: {detail}", None, SET_ORIGIN)

    written: list[str] = []

    def fail(message: str) -> tuple[list[str], Problem]:
        # Mappings created before the failure stay: their problems must not claim a file line.
        return written, Problem(key_path, f"cannot apply --set {text!r}: {message}", None, SET_ORIGIN)

    tokens = _tokens(key_path)
    node: Any = spec
    path = ""
    for i, token in enumerate(tokens):
        last = i == len(tokens) - 1
        if isinstance(token, int):
            if not isinstance(node, list):
                return fail(f"{path or 'the job'} is not a list, so it has no item [{token}]")
            if token >= len(node):
                return fail(f"index {token} is out of range: {path} has {len(node)} item(s)")
        elif not isinstance(node, dict):
            return fail(f"{path or 'the job'} is not a mapping, so it has no key {token!r}")
        child_path = _item(path, token) if isinstance(token, int) else _key(path, token)
        if last:
            node[token] = value
            written.append(child_path)
        elif isinstance(token, str) and node.get(token) is None:
            # A missing (or empty, "fit:") mapping on the way is created, unless a list is needed.
            if isinstance(tokens[i + 1], int):
                return fail(f"{child_path} is not in the job, so it has no item [{tokens[i + 1]}]")
            node[token] = {}
            written.append(child_path)
        node, path = node[token], child_path
    return written, None


def _apply_overrides(spec: Any, overrides: Sequence[str]) -> tuple[set[str], list[Problem]]:
    written: set[str] = set()
    problems: list[Problem] = []
    for text in overrides:
        if not isinstance(spec, dict):
            problems.append(
                Problem("", f"cannot apply --set {text!r}: the job file is not a mapping", None, SET_ORIGIN)
            )
            continue
        paths, problem = _apply_override(spec, str(text))
        written.update(paths)
        if problem is not None:
            problems.append(problem)
    return written, problems


# -- validation machinery ---------------------------------------------------------------------------


class _Checker:
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
            path = _parent(path)
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


def _mapping(ck: _Checker, value: Any, path: str, known: Sequence[str], required: Sequence[str] = ()) -> dict | None:
    """``value`` if it is a mapping (reporting unknown and missing keys), else None (reported)."""
    if not isinstance(value, dict):
        ck.report(path, f"expected a mapping with keys {', '.join(known)}, got {_got(value)}")
        return None
    for key in value:
        if key not in known:
            ck.report(_key(path, key), f"unknown key; {_suggest(key, known)}")
    for key in required:
        if key not in value:
            ck.report(path, f"missing required key {key!r}")
    return value


def _integer(ck: _Checker, value: Any, path: str, least: int = 1) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        wanted = "a positive integer" if least == 1 else f"an integer >= {least}"
        ck.report(path, f"expected {wanted}, got {_got(value)}")
    return value


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_number(ck: _Checker, value: Any, path: str) -> Any:
    if not _real(value) or value <= 0:
        ck.report(path, f"expected a number > 0, got {_got(value)}")
    return value


def _boolean(ck: _Checker, value: Any, path: str) -> Any:
    if not isinstance(value, bool):
        ck.report(path, f"expected true or false, got {_got(value)}")
    return value


def _choice(ck: _Checker, value: Any, path: str, choices: Sequence[str]) -> Any:
    if value not in choices:
        close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6) if isinstance(value, str) else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        ck.report(path, f"expected one of {', '.join(choices)}, got {_got(value)}{hint}")
    return value


def _string(ck: _Checker, value: Any, path: str, what: str = "a non-empty string") -> Any:
    if not isinstance(value, str) or not value:
        hint = " (quote it)" if isinstance(value, (bool, int, float)) else ""
        ck.report(path, f"expected {what}, got {_got(value)}{hint}")
    return value


def _strings(ck: _Checker, value: Any, path: str, what: str) -> Any:
    """A non-empty list of non-empty strings."""
    if not isinstance(value, list) or not value:
        ck.report(path, f"expected a non-empty list of {what}, got {_got(value)}")
        return value
    for i, item in enumerate(value):
        _string(ck, item, _item(path, i))
    return value


def _error_text(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


def _construct(ck: _Checker, path: str, make: Callable[..., Any], kwargs: dict, probe_base: dict) -> Any:
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
            ck.report(_key(path, key), _error_text(exc))
            blamed = True
    if not blamed:
        ck.report(path, _error_text(error))
    return None


def _parameters(cls: type) -> list[str]:
    """The keyword arguments ``cls(...)`` takes."""
    return [
        name
        for name, p in inspect.signature(cls).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def _attempt(ck: _Checker, path: str, make: Callable[[], Any]) -> Any:
    try:
        return make()
    except (TypeError, ValueError) as exc:
        ck.report(path, _error_text(exc))
        return None


def _named(ck: _Checker, path: str, identifier: Any, get: Callable[[Any], Any], registry: Mapping[str, type]) -> Any:
    """A loss or optimizer from a name or ``{name: ..., <params>}``, built with the registry's
    own ``get``; the errors land on the parameter at fault (``compile.optimizer.momentum``)."""
    if not (isinstance(identifier, dict) and "name" in identifier and "class_name" not in identifier):
        return _attempt(ck, path, lambda: get(identifier))
    name = identifier["name"]
    cls = registry.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        return _attempt(ck, _key(path, "name"), lambda: get(identifier))
    accepted = _parameters(cls)
    params = {key: value for key, value in identifier.items() if key != "name"}
    for key in params:
        if key not in accepted:
            hint = _suggest(key, accepted, "parameters") if accepted else "it takes none"
            ck.report(_key(path, key), f"unknown parameter of {name!r}; {hint}")
    known = {key: value for key, value in params.items() if key in accepted}
    built = _construct(ck, path, lambda **kw: get({"name": name, **kw}), known, {})
    return built if len(known) == len(params) else None


def _metric_identifier(metric: Any) -> Any:
    """``{name: binary_accuracy, threshold: 0.3}`` -> the ``{class_name, config}`` form that
    ``dtrain.metrics.get`` reads (its plain ``name`` is the metric's History key)."""
    if isinstance(metric, dict) and "name" in metric and "class_name" not in metric:
        return {"class_name": metric["name"], "config": {k: v for k, v in metric.items() if k != "name"}}
    return metric


# -- the sections -----------------------------------------------------------------------------------


def _default_name(source: str | None) -> str:
    """The job file's stem, made a valid name ("my job.yaml" -> "my-job")."""
    stem = Path(source).stem if source else ""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-") or "job"


def _check_name(ck: _Checker, raw: dict, source: str | None) -> Any:
    if "name" not in raw:
        return _default_name(source)
    name = raw["name"]
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        ck.report("name", f"expected a name of letters, digits, '.', '_' and '-' (e.g. seed-network), got {_got(name)}")
    return name


@dataclass
class _Model:
    """What the model section built, for the checks that need it (None where it is invalid)."""

    spec: dict
    layers: list | None  # dtrain.layers.Dense, one per item
    model: Any = None  # an uncompiled Sequential of those layers


def _check_layer(ck: _Checker, item: Any, path: str) -> tuple[Any, Any]:
    """(normalized spec, Dense or None) of one ``model.layers`` item."""
    from ..layers import Dense

    known = ("type", *_parameters(Dense))
    layer = _mapping(ck, item, path, known, required=("units",))
    if layer is None:
        return item, None
    kind = layer.get("type", "dense")
    type_ok = isinstance(kind, str) and kind.lower() in LAYER_TYPES
    if not type_ok:
        ck.report(_key(path, "type"), f"unknown layer type {kind!r}: the only type is 'dense'")
    kwargs = {key: value for key, value in layer.items() if key in known and key != "type"}
    # Without units Dense cannot be built, but its other arguments can still be checked.
    built = _construct(ck, path, Dense, {"units": 1, **kwargs}, {"units": 1})
    complete = type_ok and "units" in layer and all(key in known for key in layer)
    return {"type": "dense", **kwargs}, built if complete else None


def _check_model(ck: _Checker, raw: Any) -> _Model:
    from ..model import Sequential

    section = _mapping(ck, raw, "model", MODEL_KEYS, required=("layers",))
    if section is None:
        return _Model(raw, None)
    dtype = _choice(ck, section.get("dtype", "float32"), "model.dtype", DTYPES)
    items = section.get("layers")
    if "layers" in section and (not isinstance(items, list) or not items):
        example = "- {units: 10, activation: softmax}"
        ck.report("model.layers", f"expected a non-empty list of layers (e.g. {example}), got {_got(items)}")
        items = None
    specs, layers = [], []
    for i, item in enumerate(items or ()):
        spec, layer = _check_layer(ck, item, _item("model.layers", i))
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
            ck.report(_item("model.layers", i), _error_text(exc))
            return result
    result.model = model
    return result


@dataclass
class _Compile:
    spec: dict
    loss: Any = None  # dtrain.losses.Loss, or None where invalid


def _check_compile(ck: _Checker, raw: Any, model: _Model) -> _Compile:
    from .. import losses, optimizers
    from .. import metrics as metrics_module

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
    resolved = []
    # The output width only picks which accuracy "accuracy" means; any width checks the rest.
    units = model.model.output_units if model.model is not None else 1
    for i, metric in enumerate(metrics):
        if not isinstance(metric, (str, dict)):
            ck.report(_item("compile.metrics", i), f"expected a metric name or mapping, got {_got(metric)}")
            resolved.append(None)
        elif loss is not None:  # which metrics can read the targets depends on the loss
            get = lambda m=metric: metrics_module.get(_metric_identifier(m), loss, units)  # noqa: E731
            resolved.append(_attempt(ck, _item("compile.metrics", i), get))
    if model.model is None or loss is None or optimizer is None or any(metric is None for metric in resolved):
        return _Compile(spec, loss)
    _check_compiles(ck, model.model, optimizer, loss, metrics)
    return _Compile(spec, loss)


def _check_compiles(ck: _Checker, model: Any, optimizer: Any, loss: Any, metrics: list) -> None:
    """``model.compile(...)``: the checks it makes across its arguments (unique metric names,
    a loss that suits the last layer). Its warnings are problems here: a job runs unattended,
    so a warning nobody reads would only waste the run."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.compile(optimizer=optimizer, loss=loss, metrics=[_metric_identifier(m) for m in metrics])
        except (TypeError, ValueError, RuntimeError) as exc:
            ck.report("compile", _error_text(exc))
    for warning in caught:
        ck.report("compile.loss", str(warning.message))


# -- data ------------------------------------------------------------------------------------------------


def _check_protocol(ck: _Checker, url: str, path: str) -> None:
    """fsspec must know every protocol of ``url`` (chained ones too: ``simplecache::s3://...``)."""
    import fsspec

    for part in url.split("::"):
        protocol = part.split("://", 1)[0] if "://" in part else part
        try:
            fsspec.get_filesystem_class(protocol)
        except (ValueError, ImportError) as exc:
            ck.report(path, f"cannot read {protocol!r} URLs: {_error_text(exc)}")


def _local_path(ck: _Checker, value: str) -> str:
    return os.path.abspath(os.path.join(ck.base_dir, os.path.expanduser(value)))


def _check_exists(ck: _Checker, resolved: str, path: str, kind: str) -> None:
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


def _check_location(ck: _Checker, value: Any, path: str, kind: str) -> Any:
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


def _check_storage_options(ck: _Checker, value: Any, path: str) -> Any:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        ck.report(path, f"expected a mapping of fsspec options (e.g. {{anon: true}}), got {_got(value)}")
    return value


def _check_synthetic(ck: _Checker, source: dict, path: str) -> None:
    from ..sources import from_synthetic

    args = {key: source[key] for key in ("samples", "features", "classes", "seed", "separation") if key in source}
    # from_synthetic checks its own arguments; the smallest valid ones stand in for missing ones.
    smallest = {"samples": 1, "features": 1, "classes": 2}
    _construct(ck, path, from_synthetic, {**smallest, **args}, smallest)


def _check_table(ck: _Checker, source: dict, path: str, fmt: str) -> None:
    locations = source.get("path")
    if isinstance(locations, list):
        if not locations:
            ck.report(_key(path, "path"), "expected a path, a URL or a non-empty list of them, got an empty list")
        source["path"] = [_check_location(ck, p, _item(_key(path, "path"), i), fmt) for i, p in enumerate(locations)]
    elif "path" in source:
        source["path"] = _check_location(ck, locations, _key(path, "path"), fmt)
    if "label" in source:
        label = source["label"]
        if isinstance(label, list):
            _strings(ck, label, _key(path, "label"), "label column names")
        else:
            _string(ck, label, _key(path, "label"), "a label column name or a list of them")
    if source.get("features") is not None:
        _strings(ck, source["features"], _key(path, "features"), "feature column names")


def _check_source(ck: _Checker, value: Any, path: str) -> Any:
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
        _choice(ck, fmt, _key(path, "format"), tuple(SOURCE_FORMATS))
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
                source[key] = _check_location(ck, source[key], _key(path, key), "file")
    elif fmt == "npz":
        if "path" in source:
            source["path"] = _check_location(ck, source["path"], _key(path, "path"), "file")
        for key in ("x", "y"):
            _string(ck, source[key], _key(path, key), "the name of an array in the .npz file")
    else:
        _check_table(ck, source, path, fmt)
    if "storage_options" in source:
        _check_storage_options(ck, source["storage_options"], _key(path, "storage_options"))
    return source


def _check_validation(ck: _Checker, value: Any) -> Any:
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
            ck.report(_key(path, "split"), f"expected a fraction between 0 and 1 (e.g. 0.2), got {_got(split)}")
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
            _key(path, "format"),
            "synthetic validation data cannot be drawn apart from the training data (another seed gives other "
            "class centres, the same seed the same rows); use split: 0.2 instead",
        )
    return source


def _check_data(ck: _Checker, raw: Any) -> Any:
    section = _mapping(ck, raw, "data", DATA_KEYS, required=("train",))
    if section is None:
        return raw
    train = _check_source(ck, section["train"], "data.train") if "train" in section else None
    return {"train": train, "validation": _check_validation(ck, section.get("validation"))}


# -- fit, cluster, output ----------------------------------------------------------------------------------


def _optional_section(ck: _Checker, raw: dict, key: str, known: Sequence[str]) -> dict:
    """An optional section: absent or empty ("fit:" with every line commented out) is {}."""
    value = raw.get(key)
    if value is None:
        return {}
    return _mapping(ck, value, key, known) or {}


def _check_fit(ck: _Checker, raw: dict) -> dict:
    section = _optional_section(ck, raw, "fit", tuple(FIT_DEFAULTS))
    fit = {key: section.get(key, default) for key, default in FIT_DEFAULTS.items()}
    _integer(ck, fit["epochs"], "fit.epochs")
    _integer(ck, fit["batch_size"], "fit.batch_size")
    _integer(ck, fit["seed"], "fit.seed", least=0)
    _boolean(ck, fit["shuffle"], "fit.shuffle")
    if fit["shards"] is not None:
        _integer(ck, fit["shards"], "fit.shards")
    _positive_number(ck, fit["timeout"], "fit.timeout")
    _integer(ck, fit["max_restarts"], "fit.max_restarts", least=0)
    _choice(ck, fit["on_nonfinite"], "fit.on_nonfinite", NONFINITE)
    return fit


def _check_cluster(ck: _Checker, raw: dict) -> dict:
    section = _optional_section(ck, raw, "cluster", tuple(CLUSTER_DEFAULTS))
    cluster = {key: section.get(key, default) for key, default in CLUSTER_DEFAULTS.items()}
    workers = cluster["workers"]
    if isinstance(workers, list):
        _strings(ck, workers, "cluster.workers", "worker addresses (e.g. tcp://10.0.0.5:40331)")
        for i, address in enumerate(workers):
            if address in workers[:i]:
                ck.report(_item("cluster.workers", i), f"{address!r} is listed twice")
    elif workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        ck.report("cluster.workers", f"expected a number of workers or a list of worker addresses, got {_got(workers)}")
    _choice(ck, cluster["device"], "cluster.device", DEVICES)
    return cluster


def _check_output(ck: _Checker, raw: dict, name: Any) -> dict:
    section = _optional_section(ck, raw, "output", OUTPUT_KEYS)
    if "dir" not in section:
        directory = _local_path(ck, os.path.join("runs", str(name)))
    else:
        directory = _check_location(ck, section["dir"], "output.dir", kind="")  # it need not exist yet
    return {"dir": directory, "checkpoint": _check_checkpoint(ck, section.get("checkpoint", {}))}


def _check_checkpoint(ck: _Checker, value: Any) -> dict | bool:
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


def _check_model_fits_data(ck: _Checker, model: _Model, compile_: _Compile, data: Any) -> None:
    """What the model says against what synthetic data will be (the only data whose shape is
    known without reading it): the input width, and one-hot targets against the loss and units."""
    train = _synthetic(data.get("train")) if isinstance(data, dict) else None
    if train is None or model.layers is None or any(p.path.startswith("data.train") for p in ck.problems):
        return
    first, last = model.layers[0], model.layers[-1]
    if first.input_dim is not None and first.input_dim != train["features"]:
        key = "input_dim" if "input_dim" in model.spec["layers"][0] else "input_shape"
        ck.report(
            _key("model.layers[0]", key),
            f"the first layer takes {first.input_dim} inputs but data.train.features is {train['features']}: make them "
            "agree (or leave input_dim out and the data decides)",
        )
    loss = compile_.loss
    if loss is None:
        return
    classes, last_path = train["classes"], _item("model.layers", len(model.layers) - 1)
    if loss.integer_targets:
        ck.report(
            "compile.loss",
            f"{loss.name!r} takes integer class labels, but the synthetic targets are one-hot rows of {classes} "
            "columns: use categorical_crossentropy",
        )
    elif last.units != classes:
        ck.report(
            _key(last_path, "units"),
            f"the last layer has {last.units} units but the synthetic targets are one-hot rows of "
            f"data.train.classes={classes} columns: make them agree",
        )
    else:
        try:  # the loss's own check of one-hot targets; two rows are enough to check their form
            loss.prepare_targets(np.eye(2, classes, dtype=np.float32), last.units)
        except ValueError as exc:
            ck.report("compile.loss", f"{_error_text(exc)} (the synthetic targets are one-hot)")


def _check_sizes(ck: _Checker, data: Any, fit: dict) -> None:
    """With synthetic training data the sample count is known: the validation split must leave
    samples on both sides, and the shards must fit the samples and the global batch."""
    from ..sampling import ShardPlan

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
        ck.report("fit.shards", _error_text(exc))


def _check_plain(ck: _Checker, value: Any, path: str, active: frozenset = frozenset()) -> None:
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
                _check_plain(ck, item, _key(path, key), active)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_plain(ck, item, _item(path, i), active)
    elif value is not None and not isinstance(value, (str, bool, int, float)):
        ck.report(path, f"expected plain data (a string, number, boolean, list or mapping), got {_got(value)}")


# -- putting it together --------------------------------------------------------------------------------


def _validate(raw: Any, ck: _Checker, source: str | None) -> dict:
    """The normalized spec of ``raw``; every problem goes to ``ck``."""
    if not isinstance(raw, dict):
        ck.report("", f"a job is a mapping of sections ({', '.join(SECTIONS)}), got {_got(raw)}")
        return {}
    for key in raw:
        if key not in SECTIONS:
            ck.report(_key("", key), f"unknown section; {_suggest(key, SECTIONS, 'sections')}")
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
    _check_sizes(ck, data, fit)
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


def _finish(raw: Any, ck: _Checker, source: str | None, early: Sequence[Problem] = ()) -> Job:
    spec = _validate(raw, ck, source)
    problems = [*early, *ck.problems]
    if problems:
        raise JobError(problems, source)
    return Job(copy.deepcopy(spec), source)


def load_job(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Job:
    """Read, override (``--set key.path=value`` strings) and validate a job file (YAML, or JSON by
    its .json suffix or its content). Raises :class:`JobError` listing every problem."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else _error_text(exc)
        raise JobError([Problem("", f"cannot read the job file: {reason}", None)], source) from None
    parsed = _parse(source, text)
    if parsed.data is None and parsed.problems:  # a syntax error: nothing to check
        raise JobError(parsed.problems, source)
    if parsed.data is None:
        empty = Problem("", "the job file is empty: it needs at least the model, compile and data sections", None)
        raise JobError([empty], source)
    raw = parsed.data
    overridden, override_problems = _apply_overrides(raw, overrides)
    ck = _Checker(
        lines=parsed.lines,
        overridden=overridden,
        base_dir=os.path.dirname(os.path.abspath(source)),
        check_files=True,
    )
    return _finish(raw, ck, source, [*parsed.problems, *override_problems])


def job_from_dict(
    spec: dict, *, base_dir: str | os.PathLike | None = None, check_files: bool = True, source: str | None = None
) -> Job:
    """Validate an already-parsed spec (the service receives resolved jobs as dicts). Relative
    paths are taken from ``base_dir`` (default: the current directory); ``check_files=False``
    skips checking that local files exist (they need not exist where the job is only queued)."""
    ck = _Checker(
        lines={},
        overridden=set(),
        base_dir=os.path.abspath(os.fspath(base_dir) if base_dir is not None else os.getcwd()),
        check_files=check_files,
    )
    return _finish(_copy_with_lists(spec), ck, source)


def _copy_with_lists(value: Any, active: frozenset = frozenset()) -> Any:
    """A copy of ``value`` with tuples as lists: a spec that crossed Dask's comms (msgpack) has
    tuples where the job file had lists. A structure that contains itself is left to the checks."""
    if not isinstance(value, (dict, list, tuple)) or id(value) in active:
        return value
    active = active | {id(value)}
    if isinstance(value, dict):
        return {key: _copy_with_lists(item, active) for key, item in value.items()}
    return [_copy_with_lists(item, active) for item in value]


# -- the job ---------------------------------------------------------------------------------------------


@dataclass
class Job:
    """A validated job. ``spec`` is the resolved job: every default filled in, every local path
    absolute, plain JSON-able data."""

    spec: dict
    source: str | None = None  # the job file it came from

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def output_dir(self) -> str:
        return self.spec["output"]["dir"]

    @property
    def epochs(self) -> int:
        return self.spec["fit"]["epochs"]

    @property
    def workers(self) -> int | list[str] | None:
        return self.spec["cluster"]["workers"]

    @property
    def device(self) -> str:
        return self.spec["cluster"]["device"]

    def to_dict(self) -> dict:
        return copy.deepcopy(self.spec)

    def to_yaml(self) -> str:
        """The resolved job file; ``load_job`` reads it back to the same spec."""
        header = "# dtrain job, resolved: every default filled in, local paths absolute\n"
        return header + yaml.safe_dump(self.spec, sort_keys=False, default_flow_style=False)

    def build_model(self) -> Any:
        """A compiled ``dtrain.Sequential`` on ``cluster.device`` (its weights are built by fit)."""
        from ..layers import Dense
        from ..model import Sequential

        spec = self.to_dict()
        model_spec, compile_spec = spec["model"], spec["compile"]
        layers = [Dense(**{k: v for k, v in layer.items() if k != "type"}) for layer in model_spec["layers"]]
        model = Sequential(layers, name=self.name, device=self.device, dtype=model_spec["dtype"])
        model.compile(
            optimizer=compile_spec["optimizer"],
            loss=compile_spec["loss"],
            metrics=[_metric_identifier(m) for m in compile_spec["metrics"]],
        )
        return model

    def data(self) -> dict:
        """``{"x", "y", "validation_data", "validation_split"}`` for ``fit``: dtrain sources,
        which read nothing until training (each worker reads its own rows)."""
        data = self.spec["data"]
        validation = data["validation"]
        split = 0.0
        validation_data = None
        if validation is not None and "split" in validation:
            split = float(validation["split"])
        elif validation is not None:
            validation_data = self._open(validation)
        x, y = self._open(data["train"])
        return {"x": x, "y": y, "validation_data": validation_data, "validation_split": split}

    def _open(self, source: dict) -> tuple[Any, Any]:
        # Imported here: sources pulls in nothing heavy itself, but its table readers do.
        from .. import sources

        fmt = source["format"]
        options = source.get("storage_options") or None
        if fmt == "synthetic":
            return sources.from_synthetic(
                source["samples"],
                source["features"],
                source["classes"],
                seed=source["seed"],
                separation=source["separation"],
                dtype=self.spec["model"]["dtype"],
            )
        if fmt == "npy":
            return sources.from_npy(source["x"], options), sources.from_npy(source["y"], options)
        if fmt == "npz":
            return sources.from_npz(source["path"], x=source["x"], y=source["y"], storage_options=options)
        read = sources.from_parquet if fmt == "parquet" else sources.from_csv
        return read(source["path"], label=source["label"], features=source["features"], storage_options=options)

    def fit_options(self) -> dict:
        """``epochs, batch_size, seed, shuffle, shards, timeout, max_restarts, on_nonfinite`` as
        ``Sequential.fit`` takes them."""
        return dict(self.spec["fit"])

    @property
    def checkpoint_dir(self) -> str | None:
        """``<output.dir>/checkpoints``, or None when ``output.checkpoint`` is false."""
        if self.spec["output"]["checkpoint"] is False:
            return None
        base = self.output_dir
        return f"{base.rstrip('/')}/checkpoints" if "://" in base else os.path.join(base, "checkpoints")

    def recovery_options(self) -> dict:
        """What ``fit_on_cluster`` takes for checkpoints and restarts: the policy, the number of
        restarts, the non-finite policy, and the job's data as part of every checkpoint's
        identity (a checkpoint of another job's data is never resumed from)."""
        from ..checkpoints import spec_hash
        from ..recovery import CheckpointPolicy

        checkpoint = self.spec["output"]["checkpoint"]
        policy = (
            None
            if checkpoint is False
            else CheckpointPolicy.make(self.checkpoint_dir, checkpoint["every"], checkpoint["keep"])
        )
        fit = self.spec["fit"]
        return {
            "checkpoints": policy,
            "max_restarts": fit["max_restarts"],
            "on_nonfinite": fit["on_nonfinite"],
            "checkpoint_extra": {"job": spec_hash(self.spec["data"])},
        }
