"""Small frozen typed configs: parse ``--set probe.key=value`` strings and TOML tables."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, get_args, get_origin

from .errors import UsageError, did_you_mean

C = TypeVar("C")


class ConfigError(UsageError):
    """An invalid parameter value; raised before any checkpoint is read."""


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: '{value}' is not one of {', '.join(map(str, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in get_args(tp):
                return None
        first: ConfigError | None = None
        for arg in args:  # the first member that accepts the value (e.g. float | "auto")
            try:
                return _convert(value, arg, where)
            except ConfigError as exc:
                first = first or exc
        assert first is not None
        raise first
    if origin is tuple:
        (inner, *_rest) = get_args(tp)
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            items = [value]
        return tuple(_convert(v, inner, where) for v in items)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(str(value).strip()) if isinstance(value, str) else int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError(value)
            f = float(value)
            if not math.isfinite(f):
                raise ConfigError(f"{where}: must be a finite number (got {value})")
            return f
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        name = getattr(tp, "__name__", str(tp))
        raise ConfigError(f"{where}: '{value}' is not a valid {name}") from None
    return value


def build_config(cls: type[C], values: Mapping[str, Any], owner: str = "") -> C:
    """Instantiate the frozen dataclass ``cls`` from raw (string or TOML) values."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in fields:
            raise ConfigError(
                f"{owner + '.' if owner else ''}{key}: unknown parameter{did_you_mean(key, fields)}"
            )
        kwargs[key] = _convert(raw, hints[key], f"{owner + '.' if owner else ''}{key}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{owner}: {exc}") from None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def describe_fields(cls: type) -> list[dict[str, Any]]:
    """Name, type, default and help (from ``field(metadata={'help': ...})``) of each field."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(default, tuple):
            default = list(default)
        tp = hints[f.name]
        rows.append(
            {
                "name": f.name,
                "type": str(tp).replace("typing.", "") if get_args(tp) else getattr(tp, "__name__", str(tp)),
                "default": default,
                "help": f.metadata.get("help", ""),
            }
        )
    return rows


def check(cond: bool, message: str) -> None:
    """Raise ConfigError(message) unless cond; for use in ``__post_init__``."""
    if not cond:
        raise ConfigError(message)


#: The largest number of points a probe parameter may put on one of its output coordinates
#: (bins, grid steps, eigenvalues): every coordinate value is a number in the cube, per cell.
MAX_COORDINATE = 100_000


def check_count(value: int, what: str, low: int = 1, high: int = MAX_COORDINATE) -> None:
    """ConfigError unless ``low <= value <= high`` (an integer count such as bins or steps)."""
    check(low <= value <= high, f"{what} must be in [{low}, {high:,}] (got {value:,})")


def check_choices(values: tuple[str, ...], allowed: tuple[str, ...] | list[str], what: str,
                  noun: str = "subset") -> None:
    """ConfigError unless ``values`` is a non-empty tuple of distinct members of ``allowed``."""
    check(len(values) > 0, f"{what} must name at least one {noun} ({', '.join(allowed)})")
    bad = [v for v in values if v not in allowed]
    check(not bad, f"{what}: unknown {noun} '{bad[0] if bad else ''}' (choose from {', '.join(allowed)})")
    check(len(set(values)) == len(values), f"{what} has duplicates: {', '.join(values)}")


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (non-empty nested mappings only)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def settings_diff(old: Mapping[str, Any], new: Mapping[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """``key: old -> new`` for every differing flattened key (JSON-normalized; absent = unset)."""
    import json

    norm = lambda d: {k: json.loads(json.dumps(v)) for k, v in flatten(d).items() if k not in ignore}
    fo, fn = norm(old), norm(new)
    unset = object()
    out = []
    for k in sorted(set(fo) | set(fn)):
        a, b = fo.get(k, unset), fn.get(k, unset)
        if a is unset or b is unset or a != b:
            enc = ["unset" if v is unset else json.dumps(v) for v in (a, b)]
            out.append(f"{k}: {enc[0]} -> {enc[1]}")
    return out
