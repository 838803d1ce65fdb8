"""CLI sub-commands, one module each. A module defines `register(app)` and an `ORDER` number;
cli.py discovers them, so adding a command never edits a shared file. Modules must not import
torch at import time (`monet-edit --help` stays instant)."""

from __future__ import annotations

import importlib
import pkgutil


def register_all(app) -> None:
    modules = [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)]
    for module in sorted(modules, key=lambda m: getattr(m, "ORDER", 100)):
        if hasattr(module, "register"):
            module.register(app)
