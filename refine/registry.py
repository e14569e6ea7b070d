"""Name -> class registries for the pluggable pieces (objective terms, moves, strategies).

A piece is found by its registered name (``"regenerate"``) or by an import path
``"package.module:ClassName"``, so third-party pieces plug in without touching refine.
"""

from __future__ import annotations

import importlib
from typing import Callable, Generic, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A small name -> class table.

    >>> r = Registry("widget")
    >>> @r.register("box")
    ... class Box: pass
    >>> r.get("box") is Box
    True
    >>> r.get("collections:OrderedDict").__name__
    'OrderedDict'
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def deco(cls: type[T]) -> type[T]:
            if name in self._items and self._items[name] is not cls:
                raise ValueError(f"{self.kind} {name!r} is already registered to {self._items[name]!r}")
            self._items[name] = cls
            cls.name = name  # type: ignore[attr-defined]
            return cls

        return deco

    def get(self, name: str, field: str | None = None) -> type[T]:
        field = field or self.kind
        if not isinstance(name, str):
            raise ConfigError(f"`{field}` must be a string name, but is {name!r}")
        if name in self._items:
            return self._items[name]
        if ":" in name:
            module, _, attr = name.partition(":")
            try:
                obj = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise ConfigError(f"`{field}`={name!r}: cannot import {attr!r} from {module!r} ({exc})") from exc
            return obj
        raise ConfigError(
            f"`{field}` has to be one of {sorted(self._items)} or a 'module:Class' path, but is {name!r}"
        )

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))


TERMS: Registry = Registry("objective term")
MOVES: Registry = Registry("move")
STRATEGIES: Registry = Registry("strategy")
