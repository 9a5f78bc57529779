"""User-facing errors. Each renders as one line; the CLI maps them to exit codes."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from os import PathLike


class CkptError(Exception):
    """A failure the user can act on: one line, exit code 1."""

    exit_code = 1

    def __init__(self, message: str, path: str | PathLike[str] | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class UsageError(CkptError):
    """Bad command-line input (unknown name, invalid value): exit code 2."""

    exit_code = 2


class CheckpointError(CkptError):
    """A checkpoint that cannot be read or does not fit its model."""


class DataError(CkptError):
    """A dataset that is missing or malformed."""


class PluginError(CkptError):
    """A registered plugin that failed to import."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or a list of the valid names."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (choose from {', '.join(choices)})" if choices else ""


def unknown(kind: str, name: str, choices: Iterable[str]) -> UsageError:
    return UsageError(f"unknown {kind} '{name}'{did_you_mean(name, choices)}")


class ProbeError(CkptError):
    """A probe that broke its contract or failed on a checkpoint (names the probe)."""
