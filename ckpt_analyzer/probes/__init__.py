"""The probe registry (entry-point group ``ckpt_analyzer.probes``) and ``--plugin`` loading."""

from __future__ import annotations

import importlib
import inspect
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from ..config import build_config
from ..errors import UsageError, did_you_mean, first_line
from ..registry import Registry, import_user_file
from .base import Probe


def check_probe_class(name: str, obj: object) -> str | None:
    """Why ``obj`` cannot be the probe ``name`` (pluggy-style check at registration), or None."""
    import dataclasses

    if not (isinstance(obj, type) and issubclass(obj, Probe)):
        return f"is {type(obj).__name__} {obj!r:.60}, not a ckpt_analyzer Probe subclass"
    if inspect.isabstract(obj):
        missing = ", ".join(sorted(getattr(obj, "__abstractmethods__", ())))
        return f"{obj.__name__} does not implement {missing}"
    if getattr(obj, "name", None) != name:
        return f"{obj.__name__}.name is {getattr(obj, 'name', None)!r}, registered as '{name}'"
    cfg = getattr(obj, "Config", None)
    if not (dataclasses.is_dataclass(cfg) and cfg.__dataclass_params__.frozen):  # type: ignore[union-attr]
        return f"{obj.__name__}.Config must be a frozen dataclass"
    return None


PROBES: Registry[type[Probe]] = Registry("ckpt_analyzer.probes", "probe", check_probe_class)


def _import_plugin(spec: str) -> ModuleType:
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise UsageError(f"--plugin {spec}: no such file")
        return import_user_file(path, f"--plugin {spec}")
    try:
        return importlib.import_module(spec)
    except Exception as exc:
        raise UsageError(f"--plugin {spec}: cannot import module ({first_line(exc)})") from None


def load_plugin(spec: str, replace: bool = False) -> list[str]:
    """Register every :class:`Probe` subclass defined in a file or module; return their names.
    A probe named like a built-in is refused unless ``replace``."""
    module = _import_plugin(spec)
    names = []
    for _, obj in inspect.getmembers(module, inspect.isclass):
        if issubclass(obj, Probe) and obj is not Probe and not inspect.isabstract(obj) \
                and obj.__module__ == module.__name__ and getattr(obj, "name", None):
            PROBES.register(obj.name, obj, origin=f"--plugin {spec}", replace=replace)
            names.append(obj.name)
    if not names:
        raise UsageError(f"--plugin {spec}: defines no Probe subclass with a name")
    return names


def describe(cls: type[Probe]) -> dict[str, Any]:
    from ..config import describe_fields

    return {
        "name": cls.name,
        "version": cls.version,
        "description": cls.description,
        "origin": PROBES.origin(cls.name),
        "params": describe_fields(cls.Config),
    }


def parse_settings(sets: Sequence[str], config_file: str | None) -> dict[str, dict[str, Any]]:
    """``--config file.toml`` tables then ``--set probe.key=value`` (later wins)."""
    out: dict[str, dict[str, Any]] = {}
    if config_file:
        try:
            with open(config_file, "rb") as fh:
                doc = tomllib.load(fh)
        except OSError as exc:
            raise UsageError(f"--config {config_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"--config {config_file}: not valid TOML ({exc})") from None
        for probe, table in doc.items():
            if not isinstance(table, dict):
                raise UsageError(f"--config {config_file}: '{probe}' must be a table [{probe}]")
            out.setdefault(probe, {}).update(table)
    for item in sets:
        key, sep, value = item.partition("=")
        probe, dot, param = key.strip().partition(".")
        if not sep or not dot or not param:
            raise UsageError(f"--set '{item}': expected PROBE.PARAM=VALUE")
        out.setdefault(probe, {})[param] = value.strip()
    return out


def make_probes(names: Sequence[str], settings: Mapping[str, Mapping[str, Any]]) -> list[Probe]:
    """Instantiate the selected probes with validated configs (before any checkpoint is read)."""
    if not names:
        raise UsageError("no probe selected (use --probe NAME or --probe all)")
    selected = PROBES.names() if "all" in names else list(dict.fromkeys(names))
    for n in settings:
        if n not in selected:
            raise UsageError(f"--set/--config for '{n}', which is not a selected probe"
                             f"{did_you_mean(n, selected)}")
    probes = []
    for n in selected:
        cls = PROBES.get(n)
        cfg: Any = build_config(cls.Config, settings.get(n, {}), owner=n)
        probes.append(cls(cfg))
    return probes
