"""Entry-point registries (one per kind), in the style of xarray's backends.

Built-ins are declared as entry points of this distribution exactly like third-party
plugins. A plugin that fails to import is recorded as broken, listed by
``ckpt-analyze probes`` and only fatal when someone asks for it by name.
``CKPT_ANALYZER_DISABLE_PLUGIN_AUTOLOAD=1`` keeps only this package's own entry points.
A user's own ``.py`` file (``--plugin file.py``, ``--model file.py:factory``) is imported once
by :func:`import_user_file`.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, Generic, TypeVar

from .errors import PluginError, UsageError, first_line, unknown

T = TypeVar("T")

DIST_NAME = "ckpt-analyzer"
AUTOLOAD_ENV = "CKPT_ANALYZER_DISABLE_PLUGIN_AUTOLOAD"


@dataclass(frozen=True)
class BrokenPlugin:
    name: str
    distribution: str
    target: str
    error: str


def _dist_name(ep: object) -> str:
    dist = getattr(ep, "dist", None)
    return getattr(dist, "name", None) or "?"


class Registry(Generic[T]):
    """Named objects of one kind, discovered lazily from an entry-point group."""

    def __init__(self, group: str, kind: str,
                 validate: Callable[[str, Any], str | None] | None = None) -> None:
        self.group = group
        self.kind = kind
        self.validate = validate  # (name, object) -> why it is unusable, or None
        self._items: dict[str, T] = {}
        self._origin: dict[str, str] = {}
        self._broken: dict[str, BrokenPlugin] = {}
        self._loaded = False
        self._lock = threading.RLock()

    def _entry_points(self, name: str | None = None) -> list[Any]:
        """This group's entry points (optionally one name); only this package's with the
        autoload switch off."""
        only_builtin = os.environ.get(AUTOLOAD_ENV, "") not in ("", "0")
        eps = entry_points(group=self.group)
        return [ep for ep in eps if (name is None or ep.name == name)
                and (not only_builtin or _dist_name(ep).replace("_", "-").lower() == DIST_NAME)]

    def _load(self, ep: Any) -> None:
        """Import one entry point; a failure is recorded as a broken plugin, never raised."""
        dist = _dist_name(ep)
        try:
            obj = ep.load()
            problem = self.validate(ep.name, obj) if self.validate else None
        except Exception as exc:  # a broken plugin must not break the tool
            problem = f"{type(exc).__name__}: {exc}"
        if problem is None:
            self._items[ep.name] = obj
            self._origin[ep.name] = dist
        else:
            self._broken[ep.name] = BrokenPlugin(ep.name, dist, ep.value, problem)

    def _discover(self) -> None:
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            for ep in self._entry_points():
                if ep.name not in self._items and ep.name not in self._broken:
                    self._load(ep)

    def register(self, name: str, obj: T, origin: str = "runtime", replace: bool = False) -> T:
        """Add ``name`` (``--plugin`` files, tests). Checked like an entry point; a name that a
        built-in of this package holds is refused unless ``replace``."""
        self._discover()
        problem = self.validate(name, obj) if self.validate else None
        if problem is not None:
            raise PluginError(f"{self.kind} '{name}' from {origin}: {problem}")
        if not replace and self._origin.get(name) == DIST_NAME and origin != DIST_NAME:
            raise UsageError(f"{origin}: {self.kind} '{name}' would replace the built-in one; "
                             "rename it, or pass --replace-builtin to replace it")
        with self._lock:
            self._items[name] = obj
            self._origin[name] = origin
            self._broken.pop(name, None)
        return obj

    def unregister(self, name: str) -> None:
        with self._lock:
            self._items.pop(name, None)
            self._origin.pop(name, None)

    def _load_one(self, name: str) -> None:
        """Import just ``name``'s entry point (cheap lookups before full discovery)."""
        with self._lock:
            if self._loaded or name in self._items or name in self._broken:
                return
            for ep in self._entry_points(name=name)[:1]:
                self._load(ep)

    def get(self, name: str) -> T:
        self._load_one(name)
        if name not in self._items and name not in self._broken:
            self.check_name(name)
            self._discover()
        if name in self._items:
            return self._items[name]
        if name in self._broken:
            b = self._broken[name]
            raise PluginError(
                f"{self.kind} '{name}' from {b.distribution} ({b.target}) failed to import: {b.error}"
            )
        raise unknown(self.kind, name, list(self._items) + list(self._broken))

    def known(self) -> set[str]:
        """Every name of this kind (entry points and runtime registrations), importing nothing."""
        return {ep.name for ep in entry_points(group=self.group)} | set(self._items)

    def check_name(self, name: str) -> None:
        """Raise the did-you-mean error for an unknown name without importing any plugin."""
        known = self.known()
        if name not in known:
            raise unknown(self.kind, name, known)

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._items)

    def origin(self, name: str) -> str:
        self._discover()
        return self._origin.get(name, "?")

    def broken(self) -> list[BrokenPlugin]:
        self._discover()
        return [self._broken[k] for k in sorted(self._broken)]

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._items


def import_user_file(path: Path, what: str) -> ModuleType:
    """Import a user's ``.py`` file once (cached by its resolved path); one-line UsageError."""
    import hashlib
    import importlib.util

    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    mod_name = f"ckpt_analyzer_user_{path.stem}_{digest}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    mspec = importlib.util.spec_from_file_location(mod_name, path)
    if mspec is None or mspec.loader is None:
        raise UsageError(f"{what}: cannot import {path}")
    module = importlib.util.module_from_spec(mspec)
    sys.modules[mod_name] = module
    try:
        mspec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[mod_name]
        raise UsageError(f"{what}: importing {path} failed: {first_line(exc)}") from None
    return module
