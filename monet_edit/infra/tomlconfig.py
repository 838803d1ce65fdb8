"""Strict TOML recipe reading: unknown keys, wrong types and missing keys are one-line errors.

A schema is a dict {key: type | (type, default) | nested schema dict}. Types: int, float (ints
accepted), str, bool, list (of scalars). Used by every recipe (train and edit pipelines).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from ..errors import UsageError

REQUIRED = object()
TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}


def read(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: recipe not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML ({exc})") from None


def _type_ok(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def validate(data: dict[str, Any], schema: dict[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    """Return `data` completed with defaults; raise UsageError naming the key on any mismatch."""
    unknown = sorted(set(data) - set(schema))
    if unknown:
        raise UsageError(f"{where}: unknown key {prefix}{unknown[0]} (allowed: {', '.join(sorted(schema))})")
    out: dict[str, Any] = {}
    for key, spec in schema.items():
        name = prefix + key
        if isinstance(spec, dict):
            value = data.get(key, {})
            if not isinstance(value, dict):
                raise UsageError(f"{where}: {name} must be a table")
            out[key] = validate(value, spec, where, name + ".")
            continue
        kind, default = spec if isinstance(spec, tuple) else (spec, REQUIRED)
        if key not in data:
            if default is REQUIRED:
                raise UsageError(f"{where}: missing key {name} ({TYPE_NAMES[kind]})")
            out[key] = default
            continue
        value = data[key]
        if not _type_ok(value, kind):
            raise UsageError(f"{where}: {name} must be {TYPE_NAMES[kind]}, got {value!r}")
        out[key] = float(value) if kind is float else value
    return out
