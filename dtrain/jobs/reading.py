"""Reading a job file: YAML (or JSON) with the line of every key and the keys written twice, and
the ``--set key.path=value`` overrides applied to what was read."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from .problems import SET_ORIGIN, Problem, join_item, join_key

# -- reading the file: YAML with the line of every key ----------------------------------------------

# A job file is read by the scheduler, the process every job depends on: what reading one costs
# must be bounded by the file, not by what its aliases expand to (a 1 KB "billion laughs" file
# of nested aliases expands ~9x per level) or by how deeply it nests.
MAX_FILE_BYTES = 1 << 20  # 1 MiB: a job file describes a job; its data lives elsewhere
MAX_VALUES = 100_000  # values (scalars, lists, mappings) once every alias is expanded
MAX_DEPTH = 64  # lists and mappings inside one another


class _TooBig(yaml.YAMLError):
    """A document over the limits above (reported as a problem of the whole file)."""


def _check_bounds(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand past MAX_VALUES values, that nests deeper than
    MAX_DEPTH, or that contains itself; in time linear in the document's distinct nodes."""
    size: dict[int, int] = {}  # a node's expanded size (itself and everything under it)
    depth: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        key = id(node)
        children = _children(node)
        if leaving:
            active.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0) if children else 0
            if size[key] > MAX_VALUES:
                raise _TooBig(
                    f"the document expands to more than {MAX_VALUES:,} values (through YAML aliases, *name, "
                    "written once and read many times); a job file needs far fewer: write the values out"
                )
            if depth[key] > MAX_DEPTH:
                raise _TooBig(f"the document nests lists and mappings more than {MAX_DEPTH} deep")
            continue
        if key in size:
            continue
        if key in active:
            raise _TooBig("a value contains itself (a recursive YAML alias, &a [*a]); write it out instead")
        active.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in size)


def plain_bounds_problem(value: Any) -> Problem | None:
    """The same limits for a spec that arrives as Python values (``job_from_dict``, the service's
    submissions): values counted as often as they are reached, nesting, a value inside itself.
    Iterative, and stops at the first limit crossed, so it costs at most MAX_VALUES steps."""
    count = 0
    stack: list[tuple[Any, int, tuple[int, ...]]] = [(value, 0, ())]
    while stack:
        item, depth, inside = stack.pop()
        count += 1
        if count > MAX_VALUES:
            return Problem("", f"too large to read: the job has more than {MAX_VALUES:,} values", None)
        if not isinstance(item, (dict, list, tuple)):
            continue
        if id(item) in inside:
            return Problem("", "a value contains itself; a job is plain data", None)
        if depth >= MAX_DEPTH:
            return _too_deep()
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1, (*inside, id(item))) for child in children)
    return None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


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
        _check_bounds(node)  # before anything walks every expanded path
        self._record(node, "", frozenset())
        return self.construct_document(node)

    def _record(self, node: yaml.Node, path: str, active: frozenset, merged: bool = False) -> None:
        if id(node) in active:  # a recursive alias (&a [*a]): its lines are recorded already
            return
        active = active | {id(node)}
        if isinstance(node, yaml.SequenceNode):
            for i, child in enumerate(node.value):
                self._set_line(join_item(path, i), child.start_mark.line + 1, merged)
                self._record(child, join_item(path, i), active, merged)
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
                child = join_key(path, key_node.value)
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
class Parsed:
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


def _parse_yaml(text: str) -> Parsed:
    try:
        loader = _LineLoader(text)  # (its reader refuses control characters at once)
    except yaml.YAMLError as exc:
        return Parsed(None, {}, [_yaml_problem(exc, "YAML")])
    try:
        data = loader.get_single_data()
    except _TooBig as exc:
        return Parsed(None, {}, [Problem("", f"too large to read: {exc}", None)])
    except yaml.YAMLError as exc:
        return Parsed(None, {}, [_yaml_problem(exc, "YAML")])
    except RecursionError:  # PyYAML's composer recurses once per level
        return Parsed(None, {}, [_too_deep()])
    finally:
        loader.dispose()
    return Parsed(data, loader.lines, _duplicate_problems(loader.duplicates))


def _parse_json(text: str) -> Parsed:
    """Values from ``json.loads`` (YAML 1.1 reads a few JSON numbers differently); lines from
    the YAML loader, which reads almost any JSON text, or none where it cannot."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return Parsed(None, {}, [Problem("", f"JSON syntax error at column {exc.colno}: {exc.msg}", exc.lineno)])
    except RecursionError:
        return Parsed(None, {}, [_too_deep()])
    # json.loads (strict) refuses raw tabs inside strings, so every tab is indentation, which
    # YAML refuses: spaces instead keep both the meaning and the lines.
    as_yaml = _parse_yaml(text.replace("\t", " "))
    if as_yaml.data is None and as_yaml.problems:
        return Parsed(data, {}, [])
    return Parsed(data, as_yaml.lines, as_yaml.problems)


def _too_deep() -> Problem:
    return Problem("", f"too large to read: the document nests lists and mappings more than {MAX_DEPTH} deep", None)


def _looks_like_json(path: str, text: str) -> bool:
    if path.lower().endswith(".json"):
        return True
    if not text.lstrip().startswith(("{", "[")):
        return False
    try:  # a flow-style YAML document starts with "{" too
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def parse(path: str, text: str) -> Parsed:
    if len(text) > MAX_FILE_BYTES:
        return Parsed(
            None, {}, [Problem("", f"too large to read: a job file is at most {MAX_FILE_BYTES:,} bytes", None)]
        )
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
    except RecursionError:
        return [], Problem(key_path, f"--set {text!r}: the value nests too deep", None, SET_ORIGIN)
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
        child_path = join_item(path, token) if isinstance(token, int) else join_key(path, token)
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


def apply_overrides(spec: Any, overrides: Sequence[str]) -> tuple[set[str], list[Problem]]:
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
