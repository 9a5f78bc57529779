"""Atomic file replacement: write a temporary sibling, fsync it, ``os.replace`` it over the
target, fsync the folder. Readers see the old file or the new one, never half of either.

Also the one guard of every command's output (:func:`check_output`: never an input, never a
file of another kind) and the lock of an output being written (:func:`output_lock`)."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename in ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(target: str | os.PathLike[str], tmp: str | os.PathLike[str] | None = None
                ) -> Iterator[Path]:
    """Yield a temporary path next to ``target`` for the caller to write; on a normal exit it is
    fsynced and replaces ``target``; on any exception it is removed and the target untouched."""
    dst = Path(target)
    t = Path(tmp) if tmp is not None else dst.with_name(f"{dst.name}.{secrets.token_hex(4)}.tmp")
    try:
        yield t
        fsync_file(t)
        os.replace(t, dst)
    except OSError as exc:
        try:
            t.unlink(missing_ok=True)
        except OSError:  # a read-only folder: there is no temporary to remove
            pass
        from .errors import write_error

        err = write_error(exc, dst, tail="the previous file, if any, is unchanged")
        if err is not None:  # full, read-only, not permitted, I/O error: one line naming dst
            raise err from None
        raise
    except BaseException:
        t.unlink(missing_ok=True)
        raise
    fsync_dir(dst.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically; the file's permissions follow the umask."""
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


# -- outputs never overwrite inputs

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_KINDS = {"html": "an HTML page", "png": "a PNG image", "pdf": "a PDF file",
          "svg": "an SVG image"}


def _is_kind(head: bytes, kind: str) -> bool:
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    if kind == "html":
        return text.startswith((b"<!doctype html", b"<html"))
    if kind == "png":
        return head.startswith(b"\x89PNG\r\n\x1a\n")
    if kind == "pdf":
        return head.startswith(b"%PDF-")
    if kind == "svg":
        return text.startswith((b"<?xml", b"<svg", b"<!doctype svg")) and b"<svg" in text
    raise ValueError(f"unknown output kind {kind!r}")


def _what_it_is(head: bytes) -> str:
    if head.startswith(_HDF5_MAGIC):
        return "an HDF5 file (a cube?)"
    if head.startswith(b"SQLite format 3\0"):
        return "an SQLite file (a cube's journal?)"
    for kind, name in _KINDS.items():
        if _is_kind(head, kind):
            return name
    return "another kind of file"


def check_output(target: str | os.PathLike[str], kind: str | None,
                 inputs: Iterable[str | os.PathLike[str]] = (), flag: str = "-o") -> Path:
    """Refuse (:class:`~.errors.UsageError`, exit 2) to write ``target`` when it is one of
    ``inputs`` (the same file, through symlinks or hard links too), a folder, or an existing
    non-empty file that is not of ``kind`` (``html``, ``png``, ``pdf``, ``svg``, by its first
    bytes; ``None``: any existing file is refused). Returns ``target`` as a Path."""
    from .errors import UsageError

    out = Path(target)
    for inp in inputs:
        q = Path(inp)
        try:
            same = out.exists() and q.exists() and os.path.samefile(out, q)
        except OSError:
            same = False
        if same:
            raise UsageError(f"{flag} {out}: is one of the inputs ({q}); write to a new file")
    if out.is_dir():
        raise UsageError(f"{flag} {out}: is a folder; give a file name")
    if not out.exists() and not out.is_symlink():
        return out
    if kind is None:
        raise UsageError(f"{flag} {out}: exists (or its journal does); choose a new file")
    try:
        with open(out, "rb") as fh:
            head = fh.read(4096)
    except OSError as exc:
        raise UsageError(f"{flag} {out}: exists and cannot be read ({exc.strerror}); "
                         "choose a new file") from None
    if head and not _is_kind(head, kind):
        raise UsageError(f"{flag} {out}: exists and is {_what_it_is(head)}, not "
                         f"{_KINDS[kind]}; refusing to overwrite it (remove it or choose a new "
                         "file)")
    return out


@contextmanager
def output_lock(target: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Hold an exclusive advisory lock (``flock``) on ``<target>.lock`` while ``target`` is
    written; a second holder is refused at once with :class:`~.errors.CkptError` naming the
    first (pid and host, written into the lock file). The lock file is removed on exit."""
    from .errors import CkptError

    try:
        import fcntl
    except ImportError:  # no flock here: nothing to hold
        yield
        return
    lock = Path(f"{target}.lock")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise CkptError(f"cannot create the lock file ({exc.strerror})", lock) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise CkptError(f"another {what} ({holder}) is writing it; wait for it to end or "
                            "choose another file", target) from None
        try:  # the file locked may have been removed by a holder just ending: lock the new one
            fresh = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            fresh = False
        if fresh:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode())
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)
