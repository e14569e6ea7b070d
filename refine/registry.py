"""Name -> class registries for the pluggable pieces (objective terms, moves, strategies).

A piece is found by its registered name (``"regenerate"``) or by an import path
``"package.module:ClassName"``, so third-party pieces plug in without touching refine.

Import paths name code to run, so they are trusted only where the caller is: the Python API
and a server's own configuration. Inside :func:`only_plugins` a registry resolves registered
names and the listed paths alone, and refuses every other path *before importing anything*;
refine builds every configuration that arrives over a network inside such a block
(:meth:`refine.RefineConfig.from_dict` with ``plugins=``). A path must also name a subclass of
the registry's base class (a :class:`~refine.objectives.Term`, :class:`~refine.moves.Move` or
:class:`~refine.strategy.Strategy`), checked before the class is ever called.

The registries themselves live beside their base classes: ``TERMS`` in :mod:`refine.objectives`,
``MOVES`` in :mod:`refine.moves`, ``STRATEGIES`` in :mod:`refine.strategy`.
"""

from __future__ import annotations

import contextlib
import importlib
from contextvars import ContextVar
from typing import Callable, Generic, Iterable, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")

#: import paths the registries may resolve in the current context; None: any (trusted callers)
_ALLOWED_PLUGINS: ContextVar[frozenset[str] | None] = ContextVar("refine_allowed_plugins", default=None)


@contextlib.contextmanager
def only_plugins(paths: Iterable[str]) -> Iterator[None]:
    """Within this block, registries resolve only registered names and the import paths in ``paths``.

    Any other ``"module:attr"`` raises :class:`~refine.errors.ConfigError` without importing ``module``.

    >>> with only_plugins([]):
    ...     Registry("widget").get("os:system")
    Traceback (most recent call last):
    ...
    refine.errors.ConfigError: `widget`='os:system' is an import path, which is not accepted here: name a registered widget ([])
    """
    token = _ALLOWED_PLUGINS.set(frozenset(paths))
    try:
        yield
    finally:
        _ALLOWED_PLUGINS.reset(token)


class Registry(Generic[T]):
    """A small name -> class table whose entries derive from ``base`` (when given).

    >>> r = Registry("widget")
    >>> @r.register("box")
    ... class Box: pass
    >>> r.get("box") is Box
    True
    >>> r.get("collections:OrderedDict").__name__
    'OrderedDict'
    """

    def __init__(self, kind: str, base: type | None = None) -> None:
        self.kind = kind
        self.base = base
        self._items: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def deco(cls: type[T]) -> type[T]:
            if self.base is not None and not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"{self.kind} {name!r}: {cls!r} is not a subclass of {self._base_name()}")
            if name in self._items and self._items[name] is not cls:
                raise ValueError(f"{self.kind} {name!r} is already registered to {self._items[name]!r}")
            self._items[name] = cls
            cls.name = name  # type: ignore[attr-defined]
            return cls

        return deco

    def _base_name(self) -> str:
        assert self.base is not None
        return f"{self.base.__module__}.{self.base.__qualname__}"

    def get(self, name: str, field: str | None = None) -> type[T]:
        field = field or self.kind
        if not isinstance(name, str):
            raise ConfigError(f"`{field}` must be a string name, but is {name!r}")
        if name in self._items:
            return self._items[name]
        if ":" not in name:
            raise ConfigError(
                f"`{field}` has to be one of {sorted(self._items)} or a 'module:Class' path, but is {name!r}"
            )
        allowed = _ALLOWED_PLUGINS.get()
        if allowed is not None and name not in allowed:
            extra = f" or an allowed plug-in ({sorted(allowed)})" if allowed else ""
            raise ConfigError(f"`{field}`={name!r} is an import path, which is not accepted here: "
                              f"name a registered {self.kind} ({sorted(self._items)}){extra}")
        module, _, attr = name.partition(":")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConfigError(f"`{field}`={name!r}: cannot import {attr!r} from {module!r} ({exc})") from exc
        if self.base is not None and not (isinstance(obj, type) and issubclass(obj, self.base)):
            raise ConfigError(f"`{field}`={name!r} is not a {self.kind}: a plug-in has to be a subclass of "
                              f"{self._base_name()}")
        return obj

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
