"""Look objects up by name, config dict or instance, Keras style (``optimizers.get("adam")``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

# Keys of Keras 3's serialised form ({"module": ..., "class_name": ..., "config": ...,
# "registered_name": ...}) that say where Keras finds the class: irrelevant here.
_IGNORED_KEYS = ("module", "registered_name")


def _a(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


def _plural(word: str) -> str:
    return f"{word}es" if word.endswith("s") else f"{word}s"


def resolve(
    identifier: Any,
    registry: Mapping[str, Callable[..., T]],
    kind: str,
    base: type[T],
    known: Iterable[str] | None = None,
) -> T:
    """Turn ``identifier`` into an instance of ``base``.

    Accepts an instance of ``base`` (returned as is), a registered name (case-insensitive),
    or a config dict ``{"class_name": name, "config": {...}}`` (Keras' serialised form);
    a plain ``{"name": ..., **kwargs}`` dict is accepted too. Anything else raises an error
    that names what was received and lists the known names (``known``: the canonical names to
    list, when the registry also holds aliases).
    """
    if isinstance(identifier, base):
        return identifier
    known = f"Known {_plural(kind)}: {', '.join(sorted(registry if known is None else known))}."
    if isinstance(identifier, str):
        key = identifier.lower()
        if key not in registry:
            raise ValueError(f"Unknown {kind} {identifier!r}. {known}")
        return registry[key]()
    if isinstance(identifier, Mapping):
        config = dict(identifier)
        if "class_name" in config:
            name = config.pop("class_name")
            kwargs = config.pop("config", None) or {}
            if not isinstance(kwargs, Mapping):
                raise ValueError(
                    f"The 'config' of {_a(kind)} config dict must be a dict of arguments, received {identifier!r}."
                )
            kwargs = dict(kwargs)
            for key in _IGNORED_KEYS:
                config.pop(key, None)
            if config:
                raise ValueError(f"Unexpected keys {sorted(config)} in {kind} config {identifier!r}.")
        elif "name" in config:
            name = config.pop("name")
            kwargs = config
        else:
            raise ValueError(
                f"{_a(kind).capitalize()} config dict needs a 'class_name' (or 'name') key, received {identifier!r}."
            )
        if not isinstance(name, str) or name.lower() not in registry:
            raise ValueError(f"Unknown {kind} {name!r}. {known}")
        try:
            return registry[name.lower()](**kwargs)
        except TypeError as exc:
            raise ValueError(f"Bad arguments for {kind} {name!r}: {exc}") from None
    raise TypeError(
        f"Expected {_a(kind)} name, config dict or {base.__name__} instance, received "
        f"{type(identifier).__name__} {identifier!r}. {known}"
    )
