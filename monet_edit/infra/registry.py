"""A registry of pluggable things (selection rules, evaluation suites): an explicit tuple of
module names, each defining one object under a known attribute, imported on first use so that
listing them costs no more than importing those modules."""

from __future__ import annotations

import importlib
from typing import Any, Generic, TypeVar

from ..errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, package: str, modules: tuple[str, ...], attr: str, unknown: str) -> None:
        """`unknown` formats the error for a name not registered: {name!r} and {known}."""
        self.package, self.modules, self.attr, self.unknown = package, modules, attr, unknown
        self._loaded: dict[str, T] = {}

    def all(self) -> dict[str, T]:
        """Every registered object by name, in registration order."""
        if not self._loaded:
            for module in self.modules:
                item: Any = getattr(importlib.import_module(f"{self.package}.{module}"), self.attr)
                if item.name != module:
                    raise RuntimeError(f"{self.package}.{module} registers {item.name!r} under another name")
                self._loaded[module] = item
        return self._loaded

    def get(self, name: str) -> T:
        items = self.all()
        if name not in items:
            raise UsageError(self.unknown.format(name=name, known=", ".join(items)))
        return items[name]
