"""Reading a role's TOML config into its dataclass, with clear errors.

Shared by the device and the aggregator: standard library only (tomllib, or tomli on
Python 3.10). Unknown keys are errors, not silently ignored: a typo in a config file
should never fall back to a default unnoticed.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


class ConfigError(ValueError):
    """A config file that cannot be used; the message says where and why."""


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def from_table(cls: type[T], table: dict[str, Any], where: str,
               nested: dict[str, str] | None = None, base: Any = None,
               also_known: tuple[str, ...] = ()) -> T:
    """Build dataclass `cls` from a TOML table; `nested` maps table names to field names.

    Keys the table leaves out keep their values from `base` (a default instance), so a
    table that sets one key changes only that key. `also_known` names the tables the
    caller reads itself (e.g. [model]), so the unknown-key message lists them too.
    """
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    nested = nested or {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        name = nested.get(key, key)
        if name not in fields or (key not in nested and name in nested.values()):
            allowed = sorted({*fields} - set(nested.values()) | set(nested) | set(also_known))
            raise ConfigError(f"unknown key {key!r} in {where}; known keys: {allowed}")
        hint = _without_none(hints[name])
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            kwargs[name] = from_table(hint, value, f"{where} [{key}]",
                                      base=_field_default(fields[name]))
        else:
            kwargs[name] = _coerce(value, hint, f"{where} {key}")
    try:
        if base is not None:
            return dataclasses.replace(base, **kwargs)
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _field_default(f: dataclasses.Field) -> Any:
    """The default a nested table starts from (None when the field has no default table)."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _without_none(hint: Any) -> Any:
    """`X | None` -> X, so an optional table is read like a required one."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(options) == 1:
            return options[0]
    return hint


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a TOML value against a field's type; paths become Path, ints may be floats."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        for option in options:  # the first type that fits: `clip = 0.5` or "adaptive"
            try:
                return _coerce(value, option, where)
            except ConfigError:
                pass
        names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
        raise ConfigError(f"{where} must be {names}, got {type(value).__name__}")
    if hint is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a path string")
        return Path(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    check = origin or hint
    if isinstance(check, type) and not isinstance(value, check):
        raise ConfigError(f"{where} must be {check.__name__}, got {type(value).__name__}")
    if check is int and isinstance(value, bool):
        raise ConfigError(f"{where} must be int, got bool")
    return value
