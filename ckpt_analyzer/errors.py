"""User-facing errors. Each renders as one line; the console scripts map them to exit codes
(:func:`handle_errors`)."""

from __future__ import annotations

import difflib
import errno
import os
import sys
from collections.abc import Callable, Iterable
from os import PathLike
from typing import Any, NoReturn, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


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


class DiskError(CkptError):
    """The disk refused a read or write (read-only, permission denied, full, I/O error). It
    stops the run with its one line; it is never recorded as a checkpoint's or probe's failure."""


READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
DISK_ERRNOS = READ_ONLY_ERRNOS | FULL_ERRNOS | {errno.EIO}


def disk_cause(err: int | None) -> str | None:
    """The words for a disk errno (``read-only or permission denied``, ``disk full``, ...),
    None for any other errno."""
    if err in READ_ONLY_ERRNOS:
        return "read-only or permission denied"
    if err == errno.EFBIG:
        return "file-size limit reached"
    if err in FULL_ERRNOS:
        return "disk full"
    if err == errno.EIO:
        return "disk I/O error"
    return None


def folder_cause(path: str | PathLike[str]) -> str | None:
    """Why nothing can be written in the folder of ``path`` (read-only file system, no write
    permission, no free space), or None when it looks writable. For errors that carry no errno
    (SQLite's "disk I/O error", "unable to open database file")."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return "read-only or permission denied"
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return "read-only or permission denied"
    if st.f_bavail == 0 or (st.f_favail == 0 and st.f_files > 0):
        return "disk full"
    return None


def write_error(exc: OSError, path: str | PathLike[str], what: str = "", tail: str = ""
                ) -> DiskError | None:
    """One line for a failed write of ``path``, ``PATH: cannot write [WHAT] (strerror): CAUSE;
    TAIL`` with CAUSE from :func:`disk_cause`; None when ``exc`` is no disk error."""
    cause = disk_cause(exc.errno)
    if cause is None:
        return None
    return disk_error(exc.strerror or str(exc), cause, path, what, tail)


def disk_error(why: str, cause: str, path: str | PathLike[str] | None, what: str = "",
               tail: str = "") -> DiskError:
    """``PATH: cannot write [WHAT] (WHY): CAUSE[; TAIL]``."""
    return DiskError(f"cannot write{' ' + what if what else ''} ({why}): {cause}"
                     + (f"; {tail}" if tail else ""), path)


# -- one-line errors at the command line: the console scripts' handler and its exit codes


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` of an exception, for one-line errors."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def fail(exc: CkptError) -> NoReturn:
    sys.stderr.write(f"error: {exc}\n")
    sys.exit(exc.exit_code)


def handle_errors(fn: F) -> F:
    """Turn library errors into one line on stderr and the documented exit code."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import signal

        try:  # a file-size limit: EFBIG, reported as one line, not a silent kill
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        except (AttributeError, ValueError):  # no such signal, or not the main thread
            pass
        try:
            return fn(*args, **kwargs)
        except CkptError as exc:
            fail(exc)
        except (ValueError, TypeError) as exc:
            if not _from_functional(exc):
                raise  # a bug elsewhere: keep the traceback
            lines = str(exc).strip().splitlines()
            sys.stderr.write(f"error: {lines[0] if lines else type(exc).__name__}\n")
            sys.exit(CkptError.exit_code)
        except KeyboardInterrupt:
            sys.stderr.write("interrupted: finished work is kept; re-run the same command to resume\n")
            sys.exit(130)
        except MemoryError as exc:  # numpy's and torch's CPU allocators; CUDA OOM is a RuntimeError
            detail = str(exc).strip().splitlines()
            sys.stderr.write("error: out of memory" + (f" ({detail[0]})" if detail else "")
                             + "; finished work is kept: lower the sizes or the batch and "
                             "re-run the same command\n")
            sys.exit(1)
        except OSError as exc:
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            sys.stderr.write(f"error: {where}{exc.strerror or exc}\n")
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def _from_functional(exc: BaseException) -> bool:
    """Whether ``exc`` was raised in :mod:`ckpt_analyzer.functional`, whose pure functions
    report bad arguments as ValueError/TypeError rather than the package's CkptError."""
    tb = exc.__traceback__
    name = ""
    while tb is not None:
        name = tb.tb_frame.f_globals.get("__name__", "")
        tb = tb.tb_next
    return name.startswith("ckpt_analyzer.functional.")
